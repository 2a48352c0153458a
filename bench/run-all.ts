/**
 * `npm run bench`: every scenario in one run, one dated entry in bench/RESULTS.md.
 *   ring        live + full-ring drain: JS zero-copy / copy vs C libbpf vs bpftrace
 *   e2e         real KVM faults, tracing off / on / on + detector
 *   probe-cost  BPF ns per probe hit (kernel.bpf_stats_enabled)
 *   pipeline    ring → batch → detector records/s
 *   counters    the fault rate with KVM's counters sampled vs off vs the tracer
 *   detector    the detector engineer's bench/detector.ts, run as it is (its own section)
 * then issue 14's goals from those figures, one row each with met / missed (bench/goals.ts).
 *
 *   node dist/bench/run-all.js [--quick] [--repeats N] [--no-record]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { appendResults, benchEnv, envLine, parseFlags, runMain } from './common';
import { runE2eBench } from './e2e';
import { goalsMarkdown, type GoalInputs } from './goals';
import { runPipelineBench } from './pipeline';
import { runProbeCostBench } from './probe-cost';
import { runCountersBench } from './counters';
import { runRingBench } from './ring';

runMain(async () => {
  const flags = parseFlags();
  const env = benchEnv();
  const log = (l: string): void => console.log(l);
  const repeats = flags.repeats;
  console.log(envLine(env));
  const sections: string[] = [];
  const failed: string[] = [];
  const goals: GoalInputs = {};
  const step = async (name: string, fn: () => Promise<string>): Promise<void> => {
    console.log(`\n== ${name}`);
    try {
      const md = await fn();
      sections.push(md);
      console.log('\n' + md);
    } catch (e) {
      const msg = `${name}: ${(e as Error).message}`;
      failed.push(msg);
      sections.push(`### ${name}\n\nFAILED: ${(e as Error).message}`);
      console.error(`bench: ${msg}`);
    }
  };
  await step('ring', async () => (goals.ring = await runRingBench({
    ...(flags.quick ? { liveRecords: 300_000, bpftraceRecords: 50_000, repeats: 1, drainRingBytes: 4 << 20, drainRounds: 2 } : {}),
    ...(repeats ? { repeats } : {}), log,
  })).markdown);
  await step('e2e', async () => (goals.e2e = await runE2eBench({
    ...(flags.quick ? { repeats: 1, workload: { pattern: 'sequential', sizeMiB: 8, runs: 2, invalidate: 'between' } } : {}),
    ...(repeats ? { repeats } : {}), log,
  })).markdown);
  await step('probe-cost', async () => (goals.probeCost = await runProbeCostBench({
    ...(flags.quick ? { repeats: 1, loadgenCalls: 200_000, workload: { pattern: 'sequential', sizeMiB: 8, runs: 2, invalidate: 'between' } } : {}),
    ...(repeats ? { repeats } : {}), log,
  })).markdown);
  await step('counters', async () => (await runCountersBench({
    ...(flags.quick ? { repeats: 1, workload: { pattern: 'sequential', sizeMiB: 4, runs: 3, invalidate: 'between', vms: 2, vcpus: 2 } } : {}),
    ...(repeats ? { repeats } : {}), log,
  })).markdown);
  await step('pipeline', async () => (await runPipelineBench({
    ...(flags.quick ? { records: 200_000, chunk: 50_000, ringBytes: 16 << 20, repeats: 1 } : {}),
    ...(repeats ? { repeats } : {}), log,
  })).markdown);
  await step('detector', async () => {
    // owned by the detector's engineer: run it as it is and quote its output
    const script = path.join(__dirname, 'detector.js');
    if (!existsSync(script)) throw new Error(`${script} is not built yet (bench/detector.ts has not landed)`);
    const r = spawnSync(process.execPath, ['--expose-gc', script, ...(flags.quick ? ['--quick'] : []), ...(flags.record ? [] : ['--no-record'])], {
      encoding: 'utf8', timeout: 600_000,
    });
    if (r.status !== 0) throw new Error(`exit ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' ')}`);
    goals.detectorText = r.stdout;
    return `### Detector (bench/detector.ts output; its own section in this file has the details)\n\n\`\`\`\n${r.stdout.trim()}\n\`\`\``;
  });
  const goalsMd = goalsMarkdown(goals, `${env.cpu} × ${env.cores}`);
  sections.push(goalsMd);
  console.log('\n' + goalsMd);
  if (flags.record) appendResults(`Full run${flags.quick ? ' (--quick: tiny sizes, not for comparison)' : ''}`, env, sections.join('\n\n'));
  if (failed.length) {
    console.error(`\nbench: ${failed.length} scenario(s) failed:\n  ${failed.join('\n  ')}`);
    process.exitCode = 1;
  }
});
