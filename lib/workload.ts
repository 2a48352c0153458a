/**
 * The built-in KVM guest workload: a tiny real guest that takes page faults in a chosen pattern,
 * with KVM's own binary statistics (KVM_GET_STATS_FD) as ground truth.
 *
 *   const r = await runWorkload({ pattern: 'sequential', sizeMiB: 16, runs: 3, invalidate: 'between' });
 *   r.runs[0].faults  // KVM's pf_taken delta: pages + 1 (the code page) on a fresh run
 *
 * The VMM (native/workload/vmm.c) runs on a libuv worker thread with one thread per vCPU, so the
 * event loop keeps running: a tracer in the same process drains its ring meanwhile. Filter the
 * tracer by `pid` (or the vCPU `tids`, known from `onStart` before the first run).
 */
import { native } from './native';

export type WorkloadPattern = 'sequential' | 'random' | 'hot';
export type InvalidateMode = 'none' | 'between' | 'concurrent';
export type InvalidateMethod = 'dontneed' | 'remap' | 'mprotect';
/** What backs /dev/kvm: KVM PVM (shadow paging, no VMX/SVM), Intel VMX, AMD SVM. */
export type KvmHostKind = 'pvm' | 'vmx' | 'svm' | 'unknown';

export interface WorkloadOptions {
  /** sequential: one hot RIP, every fault on the next page (a guest zeroing a hugepage);
   *  random: every page once per run in pseudo-random order; hot: random over `hotPages`. */
  pattern?: WorkloadPattern;
  /** Touched region per VM in MiB (default 64). Or give sizeBytes. */
  sizeMiB?: number;
  sizeBytes?: number;
  /** Bytes between touches, a multiple of 4096 (default 4096: every page). */
  stride?: number;
  /** Runs over the region (default 1; unlimited when only `duration` is given). */
  runs?: number;
  /** Stop starting runs (and stop a running one) after this many seconds. */
  duration?: number;
  /** Touches per second per vCPU; 0 = as fast as KVM allows (default). */
  rate?: number;
  /** vCPUs per VM, one host thread each; each owns an equal slice of the region (default 1). */
  vcpus?: number;
  /** VMs, each with its own memory and vCPUs, all running at once (default 1). */
  vms?: number;
  /** Touches per vCPU per run (default: one per page of its slice). */
  touches?: number;
  /** hot pattern: size of each vCPU's hot set in pages (default 64). */
  hotPages?: number;
  /** random/hot: start of the walk (default 1). */
  seed?: number;
  /** Host-side invalidation of the region's backing: before every run after the first
   *  ('between': one refault per page) or by a host thread while the guest runs ('concurrent':
   *  faults race mmu_notifier invalidations; a second pass then rewrites every page). The race
   *  is certain, not left to the scheduler: halfway through its first pass each vCPU waits until
   *  the host thread has swept its VM's whole region once more, so every run counts
   *  invalidations made while its guest ran, and (dontneed, remap) loses first-half writes. */
  invalidate?: InvalidateMode;
  invalidateMethod?: InvalidateMethod;
  /** concurrent: pause between two invalidations of a 2 MiB window (default 100 µs); the
   *  halfway wait lasts one sweep, (size / 2 MiB) windows. */
  invalidateIntervalUs?: number;
  /** Guest setup: 'auto' (detect, default) or force one. */
  host?: 'auto' | 'pvm' | 'vmx' | 'svm';
  /** Before run 2 (after run 1, before the 'between' invalidation): this many single-page
   *  madvise(MADV_DONTNEED) calls on the region's first page, one mmu_notifier invalidation
   *  (one mmu_invalidate_seq increment) each. Needs runs >= 2. Default 0 (none). */
  burst?: number;
  /** Before run 2, after the burst: this many single-page madvise(MADV_DONTNEED) calls on a page
   *  of the VMM's own memory that is in no memslot (a private anonymous page mapped for it), then
   *  its munmap: invalidations of the VMM's address space that are no VM's guest memory (KVM's
   *  notifier and the kvm_unmap_hva_range tracepoint fire for them too). Needs runs >= 2.
   *  Default 0 (none). */
  heapBurst?: number;
  /** madvise(MADV_MERGEABLE) on guest memory: with KSM running (/sys/kernel/mm/ksm/run = 1)
   *  ksmd may merge the guest's identical pages (every touched page holds the same byte), each
   *  merge an mmu_notifier invalidation from ksmd. Default false. */
  mergeable?: boolean;
  /** Called while the burst runs (every `burstProgressMs`, default 250) with the calls done. */
  onBurstProgress?: (done: number, total: number) => void;
  burstProgressMs?: number;
  signal?: AbortSignal;
  /** Called once the vCPU threads exist, before the first run (tids are final). */
  onStart?: (info: WorkloadInfo) => void;
  /** Called after each run. */
  onRun?: (run: WorkloadRun) => void;
}

