/**
 * Damage fuzzing for capture files, shared by test 50 (a bounded run) and bench/capture-fuzz.ts
 * (a million cases). One valid capture of a scenario that progresses but comes close to the stuck
 * threshold (runs of attempts on one gpa, each ended by a MAP: lose one MAP and two runs join
 * into a stuck-looking one), then per case random flips, inserted and deleted bytes and
 * truncations, read back in memory through the same path as `kvmfault analyze`.
 *
 * Per case it checks:
 *   - no exception but CaptureError (openCapture may refuse only when the header's first two
 *     table blocks, or the header as a whole, were hit);
 *   - every record handed out is an original record, in order, none twice (damage never becomes
 *     a record);
 *   - no stuck verdict (the scenario has none: any would come from damage);
 *   - every chunk the damage did not touch is read whole (recovery loses nothing intact).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CaptureError, CaptureWriter, openCaptureBytes } from '../../lib/capture';
import { feedCapture } from '../../lib/analyze';
import { StaleFaultDetector } from '../../lib/detector';
import { RECORD_SIZE, RecordBatch } from '../../lib/record';
import { prng, TraceBuilder, vcpu } from './scenarios';

const MS = 1e6;
const SLOT = RECORD_SIZE + 4;
const CHUNK_HEADER = 32;

/** Detector thresholds of the fuzz: 40 attempts over 20 ms. */
export const FUZZ_DETECTOR = { stuckAttempts: 40, stuckNs: 20 * MS, capacity: 64, vmCapacity: 16 } as const;

/**
 * vCPUs that fault one gpa `run` times (1 ms apart) and then map it, `runs` times over (the same
 * gpa again: a refault after mapping is progress). With FUZZ_DETECTOR, never stuck; two runs
 * joined (a lost MAP) would be.
 */
export function nearStuckScenario(vcpus = 3, runs = 8, run = 30): RecordBatch {
  const b = new TraceBuilder();
  const vs = Array.from({ length: vcpus }, (_, k) => vcpu(7000 + k * 100, 0));
  let ts = 1e9;
  for (let r = 0; r < runs; r++) {
    for (let i = 0; i < run; i++) {
      for (let k = 0; k < vcpus; k++) b.fault(vs[k], (ts += Math.floor(MS / vcpus)), 0x2000000 + k * 0x1000, { faultSeq: 0x1000 + r });
    }
    for (let k = 0; k < vcpus; k++) b.map(vs[k], (ts += Math.floor(MS / vcpus)), 0x2000000 + k * 0x1000, { faultSeq: 0x1000 + r });
  }
  return b.batch();
}

export interface FuzzCapture {
  bytes: Uint8Array;
  headerBytes: number;
  /** end of the first two (table) blocks: damage there may make the file unreadable */
  tableBytes: number;
  chunkRecords: number;
  records: number;
  /** [start, end) of every data chunk, and its first record index */
  chunks: { start: number; end: number; first: number; count: number }[];
  /** original records, by timestamp (unique in the scenario) */
  byTs: Map<number, number>;
  original: Uint8Array;
}

