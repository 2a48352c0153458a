/**
 * What every text importer shares: lines (LineSplitter from bpftrace.ts: \n, \r\n or \r, bytes
 * or text, bounded per line), mail damage undone, noise recognised, wrapped entries re-joined,
 * records handed over in batches, and for each vCPU the input lines that were its evidence.
 *
 * Mail damage (every format):
 * - quoting: "> ", ">> ", "> > ", ">" + tab (unquote() of bpftrace.ts);
 * - non-breaking spaces: U+00A0, U+202F, and U+FFFD (what a raw 0xA0 byte, not valid UTF-8,
 *   decodes to, and what some clients put in its place) are blanks; runs of blanks are one;
 * - lines wrapped mid-entry: a line that does not start an entry (format.isHead) right after one
 *   that did is tried as its continuation, joined with a blank and then without (a client wraps
 *   at a blank, keeps it or drops it, or cuts a long token); the join is kept when it parses;
 * - noise: elision lines ("...", "[...]", "[snip]"), shell prompts and commands ("$ cmd",
 *   "root@host:~# cmd"), "Attaching N probes...", "Lost N events" / "[LOST N EVENTS]" (counted
 *   in `lost`: the trace has holes), bpftrace map dumps ("@name[key, with spaces]: value"),
 *   trace-cmd's header ("cpus=N", "version = N", "CPU N is empty").
 * Anything else that does not parse is counted in `skipped`, the first few with line numbers and
 * a reason. Content never throws.
 */
import { LineSplitter, MAX_LINE_BYTES, pieces, SkippedLine, unquote } from './bpftrace';
import { RecordBatch, RecordWriter } from '../record';

export type { SkippedLine } from './bpftrace';

/** First and last line of the input that were evidence for one vCPU (1-based). */
export interface EvidenceLines {
  first: number;
  last: number;
  /** lines that made records for it */
  count: number;
}

export interface TextImportOptions {
  /** skipped lines to keep for the report (default 10) */
  maxReported?: number;
  /** hand the records over in batches as they are made (then `batch` holds none) */
  onBatch?: (batch: RecordBatch) => void;
  /** records per onBatch batch (default 65536) */
  batchRecords?: number;
}

/** What a text importer read. */
export interface TextImport {
  batch: RecordBatch;
  /** non-blank lines read */
  lines: number;
  records: number;
  /** recognised lines that make no record (other events, ITER, ...) */
  ignored: number;
  /** mail and shell noise (prompts, elisions, map dumps, probe banners) */
  noise: number;
  /** lines joined to the line before them (wrapped by a mail client) */
  joined: number;
  skipped: number;
  skippedLines: SkippedLine[];
  /** events the tracer said it lost ("Lost N events", "[LOST N EVENTS]") */
  lost: number;
  /** per record tid: the input lines that were its evidence */
  evidence: Map<number, EvidenceLines>;
  /** tids made up for vCPUs the log names only by their kernel address: tid -> address as printed */
  vcpuAddrs: Map<number, string>;
  /** the log names the VMM process (pid) / the vCPU thread (tid) */
  hasPid: boolean;
  hasTid: boolean;
  /** the log shows the invalidation sequence (so a cause can be told) */
  hasSeq: boolean;
  /** the log prints no guest address: records carry PSEUDO_GPA (one fault per vCPU assumed) */
  pseudoGpa: boolean;
  /** KVM counter snapshots (kvmstat.ts): per-VM verdicts; null for event formats */
  counters: CounterVm[] | null;
}

/** One VM's KVM counters over the snapshots of a log (kvmstat.ts). */
export interface CounterVm {
  /** the debugfs directory name ("<pid>-<fd>"), or what the log calls it */
  name: string;
  /** VMM pid (from the "<pid>-<fd>" name), null when unknown */
  pid: number | null;
  /** 'stuck': pf_taken climbed by at least the threshold while no fault was fixed or emulated */
  state: 'stuck' | 'retrying' | 'progressing' | 'idle' | 'unknown';
  snapshots: number;
  /** seconds between the first and last snapshot, when the log has dates */
  seconds: number | null;
  /** per counter: first and last value and the delta (first and last snapshot it appears in) */
  counters: Record<string, { first: number; last: number; delta: number }>;
  /** faults taken and not fixed, emulated or spurious between the first and last snapshot */
  attempts: number;
  evidenceLines: { first: number; last: number };
  explanation: string;
}

/**
 * The gpa given to records of logs that print none (uniq -c of per-violation lines): a vCPU's
 * lines are taken as retries of one fault. Below 2^53, page aligned, above any real gpa (52 bits).
 */
export const PSEUDO_GPA = 0x1f_ffff_ffff_f000;

const MAX_EVIDENCE = 65536;
/** continuation lines one entry may absorb, its length at most, join candidates kept */
const MAX_JOIN = 8, MAX_ENTRY = 4096, MAX_CANDS = 8;

/** Blanks a mail client may put in a line, as one space; runs of blanks as one. */
const ODD_BLANKS = /[\u00a0\u202f\u2007\ufffd\u200b\ufeff]/g;
const BLANK_RUN = /\s{2,}/g;

