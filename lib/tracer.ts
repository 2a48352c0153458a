/**
 * Live capture of the KVM x86 MMU fault path: load the BPF probes, attach them, stream records.
 *
 *     const tracer = await openTracer({ mode: 'auto', pid });
 *     console.log(tracer.mode, tracer.modeNotes);
 *     for await (const batch of tracer.events()) {        // break => probes detached
 *       for (let i = 0; i < batch.length; i++) if (batch.kind(i) === Kind.MAP) use(batch.gpa(i));
 *     }
 *
 * openTracer is async (it returns a Promise) so callers are ready for loaders that take time;
 * today the work is synchronous (open + verify + attach: ~10-50 ms).
 *
 * Batches are views of the kernel's ring, valid until the next iteration: see lib/stream.ts.
 *
 * Modes: 'tracepoint' (typed tp_btf, raw_tracepoint fallback), 'kprobe' (kprobe + kretprobe on
 * the fault-in function and the fault handlers), 'fentry' (the same, typed), 'auto' = try
 * fentry, then kprobe, then tracepoint. The tracer reports the mode chosen, why the others were
 * not, what the mode can and cannot see (modeNotes), and for every probe whether it attached.
 */
import * as fs from 'fs';
import { randomBytes } from 'node:crypto';
import { MemslotCache, openMemslotReader, type MemslotReader } from './memslots';
import { native } from './native';
import {
  AUTO_ORDER, FALLBACK_HANDLER, FAULTIN_FUNCTIONS, FENTRY_TARGETS, HANDLER_FUNCTIONS, kallsymsHasSymbol, MODE_CHOICES,
  NOTIFIER_START, parseKallsyms, PROBED_FUNCTIONS, readKallsyms, TRACEPOINTS, type TracerMode,
} from './probes';
import type { EventBatch } from './record';
import { KernelSymbols } from './sources';
import { EventStream, StreamStats } from './stream';

export type { TracerMode };

let symbolsCache: KernelSymbols | null = null;
/** /proc/kallsyms, read on the first stack resolved in this process */
function defaultSymbols(): KernelSymbols {
  return (symbolsCache ??= new KernelSymbols());
}

export interface TracerOptions {
  /** 'auto' (default) tries fentry, then kprobe, then tracepoint. */
  mode?: 'auto' | TracerMode;
  /** Only this process (the VMM's tgid). Default: every process. */
  pid?: number;
  /** BPF ring size in bytes: a power of two, 4 KiB .. 1 GiB. Default 16 MiB. */
  ringBytes?: number;
  /**
   * Fold identical consecutive records of one thread and kind in the kernel: the first goes out
   * with repeat = 1, the identical ones after it as one record with repeat = N and
   * Flag.COALESCED (at the next different record, every 100 ms, or at 2^20). The sum of repeat
   * is the number of events. Default false.
   */
  coalesce?: boolean;
  /**
   * The program wakes the reader only once this many bytes are pending (the stream picks up a
   * smaller tail with a 10 ms timer). 0 = the kernel's adaptive wakeup. Default
   * min(256 KiB, ringBytes / 4).
   */
  wakeupBytes?: number;
  /** Also emit EXIT records (kvm:kvm_exit fires on every VM exit: costly). Default false. */
  exits?: boolean;
  /**
   * INVALIDATE_START records carry the invalidating task's kernel stack id (bpf_get_stackid),
   * from which lib/sources.ts names the source (KSM, NUMA balancing, the VMM's madvise...).
   * Default true; false saves the stack walk per invalidation (comm is still recorded).
   */
  invalidationStacks?: boolean;
  /** Aborting closes the tracer (detaches every probe). */
  signal?: AbortSignal;
  /** Print libbpf's messages to stderr. Default false (they are still kept for error messages). */
  verbose?: boolean;
}