/** Writes the scenario as a capture (in a temp dir, read back into memory). */
export function makeFuzzCapture(batch: RecordBatch = nearStuckScenario(), chunkRecords = 32): FuzzCapture {
  const dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-fuzz-'));
  try {
    const file = path.join(dir, 'f.kvmfcap');
    const w = CaptureWriter.create(file, { chunkRecords, flushMs: 0, meta: { hostKernel: '6.1.30', startTimeMs: 1_764_554_117_000 } });
    w.write(batch);
    w.close();
    const bytes = new Uint8Array(readFileSync(file));
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    const headerBytes = dv.getUint32(12, true);
    const tableBytes = 2 * (40 + dv.getUint32(20, true) * 24);
    const chunks: FuzzCapture['chunks'] = [];
    for (let first = 0, at = headerBytes; first < batch.length; first += chunkRecords) {
      const count = Math.min(chunkRecords, batch.length - first);
      chunks.push({ start: at, end: at + CHUNK_HEADER + count * SLOT, first, count });
      at += CHUNK_HEADER + count * SLOT;
    }
    const byTs = new Map<number, number>();
    for (let i = 0; i < batch.length; i++) byTs.set(batch.tsNs(i), i);
    const original = batch.copy().recordBytes(0);
    return { bytes, headerBytes, tableBytes, chunkRecords, records: batch.length, chunks, byTs, original: new Uint8Array(original.buffer, original.byteOffset, batch.length * RECORD_SIZE) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export type Mutation = { op: 'flip' | 'set' | 'insert' | 'delete'; at: number; value: number } | { op: 'truncate'; at: number; value: 0 };

/** 1-3 random damages (flips, random bytes, inserted and deleted bytes), sometimes a truncation, in original file coordinates. */
export function randomMutations(rnd: () => number, size: number, headerBytes: number): Mutation[] {
  const out: Mutation[] = [];
  const n = 1 + Math.floor(rnd() * 3);
  const cut = rnd() < 0.2 ? Math.floor(rnd() * size) : size;
  if (cut < size) out.push({ op: 'truncate', at: cut, value: 0 });
  for (let k = 0; k < n && cut > 0; k++) {
    // mostly anywhere; sometimes aimed at the header
    const at = rnd() < 0.1 ? Math.floor(rnd() * Math.min(headerBytes, cut)) : Math.floor(rnd() * cut);
    const r = rnd();
    const op = r < 0.35 ? 'flip' : r < 0.55 ? 'set' : r < 0.8 ? 'insert' : 'delete';
    out.push({ op, at, value: op === 'flip' ? 1 << Math.floor(rnd() * 8) : Math.floor(rnd() * 256) });
  }
  return out;
}

/** Applies mutations given in original coordinates (truncation first, then from the end backwards). */
export function applyMutations(bytes: Uint8Array, muts: Mutation[]): Uint8Array {
  let b = Buffer.from(bytes);
  const t = muts.find((m) => m.op === 'truncate');
  if (t) b = b.subarray(0, t.at);
  const rest = muts.filter((m) => m.op !== 'truncate').sort((x, y) => y.at - x.at);
  for (const m of rest) {
    if (m.at > b.length) continue;
    switch (m.op) {
      case 'flip': if (m.at < b.length) b[m.at] ^= m.value; break;
      case 'set': if (m.at < b.length) b[m.at] = m.value; break;
      case 'insert': b = Buffer.concat([b.subarray(0, m.at), Buffer.from([m.value]), b.subarray(m.at)]); break;
      case 'delete': if (m.at < b.length) b = Buffer.concat([b.subarray(0, m.at), b.subarray(m.at + 1)]); break;
    }
  }
  return b;
}

/** Whether a mutation changes bytes of [start, end) (an insertion exactly at start does not). */
function touches(m: Mutation, start: number, end: number): boolean {
  if (m.op === 'truncate') return m.at < end;
  if (m.op === 'insert') return m.at > start && m.at < end;
  return m.at >= start && m.at < end;
}

export interface CaseResult {
  /** 'ok', 'refused' (openCapture threw a CaptureError), or a failure description */
  outcome: 'ok' | 'refused' | string;
  records: number;
  stuck: number;
  damage: number;
}

/** Reads one mutated capture the way analyze does and checks it (see the file comment). */
export async function runCase(cap: FuzzCapture, muts: Mutation[], control = false): Promise<CaseResult> {
  const bytes = applyMutations(cap.bytes, muts);
  let reader;
  try {
    reader = await openCaptureBytes(bytes, 'fuzz');
  } catch (e) {
    if (!(e instanceof CaptureError)) return { outcome: `exception from openCapture: ${(e as Error).stack}`, records: 0, stuck: 0, damage: 0 };
    // refusing is right only when both table blocks (the field table and its copy) were hit
    const block = cap.tableBytes / 2;
    const hit1 = muts.some((m) => touches(m, 0, block)), hit2 = muts.some((m) => touches(m, block, 2 * block));
    const legit = (hit1 && hit2) || muts.some((m) => m.op === 'truncate' && m.at < block);
    return { outcome: legit ? 'refused' : `refused although a table block is intact: ${e.message} (mutations ${JSON.stringify(muts)})`, records: 0, stuck: 0, damage: 0 };
  }
  const stuckTids = new Set<number>();
  const detector = new StaleFaultDetector({ ...FUZZ_DETECTOR, onVerdict: (v) => { if (v.state === 'stuck') stuckTids.add(v.tid); } });
  const seen = new Uint8Array(cap.records);
  let last = -1, bad: string | null = null, n = 0;
  const check = {
    push(batch: RecordBatch): void {
      for (let i = 0; i < batch.length && !bad; i++) {
        const idx = cap.byTs.get(batch.tsNs(i));
        const rb = batch.recordBytes(i);
        if (idx === undefined || !Buffer.from(rb.buffer, rb.byteOffset, RECORD_SIZE).equals(Buffer.from(cap.original.buffer, cap.original.byteOffset + idx * RECORD_SIZE, RECORD_SIZE))) {
          bad = `record ${n + i} handed out is not an original record`;
        } else if (idx <= last) {
          bad = `record ${idx} out of order or twice`;
        } else {
          last = idx;
          seen[idx] = 1;
        }
      }
      n += batch.length;
      detector.push(batch);
    },
    discontinuity(): void {
      if (!control) detector.discontinuity();
    },
  };
  try {
    await feedCapture(reader, check as unknown as StaleFaultDetector);
  } catch (e) {
    if (!(e instanceof CaptureError)) return { outcome: `exception while reading: ${(e as Error).stack}`, records: n, stuck: 0, damage: reader.damage.length };
  }
  for (const v of detector.snapshot()) if (v.state === 'stuck') stuckTids.add(v.tid);
  if (bad) return { outcome: bad, records: n, stuck: stuckTids.size, damage: reader.damage.length };
  if (stuckTids.size > 0 && !control) return { outcome: `false stuck verdict(s) from damage: ${stuckTids.size}`, records: n, stuck: stuckTids.size, damage: reader.damage.length };
  const changed = muts.length > 0;
  if (changed && reader.damage.length === 0 && n !== cap.records) return { outcome: `records lost without a damage report (${n} of ${cap.records})`, records: n, stuck: stuckTids.size, damage: 0 };
  const size = cap.bytes.byteLength;
  if (muts.some((m) => m.op === 'truncate') && reader.complete !== false) return { outcome: `a truncated file read as complete (${JSON.stringify(muts)})`, records: n, stuck: stuckTids.size, damage: reader.damage.length };
  if (!muts.some((m) => touches(m, size - 48, size)) && reader.complete !== true) {
    return { outcome: `an intact end chunk not found (${JSON.stringify(muts)})`, records: n, stuck: stuckTids.size, damage: reader.damage.length };
  }
  for (const c of cap.chunks) {
    if (muts.some((m) => touches(m, c.start, c.end))) continue;
    for (let i = c.first; i < c.first + c.count; i++) {
      if (!seen[i]) return { outcome: `intact chunk at ${c.start} (records ${c.first}..${c.first + c.count - 1}) not read whole: record ${i} missing (mutations ${JSON.stringify(muts)})`, records: n, stuck: stuckTids.size, damage: reader.damage.length };
    }
  }
  return { outcome: 'ok', records: n, stuck: stuckTids.size, damage: reader.damage.length };
}

export interface FuzzSummary {
  cases: number;
  refused: number;
  /** cases that failed a check (failures keeps the first few) */
  failed: number;
  failures: { seed: number; caseNo: number; outcome: string }[];
  falseStuck: number;
  recordsRead: number;
  seconds: number;
}

/** Runs `cases` random cases from `seed`; failures are collected (at most `keep`), never thrown. */
export async function fuzz(cap: FuzzCapture, cases: number, seed: number, keep = 20): Promise<FuzzSummary> {
  const rnd = prng(seed);
  const t0 = performance.now();
  const s: FuzzSummary = { cases, refused: 0, failed: 0, failures: [], falseStuck: 0, recordsRead: 0, seconds: 0 };
  for (let k = 0; k < cases; k++) {
    const muts = randomMutations(rnd, cap.bytes.byteLength, cap.headerBytes);
    const r = await runCase(cap, muts);
    s.recordsRead += r.records;
    if (r.outcome === 'refused') s.refused++;
    else if (r.outcome !== 'ok') {
      s.failed++;
      if (r.outcome.startsWith('false stuck')) s.falseStuck++;
      if (s.failures.length < keep) s.failures.push({ seed, caseNo: k, outcome: `${r.outcome} [${JSON.stringify(muts)}]` });
    }
  }
  s.seconds = (performance.now() - t0) / 1000;
  return s;
}
