/**
 * Importer for the bpftrace text logs of the 2023 "Deadlock due to EPT_VIOLATION" thread
 * (fixtures/*.log): one line per probe hit,
 *
 *   21:25:50:282711 tid[3484173] pid[3484149] FAULTIN @ rip ffffffff814e6ca5 (92234 hits),
 *     gpa = 1343fa0b0, hva = 7feb409fa000, flags = 0 : MMU seq = 8002dc25, in-prog = 0,
 *     start = 7feacde61000, end = 7feacde62000
 *
 * Line kinds: FAULTIN / FAULTIN_RET (kvm_faultin_pfn entry/return), MAP (the TDP map path
 * entered), SPTE (an spte installed), MAP_RET (the map path's RET_PF_* result), ITER (a TDP
 * iterator step: parsed, no record). Mapping to records: FAULTIN -> FAULTIN, FAULTIN_RET ->
 * FAULTIN_RET, MAP and SPTE -> MAP, MAP_RET -> FAULT_RET with its ret. Numbers are hex without
 * 0x except ret, in-prog, hits and count. The "hva = X (Y)" form keeps X. The range is hva (6.1).
 *
 * The "(N hits)" counter counts probe hits at that guest RIP on that thread since the script
 * started, printed lines or not. We turn it into attempts: a FAULTIN stands for the hits since
 * the thread's previous line (repeat = the gap), the thread's first line stands for all N
 * earlier hits, and a FAULTIN_RET whose counter moved past the last FAULTIN gets a FAULTIN
 * record for the unprinted entries in front of it. For a vCPU stuck on one instruction those
 * hits are retries of the same access; that is how the 13-line excerpt of a 90 000-attempt
 * hang still shows 90 000 attempts.
 *
 * kvmfault's own `trace` text (lib/format.ts) reads back too: its extra kinds FAULT, FAULT_RET,
 * INVALIDATE, INVALIDATE_END and EXIT, and its fields flags (error code), vcpu, repeat,
 * fault seq, "range = gfn", an unknown rip ("rip ?") and a stale one ("rip 1000?"). Its first
 * line (TEXT_HEADER_PREFIX) says every line is one record, so the hit counter is not turned into
 * attempts there. Other lines starting with '#' are comments.
 *
 * Lines end at \n, \r\n or \r; the log may come as text or UTF-8 bytes, whole or in pieces
 * (createBpftraceImporter). Email quoting ("> ", "> > ") and blank lines are tolerated;
 * anything else that does not parse is counted and the first few are reported with line
 * numbers; lines over MAX_LINE_BYTES are skipped as too long. Parsing is linear in the input.
 * Never throws on content.
 */
import { TEXT_HEADER_PREFIX } from '../format';
import { Flag, Kind, kindFromName, RecordBatch, RecordWriter } from '../record';

export interface SkippedLine {
  line: number;
  text: string;
  reason: string;
}

export interface BpftraceImport {
  batch: RecordBatch;
  /** non-blank lines read */
  lines: number;
  records: number;
  /** recognised lines that make no record (ITER) */
  ignored: number;
  skipped: number;
  /** the first `maxReported` skipped lines */
  skippedLines: SkippedLine[];
  /** the text was kvmfault's own `trace` output (one record per line), not an incident log */
  kvmfaultText: boolean;
  /** the traced host's kernel release, when the text's header says it */
  kernel: string | null;
  /** per thread: the first and last line that made a record for it (at most 65536 threads) */
  evidence: Map<number, { first: number; last: number; count: number }>;
}

export interface BpftraceImportOptions {
  /** skipped lines to keep for the report (default 10) */
  maxReported?: number;
  /**
   * Hand the records over in batches of about `batchRecords` as they are made (a log streamed
   * into a detector: memory stays bounded). The returned `batch` then holds no records.
   */
  onBatch?: (batch: RecordBatch) => void;
  /** records per onBatch batch (default 65536) */
  batchRecords?: number;
}

