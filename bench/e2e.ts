/**
 * End to end on real KVM faults: the built-in workload (its own process, sequential pattern,
 * every page refaulted each run by an invalidation between runs) at its max fault rate, with
 * tracing off, on (tracer → EventStream, records counted) and on with the detector (tracer →
 * EventStream → StaleFaultDetector). Fault rates are KVM's own pf_taken over guest time.
 * Modes are interleaved repeat by repeat so machine noise hits each alike.
 *
 *   node dist/bench/e2e.js [--quick] [--repeats N] [--no-record] [--json]
 */
import { StaleFaultDetector } from '../lib/detector';
import type { WorkloadOptions } from '../lib/workload';
import { appendResults, benchEnv, BenchError, fmtSpread, parseFlags, requireRoot, runMain, Spread, spread } from './common';
import { spawnWorkload, traceWorkloadChild } from './kvm';

export type E2eMode = 'off' | 'trace' | 'trace+detector';

export interface E2eRun {
  mode: E2eMode;
  /** KVM pf_taken delta, all runs */
  faults: number;
  /** faults per second of guest time (KVM's count / the runs' durations) */
  faultsPerSec: number;
  records: number;
  /** records / guest time of the workload */
  recordsPerSec: number;
  dropped: number;
  /** records per KVM fault (tracepoint mode: one per probe that fires per fault) */
  recordsPerFault: number;
  /** tracer process CPU / workload wall time, % */
  consumerCpuPct: number;
  verdicts: string;
}

export interface E2eOptions {
  repeats?: number;
  workload?: Omit<WorkloadOptions, 'signal' | 'onStart' | 'onRun'>;
  modes?: E2eMode[];
  log?: (line: string) => void;
}

export interface E2eResult {
  workload: Omit<WorkloadOptions, 'signal' | 'onStart' | 'onRun'>;
  host: string;
  runs: E2eRun[];
  summary: { mode: E2eMode; faultsPerSec: Spread; recordsPerSec: Spread; dropped: number; overheadPct: number; cpuPct: Spread }[];
  markdown: string;
}

const DEFAULT_WORKLOAD = { pattern: 'sequential', sizeMiB: 64, runs: 6, invalidate: 'between' } as const;

async function once(mode: E2eMode, workload: E2eOptions['workload'] & object): Promise<E2eRun & { host: string }> {
  if (mode === 'off') {
    const child = spawnWorkload(workload);
    child.go();
    const r = await child.done;
    const guestS = r.runs.reduce((a, x) => a + x.durationMs, 0) / 1e3;
    return {
      mode, faults: r.total.faults, faultsPerSec: r.total.faults / guestS, records: 0, recordsPerSec: 0, dropped: 0,
      recordsPerFault: 0, consumerCpuPct: 0, verdicts: '', host: r.host,
    };
  }
  const detector = mode === 'trace+detector' ? new StaleFaultDetector() : null;
  const t = await traceWorkloadChild(workload, detector ? (b) => detector.push(b) : undefined);
  const { result: r, records, cpu, wallS } = t;
  const guestS = r.runs.reduce((a, x) => a + x.durationMs, 0) / 1e3;
  let verdicts = '';
  if (detector) {
    const states = new Map<string, number>();
    for (const v of detector.snapshot()) states.set(v.state, (states.get(v.state) ?? 0) + 1);
    verdicts = [...states].map(([s, n]) => `${n} ${s}`).join(', ') || 'no vCPU seen';
  }
  return {
    mode,
    faults: r.total.faults,
    faultsPerSec: r.total.faults / guestS,
    records,
    recordsPerSec: records / guestS,
    dropped: t.statsAfter.dropped,
    recordsPerFault: records / r.total.faults,
    consumerCpuPct: (100 * (cpu.user + cpu.system)) / 1e6 / wallS,
    verdicts,
    host: r.host,
  };
}

