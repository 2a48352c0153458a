import assert from 'node:assert/strict';
import { StaleFaultDetector, Verdict } from '../lib/detector';
import { judgeKernel, RET_PF_6_1, RET_PF_6_12 } from '../lib/kernels';
import { chunked, interleavedMix, invalidationStorm, invalidationStuck, stuckSignExtension, stuckSmallSeq, TraceBuilder, vcpu } from './helpers/scenarios';

function detect(batches: Parameters<StaleFaultDetector['push']>[0][], opts: ConstructorParameters<typeof StaleFaultDetector>[0] = {}) {
  const changes: Verdict[] = [];
  const d = new StaleFaultDetector({ ...opts, onVerdict: (v) => changes.push(v) });
  for (const b of batches) d.push(b);
  return { d, changes, final: d.snapshot() };
}

describe('40 detector: generated scenarios', () => {
  it('invalidation storm (retried a few times, then fixed): retrying explained by invalidation, never stuck', () => {
    const { final, changes } = detect([invalidationStorm(50, 5)]);
    assert.equal(final.length, 1);
    assert.equal(final[0].state, 'progressing');
    const retrying = changes.filter((v) => v.state === 'retrying');
    assert.equal(retrying.length, 50, 'one retrying verdict per page');
    assert.ok(retrying.every((v) => v.retryReason === 'invalidation'));
    assert.ok(changes.every((v) => v.state !== 'stuck'));
    assert.equal(final[0].mapped, 50);
  });

  it('the storm with tiny thresholds would be stuck: the thresholds, not luck, keep it retrying', () => {
    const { changes } = detect([invalidationStorm(5, 5)], { stuckAttempts: 3, stuckNs: 1 });
    assert.ok(changes.some((v) => v.state === 'stuck'));
  });

  it('in-progress never clearing with the hva in range: stuck, cause invalidation-stuck', () => {
    const { final } = detect([invalidationStuck(3000)]);
    assert.equal(final[0].state, 'stuck');
    assert.equal(final[0].cause, 'invalidation-stuck');
    assert.equal(final[0].inProgress, 1);
    assert.equal(final[0].range?.unit, 'hva');
    assert.match(final[0].explanation, /never ends/);
  });

  it('the same with a gfn range (6.8+ kernels, KF_FLAG_RANGE_GFN): compares gfn with gfn', () => {
    const { final } = detect([invalidationStuck(3000, 1e6, true)]);
    assert.equal(final[0].cause, 'invalidation-stuck');
    assert.equal(final[0].range?.unit, 'gfn');
  });

  it('stuck with a small sequence: stuck, cause unknown (not blamed on sign extension)', () => {
    const { final } = detect([stuckSmallSeq(2000)], { kernel: judgeKernel('6.1.30') });
    assert.equal(final[0].state, 'stuck');
    assert.equal(final[0].cause, 'unknown');
    assert.equal(final[0].mmuSeqLast, '4724e');
  });

  it('sign-extension pattern from live-style FAULT records: stuck, seq-sign-extension', () => {
    const { final } = detect([stuckSignExtension(2000)]);
    assert.equal(final[0].cause, 'seq-sign-extension');
    assert.equal(final[0].gpa, '1343fa0b0');
  });

  it('stuck needs attempts AND time: 2000 attempts within 0.2 s stay retrying', () => {
    const { final } = detect([stuckSmallSeq(2000, 100_000)]);
    assert.equal(final[0].state, 'retrying');
    assert.equal(final[0].retryReason, 'unexplained');
    assert.equal(final[0].attempts, 2000);
  });

  it('repeat counts: one coalesced record of 1500 plus time is as stuck as 1500 records', () => {
    const b = new TraceBuilder();
    const v = vcpu(5000, 0);
    b.fault(v, 1e9, 0x9000, { mmuSeq: 5, inProgress: 0 });
    b.fault(v, 3e9, 0x9000, { mmuSeq: 5, inProgress: 0 }, 1500);
    const { final } = detect([b.batch()]);
    assert.equal(final[0].attempts, 1501);
    assert.equal(final[0].state, 'stuck');
  });

  it('unknown fields are unknown, not zero: no in-progress -> no sign-extension claim', () => {
    const b = new TraceBuilder();
    const v = vcpu(5100, 0);
    for (let i = 0; i < 1200; i++) b.fault(v, 1e9 + i * 1e6, 0x9000, { faultSeq: 0x80000123 });
    const { final } = detect([b.batch()]);
    assert.equal(final[0].state, 'stuck');
    assert.equal(final[0].cause, 'unknown');
    assert.equal(final[0].inProgress, null);
    assert.equal(final[0].mmuSeqLast, '80000123');
    assert.equal(final[0].hva, (0x7f0000000000 + 0x9000).toString(16));
  });

  it('FAULT_RET uses the retPf table: ret 5 is FIXED on 6.12, SPURIOUS on 6.1', () => {
    const mk = () => {
      const b = new TraceBuilder();
      const v = vcpu(5200, 0);
      b.fault(v, 1e9, 0x9000, { mmuSeq: 1, inProgress: 0 });
      b.faultRet(v, 1e9 + 10, 0x9000, 5);
      b.fault(v, 1e9 + 20, 0x9000, { mmuSeq: 1, inProgress: 0 });
      return b.batch();
    };
    // mapped, so the next fault on the same gpa starts a new run (progressing, 1 attempt)
    for (const retPf of [RET_PF_6_1, RET_PF_6_12]) {
      const { final } = detect([mk()], { retPf });
      assert.equal(final[0].state, 'progressing');
      assert.equal(final[0].attempts, 1);
    }
    const { final } = detect([mk()], { retPf: { RETRY: 1, FIXED: 4, SPURIOUS: 6 }, retryingAttempts: 2 }); // 5 = nothing
    assert.equal(final[0].state, 'retrying');
  });

  it('kprobe mode: a FAULT and its FAULTIN are one attempt', () => {
    const b = new TraceBuilder();
    const v = vcpu(5300, 0);
    for (let i = 0; i < 10; i++) {
      b.fault(v, 1e9 + i * 100, 0x9000, { mmuSeq: 1, inProgress: 0 });
      b.faultin(v, 1e9 + i * 100 + 10, 0x9000, { mmuSeq: 1, inProgress: 0 });
    }
    assert.equal(detect([b.batch()]).final[0].attempts, 10);
  });

  it('many VMs and vCPUs interleaved, in small batches: only the stuck vCPU is stuck, per-VM state separate', () => {
    const mix = interleavedMix({ vms: 8, vcpusPerVm: 6, records: 200_000, seed: 42, stuckVcpu: 13, stepNs: 20_000 });
    const { final, d } = detect(chunked(mix.batch, 777));
    assert.equal(final.length, 48);
    const stuck = final.filter((v) => v.state === 'stuck');
    assert.deepEqual(stuck.map((v) => v.tid), [mix.stuck!.tid]);
    assert.equal(stuck[0].gpa, '5000');
    assert.equal(stuck[0].vcpu, mix.stuck!.vcpuId);
    assert.equal(stuck[0].vmId, mix.stuck!.vmId.toString(16));
    assert.ok(final.filter((v) => v.tid !== mix.stuck!.tid).every((v) => v.state !== 'stuck'));
    const vms = d.forecast();
    assert.equal(vms.length, 8);
    assert.ok(vms.every((vm) => vm.vcpus === 6));
    assert.ok(vms.every((vm) => vm.invalidations > 0 && vm.ratePerSec! > 0));
  });

  it('batch boundaries do not matter: one batch and 1-record batches give the same verdicts', () => {
    const mix = interleavedMix({ vms: 2, vcpusPerVm: 3, records: 5000, seed: 7, stuckVcpu: 1, stepNs: 1e6 });
    const whole = detect([mix.batch]);
    const ones = detect(chunked(mix.batch, 1));
    assert.deepEqual(ones.final, whole.final);
    assert.deepEqual(ones.changes, whole.changes);
  });

  it('idle vCPUs are evicted after idleNs (counted, reported once); a full table evicts the least recent', () => {
    const b = new TraceBuilder();
    for (let k = 0; k < 4; k++) b.fault(vcpu(6000, k), 1e9, 0x1000 * (k + 1), { mmuSeq: 1, inProgress: 0 });
    // only vCPU 0 keeps running for 10 s
    for (let t = 1; t <= 10; t++) b.fault(vcpu(6000, 0), 1e9 + t * 1e9, 0x100000 + t * 4096, { mmuSeq: 1, inProgress: 0 });
    const { d, final, changes } = detect([b.batch()], { idleNs: 5e9 });
    assert.equal(final.length, 1);
    assert.equal(d.stats().evictedIdle, 3);
    assert.equal(changes.filter((v) => v.evicted).length, 3);

    const b2 = new TraceBuilder();
    for (let k = 0; k < 10; k++) b2.fault(vcpu(7000, k), 1e9 + k, 0x1000, { mmuSeq: 1, inProgress: 0 });
    const small = detect([b2.batch()], { capacity: 4 });
    assert.equal(small.d.stats().evictedForCapacity, 6);
    assert.deepEqual(small.final.map((v) => v.tid), [7007, 7008, 7009, 7010]);
  });

  it('a stuck vCPU that gets its page mapped goes back to progressing (verdict change emitted)', () => {
    const b = new TraceBuilder();
    const v = vcpu(8000, 0);
    for (let i = 0; i < 1500; i++) b.fault(v, 1e9 + i * 1e6, 0x7000, { mmuSeq: 3, inProgress: 0 });
    b.map(v, 3e9, 0x7000, { mmuSeq: 3 });
    const { changes, final } = detect([b.batch()]);
    assert.deepEqual(changes.map((c) => c.state), ['progressing', 'retrying', 'stuck', 'progressing']);
    assert.equal(final[0].state, 'progressing');
  });

  it('rejects bad options with a clear message', () => {
    assert.throws(() => new StaleFaultDetector({ stuckAttempts: 0 }), /stuckAttempts must be a positive number/);
    assert.throws(() => new StaleFaultDetector({ retPf: { RETRY: 1, FIXED: 1.5, SPURIOUS: 2 } }), /retPf.FIXED/);
  });
});
