/**
 * KVM's own counters from the BPF task_file iterator (lib/counters.ts) on a real guest (the
 * built-in workload), against KVM's own numbers: debugfs where this host lets it be read, and
 * the workload's stats fd (KVM_GET_STATS_FD, the VM owner's view). Sampled while the guest is at
 * rest (between runs, during the workload's invalidation burst), so the numbers are exact.
 */
import assert from 'node:assert/strict';
import { CounterSample, CounterSourceError, CounterWatch, openBpfCounterSource, openDebugfsCounterSource } from '../lib/counters';
import { runWorkload, WorkloadInfo, WorkloadRun } from '../lib/workload';
import { requireKvm } from './helpers/host';

// long enough for a dozen 20 ms progress samples where madvise runs at ~1M/s (PVM, no tracer: 100k
// once left one sample inside the burst), ~12 s under the matrix's TCG
const BURST = 500_000;

describe('62 KVM counters from the BPF iterator (real guest)', function () {
  this.timeout(300_000);
  before(function () { requireKvm(this); });

  it('the workload\'s vCPU: pf_taken equal to KVM\'s own at rest, the sequence read live during an invalidation burst, gone after', async function () {
    const iter = openBpfCounterSource();
    let debugfs: ReturnType<typeof openDebugfsCounterSource> | null = null;
    let debugfsWhy = '';
    try {
      debugfs = openDebugfsCounterSource();
    } catch (e) {
      if (!(e instanceof CounterSourceError)) throw e;
      debugfsWhy = e.message;
    }
    const mine = (s: CounterSample[]): CounterSample[] => s.filter((x) => x.pid === process.pid);
    let info = null as WorkloadInfo | null;
    const runs: WorkloadRun[] = [];
    const atBurst: { done: number; iter: CounterSample[]; debugfs: CounterSample[] | null; ms: number }[] = [];
    try {
      const result = await runWorkload({
        sizeMiB: 4, runs: 2, burst: BURST, burstProgressMs: 20,
        onStart: (i) => { info = i; },
        onRun: (r) => runs.push(r),
        onBurstProgress: (done) => {
          const t0 = process.hrtime.bigint();
          const it = mine(iter.sample());
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          atBurst.push({ done, iter: it, debugfs: debugfs ? mine(debugfs.sample()) : null, ms });
        },
      });
      assert.ok(info, 'onStart never ran');
      // Progress callbacks reach JS late (the burst may be over, run 2 running, the VM gone): a
      // sample is at rest only if the sequence moved on after it (the burst was still running
      // then) and had moved before it (the burst had begun, run 1 was over).
      const live = atBurst.filter((a) => a.iter.length === 1 && a.iter[0].mmuSeq !== null);
      assert.ok(live.length >= 3, `only ${live.length} burst progress samples saw the vCPU: ${JSON.stringify(atBurst.map((a) => a.done))}`);
      const seqs = live.map((a) => a.iter[0].mmuSeq!);
      const lo = Math.min(...seqs), hi = Math.max(...seqs);
      const rest = live.filter((a) => a.iter[0].mmuSeq! > lo && a.iter[0].mmuSeq! < hi);
      assert.ok(rest.length >= 2, `only ${rest.length} samples taken while the burst ran (sequence ${lo}..${hi})`);
      const first = rest[0], last = rest[rest.length - 1];
      const v0 = first.iter[0], v1 = last.iter[0];
      assert.equal(v0.tid, info!.tids[0], 'the vCPU thread the iterator names is the workload\'s');
      assert.equal(v0.vcpuId, 0);
      // at rest: KVM's counters do not move while the host invalidates
      assert.equal(v1.stats.pf_taken, v0.stats.pf_taken, 'pf_taken moved while the guest was idle');
      // run 1's faults (KVM's stats fd) are all in the iterator's count; the rest are the guest's setup
      assert.ok(runs.length >= 1);
      const setup = v0.stats.pf_taken! - runs[0].vcpu.pf_taken;
      assert.ok(setup >= 0 && setup < 64, `iterator pf_taken ${v0.stats.pf_taken} vs run 1's ${runs[0].vcpu.pf_taken}: ${setup} setup faults`);
      assert.ok(v0.stats.pf_fixed! >= runs[0].vcpu.pf_fixed);
      // the sequence, read live: it only grows during the burst (one increment per madvise),
      // by no more than the burst's calls (a sample comes a little after the count it reports)
      for (let i = 1; i < live.length; i++) {
        assert.ok(live[i].iter[0].mmuSeq! >= live[i - 1].iter[0].mmuSeq!, `the sequence went back: ${seqs.join(' ')}`);
      }
      assert.ok(hi - lo > 0 && hi - lo <= BURST, `sequence moved ${hi - lo} during a burst of ${BURST} invalidations`);
      let found = `debugfs unreadable here (${debugfsWhy.split(' (')[0]}): checked against KVM's stats fd only`;
      if (first.debugfs) {
        assert.equal(first.debugfs.length, 1, `debugfs VMs of this process: ${JSON.stringify(first.debugfs)}`);
        for (const stat of ['pf_taken', 'pf_fixed', 'pf_emulate', 'pf_spurious', 'exits'] as const) {
          assert.equal(first.iter[0].stats[stat], first.debugfs[0].stats[stat], `${stat}: iterator vs debugfs at rest`);
        }
        found = 'debugfs readable: equal to the iterator at rest';
      }
      // after the workload its vCPU is gone
      assert.equal(mine(iter.sample()).length, 0, 'the iterator still sees a vCPU of this process after the workload ended');
      const ms = rest.map((a) => a.ms).sort((a, b) => a - b)[rest.length >> 1];
      this.test!.title += ` (found: ${found}; ${rest.length} samples at rest, ${ms.toFixed(2)} ms per sample; ${result.total.faults} faults)`;
    } finally {
      iter.close();
    }
  });

  it('a progressing guest, retries included (concurrent invalidations), is never suspect', async function () {
    const iter = openBpfCounterSource();
    const watch = new CounterWatch({ minAttempts: 100 });
    let suspect = 0, samples = 0;
    const timer = setInterval(() => {
      const view = watch.update(iter.sample());
      samples++;
      suspect += view.vms.filter((vm) => vm.pid === process.pid && vm.suspect).length;
    }, 200);
    try {
      const r = await runWorkload({ sizeMiB: 8, duration: 4, invalidate: 'concurrent' });
      assert.ok(r.total.faults > 0);
      assert.ok(samples >= 5, `only ${samples} samples`);
      assert.equal(suspect, 0, `a progressing VM was suspect in ${suspect} of ${samples} samples (${r.total.retries} retries)`);
      this.test!.title += ` (${samples} samples, ${r.total.retries} retries, ${r.total.faults} faults)`;
    } finally {
      clearInterval(timer);
      iter.close();
    }
  });
});
