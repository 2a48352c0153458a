/**
 * prove: an active test of this host's KVM for the 2023 sequence sign-extension bug
 * (is_page_fault_stale() with an `int mmu_seq`: once a VM's mmu_invalidate_seq reaches
 * 0x80000000, every fault of that VM is retried forever). No version table is consulted: the
 * answer comes from what a throwaway VM does.
 *
 *     const r = await prove({ onProgress: (p) => console.error(p.phase, p.burst.done) });
 *     r.verdict   // 'affected' | 'not-affected' | 'inconclusive' (r.reason says why)
 *
 * How: the tracer (own pid) and the stale-fault detector watch the built-in guest (one VM, one
 * vCPU, runWorkload in a libuv worker thread of this process).
 *   1. run 1 touches every page of a small region (the VM's sequence stays where it started);
 *   2. a burst of single-page madvise(MADV_DONTNEED) calls (one invalidation, one sequence
 *      increment each) drives the sequence past 0x80000000. Where the kernel has the test
 *      knob /sys/module/kvm/parameters/initial_invalidate_seq, the VM is created with its
 *      sequence just below 0x80000000 (the knob is restored as soon as the VM exists) and the
 *      burst is small; otherwise the burst is 2^31 + margin calls (~10-25 min on real hardware);
 *   3. run 2 re-faults every page under the tracer.
 * Verdicts: 'affected' = the vCPU is stuck with the bug's signature (detector: stuck, cause
 * seq-sign-extension); the workload is then cancelled (which kicks KVM_RUN). 'not-affected' = run
 * 2's pages were mapped with sequence values >= 0x80000000 in the records and KVM's pf_fixed rose
 * by the page count. Anything else is 'inconclusive', with the exact reason.
 */
import { existsSync, readFileSync, writeFileSync } from 'fs';
import { release as osRelease } from 'os';
import { StaleFaultDetector, type Verdict } from './detector';
import { hexNum } from './hex';
import { hostKernel, retPfTable, SIGN_BIT_SEQ } from './kernels';
import { Kind, UNKNOWN, type EventBatch } from './record';
import { openTracer, TracerError, type Tracer, type TracerMode } from './tracer';
import { runWorkload, WorkloadError, type WorkloadResult, type WorkloadRun } from './workload';

export type ProveVerdict = 'affected' | 'not-affected' | 'inconclusive';
export type ProvePhase = 'setup' | 'run1' | 'burst' | 'run2' | 'verdict';

/** The test kernels' module parameter: the starting mmu_invalidate_seq of new VMs. */
export const INITIAL_SEQ_KNOB = '/sys/module/kvm/parameters/initial_invalidate_seq';
const TWO53 = 9007199254740992;

export interface ProveOptions {
  /** tracer attach mode (default 'auto') */
  mode?: 'auto' | TracerMode;
  /** use the initial_invalidate_seq knob where the kernel has it (default true) */
  useKnob?: boolean;
  /** the starting sequence set through the knob (default 0x7ffffff0) */
  knobStart?: number;
  /** invalidations past the computed crossing, for safety (default 64) */
  margin?: number;
  /** cap on the burst; a test that cannot reach 0x80000000 within it ends 'inconclusive' */
  maxInvalidations?: number;
  /** pages the guest touches in each run (default 256 = 1 MiB) */
  pages?: number;
  /** a vCPU retrying one gpa without a mapped fault this long is stuck (detector; default 2 s) */
  stuckSeconds?: number;
  /** run 2 with no mapped fault for this long ends the test (default 10 s) */
  noProgressSeconds?: number;
  /** aborting stops at once (workload cancelled, tracer closed, knob restored): 'inconclusive' */
  signal?: AbortSignal;
  /** progress, every `progressMs` (default 1000) and at each phase change */
  onProgress?: (p: ProveProgress) => void;
  progressMs?: number;
}

export interface ProveProgress {
  phase: ProvePhase;
  elapsedS: number;
  burst: { done: number; total: number; ratePerSec: number | null; etaS: number | null };
  /** highest sequence seen in the vCPU's records (hex), null before any */
  seqMax: string | null;
  /** run 2: attempts on the current gpa without progress (detector) and pages mapped past 0x80000000 */
  attempts: number;
  mappedPastSignBit: number;
  /** the detector's state and cause for the vCPU (null before its first fault) */
  vcpuState: string | null;
  cause: string | null;
}

