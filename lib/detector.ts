/**
 * StaleFaultDetector: per vCPU thread, is it progressing, retrying (and why) or stuck, and for
 * stuck vCPUs the likely cause, with the evidence a person needs to check the verdict.
 *
 * Input is only EventBatch (live ring batches, capture chunks, imported bpftrace logs). State
 * lives in preallocated typed arrays indexed by a slot number; an open-addressing hash maps tid
 * (vCPUs) and vm id (VMs) to slots. Nothing is allocated per record: objects are built only when
 * a verdict changes (and someone listens), on eviction, and in snapshot().
 *
 * What counts (DESIGN.md, "The stale-fault detector"):
 * - attempt: a FAULT record (handler entry), or a FAULTIN record that is not the fault-in step of
 *   an attempt whose FAULT was already counted. `repeat` counts: a record standing for N events
 *   is N attempts (coalesced records; the bpftrace importer turns the "(N hits)" counter into it).
 * - progress: the gpa changes between attempts, or the attempt ends mapped (a MAP record, or
 *   FAULT_RET with RET_PF_FIXED / SPURIOUS / EMULATE / WRITE_PROTECTED from the `retPf` table).
 * - retrying: the same gpa again with no mapping. Explained when the invalidation state says so:
 *   in_progress > 0 with the hva (or gfn, KF_FLAG_RANGE_GFN) inside [range_start, range_end),
 *   the sequence moved since the previous attempt or since the fault's own snapshot, or the VM
 *   saw INVALIDATE records since the previous attempt.
 * - stuck: attempts >= stuckAttempts AND (elapsed >= stuckNs OR attempts >= stuckAttemptsAlone
 *   OR the attempts show a signature: the sign-extension bug's, or one invalidation held over
 *   the address with the sequence standing still).
 *   The second threshold exists because a record can carry history without times: the
 *   incident's logs print a per-RIP hit counter ("(92234 hits)"), i.e. ~92k earlier attempts
 *   whose timestamps were never printed, inside a 0.2 ms excerpt.
 * Unknown fields (UNKNOWN sentinels) are never taken as 0: a check that needs them is skipped.
 */
import { EventBatch, Flag, Kind, UNKNOWN } from './record';
import { KernelEvidence, KernelInfo, SIGN_BIT_SEQ } from './kernels';

export type VcpuState = 'progressing' | 'retrying' | 'stuck';
export type StuckCause = 'seq-sign-extension' | 'invalidation-stuck' | 'unknown';

/** RET_PF_* values of one kernel (they differ per kernel; the live tracer reads them from BTF). */
export interface RetPfTable {
  RETRY: number;
  FIXED: number;
  SPURIOUS: number;
  EMULATE?: number;
  WRITE_PROTECTED?: number;
  INVALID?: number;
  CONTINUE?: number;
}
/** v6.1 (the incident's kernel: MAP_RET ret = 4 is RET_PF_FIXED) */
export const RET_PF_6_1: Readonly<RetPfTable> = Object.freeze({ CONTINUE: 0, RETRY: 1, EMULATE: 2, INVALID: 3, FIXED: 4, SPURIOUS: 5 });
/** v6.12 .. v6.18 (RET_PF_WRITE_PROTECTED inserted) */
export const RET_PF_6_12: Readonly<RetPfTable> = Object.freeze({ CONTINUE: 0, RETRY: 1, EMULATE: 2, WRITE_PROTECTED: 3, INVALID: 4, FIXED: 5, SPURIOUS: 6 });

/**
 * The tracer's RET_PF_* (names as in the kernel: { RET_PF_RETRY: 1, ... }) as the detector's
 * table ({ RETRY: 1, ... }); the 6.12+ values when the kernel's BTF did not have them.
 */
export function retPfTable(retPf: Readonly<Record<string, number>>): RetPfTable {
  const t: Record<string, number> = {};
  for (const [k, v] of Object.entries(retPf)) t[k.replace(/^RET_PF_/, '')] = v;
  if (!Number.isInteger(t.RETRY) || !Number.isInteger(t.FIXED) || !Number.isInteger(t.SPURIOUS)) return { ...RET_PF_6_12 };
  return t as unknown as RetPfTable;
}

export interface DetectorOptions {
  /** attempts on one gpa without progress before "stuck" (default 1000) */
  stuckAttempts?: number;
  /** ... and for at least this long, in ns (default 1 s) */
  stuckNs?: number;
  /** attempts that make a vCPU stuck whatever the elapsed time (default 50 x stuckAttempts) */
  stuckAttemptsAlone?: number;
  /** attempts on one gpa before the vCPU counts as retrying (default 2: the first retry). 3 treats
   *  a single refault after an invalidation as ordinary progress (fewer verdict changes) */
  retryingAttempts?: number;
  /** vCPU threads tracked at once (default 4096); the least recently seen is evicted when full */
  capacity?: number;
  /** VMs tracked at once (default 512) */
  vmCapacity?: number;
  /** a vCPU or VM with no record for this long (trace time, ns) is evicted (default 60 s) */
  idleNs?: number;
  /** RET_PF_* table for FAULT_RET records (default RET_PF_6_1, the incident's kernel) */
  retPf?: RetPfTable;
  /**
   * The kernel the trace came from (judged by its BTF or its version: kernels.ts). It only fills
   * gaps the records leave: a stuck vCPU showing the bug's signature is `seq-sign-extension`
   * whatever the kernel judgement says (evidence outranks the version).
   */
  kernel?: DetectorKernel | null;
  /** window for the per-VM invalidation rate, ns (default 10 s) */
  rateWindowNs?: number;
  /** called with each verdict change as it happens */
  onVerdict?: VerdictListener;
}

/** What the detector needs of a kernel judgement (KernelInfo has it). */
export type DetectorKernel = Pick<KernelInfo, 'release' | 'affected'> & Partial<Pick<KernelInfo, 'decidedBy' | 'reason'>>;

export interface InvalidationRange {
  start: string;
  end: string;
  unit: 'hva' | 'gfn';
}