/** KVM binary statistics deltas (cumulative counters only), by KVM's own names. */
export type KvmStats = Record<string, number>;

export interface WorkloadVm {
  index: number;
  /** vCPU thread ids (the `tid` of their fault records). */
  tids: number[];
  /** Host virtual address of the touched region (records' hva). */
  regionHva: number;
}

export interface WorkloadInfo {
  host: KvmHostKind;
  hostDetail: string;
  pid: number;
  vms: WorkloadVm[];
  /** All vCPU thread ids, VM by VM. */
  tids: number[];
  /** Guest-physical start of the touched region in every VM. */
  regionGpa: number;
  /** Guest RIP of the store that touches pages: the one hot RIP of the sequential pattern. */
  guestStoreRip: number;
  /** Distinct pages each full run touches, all VMs and vCPUs. */
  pagesPerRun: number;
  guestMemoryBytes: number;
  options: NormalizedWorkloadOptions;
}

export interface WorkloadRun {
  index: number;
  /** Since the workload started. */
  startMs: number;
  /** Guest time of the run (host invalidations between runs not included). */
  durationMs: number;
  /** 1, or 2 with concurrent invalidation (the second pass, uncontended, rewrites every page). */
  passes: number;
  /** Cut short by `duration`. */
  truncated: boolean;
  /** Guest writes, all passes. */
  touches: number;
  /** Distinct pages written, and of those, holding this run's byte when read by the host. */
  pagesTouched: number;
  pagesVerified: number;
  /** concurrent: writes of the first pass wiped by an invalidation (dontneed/remap). */
  pagesLost: number;
  /** madvise / remap / mprotect calls on the region in this run. */
  invalidations: number;
  /** KVM_RUN -EFAULT retried while a concurrent mprotect had the region read-only. */
  efaultRetries: number;
  /** Burst calls (options.burst) made before this run: run 2 only. Not in `invalidations`. */
  burst: number;
  /** Heap burst calls (options.heapBurst) made before this run: run 2 only. Not in `invalidations`. */
  heapBurst: number;
  /** Wall time of the burst and of the heap burst (0 when none): calls / time is their true rate. */
  burstMs: number;
  heapBurstMs: number;
  /** KVM's pf_taken delta, all vCPUs: every fault KVM handled, retried ones included. */
  faults: number;
  /** pf_taken - pf_fixed - pf_spurious - pf_emulate: faults KVM abandoned and the guest retried
   *  (RET_PF_RETRY: stale after an invalidation, or one in progress on the page). */
  retries: number;
  faultsPerSec: number;
  /** Summed over VMs / over all vCPUs. */
  vm: KvmStats;
  vcpu: KvmStats;
  perVm: { vm: KvmStats; vcpu: KvmStats; perVcpu: KvmStats[] }[];
}

export interface WorkloadResult extends WorkloadInfo {
  runs: WorkloadRun[];
  total: {
    durationMs: number;
    touches: number;
    faults: number;
    retries: number;
    faultsPerSec: number;
    pagesTouched: number;
    pagesVerified: number;
    pagesLost: number;
    invalidations: number;
    vm: KvmStats;
    vcpu: KvmStats;
  };
  /** Things that worked but look wrong (e.g. a guest KVM emulated instead of running it). */
  warnings: string[];
}

