import assert from 'node:assert/strict';
import { native } from '../lib/native';
import { Flag, INVALIDATE_OFFSETS, Kind, RECORD_OFFSETS, RECORD_SIZE, RECORD_VERSION } from '../lib/record';
import { COUNTERS_OFFSETS, COUNTERS_SIZE, KVM_STATS } from '../lib/counters';
import { MEMSLOT_FLAGS, MEMSLOT_OFFSETS, MEMSLOT_SIZE } from '../lib/memslots';

describe('10 record layout', () => {
  it('TS offsets equal the C offsetof() values from events.h', () => {
    const rec = native().record;
    assert.equal(rec.size, RECORD_SIZE);
    assert.equal(rec.version, RECORD_VERSION);
    assert.deepEqual({ ...rec.offsets }, { ...RECORD_OFFSETS });
  });
  it("INVALIDATE_START's overlay (comm, stack_id, range_event) equals events.h, inside gpa..hva", () => {
    const rec = native().record;
    assert.deepEqual({ ...rec.invalidateOffsets }, { ...INVALIDATE_OFFSETS });
    assert.equal(INVALIDATE_OFFSETS.comm, RECORD_OFFSETS.gpa);
    assert.equal(INVALIDATE_OFFSETS.range_event + 4, RECORD_OFFSETS.hva + 8);
  });
  it('TS flag values equal KF_FLAG_*', () => {
    const flags = native().record.flags;
    assert.deepEqual({ ...flags }, { ...Flag });
  });
  it('TS kind values equal enum kvmfault_kind', () => {
    const kinds = native().record.kinds;
    for (const [name, value] of Object.entries(Kind)) assert.equal(kinds[name], value, name);
  });
  it('the counters record (struct kvmfault_vcpu_counters): TS offsets and statistic order equal events.h', () => {
    const c = native().counters;
    assert.equal(c.size, COUNTERS_SIZE);
    assert.deepEqual({ ...c.offsets }, { ...COUNTERS_OFFSETS });
    assert.equal(c.statCount, KVM_STATS.length);
    for (const [i, name] of KVM_STATS.entries()) assert.equal(c.stats[name.toUpperCase()], i, name);
  });
  it('the memslot record (struct kvmfault_memslot): TS offsets and flags equal events.h', () => {
    const m = native().memslots;
    assert.equal(m.size, MEMSLOT_SIZE);
    assert.deepEqual({ ...m.offsets }, { ...MEMSLOT_OFFSETS });
    assert.deepEqual({ ...m.flags }, { ...MEMSLOT_FLAGS });
  });
});