/** A vCPU's verdict and the evidence behind it. Addresses and sequences are hex without 0x. */
export interface Verdict {
  pid: number;
  tid: number;
  /** 16 hex digits, or "pid:<pid>" when the records carry no VM id (bpftrace logs) */
  vmId: string;
  vcpu: number | null;
  state: VcpuState;
  /** set when state is 'stuck' */
  cause: StuckCause | null;
  /** how sure the cause is: 'high' when the records show it, 'medium' when the kernel judgement
   *  fills a gap in them (in-progress not visible), 'low' for 'unknown' */
  confidence: 'high' | 'medium' | 'low' | null;
  /**
   * What decided the cause: 'behaviour' (the records: the signature, or an invalidation that
   * never ends), 'btf' or 'version' (the kernel judgement, where the records could not show the
   * whole signature). Null when there is no cause (not stuck).
   */
  decidedBy: KernelEvidence | null;
  /** why the vCPU retries (state 'retrying'): what the invalidation state shows */
  retryReason: 'invalidation' | 'unexplained' | null;
  gpa: string | null;
  hva: string | null;
  rip: string | null;
  /** attempts on this gpa since the last progress */
  attempts: number;
  /** while stuck: fault entries on other addresses (walks for emulation and the like), which
   *  neither free the vCPU nor count as its attempts */
  offPathAttempts: number;
  /** attempts of those explained by the invalidation state */
  explainedAttempts: number;
  /** attempts on any gpa, and faults that ended mapped, since the vCPU was first seen */
  totalAttempts: number;
  mapped: number;
  /** first attempt on this gpa, and the vCPU's last record (trace clock, ns) */
  firstSeen: number;
  lastSeen: number;
  mmuSeqFirst: string | null;
  mmuSeqLast: string | null;
  faultSeqFirst: string | null;
  faultSeqLast: string | null;
  /** times the sequence changed during these attempts */
  seqChanges: number;
  inProgress: number | null;
  range: InvalidationRange | null;
  /** true once when the vCPU is dropped from the table (idle or capacity) */
  evicted: boolean;
  explanation: string;
}

export type VerdictListener = (verdict: Verdict) => void;

/** Early warning for one VM: how fast its invalidation sequence climbs towards 0x80000000. */
export interface VmForecast {
  vmId: string;
  pid: number;
  vcpus: number;
  /** latest sequence seen (hex), null when no record carries one */
  seq: string | null;
  invalidations: number;
  /** sequence increments (or INVALIDATE records) per second over the recent window */
  ratePerSec: number | null;
  rateSource: 'mmu_seq' | 'invalidate-records' | null;
  /** seconds until the sequence reaches 0x80000000 at that rate (0 when already there) */
  secondsToSignBit: number | null;
  crossed: boolean;
  /** true when a vCPU of this VM showed the bug's signature (then decidedBy is 'behaviour'), else the kernel judgement */
  kernelAffected: boolean | null;
  decidedBy: KernelEvidence | null;
  warning: string;
}

export interface DetectorStats {
  records: number;
  ignored: number;
  vcpus: number;
  vms: number;
  evictedIdle: number;
  evictedForCapacity: number;
  verdictChanges: number;
}

const ST_NONE = 0, ST_PROGRESSING = 1, ST_RETRYING = 2, ST_STUCK = 3;
const STATE_NAMES: readonly (VcpuState | null)[] = [null, 'progressing', 'retrying', 'stuck'];
// C_SIGN: the signature seen in the records; C_SIGN_KERNEL: the sequence part seen, in-progress
// not visible in this trace mode, and the kernel judged affected (by BTF or version)
const C_NONE = 0, C_SIGN = 1, C_INVAL = 2, C_UNKNOWN = 3, C_SIGN_KERNEL = 4;
const CAUSE_NAMES: readonly (StuckCause | null)[] = [null, 'seq-sign-extension', 'invalidation-stuck', 'unknown', 'seq-sign-extension'];

const TWO53 = 9007199254740992;
const PAGE = 4096;

// Number#toString(16) takes V8's slow double-to-radix path; verdicts format several addresses
// each, so hex goes through a byte table instead.
const HEX2: readonly string[] = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));
function hex32Padded(x: number): string {
  return HEX2[(x >>> 24) & 255] + HEX2[(x >>> 16) & 255] + HEX2[(x >>> 8) & 255] + HEX2[x & 255];
}
function hex32(x: number): string {
  const s = hex32Padded(x);
  let z = 0;
  while (z < 7 && s.charCodeAt(z) === 48) z++;
  return z === 0 ? s : s.slice(z);
}
function hex64(lo: number, hi: number): string {
  return hi === 0 ? hex32(lo) : hex32(hi) + hex32Padded(lo);
}
/** hex of an exact non-negative integer below 2^53 */
function hexNum(v: number): string {
  const hi = Math.floor(v / 4294967296);
  return hex64(v - hi * 4294967296, hi);
}
function hexOrNull(v: number): string | null {
  return v === UNKNOWN ? null : hexNum(v);
}
function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * Open addressing (linear probing) from a 64-bit key (two u32 halves) to a slot number, with
 * backward-shift deletion so lookups never walk tombstones. Sized at >= 2x its capacity.
 */
class SlotTable {
  private readonly lo: Uint32Array;
  private readonly hi: Uint32Array;
  private readonly val: Int32Array;
  private readonly mask: number;

  constructor(capacity: number) {
    const size = nextPow2(capacity * 2);
    this.lo = new Uint32Array(size);
    this.hi = new Uint32Array(size);
    this.val = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  private home(lo: number, hi: number): number {
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> 7) & this.mask;
  }

  get(lo: number, hi: number): number {
    let p = this.home(lo, hi);
    for (;;) {
      const v = this.val[p];
      if (v < 0) return -1;
      if (this.lo[p] === lo && this.hi[p] === hi) return v;
      p = (p + 1) & this.mask;
    }
  }

  set(lo: number, hi: number, slot: number): void {
    let p = this.home(lo, hi);
    while (this.val[p] >= 0 && !(this.lo[p] === lo && this.hi[p] === hi)) p = (p + 1) & this.mask;
    this.lo[p] = lo;
    this.hi[p] = hi;
    this.val[p] = slot;
  }

  delete(lo: number, hi: number): void {
    let p = this.home(lo, hi);
    for (;;) {
      if (this.val[p] < 0) return;
      if (this.lo[p] === lo && this.hi[p] === hi) break;
      p = (p + 1) & this.mask;
    }
    // backward shift: pull later entries of the cluster into the hole if their home allows it
    let hole = p;
    let q = (p + 1) & this.mask;
    while (this.val[q] >= 0) {
      const h = this.home(this.lo[q], this.hi[q]);
      // entry at q may move to hole iff its home is not in (hole, q] cyclically
      const between = hole <= q ? h > hole && h <= q : h > hole || h <= q;
      if (!between) {
        this.lo[hole] = this.lo[q];
        this.hi[hole] = this.hi[q];
        this.val[hole] = this.val[q];
        hole = q;
      }
      q = (q + 1) & this.mask;
    }
    this.val[hole] = -1;
  }
}

/** VM key kinds: the record's vm_id, or the VMM pid when the vm id is unknown */
const VMKEY_ID = 0, VMKEY_PID = 1;

export class StaleFaultDetector {
  readonly stuckAttempts: number;
  readonly stuckNs: number;
  readonly stuckAttemptsAlone: number;
  readonly retryingAttempts: number;
  readonly capacity: number;
  readonly vmCapacity: number;
  readonly idleNs: number;
  readonly retPf: Readonly<RetPfTable>;
  readonly kernel: DetectorKernel | null;
  readonly rateWindowNs: number;

