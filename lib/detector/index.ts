/**
 * StaleFaultDetector: per vCPU thread, is it progressing, retrying (and why) or stuck, and for
 * stuck vCPUs the likely cause, with the evidence a person needs to check the verdict.
 *
 * Input is only EventBatch (live ring batches, capture chunks, imported bpftrace logs). State
 * lives in preallocated typed arrays indexed by a slot number (vcpu.ts, vm.ts); a SlotTable
 * (slots.ts) maps tid (vCPUs) and vm id (VMs) to slots. Nothing is allocated per record: objects
 * are built only when a verdict changes (and someone listens), on eviction, and in snapshot().
 * The rules and their English are in rules.ts, the flag bits in flags.ts, the per-VM rate
 * window in rate.ts; the RET_PF_* tables and which one applies are kernel knowledge (kernels.ts).
 *
 * What counts (README, "Verdicts: StaleFaultDetector", says it for users):
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
import { EventBatch, FlagBit as Flag, KindCode as Kind, Sentinel } from '../record';
import { handledRets, KernelEvidence, RET_PF_6_1, RetPfTable, SIGN_BIT_SEQ } from '../kernels';
import { hex64, hexNum } from '../hex';
import { Bit } from './flags';
import {
  Cause, CAUSE_NAMES, causeOf, confidenceOf, decidedByOf, evictedExplanation, explain,
  forecastWarning, isSignature, STATE_NAMES,
} from './rules';
import { SlotTable } from './slots';
import type { DetectorKernel, DetectorOptions, DetectorStats, Verdict, VerdictListener, VmForecast } from './types';
import { St, VcpuTable } from './vcpu';
import { VmKey, VmTable } from './vm';

export type {
  DetectorKernel, DetectorOptions, DetectorStats, InvalidationRange, StuckCause, Verdict, VerdictListener, VcpuState, VmForecast,
} from './types';
export { formatDuration } from './rules';

const TWO53 = 9007199254740992;
const PAGE = 4096;

function hexOrNull(v: number): string | null {
  return v === Sentinel.UNKNOWN ? null : hexNum(v);
}

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
  private readonly vcpuSlots: SlotTable;
  private readonly vmSlots: SlotTable;
  private readonly vc: VcpuTable;
  private readonly vms: VmTable;
  // the RET_PF values that mean the fault was handled (kernels.ts handledRets)
  private readonly retFixed: number;
  private readonly retSpurious: number;
  private readonly retEmulate: number;
  private readonly retWriteProtected: number;

  private now = -1;
  private lastSweep = -1;
  private cachedTid = -1;
  private cachedSlot = -1;
  // the current record's time and sequences, read once per record by push(). Kept in fields, not
  // passed as arguments: a double argument to a call V8 does not inline is boxed (a HeapNumber
  // allocated per record)
  private recTs = 0;
  private recMmuSeq = Sentinel.UNKNOWN;
  private recFaultSeq = Sentinel.UNKNOWN;
  private cachedVmLo = -1;
  private cachedVmHi = -1;
  private cachedVm = -1;
  private records = 0;
  private ignored = 0;
  private evictedIdle = 0;
  private evictedForCapacity = 0;
  private verdictChanges = 0;

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
    [this.retFixed, this.retSpurious, this.retEmulate, this.retWriteProtected] = handledRets(retPf);
    this.kernel = options.kernel ?? null;
    if (options.onVerdict) this.listeners.push(options.onVerdict);

    this.vcpuSlots = new SlotTable(this.capacity);
    this.vmSlots = new SlotTable(this.vmCapacity);
    this.vc = new VcpuTable(this.capacity);
    this.vms = new VmTable(this.vmCapacity, this.rateWindowNs);
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
    const vc = this.vc;
    this.records += n;
    for (let i = 0; i < n; i++) {
      const kind = batch.kind(i);
      if (kind < Kind.FAULT || kind > Kind.EXIT) {
        this.ignored++;
        continue;
      }
      let ts = batch.tsNs(i);
      if (ts === Sentinel.UNKNOWN) ts = this.now < 0 ? 0 : this.now;
      else if (ts > this.now) this.now = ts;
      if (this.now - this.lastSweep >= this.idleNs) this.sweepIdle();

      this.recTs = ts;
      this.recMmuSeq = batch.mmuSeq(i);
      this.recFaultSeq = batch.faultSeq(i);
      this.vms.recTs = ts;
      this.vms.recSeq = this.vmSeqOfRecord();
      if (kind === Kind.INVALIDATE_START || kind === Kind.INVALIDATE_END) {
        const vm = this.vmFor(batch, i);
        if (kind === Kind.INVALIDATE_START) this.vms.inv[vm] += this.repeatOf(batch, i);
        continue;
      }
      const tid = batch.tid(i);
      const s = tid === this.cachedTid ? this.cachedSlot : this.vcpuFor(batch, i);
      if (ts > vc.lastTs[s]) vc.lastTs[s] = ts;
      // a thread belongs to one VM: no VM lookup for a known vCPU
      const vm = vc.vmSlot[s];
      this.vms.update(vm);

      switch (kind) {
        case Kind.FAULT:
        case Kind.FAULTIN:
          this.onAttempt(s, vm, batch, i, kind);
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
          if (batch.gpa(i) === vc.gpa[s]) this.observe(s, vm, batch, i, false);
          break;
        default: // EXIT: only the rip
          break;
      }
      const lo = batch.ripLo(i), hi = batch.ripHi(i);
      if (!(lo === 0xffffffff && hi === 0xffffffff)) {
        vc.ripLo[s] = lo;
        vc.ripHi[s] = hi;
      }
      if (vc.state[s] !== vc.emittedState[s] || vc.cause[s] !== vc.emittedCause[s]) this.emit(s, false);
    }
  }

  /** The VM's sequence in the current record: mmu_seq, else the fault's snapshot (not when sign-extended). */
  private vmSeqOfRecord(): number {
    const seq = this.recMmuSeq;
    if (seq !== Sentinel.UNKNOWN) return seq;
    const f = this.recFaultSeq;
    return f >= TWO53 ? Sentinel.UNKNOWN : f;
  }

  private repeatOf(batch: EventBatch, i: number): number {
    const r = batch.repeat(i);
    return r >= 1 && r !== 0xffffffff ? r : 1;
  }

  private onAttempt(s: number, vm: number, batch: EventBatch, i: number, kind: number): void {
    const vc = this.vc;
    const ts = this.recTs;
    const gpa = batch.gpa(i);
    if (gpa === Sentinel.UNKNOWN) return; // cannot tell same from different: not an attempt we can judge
    const bits = vc.bits[s];
    if (kind === Kind.FAULTIN && (bits & Bit.FAULT_COUNTED) !== 0 && gpa === vc.gpa[s]) {
      // the fault-in step of the attempt whose FAULT record was already counted
      vc.bits[s] = bits & ~Bit.FAULT_COUNTED;
      this.observe(s, vm, batch, i, false);
      return;
    }
    const rep = this.repeatOf(batch, i);
    if (vc.state[s] === St.STUCK && gpa !== vc.gpa[s] && (bits & (Bit.MAPPED | Bit.AFTER_GAP)) === 0) {
      // Only a mapped fault frees a stuck vCPU. An entry with another gpa while stuck is not
      // the guest moving on (it cannot, its fault never completes) but a walk for something
      // else: the instruction emulator, a kick, teardown. It is kept apart from the attempts.
      vc.offPath[s] += rep;
      return;
    }
    vc.bits[s] = kind === Kind.FAULT ? bits | Bit.FAULT_COUNTED : bits & ~Bit.FAULT_COUNTED;
    vc.totalAttempts[s] += rep;
    if (gpa !== vc.gpa[s] || (bits & (Bit.MAPPED | Bit.AFTER_GAP)) !== 0) {
      // progress: a new gpa, or the previous attempt on this one ended mapped (or records were
      // lost since it: the attempts start counting afresh, see discontinuity())
      vc.gpa[s] = gpa;
      vc.firstTs[s] = ts;
      vc.resetRun(s, true);
      vc.attempts[s] = rep;
      this.observe(s, vm, batch, i, true);
    } else {
      vc.attempts[s] += rep;
      if (this.observe(s, vm, batch, i, false)) vc.explained[s] += rep;
      if (vc.attempts[s] >= this.retryingAttempts) vc.state[s] = St.RETRYING;
    }
    vc.vmInvAtAttempt[s] = this.vms.inv[vm];
    vc.seqAtAttempt[s] = vc.seqLast[s];
    if (vc.attempts[s] >= this.stuckAttempts) this.judgeStuck(s, vm);
  }

  /** vCPU s has enough attempts to be stuck: is it, and why. (Apart from onAttempt() to keep that small enough for V8 to inline.) */
  private judgeStuck(s: number, vm: number): void {
    const vc = this.vc;
    const a = vc.attempts[s];
    const cause = causeOf(vc, s, this.kernel);
    if (isSignature(cause, vc.seqChanges[s]) || this.recTs - vc.firstTs[s] >= this.stuckNs || a >= this.stuckAttemptsAlone) {
      vc.state[s] = St.STUCK;
      vc.cause[s] = cause;
      if (cause === Cause.SIGN) this.vms.signature[vm] = 1;
    }
  }

  private onMapped(s: number, batch: EventBatch, i: number): void {
    const vc = this.vc;
    const gpa = batch.gpa(i);
    let newFault = (vc.bits[s] & Bit.MAPPED) === 0;
    if (gpa !== Sentinel.UNKNOWN && gpa !== vc.gpa[s]) {
      // mapped an address we never saw fault (first record of a log, missed entry): progress
      vc.gpa[s] = gpa;
      vc.firstTs[s] = vc.lastTs[s];
      vc.resetRun(s, false);
      newFault = true;
    }
    vc.bits[s] |= Bit.MAPPED;
    // one fault, one count: kprobe/fentry modes report a MAP and a FAULT_RET (FIXED) for it
    if (newFault) vc.mappedCount[s] += 1;
    vc.state[s] = St.PROGRESSING;
    vc.cause[s] = Cause.NONE;
    const hva = batch.hva(i);
    if (hva !== Sentinel.UNKNOWN) vc.hva[s] = hva;
  }

  /**
   * Records the invalidation evidence of record i for vCPU s; returns whether it explains a
   * retry (the caller says whether this is a retry: `first` = first attempt on the gpa).
   */
  private observe(s: number, vm: number, batch: EventBatch, i: number, first: boolean): boolean {
    const vc = this.vc;
    let explained = false;
    const hva = batch.hva(i);
    if (hva !== Sentinel.UNKNOWN) vc.hva[s] = hva;
    const mmuSeq = this.recMmuSeq;
    let fseq = this.recFaultSeq;
    if (fseq !== Sentinel.UNKNOWN && fseq >= TWO53) {
      // an int snapshot sign-extended to 64 bits (0xffffffff8002dc25): the bug itself, seen directly
      vc.bits[s] |= Bit.SIGN_EXTENDED;
      fseq = Sentinel.UNKNOWN;
    }
    if (fseq !== Sentinel.UNKNOWN) {
      if (vc.fseqFirst[s] === Sentinel.UNKNOWN) vc.fseqFirst[s] = fseq;
      vc.fseqLast[s] = fseq;
    }
    const seq = mmuSeq !== Sentinel.UNKNOWN ? mmuSeq : fseq;
    if (seq !== Sentinel.UNKNOWN) {
      const last = vc.seqLast[s];
      if (last !== Sentinel.UNKNOWN && seq !== last) vc.seqChanges[s] += 1;
      const prev = vc.seqAtAttempt[s];
      if (!first && prev !== Sentinel.UNKNOWN && seq !== prev) explained = true; // the sequence moved since the previous attempt
      if (vc.seqFirst[s] === Sentinel.UNKNOWN) vc.seqFirst[s] = seq;
      vc.seqLast[s] = seq;
    }
    if (!first && mmuSeq !== Sentinel.UNKNOWN && fseq !== Sentinel.UNKNOWN && fseq !== mmuSeq) explained = true; // moved since the fault's snapshot
    if (!first && this.vms.inv[vm] > vc.vmInvAtAttempt[s]) explained = true; // INVALIDATE records since the last attempt

    const ip = batch.inProgress(i);
    if (ip >= 0 && this.observeInProgress(s, batch, i, ip) && !first) explained = true;
    return explained;
  }

  /**
   * The in-progress part of observe() (record i shows in_progress = ip >= 0); returns whether the
   * vCPU's address is inside the invalidated range. Apart from observe() to keep that small
   * enough for V8 to inline.
   */
  private observeInProgress(s: number, batch: EventBatch, i: number, ip: number): boolean {
    const vc = this.vc;
    vc.inProg[s] = ip;
    vc.obsKnown[s] += 1;
    const rs = batch.rangeStart(i), re = batch.rangeEnd(i);
    const gfnUnit = (batch.flags(i) & Flag.RANGE_GFN) !== 0;
    const rangeKnown = rs !== Sentinel.UNKNOWN && re !== Sentinel.UNKNOWN;
    if (rangeKnown) {
      vc.rangeStart[s] = rs;
      vc.rangeEnd[s] = re;
      vc.bits[s] = gfnUnit ? vc.bits[s] | Bit.RANGE_GFN : vc.bits[s] & ~Bit.RANGE_GFN;
    }
    if (ip === 0) {
      vc.obsNotStale[s] += 1;
      return false;
    }
    if (!rangeKnown) return false;
    const g = vc.gpa[s];
    const addr = gfnUnit ? (g === Sentinel.UNKNOWN ? Sentinel.UNKNOWN : Math.floor(g / PAGE)) : vc.hva[s];
    if (addr === Sentinel.UNKNOWN) return false;
    if (addr >= rs && addr < re) {
      vc.obsStale[s] += 1;
      return true;
    }
    vc.obsNotStale[s] += 1;
    return false;
  }

  private vmFor(batch: EventBatch, i: number): number {
    const ts = this.recTs;
    let lo = batch.vmIdLo(i), hi = batch.vmIdHi(i), keyKind = VmKey.ID;
    const pid = batch.pid(i);
    if (lo === 0xffffffff && hi === 0xffffffff) {
      lo = pid;
      hi = 0;
      keyKind = VmKey.PID;
    }
    const keyHi = keyKind === VmKey.PID ? VmKey.PID_HI : hi;
    let v: number;
    if (lo === this.cachedVmLo && keyHi === this.cachedVmHi) v = this.cachedVm;
    else {
      v = this.vmSlots.find(lo, keyHi);
      if (v < 0) v = this.newVm(lo, hi, keyHi, keyKind, pid, ts);
      this.cachedVmLo = lo;
      this.cachedVmHi = keyHi;
      this.cachedVm = v;
    }
    this.vms.update(v);
    return v;
  }

  private newVm(lo: number, hi: number, keyHi: number, keyKind: number, pid: number, ts: number): number {
    if (this.vmSlots.full) {
      this.sweepIdle();
      // the least recently seen VM (its vCPUs go with it)
      if (this.vmSlots.full) this.evictVm(this.vmSlots.leastRecent(this.vms.lastTs), false);
    }
    const v = this.vmSlots.claim(lo, keyHi);
    this.vms.init(v, lo, hi, keyKind, pid, ts);
    return v;
  }

  /** The slot of record i's thread (tid read again here: a u32 argument above 2^31 would be boxed). */
  private vcpuFor(batch: EventBatch, i: number): number {
    const vc = this.vc;
    const ts = this.recTs;
    const tid = batch.tid(i);
    let s = this.vcpuSlots.find(tid, 0);
    if (s < 0) {
      const vm = this.vmFor(batch, i);
      if (this.vcpuSlots.full) {
        this.sweepIdle();
        if (this.vcpuSlots.full) this.evictVcpu(this.vcpuSlots.leastRecent(vc.lastTs), false);
      }
      s = this.vcpuSlots.claim(tid, 0);
      vc.init(s, tid, batch.pid(i), batch.vcpuId(i) /* UNKNOWN is -1 too */, vm, ts, this.vms.inv[vm]);
      this.vms.vcpus[vm]++;
    } else if (vc.vcpuId[s] < 0) {
      vc.vcpuId[s] = batch.vcpuId(i);
    }
    this.cachedTid = tid;
    this.cachedSlot = s;
    return s;
  }

  private evictVcpu(s: number, idle: boolean): void {
    const vc = this.vc;
    if (idle) this.evictedIdle++;
    else this.evictedForCapacity++;
    if (this.listeners.length > 0 && vc.emittedState[s] !== St.NONE) {
      const v = this.verdictOf(s);
      v.evicted = true;
      v.explanation = evictedExplanation(idle, v.explanation);
      this.deliver(v);
    }
    const vm = vc.vmSlot[s];
    if (vm >= 0) this.vms.vcpus[vm]--;
    this.vcpuSlots.release(s);
    if (this.cachedSlot === s) {
      this.cachedTid = -1;
      this.cachedSlot = -1;
    }
  }

  private evictVm(v: number, idle: boolean): void {
    // its vCPUs go first: their slots point at this VM
    const used = this.vcpuSlots.used;
    for (let s = 0; s < this.capacity; s++) if (used[s] && this.vc.vmSlot[s] === v) this.evictVcpu(s, idle);
    this.vmSlots.release(v);
    if (this.cachedVm === v) this.cachedVmLo = this.cachedVmHi = this.cachedVm = -1;
  }

  /** Evicts vCPUs and VMs with no record for idleNs of trace time. O(capacity), run once per idleNs. */
  private sweepIdle(): void {
    const cutoff = this.now - this.idleNs;
    this.lastSweep = this.now;
    const used = this.vcpuSlots.used, vmUsed = this.vmSlots.used;
    for (let s = 0; s < this.capacity; s++) {
      if (used[s] && this.vc.lastTs[s] < cutoff) this.evictVcpu(s, true);
    }
    for (let v = 0; v < this.vmCapacity; v++) {
      if (vmUsed[v] && this.vms.vcpus[v] <= 0 && this.vms.lastTs[v] < cutoff) this.evictVm(v, true);
    }
  }

  private emit(s: number, evicted: boolean): void {
    const vc = this.vc;
    vc.emittedState[s] = vc.state[s];
    vc.emittedCause[s] = vc.cause[s];
    this.verdictChanges++;
    if (this.listeners.length === 0) return;
    const v = this.verdictOf(s);
    v.evicted = evicted;
    this.deliver(v);
  }

  private deliver(v: Verdict): void {
    const listeners = this.listeners;
    for (let k = 0; k < listeners.length; k++) listeners[k](v);
  }

  private verdictOf(s: number): Verdict {
    const vc = this.vc;
    const state = STATE_NAMES[vc.state[s]] ?? 'progressing';
    const cause = vc.state[s] === St.STUCK ? CAUSE_NAMES[vc.cause[s]] : null;
    const vm = vc.vmSlot[s];
    const hasRange = vc.rangeStart[s] !== Sentinel.UNKNOWN && vc.rangeEnd[s] !== Sentinel.UNKNOWN;
    const v: Verdict = {
      pid: vc.pid[s],
      tid: vc.tid[s],
      vmId: vm >= 0 ? this.vms.idOf(vm) : `pid:${vc.pid[s]}`,
      vcpu: vc.vcpuId[s] >= 0 ? vc.vcpuId[s] : null,
      state,
      cause,
      confidence: null,
      decidedBy: null,
      retryReason: state === 'retrying' ? (vc.explained[s] > 0 ? 'invalidation' : 'unexplained') : null,
      gpa: hexOrNull(vc.gpa[s]),
      hva: hexOrNull(vc.hva[s]),
      rip: vc.ripKnown(s) ? hex64(vc.ripLo[s], vc.ripHi[s]) : null,
      attempts: vc.attempts[s],
      offPathAttempts: vc.offPath[s],
      explainedAttempts: vc.explained[s],
      totalAttempts: vc.totalAttempts[s],
      mapped: vc.mappedCount[s],
      firstSeen: vc.firstTs[s],
      lastSeen: vc.lastTs[s],
      mmuSeqFirst: hexOrNull(vc.seqFirst[s]),
      mmuSeqLast: hexOrNull(vc.seqLast[s]),
      faultSeqFirst: hexOrNull(vc.fseqFirst[s]),
      faultSeqLast: hexOrNull(vc.fseqLast[s]),
      seqChanges: vc.seqChanges[s],
      inProgress: vc.inProg[s] === Sentinel.UNKNOWN ? null : vc.inProg[s],
      range: hasRange
        ? { start: hexNum(vc.rangeStart[s]), end: hexNum(vc.rangeEnd[s]), unit: (vc.bits[s] & Bit.RANGE_GFN) !== 0 ? 'gfn' : 'hva' }
        : null,
      evicted: false,
      explanation: '',
    };
    if (cause !== null) {
      v.confidence = confidenceOf(vc.cause[s]);
      v.decidedBy = decidedByOf(vc.cause[s], this.kernel);
    }
    v.explanation = explain(v, vc, s, this.kernel);
    return v;
  }

  /**
   * Records were lost here (a damaged capture: the reader dropped records it could not verify).
   * No run of attempts is counted across the gap: each vCPU's next attempt starts a new count,
   * so a stuck verdict always rests on attempts seen without a gap between them, never on what
   * the missing records would have shown (a MAP that freed the vCPU, a different gpa). Verdicts
   * already reached stay until the vCPU's next attempt.
   */
  discontinuity(): void {
    const used = this.vcpuSlots.used, bits = this.vc.bits;
    for (let s = 0; s < this.capacity; s++) if (used[s]) bits[s] = (bits[s] & ~Bit.FAULT_COUNTED) | Bit.AFTER_GAP;
  }

  /** Current verdict of every tracked vCPU (allocates; call on demand, not per record). */
  snapshot(): Verdict[] {
    const out: Verdict[] = [];
    const used = this.vcpuSlots.used;
    for (let s = 0; s < this.capacity; s++) if (used[s] && this.vc.emittedState[s] !== St.NONE) out.push(this.verdictOf(s));
    out.sort((a, b) => a.pid - b.pid || a.tid - b.tid);
    return out;
  }

  /** Early warning per VM: invalidation rate and time left until the sequence reaches 0x80000000. */
  forecast(): VmForecast[] {
    const out: VmForecast[] = [];
    const vms = this.vms, used = this.vmSlots.used;
    const kernelAffected = this.kernel ? this.kernel.affected : null;
    const kernelBy: KernelEvidence | null = kernelAffected === null ? null : (this.kernel?.decidedBy ?? 'version');
    for (let v = 0; v < this.vmCapacity; v++) {
      if (!used[v]) continue;
      // a vCPU of this VM showed the signature: the VM's kernel is affected, whatever the judgement
      const seen = vms.signature[v] === 1;
      const affected = seen ? true : kernelAffected;
      const decidedBy = seen ? 'behaviour' : kernelBy;
      const seq = vms.seq[v];
      let rate = seq === Sentinel.UNKNOWN ? null : vms.seqRate.perSec(v, seq, vms.seqTs[v]);
      let source: VmForecast['rateSource'] = rate === null ? null : 'mmu_seq';
      if (rate === null) {
        const invRate = vms.invRate.perSec(v, vms.inv[v], vms.lastTs[v]);
        if (invRate !== null && invRate > 0) {
          rate = invRate;
          source = 'invalidate-records';
        }
      }
      const crossed = seq !== Sentinel.UNKNOWN && seq >= SIGN_BIT_SEQ;
      let secondsToSignBit: number | null = null;
      if (crossed) secondsToSignBit = 0;
      else if (seq !== Sentinel.UNKNOWN && rate !== null && rate > 0) secondsToSignBit = (SIGN_BIT_SEQ - seq) / rate;
      out.push({
        vmId: vms.idOf(v),
        pid: vms.pid[v],
        vcpus: vms.vcpus[v],
        seq: hexOrNull(seq),
        invalidations: vms.inv[v],
        ratePerSec: rate,
        rateSource: source,
        secondsToSignBit,
        crossed,
        kernelAffected: affected,
        decidedBy,
        warning: forecastWarning(seq, crossed, secondsToSignBit, rate, affected, decidedBy),
      });
    }
    return out;
  }

  stats(): DetectorStats {
    return {
      records: this.records,
      ignored: this.ignored,
      vcpus: this.vcpuSlots.live,
      vms: this.vmSlots.live,
      evictedIdle: this.evictedIdle,
      evictedForCapacity: this.evictedForCapacity,
      verdictChanges: this.verdictChanges,
    };
  }
}