// Every regex here runs in time linear in the line: HEAD is anchored, its quantified runs are
// separated by literals, and its tail ([^]*) always matches, so a failed match never retries
// the whitespace runs before it. Fields are found by scanFields (no regex search).
const HEAD = /^(\d{1,2}):(\d{2}):(\d{2})[:.](\d{1,9})\s+tid\[(\d{1,20})\]\s+pid\[(\d{1,20})\]\s+([A-Z][A-Z_]{0,31})\s+@\s+rip\s+(?:0x)?([0-9a-fA-F]{1,16}|\?)(\?)?(?:\s*\((\d{1,20})\s+hits?\))?\s*,?([^]*)$/;
/** a field's value at a fixed position (sticky): "-?(0x)?hex", then an optional "(hex)" */
const FIELD_VALUE = /\s*(-?(?:0x)?[0-9a-fA-F]+)(?:\s*\(\s*(?:0x)?[0-9a-fA-F]+\s*\))?/y;
/** Lines longer than this (in UTF-8 bytes) are skipped as "line too long" (the incident's are ~250). */
export const MAX_LINE_BYTES = 16384;
const QUOTE = /^\s*(?:>\s?)+/;
/** A line without its mail quoting ("> ", ">> ", "> > ", ">" + tab) and surrounding blanks. */
export function unquote(raw: string): string {
  return raw.replace(QUOTE, '').trim();
}
const DAY_NS = 86400e9;
/** threads whose hit counters are kept; past it the longest-known one is forgotten (memory bound) */
const MAX_THREADS = 65536;
const DECIMAL_KEYS = new Set(['ret', 'in-prog', 'count', 'hits', 'tdp_mmu', 'vcpu', 'repeat']);
const RANGE_GFN = /(?:^|[\s,:])range\s*=\s*gfn\b/;
const UNKNOWN_RIP = (1n << 64n) - 1n;
/** kinds whose lines carry no guest address */
const NO_GPA = new Set<number>([Kind.INVALIDATE_START, Kind.INVALIDATE_END, Kind.EXIT]);
const HEX64 = /^(?:0x)?[0-9a-f]{1,16}$/i;

interface ThreadState {
  hits: number;
  ripLo: number;
  ripHi: number;
  lastFaultinHits: number;
}

function parseTimestamp(h: string, m: string, s: string, frac: string): number {
  const hh = Number(h), mm = Number(m), ss = Number(s);
  if (hh > 23 || mm > 59 || ss > 60) return NaN;
  return ((hh * 60 + mm) * 60 + ss) * 1e9 + Number(frac.padEnd(9, '0'));
}

const isKeyChar = (c: number): boolean =>
  (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x20 || c === 0x2d; // A-Z a-z _ space -
const isLetter = (c: number): boolean => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
/** what \\s matches */
const isSpace = (c: number): boolean =>
  c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
  c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000 || c === 0xfeff;

/**
 * "key = value" pairs of a line's tail into `fields` (first one of a key wins): a key is a run of
 * letters, '_', '-' and spaces starting with a letter, right before '=' (spaces between); the
 * value is hex or decimal, optionally followed by a "(hex)" that is dropped. One pass over the
 * text: each '=' looks back at most to the end of the previous field.
 */
export function scanFields(rest: string, fields: Map<string, string>): void {
  fields.clear();
  let pos = 0; // the end of the previous field: keys start at or after it
  for (let eq = rest.indexOf('=', pos); eq >= 0; eq = rest.indexOf('=', eq + 1)) {
    let k = eq;
    while (k > pos && isSpace(rest.charCodeAt(k - 1))) k--;
    const keyEnd = k;
    while (k > pos && isKeyChar(rest.charCodeAt(k - 1))) k--;
    while (k < keyEnd && !isLetter(rest.charCodeAt(k))) k++;
    if (k === keyEnd) continue;
    FIELD_VALUE.lastIndex = eq + 1;
    const v = FIELD_VALUE.exec(rest);
    if (v === null) continue;
    const key = rest.slice(k, keyEnd).trim().toLowerCase().replace(/ +/g, ' ');
    if (!fields.has(key)) fields.set(key, v[1]);
    pos = FIELD_VALUE.lastIndex;
    eq = pos - 1;
  }
}

const HAS_GPA = /(?:^|[\s,:])gpa\s*=\s*(?:0x)?[0-9a-fA-F]/;
const NO_GPA_KIND = /\]\s+(?:INVALIDATE|INVALIDATE_END|EXIT|ITER)\s+@/;
/**
 * Whether one cleaned line is a whole entry of this format (its head, and a gpa where its kind
 * has one): cheap, no records made. Used to tell a wrapped line's join from a fragment.
 */
