/**
 * BPF cost per probe hit, per program, from kernel.bpf_stats_enabled (turned on for the run,
 * restored after, also on Ctrl-C): run_time_ns / run_cnt.
 *   - the KVM tracer's programs (tracepoint mode) while the built-in workload faults,
 *     from the tracer's own stats (bpf_prog_get_info)
 *   - the ringtest producer (raw tracepoint sys_enter, one 120-byte record per getppid) and
 *     bpftrace's program printing the same fields, while loadgen runs, from bpftool
 * The stats themselves add two clock reads per run: every figure includes that, alike.
 *
 *   node dist/bench/probe-cost.js [--quick] [--repeats N] [--no-record] [--json]
 */
import { spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EventStream } from '../lib/stream';
import {
  appendResults, benchEnv, BenchError, bpfProgStats, enableBpfStats, hasCommand, parseFlags, progDeltas,
  requireRoot, runMain, sleep, spawnLoadgen, spread, Spread,
} from './common';
import { traceWorkloadChild } from './kvm';
import { bpftraceScript, openProducer } from './ring';

export interface ProgramCost {
  source: string;
  program: string;
  runCount: number;
  nsPerRun: Spread;
}

export interface ProbeCostOptions {
  repeats?: number;
  loadgenCalls?: number;
  workload?: Record<string, unknown>;
  bpftrace?: boolean;
  log?: (line: string) => void;
}

export interface ProbeCostResult {
  programs: ProgramCost[];
  markdown: string;
}

const TARGET_NS = 150;

async function kvmTracerCost(workload: Record<string, unknown>): Promise<{ name: string; runCount: number; runTimeNs: number }[]> {
  const t = await traceWorkloadChild(workload);
  if (!t.statsAfter.bpfStatsEnabled) throw new BenchError('kernel.bpf_stats_enabled is off: the tracer saw no run times');
  return t.statsAfter.programs.map((p) => {
    const b = t.statsBefore.programs.find((x) => x.name === p.name);
    return { name: p.name, runCount: p.runCount - (b?.runCount ?? 0), runTimeNs: p.runTimeNs - (b?.runTimeNs ?? 0) };
  }).filter((p) => p.runCount > 0);
}

async function ringtestCost(calls: number): Promise<{ name: string; runCount: number; runTimeNs: number }[]> {
  const producer = openProducer(32 << 20, 1 << 20);
  const abort = new AbortController();
  const stream = new EventStream(producer.ringFd(), { signal: abort.signal });
  const loadgen = spawnLoadgen(calls, 0);
  producer.setTarget(loadgen.pid);
  let records = 0, submitted = Infinity;
  loadgen.done.then(() => {
    submitted = producer.stats().submitted;
    if (records >= submitted) abort.abort();
  }, () => abort.abort());
  const before = bpfProgStats();
  loadgen.go();
  try {
    for await (const batch of stream) {
      records += batch.length;
      if (records >= submitted) break;
    }
    await loadgen.done;
    // on_getppid runs on every syscall of the machine (sys_enter) and keeps only getppid of
    // the target: its figure averages both paths, as a per-hit cost should
    return progDeltas(before, bpfProgStats()).filter((p) => p.name === 'on_getppid')
      .map((p) => ({ name: p.name, runCount: p.runCount, runTimeNs: p.runTimeNs }));
  } finally {
    stream.close();
    producer.close();
    if (loadgen.child.exitCode === null) loadgen.child.kill('SIGKILL');
  }
}

