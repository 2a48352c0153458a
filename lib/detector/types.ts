/** The detector's public types: options, verdicts, forecasts, stats. */
import type { KernelEvidence, KernelInfo, RetPfTable } from '../kernels';

export type VcpuState = 'progressing' | 'retrying' | 'stuck';
export type StuckCause = 'seq-sign-extension' | 'invalidation-stuck' | 'unknown';

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
