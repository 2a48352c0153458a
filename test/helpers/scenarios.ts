/**
 * Generated traces for detector tests and the benchmark: each scenario is what a probe mode
 * would record for one known situation, built with RecordWriter (unset fields stay UNKNOWN).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Flag, Kind, RECORD_SIZE, RecordBatch, RecordWriter } from '../../lib/record';

/** An incident fixture in test/fixtures. */
export function fixturePath(name: string): string {
  const p = path.join(__dirname, '../../../test/fixtures', name); // dist/test/helpers -> repo/test/fixtures
  if (!existsSync(p)) throw new Error(`fixture ${name} not found at ${p}`);
  return p;
}

/** mulberry32: small, fast, seeded. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Vcpu {
  pid: number;
  tid: number;
  vmId: bigint;
  vcpuId: number;
  rip?: bigint;
}

export interface VmState {
  mmuSeq?: number;
  faultSeq?: number;
  inProgress?: number;
  rangeStart?: number;
  rangeEnd?: number;
  rangeGfn?: boolean;
}

/** Builds records; every helper appends one record and returns its index. */
export class TraceBuilder {
  readonly w = new RecordWriter(4096);

  private base(kind: number, v: Vcpu, ts: number, gpa: number | null, s: VmState, repeat = 1): number {
    const r = this.w.begin(kind);
    this.w.setU64(r, 'ts_ns', ts);
    this.w.setU32(r, 'pid', v.pid);
    this.w.setU32(r, 'tid', v.tid);
    this.w.setU64(r, 'vm_id', v.vmId);
    this.w.setU32(r, 'vcpu_id', v.vcpuId);
    if (v.rip !== undefined) this.w.setU64(r, 'rip', v.rip);
    if (gpa !== null) {
      this.w.setU64(r, 'gpa', gpa);
      this.w.setU64(r, 'hva', 0x7f0000000000 + gpa);
    }
    if (s.mmuSeq !== undefined) this.w.setU64(r, 'mmu_seq', s.mmuSeq);
    if (s.faultSeq !== undefined) this.w.setU64(r, 'fault_seq', s.faultSeq);
    if (s.inProgress !== undefined) this.w.setInProgress(r, s.inProgress);
    if (s.rangeStart !== undefined) this.w.setU64(r, 'range_start', s.rangeStart);
    if (s.rangeEnd !== undefined) this.w.setU64(r, 'range_end', s.rangeEnd);
    let flags = s.rangeGfn ? Flag.RANGE_GFN : 0;
    if (repeat > 1) {
      this.w.setU32(r, 'repeat', repeat);
      flags |= Flag.COALESCED;
    }
    this.w.setFlags(r, flags);
    return r;
  }

  fault(v: Vcpu, ts: number, gpa: number, s: VmState = {}, repeat = 1): number {
    return this.base(Kind.FAULT, v, ts, gpa, s, repeat);
  }
  faultin(v: Vcpu, ts: number, gpa: number, s: VmState = {}, repeat = 1): number {
    return this.base(Kind.FAULTIN, v, ts, gpa, s, repeat);
  }
  map(v: Vcpu, ts: number, gpa: number, s: VmState = {}): number {
    return this.base(Kind.MAP, v, ts, gpa, s);
  }
  faultRet(v: Vcpu, ts: number, gpa: number, ret: number, s: VmState = {}): number {
    const r = this.base(Kind.FAULT_RET, v, ts, gpa, s);
    this.w.setRet(r, ret);
    return r;
  }
  invalidate(v: Vcpu, ts: number, s: VmState = {}): number {
    return this.base(Kind.INVALIDATE_START, v, ts, null, s);
  }
  batch(): RecordBatch {
    return this.w.batch();
  }
}

const MS = 1e6;

export function vcpu(pid: number, index: number, vmId = BigInt(pid) * 0x1000n + 0xffff888000000000n): Vcpu {
  return { pid, tid: pid + 1 + index, vmId, vcpuId: index, rip: 0xffffffff81000000n + BigInt(index) * 0x10n };
}

/**
 * Invalidation storm (kprobe mode, 6.1 RET_PF values): each page is retried a few times while
 * invalidations move the sequence / cover the hva, then fixed. Expect retrying, never stuck.
 */
export function invalidationStorm(pages = 50, retries = 5): RecordBatch {
  const b = new TraceBuilder();
  const v = vcpu(1000, 0);
  let ts = 1e9, seq = 0x1000;
  for (let p = 0; p < pages; p++) {
    const gpa = 0x100000 + p * 4096;
    const hva = 0x7f0000000000 + gpa;
    for (let r = 0; r < retries; r++) {
      // an invalidation covering this hva is in progress, or just finished and bumped the sequence
      const inRange = r % 2 === 0;
      b.invalidate(v, ts, { mmuSeq: seq, inProgress: 1, rangeStart: hva, rangeEnd: hva + 4096 });
      b.fault(v, (ts += 10_000), gpa, inRange
        ? { mmuSeq: seq, faultSeq: seq, inProgress: 1, rangeStart: hva, rangeEnd: hva + 4096 }
        : { mmuSeq: seq + 1, faultSeq: seq, inProgress: 0, rangeStart: hva, rangeEnd: hva + 4096 });
      b.faultRet(v, (ts += 10_000), gpa, 1 /* RET_PF_RETRY */, { mmuSeq: ++seq, inProgress: 0 });
    }
    b.fault(v, (ts += 10_000), gpa, { mmuSeq: seq, faultSeq: seq, inProgress: 0 });
    b.faultRet(v, (ts += 10_000), gpa, 4 /* RET_PF_FIXED on 6.1 */, { mmuSeq: seq, inProgress: 0 });
  }
  return b.batch();
}