export function isCompleteBpftraceLine(line: string): boolean {
  return line.length <= MAX_LINE_BYTES && HEAD.test(line) && (HAS_GPA.test(line) || NO_GPA_KIND.test(line));
}

/** Bytes (or characters of a string) looksLikeBpftraceLog reads at most. */
export const DETECT_BYTES = 1 << 20;

/**
 * Calls onLine for each line of the text pushed in pieces: lines end at \n, \r\n or a lone \r
 * (a terminator split across pieces counts once). Works on the UTF-8 bytes (text pieces are
 * encoded): a line's bytes are kept and decoded only up to MAX_LINE_BYTES + 1, with its full
 * length in bytes, so one endless line costs bounded memory and no decoding.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private kept = 0;
  private length = 0;
  private afterCR = false;
  private pending = false;
  private lineNo = 0;

  constructor(private readonly onLine: (text: string, bytes: number, lineNo: number) => void) {}

  push(piece: string | Uint8Array): void {
    const b = typeof piece === 'string' ? Buffer.from(piece, 'utf8')
      : Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    let i = 0;
    if (this.afterCR && b.length > 0) {
      if (b[0] === 0x0a) i = 1; // the \n of a \r\n split across pieces
      this.afterCR = false;
    }
    let lf = -2, cr = -2; // the next \n and \r at or after i (-1: none left)
    while (i < b.length) {
      if (lf !== -1 && lf < i) lf = b.indexOf(0x0a, i);
      if (cr !== -1 && cr < i) cr = b.indexOf(0x0d, i);
      const j = lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
      if (j < 0) {
        this.append(b, i, b.length);
        return;
      }
      this.append(b, i, j);
      this.emit();
      i = j + 1;
      if (j === cr) {
        if (j + 1 === b.length) this.afterCR = true;
        else if (b[j + 1] === 0x0a) i = j + 2;
      }
    }
  }

  /** The last line (one without a terminator). */
  end(): void {
    if (this.pending) this.emit();
  }

  private append(b: Buffer, from: number, to: number): void {
    const n = to - from;
    if (n <= 0) return;
    this.pending = true;
    const keep = Math.min(n, MAX_LINE_BYTES + 1 - this.kept);
    if (keep > 0) {
      this.parts.push(b.subarray(from, from + keep));
      this.kept += keep;
    }
    this.length += n;
  }

  private emit(): void {
    const text = this.parts.length === 1 ? this.parts[0].toString('utf8') : Buffer.concat(this.parts).toString('utf8');
    const length = this.length;
    this.parts = [];
    this.kept = 0;
    this.length = 0;
    this.pending = false;
    this.onLine(text, length, ++this.lineNo);
  }
}

/** Bytes or text in pieces of about 1 MiB (text not split inside a surrogate pair). */
export function* pieces(input: string | Uint8Array, size = 1 << 20): Generator<string | Uint8Array> {
  if (typeof input !== 'string') {
    for (let at = 0; at < input.length; at += size) yield input.subarray(at, at + size);
    return;
  }
  for (let at = 0; at < input.length;) {
    let to = Math.min(input.length, at + size);
    const c = input.charCodeAt(to - 1);
    if (to < input.length && c >= 0xd800 && c <= 0xdbff) to++;
    yield input.slice(at, to);
    at = to;
  }
}