export interface ProveKnob {
  path: string;
  present: boolean;
  used: boolean;
  /** value before the test, and the one set (decimal numbers) */
  previous: number | null;
  set: number | null;
  restored: boolean;
  /** why it was not used, or why restoring failed */
  note: string | null;
}

export interface ProveResult {
  verdict: ProveVerdict;
  /** one sentence: why this verdict */
  reason: string;
  /** 0 not affected, 1 affected, 2 could not test */
  exitCode: 0 | 1 | 2;
  release: string;
  /** what the BTF / version table say: reported, never used for the verdict */
  kernelJudgement: { affected: boolean | null; decidedBy: string | null; reason: string };
  tracer: { mode: TracerMode; submitted: number; dropped: number } | null;
  knob: ProveKnob;
  burst: {
    requested: number;
    /** calls needed to reach 0x80000000 + margin from the expected start */
    needed: number;
    done: number;
    /** true when --max-invalidations made the burst shorter than needed */
    limited: boolean;
    seconds: number | null;
    ratePerSec: number | null;
  };
  seq: {
    /** first and highest sequence values the vCPU's records carried (hex) */
    first: string | null;
    max: string | null;
    crossed: boolean;
    /** sign-extended 64-bit snapshots (0xffffffff8...) seen in the records: the bug itself */
    signExtended: number;
    /** distinct pages mapped with a sequence >= 0x80000000 */
    mappedPastSignBit: number;
  };
  run1: { pfTaken: number; pfFixed: number } | null;
  run2: { pfTaken: number; pfFixed: number; completed: boolean } | null;
  pages: number;
  /** the detector's verdict for the vCPU when it was stuck (evidence: seq, attempts, in-progress) */
  stuck: Verdict | null;
  /** attempts on the stuck gpa */
  attempts: number;
  /** seconds from the start: until a record showed the sequence past 0x80000000, until the verdict */
  timeToCrossS: number | null;
  timeToVerdictS: number;
  /** 'signal' when stopped through options.signal */
  stopped: string | null;
  warnings: string[];
}

function hex(n: number | null): string | null {
  return n === null ? null : '0x' + hexNum(n);
}

function readKnob(): number | null {
  try {
    const n = Number(readFileSync(INITIAL_SEQ_KNOB, 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : null;
  } catch {
    return null;
  }
}

function checkOptions(o: ProveOptions): void {
  const int = (name: string, v: unknown, min: number, max: number) => {
    if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)) {
      throw new RangeError(`options.${name} must be an integer from ${min} to ${max} (got ${String(v)})`);
    }
  };
  const pos = (name: string, v: unknown) => {
    if (v !== undefined && (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v))) {
      throw new RangeError(`options.${name} must be a positive number (got ${String(v)})`);
    }
  };
  int('knobStart', o.knobStart, 0, 0xffffffff);
  int('margin', o.margin, 0, 1e9);
  int('maxInvalidations', o.maxInvalidations, 0, Number.MAX_SAFE_INTEGER);
  int('pages', o.pages, 1, 65536);
  int('progressMs', o.progressMs, 10, 3_600_000);
  pos('stuckSeconds', o.stuckSeconds);
  pos('noProgressSeconds', o.noProgressSeconds);
}