/** One vCPU retrying one gpa while an invalidation covering its hva never ends (in_progress stays 1). */
export function invalidationStuck(attempts = 3000, gapNs = 1 * MS, rangeGfn = false): RecordBatch {
  const b = new TraceBuilder();
  const v = vcpu(2000, 0);
  const gpa = 0x2345000, hva = 0x7f0000000000 + gpa;
  const range = rangeGfn
    ? { rangeStart: gpa / 4096 - 16, rangeEnd: gpa / 4096 + 16, rangeGfn: true }
    : { rangeStart: hva - 0x200000, rangeEnd: hva + 0x200000 };
  for (let i = 0; i < attempts; i++) {
    b.fault(v, 5e9 + i * gapNs, gpa, { mmuSeq: 0x777, faultSeq: 0x777, inProgress: 1, ...range });
  }
  return b.batch();
}

/** Stuck on one gpa with a small, constant sequence and nothing in progress: stuck, cause unknown. */
export function stuckSmallSeq(attempts = 2000, gapNs = 1 * MS): RecordBatch {
  const b = new TraceBuilder();
  const v = vcpu(3000, 0);
  const gpa = 0xabc000, hva = 0x7f0000000000 + gpa;
  for (let i = 0; i < attempts; i++) {
    b.fault(v, 1e9 + i * gapNs, gpa, { mmuSeq: 0x4724e, faultSeq: 0x4724e, inProgress: 0, rangeStart: hva + 0x100000, rangeEnd: hva + 0x101000 });
  }
  return b.batch();
}

/** The 6.1 bug as the live tracer would see it: sequence past 0x80000000, constant, nothing in progress. */
export function stuckSignExtension(attempts = 2000, gapNs = 1 * MS): RecordBatch {
  const b = new TraceBuilder();
  const v = vcpu(4000, 0);
  const gpa = 0x1343fa0b0;
  for (let i = 0; i < attempts; i++) {
    b.fault(v, 1e9 + i * gapNs, gpa, { mmuSeq: 0x8002dc25, faultSeq: 0x8002dc25, inProgress: 0, rangeStart: 0x7feacde61000, rangeEnd: 0x7feacde62000 });
  }
  return b.batch();
}

/** Tracepoint mode on our machines: FAULT + MAP, only the fault's own snapshot; one stuck vCPU among many. */
export interface MixOptions {
  vms: number;
  vcpusPerVm: number;
  /** records to generate (approximately) */
  records: number;
  seed: number;
  /** index (in vm*vcpusPerVm order) of a vCPU that is stale-stuck on one gpa; -1 for none */
  stuckVcpu?: number;
  /** time between records, ns */
  stepNs?: number;
  startNs?: number;
}

export interface Mix {
  batch: RecordBatch;
  vcpus: Vcpu[];
  stuck: Vcpu | null;
}

/**
 * Many VMs and vCPUs interleaved at random. Healthy vCPUs: FAULT then MAP on a fresh page, with
 * occasional refaults of one page explained by an INVALIDATE record and a sequence move. The
 * stuck vCPU: FAULT on one gpa forever, never mapped.
 */
export function interleavedMix(o: MixOptions): Mix {
  const rnd = prng(o.seed);
  const b = new TraceBuilder();
  const vcpus: Vcpu[] = [];
  for (let m = 0; m < o.vms; m++) {
    for (let c = 0; c < o.vcpusPerVm; c++) vcpus.push(vcpu(10000 + m * 100, c));
  }
  const stuck = o.stuckVcpu !== undefined && o.stuckVcpu >= 0 ? vcpus[o.stuckVcpu] : null;
  const nextGpa = vcpus.map((_, k) => 0x10000000 + k * 0x1000000);
  const seq = new Array<number>(o.vms).fill(0x10000);
  let ts = o.startNs ?? 1e9;
  const step = o.stepNs ?? 1000;
  while (b.w.count < o.records) {
    const k = Math.floor(rnd() * vcpus.length);
    const v = vcpus[k];
    const vm = Math.floor(k / o.vcpusPerVm);
    ts += step;
    if (v === stuck) {
      b.fault(v, ts, 0x5000, { faultSeq: seq[vm] });
      continue;
    }
    const r = rnd();
    if (r < 0.05) {
      // invalidation then a refault of the same page, mapped on the second try
      seq[vm]++;
      b.invalidate(v, ts, {});
      b.fault(v, (ts += step), nextGpa[k], { faultSeq: seq[vm] - 1 });
      b.fault(v, (ts += step), nextGpa[k], { faultSeq: seq[vm] });
      b.map(v, (ts += step), nextGpa[k], { faultSeq: seq[vm] });
    } else {
      b.fault(v, ts, nextGpa[k], { faultSeq: seq[vm] });
      b.map(v, (ts += step), nextGpa[k], { faultSeq: seq[vm] });
    }
    nextGpa[k] += 4096;
  }
  return { batch: b.batch(), vcpus, stuck };
}

/** Splits a batch into RecordBatch views of at most `size` records (as a ring or capture would hand them out). */
export function chunked(batch: RecordBatch, size: number): RecordBatch[] {
  const out: RecordBatch[] = [];
  const bytes = batch.recordBytes(0);
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  for (let from = 0; from < batch.length; from += size) {
    const n = Math.min(size, batch.length - from);
    out.push(new RecordBatch(view, from * RECORD_SIZE, RECORD_SIZE, n));
  }
  return out;
}