export async function runE2eBench(options: E2eOptions = {}): Promise<E2eResult> {
  requireRoot('the end-to-end benchmark');
  const repeats = options.repeats ?? 3;
  const workload = options.workload ?? DEFAULT_WORKLOAD;
  const modes = options.modes ?? ['off', 'trace', 'trace+detector'];
  const log = options.log ?? (() => {});
  const runs: E2eRun[] = [];
  let host = 'unknown';
  for (let r = 0; r < repeats; r++) {
    for (const mode of modes) {
      const run = await once(mode, workload);
      host = run.host;
      runs.push(run);
      log(
        `  e2e #${r + 1} ${mode.padEnd(15)} ${(run.faultsPerSec / 1e3).toFixed(1)}k faults/s` +
          (mode === 'off' ? '' : `, ${(run.recordsPerSec / 1e3).toFixed(1)}k records/s, ${run.recordsPerFault.toFixed(2)} records/fault, ` +
            `dropped ${run.dropped}, tracer cpu ${run.consumerCpuPct.toFixed(1)}%${run.verdicts ? `, verdicts: ${run.verdicts}` : ''}`),
      );
    }
  }
  const off = spread(runs.filter((x) => x.mode === 'off').map((x) => x.faultsPerSec));
  const summary = modes.map((mode) => {
    const mine = runs.filter((x) => x.mode === mode);
    const fps = spread(mine.map((x) => x.faultsPerSec));
    return {
      mode,
      faultsPerSec: fps,
      recordsPerSec: spread(mine.map((x) => x.recordsPerSec)),
      dropped: mine.reduce((a, x) => a + x.dropped, 0),
      overheadPct: mode === 'off' || off.n === 0 ? 0 : 100 * (1 - fps.median / off.median),
      cpuPct: spread(mine.map((x) => x.consumerCpuPct)),
    };
  });
  const result: E2eResult = { workload, host, runs, summary, markdown: '' };
  const rows = summary.map((s) =>
    `| ${s.mode} | ${fmtSpread(s.faultsPerSec, '/s', 1e3, 'k')} | ${s.mode === 'off' ? '—' : `${s.overheadPct.toFixed(1)}%`} | ` +
      `${s.mode === 'off' ? '—' : fmtSpread(s.recordsPerSec, '/s', 1e3, 'k')} | ${s.mode === 'off' ? '—' : s.dropped} | ` +
      `${s.mode === 'off' ? '—' : `${s.cpuPct.median.toFixed(1)}%`} |`);
  const verdicts = runs.find((x) => x.verdicts)?.verdicts;
  result.markdown = [
    `### End to end on real KVM faults (${host} host, tracepoint mode; workload ${JSON.stringify(workload)}; ${repeats} repeats, interleaved)`,
    '',
    '| tracing | KVM faults/s (median, range, CV, n) | fault-rate overhead | records/s | dropped | tracer CPU |',
    '|---|---|---|---|---|---|',
    ...rows,
    '',
    `Records per fault: ${(runs.find((x) => x.mode !== 'off')?.recordsPerFault ?? NaN).toFixed(2)}` +
      (verdicts ? `; detector verdicts on the workload: ${verdicts}` : ''),
  ].join('\n');
  return result;
}

if (require.main === module) {
  runMain(async () => {
    const flags = parseFlags();
    const env = benchEnv();
    const opts: E2eOptions = flags.quick
      ? { repeats: 1, workload: { pattern: 'sequential', sizeMiB: 8, runs: 2, invalidate: 'between' } }
      : {};
    if (flags.repeats) opts.repeats = flags.repeats;
    opts.log = flags.json ? () => {} : (l) => console.log(l);
    const r = await runE2eBench(opts);
    if (flags.json) console.log(JSON.stringify(r));
    else console.log('\n' + r.markdown);
    if (flags.record) appendResults('End to end', env, r.markdown);
  });
}

export { BenchError };