export interface NormalizedWorkloadOptions {
  pattern: WorkloadPattern;
  sizeBytes: number;
  stride: number;
  runs: number; // 0 = until duration
  duration: number; // 0 = none
  rate: number;
  vcpus: number;
  vms: number;
  touches: number; // 0 = one per page of the slice
  hotPages: number;
  seed: number;
  invalidate: InvalidateMode;
  invalidateMethod: InvalidateMethod;
  invalidateIntervalUs: number;
  host: 'auto' | 'pvm' | 'vmx' | 'svm';
  burst: number;
  heapBurst: number;
  burstProgressMs: number;
  mergeable: boolean;
}

/** A workload failure; `code` says which: KVM_UNAVAILABLE, KVM_PERMISSION, UNSUPPORTED_HOST,
 *  GUEST_ENTRY_FAILED, GUEST_FAILED, SYSTEM_ERROR. `partial` has the runs completed before it. */
export class WorkloadError extends Error {
  constructor(message: string, readonly code: string, readonly partial?: WorkloadResult) {
    super(message);
    this.name = 'WorkloadError';
  }
}

export const WORKLOAD_MAX_VCPUS = 32;
export const WORKLOAD_MAX_VMS = 16;
const PAGE = 4096;
const MIB = 1 << 20;
/** The guest layout ends below 60 GiB; keep well inside it. */
const MAX_SIZE_BYTES = 32 * 1024 * MIB;

const PATTERNS: readonly WorkloadPattern[] = ['sequential', 'random', 'hot'];
const INVALIDATE: readonly InvalidateMode[] = ['none', 'between', 'concurrent'];
const METHODS: readonly InvalidateMethod[] = ['dontneed', 'remap', 'mprotect'];
const HOSTS = ['auto', 'pvm', 'vmx', 'svm'] as const;

function oneOf<T extends string>(name: string, value: unknown, allowed: readonly T[], dflt: T): T {
  if (value === undefined) return dflt;
  if (typeof value !== 'string' || !allowed.includes(value as T)) {
    throw new TypeError(
      `options.${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')} (got ${JSON.stringify(value)})`,
    );
  }
  return value as T;
}

function integer(name: string, value: unknown, min: number, max: number, dflt: number): number {
  if (value === undefined) return dflt;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`options.${name} must be a number (got ${typeof value === 'string' ? JSON.stringify(value) : typeof value})`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`options.${name} must be an integer from ${min} to ${max} (got ${value})`);
  }
  return value;
}

function real(name: string, value: unknown, min: number, max: number, dflt: number): number {
  if (value === undefined) return dflt;
  if (typeof value !== 'number' || Number.isNaN(value)) {
    throw new TypeError(`options.${name} must be a number (got ${typeof value === 'string' ? JSON.stringify(value) : typeof value})`);
  }
  if (value < min || value > max) throw new RangeError(`options.${name} must be from ${min} to ${max} (got ${value})`);
  return value;
}