  private readonly listeners: VerdictListener[] = [];
  private readonly vcpuTable: SlotTable;
  private readonly vmTable: SlotTable;
  private readonly vcpuFree: Int32Array;
  private vcpuFreeTop: number;
  private readonly vmFree: Int32Array;
  private vmFreeTop: number;
  private readonly used: Uint8Array;
  private readonly vmUsed: Uint8Array;
  // progress-classifying RET_PF values; -2 never matches a ret (UNKNOWN_RET is INT32_MIN)
  private readonly retFixed: number;
  private readonly retSpurious: number;
  private readonly retEmulate: number;
  private readonly retWriteProtected: number;

  // per vCPU (index: slot)
  private readonly tid: Uint32Array;
  private readonly pid: Uint32Array;
  private readonly vcpuId: Int32Array;
  private readonly vmSlot: Int32Array;
  private readonly gpa: Float64Array;
  private readonly hva: Float64Array;
  private readonly ripLo: Uint32Array;
  private readonly ripHi: Uint32Array;
  private readonly attempts: Float64Array;
  private readonly offPath: Float64Array;
  private readonly explained: Float64Array;
  private readonly totalAttempts: Float64Array;
  private readonly mappedCount: Float64Array;
  private readonly firstTs: Float64Array;
  private readonly lastTs: Float64Array;
  private readonly seqFirst: Float64Array;
  private readonly seqLast: Float64Array;
  private readonly fseqFirst: Float64Array;
  private readonly fseqLast: Float64Array;
  private readonly seqChanges: Float64Array;
  /** the sequence seen with the previous attempt (a FAULTIN_RET in between may already show the move) */
  private readonly seqAtAttempt: Float64Array;
  private readonly inProg: Float64Array;
  private readonly rangeStart: Float64Array;
  private readonly rangeEnd: Float64Array;
  /** observations during this run: in_progress known; of those, "stale" (ip>0, address in range)
   *  and "not stale" (ip == 0, or ip > 0 with the address outside the range) */
  private readonly obsKnown: Float64Array;
  private readonly obsStale: Float64Array;
  private readonly obsNotStale: Float64Array;
  private readonly vmInvAtAttempt: Float64Array;
  /** bit 0: range is gfn; bit 1: last attempt ended mapped; bit 2: FAULT counted, FAULTIN may
   *  follow; bit 3: a fault_seq was sign-extended (upper 32 bits all ones) */
  private readonly bits: Uint8Array;
  private readonly state: Uint8Array;
  private readonly cause: Uint8Array;
  private readonly emittedState: Uint8Array;
  private readonly emittedCause: Uint8Array;

  // per VM
  private readonly vmKeyLo: Uint32Array;
  private readonly vmKeyHi: Uint32Array;
  private readonly vmKeyKind: Uint8Array;
  private readonly vmPid: Uint32Array;
  private readonly vmVcpus: Int32Array;
  private readonly vmLastTs: Float64Array;
  private readonly vmSeq: Float64Array;
  private readonly vmSeqTs: Float64Array;
  private readonly vmAnchorSeq: Float64Array; // rate window start (older anchor)
  private readonly vmAnchorTs: Float64Array;
  private readonly vmMidSeq: Float64Array; // newer anchor, promoted each window
  private readonly vmMidTs: Float64Array;
  private readonly vmInv: Float64Array;
  private readonly vmInvAnchor: Float64Array;
  private readonly vmInvAnchorTs: Float64Array;
  private readonly vmInvMid: Float64Array;
  private readonly vmInvMidTs: Float64Array;
  /** 1 once a vCPU of the VM was stuck with the signature in its records */
  private readonly vmSignature: Uint8Array;

  private now = -1;
  private lastSweep = -1;
  private cachedTid = -1;
  private cachedSlot = -1;
  // the current record's sequences, read once per record by push()
  private recMmuSeq = UNKNOWN;
  private recFaultSeq = UNKNOWN;
  private cachedVmLo = -1;
  private cachedVmHi = -1;
  private cachedVm = -1;
  private records = 0;
  private ignored = 0;
  private evictedIdle = 0;
  private evictedForCapacity = 0;
  private verdictChanges = 0;
  private liveVcpus = 0;
  private liveVms = 0;

  constructor(options: DetectorOptions = {}) {
    const positive = (name: string, v: number | undefined, dflt: number): number => {
      if (v === undefined) return dflt;
      if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) {
        throw new RangeError(`StaleFaultDetector: option ${name} must be a positive number (got ${String(v)})`);
      }
      return v;
    };
    this.stuckAttempts = positive('stuckAttempts', options.stuckAttempts, 1000);
    this.stuckNs = positive('stuckNs', options.stuckNs, 1e9);
    this.stuckAttemptsAlone = positive('stuckAttemptsAlone', options.stuckAttemptsAlone, this.stuckAttempts * 50);
    this.retryingAttempts = positive('retryingAttempts', options.retryingAttempts, 2);
    this.capacity = Math.floor(positive('capacity', options.capacity, 4096));
    this.vmCapacity = Math.floor(positive('vmCapacity', options.vmCapacity, 512));
    this.idleNs = positive('idleNs', options.idleNs, 60e9);
    this.rateWindowNs = positive('rateWindowNs', options.rateWindowNs, 10e9);
    const retPf = options.retPf ?? RET_PF_6_1;
    for (const k of ['RETRY', 'FIXED', 'SPURIOUS'] as const) {
      if (!Number.isInteger(retPf[k])) throw new TypeError(`StaleFaultDetector: retPf.${k} must be an integer (the kernel's RET_PF_${k})`);
    }
    this.retPf = Object.freeze({ ...retPf });
    this.retFixed = retPf.FIXED;
    this.retSpurious = retPf.SPURIOUS;
    this.retEmulate = retPf.EMULATE ?? -2;
    this.retWriteProtected = retPf.WRITE_PROTECTED ?? -2;
    this.kernel = options.kernel ?? null;
    if (options.onVerdict) this.listeners.push(options.onVerdict);

    const n = this.capacity, m = this.vmCapacity;
    this.vcpuTable = new SlotTable(n);
    this.vmTable = new SlotTable(m);
    this.vcpuFree = new Int32Array(n);
    for (let i = 0; i < n; i++) this.vcpuFree[i] = n - 1 - i;
    this.vcpuFreeTop = n;
    this.vmFree = new Int32Array(m);
    for (let i = 0; i < m; i++) this.vmFree[i] = m - 1 - i;
    this.vmFreeTop = m;
    this.used = new Uint8Array(n);
    this.vmUsed = new Uint8Array(m);