/** Runs the test; never throws for an environment that cannot test (that is 'inconclusive'). */
export async function prove(options: ProveOptions = {}): Promise<ProveResult> {
  checkOptions(options);
  const t0 = Date.now();
  const since = () => (Date.now() - t0) / 1000;
  const pages = options.pages ?? 256;
  const margin = options.margin ?? 64;
  const knobStart = options.knobStart ?? 0x7ffffff0;
  const stuckSeconds = options.stuckSeconds ?? 2;
  const noProgressMs = (options.noProgressSeconds ?? 10) * 1000;
  const kernel = hostKernel();
  const warnings: string[] = [];

  const knob: ProveKnob = { path: INITIAL_SEQ_KNOB, present: existsSync(INITIAL_SEQ_KNOB), used: false, previous: null, set: null, restored: false, note: null };
  const result: ProveResult = {
    verdict: 'inconclusive', reason: '', exitCode: 2, release: osRelease(),
    kernelJudgement: { affected: kernel.affected, decidedBy: kernel.decidedBy, reason: kernel.reason },
    tracer: null, knob,
    burst: { requested: 0, needed: 0, done: 0, limited: false, seconds: null, ratePerSec: null },
    seq: { first: null, max: null, crossed: false, signExtended: 0, mappedPastSignBit: 0 },
    run1: null, run2: null, pages, stuck: null, attempts: 0, timeToCrossS: null, timeToVerdictS: 0,
    stopped: null, warnings,
  };
  const finish = (verdict: ProveVerdict, reason: string): ProveResult => {
    result.verdict = verdict;
    result.reason = reason;
    result.exitCode = verdict === 'not-affected' ? 0 : verdict === 'affected' ? 1 : 2;
    result.timeToVerdictS = since();
    return result;
  };

  if (options.signal?.aborted) {
    result.stopped = 'signal';
    return finish('inconclusive', 'stopped before the test started');
  }
  if (!existsSync('/dev/kvm')) return finish('inconclusive', 'this host has no /dev/kvm: there is no KVM here to test');

  let tracer: Tracer;
  try {
    // no invalidation stacks: the burst is 2^31 invalidations, and a kernel stack walk on each
    // (~2.5 µs) made it 5-8x slower (measured on PVM: 142k/s with, see bench/RESULTS.md)
    tracer = await openTracer({ mode: options.mode ?? 'auto', pid: process.pid, coalesce: true, invalidationStacks: false });
  } catch (e) {
    if (e instanceof TracerError) {
      return finish('inconclusive', `the tracer cannot see the fault path: ${e.code}: ${e.message.split('\n')[0]}`);
    }
    throw e;
  }

  const restoreKnob = (): void => {
    if (!knob.used || knob.restored || knob.previous === null) return;
    try {
      writeFileSync(INITIAL_SEQ_KNOB, String(knob.previous));
      knob.restored = true;
    } catch (e) {
      knob.note = `could not restore ${INITIAL_SEQ_KNOB} to ${knob.previous}: ${(e as Error).message}`;
      warnings.push(knob.note);
    }
  };

  // ---- state shared by the record drain, the workload callbacks and the watchdog --------------
  let phase = 'setup' as ProvePhase;
  let seqFirst: number | null = null;
  let seqMax: number | null = null;
  const mappedPast = new Set<number>();
  let lastMappedAt = 0;
  let decided: { verdict: ProveVerdict; reason: string } | null = null;
  let stuckOther: Verdict | null = null;
  let burstDone = 0;
  let burstStart = 0;
  let burstEnd = 0;
  let burstPolledAt = 0;
  let run1: WorkloadRun | null = null;
  let run2: WorkloadRun | null = null;
  const workloadStop = new AbortController();
  const drainStop = new AbortController();
  const retPf = retPfTable(tracer.retPf, kernel);
  const mappedRet = new Set([retPf.FIXED, retPf.SPURIOUS]);

  const detector = new StaleFaultDetector({ retPf, kernel, stuckNs: stuckSeconds * 1e9, stuckAttempts: 1000 });
  // The tracer sees only this process, which runs only the test VM: every vCPU record is its own.
  // (Not filtered by the vCPU tids from onStart: that event can reach JS after the ring's records.)
  const onStuck = (v: Verdict): void => {
    if (v.state !== 'stuck' || decided) return;
    if (v.cause === 'seq-sign-extension') {
      result.stuck = v;
      decided = {
        verdict: 'affected',
        reason: `the vCPU retried gpa 0x${v.gpa} ${v.attempts} times without a mapping, sequence ` +
          `0x${v.mmuSeqLast ?? v.faultSeqLast} constant past 0x80000000, no invalidation in progress ` +
          `(detector: stuck, cause seq-sign-extension, decided by ${v.decidedBy})`,
      };
      workloadStop.abort();
    } else {
      stuckOther = v;
    }
  };
  detector.onVerdict(onStuck);

  const tally = (b: EventBatch): void => {
    for (let i = 0; i < b.length; i++) {
      const kind = b.kind(i);
      if (kind === Kind.INVALIDATE_START || kind === Kind.INVALIDATE_END) continue; // the madvise thread
      let seq = b.mmuSeq(i);
      const fseq = b.faultSeq(i);
      if (fseq !== UNKNOWN && fseq >= TWO53) result.seq.signExtended += b.repeat(i);
      if (seq === UNKNOWN && fseq !== UNKNOWN && fseq < TWO53) seq = fseq;
      if (seq === UNKNOWN) continue;
      if (seqFirst === null) seqFirst = seq;
      if (seqMax === null || seq > seqMax) seqMax = seq;
      if (seq >= SIGN_BIT_SEQ && result.timeToCrossS === null) result.timeToCrossS = since();
      const mapped = kind === Kind.MAP || (kind === Kind.FAULT_RET && mappedRet.has(b.ret(i)));
      if (mapped && seq >= SIGN_BIT_SEQ && b.gpa(i) !== UNKNOWN) {
        mappedPast.add(Math.floor(b.gpa(i) / 4096));
        lastMappedAt = Date.now();
      }
    }
  };

  const drain = (async () => {
    for await (const batch of tracer.events({ signal: drainStop.signal })) {
      tally(batch);
      detector.push(batch);
    }
  })();

  const progress = (): ProveProgress => {
    const el = burstStart ? ((burstEnd || Date.now()) - burstStart) / 1000 : 0;
    const rate = el > 0 && burstDone > 0 ? burstDone / el : null;
    const total = result.burst.requested;
    const verdictNow = result.stuck ?? detector.snapshot()[0] ?? null;
    return {
      phase, elapsedS: since(),
      burst: { done: burstDone, total, ratePerSec: rate, etaS: rate && burstDone < total ? (total - burstDone) / rate : null },
      seqMax: hex(seqMax), attempts: verdictNow?.attempts ?? 0, mappedPastSignBit: mappedPast.size,
      vcpuState: verdictNow?.state ?? null, cause: verdictNow?.cause ?? null,
    };
  };
  const report = (): void => {
    try {
      options.onProgress?.(progress());
    } catch {
      /* a listener's error must not break the test */
    }
  };
  const setPhase = (p: ProvePhase): void => {
    phase = p;
    report();
  };
  // run 2 starts once run 1 is done and the burst counter reached its total (either may be seen first)
  let run1Done = false;
  const maybeRun2 = (): void => {
    if (run1Done && burstDone >= result.burst.requested && phase === 'burst') {
      burstEnd = Date.now();
      setPhase('run2');
    }
  };
  const onAbort = (): void => {
    result.stopped = 'signal';
    workloadStop.abort();
  };
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.signal?.aborted) onAbort();
  const progressTimer = setInterval(report, options.progressMs ?? 1000);
  // run 2 with no mapped fault for too long: stop; the verdict says whether the signature was seen
  const watchdog = setInterval(() => {
    if (decided || workloadStop.signal.aborted) return;
    for (const v of detector.snapshot()) onStuck(v); // a verdict change is emitted once: look again
    if (phase !== 'run2' || decided) return;
    if (Date.now() - Math.max(lastMappedAt, burstEnd) < noProgressMs) return;
    decided = {
      verdict: 'inconclusive',
      reason: `run 2 mapped no page for ${noProgressMs / 1000} s but the vCPU did not show the bug's signature` +
        (stuckOther ? ` (detector: stuck, cause ${stuckOther.cause}: ${stuckOther.explanation})` : ' (the detector saw no stuck vCPU)'),
    };
    result.stuck = stuckOther;
    workloadStop.abort();
  }, 250);

  let workload: WorkloadResult | null = null;
  let workloadError: Error | null = null;
  try {
    // ---- the knob: new VMs start their sequence here (read once, at VM creation) ------------
    let expectedStart = 0;
    if (knob.present && options.useKnob !== false) {
      knob.previous = readKnob();
      try {
        writeFileSync(INITIAL_SEQ_KNOB, String(knobStart));
        knob.used = true;
        knob.set = knobStart;
        expectedStart = knobStart;
      } catch (e) {
        knob.note = `cannot write ${INITIAL_SEQ_KNOB}: ${(e as Error).message}`;
      }
    } else {
      knob.note = knob.present ? 'not used (useKnob: false)' : 'this kernel has no such parameter';
    }
    const needed = Math.max(0, SIGN_BIT_SEQ - expectedStart) + margin;
    const burst = options.maxInvalidations !== undefined ? Math.min(needed, options.maxInvalidations) : needed;
    Object.assign(result.burst, { requested: burst, needed, limited: burst < needed });

    setPhase('run1');
    workload = await runWorkload({
      pattern: 'sequential',
      sizeBytes: pages * 4096,
      runs: 2,
      invalidate: 'between',
      burst: Math.max(burst, 0),
      signal: workloadStop.signal,
      onStart: () => {
        restoreKnob(); // the VM exists: other VMs of this host must not start near 0x80000000
      },
      onRun: (r) => {
        if (r.index === 0) {
          run1 = r;
          run1Done = true;
          burstStart = Date.now();
          setPhase('burst');
          maybeRun2();
        } else {
          run2 = r;
        }
      },
      onBurstProgress: (done) => {
        burstDone = done;
        burstPolledAt = Date.now();
        maybeRun2();
      },
    });
  } catch (e) {
    const err = e as Error & { partial?: WorkloadResult };
    if (err.name === 'AbortError' || err instanceof WorkloadError) workload = err.partial ?? null;
    if (err.name !== 'AbortError') workloadError = err;
  } finally {
    clearInterval(watchdog);
    clearInterval(progressTimer);
    options.signal?.removeEventListener('abort', onAbort);
    restoreKnob();
    // the ring's tail reaches us within ~10 ms; wait until the reader has what was submitted
    const deadline = Date.now() + 2000;
    await new Promise((r) => setTimeout(r, 100));
    while (Date.now() < deadline) {
      const s = tracer.stats();
      if (!s.stream || s.stream.records >= s.submitted - s.dropped) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    drainStop.abort();
    tracer.close();
    await drain.catch((e: Error) => warnings.push(`reading the trace: ${e.message}`));
    const s = tracer.stats();
    result.tracer = { mode: tracer.mode, submitted: s.submitted, dropped: s.dropped };
    if (s.dropped > 0) warnings.push(`${s.dropped} records lost (ring full)`);
  }

  // ---- evidence ------------------------------------------------------------------------------
  const r1 = run1 ?? workload?.runs[0] ?? null;
  const r2 = run2 ?? workload?.runs[1] ?? null;
  if (r1) result.run1 = { pfTaken: r1.vcpu.pf_taken ?? 0, pfFixed: r1.vcpu.pf_fixed ?? 0 };
  if (r2) result.run2 = { pfTaken: r2.vcpu.pf_taken ?? 0, pfFixed: r2.vcpu.pf_fixed ?? 0, completed: true };
  else if (phase === 'run2') result.run2 = { pfTaken: 0, pfFixed: 0, completed: false };
  result.burst.done = r2 ? r2.burst : burstDone;
  // an interrupted burst: its rate up to the last progress read
  const burstStop = burstEnd || burstPolledAt;
  if (burstStart && burstStop > burstStart) {
    result.burst.seconds = (burstStop - burstStart) / 1000;
    result.burst.ratePerSec = result.burst.done / result.burst.seconds;
  }
  result.seq.first = hex(seqFirst);
  result.seq.max = hex(seqMax);
  result.seq.crossed = seqMax !== null && seqMax >= SIGN_BIT_SEQ;
  result.seq.mappedPastSignBit = mappedPast.size;
  const stuckNow = detector.snapshot().find((v) => v.state === 'stuck');
  if (!result.stuck && stuckNow) result.stuck = stuckNow;
  result.attempts = result.stuck?.attempts ?? 0;
  const lastPhase = phase;
  setPhase('verdict');

  const d = decided as { verdict: ProveVerdict; reason: string } | null;
  if (d?.verdict === 'affected') return finish('affected', d.reason);
  if (result.stopped) return finish('inconclusive', `stopped during ${lastPhase === 'setup' ? 'the setup' : lastPhase === 'burst' ? 'the burst' : lastPhase} before a verdict`);
  if (d) return finish(d.verdict, d.reason);
  if (workloadError) {
    return finish('inconclusive', `the test VM failed: ${workloadError.message}` +
      ((workloadError as WorkloadError).code ? ` (${(workloadError as WorkloadError).code})` : ''));
  }
  if (!r2) return finish('inconclusive', 'run 2 did not complete');
  if (seqMax === null) {
    return finish('inconclusive', `the tracer (${tracer.mode} mode) showed no sequence values for the vCPU: ` +
      `cannot tell whether run 2 ran past 0x80000000 (KVM counted pf_fixed ${result.run2?.pfFixed} in run 2)`);
  }
  if (!result.seq.crossed) {
    return finish('inconclusive', `the sequence was never seen past 0x80000000 (highest ${hex(seqMax)} after a burst of ` +
      `${result.burst.done} invalidations${result.burst.limited ? `, limited by maxInvalidations: ${result.burst.needed} needed` : ''})`);
  }
  const fixed = result.run2?.pfFixed ?? 0;
  if (mappedPast.size === 0 || fixed < pages) {
    return finish('inconclusive', `the sequence reached ${hex(seqMax)} but run 2 showed ${mappedPast.size} page(s) mapped past ` +
      `0x80000000 and KVM counted pf_fixed ${fixed} for ${pages} pages`);
  }
  return finish('not-affected', `run 2 mapped ${mappedPast.size} of ${pages} pages with the sequence at ` +
    `${hex(seqMax)} (past 0x80000000); KVM counted pf_fixed ${fixed} in run 2`);
}