/** Checks and completes the options; throws TypeError/RangeError with the exact problem. */
export function normalizeWorkloadOptions(options: WorkloadOptions = {}): NormalizedWorkloadOptions {
  if (options === null || typeof options !== 'object') throw new TypeError('options must be an object');
  const o = options;
  if (o.sizeMiB !== undefined && o.sizeBytes !== undefined) {
    throw new TypeError('give options.sizeMiB or options.sizeBytes, not both');
  }
  const sizeBytes =
    o.sizeBytes !== undefined
      ? integer('sizeBytes', o.sizeBytes, PAGE, MAX_SIZE_BYTES, 0)
      : integer('sizeMiB', o.sizeMiB, 1, MAX_SIZE_BYTES / MIB, 64) * MIB;
  const stride = integer('stride', o.stride, PAGE, sizeBytes, PAGE);
  if (stride % PAGE) throw new RangeError(`options.stride must be a multiple of 4096 (got ${stride})`);
  if (sizeBytes % stride) {
    throw new RangeError(`the region size (${sizeBytes} bytes) must be a multiple of options.stride (${stride})`);
  }
  const duration = real('duration', o.duration, 0, 7 * 24 * 3600, 0);
  const runs = integer('runs', o.runs, duration > 0 ? 0 : 1, 0xffffffff, duration > 0 ? 0 : 1);
  const vcpus = integer('vcpus', o.vcpus, 1, WORKLOAD_MAX_VCPUS, 1);
  const vms = integer('vms', o.vms, 1, WORKLOAD_MAX_VMS, 1);
  const pages = sizeBytes / stride;
  if (pages < vcpus) {
    throw new RangeError(`the region has ${pages} touch slots (size / stride) but options.vcpus is ${vcpus}: each vCPU needs at least one`);
  }
  const pattern = oneOf('pattern', o.pattern, PATTERNS, 'sequential');
  const invalidate = oneOf('invalidate', o.invalidate, INVALIDATE, 'none');
  const invalidateMethod = oneOf('invalidateMethod', o.invalidateMethod, METHODS, 'dontneed');
  if (o.signal !== undefined && (o.signal === null || typeof (o.signal as AbortSignal).addEventListener !== 'function')) {
    throw new TypeError('options.signal must be an AbortSignal');
  }
  const burst = integer('burst', o.burst, 0, Number.MAX_SAFE_INTEGER, 0);
  if (burst > 0 && runs === 1) throw new RangeError('options.burst comes before run 2: it needs options.runs >= 2');
  const heapBurst = integer('heapBurst', o.heapBurst, 0, Number.MAX_SAFE_INTEGER, 0);
  if (heapBurst > 0 && runs === 1) throw new RangeError('options.heapBurst comes before run 2: it needs options.runs >= 2');
  for (const cb of ['onStart', 'onRun', 'onBurstProgress'] as const) {
    if (o[cb] !== undefined && typeof o[cb] !== 'function') throw new TypeError(`options.${cb} must be a function`);
  }
  return {
    pattern,
    sizeBytes,
    stride,
    runs,
    duration,
    rate: integer('rate', o.rate, 0, 1e9, 0),
    vcpus,
    vms,
    touches: integer('touches', o.touches, 0, Number.MAX_SAFE_INTEGER, 0),
    hotPages: integer('hotPages', o.hotPages, 1, 0xffffffff, 64),
    seed: integer('seed', o.seed, 0, Number.MAX_SAFE_INTEGER, 1),
    invalidate,
    invalidateMethod,
    invalidateIntervalUs: integer('invalidateIntervalUs', o.invalidateIntervalUs, 0, 10_000_000, 100),
    host: oneOf('host', o.host, HOSTS, 'auto'),
    burst,
    heapBurst,
    burstProgressMs: integer('burstProgressMs', o.burstProgressMs, 10, 60_000, 250),
    mergeable: o.mergeable === undefined ? false : (() => {
      if (typeof o.mergeable !== 'boolean') throw new TypeError('options.mergeable must be a boolean');
      return o.mergeable;
    })(),
  };
}

/** What backs /dev/kvm here, without opening it. */
export function detectKvmHost(): { host: KvmHostKind; detail: string } {
  return native().workload.detectHost();
}

interface RawInfo {
  host: KvmHostKind;
  hostDetail: string;
  tids: number[][];
  vmStatNames: string[];
  vcpuStatNames: string[];
  regionHva: number[];
  regionGpa: number;
  guestStoreRip: number;
  slotsPerRun: number;
  guestMemoryBytes: number;
}
interface RawRun {
  index: number;
  startS: number;
  durationS: number;
  passes: number;
  truncated: boolean;
  touches: number;
  slotsTouched: number;
  slotsVerified: number;
  slotsLost: number;
  invalidations: number;
  efaultRetries: number;
  burst?: number;
  heapBurst?: number;
  burstS?: number;
  heapBurstS?: number;
  vm: Float64Array;
  vcpu: Float64Array;
}

