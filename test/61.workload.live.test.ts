/**
 * The built-in workload seen through the live tracer and the detector, on this machine's KVM:
 * the tracer's 'map' records for the workload's threads equal KVM's own fault counter, and the
 * detector's verdicts match what the guest does.
 */
import assert from 'node:assert/strict';
import { StaleFaultDetector, Verdict } from '../lib/detector';
import { Kind } from '../lib/record';
import type { WorkloadOptions, WorkloadResult } from '../lib/workload';
import { requireKvm, workloadSetupFaults } from './helpers/host';
import { traceOwnWorkload } from './helpers/traced';

interface Traced {
  result: WorkloadResult;
  mapsByTid: Map<number, number>;
  records: number;
  dropped: number;
  verdicts: Verdict[];
  /** every verdict change, in order */
  changes: Verdict[];
  mode: string;
}

/** Runs the workload under a live tracer (pid filter) with the detector on every batch. */
async function traced(options: WorkloadOptions, detectorOptions = {}): Promise<Traced> {
  const mapsByTid = new Map<number, number>();
  const changes: Verdict[] = [];
  const detector = new StaleFaultDetector({ ...detectorOptions, onVerdict: (v) => changes.push(v) });
  let records = 0;
  const run = await traceOwnWorkload(options, { ringBytes: 64 << 20 }, (batch) => {
    detector.push(batch);
    for (let i = 0; i < batch.length; i++) {
      records++;
      if (batch.kind(i) === Kind.MAP) mapsByTid.set(batch.tid(i), (mapsByTid.get(batch.tid(i)) ?? 0) + batch.repeat(i));
    }
  });
  return { result: run.result, mapsByTid, records, dropped: run.dropped, verdicts: detector.snapshot(), changes, mode: run.mode };
}

const sum = (m: Map<number, number>, tids: number[]) => tids.reduce((s, t) => s + (m.get(t) ?? 0), 0);

describe('61 workload under the live tracer and detector', function () {
  this.timeout(60_000);
  before(function () { requireKvm(this); });

  it("'map' records of the workload's vCPU threads equal KVM's pf_taken delta", async () => {
    const t = await traced({ sizeMiB: 16, runs: 3, invalidate: 'between' });
    assert.equal(t.dropped, 0, `${t.dropped} records dropped`);
    const maps = sum(t.mapsByTid, t.result.tids);
    assert.equal(t.result.total.faults, 4096 * 3 + workloadSetupFaults(t.result));
    assert.equal(maps, t.result.total.faults, `map records ${maps}, KVM pf_taken ${t.result.total.faults}`);
  });

  it('at the maximum rate (2 VMs x 2 vCPUs, unthrottled): no drops, or drops reported exactly', async () => {
    const t = await traced({ sizeMiB: 32, vms: 2, vcpus: 2, runs: 2, invalidate: 'between' });
    const maps = sum(t.mapsByTid, t.result.tids);
    const faults = t.result.total.faults;
    if (t.dropped === 0) {
      assert.equal(maps, faults);
    } else {
      // every record the ring lost is counted: what arrived plus what dropped covers every fault
      assert.ok(maps < faults && maps + t.dropped >= faults, `maps ${maps} + dropped ${t.dropped} vs faults ${faults}`);
    }
  });

  it('sequential guest (hot RIP, every fault on the next page): progressing on its pages, never stuck', async () => {
    const t = await traced({ pattern: 'sequential', sizeMiB: 16, runs: 2, invalidate: 'between' });
    const tid = t.result.tids[0];
    const region = BigInt(t.result.regionGpa);
    const inRegion = (v: Verdict) => v.gpa !== null && BigInt('0x' + v.gpa) >= region;
    const now = t.verdicts.find((v) => v.tid === tid);
    assert.ok(now, 'the vCPU thread is in the detector snapshot');
    assert.equal(now.state, 'progressing', now.explanation);
    assert.ok(inRegion(now), `last fault on the touched pages, got gpa ${now.gpa}`);
    assert.ok(now.mapped >= 2 * 4096, `${now.mapped} faults ended mapped`);
    // the emulated exit (an OUT under PVM) walks the guest's tables too; those walks are not
    // faults (the tracer drops them), so the vCPU is never retrying or stuck anywhere
    for (const v of t.changes.filter((c) => c.tid === tid)) {
      assert.equal(v.state, 'progressing', v.explanation);
    }
  });

  it('concurrent invalidation race: retrying or progressing, never stuck', async () => {
    const t = await traced({ sizeMiB: 16, runs: 3, invalidate: 'concurrent', invalidateIntervalUs: 20 });
    assert.ok(t.result.total.retries > 0 || t.result.total.faults > t.result.total.pagesTouched, 'the race did not happen');
    const mine = t.verdicts.filter((v) => t.result.tids.includes(v.tid));
    assert.ok(mine.length >= 1);
    for (const v of mine) assert.notEqual(v.state, 'stuck', v.explanation);
    const changes = t.changes.filter((v) => t.result.tids.includes(v.tid));
    if (process.env.KVMFAULT_TEST_VERBOSE) for (const v of changes) console.log(v.state, v.retryReason, v.gpa, v.attempts, v.explanation);
    assert.ok(changes.some((v) => v.state === 'retrying' && v.retryReason === 'invalidation'),
      `no 'retrying (invalidation)' verdict during the race; changes: ${changes.map((v) => `${v.state}/${v.retryReason}@${v.gpa}`).join(' ')}`);
  });

  it('several VMs are told apart: one VM id per VM, its vCPUs under it', async () => {
    const t = await traced({ sizeMiB: 8, vms: 3, vcpus: 2, runs: 1 });
    const vmOf = new Map(t.verdicts.map((v) => [v.tid, v.vmId]));
    const ids = t.result.vms.map((vm) => new Set(vm.tids.map((tid) => vmOf.get(tid))));
    for (const [i, s] of ids.entries()) {
      assert.equal(s.size, 1, `VM ${i}'s vCPUs map to ${[...s].join(', ')}`);
      assert.ok([...s][0] !== undefined, `VM ${i} has no verdict`);
    }
    assert.equal(new Set(ids.map((s) => [...s][0])).size, 3, 'three VMs, three VM ids');
  });
});