export interface ProbeStatus {
  /** BPF program name (kvmfault.bpf.c) */
  name: string;
  /** where it attaches: "tp_btf:kvmmmu:kvm_mmu_spte_requested", "kprobe:kvm_mmu_faultin_pfn", ... */
  point: string;
  attached: boolean;
  /** why it is not attached */
  reason?: string;
}

export interface TracerStats {
  /** records the BPF programs put into the ring */
  submitted: number;
  /** records lost because the ring was full (counted in the kernel) */
  dropped: number;
  /** per-program counters; only counted while sysctl kernel.bpf_stats_enabled=1 */
  bpfStatsEnabled: boolean;
  programs: { name: string; runCount: number; runTimeNs: number }[];
  /** the reader's side, while events() is being iterated (else the last iteration's) */
  stream: StreamStats | null;
}

export type TracerErrorCode =
  | 'EPERM' // not root / BPF not permitted
  | 'NO_BTF' // no /sys/kernel/btf/vmlinux
  | 'NO_KVM' // KVM not in the kernel's BTF
  | 'NO_KVM_PROBES' // the mode's probe points do not exist on this kernel
  | 'MODE_UNAVAILABLE' // the mode cannot work here (no kprobes, fentry EPERM, ...)
  | 'LOAD_FAILED' // verifier / CO-RE rejected the programs
  | 'ATTACH_FAILED' // loaded, but no probe attached
  | 'CLOSED' // tracer already closed
  | 'BUSY' // events() already being iterated
  | 'ABORTED'; // options.signal aborted before open finished

export class TracerError extends Error {
  readonly code: TracerErrorCode;
  /** errno of the failed system call, when one failed */
  readonly errno?: number;
  /** every probe of the failed attempt(s) with the reason it is not attached */
  readonly probes: ProbeStatus[];
  /** libbpf's warnings and errors of the failed step (verbose shows them live) */
  readonly libbpfLog?: string;
  constructor(code: TracerErrorCode, message: string, extra: { errno?: number; probes?: ProbeStatus[]; libbpfLog?: string } = {}) {
    super(message);
    this.name = 'TracerError';
    this.code = code;
    this.errno = extra.errno;
    this.probes = extra.probes ?? [];
    this.libbpfLog = extra.libbpfLog;
  }
}

/** The probe catalogue (probes.ts) as the addon takes it, with the kallsyms symbol of each function found. */
export interface NativeCatalogue {
  faultin: readonly string[];
  notifier: string;
  handlers: readonly string[];
  fallback: string;
  fentry: typeof FENTRY_TARGETS;
  tracepoints: typeof TRACEPOINTS;
  symbols: Record<string, string>;
}

/** native/addon/tracer.cc */
interface NativeTracer {
  open(o: {
    mode: TracerMode; pid: number; ringBytes: number; wakeupBytes: number; coalesce: boolean;
    exits: boolean; rawTracepoints: boolean; invalidationStacks: boolean; verbose: boolean; probes: NativeCatalogue;
    vmIdKey: bigint;
  }): { retPf: Record<string, number>; rangeIsGfn: boolean; typedKvmLoads: boolean; btf: string; probes: ProbeStatus[] };
  load(): void;
  attach(): ProbeStatus[];
  ringFd(): number;
  stats(): Omit<TracerStats, 'stream'>;
  /** kernel return addresses of an INVALIDATE_START stack_id, innermost first; null if absent */
  stack(id: number): BigUint64Array | null;
  close(): void;
}

const MIN_RING = 4096;
const MAX_RING = 1 << 30;
const DEFAULT_RING = 16 << 20;
/** Failures that no other mode can get around: stop `auto` at once. */
const FATAL_FOR_ALL_MODES = new Set(['EPERM', 'NO_BTF', 'NO_KVM']);

interface Resolved {
  mode: 'auto' | TracerMode;
  pid: number;
  ringBytes: number;
  wakeupBytes: number;
  coalesce: boolean;
  exits: boolean;
  invalidationStacks: boolean;
  verbose: boolean;
  signal?: AbortSignal;
  /** the records' vm_id key, shared with the memslot iterator (Tracer.memslots) */
  vmIdKey: bigint;
}