function statsAt(names: string[], values: Float64Array, offset: number): KvmStats {
  const s: KvmStats = {};
  for (let i = 0; i < names.length; i++) s[names[i]] = values[offset + i];
  return s;
}
function addInto(sum: KvmStats, s: KvmStats): KvmStats {
  for (const k of Object.keys(s)) sum[k] = (sum[k] ?? 0) + s[k];
  return sum;
}

function toInfo(raw: RawInfo, options: NormalizedWorkloadOptions): WorkloadInfo {
  return {
    host: raw.host,
    hostDetail: raw.hostDetail,
    pid: process.pid,
    vms: raw.tids.map((tids, index) => ({ index, tids: [...tids], regionHva: raw.regionHva[index] })),
    tids: raw.tids.flat(),
    regionGpa: raw.regionGpa,
    guestStoreRip: raw.guestStoreRip,
    pagesPerRun: raw.slotsPerRun,
    guestMemoryBytes: raw.guestMemoryBytes,
    options,
  };
}

function toRun(raw: RawRun, info: RawInfo, o: NormalizedWorkloadOptions): WorkloadRun {
  const nVm = info.vmStatNames.length;
  const nVcpu = info.vcpuStatNames.length;
  const perVm = [];
  const vm: KvmStats = {};
  const vcpu: KvmStats = {};
  for (let i = 0; i < o.vms; i++) {
    const vmStats = statsAt(info.vmStatNames, raw.vm, i * nVm);
    const perVcpu: KvmStats[] = [];
    const vcpuSum: KvmStats = {};
    for (let j = 0; j < o.vcpus; j++) {
      const s = statsAt(info.vcpuStatNames, raw.vcpu, (i * o.vcpus + j) * nVcpu);
      perVcpu.push(s);
      addInto(vcpuSum, s);
    }
    addInto(vm, vmStats);
    addInto(vcpu, vcpuSum);
    perVm.push({ vm: vmStats, vcpu: vcpuSum, perVcpu });
  }
  const faults = vcpu.pf_taken ?? 0;
  const retries = Math.max(0, faults - (vcpu.pf_fixed ?? 0) - (vcpu.pf_spurious ?? 0) - (vcpu.pf_emulate ?? 0));
  return {
    index: raw.index,
    startMs: raw.startS * 1e3,
    durationMs: raw.durationS * 1e3,
    passes: raw.passes,
    truncated: raw.truncated,
    touches: raw.touches,
    pagesTouched: raw.slotsTouched,
    pagesVerified: raw.slotsVerified,
    pagesLost: raw.slotsLost,
    invalidations: raw.invalidations,
    efaultRetries: raw.efaultRetries,
    burst: raw.burst ?? 0,
    heapBurst: raw.heapBurst ?? 0,
    burstMs: (raw.burstS ?? 0) * 1e3,
    heapBurstMs: (raw.heapBurstS ?? 0) * 1e3,
    faults,
    retries,
    faultsPerSec: raw.durationS > 0 ? faults / raw.durationS : 0,
    vm,
    vcpu,
    perVm,
  };
}

function toResult(raw: RawInfo & { runs: RawRun[] }, o: NormalizedWorkloadOptions): WorkloadResult {
  const info = toInfo(raw, o);
  const runs = raw.runs.map((r) => toRun(r, raw, o));
  const total = {
    durationMs: 0,
    touches: 0,
    faults: 0,
    retries: 0,
    faultsPerSec: 0,
    pagesTouched: 0,
    pagesVerified: 0,
    pagesLost: 0,
    invalidations: 0,
    vm: {} as KvmStats,
    vcpu: {} as KvmStats,
  };
  for (const r of runs) {
    total.durationMs += r.durationMs;
    total.touches += r.touches;
    total.faults += r.faults;
    total.retries += r.retries;
    total.pagesTouched += r.pagesTouched;
    total.pagesVerified += r.pagesVerified;
    total.pagesLost += r.pagesLost;
    total.invalidations += r.invalidations;
    addInto(total.vm, r.vm);
    addInto(total.vcpu, r.vcpu);
  }
  total.faultsPerSec = total.durationMs > 0 ? total.faults / (total.durationMs / 1e3) : 0;
  const warnings: string[] = [];
  if (runs.length > 0 && runs[0].pagesTouched > 0 && runs[0].faults === 0) {
    warnings.push(
      `the guest touched ${runs[0].pagesTouched} fresh pages but KVM counted no page faults: ` +
        `KVM emulated the guest instead of running it (guest set up for ${info.host}; check options.host)`,
    );
  }
  return { ...info, runs, total, warnings };
}

