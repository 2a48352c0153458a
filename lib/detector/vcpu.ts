/**
 * Per-vCPU state, one typed-array entry per slot: preallocated for the table's capacity, so
 * following a vCPU allocates nothing per record.
 */
import { Sentinel } from '../record';
import { Bit } from './flags';

/** vCPU states (VcpuTable.state); STATE_NAMES in rules.ts gives their names */
export const enum St {
  NONE = 0,
  PROGRESSING = 1,
  RETRYING = 2,
  STUCK = 3,
}

export class VcpuTable {
  readonly tid: Uint32Array;
  readonly pid: Uint32Array;
  readonly vcpuId: Int32Array;
  readonly vmSlot: Int32Array;
  readonly gpa: Float64Array;
  readonly hva: Float64Array;
  /** last known rip; both halves 0xffffffff while unknown */
  readonly ripLo: Uint32Array;
  readonly ripHi: Uint32Array;
  /** attempts on this gpa since the last progress (the current run) */
  readonly attempts: Float64Array;
  /** while stuck: fault entries on other addresses, kept apart from the attempts */
  readonly offPath: Float64Array;
  readonly explained: Float64Array;
  readonly totalAttempts: Float64Array;
  readonly mappedCount: Float64Array;
  /** first attempt of the run, and the vCPU's last record (trace clock, ns) */
  readonly firstTs: Float64Array;
  readonly lastTs: Float64Array;
  readonly seqFirst: Float64Array;
  readonly seqLast: Float64Array;
  readonly fseqFirst: Float64Array;
  readonly fseqLast: Float64Array;
  readonly seqChanges: Float64Array;
  /** the sequence seen with the previous attempt (a FAULTIN_RET in between may already show the move) */
  readonly seqAtAttempt: Float64Array;
  readonly inProg: Float64Array;
  readonly rangeStart: Float64Array;
  readonly rangeEnd: Float64Array;
  /** observations during this run: in_progress known; of those, "stale" (ip>0, address in range)
   *  and "not stale" (ip == 0, or ip > 0 with the address outside the range) */
  readonly obsKnown: Float64Array;
  readonly obsStale: Float64Array;
  readonly obsNotStale: Float64Array;
  /** the VM's INVALIDATE count at the previous attempt */
  readonly vmInvAtAttempt: Float64Array;
  /** flags.ts bits */
  readonly bits: Uint8Array;
  readonly state: Uint8Array;
  readonly cause: Uint8Array;
  /** what the last verdict change reported (St.NONE: none yet) */
  readonly emittedState: Uint8Array;
  readonly emittedCause: Uint8Array;

  constructor(n: number) {
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
  }

  /** A slot's state for a thread first seen at ts (vmInv: its VM's INVALIDATE count now). */
  init(s: number, tid: number, pid: number, vcpuId: number, vm: number, ts: number, vmInv: number): void {
    this.tid[s] = tid;
    this.pid[s] = pid;
    this.vcpuId[s] = vcpuId;
    this.vmSlot[s] = vm;
    this.ripLo[s] = 0xffffffff;
    this.ripHi[s] = 0xffffffff;
    this.totalAttempts[s] = 0;
    this.mappedCount[s] = 0;
    this.lastTs[s] = ts;
    this.inProg[s] = Sentinel.UNKNOWN;
    this.rangeStart[s] = Sentinel.UNKNOWN;
    this.rangeEnd[s] = Sentinel.UNKNOWN;
    this.vmInvAtAttempt[s] = vmInv;
    this.bits[s] = 0;
    this.gpa[s] = Sentinel.UNKNOWN;
    this.firstTs[s] = ts;
    this.resetRun(s, true);
    this.emittedState[s] = 0;
    this.emittedCause[s] = 0;
  }

  /**
   * The one reset: a new run of attempts starts (progress), on gpa[s] at firstTs[s], which the
   * caller has just set (typed-array writes, not double arguments: a call V8 does not inline
   * would box them, one HeapNumber allocated per record). `withEvidence` also
   * forgets what the previous run's records showed (sequences, in-progress observations, the
   * sign-extension and mapped bits), as an attempt on a new gpa does; a mapping of an address
   * never seen faulting keeps it (the next attempt starts afresh anyway: Bit.MAPPED is set).
   */
  resetRun(s: number, withEvidence: boolean): void {
    this.attempts[s] = 0;
    this.offPath[s] = 0;
    this.explained[s] = 0;
    this.state[s] = St.PROGRESSING;
    this.cause[s] = 0;
    if (!withEvidence) return;
    this.hva[s] = Sentinel.UNKNOWN;
    this.seqFirst[s] = Sentinel.UNKNOWN;
    this.seqLast[s] = Sentinel.UNKNOWN;
    this.fseqFirst[s] = Sentinel.UNKNOWN;
    this.fseqLast[s] = Sentinel.UNKNOWN;
    this.seqChanges[s] = 0;
    this.seqAtAttempt[s] = Sentinel.UNKNOWN;
    this.obsKnown[s] = 0;
    this.obsStale[s] = 0;
    this.obsNotStale[s] = 0;
    this.bits[s] &= ~(Bit.MAPPED | Bit.SIGN_EXTENDED | Bit.AFTER_GAP);
  }

  ripKnown(s: number): boolean {
    return !(this.ripLo[s] === 0xffffffff && this.ripHi[s] === 0xffffffff);
  }
}
