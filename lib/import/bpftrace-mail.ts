/**
 * The v3 bpftrace log (bpftrace.ts) as it arrives by mail: each line is cleaned as text.ts does
 * for the other formats (quoting, non-breaking spaces / U+FFFD, blank runs), noise lines
 * (prompts, elisions, "Attaching N probes...", "Lost N events", map dumps) are counted and
 * dropped, and a line wrapped by a mail client is joined back when the join parses. Then the
 * lines go to the v3 importer unchanged in number: an entry joined from several lines is
 * passed at its first line and the lines it absorbed become blank, so the importer's line
 * numbers are the input's. '#' lines (kvmfault's own trace text header, comments) pass as they are.
 */
import { BpftraceImport, BpftraceImporter, BpftraceImportOptions, createBpftraceImporter, isCompleteBpftraceLine, LineSplitter, MAX_LINE_BYTES, pieces, unquote } from './bpftrace';
import { cleanLine, isNoise } from './text';

const HEAD = /^\d{1,2}:\d{2}:\d{2}[:.]\d{1,9} tid\[\d{1,20}\] pid\[\d{1,20}\] [A-Z]/;
/** a v3 entry's start (a line that is not one cannot become one by joining) */
const HEAD_PREFIX = /^\d{1,2}:\d{2}:\d{2}[:.]\d{1,9} tid\[/;
const LOST = /\b(?:Lost (\d{1,15}) events?|\[LOST (\d{1,15}) EVENTS?\])/i;
const MAX_JOIN = 8, MAX_ENTRY = 4096;
/** what the rest of a wrapped line starts with: "key =", a number, "(", ":" or "," (the fields parse laxly: any tail would do) */
export const V3_CONTINUATION = /^(?:hits?\)|[A-Za-z][\w -]{0,30}=|-?(?:0x)?[0-9a-fA-F]{1,18}(?:[\s,)(]|$)|[(:,=])/;

/** does this one line parse as a v3 entry (cheap: no records made) */
const parses = isCompleteBpftraceLine;

export interface MailBpftraceImport extends BpftraceImport {
  noise: number;
  joined: number;
  lost: number;
}

export interface MailBpftraceImporter extends BpftraceImporter {
  end(): MailBpftraceImport;
}

export function createMailBpftraceImporter(options: BpftraceImportOptions = {}): MailBpftraceImporter {
  const inner = createBpftraceImporter(options);
  let noise = 0, joined = 0, lost = 0, tooLong = 0;
  const longLines: { line: number; text: string; reason: string }[] = [];
  const maxReported = options.maxReported ?? 10;
  let pending: { cands: string[]; absorbed: number; ok: boolean | null } | null = null;
  const out = (text: string): void => inner.push(text + '\n');
  const flush = (): void => {
    if (!pending) return;
    out(pending.cands[0]);
    for (let i = 0; i < pending.absorbed; i++) out('');
    pending = null;
  };
  const splitter = new LineSplitter((raw, bytes, lineNo) => {
    if (bytes > MAX_LINE_BYTES) {
      flush();
      tooLong++;
      if (longLines.length < maxReported) longLines.push({ line: lineNo, text: raw.slice(0, 200) + '...', reason: `line too long (${bytes} bytes, at most ${MAX_LINE_BYTES})` });
      out('');
      return;
    }
    const u = unquote(raw);
    if (u.startsWith('#')) {
      flush();
      out(u);
      return;
    }
    const line = cleanLine(raw);
    if (line === '') {
      flush();
      out('');
      return;
    }
    const head = HEAD.test(line);
    if (!head) {
      const l = LOST.exec(line);
      if (l || isNoise(line)) {
        flush();
        if (l) lost += Number(l[1] ?? l[2]);
        noise++;
        out('');
        return;
      }
      if (pending && V3_CONTINUATION.test(line) && HEAD_PREFIX.test(pending.cands[0]) && pending.absorbed < MAX_JOIN && pending.cands[0].length + line.length < MAX_ENTRY) {
        const next: string[] = [];
        for (const c of pending.cands) for (const t of [c + ' ' + line, c + line]) if (next.length < 8 && !next.includes(t)) next.push(t);
        const hit = next.find(parses);
        if (hit !== undefined) {
          pending = { cands: [hit], absorbed: pending.absorbed + 1, ok: true };
          joined++;
          return;
        }
        if (pending.ok === null) pending.ok = parses(pending.cands[0]);
        if (!pending.ok) {
          pending = { cands: next, absorbed: pending.absorbed + 1, ok: false };
          return;
        }
      }
    }
    flush();
    pending = { cands: [line], absorbed: 0, ok: null };
  });
  return {
    get kernel() {
      return inner.kernel;
    },
    push: (piece) => splitter.push(piece),
    end: () => {
      splitter.end();
      flush();
      const r = inner.end();
      const skippedLines = [...r.skippedLines, ...longLines].sort((a, b) => a.line - b.line).slice(0, maxReported);
      return { ...r, lines: r.lines + tooLong, skipped: r.skipped + tooLong, skippedLines, noise, joined, lost };
    },
  };
}

/** Imports a whole mail-damaged v3 log. */
export function importMailBpftraceLog(input: string | Uint8Array, options: BpftraceImportOptions = {}): MailBpftraceImport {
  const imp = createMailBpftraceImporter(options);
  for (const p of pieces(input)) imp.push(p);
  return imp.end();
}