const HOST_CODES = { auto: 0, pvm: 1, vmx: 2, svm: 3 } as const;

function abortError(signal: AbortSignal | undefined, partial?: WorkloadResult): Error {
  const e = new Error('the workload was aborted', { cause: signal?.reason }) as Error & {
    code: string;
    partial?: WorkloadResult;
  };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  if (partial) e.partial = partial;
  return e;
}

/** Runs the built-in guest workload; resolves when all runs are done (or `duration` is up). */
export async function runWorkload(options: WorkloadOptions = {}): Promise<WorkloadResult> {
  const o = normalizeWorkloadOptions(options);
  const { signal, onStart, onRun } = options;
  if (signal?.aborted) throw abortError(signal);
  const w = native().workload;
  const c = w.constants;
  const nativeOptions = {
    pattern: { sequential: c.PATTERN_SEQUENTIAL, random: c.PATTERN_RANDOM, hot: c.PATTERN_HOT }[o.pattern],
    sizeBytes: o.sizeBytes,
    stride: o.stride,
    runs: o.runs,
    durationS: o.duration,
    rate: o.rate,
    vcpus: o.vcpus,
    vms: o.vms,
    touches: o.touches,
    hotSlots: o.hotPages,
    seed: o.seed,
    invalidate: { none: c.INVAL_NONE, between: c.INVAL_BETWEEN, concurrent: c.INVAL_CONCURRENT }[o.invalidate],
    invalidateMethod: { dontneed: c.INVAL_DONTNEED, remap: c.INVAL_REMAP, mprotect: c.INVAL_MPROTECT }[o.invalidateMethod],
    invalidateIntervalUs: o.invalidateIntervalUs,
    host: HOST_CODES[o.host],
    burst: o.burst,
    heapBurst: o.heapBurst,
    mergeable: o.mergeable,
  };
  let rawInfo: RawInfo | undefined;
  const handle = w.run(nativeOptions, (type: string, payload: unknown) => {
    if (type === 'start') {
      rawInfo = payload as RawInfo;
      onStart?.(toInfo(rawInfo, o));
    } else if (type === 'run' && rawInfo && onRun) {
      onRun(toRun(payload as RawRun, rawInfo, o));
    }
  });
  const onAbort = () => handle.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  // the burst's progress: an atomic counter in the addon, polled (the VMM thread never calls JS for it)
  let lastBurst = 0;
  const pollBurst = (): void => {
    const done = handle.burstDone();
    if (done !== lastBurst) {
      lastBurst = done;
      options.onBurstProgress?.(done, o.burst);
    }
  };
  const burstTimer = o.burst > 0 && options.onBurstProgress ? setInterval(pollBurst, o.burstProgressMs) : null;
  try {
    return toResult(await handle.promise, o);
  } catch (e) {
    const err = e as Error & { code?: string; partial?: RawInfo & { runs: RawRun[] } };
    const partial = err.partial ? toResult(err.partial, o) : undefined;
    if (err.code === 'ABORT_ERR') throw abortError(signal, partial);
    if (typeof err.code === 'string') throw new WorkloadError(err.message, err.code, partial);
    throw e; // a listener's own exception, unchanged
  } finally {
    if (burstTimer) {
      clearInterval(burstTimer);
      pollBurst();
    }
    signal?.removeEventListener('abort', onAbort);
  }
}
