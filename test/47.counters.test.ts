/**
 * KVM's counters without a guest: the iterator's records decoded, and the suspect rule of
 * CounterWatch on counter sequences shaped like the incident (pf_taken climbing by millions,
 * pf_fixed flat) and like ordinary guests (retries among fixed faults, idle, emulation).
 */
import assert from 'node:assert/strict';
import { Escalator, EscalationResult } from '../lib/escalate';
import { COUNTERS_OFFSETS, COUNTERS_SIZE, CounterSample, CounterWatch, KVM_STATS, KvmStatName, parseCounterRecords } from '../lib/counters';

function sample(stats: Partial<Record<KvmStatName, number>>, over: Partial<CounterSample> = {}): CounterSample {
  const all = {} as Record<KvmStatName, number | null>;
  for (const k of KVM_STATS) all[k] = stats[k] ?? 0;
  return { pid: 100, fd: 12, vmId: '00000000000000aa', vcpuId: 0, tid: 101, mmuSeq: 0x10, inProgress: 0, stats: all, ...over };
}

describe('47 KVM counters: records and the suspect rule', () => {
  it('decodes the iterator\'s records: fields, unknown statistics as null, the tid 0 of a vCPU not yet run as null', () => {
    const buf = Buffer.alloc(2 * COUNTERS_SIZE);
    const put = (at: number, pid: number, tid: number, seq: bigint) => {
      buf.writeUInt32LE(pid, at + COUNTERS_OFFSETS.pid);
      buf.writeUInt32LE(7, at + COUNTERS_OFFSETS.fd);
      buf.writeUInt32LE(3, at + COUNTERS_OFFSETS.vcpu_id);
      buf.writeUInt32LE(tid, at + COUNTERS_OFFSETS.tid);
      buf.writeBigUInt64LE(0x1234n, at + COUNTERS_OFFSETS.vm_id);
      buf.writeBigUInt64LE(seq, at + COUNTERS_OFFSETS.mmu_seq);
      buf.writeBigInt64LE(-1n, at + COUNTERS_OFFSETS.in_progress);
      KVM_STATS.forEach((_, i) => buf.writeBigUInt64LE(BigInt(i * 10), at + COUNTERS_OFFSETS.stat + 8 * i));
    };
    put(0, 42, 43, 0x80000000n);
    put(COUNTERS_SIZE, 44, 0, 0xffffffffffffffffn);
    buf.writeBigUInt64LE(0xffffffffffffffffn, COUNTERS_SIZE + COUNTERS_OFFSETS.stat + 8 * KVM_STATS.indexOf('pf_guest'));
    const [a, b] = parseCounterRecords(buf);
    assert.deepEqual({ pid: a.pid, fd: a.fd, vcpu: a.vcpuId, tid: a.tid, vm: a.vmId, seq: a.mmuSeq, inProgress: a.inProgress },
      { pid: 42, fd: 7, vcpu: 3, tid: 43, vm: '0000000000001234', seq: 0x80000000, inProgress: null });
    assert.equal(a.stats.pf_fixed, 10);
    assert.equal(b.tid, null);
    assert.equal(b.mmuSeq, null);
    assert.equal(b.stats.pf_guest, null);
    assert.equal(parseCounterRecords(Buffer.alloc(COUNTERS_SIZE - 1)).length, 0, 'a partial record is not decoded');
  });

  it('the incident: pf_taken +2.6M per second, pf_fixed flat -> suspect, with the time it turned; forecast 0 past 0x80000000', () => {
    const w = new CounterWatch();
    w.update([sample({ pf_taken: 1000, pf_fixed: 990 }, { mmuSeq: 0x80000000 })], 0);
    const v1 = w.update([sample({ pf_taken: 2_601_000, pf_fixed: 990 }, { mmuSeq: 0x80000000 })], 1000);
    const v2 = w.update([sample({ pf_taken: 5_201_000, pf_fixed: 990 }, { mmuSeq: 0x80000000 })], 2000);
    assert.equal(v1.suspectVms, 1);
    assert.equal(v1.vms[0].vcpus[0].retriedInInterval, 2_600_000);
    assert.equal(v1.vms[0].vcpus[0].rates.pf_taken, 2_600_000);
    assert.equal(v2.vms[0].suspectSinceMs, 0, 'suspect since the sample before the first all-retried interval');
    assert.equal(v2.vms[0].secondsToSignBit, 0);
  });

  it('ordinary guests are not suspect: retries among fixed faults, idle, emulated or spurious faults, below minAttempts', () => {
    const cases: [string, Partial<Record<KvmStatName, number>>][] = [
      ['retries with progress', { pf_taken: 100_000, pf_fixed: 60_000 }],
      ['idle', {}],
      ['all emulated (MMIO)', { pf_taken: 50_000, pf_emulate: 50_000 }],
      ['all spurious', { pf_taken: 50_000, pf_spurious: 50_000 }],
      ['all retried but only 999', { pf_taken: 999 }],
    ];
    for (const [what, d] of cases) {
      const w = new CounterWatch({ minAttempts: 1000 });
      w.update([sample({})], 0);
      const v = w.update([sample(d)], 1000);
      assert.equal(v.suspectVms, 0, what);
    }
  });

  it('a vCPU that recovers is no longer suspect; a vCPU that goes away is forgotten; VMs are grouped by process and VM', () => {
    const w = new CounterWatch({ minAttempts: 10 });
    w.update([sample({ pf_taken: 0 }), sample({ pf_taken: 0 }, { vcpuId: 1, fd: 13, tid: 102 }), sample({}, { pid: 200, vmId: 'bb' })], 0);
    let v = w.update([sample({ pf_taken: 100 }), sample({ pf_taken: 50, pf_fixed: 50 }, { vcpuId: 1, fd: 13, tid: 102 }), sample({}, { pid: 200, vmId: 'bb' })], 1000);
    assert.deepEqual(v.vms.map((vm) => [vm.pid, vm.vcpus.length, vm.suspect]), [[100, 2, true], [200, 1, false]]);
    v = w.update([sample({ pf_taken: 200, pf_fixed: 1 })], 2000);
    assert.equal(v.suspectVms, 0);
    v = w.update([sample({ pf_taken: 300, pf_fixed: 1 })], 3000);
    assert.equal(v.vms[0].vcpus[0].suspectSinceMs, 2000, 'a new suspect period starts at the last sample before it');
    assert.throws(() => new CounterWatch({ minAttempts: 0 }), /minAttempts must be >= 1/);
  });

  it('Escalator: no suspect VM, no escalation; the verdict of a VMM that exited is forgotten, a live one kept', () => {
    const esc = new Escalator({ captureDir: null });
    const verdict = (pid: number): EscalationResult => ({ pid, vmName: null, startedAtMs: 0, endedAtMs: 1, state: 'stuck', cause: 'seq-sign-extension',
      confidence: 'high', decidedBy: 'behaviour', tid: 1, vcpu: 0, gpa: '0', seq: '80000000', records: 1, dropped: 0, mode: 'tracepoint', capture: null });
    const gone = 0x3ffffffe; // above any pid_max: no such process
    esc.results.set(gone, verdict(gone));
    esc.results.set(process.pid, verdict(process.pid));
    const w = new CounterWatch();
    esc.consider(w.update([sample({}, { pid: process.pid })], 0));
    assert.equal(esc.active, null, 'nothing suspect, nothing escalated');
    assert.equal(esc.stats.started, 0);
    assert.deepEqual([...esc.results.keys()], [process.pid]);
  });
});
