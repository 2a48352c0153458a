import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { StaleFaultDetector, Verdict } from '../lib/detector';
import { importBpftraceLog } from '../lib/import/bpftrace';
import { judgeKernel } from '../lib/kernels';
import { fixturePath } from './helpers/scenarios';

function run(name: string, kernelRelease?: string): { final: Verdict[]; changes: Verdict[]; d: StaleFaultDetector } {
  const imp = importBpftraceLog(readFileSync(fixturePath(name), 'utf8'));
  assert.equal(imp.skipped, 0, `fixture ${name} should import cleanly: ${JSON.stringify(imp.skippedLines)}`);
  const changes: Verdict[] = [];
  const d = new StaleFaultDetector({ kernel: kernelRelease ? judgeKernel(kernelRelease) : null, onVerdict: (v) => changes.push(v) });
  d.push(imp.batch);
  return { final: d.snapshot(), changes, d };
}

describe('40 detector: the incident fixtures', () => {
  it('stuck-seq-sign-extension.log: tids 3484173 and 3484174 (pid 3484149) stuck on gpa 1343fa0b0, cause seq-sign-extension', () => {
    const { final } = run('stuck-seq-sign-extension.log');
    assert.deepEqual(final.map((v) => v.tid), [3484173, 3484174]);
    for (const v of final) {
      assert.equal(v.pid, 3484149);
      assert.equal(v.state, 'stuck');
      assert.equal(v.cause, 'seq-sign-extension');
      assert.equal(v.gpa, '1343fa0b0');
      assert.equal(v.hva, '7feb409fa000');
      assert.equal(v.rip, 'ffffffff814e6ca5');
      assert.equal(v.mmuSeqFirst, '8002dc25');
      assert.equal(v.mmuSeqLast, '8002dc25');
      assert.equal(v.inProgress, 0);
      assert.deepEqual(v.range, { start: '7feacde61000', end: '7feacde62000', unit: 'hva' });
      assert.match(v.explanation, /sign-extended/);
      // no kernel given: the cause stands on the trace alone, and the trace shows all of it
      assert.equal(v.confidence, 'high');
      assert.equal(v.decidedBy, 'behaviour');
    }
    // attempts = the "(N hits)" counter of the last line of each thread
    assert.equal(final[0].attempts, 92239);
    assert.equal(final[1].attempts, 90121);
  });

  it('the signature in the log outranks the kernel judgement: seq-sign-extension even against a kernel called fixed', () => {
    const affected = run('stuck-seq-sign-extension.log', '6.1.30').final;
    assert.ok(affected.every((v) => v.cause === 'seq-sign-extension' && v.confidence === 'high' && v.decidedBy === 'behaviour'));
    assert.match(affected[0].explanation, /affected \(version agrees\)/);
    // a kernel the version table calls fixed (our machines' 6.18): the records still win
    const fixed = run('stuck-seq-sign-extension.log', '6.18.44-fc-v657').final;
    assert.ok(fixed.every((v) => v.state === 'stuck' && v.cause === 'seq-sign-extension' && v.confidence === 'high' && v.decidedBy === 'behaviour'));
    assert.match(fixed[0].explanation, /version table says 6\.18\.44-fc-v657 is not affected, but the records outrank it/);
  });

  it('progress-hugepage-zeroing.log: tid 142943 progressing (hot RIP, every fault on the next page, each fixed), never stuck', () => {
    const { final, changes } = run('progress-hugepage-zeroing.log');
    assert.equal(final.length, 1);
    assert.equal(final[0].tid, 142943);
    assert.equal(final[0].pid, 142917);
    assert.equal(final[0].state, 'progressing');
    assert.equal(final[0].cause, null);
    // 5 faults mapped (cf7b000..cf7f000), each counted once although MAP, SPTE and MAP_RET all say so
    assert.equal(final[0].mapped, 5);
    assert.ok(changes.length > 0);
    assert.ok(changes.every((v) => v.state !== 'stuck'), 'never stuck on the way');
    // the one double fault-in per page is explained by the sequence moving
    assert.ok(changes.filter((v) => v.state === 'retrying').every((v) => v.retryReason === 'invalidation'));
  });

  it('early warning: the stuck VM is past 0x80000000; the zeroing VM has a rate and a time left', () => {
    const stuckVm = run('stuck-seq-sign-extension.log', '6.1.30').d.forecast();
    assert.equal(stuckVm.length, 1);
    assert.equal(stuckVm[0].vmId, 'pid:3484149');
    assert.equal(stuckVm[0].crossed, true);
    assert.equal(stuckVm[0].secondsToSignBit, 0);
    assert.equal(stuckVm[0].kernelAffected, true);
    const zero = run('progress-hugepage-zeroing.log').d.forecast();
    assert.equal(zero[0].seq, '47252');
    assert.equal(zero[0].rateSource, 'mmu_seq');
    assert.ok(zero[0].ratePerSec! > 0);
    const expect = (0x80000000 - 0x47252) / zero[0].ratePerSec!;
    assert.ok(Math.abs(zero[0].secondsToSignBit! - expect) < 1e-6 * expect);
    assert.equal(zero[0].kernelAffected, null);
  });
});