async function bpftraceCost(calls: number): Promise<{ name: string; runCount: number; runTimeNs: number }[]> {
  const script = path.join(os.tmpdir(), `kvmfault-probecost-${process.pid}.bt`);
  writeFileSync(script, bpftraceScript());
  const loadgen = spawnLoadgen(calls, 0);
  const before = bpfProgStats();
  const bt = spawn('bpftrace', ['-o', '/dev/null', script, String(loadgen.pid)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  bt.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<void>((r) => bt.on('exit', () => r()));
  try {
    // attached once a program that was not there before shows up and the probe is live
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (bt.exitCode !== null) throw new BenchError(`bpftrace exited with ${bt.exitCode}: ${err.trim()}`);
      if (Date.now() > deadline) throw new BenchError('bpftrace did not load its program within 30 s');
      const now = bpfProgStats();
      if ([...now.keys()].some((id) => !before.has(id))) break;
      await sleep(100);
    }
    await sleep(500); // loaded is not yet attached: give it time to attach
    const mid = bpfProgStats();
    const fresh = new Set([...mid.keys()].filter((id) => !before.has(id)));
    loadgen.go();
    await loadgen.done;
    const after = bpfProgStats();
    return progDeltas(mid, after).filter((p) => fresh.has(p.id))
      .map((p) => ({ name: `bpftrace ${p.name}`, runCount: p.runCount, runTimeNs: p.runTimeNs }));
  } finally {
    bt.kill('SIGINT');
    await Promise.race([exited, sleep(5000)]);
    if (bt.exitCode === null) bt.kill('SIGKILL');
    if (loadgen.child.exitCode === null) loadgen.child.kill('SIGKILL');
    rmSync(script, { force: true });
  }
}

export async function runProbeCostBench(options: ProbeCostOptions = {}): Promise<ProbeCostResult> {
  requireRoot('the probe-cost benchmark');
  const repeats = options.repeats ?? 3;
  const calls = options.loadgenCalls ?? 2_000_000;
  const workload = options.workload ?? { pattern: 'sequential', sizeMiB: 64, runs: 4, invalidate: 'between' };
  const withBpftrace = options.bpftrace ?? true;
  if (withBpftrace && !hasCommand('bpftrace')) {
    throw new BenchError('bpftrace is not installed (apt-get install bpftrace): it is a reference of this benchmark');
  }
  const log = options.log ?? (() => {});
  const samples = new Map<string, { source: string; program: string; ns: number[]; runs: number }>();
  const add = (source: string, list: { name: string; runCount: number; runTimeNs: number }[]): void => {
    for (const p of list) {
      const key = `${source}/${p.name}`;
      const s = samples.get(key) ?? { source, program: p.name, ns: [], runs: 0 };
      s.ns.push(p.runTimeNs / p.runCount);
      s.runs += p.runCount;
      samples.set(key, s);
      log(`  ${source.padEnd(22)} ${p.name.padEnd(28)} ${(p.runTimeNs / p.runCount).toFixed(0)} ns/run over ${p.runCount} runs`);
    }
  };
  const restore = enableBpfStats();
  try {
    for (let r = 0; r < repeats; r++) {
      add('kvm tracer (tracepoint)', await kvmTracerCost(workload));
      add('ringtest producer', await ringtestCost(calls));
      if (withBpftrace) add('bpftrace', await bpftraceCost(Math.min(calls, 300_000)));
    }
  } finally {
    restore();
  }
  const programs: ProgramCost[] = [...samples.values()].map((s) => ({
    source: s.source, program: s.program, runCount: s.runs, nsPerRun: spread(s.ns),
  }));
  const rows = programs.map((p) =>
    `| ${p.source} | ${p.program} | ${p.runCount.toLocaleString('en')} | ${p.nsPerRun.median.toFixed(0)} ` +
      `(${p.nsPerRun.min.toFixed(0)}–${p.nsPerRun.max.toFixed(0)}, ±${p.nsPerRun.cvPct.toFixed(1)}%) | ` +
      `${p.source === 'bpftrace' ? '(reference)' : p.nsPerRun.median <= TARGET_NS ? 'met' : '**missed**'} |`);
  const markdown = [
    `### BPF cost per probe hit (kernel.bpf_stats_enabled, run_time_ns / run_cnt; ${repeats} repeats; target ≤ ${TARGET_NS} ns)`,
    '',
    '| source | program | runs | ns per run (median, range, CV) | target |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
  return { programs, markdown };
}

if (require.main === module) {
  runMain(async () => {
    const flags = parseFlags();
    const env = benchEnv();
    const opts: ProbeCostOptions = flags.quick
      ? { repeats: 1, loadgenCalls: 200_000, workload: { pattern: 'sequential', sizeMiB: 8, runs: 2, invalidate: 'between' } }
      : {};
    if (flags.repeats) opts.repeats = flags.repeats;
    opts.log = flags.json ? () => {} : (l) => console.log(l);
    const r = await runProbeCostBench(opts);
    if (flags.json) console.log(JSON.stringify(r));
    else console.log('\n' + r.markdown);
    if (flags.record) appendResults('BPF cost per probe hit', env, r.markdown);
  });
}