function isAbortSignal(x: unknown): x is AbortSignal {
  return typeof x === 'object' && x !== null && typeof (x as AbortSignal).aborted === 'boolean' &&
    typeof (x as AbortSignal).addEventListener === 'function';
}

function checkBool(name: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw new TypeError(`openTracer: options.${name} must be a boolean, got ${typeof v}`);
  return v;
}

/** Validates options before anything reaches C++ (exact TypeError / RangeError messages). */
export function resolveTracerOptions(options: TracerOptions = {}): Resolved {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new TypeError('openTracer: options must be an object');
  }
  const mode = options.mode ?? 'auto';
  if (typeof mode !== 'string') throw new TypeError(`openTracer: options.mode must be a string, got ${typeof mode}`);
  if (!(MODE_CHOICES as readonly string[]).includes(mode)) {
    throw new RangeError(`openTracer: options.mode must be one of ${MODE_CHOICES.map((m) => `'${m}'`).join(', ')}, got '${mode}'`);
  }
  let pid = 0;
  if (options.pid !== undefined) {
    if (typeof options.pid !== 'number') throw new TypeError(`openTracer: options.pid must be a number, got ${typeof options.pid}`);
    if (!Number.isInteger(options.pid) || options.pid < 1 || options.pid > 0x3fffffff) {
      throw new RangeError(`openTracer: options.pid must be a process id (integer 1 .. 2^30-1), got ${options.pid}`);
    }
    pid = options.pid;
  }
  let ringBytes = DEFAULT_RING;
  if (options.ringBytes !== undefined) {
    if (typeof options.ringBytes !== 'number') {
      throw new TypeError(`openTracer: options.ringBytes must be a number, got ${typeof options.ringBytes}`);
    }
    const r = options.ringBytes;
    if (!Number.isInteger(r) || r < MIN_RING || r > MAX_RING || (r & (r - 1)) !== 0) {
      throw new RangeError(`openTracer: options.ringBytes must be a power of two from 4096 to 1073741824, got ${r}`);
    }
    ringBytes = r;
  }
  let wakeupBytes = Math.min(256 << 10, ringBytes / 4);
  if (options.wakeupBytes !== undefined) {
    if (typeof options.wakeupBytes !== 'number') {
      throw new TypeError(`openTracer: options.wakeupBytes must be a number, got ${typeof options.wakeupBytes}`);
    }
    const w = options.wakeupBytes;
    if (!Number.isInteger(w) || w < 0 || w >= ringBytes) {
      throw new RangeError(`openTracer: options.wakeupBytes must be an integer from 0 to ringBytes - 1 (${ringBytes - 1}), got ${w}`);
    }
    wakeupBytes = w;
  }
  if (options.signal !== undefined && !isAbortSignal(options.signal)) {
    throw new TypeError('openTracer: options.signal must be an AbortSignal');
  }
  return {
    mode, pid, ringBytes, wakeupBytes,
    coalesce: checkBool('coalesce', options.coalesce),
    exits: checkBool('exits', options.exits),
    invalidationStacks: options.invalidationStacks === undefined ? true : checkBool('invalidationStacks', options.invalidationStacks),
    verbose: checkBool('verbose', options.verbose),
    signal: options.signal,
    vmIdKey: randomBytes(8).readBigUInt64LE(0),
  };
}

function toTracerError(e: unknown, fallback: TracerErrorCode): TracerError {
  if (e instanceof TracerError) return e;
  const err = e as { code?: string; errno?: number; message?: string; probes?: ProbeStatus[]; libbpfLog?: string };
  const known: TracerErrorCode[] = ['EPERM', 'NO_BTF', 'NO_KVM', 'NO_KVM_PROBES', 'MODE_UNAVAILABLE', 'LOAD_FAILED'];
  const code = known.includes(err?.code as TracerErrorCode) ? (err.code as TracerErrorCode) : fallback;
  return new TracerError(code, err?.message ?? String(e), { errno: err?.errno, probes: err?.probes, libbpfLog: err?.libbpfLog });
}