    this.tid = new Uint32Array(n);
    this.pid = new Uint32Array(n);
    this.vcpuId = new Int32Array(n);
    this.vmSlot = new Int32Array(n);
    this.gpa = new Float64Array(n);
    this.hva = new Float64Array(n);
    this.ripLo = new Uint32Array(n);
    this.ripHi = new Uint32Array(n);
    this.attempts = new Float64Array(n);
    this.offPath = new Float64Array(n);
    this.explained = new Float64Array(n);
    this.totalAttempts = new Float64Array(n);
    this.mappedCount = new Float64Array(n);
    this.firstTs = new Float64Array(n);
    this.lastTs = new Float64Array(n);
    this.seqFirst = new Float64Array(n);
    this.seqLast = new Float64Array(n);
    this.fseqFirst = new Float64Array(n);
    this.fseqLast = new Float64Array(n);
    this.seqChanges = new Float64Array(n);
    this.seqAtAttempt = new Float64Array(n);
    this.inProg = new Float64Array(n);
    this.rangeStart = new Float64Array(n);
    this.rangeEnd = new Float64Array(n);
    this.obsKnown = new Float64Array(n);
    this.obsStale = new Float64Array(n);
    this.obsNotStale = new Float64Array(n);
    this.vmInvAtAttempt = new Float64Array(n);
    this.bits = new Uint8Array(n);
    this.state = new Uint8Array(n);
    this.cause = new Uint8Array(n);
    this.emittedState = new Uint8Array(n);
    this.emittedCause = new Uint8Array(n);

