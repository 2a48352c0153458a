/**
 * Records from a REAL KVM guest (the built-in workload, in this process: one vCPU writing one
 * byte to each page of its region), checked field by field and against KVM's own counter
 * pf_taken (KVM_GET_STATS_FD): one MAP record per fault, for this pid only.
 */
import assert from 'node:assert/strict';
import { Flag, Kind, RecordBatch, RECORD_SIZE, UNKNOWN } from '../lib/record';
import type { TracerOptions } from '../lib/tracer';
import type { WorkloadOptions, WorkloadResult } from '../lib/workload';
import { requireKvm, workloadSetupFaults } from './helpers/host';
import { traceOwnWorkload } from './helpers/traced';

interface Captured {
  records: RecordBatch;
  result: WorkloadResult;
  dropped: number;
}

/** Traces this process while the workload runs; returns a copy of every record. */
async function traceWorkload(workload: WorkloadOptions, options: TracerOptions = {}): Promise<Captured> {
  const kept: Uint8Array[] = [];
  const { result, dropped } = await traceOwnWorkload({ vms: 1, vcpus: 1, ...workload }, options, (batch) => {
    for (let i = 0; i < batch.length; i++) kept.push(batch.recordBytes(i).slice());
  });
  const bytes = new Uint8Array(kept.length * RECORD_SIZE);
  kept.forEach((r, i) => bytes.set(r, i * RECORD_SIZE));
  return { records: RecordBatch.fromPacked(bytes), result, dropped };
}

function countKind(b: RecordBatch, kind: number, tid: number): number {
  let n = 0;
  for (let i = 0; i < b.length; i++) if (b.kind(i) === kind && b.tid(i) === tid) n += b.repeat(i);
  return n;
}