/**
 * True when the text looks like this log format: some line in the first DETECT_BYTES parses.
 * Accepts the text or its UTF-8 bytes.
 */
export function looksLikeBpftraceLog(input: string | Uint8Array, maxBytes = DETECT_BYTES): boolean {
  let found = false;
  const lines = new LineSplitter((text, length) => {
    if (!found && length <= MAX_LINE_BYTES && HEAD.test(unquote(text))) found = true;
  });
  lines.push(typeof input === 'string' ? input.slice(0, maxBytes) : input.subarray(0, maxBytes));
  lines.end();
  return found;
}

export interface BpftraceImporter {
  /** the traced host's kernel release, once the text's header said it */
  readonly kernel: string | null;
  /**
   * The next piece of the log: UTF-8 bytes (pieces may split lines and characters) or text
   * (pieces may split lines, not a surrogate pair).
   */
  push(piece: string | Uint8Array): void;
  /** ends the log and returns what was imported */
  end(): BpftraceImport;
}

/** An importer fed in pieces (a log streamed from a file): memory bounded by the records made. */
export function createBpftraceImporter(options: BpftraceImportOptions = {}): BpftraceImporter {
  const maxReported = options.maxReported ?? 10;
  let writer = new RecordWriter(1024);
  let handedOver = 0;
  const onBatch = options.onBatch;
  const batchRecords = Math.max(1, options.batchRecords ?? 65536);
  const threads = new Map<number, ThreadState>();
  const skippedLines: SkippedLine[] = [];
  let lines = 0, skipped = 0, ignored = 0;
  let dayOffset = 0, lastTs = -1;
  const fields = new Map<string, string>();
  let ownText = false; // kvmfault's own trace text: one record per line
  let kernel: string | null = null;
  const evidence = new Map<number, { first: number; last: number; count: number }>();

  const skip = (line: number, raw: string, reason: string): void => {
    skipped++;
    if (skippedLines.length < maxReported) skippedLines.push({ line, text: raw.length > 200 ? raw.slice(0, 200) + '...' : raw, reason });
  };

  const onLine = (raw: string, rawBytes: number, lineNo: number): void => {
    const line = unquote(raw);
    if (line === '') return;
    if (line.startsWith('#')) {
      if (line.startsWith(TEXT_HEADER_PREFIX)) {
        ownText = true;
        kernel = /\bkernel ([^\s;,]+)/.exec(line)?.[1] ?? kernel;
      }
      return;
    }
    lines++;
    if (rawBytes > MAX_LINE_BYTES) {
      skip(lineNo, raw, `line too long (${rawBytes} bytes, at most ${MAX_LINE_BYTES})`);
      return;
    }
    const m = HEAD.exec(line);
    if (!m) {
      skip(lineNo, raw, 'not a "HH:MM:SS:usec tid[N] pid[N] KIND @ rip X ..." line');
      return;
    }
    let ts = parseTimestamp(m[1], m[2], m[3], m[4]);
    if (Number.isNaN(ts)) {
      skip(lineNo, raw, 'bad timestamp');
      return;
    }
    // A log that runs past midnight: the clock jumps back by most of a day (> 12 h behind the
    // latest time seen), and from there on it is the next day. Lines are not strictly ordered
    // (threads print late by microseconds), so a line more than 12 h *ahead* is one from before
    // that midnight printed after it: the previous day, without moving the day back. Before the
    // first midnight there is no previous day: such a line is put at time 0, a tiny reorder.
    ts += dayOffset;
    if (lastTs >= 0) {
      if (ts < lastTs - DAY_NS / 2) {
        dayOffset += DAY_NS;
        ts += DAY_NS;
      } else if (ts > lastTs + DAY_NS / 2) {
        ts = Math.max(0, ts - DAY_NS);
      }
    }
    if (ts > lastTs) lastTs = ts;
    const tid = Number(m[5]), pid = Number(m[6]), kindText = m[7];
    if (tid > 0xffffffff || pid > 0xffffffff) {
      skip(lineNo, raw, 'tid/pid out of range');
      return;
    }
    const rip = m[8] === '?' ? UNKNOWN_RIP : BigInt('0x' + m[8]);
    const ripStale = m[9] !== undefined;
    const hits = m[10] === undefined ? -1 : Number(m[10]);
    const rest = m[11];
    scanFields(rest, fields);
    // the incident's own kinds; the others (FAULTIN, FAULTIN_RET, MAP and kvmfault's FAULT,
    // FAULT_RET, INVALIDATE, INVALIDATE_END, EXIT) are the record kind names in capitals, as
    // lib/format.ts prints them
    let kind: number | undefined;
    switch (kindText) {
      case 'SPTE': kind = Kind.MAP; break;
      case 'MAP_RET': kind = Kind.FAULT_RET; break;
      case 'ITER': kind = 0; break;
      default: kind = kindText === 'TEST' ? undefined : kindFromName(kindText.toLowerCase());
    }
    if (kind === undefined) {
      skip(lineNo, raw, `unknown line kind ${kindText}`);
      return;
    }
    const gpaText = fields.get('gpa');
    if (!NO_GPA.has(kind) && (gpaText === undefined || !HEX64.test(gpaText))) {
      skip(lineNo, raw, 'no gpa');
      return;
    }
    let bad = '';
    const num = (key: string): bigint | null => {
      const t = fields.get(key);
      if (t === undefined) return null;
      if (DECIMAL_KEYS.has(key)) {
        if (!/^-?\d+$/.test(t)) { bad = key; return null; }
        return BigInt(t);
      }
      if (!HEX64.test(t)) { bad = key; return null; }
      return BigInt(t.startsWith('0x') || t.startsWith('0X') ? t : '0x' + t);
    };
    const gpa = num('gpa'), hva = num('hva'), pfn = num('pfn'), seq = num('mmu seq');
    const inProg = num('in-prog'), start = num('start'), end = num('end'), ret = num('ret');
    const errorCode = num('flags'), vcpu = num('vcpu'), repeatField = num('repeat'), faultSeq = num('fault seq');
    if (bad) {
      skip(lineNo, raw, `bad value for ${bad}`);
      return;
    }
    if (ret !== null && (ret < -0x7fffffffn || ret > 0x7fffffffn)) {
      skip(lineNo, raw, 'ret out of range');
      return;
    }
    if ((vcpu !== null && (vcpu < 0n || vcpu >= 0xffffffffn)) || (repeatField !== null && (repeatField < 1n || repeatField > 0xfffffffen))) {
      skip(lineNo, raw, 'vcpu/repeat out of range');
      return;
    }
    const repeat = repeatField === null ? 1 : Number(repeatField);
    const flags = (ripStale ? Flag.RIP_STALE : 0) | (RANGE_GFN.test(rest) ? Flag.RANGE_GFN : 0);

    // hit counter -> attempts (see the header comment)
    const ripLo = Number(rip & 0xffffffffn), ripHi = Number(rip >> 32n);
    let th = threads.get(tid);
    const sameRip = th !== undefined && th.ripLo === ripLo && th.ripHi === ripHi;
    const before = sameRip ? th!.hits : 0;
    const gap = hits >= 0 ? Math.max(0, hits - before) : 0;
    if (!th) {
      th = { hits: 0, ripLo, ripHi, lastFaultinHits: -1 };
      if (threads.size >= MAX_THREADS) threads.delete(threads.keys().next().value!);
      threads.set(tid, th);
    } else if (!sameRip) {
      th.ripLo = ripLo;
      th.ripHi = ripHi;
      th.lastFaultinHits = -1;
    }
    if (hits >= 0) th.hits = Math.max(before, hits);

    const emit = (k: number, repeat: number): void => {
      const ev = evidence.get(tid);
      if (ev) {
        ev.last = lineNo;
        ev.count++;
      } else if (evidence.size < MAX_THREADS) {
        evidence.set(tid, { first: lineNo, last: lineNo, count: 1 });
      }
      const r = writer.begin(k);
      writer.setU64(r, 'ts_ns', ts);
      writer.setU32(r, 'pid', pid);
      writer.setU32(r, 'tid', tid);
      if (rip !== UNKNOWN_RIP) writer.setU64(r, 'rip', rip);
      if (gpa !== null) writer.setU64(r, 'gpa', gpa);
      if (hva !== null) writer.setU64(r, 'hva', hva);
      if (vcpu !== null) writer.setU32(r, 'vcpu_id', Number(vcpu));
      if (faultSeq !== null) writer.setU64(r, 'fault_seq', faultSeq);
      if (errorCode !== null && (k === Kind.FAULT || k === Kind.FAULTIN)) writer.setU64(r, 'error_code', errorCode);
      if (pfn !== null && k !== Kind.FAULTIN) writer.setU64(r, 'pfn', pfn);
      if (seq !== null) writer.setU64(r, 'mmu_seq', seq);
      if (inProg !== null) writer.setInProgress(r, Number(inProg));
      if (start !== null) writer.setU64(r, 'range_start', start);
      if (end !== null) writer.setU64(r, 'range_end', end);
      if (ret !== null && k !== Kind.FAULTIN) writer.setRet(r, Number(ret));
      if (repeat > 1) {
        writer.setU32(r, 'repeat', Math.min(repeat, 0xfffffffe));
        writer.setFlags(r, flags | Flag.COALESCED);
      } else if (flags) {
        writer.setFlags(r, flags);
      }
    };

    if (kind === 0) {
      ignored++;
    } else if (ownText) {
      emit(kind, repeat);
    } else if (kind === Kind.FAULTIN) {
      emit(Kind.FAULTIN, Math.max(1, gap));
      th.lastFaultinHits = th.hits;
    } else if (kind === Kind.FAULTIN_RET) {
      // its own FAULTIN (and maybe more) were not printed: stand in for them
      if (hits >= 0 && (th.lastFaultinHits < 0 || hits > th.lastFaultinHits) && gap > 0) {
        emit(Kind.FAULTIN, gap);
        th.lastFaultinHits = th.hits;
      } else if (hits < 0 && th.lastFaultinHits < 0) {
        emit(Kind.FAULTIN, 1);
        th.lastFaultinHits = 0;
      }
      emit(Kind.FAULTIN_RET, repeat);
    } else {
      emit(kind, repeat);
    }
  };

  const handOver = (): void => {
    if (writer.count === 0) return;
    handedOver += writer.count;
    const batch = writer.batch();
    writer = new RecordWriter(1024);
    onBatch!(batch);
  };

  const splitter = new LineSplitter((text, bytes, lineNo) => {
    onLine(text, bytes, lineNo);
    if (onBatch && writer.count >= batchRecords) handOver();
  });
  return {
    get kernel() {
      return kernel;
    },
    push: (piece) => splitter.push(piece),
    end: () => {
      splitter.end();
      if (onBatch) handOver();
      return { batch: writer.batch(), lines, records: handedOver + writer.count, ignored, skipped, skippedLines, kvmfaultText: ownText, kernel, evidence };
    },
  };
}

/** Imports a whole log: its text or its UTF-8 bytes. */
export function importBpftraceLog(input: string | Uint8Array, options: BpftraceImportOptions = {}): BpftraceImport {
  const imp = createBpftraceImporter(options);
  for (const piece of pieces(input)) imp.push(piece);
  return imp.end();
}