interface Attempt {
  native: NativeTracer;
  mode: TracerMode;
  info: ReturnType<NativeTracer['open']>;
  probes: ProbeStatus[];
  rawTracepoints: boolean;
}

/**
 * The catalogue for one openTracer() call (exported for bench/kvm.ts, which drives the addon directly). /proc/kallsyms is slow to read (5 MB, ~0.3 s): only
 * the function probes (kprobe, fentry) need its symbols, read once for every mode tried.
 */
export class ProbeCatalogue {
  private symbols: Record<string, string> | null = null;

  forMode(mode: TracerMode): NativeCatalogue {
    if (mode !== 'tracepoint' && this.symbols === null) {
      this.symbols = Object.fromEntries(parseKallsyms(readKallsyms(), PROBED_FUNCTIONS));
    }
    return {
      faultin: FAULTIN_FUNCTIONS, notifier: NOTIFIER_START, handlers: HANDLER_FUNCTIONS, fallback: FALLBACK_HANDLER,
      fentry: FENTRY_TARGETS, tracepoints: TRACEPOINTS, symbols: mode === 'tracepoint' ? {} : this.symbols!,
    };
  }
}

/** kvm_running_vcpu does not come and go while the process runs: looked up once. */
let runningVcpuKnown: boolean | null = null;
function kallsymsHasRunningVcpu(): boolean {
  if (runningVcpuKnown === null) runningVcpuKnown = kallsymsHasSymbol(readKallsyms(), 'kvm_running_vcpu');
  return runningVcpuKnown;
}

/** One mode: open, load, attach. Throws TracerError; never leaves anything attached on failure. */
function attempt(mode: TracerMode, o: Resolved, rawTracepoints: boolean, catalogue: ProbeCatalogue): Attempt {
  const Native = native().Tracer;
  const t: NativeTracer = new Native();
  try {
    const info = t.open({
      mode, pid: o.pid, ringBytes: o.ringBytes, wakeupBytes: o.wakeupBytes, coalesce: o.coalesce,
      exits: o.exits, rawTracepoints, invalidationStacks: o.invalidationStacks, verbose: o.verbose, probes: catalogue.forMode(mode),
      vmIdKey: o.vmIdKey,
    });
    t.load();
    const probes = t.attach();
    // The mode's own fault probes must be on, or it is not that mode at all.
    const own = mode === 'kprobe' ? 'kp_' : mode === 'fentry' ? 'fe_' : null;
    const ok = probes.some((p) => p.attached && (own ? p.name.startsWith(own) && !p.name.includes('notifier') : /spte_requested|pagetable_walk|page_fault/.test(p.name)));
    if (!ok) {
      throw new TracerError('ATTACH_FAILED', `${mode}: the programs loaded but no fault probe attached (see .probes)`, { probes });
    }
    return { native: t, mode, info, probes, rawTracepoints };
  } catch (e) {
    t.close();
    throw toTracerError(e, 'LOAD_FAILED');
  }
}

/** The tracepoint set: typed tp_btf first; raw_tracepoint if the typed programs do not load. */
function attemptTracepoint(o: Resolved, catalogue: ProbeCatalogue): Attempt {
  try {
    return attempt('tracepoint', o, false, catalogue);
  } catch (e) {
    const err = e as TracerError;
    if (err.code !== 'LOAD_FAILED' && err.code !== 'ATTACH_FAILED') throw err;
    try {
      return attempt('tracepoint', o, true, catalogue);
    } catch (e2) {
      const err2 = e2 as TracerError;
      throw new TracerError(err2.code, `tracepoint: tp_btf failed (${err.message}); raw_tracepoint failed too (${err2.message})`,
        { errno: err2.errno, probes: err2.probes, libbpfLog: err2.libbpfLog });
    }
  }
}