describe('30 tracer on a real KVM guest (tracepoint mode, any host kind)', function () {
  this.timeout(60_000);
  before(function () { requireKvm(this); });

  it('one MAP record per KVM page fault (= pf_taken), none lost, none from other processes', async () => {
    const { records, result, dropped } = await traceWorkload({ sizeMiB: 2, runs: 2, invalidate: 'between' });
    const tid = result.tids[0];
    const setup = workloadSetupFaults(result);
    assert.equal(result.total.faults, 2 * 512 + setup,
      `guest sanity: 2 runs x 512 pages + ${setup} setup page(s) on ${result.host}, KVM says ${result.total.faults}`);
    assert.equal(dropped, 0);
    assert.equal(countKind(records, Kind.MAP, tid), result.total.faults);
    for (let i = 0; i < records.length; i++) assert.equal(records.pid(i), process.pid);
    // the host's MADV_DONTNEED between the runs is an invalidation of the region
    let invalidations = 0;
    for (let i = 0; i < records.length; i++) if (records.kind(i) === Kind.INVALIDATE_START) invalidations++;
    assert.ok(invalidations >= 1, 'no invalidation record for the MADV_DONTNEED between the runs');
    // every MAP has a fault entry before it (a shadow-paging walk under PVM, kvm:kvm_page_fault on SVM/VMX)
    assert.ok(countKind(records, Kind.FAULT, tid) >= result.total.faults);
  });

  it('MAP fields: gpa = gfn*4096 in guest memory, hva at the same offset in the region, sequences set', async () => {
    const { records, result } = await traceWorkload({ sizeMiB: 1, runs: 2, invalidate: 'between' });
    const tid = result.tids[0];
    const regionHva = result.vms[0].regionHva;
    let maps = 0;
    let regionWrites = 0;
    const vmIds = new Set<string>();
    let lastSeq = -1;
    for (let i = 0; i < records.length; i++) {
      if (records.kind(i) !== Kind.MAP || records.tid(i) !== tid) continue;
      maps++;
      const gpa = records.gpa(i);
      const hva = records.hva(i);
      assert.equal(gpa % 4096, 0, `MAP gpa ${gpa.toString(16)} is not a frame address (gfn*4096)`);
      assert.ok(gpa < result.guestMemoryBytes, `gpa ${gpa.toString(16)} outside guest memory`);
      assert.notEqual(records.pfn(i), UNKNOWN);
      assert.notEqual(records.faultSeq(i), UNKNOWN, 'fault->mmu_seq missing');
      assert.notEqual(records.mmuSeq(i), UNKNOWN, 'VM mmu_invalidate_seq missing');
      assert.ok(records.faultSeq(i) <= records.mmuSeq(i), 'the fault snapshot cannot be newer than the VM sequence');
      assert.ok(records.inProgress(i) >= 0, 'in_progress should be known (via the vCPU)');
      assert.equal(records.vcpuId(i), 0);
      assert.equal(records.repeat(i), 1);
      vmIds.add(records.get(i).vmId);
      if (gpa >= result.regionGpa) {
        regionWrites++;
        assert.equal(hva - regionHva, gpa - result.regionGpa, `hva ${hva.toString(16)} is not at gpa ${gpa.toString(16)}'s offset in the region`);
        assert.ok(records.flags(i) & Flag.WRITE, 'the guest writes its region: a write fault');
      }
      assert.ok(records.mmuSeq(i) >= lastSeq, 'the VM sequence never goes back');
      lastSeq = records.mmuSeq(i);
    }
    assert.equal(maps, result.total.faults);
    assert.equal(regionWrites, 2 * 256);
    assert.equal(vmIds.size, 1, 'one VM, one vm_id');
    assert.ok(![...vmIds][0].startsWith('ffff'), 'vm_id must not look like a kernel pointer');
    assert.ok(lastSeq > 0, 'mmu_invalidate_seq should have moved after MADV_DONTNEED');
  });

  it('fault-entry records carry the vCPU, its VM, RIP and invalidation state, like the MAP records', async () => {
    // Under PVM no probe has the vCPU as an argument: these come from the thread's cached vCPU
    // (filled by the first record's reads), on other hosts from kvm:kvm_page_fault's argument.
    const { records, result } = await traceWorkload({ sizeMiB: 1, runs: 2, invalidate: 'between' });
    const tid = result.tids[0];
    const mapVm = new Set<string>(), faultVm = new Set<string>();
    let faults = 0;
    for (let i = 0; i < records.length; i++) {
      if (records.tid(i) !== tid) continue;
      const kind = records.kind(i);
      if (kind === Kind.MAP) mapVm.add(records.get(i).vmId);
      if (kind !== Kind.FAULT) continue;
      faults++;
      faultVm.add(records.get(i).vmId);
      assert.equal(records.vcpuId(i), 0, 'FAULT vcpu_id');
      assert.notEqual(records.get(i).rip, null, 'FAULT rip unknown');
      assert.notEqual(records.mmuSeq(i), UNKNOWN, 'FAULT mmu_seq unknown');
      assert.ok(records.inProgress(i) >= 0, 'FAULT in_progress unknown');
    }
    assert.ok(faults >= result.total.faults, `${faults} FAULT records for ${result.total.faults} faults`);
    assert.equal(mapVm.size, 1);
    assert.deepEqual([...faultVm], [...mapVm], 'FAULT and MAP records name different VMs');
  });

  it('with in-kernel coalescing the sum of repeat still equals pf_taken', async () => {
    const { records, result, dropped } = await traceWorkload({ sizeMiB: 1, runs: 1 }, { coalesce: true });
    assert.equal(dropped, 0);
    assert.equal(countKind(records, Kind.MAP, result.tids[0]), result.total.faults);
    for (let i = 0; i < records.length; i++) {
      // a folded record (COALESCED) stands for repeats of the same thread's previous record of
      // its kind, which went out on its own; anything else stands for itself alone
      if (records.repeat(i) > 1) assert.ok(records.flags(i) & Flag.COALESCED, 'repeat > 1 without COALESCED');
      if (!(records.flags(i) & Flag.COALESCED)) assert.equal(records.repeat(i), 1);
    }
  });
});