/** A line as the parsers see it: unquoted, odd blanks as spaces, blank runs as one, trimmed. */
export function cleanLine(raw: string): string {
  let s = unquote(raw);
  if (s === '') return s;
  s = s.replace(ODD_BLANKS, ' ');
  // quoting can hide behind a non-breaking space ("\u00a0> line"), so unquote again
  return unquote(s.replace(BLANK_RUN, ' '));
}

const LOST = /\b(?:Lost (\d{1,15}) events?|\[LOST (\d{1,15}) EVENTS?\])/i;
const NOISE: readonly RegExp[] = [
  /^On .{1,300} wrote:$/,
  /^(?:\.{2,}|…|\[ ?(?:\.{2,}|…|snip(?:ped)?[^\]]{0,40}|\d{1,12} (?:more )?lines? (?:snipped|removed|elided|omitted)) ?\]|<snip>|-{2,} ?snip ?-{2,}|(?:\.\.\. ?)?\(\d{1,12} (?:more )?lines? (?:snipped|removed|elided|omitted)\)(?: ?\.\.\.)?)$/i,
  /^(?:\$|#|%|[\w.-]{1,64}@[\w.-]{1,64}(?::[^\s$#]{0,200})? ?[$#]|\[[^\]]{1,100}\] ?[$#]) \S/,
  /^(?:sudo |#? ?)?(?:trace-cmd|perf|bpftrace|tail|uniq|sort|cat|grep|cd|date|echo|for|while)\b/,
  /^Attaching \d{1,9} probes?\b/i,
  /^@[\w]{0,64}(?:\[.*\])?: ?\S?/,
  /^(?:cpus=\d{1,6}|version = \d{1,6}|CPU \d{1,6} is empty|trace-cmd: |# tracer: |#|\^C)/,
];

/** Whether a cleaned line is mail/shell/tracer noise (not evidence, not an error). */
export function isNoise(line: string): boolean {
  for (const re of NOISE) if (re.test(line)) return true;
  return false;
}

/** One input format: which lines start an entry, how an entry parses, what it makes. */
export interface LineFormat<P> {
  /** does this cleaned line start an entry (a continuation line does not) */
  isHead(line: string): boolean;
  /** can this line continue a wrapped entry (default: any line that is not a head) */
  isContinuation?(line: string): boolean;
  /** the entry parsed, or why it does not parse (a string); must not change state */
  parse(line: string): P | string;
  /** turn a parsed entry into records (ctx), its lines first..last */
  take(entry: P, first: number, last: number, ctx: ImportContext): void;
  /** a noise line (already counted) the format wants to see, e.g. a snapshot separator */
  noise?(line: string, lineNo: number, ctx: ImportContext): void;
  /** end of input */
  finish?(ctx: ImportContext): void;
}

/** What a format's take() works with. */
export class ImportContext {
  // small at first (an excerpt makes a few records); it doubles as needed
  writer = new RecordWriter(64);
  handedOver = 0;
  ignored = 0;
  readonly evidence = new Map<number, EvidenceLines>();
  readonly vcpuAddrs = new Map<number, string>();
  private readonly addrTids = new Map<string, number>();
  hasPid = false;
  hasTid = false;
  hasSeq = false;
  pseudoGpa = false;
  counters: CounterVm[] | null = null;

  /** the lines first..last were evidence for thread tid (bounded: past 65536 threads, not noted) */
  note(tid: number, first: number, last: number): void {
    const e = this.evidence.get(tid);
    if (e) {
      if (first < e.first) e.first = first;
      if (last > e.last) e.last = last;
      e.count++;
    } else if (this.evidence.size < MAX_EVIDENCE) {
      this.evidence.set(tid, { first, last, count: 1 });
    }
  }

  /**
   * A stable made-up tid for a vCPU known by its kernel address (FNV-1a of the address as
   * printed, lower case without 0x, in 0x80000000..0xfffffffe: above any real tid, pid_max
   * being at most 2^22), probing on the rare collision. Keeps the address for the output.
   */
  tidForAddr(addr: string): number {
    const key = addr.toLowerCase().replace(/^0x/, '');
    const known = this.addrTids.get(key);
    if (known !== undefined) return known;
    let h = 0x811c9dc5;
    for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
    let tid = ((h >>> 0) | 0x80000000) >>> 0;
    if (tid === 0xffffffff) tid = 0xfffffffe;
    while (this.vcpuAddrs.has(tid)) tid = tid >= 0xfffffffe ? 0x80000000 : tid + 1;
    if (this.addrTids.size < MAX_EVIDENCE) {
      this.addrTids.set(key, tid);
      this.vcpuAddrs.set(tid, addr);
    }
    return tid;
  }
}

/** A streaming importer: push pieces (bytes or text), end() for the result. */
export interface TextImporter {
  push(piece: string | Uint8Array): void;
  end(): TextImport;
}

/** An importer for one line format (see the header comment for what is done to every line). */
export function createLineImporter<P>(format: LineFormat<P>, options: TextImportOptions = {}): TextImporter {
  const maxReported = options.maxReported ?? 10;
  const onBatch = options.onBatch;
  const batchRecords = Math.max(1, options.batchRecords ?? 65536);
  const ctx = new ImportContext();
  const skippedLines: SkippedLine[] = [];
  let lines = 0, noise = 0, skipped = 0, lost = 0, joined = 0;
  // the entry waiting for a possible continuation line: its candidate texts (a wrapped entry
  // joined with a blank and without), what the first of them parsed to, lines absorbed
  let pending: { cands: string[]; first: number; last: number; parsed: P | string; absorbed: number } | null = null;
  const skip = (line: number, raw: string, reason: string): void => {
    skipped++;
    if (skippedLines.length < maxReported) skippedLines.push({ line, text: raw.length > 200 ? raw.slice(0, 200) + '...' : raw, reason });
  };
  const commit = (): void => {
    if (!pending) return;
    const p = pending;
    pending = null;
    if (typeof p.parsed === 'string') {
      skip(p.first, p.cands[0], p.parsed);
      skipped += p.absorbed;
    } else {
      format.take(p.parsed, p.first, p.last, ctx);
    }
  };
  const handOver = (): void => {
    if (!onBatch || ctx.writer.count === 0) return;
    ctx.handedOver += ctx.writer.count;
    const b = ctx.writer.batch();
    ctx.writer = new RecordWriter(1024);
    onBatch(b);
  };

  const onLine = (raw: string, bytes: number, lineNo: number): void => {
    if (bytes > MAX_LINE_BYTES) {
      commit();
      lines++;
      skip(lineNo, raw, `line too long (${bytes} bytes, at most ${MAX_LINE_BYTES})`);
      return;
    }
    const line = cleanLine(raw);
    if (line === '') return; // a blank line (also ends a wrapped entry: nothing joins across it)
    lines++;
    const lostMatch = LOST.exec(line);
    if (lostMatch) {
      commit();
      lost += Number(lostMatch[1] ?? lostMatch[2]);
      noise++;
      return;
    }
    const head = format.isHead(line);
    if (!head && isNoise(line)) {
      commit();
      noise++;
      format.noise?.(line, lineNo, ctx);
      return;
    }
    if (!head && pending && (format.isContinuation?.(line) ?? true) && pending.absorbed < MAX_JOIN && pending.cands[0].length + line.length < MAX_ENTRY) {
      // a continuation of the entry before it? joined with a blank (the client wrapped at one),
      // then without (it cut a token); the first candidate that parses wins
      const next: string[] = [];
      for (const c of pending.cands) {
        for (const t of [c + ' ' + line, c + line]) if (next.length < MAX_CANDS && !next.includes(t)) next.push(t);
      }
      for (const t of next) {
        const p = format.parse(t);
        if (typeof p !== 'string') {
          pending = { cands: [t], first: pending.first, last: lineNo, parsed: p, absorbed: 0 };
          joined++;
          return;
        }
      }
      if (typeof pending.parsed === 'string') {
        // still incomplete: keep joining (a long entry wrapped more than once)
        pending = { cands: next, first: pending.first, last: lineNo, parsed: pending.parsed, absorbed: pending.absorbed + 1 };
        return;
      }
    }
    commit();
    pending = { cands: [line], first: lineNo, last: lineNo, parsed: format.parse(line), absorbed: 0 };
    if (onBatch && ctx.writer.count >= batchRecords) handOver();
  };

  const splitter = new LineSplitter(onLine);
  return {
    push: (piece) => splitter.push(piece),
    end: () => {
      splitter.end();
      commit();
      format.finish?.(ctx);
      handOver();
      return {
        batch: ctx.writer.batch(),
        lines,
        records: ctx.handedOver + ctx.writer.count,
        ignored: ctx.ignored,
        noise,
        joined,
        skipped,
        skippedLines,
        lost,
        evidence: ctx.evidence,
        vcpuAddrs: ctx.vcpuAddrs,
        hasPid: ctx.hasPid,
        hasTid: ctx.hasTid,
        hasSeq: ctx.hasSeq,
        pseudoGpa: ctx.pseudoGpa,
        counters: ctx.counters,
      };
    },
  };
}

/** Runs an importer over a whole input. */
export function importAll(imp: TextImporter, input: string | Uint8Array): TextImport {
  for (const piece of pieces(input)) imp.push(piece);
  return imp.end();
}

/** The cleaned lines of the first `maxBytes` of an input (format detection). */
export function headLines(input: string | Uint8Array, maxLines = 2000, maxBytes = 1 << 20): string[] {
  const out: string[] = [];
  const splitter = new LineSplitter((text, bytes) => {
    if (out.length >= maxLines || bytes > MAX_LINE_BYTES) return;
    const l = cleanLine(text);
    if (l !== '') out.push(l);
  });
  splitter.push(typeof input === 'string' ? input.slice(0, maxBytes) : input.subarray(0, maxBytes));
  splitter.end();
  return out;
}

/** How many lines of the input's head pass `test` (each format's score for detection). */
export function countMatching(lines: readonly string[], test: (line: string) => boolean): number {
  let n = 0;
  for (const l of lines) if (test(l)) n++;
  return n;
}