function isPvmHost(): boolean {
  try {
    return fs.readFileSync('/proc/modules', 'utf8').includes('kvm_pvm') || fs.existsSync('/sys/module/kvm_pvm');
  } catch {
    return false;
  }
}

/** What the chosen mode can and cannot see, on this kernel. */
function describeMode(a: Attempt): string[] {
  const notes: string[] = [];
  const attached = (re: RegExp): boolean => a.probes.some((p) => p.attached && re.test(p.point));
  const unit = a.info.rangeIsGfn ? 'guest frame numbers (KF_FLAG_RANGE_GFN)' : 'host virtual addresses';
  if (a.mode === 'tracepoint') {
    notes.push(
      `tracepoint mode (${a.rawTracepoints ? 'raw_tracepoint' : 'tp_btf'}): FAULT at fault entry, MAP when an spte is ` +
      'requested, INVALIDATE_START per mmu_notifier unmap (with the invalidating task\'s comm and kernel stack; its VM only when ' +
      'that task is the VMM: kernel threads\' invalidations have none); no FAULTIN/FAULTIN_RET/FAULT_RET: a fault abandoned as ' +
      'stale (RET_PF_RETRY) shows only as a FAULT with no MAP after it');
    const running = kallsymsHasRunningVcpu();
    notes.push(
      'vCPU, VM, RIP and the VM\'s invalidation state (mmu_seq, in_progress, range) for probes without a vcpu ' +
      'argument come from the thread\'s KVM preempt notifier (registered for the whole KVM_RUN)' +
      (running ? '' : '; kvm_running_vcpu is not in kallsyms (CONFIG_KALLSYMS_ALL off), so it cannot be used') +
      (a.info.typedKvmLoads
        ? '; read with plain loads (KVM is built in and the kernel has bpf_rdonly_cast)'
        : '; read with bpf_probe_read_kernel (KVM is a module or the kernel has no bpf_rdonly_cast, or raw_tp)'));
    if (attached(/kvm_mmu_pagetable_walk/)) {
      notes.push(
        'FAULT records from kvmmmu:kvm_mmu_pagetable_walk (shadow paging) carry the address KVM walked, a guest-VIRTUAL ' +
        'address, in gpa (equal to the gpa only for identity-mapped guest memory); MAP records carry the real gpa (gfn*4096)');
    }
    if (isPvmHost()) {
      notes.push('PVM host: kvm:kvm_page_fault and kvm:kvm_exit never fire (PVM\'s exit handler skips them); FAULT comes from ' +
        'kvm_mmu_pagetable_walk; walks the instruction emulator makes (kvm:kvm_emulate_insn follows them) are dropped, not ' +
        'reported as faults, so a FAULT is emitted when the next walk, an spte request or the exit to userspace follows it');
    }
  } else {
    notes.push(`${a.mode} mode: FAULT/FAULT_RET (ret = RET_PF_*, decode with tracer.retPf) on the fault handlers, ` +
      'FAULTIN/FAULTIN_RET on the fault-in function, MAP from a tracepoint, INVALIDATE_START ' +
      (attached(/kvm_mmu_notifier_invalidate_range_start/)
        ? 'from kvm_mmu_notifier_invalidate_range_start: the VM of every invalidation (kernel threads\' too) and its mmu_notifier_range event'
        : 'from the kvm_unmap_hva_range tracepoint (the notifier cannot be probed here): kernel threads\' invalidations have no VM'));
    if (attached(/kvm_mmu_page_fault/)) {
      notes.push('only kvm_mmu_page_fault could be probed: before 6.14 it folds RETRY/FIXED/SPURIOUS into 1, so FAULT_RET ' +
        'ret is coarse; use FAULTIN_RET and MAP');
    }
  }
  notes.push(`invalidation range fields are ${unit} on this kernel; INVALIDATE_START ranges are always host virtual addresses ` +
    '(kvm:kvm_unmap_hva_range); there is no tracepoint for the end of an invalidation (no INVALIDATE_END)');
  if (!('RET_PF_RETRY' in a.info.retPf)) notes.push('RET_PF_* not found in the kernel BTF: ret values cannot be decoded by name');
  return notes;
}

