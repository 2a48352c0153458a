/**
 * What counters mode costs: the built-in workload (its own process, several VMs and vCPUs, every
 * page refaulted each run) at its maximum fault rate with nothing watching it, with KVM's counters
 * sampled by the BPF iterator every second and every 100 ms (lib/counters.ts, what
 * `kvmfault metrics` does every --interval), and with the full tracer (tracepoint mode, every
 * fault a record) as the reference in the same run. Fault rates are KVM's own pf_taken over
 * guest time; modes are interleaved repeat by repeat. Also: the time one sample takes, per vCPU.
 *
 *   node dist/bench/counters.js [--quick] [--repeats N] [--no-record] [--json]
 */
import { CounterWatch, openBpfCounterSource } from '../lib/counters';
import type { WorkloadOptions } from '../lib/workload';
import { appendResults, benchEnv, fmtSpread, parseFlags, requireRoot, runMain, Spread, spread } from './common';
import { spawnWorkload, traceWorkloadChild } from './kvm';

type Mode = 'off' | 'counters 1 s' | 'counters 100 ms' | 'tracer';

interface Run {
  mode: Mode;
  faultsPerSec: number;
  samples: number;
  /** ms per sample, this run */
  sampleMs: number[];
  vcpusSeen: number;
  /** this process's CPU over the workload's wall time, % */
  cpuPct: number;
}

export interface CountersBenchOptions {
  repeats?: number;
  workload?: Omit<WorkloadOptions, 'signal' | 'onStart' | 'onRun'>;
  log?: (line: string) => void;
}

const DEFAULT_WORKLOAD = { pattern: 'sequential', sizeMiB: 16, runs: 8, invalidate: 'between', vms: 2, vcpus: 2 } as const;

async function once(mode: Mode, workload: NonNullable<CountersBenchOptions['workload']>): Promise<Run> {
  const guestRate = (r: { total: { faults: number }; runs: { durationMs: number }[] }): number =>
    r.total.faults / (r.runs.reduce((a, x) => a + x.durationMs, 0) / 1e3);
  if (mode === 'tracer') {
    const t = await traceWorkloadChild(workload);
    return { mode, faultsPerSec: guestRate(t.result), samples: 0, sampleMs: [], vcpusSeen: 0, cpuPct: (100 * (t.cpu.user + t.cpu.system)) / 1e6 / t.wallS };
  }
  const child = spawnWorkload(workload);
  const sampleMs: number[] = [];
  let vcpusSeen = 0;
  let timer: NodeJS.Timeout | null = null;
  const source = mode === 'off' ? null : openBpfCounterSource();
  const watch = new CounterWatch();
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  try {
    const sample = (): void => {
      const s0 = process.hrtime.bigint();
      const samples = source!.sample().filter((s) => s.pid === child.pid);
      sampleMs.push(Number(process.hrtime.bigint() - s0) / 1e6);
      vcpusSeen = Math.max(vcpusSeen, samples.length);
      watch.update(samples);
    };
    child.go();
    if (source) {
      // until every vCPU of the child exists, look every 10 ms: a run shorter than the interval is
      // sampled too; then every interval
      const intervalMs = mode === 'counters 1 s' ? 1000 : 100;
      const expected = (workload.vms ?? 1) * (workload.vcpus ?? 1);
      const discover = (): void => {
        sample();
        const all = vcpusSeen >= expected;
        timer = setTimeout(all ? () => { timer = setInterval(sample, intervalMs); } : discover, all ? intervalMs : 10);
      };
      discover();
    }
    const r = await child.done;
    const cpu = process.cpuUsage(cpu0);
    return { mode, faultsPerSec: guestRate(r), samples: sampleMs.length, sampleMs, vcpusSeen, cpuPct: (100 * (cpu.user + cpu.system)) / 1e3 / (Date.now() - t0) };
  } finally {
    if (timer) clearInterval(timer); // clears a pending setTimeout as well
    source?.close();
  }
}

export async function runCountersBench(options: CountersBenchOptions = {}): Promise<{ markdown: string; runs: Run[] }> {
  requireRoot('the counters benchmark');
  const repeats = options.repeats ?? 3;
  const workload = options.workload ?? DEFAULT_WORKLOAD;
  const log = options.log ?? (() => {});
  const modes: Mode[] = ['off', 'counters 1 s', 'counters 100 ms', 'tracer'];
  const runs: Run[] = [];
  for (let i = 0; i < repeats; i++) {
    for (const mode of modes) {
      const run = await once(mode, workload);
      runs.push(run);
      log(`  counters #${i + 1} ${mode.padEnd(16)} ${(run.faultsPerSec / 1e3).toFixed(1)}k faults/s` +
        (run.samples ? `, ${run.samples} samples, median ${median(run.sampleMs).toFixed(2)} ms, ${run.vcpusSeen} vCPUs seen` : '') + `, cpu ${run.cpuPct.toFixed(1)}%`);
    }
  }
  const off = spread(runs.filter((r) => r.mode === 'off').map((r) => r.faultsPerSec));
  const rows: string[] = [];
  const summary: { mode: Mode; fps: Spread; overhead: number }[] = [];
  for (const mode of modes) {
    const mine = runs.filter((r) => r.mode === mode);
    const fps = spread(mine.map((r) => r.faultsPerSec));
    const overhead = mode === 'off' ? 0 : 100 * (1 - fps.median / off.median);
    summary.push({ mode, fps, overhead });
    const ms = mine.flatMap((r) => r.sampleMs);
    const vcpus = Math.max(0, ...mine.map((r) => r.vcpusSeen));
    rows.push(`| ${mode} | ${fmtSpread(fps, '/s', 1e3, 'k')} | ${mode === 'off' ? '—' : `${overhead.toFixed(1)}%`} | ` +
      `${ms.length ? `${median(ms).toFixed(2)} ms (max ${Math.max(...ms).toFixed(2)}), ${(median(ms) / Math.max(1, vcpus)).toFixed(2)} ms per vCPU (${vcpus})` : '—'} | ` +
      `${mode === 'off' ? '—' : `${median(mine.map((r) => r.cpuPct)).toFixed(1)}%`} |`);
  }
  const c1 = summary.find((s) => s.mode === 'counters 1 s')!, tr = summary.find((s) => s.mode === 'tracer')!;
  const markdown = [
    `### Counters mode cost (workload ${JSON.stringify(workload)}; ${repeats} repeats, interleaved)`,
    '',
    '| watching | KVM faults/s (median, range, CV, n) | fault-rate overhead | one sample | watcher CPU |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    `Counters every second cost ${c1.overhead.toFixed(1)}% of the fault rate against ${tr.overhead.toFixed(1)}% for the tracer in the same run ` +
      `(goal: within noise of off, far below the tracer). Medians of interleaved runs; a negative figure is noise.`,
  ].join('\n');
  return { markdown, runs };
}

function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

if (require.main === module) {
  runMain(async () => {
    const flags = parseFlags();
    const env = benchEnv();
    const opts: CountersBenchOptions = flags.quick
      ? { repeats: 1, workload: { pattern: 'sequential', sizeMiB: 4, runs: 3, invalidate: 'between', vms: 2, vcpus: 2 } }
      : {};
    if (flags.repeats) opts.repeats = flags.repeats;
    opts.log = flags.json ? () => {} : (l) => console.log(l);
    const r = await runCountersBench(opts);
    if (flags.json) console.log(JSON.stringify(r));
    else console.log('\n' + r.markdown);
    if (flags.record) appendResults('Counters mode', env, r.markdown);
  });
}