    this.vmKeyLo = new Uint32Array(m);
    this.vmKeyHi = new Uint32Array(m);
    this.vmKeyKind = new Uint8Array(m);
    this.vmPid = new Uint32Array(m);
    this.vmVcpus = new Int32Array(m);
    this.vmLastTs = new Float64Array(m);
    this.vmSeq = new Float64Array(m);
    this.vmSeqTs = new Float64Array(m);
    this.vmAnchorSeq = new Float64Array(m);
    this.vmAnchorTs = new Float64Array(m);
    this.vmMidSeq = new Float64Array(m);
    this.vmMidTs = new Float64Array(m);
    this.vmInv = new Float64Array(m);
    this.vmInvAnchor = new Float64Array(m);
    this.vmInvAnchorTs = new Float64Array(m);
    this.vmInvMid = new Float64Array(m);
    this.vmInvMidTs = new Float64Array(m);
    this.vmSignature = new Uint8Array(m);
  }

  /** Adds a verdict-change listener; returns a function that removes it. */
  onVerdict(listener: VerdictListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** Consumes a batch. The batch is not kept: live ring batches may be reused after this returns. */
  push(batch: EventBatch): void {
    const n = batch.length;
    this.records += n;
    for (let i = 0; i < n; i++) {
      const kind = batch.kind(i);
      if (kind < Kind.FAULT || kind > Kind.EXIT) {
        this.ignored++;
        continue;
      }
      let ts = batch.tsNs(i);
      if (ts === UNKNOWN) ts = this.now < 0 ? 0 : this.now;
      else if (ts > this.now) this.now = ts;
      if (this.now - this.lastSweep >= this.idleNs) this.sweepIdle();

      this.recMmuSeq = batch.mmuSeq(i);
      this.recFaultSeq = batch.faultSeq(i);
      if (kind === Kind.INVALIDATE_START || kind === Kind.INVALIDATE_END) {
        const vm = this.vmFor(batch, i, ts);
        if (kind === Kind.INVALIDATE_START) this.vmInv[vm] += this.repeatOf(batch, i);
        continue;
      }
      const tid = batch.tid(i);
      const s = tid === this.cachedTid ? this.cachedSlot : this.vcpuFor(batch, i, tid, ts);
      if (ts > this.lastTs[s]) this.lastTs[s] = ts;
      // a thread belongs to one VM: no VM lookup for a known vCPU
      const vm = this.vmSlot[s];
      this.vmUpdate(vm, ts);

      switch (kind) {
        case Kind.FAULT:
        case Kind.FAULTIN:
          this.onAttempt(s, vm, batch, i, kind, ts);
          break;
        case Kind.MAP:
          this.onMapped(s, batch, i);
          break;
        case Kind.FAULT_RET: {
          const ret = batch.ret(i);
          if (ret === this.retFixed || ret === this.retSpurious || ret === this.retEmulate || ret === this.retWriteProtected) {
            this.onMapped(s, batch, i);
          }
          break;
        }
        case Kind.FAULTIN_RET:
          // same attempt as its FAULTIN: refresh the evidence (pfn resolved, sequence re-read)
          if (batch.gpa(i) === this.gpa[s]) this.observe(s, vm, batch, i, false);
          break;
        default: // EXIT: only the rip
          break;
      }
      const lo = batch.ripLo(i), hi = batch.ripHi(i);
      if (!(lo === 0xffffffff && hi === 0xffffffff)) {
        this.ripLo[s] = lo;
        this.ripHi[s] = hi;
      }
      if (this.state[s] !== this.emittedState[s] || this.cause[s] !== this.emittedCause[s]) this.emit(s, false);
    }
  }

  private repeatOf(batch: EventBatch, i: number): number {
    const r = batch.repeat(i);
    return r >= 1 && r !== 0xffffffff ? r : 1;
  }

  private onAttempt(s: number, vm: number, batch: EventBatch, i: number, kind: number, ts: number): void {
    const gpa = batch.gpa(i);
    if (gpa === UNKNOWN) return; // cannot tell same from different: not an attempt we can judge
    const bits = this.bits[s];
    if (kind === Kind.FAULTIN && (bits & 4) !== 0 && gpa === this.gpa[s]) {
      // the fault-in step of the attempt whose FAULT record was already counted
      this.bits[s] = bits & ~4;
      this.observe(s, vm, batch, i, false);
      return;
    }
    const rep = this.repeatOf(batch, i);
    if (this.state[s] === ST_STUCK && gpa !== this.gpa[s] && (bits & (2 | 16)) === 0) {
      // Only a mapped fault frees a stuck vCPU. An entry with another gpa while stuck is not
      // the guest moving on (it cannot, its fault never completes) but a walk for something
      // else: the instruction emulator, a kick, teardown. It is kept apart from the attempts.
      this.offPath[s] += rep;
      return;
    }
    this.bits[s] = kind === Kind.FAULT ? bits | 4 : bits & ~4;
    this.totalAttempts[s] += rep;
    if (gpa !== this.gpa[s] || (bits & (2 | 16)) !== 0) {
      // progress: a new gpa, or the previous attempt on this one ended mapped (or, bit 16, records
      // were lost since it: the attempts start counting afresh, see discontinuity())
      this.gpa[s] = gpa;
      this.attempts[s] = rep;
      this.offPath[s] = 0;
      this.explained[s] = 0;
      this.firstTs[s] = ts;
      this.seqFirst[s] = UNKNOWN;
      this.seqLast[s] = UNKNOWN;
      this.fseqFirst[s] = UNKNOWN;
      this.fseqLast[s] = UNKNOWN;
      this.seqChanges[s] = 0;
      this.seqAtAttempt[s] = UNKNOWN;
      this.obsKnown[s] = 0;
      this.obsStale[s] = 0;
      this.obsNotStale[s] = 0;
      this.bits[s] &= ~(2 | 8 | 16);
      this.hva[s] = UNKNOWN;
      this.observe(s, vm, batch, i, true);
      this.state[s] = ST_PROGRESSING;
      this.cause[s] = C_NONE;
    } else {
      this.attempts[s] += rep;
      if (this.observe(s, vm, batch, i, false)) this.explained[s] += rep;
      if (this.attempts[s] >= this.retryingAttempts) this.state[s] = ST_RETRYING;
    }
    this.vmInvAtAttempt[s] = this.vmInv[vm];
    this.seqAtAttempt[s] = this.seqLast[s];
    const a = this.attempts[s];
    if (a >= this.stuckAttempts) {
      const cause = this.causeOf(s);
      // A signature needs no minimum duration: the bug's retries (or one invalidation held over
      // the address with the sequence standing still) are stuck however short the excerpt is.
      // Without one, time (or a huge count) must rule out a passing storm.
      const signature = cause === C_SIGN || (cause === C_INVAL && this.seqChanges[s] === 0);
      if (signature || ts - this.firstTs[s] >= this.stuckNs || a >= this.stuckAttemptsAlone) {
        this.state[s] = ST_STUCK;
        this.cause[s] = cause;
        if (cause === C_SIGN) this.vmSignature[vm] = 1;
      }
    }
  }

  private onMapped(s: number, batch: EventBatch, i: number): void {
    const gpa = batch.gpa(i);
    let newFault = (this.bits[s] & 2) === 0;
    if (gpa !== UNKNOWN && gpa !== this.gpa[s]) {
      // mapped an address we never saw fault (first record of a log, missed entry): progress
      this.gpa[s] = gpa;
      this.attempts[s] = 0;
      this.offPath[s] = 0;
      this.explained[s] = 0;
      this.firstTs[s] = this.lastTs[s];
      newFault = true;
    }
    this.bits[s] |= 2;
    // one fault, one count: kprobe/fentry modes report a MAP and a FAULT_RET (FIXED) for it
    if (newFault) this.mappedCount[s] += 1;
    this.state[s] = ST_PROGRESSING;
    this.cause[s] = C_NONE;
    const hva = batch.hva(i);
    if (hva !== UNKNOWN) this.hva[s] = hva;
  }

  /**
   * Records the invalidation evidence of record i for vCPU s; returns whether it explains a
   * retry (the caller says whether this is a retry: `first` = first attempt on the gpa).
   */
  private observe(s: number, vm: number, batch: EventBatch, i: number, first: boolean): boolean {
    let explained = false;
    const hva = batch.hva(i);
    if (hva !== UNKNOWN) this.hva[s] = hva;
    const mmuSeq = this.recMmuSeq;
    let fseq = this.recFaultSeq;
    if (fseq !== UNKNOWN && fseq >= TWO53) {
      // an int snapshot sign-extended to 64 bits (0xffffffff8002dc25): the bug itself, seen directly
      this.bits[s] |= 8;
      fseq = UNKNOWN;
    }
    if (fseq !== UNKNOWN) {
      if (this.fseqFirst[s] === UNKNOWN) this.fseqFirst[s] = fseq;
      this.fseqLast[s] = fseq;
    }
    const seq = mmuSeq !== UNKNOWN ? mmuSeq : fseq;
    if (seq !== UNKNOWN) {
      const last = this.seqLast[s];
      if (last !== UNKNOWN && seq !== last) this.seqChanges[s] += 1;
      const prev = this.seqAtAttempt[s];
      if (!first && prev !== UNKNOWN && seq !== prev) explained = true; // the sequence moved since the previous attempt
      if (this.seqFirst[s] === UNKNOWN) this.seqFirst[s] = seq;
      this.seqLast[s] = seq;
    }
    if (!first && mmuSeq !== UNKNOWN && fseq !== UNKNOWN && fseq !== mmuSeq) explained = true; // moved since the fault's snapshot
    if (!first && this.vmInv[vm] > this.vmInvAtAttempt[s]) explained = true; // INVALIDATE records since the last attempt

    const ip = batch.inProgress(i);
    if (ip >= 0) {
      this.inProg[s] = ip;
      this.obsKnown[s] += 1;
      const rs = batch.rangeStart(i), re = batch.rangeEnd(i);
      const gfnUnit = (batch.flags(i) & Flag.RANGE_GFN) !== 0;
      if (rs !== UNKNOWN && re !== UNKNOWN) {
        this.rangeStart[s] = rs;
        this.rangeEnd[s] = re;
        this.bits[s] = gfnUnit ? this.bits[s] | 1 : this.bits[s] & ~1;
      }
      if (ip === 0) {
        this.obsNotStale[s] += 1;
      } else if (rs !== UNKNOWN && re !== UNKNOWN) {
        const g = this.gpa[s];
        const addr = gfnUnit ? (g === UNKNOWN ? UNKNOWN : Math.floor(g / PAGE)) : this.hva[s];
        if (addr !== UNKNOWN) {
          if (addr >= rs && addr < re) {
            this.obsStale[s] += 1;
            if (!first) explained = true;
          } else {
            this.obsNotStale[s] += 1;
          }
        }
      }
    }
    return explained;
  }

  private causeOf(s: number): number {
    const known = this.obsKnown[s], stale = this.obsStale[s], notStale = this.obsNotStale[s];
    if (stale > 0 && notStale === 0 && this.inProg[s] > 0) return C_INVAL;
    const seq = this.seqLast[s];
    const sxSeen = (this.bits[s] & 8) !== 0;
    const seqHighConstant = seq !== UNKNOWN && seq >= SIGN_BIT_SEQ && this.seqChanges[s] === 0;
    const saysNotStale = known > 0 && stale === 0;
    // the bug's signature in the records decides, whatever the kernel judgement says
    if ((seqHighConstant || sxSeen) && saysNotStale) return C_SIGN;
    // in-progress not visible in this trace (mode): the kernel judgement fills that gap only
    if (seqHighConstant && known === 0 && this.kernel?.affected === true) return C_SIGN_KERNEL;
    return C_UNKNOWN;
  }

  private vmFor(batch: EventBatch, i: number, ts: number): number {
    let lo = batch.vmIdLo(i), hi = batch.vmIdHi(i), keyKind = VMKEY_ID;
    const pid = batch.pid(i);
    if (lo === 0xffffffff && hi === 0xffffffff) {
      lo = pid;
      hi = 0;
      keyKind = VMKEY_PID;
    }
    // the key kind goes into the hash key's high bits: a pid key never equals a vm id key
    const keyHi = keyKind === VMKEY_PID ? 0xfffffffe : hi;
    let v: number;
    if (lo === this.cachedVmLo && keyHi === this.cachedVmHi) v = this.cachedVm;
    else {
      v = this.vmTable.get(lo, keyHi);
      if (v < 0) v = this.newVm(lo, hi, keyKind, pid, ts);
      this.cachedVmLo = lo;
      this.cachedVmHi = keyHi;
      this.cachedVm = v;
    }
    this.vmUpdate(v, ts);
    return v;
  }

  /** Per-record VM bookkeeping: last seen, the sequence and the rate windows. */
  private vmUpdate(v: number, ts: number): void {
    if (ts > this.vmLastTs[v]) this.vmLastTs[v] = ts;
    // the VM's sequence: mmu_seq, else the fault's snapshot (not when sign-extended)
    let seq = this.recMmuSeq;
    if (seq === UNKNOWN) {
      seq = this.recFaultSeq;
      if (seq >= TWO53) seq = UNKNOWN;
    }
    if (seq !== UNKNOWN && seq >= this.vmSeq[v]) {
      if (this.vmAnchorSeq[v] === UNKNOWN) {
        this.vmAnchorSeq[v] = seq;
        this.vmAnchorTs[v] = ts;
        this.vmMidSeq[v] = seq;
        this.vmMidTs[v] = ts;
      } else if (ts - this.vmMidTs[v] >= this.rateWindowNs) {
        this.vmAnchorSeq[v] = this.vmMidSeq[v];
        this.vmAnchorTs[v] = this.vmMidTs[v];
        this.vmMidSeq[v] = seq;
        this.vmMidTs[v] = ts;
      }
      this.vmSeq[v] = seq;
      this.vmSeqTs[v] = ts;
    }
    if (ts - this.vmInvMidTs[v] >= this.rateWindowNs) {
      this.vmInvAnchor[v] = this.vmInvMid[v];
      this.vmInvAnchorTs[v] = this.vmInvMidTs[v];
      this.vmInvMid[v] = this.vmInv[v];
      this.vmInvMidTs[v] = ts;
    }
  }

  private newVm(lo: number, hi: number, keyKind: number, pid: number, ts: number): number {
    if (this.vmFreeTop === 0) {
      this.sweepIdle();
      if (this.vmFreeTop === 0) {
        // evict the least recently seen VM with no tracked vCPU, else the least recent one
        let victim = -1;
        for (let v = 0; v < this.vmCapacity; v++) {
          if (this.vmUsed[v] && (victim < 0 || this.vmLastTs[v] < this.vmLastTs[victim])) victim = v;
        }
        this.evictVm(victim, false);
      }
    }
    const v = this.vmFree[--this.vmFreeTop];
    this.vmUsed[v] = 1;
    this.liveVms++;
    this.vmKeyLo[v] = lo;
    this.vmKeyHi[v] = hi;
    this.vmKeyKind[v] = keyKind;
    this.vmPid[v] = pid;
    this.vmVcpus[v] = 0;
    this.vmLastTs[v] = ts;
    this.vmSeq[v] = UNKNOWN;
    this.vmSeqTs[v] = ts;
    this.vmAnchorSeq[v] = UNKNOWN;
    this.vmAnchorTs[v] = ts;
    this.vmMidSeq[v] = UNKNOWN;
    this.vmMidTs[v] = ts;
    this.vmInv[v] = 0;
    this.vmInvAnchor[v] = 0;
    this.vmInvAnchorTs[v] = ts;
    this.vmInvMid[v] = 0;
    this.vmInvMidTs[v] = ts;
    this.vmSignature[v] = 0;
    this.vmTable.set(lo, keyKind === VMKEY_PID ? 0xfffffffe : hi, v);
    return v;
  }

  private vcpuFor(batch: EventBatch, i: number, tid: number, ts: number): number {
    let s = this.vcpuTable.get(tid, 0);
    if (s < 0) {
      const vm = this.vmFor(batch, i, ts);
      if (this.vcpuFreeTop === 0) {
        this.sweepIdle();
        if (this.vcpuFreeTop === 0) {
          let victim = -1;
          for (let k = 0; k < this.capacity; k++) {
            if (this.used[k] && (victim < 0 || this.lastTs[k] < this.lastTs[victim])) victim = k;
          }
          this.evictVcpu(victim, false);
        }
      }
      s = this.vcpuFree[--this.vcpuFreeTop];
      this.used[s] = 1;
      this.liveVcpus++;
      this.tid[s] = tid;
      this.gpa[s] = UNKNOWN;
      this.hva[s] = UNKNOWN;
      this.ripLo[s] = 0xffffffff;
      this.ripHi[s] = 0xffffffff;
      this.attempts[s] = 0;
      this.offPath[s] = 0;
      this.explained[s] = 0;
      this.totalAttempts[s] = 0;
      this.mappedCount[s] = 0;
      this.firstTs[s] = ts;
      this.lastTs[s] = ts;
      this.seqFirst[s] = UNKNOWN;
      this.seqLast[s] = UNKNOWN;
      this.fseqFirst[s] = UNKNOWN;
      this.fseqLast[s] = UNKNOWN;
      this.seqChanges[s] = 0;
      this.seqAtAttempt[s] = UNKNOWN;
      this.inProg[s] = UNKNOWN;
      this.rangeStart[s] = UNKNOWN;
      this.rangeEnd[s] = UNKNOWN;
      this.obsKnown[s] = 0;
      this.obsStale[s] = 0;
      this.obsNotStale[s] = 0;
      this.vmInvAtAttempt[s] = this.vmInv[vm];
      this.bits[s] = 0;
      this.state[s] = ST_PROGRESSING;
      this.cause[s] = C_NONE;
      this.emittedState[s] = ST_NONE;
      this.emittedCause[s] = C_NONE;
      this.vcpuTable.set(tid, 0, s);
      this.pid[s] = batch.pid(i);
      this.vcpuId[s] = batch.vcpuId(i); // UNKNOWN is -1 too
      this.vmSlot[s] = vm;
      this.vmVcpus[vm]++;
    } else if (this.vcpuId[s] < 0) {
      this.vcpuId[s] = batch.vcpuId(i);
    }
    this.cachedTid = tid;
    this.cachedSlot = s;
    return s;
  }

  private evictVcpu(s: number, idle: boolean): void {
    if (idle) this.evictedIdle++;
    else this.evictedForCapacity++;
    if (this.listeners.length > 0 && this.emittedState[s] !== ST_NONE) {
      const v = this.verdictOf(s);
      v.evicted = true;
      v.explanation = `${idle ? 'idle' : 'table full'}: no longer tracked; last verdict: ${v.explanation}`;
      this.deliver(v);
    }
    this.vcpuTable.delete(this.tid[s], 0);
    const vm = this.vmSlot[s];
    if (vm >= 0) this.vmVcpus[vm]--;
    this.used[s] = 0;
    this.liveVcpus--;
    this.vcpuFree[this.vcpuFreeTop++] = s;
    if (this.cachedSlot === s) {
      this.cachedTid = -1;
      this.cachedSlot = -1;
    }
  }

  private evictVm(v: number, idle: boolean): void {
    // its vCPUs go first: their slots point at this VM
    for (let s = 0; s < this.capacity; s++) if (this.used[s] && this.vmSlot[s] === v) this.evictVcpu(s, idle);
    this.vmTable.delete(this.vmKeyLo[v], this.vmKeyKind[v] === VMKEY_PID ? 0xfffffffe : this.vmKeyHi[v]);
    this.vmUsed[v] = 0;
    this.liveVms--;
    if (this.cachedVm === v) this.cachedVmLo = this.cachedVmHi = this.cachedVm = -1;
    this.vmFree[this.vmFreeTop++] = v;
  }

  /** Evicts vCPUs and VMs with no record for idleNs of trace time. O(capacity), run once per idleNs. */
  private sweepIdle(): void {
    const cutoff = this.now - this.idleNs;
    this.lastSweep = this.now;
    for (let s = 0; s < this.capacity; s++) {
      if (this.used[s] && this.lastTs[s] < cutoff) this.evictVcpu(s, true);
    }
    for (let v = 0; v < this.vmCapacity; v++) {
      if (this.vmUsed[v] && this.vmVcpus[v] <= 0 && this.vmLastTs[v] < cutoff) this.evictVm(v, true);
    }
  }

  private emit(s: number, evicted: boolean): void {
    this.emittedState[s] = this.state[s];
    this.emittedCause[s] = this.cause[s];
    this.verdictChanges++;
    if (this.listeners.length === 0) return;
    const v = this.verdictOf(s);
    v.evicted = evicted;
    this.deliver(v);
  }

  private deliver(v: Verdict): void {
    for (const l of this.listeners) l(v);
  }

  private vmIdOf(v: number): string {
    return this.vmKeyKind[v] === VMKEY_PID
      ? `pid:${this.vmKeyLo[v]}`
      : hex64(this.vmKeyLo[v], this.vmKeyHi[v]).padStart(16, '0');
  }

  private verdictOf(s: number): Verdict {
    const state = STATE_NAMES[this.state[s]] ?? 'progressing';
    const cause = this.state[s] === ST_STUCK ? CAUSE_NAMES[this.cause[s]] : null;
    const ripKnown = !(this.ripLo[s] === 0xffffffff && this.ripHi[s] === 0xffffffff);
    const vm = this.vmSlot[s];
    const hasRange = this.rangeStart[s] !== UNKNOWN && this.rangeEnd[s] !== UNKNOWN;
    const v: Verdict = {
      pid: this.pid[s],
      tid: this.tid[s],
      vmId: vm >= 0 ? this.vmIdOf(vm) : `pid:${this.pid[s]}`,
      vcpu: this.vcpuId[s] >= 0 ? this.vcpuId[s] : null,
      state,
      cause,
      confidence: null,
      decidedBy: null,
      retryReason: state === 'retrying' ? (this.explained[s] > 0 ? 'invalidation' : 'unexplained') : null,
      gpa: hexOrNull(this.gpa[s]),
      hva: hexOrNull(this.hva[s]),
      rip: ripKnown ? hex64(this.ripLo[s], this.ripHi[s]) : null,
      attempts: this.attempts[s],
      offPathAttempts: this.offPath[s],
      explainedAttempts: this.explained[s],
      totalAttempts: this.totalAttempts[s],
      mapped: this.mappedCount[s],
      firstSeen: this.firstTs[s],
      lastSeen: this.lastTs[s],
      mmuSeqFirst: hexOrNull(this.seqFirst[s]),
      mmuSeqLast: hexOrNull(this.seqLast[s]),
      faultSeqFirst: hexOrNull(this.fseqFirst[s]),
      faultSeqLast: hexOrNull(this.fseqLast[s]),
      seqChanges: this.seqChanges[s],
      inProgress: this.inProg[s] === UNKNOWN ? null : this.inProg[s],
      range: hasRange
        ? { start: hexNum(this.rangeStart[s]), end: hexNum(this.rangeEnd[s]), unit: (this.bits[s] & 1) !== 0 ? 'gfn' : 'hva' }
        : null,
      evicted: false,
      explanation: '',
    };
    if (cause !== null) {
      const c = this.cause[s];
      v.confidence = c === C_SIGN || c === C_INVAL ? 'high' : c === C_SIGN_KERNEL ? 'medium' : 'low';
      v.decidedBy = c === C_SIGN_KERNEL ? (this.kernel?.decidedBy ?? 'version') : 'behaviour';
    }
    v.explanation = this.explain(s, v);
    return v;
  }

  private explain(s: number, v: Verdict): string {
    const gpa = v.gpa === null ? 'an unknown gpa' : `gpa ${v.gpa}`;
    const secs = ((v.lastSeen - v.firstSeen) / 1e9).toFixed(3);
    const seq = v.mmuSeqLast === null ? 'sequence unknown' : `seq ${v.mmuSeqLast}`;
    const inv = v.inProgress === null
      ? 'in-progress unknown in this trace mode'
      : `in-progress ${v.inProgress}${v.range ? `, range ${v.range.unit} [${v.range.start}, ${v.range.end})` : ''}`;
    if (v.state === 'progressing') {
      return `progressing: ${v.mapped} fault(s) mapped, ${v.totalAttempts} attempt(s) in all; last ${gpa}`;
    }
    if (v.state === 'retrying') {
      return v.retryReason === 'invalidation'
        ? `retrying ${gpa}: ${v.attempts} attempts, ${v.explainedAttempts} explained by invalidations (${v.seqChanges} sequence change(s); ${inv})`
        : `retrying ${gpa}: ${v.attempts} attempts, not (yet) explained by the invalidation state (${seq}, ${inv}); below the stuck thresholds`;
    }
    const offPath = v.offPathAttempts > 0 ? ` (+${v.offPathAttempts} entries on other addresses, not counted: they do not free it)` : '';
    const head = `stuck on ${gpa}: ${v.attempts} attempts over ${secs} s, never mapped${offPath}`;
    const kernel = this.kernel;
    switch (v.cause) {
      case 'seq-sign-extension': {
        const bug = 'is_page_fault_stale() compares a sign-extended int snapshot and retries forever (fixed in 6.1.50 and 6.3)';
        if (v.decidedBy !== 'behaviour') {
          return `${head}; ${seq} >= 80000000 and constant, in-progress not visible in this trace mode: ${bug}; ` +
            `the kernel is affected ${v.decidedBy === 'btf' ? "by its own BTF" : 'from the version only'} (${kernel?.release ?? '?'})`;
        }
        return `${head}; ${seq} >= 80000000 and constant, the invalidation state says not stale (${inv}): ${bug}; ` +
          `decided by the observed behaviour` + this.kernelDisagreement();
      }
      case 'invalidation-stuck':
        return `${head}; an invalidation never ends: ${inv}, the ${(this.bits[s] & 1) !== 0 ? 'gfn' : 'hva'} is inside the range on every attempt`;
      default: {
        const seqHigh = this.seqLast[s] !== UNKNOWN && this.seqLast[s] >= SIGN_BIT_SEQ && this.seqChanges[s] === 0;
        if (seqHigh && this.obsKnown[s] === 0) {
          return `${head}; ${seq} >= 80000000 and constant, but in-progress is not visible in this trace mode and the kernel ` +
            `${kernel?.affected === false ? `is judged not affected (${kernel.decidedBy ?? 'version'})` : 'judgement is unknown'}: ` +
            'cause unknown; a mode that reads the VM\'s invalidation state (kprobe, fentry, or tp_btf where kvm_running_vcpu resolves) can tell';
        }
        if (this.seqChanges[s] > 0) return `${head}; the sequence moved ${v.seqChanges} time(s) while retrying: invalidations keep racing the fault (${inv}); cause unknown`;
        return `${head}; the invalidation state does not explain it (${seq}, ${inv}); cause unknown, see the evidence`;
      }
    }
  }

  /** When the kernel judgement said "not affected" but the records show the bug: say why they win. */
  private kernelDisagreement(): string {
    const k = this.kernel;
    if (!k || k.affected !== false) return k?.affected === true ? `; kernel ${k.release} is affected (${k.decidedBy ?? 'version'} agrees)` : '';
    return `; the ${k.decidedBy === 'btf' ? "kernel's BTF" : 'version table'} says ${k.release} is not affected, ` +
      'but the records outrank it: a backported bug, a rebuilt kvm module or a gap in the table';
  }

  /**
   * Records were lost here (a damaged capture: the reader dropped records it could not verify).
   * No run of attempts is counted across the gap: each vCPU's next attempt starts a new count,
   * so a stuck verdict always rests on attempts seen without a gap between them, never on what
   * the missing records would have shown (a MAP that freed the vCPU, a different gpa). Verdicts
   * already reached stay until the vCPU's next attempt.
   */
  discontinuity(): void {
    for (let s = 0; s < this.capacity; s++) if (this.used[s]) this.bits[s] = (this.bits[s] & ~4) | 16;
  }

  /** Current verdict of every tracked vCPU (allocates; call on demand, not per record). */
  snapshot(): Verdict[] {
    const out: Verdict[] = [];
    for (let s = 0; s < this.capacity; s++) if (this.used[s] && this.emittedState[s] !== ST_NONE) out.push(this.verdictOf(s));
    out.sort((a, b) => a.pid - b.pid || a.tid - b.tid);
    return out;
  }

  /** Early warning per VM: invalidation rate and time left until the sequence reaches 0x80000000. */
  forecast(): VmForecast[] {
    const out: VmForecast[] = [];
    const kernelAffected = this.kernel ? this.kernel.affected : null;
    const kernelBy: KernelEvidence | null = kernelAffected === null ? null : (this.kernel?.decidedBy ?? 'version');
    for (let v = 0; v < this.vmCapacity; v++) {
      if (!this.vmUsed[v]) continue;
      // a vCPU of this VM showed the signature: the VM's kernel is affected, whatever the judgement
      const seen = this.vmSignature[v] === 1;
      const affected = seen ? true : kernelAffected;
      const decidedBy = seen ? 'behaviour' : kernelBy;
      const seq = this.vmSeq[v];
      let rate: number | null = null;
      let source: VmForecast['rateSource'] = null;
      const dt = this.vmSeqTs[v] - this.vmAnchorTs[v];
      if (seq !== UNKNOWN && this.vmAnchorSeq[v] !== UNKNOWN && dt > 0) {
        rate = ((seq - this.vmAnchorSeq[v]) * 1e9) / dt;
        source = 'mmu_seq';
      } else {
        const idt = this.vmLastTs[v] - this.vmInvAnchorTs[v];
        if (this.vmInv[v] > this.vmInvAnchor[v] && idt > 0) {
          rate = ((this.vmInv[v] - this.vmInvAnchor[v]) * 1e9) / idt;
          source = 'invalidate-records';
        }
      }
      const crossed = seq !== UNKNOWN && seq >= SIGN_BIT_SEQ;
      let secondsToSignBit: number | null = null;
      if (crossed) secondsToSignBit = 0;
      else if (seq !== UNKNOWN && rate !== null && rate > 0) secondsToSignBit = (SIGN_BIT_SEQ - seq) / rate;
      const kernelNote = (affected === true ? 'kernel affected' : affected === false ? 'kernel not affected' : 'kernel unknown') +
        (decidedBy === 'behaviour' ? ': a vCPU of this VM shows the bug' : decidedBy === 'btf' ? ', by its BTF' : decidedBy === 'version' ? ', from the version only' : '');
      let warning: string;
      if (seq === UNKNOWN) warning = `sequence not visible in this trace (${kernelNote})`;
      else if (crossed) warning = affected === false
        ? `sequence ${seq.toString(16)} is past 80000000; no hang expected on this kernel (${kernelNote})`
        : `sequence ${seq.toString(16)} is past 80000000: on an affected kernel every fault of this VM retries forever (${kernelNote})`;
      else if (secondsToSignBit === null) warning = `sequence ${seq.toString(16)} not moving in this trace (${kernelNote})`;
      else warning = `sequence ${seq.toString(16)} reaches 80000000 in ${formatDuration(secondsToSignBit)} at ${rate!.toFixed(1)}/s (${kernelNote})`;
      out.push({
        vmId: this.vmIdOf(v),
        pid: this.vmPid[v],
        vcpus: this.vmVcpus[v],
        seq: hexOrNull(seq),
        invalidations: this.vmInv[v],
        ratePerSec: rate,
        rateSource: source,
        secondsToSignBit,
        crossed,
        kernelAffected: affected,
        decidedBy,
        warning,
      });
    }
    return out;
  }

  stats(): DetectorStats {
    return {
      records: this.records,
      ignored: this.ignored,
      vcpus: this.liveVcpus,
      vms: this.liveVms,
      evictedIdle: this.evictedIdle,
      evictedForCapacity: this.evictedForCapacity,
      verdictChanges: this.verdictChanges,
    };
  }
}

export function formatDuration(seconds: number): string {
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  if (seconds < 3 * 31557600) return `${(seconds / 86400).toFixed(1)} days`;
  return `${(seconds / 31557600).toFixed(1)} years`;
}