export class Tracer {
  /** the attach mode in use */
  readonly mode: TracerMode;
  /** every probe of every attempted mode: attached or not, and why */
  readonly probes: ProbeStatus[];
  /** RET_PF_* of the running kernel (from its BTF), e.g. { RET_PF_RETRY: 1, RET_PF_FIXED: 5, ... } */
  readonly retPf: Readonly<Record<string, number>>;
  /** kvm->mmu_invalidate_range_* unit on this kernel */
  readonly rangeIsGfn: boolean;
  /** what the mode can and cannot see, and why other modes were not used */
  readonly modeNotes: string[];

  private nativeTracer: NativeTracer | null;
  private stream: EventStream | null = null;
  private lastStreamStats: StreamStats | null = null;
  /** the kernel-side counters as of close() (the BPF object is gone after it) */
  private finalStats: Omit<TracerStats, 'stream'> | null = null;
  private readonly signal?: AbortSignal;
  private readonly onAbort = (): void => this.close();
  private readonly vmIdKey: bigint | undefined;
  private memslotReader: MemslotReader | null = null;
  private memslotCache: MemslotCache | null = null;

  /** @internal use openTracer() */
  constructor(a: Attempt, failed: { mode: TracerMode; error: TracerError }[], signal?: AbortSignal, vmIdKey?: bigint) {
    this.nativeTracer = a.native;
    this.vmIdKey = vmIdKey;
    this.mode = a.mode;
    this.retPf = Object.freeze({ ...a.info.retPf });
    this.rangeIsGfn = a.info.rangeIsGfn;
    this.probes = [...a.probes];
    this.modeNotes = [];
    for (const f of failed) {
      this.modeNotes.push(`${f.mode} not used: ${f.error.message.split('\n')[0]}`);
      for (const p of f.error.probes) {
        this.probes.push({ name: p.name, point: p.point, attached: false, reason: p.reason ?? `mode ${f.mode} failed` });
      }
    }
    this.modeNotes.push(...describeMode(a));
    this.signal = signal;
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  get closed(): boolean {
    return this.nativeTracer === null;
  }

  /**
   * The records, as batches (views valid until the next iteration). One iteration at a time.
   * Leaving the loop (break, return, throw) or aborting `signal` closes the tracer: every probe
   * is detached.
   */
  events(options: { signal?: AbortSignal; mode?: 'zero-copy' | 'copy' } = {}): AsyncIterable<EventBatch> {
    if (typeof options !== 'object' || options === null) throw new TypeError('Tracer.events: options must be an object');
    if (options.signal !== undefined && !isAbortSignal(options.signal)) {
      throw new TypeError('Tracer.events: options.signal must be an AbortSignal');
    }
    if (options.mode !== undefined && options.mode !== 'zero-copy' && options.mode !== 'copy') {
      throw new RangeError(`Tracer.events: options.mode must be 'zero-copy' or 'copy', got '${String(options.mode)}'`);
    }
    if (!this.nativeTracer) throw new TracerError('CLOSED', 'Tracer.events: the tracer is closed; open a new one with openTracer()');
    if (this.stream) throw new TracerError('BUSY', 'Tracer.events: already being iterated; only one loop may read the tracer');
    this.stream = new EventStream(this.nativeTracer.ringFd(), {
      signal: options.signal,
      mode: options.mode,
      onClose: () => this.close(),
    });
    return this.stream;
  }

  /** Kernel and reader counters. After close(): the values at close. */
  stats(): TracerStats {
    const s = this.nativeTracer
      ? this.nativeTracer.stats()
      : this.finalStats ?? { submitted: 0, dropped: 0, bpfStatsEnabled: false, programs: [] };
    return { ...s, stream: this.stream ? { ...this.stream.stats } : this.lastStreamStats };
  }

  /**
   * The kernel stack an INVALIDATE_START record's stack_id names, symbolised ("function+0xoff",
   * innermost first), or null (closed tracer, id not in the map). Once per distinct id: the
   * caller caches (lib/sources.ts InvalidationSources does).
   */
  stack(id: number, symbols: KernelSymbols = defaultSymbols()): string[] | null {
    if (!this.nativeTracer || !(id >= 0)) return null;
    const ips = this.nativeTracer.stack(id);
    return ips ? Array.from(ips, (ip) => symbols.resolve(ip)) : null;
  }

  /**
   * Every VM's memslots, with VM ids equal to this tracer's records' vm_id (the memslot iterator
   * is loaded with the tracer's key): what lib/sources.ts matches invalidations against. Opened
   * on first use; current() reads once, refreshOnMiss() again at most once a second, refresh()
   * at once (a caller's timer). Without the iterator (no BTF for it, no permission) the cache's
   * current() is null and .error says why.
   */
  memslots(): MemslotCache {
    if (!this.memslotCache) {
      let openFailed: string | null = null;  // loading the object again each second would not help
      this.memslotCache = new MemslotCache(() => {
        if (!this.nativeTracer) return null;
        if (openFailed) throw new Error(openFailed);
        if (!this.memslotReader) {
          try {
            this.memslotReader = openMemslotReader(this.vmIdKey);
          } catch (e) {
            throw new Error((openFailed = `the memslot iterator cannot load: ${(e as Error).message}`));
          }
        }
        if (this.memslotReader.unavailable) throw new Error((openFailed = this.memslotReader.unavailable));
        return this.memslotReader.read();
      });
    }
    return this.memslotCache;
  }

  /** Detaches every probe and frees the BPF object. Idempotent; safe from signal handlers. */
  close(): void {
    this.memslotReader?.close();
    this.memslotReader = null;
    const t = this.nativeTracer;
    if (!t) return;
    this.nativeTracer = null;  // first: the stream's onClose calls back into close()
    try {
      this.finalStats = t.stats();
    } catch {
      /* stats are best effort at close */
    }
    const stream = this.stream;
    if (stream) {
      this.lastStreamStats = { ...stream.stats };
      this.stream = null;
      stream.close();
    }
    t.close();
    this.signal?.removeEventListener('abort', this.onAbort);
  }
}

/**
 * Opens, loads and attaches the KVM fault probes. Throws TypeError/RangeError for bad options,
 * TracerError (with .code, and .probes saying why each probe did not attach) when it cannot trace.
 */
export async function openTracer(options: TracerOptions = {}): Promise<Tracer> {
  const o = resolveTracerOptions(options);
  if (o.signal?.aborted) throw new TracerError('ABORTED', 'openTracer: options.signal was already aborted');
  const order: readonly TracerMode[] = o.mode === 'auto' ? AUTO_ORDER : [o.mode];
  const failed: { mode: TracerMode; error: TracerError }[] = [];
  const catalogue = new ProbeCatalogue();
  for (const mode of order) {
    try {
      const a = mode === 'tracepoint' ? attemptTracepoint(o, catalogue) : attempt(mode, o, false, catalogue);
      return new Tracer(a, failed, o.signal, o.vmIdKey);
    } catch (e) {
      const err = toTracerError(e, 'LOAD_FAILED');
      if (o.mode !== 'auto' || FATAL_FOR_ALL_MODES.has(err.code)) throw err;
      failed.push({ mode, error: err });
    }
  }
  throw new TracerError('MODE_UNAVAILABLE',
    'no attach mode works on this kernel: ' + failed.map((f) => `${f.mode}: ${f.error.message.split('\n')[0]}`).join('; '),
    { probes: failed.flatMap((f) => f.error.probes) });
}
