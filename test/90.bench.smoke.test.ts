/**
 * Keeps the benchmarks working: every scenario runs once at a tiny size (about a second each)
 * and must produce sane numbers, with its reference consumers (C libbpf, bpftrace) really run.
 * No speed is asserted: speed goes to bench/RESULTS.md (`npm run bench`), never to the tests.
 *
 * Needs what the benchmarks need: root, kernel BTF, bpftrace, /dev/kvm (e2e, probe-cost: see helpers/host.ts) and the helpers built
 * from bench/native/ (build/Release/loadgen, cconsumer). Missing any of them FAILS with the
 * reason (BenchError messages say what to do).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { bound, requireKvm, SLOW } from './helpers/host';
import { runE2eBench } from '../bench/e2e';
import { runPipelineBench } from '../bench/pipeline';
import { runProbeCostBench } from '../bench/probe-cost';
import { runCountersBench } from '../bench/counters';
import { runRingBench } from '../bench/ring';
import { hasCommand } from '../bench/common';

const positive = (x: number, what: string): void => assert.ok(Number.isFinite(x) && x > 0, `${what}: ${x}`);
const TINY_WORKLOAD = { pattern: 'sequential', sizeMiB: 4, runs: 2, invalidate: 'between' } as const;

describe('90 bench smoke: every benchmark scenario runs and gives sane numbers', function () {
  this.timeout(bound(120_000));

  before(() => {
    if (!hasCommand('bpftrace')) {
      throw new Error('bpftrace is not installed: the benchmarks compare against it (apt-get install bpftrace)');
    }
  });

  it('ring: live (max, paced) and full-ring drain, JS zero-copy / copy vs C vs bpftrace', async () => {
    // bpftrace formats every line in user space: under the matrix's emulation (SLOW) it gets 2k calls, not 20k
    const BT = SLOW > 1 ? 2_000 : 20_000;
    const r = await runRingBench({
      liveRecords: 100_000, bpftraceRecords: BT, repeats: 1, ringBytes: 16 << 20, drainRingBytes: 1 << 20, drainRounds: 1,
    });
    for (const list of [r.liveMax, r.liveSustainable]) {
      assert.deepEqual(list.map((s) => s.consumer), ['js-zero-copy', 'js-copy', 'c-libbpf', 'bpftrace']);
      for (const s of list) {
        const run = s.runs[0];
        positive(run.recordsPerSec, `${s.consumer} records/s`);
        positive(run.producerPerSec, `${s.consumer} producer calls/s`);
        // every record offered is either delivered, or counted as dropped/lost: never invented
        assert.ok(run.records <= run.producerCalls, `${s.consumer}: ${run.records} records > ${run.producerCalls} calls`);
        assert.equal(run.outOfOrder, 0, `${s.consumer}: records out of order`);
        if (s.consumer !== 'bpftrace') {
          // a 16 MiB ring holds all 100k records: nothing may be dropped or lost
          assert.equal(run.producerCalls, 100_000);
          assert.equal(run.records, 100_000, `${s.consumer} delivered ${run.records} of 100000 (dropped ${run.dropped})`);
        } else {
          assert.equal(run.producerCalls, BT);
          assert.ok(run.records > 0, 'bpftrace printed no record lines: it did not really run');
          assert.equal(run.records + run.lost, BT);
        }
      }
    }
    positive(r.sustainableRate, 'sustainable rate');
    assert.deepEqual(r.drain.map((d) => d.consumer), ['js-zero-copy', 'js-zero-copy (maxBatch 1024)', 'js-copy', 'c-libbpf']);
    for (const d of r.drain) {
      assert.equal(d.rates.length, 1);
      positive(d.rates[0], `${d.consumer} drain records/s`);
      assert.equal(d.outOfOrder, 0);
      assert.equal(d.dropped, 0);
    }
    assert.match(r.markdown, /vs C/);
  });

  it('e2e: real KVM faults with tracing off, on, on + detector', async function () {
    requireKvm(this);
    const r = await runE2eBench({ repeats: 1, workload: TINY_WORKLOAD });
    assert.deepEqual(r.summary.map((s) => s.mode), ['off', 'trace', 'trace+detector']);
    for (const run of r.runs) {
      positive(run.faults, `${run.mode} KVM faults`);
      positive(run.faultsPerSec, `${run.mode} faults/s`);
      if (run.mode !== 'off') {
        positive(run.records, `${run.mode} records`);
        assert.equal(run.dropped, 0, `${run.mode}: drops at this tiny rate`);
        // tracepoint mode: a fault is at least one record (its entry); never fewer records than faults
        assert.ok(run.recordsPerFault >= 1, `${run.mode}: ${run.recordsPerFault} records per fault`);
      }
    }
    // which verdict is the detector's business (its own tests); here: it saw the guest's vCPU
    // and a healthy guest is never called stuck
    const verdicts = r.runs.find((x) => x.mode === 'trace+detector')!.verdicts;
    assert.match(verdicts, /progressing|retrying/);
    assert.doesNotMatch(verdicts, /stuck/);
  });

  it('probe-cost: ns per hit for the tracer, the ringtest producer and bpftrace', async function () {
    requireKvm(this);
    const statsBefore = readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim();
    const r = await runProbeCostBench({ repeats: 1, loadgenCalls: 50_000, workload: TINY_WORKLOAD });
    const sources = new Set(r.programs.map((p) => p.source));
    for (const s of ['kvm tracer (tracepoint)', 'ringtest producer', 'bpftrace']) assert.ok(sources.has(s), `no figure for ${s}`);
    for (const p of r.programs) {
      positive(p.runCount, `${p.program} runs`);
      positive(p.nsPerRun.median, `${p.program} ns per run`);
    }
    assert.equal(readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim(), statsBefore, 'kernel.bpf_stats_enabled was not restored');
  });

  it('pipeline: ring → batch → detector', async () => {
    const r = await runPipelineBench({ records: 100_000, chunk: 25_000, ringBytes: 8 << 20, repeats: 1 });
    assert.equal(r.runs.length, 6);
    for (const run of r.runs) {
      assert.equal(run.records, 100_000, `${run.variant}: ${run.records} records`);
      positive(run.recordsPerSec, `${run.variant} records/s`);
      if (run.variant !== 'count only') assert.equal(run.detectorRecords, 100_000);
    }
  });

  it('counters: the fault rate with nothing watching, KVM counters sampled every 1 s / 100 ms, the tracer', async function () {
    requireKvm(this);
    const r = await runCountersBench({ repeats: 1, workload: { ...TINY_WORKLOAD, vms: 2, vcpus: 1 } });
    assert.deepEqual(r.runs.map((x) => x.mode), ['off', 'counters 1 s', 'counters 100 ms', 'tracer']);
    for (const run of r.runs) positive(run.faultsPerSec, `${run.mode} faults/s`);
    for (const run of r.runs.filter((x) => x.mode.startsWith('counters'))) {
      assert.ok(run.samples >= 1, `${run.mode}: no sample taken`);
      // the first sample comes right after the guests were started: both VMs' vCPUs exist by then
      assert.equal(run.vcpusSeen, 2, `${run.mode}: the iterator saw ${run.vcpusSeen} of the 2 vCPUs`);
      run.sampleMs.forEach((ms) => positive(ms, `${run.mode} sample ms`));
    }
    assert.match(r.markdown, /Counters mode cost/);
  });
});
