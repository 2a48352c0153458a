/**
 * Invalidations matched against the VMs' memslots (lib/memslots.ts, lib/sources.ts), without a
 * guest: the iterator's record format, the overlap lookup (against a brute-force check), and the
 * per-VM counts it changes: tracepoint records decided by range, kernel threads tied to the one
 * VM whose memory they touched, ambiguous ranges as 'unknown', VMM memory outside every memslot
 * counted separately and never for a VM.
 */
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { analyzeFile, formatReport } from '../lib/analyze';
import { CaptureWriter } from '../lib/capture';
import { StaleFaultDetector } from '../lib/detector';
import { RET_PF_6_1 } from '../lib/kernels';
import {
  MATCH_AMBIGUOUS, MATCH_NONE, MEMSLOT_FLAGS, MEMSLOT_OFFSETS, MEMSLOT_SIZE, MemslotCache, MemslotIndex, type MemslotVm,
  parseMemslotRecords,
} from '../lib/memslots';
import { FaultMetrics } from '../lib/metrics';
import { Flag, Kind, RecordWriter } from '../lib/record';
import { InvalidationSources, type StackLookup, writeStacksFile } from '../lib/sources';

const PAGE = 4096;
const GIB = 1 << 30;

/** iterator output: [pid, fd, vmId, hva, npages, asId, slotId, flags] per record */
function memslotBuffer(rows: [number, number, bigint, number, number, number, number, number][]): Buffer {
  const b = Buffer.alloc(rows.length * MEMSLOT_SIZE);
  rows.forEach(([pid, fd, vm, hva, npages, as, id, flags], i) => {
    const at = i * MEMSLOT_SIZE;
    b.writeUInt32LE(pid, at + MEMSLOT_OFFSETS.pid);
    b.writeUInt32LE(fd, at + MEMSLOT_OFFSETS.fd);
    b.writeBigUInt64LE(vm, at + MEMSLOT_OFFSETS.vm_id);
    b.writeBigUInt64LE(BigInt(hva), at + MEMSLOT_OFFSETS.userspace_addr);
    b.writeBigUInt64LE(BigInt(npages), at + MEMSLOT_OFFSETS.npages);
    b.writeBigUInt64LE(0n, at + MEMSLOT_OFFSETS.base_gfn);
    b.writeUInt16LE(as, at + MEMSLOT_OFFSETS.as_id);
    b.writeInt16LE(id, at + MEMSLOT_OFFSETS.slot_id);
    b.writeUInt32LE(flags, at + MEMSLOT_OFFSETS.flags);
  });
  return b;
}

function vm(vmId: bigint, pid: number, slots: [number, number][], truncated = false): MemslotVm {
  return {
    vmId: vmId.toString(16).padStart(16, '0'), pids: [pid], truncated, shapeUnknown: false,
    slots: slots.map(([hva, size], i) => ({ hva, size, baseGfn: 0, asId: 0, slotId: i })),
  };
}

/** A fixed table as a MemslotSource (refreshOnMiss counts its calls). */
function fixed(vms: MemslotVm[] | null): { source: MemslotCache; reads: () => number } {
  let reads = 0;
  const source = new MemslotCache(() => { reads++; return vms; }, 0);
  return { source, reads: () => reads };
}

// two VMMs (pids 100, 200) with their VMs; VM B's second slot lies at the same hva as VM A's
const A = 0xaan, B = 0xbbn;
const TABLE = [
  vm(A, 100, [[0x7f0000000000, 2 * GIB], [0x7f1000000000, 64 * 1024]]),
  vm(B, 200, [[0x7e0000000000, 1 * GIB], [0x7f0000100000, 1 << 20]]),
];

interface Inv { pid: number; vm?: bigint; byPid: boolean; comm: string; start: number; end: number; repeat?: number; stack?: number }
function records(rows: Inv[]): RecordWriter {
  const w = new RecordWriter();
  for (const r of rows) {
    const i = w.begin(Kind.INVALIDATE_START);
    w.setU32(i, 'pid', r.pid);
    w.setU32(i, 'tid', r.pid);
    if (r.vm !== undefined) w.setU64(i, 'vm_id', r.vm);
    w.setFlags(i, r.byPid ? Flag.VM_BY_PID : 0);
    w.setU64(i, 'range_start', r.start);
    w.setU64(i, 'range_end', r.end);
    w.setU32(i, 'repeat', r.repeat ?? 1);
    w.setInvalidator(i, { comm: r.comm, ...(r.stack === undefined ? {} : { stackId: r.stack }) });
  }
  return w;
}

const MADVISE: StackLookup = (id) => (id === 1 ? ['kvm_mmu_notifier_invalidate_range_start+0x10', 'zap_page_range_single+0x80', 'madvise_vma_behavior+0x1', 'do_madvise+0x2'] : null);

function counts(src: InvalidationSources): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const v of src.snapshot()) out[v.vmId] = Object.fromEntries(v.sources.map((s) => [s.source, s.count]));
  return out;
}

describe('49 memslots: invalidations counted for a VM only inside its memory', () => {
  it('iterator records: slots per VM, fds of one VM merged (each slot once), the summary flags kept', () => {
    const vms = parseMemslotRecords(memslotBuffer([
      [100, 7, A, 0x7f0000000000, 512, 0, 0, 0],
      [100, 7, A, 0x7f0000000000, 512, 1, 0, 0],         // SMM address space: the same memory again
      [100, 7, A, 0, 0, 0, -1, MEMSLOT_FLAGS.SUMMARY],
      [300, 4, A, 0x7f0000000000, 512, 0, 0, 0],         // the VM fd passed to another process
      [300, 4, A, 0, 0, 0, -1, MEMSLOT_FLAGS.SUMMARY | MEMSLOT_FLAGS.TRUNCATED],
      [200, 9, B, 0, 0, 0, -1, MEMSLOT_FLAGS.SUMMARY],   // a VM without memory (an empty VM)
    ]));
    assert.equal(vms.length, 2);
    const a = vms.find((v) => v.vmId === '00000000000000aa')!;
    assert.deepEqual(a.pids, [100, 300]);
    assert.deepEqual(a.slots.map((s) => [s.hva, s.size, s.asId]), [[0x7f0000000000, 512 * PAGE, 0], [0x7f0000000000, 512 * PAGE, 1]]);
    assert.equal(a.truncated, true);
    const b = vms.find((v) => v.vmId === '00000000000000bb')!;
    assert.deepEqual([b.pids, b.slots.length, b.truncated], [[200], 0, false]);
  });

  it('overlap: [start, end) against slot edges; own VMs first; several VMs -> ambiguous; none -> none', () => {
    const ix = new MemslotIndex(TABLE);
    const a = ix.indexOf('00000000000000aa'), b = ix.indexOf('00000000000000bb');
    const s = 0x7f1000000000, e = s + 64 * 1024;
    assert.equal(ix.match(s - PAGE, s, 100, 'own'), MATCH_NONE, 'ends where the slot starts');
    assert.equal(ix.match(e, e + PAGE, 100, 'own'), MATCH_NONE, 'starts where the slot ends');
    assert.equal(ix.match(e - 1, e, 100, 'own'), a, 'last byte');
    assert.equal(ix.match(s - PAGE, s + 1, 100, 'own'), a, 'first byte');
    assert.equal(ix.match(0, 2 ** 47, 100, 'own'), a, 'a range covering all: own scope sees only pid 100\'s VM');
    assert.equal(ix.match(s, e, 200, 'own'), MATCH_NONE, "VM A's memory is not pid 200's own");
    assert.equal(ix.match(s, e, 200, 'any'), a, 'any scope: the one VM there');
    // VM A's big slot and VM B's slot at 0x7f0000100000 cover the same addresses
    assert.equal(ix.match(0x7f0000100000, 0x7f0000101000, 1, 'any'), MATCH_AMBIGUOUS, 'a kernel thread: two VMs');
    assert.equal(ix.match(0x7f0000100000, 0x7f0000101000, 200, 'any'), b, "pid 200's own VM first");
    assert.equal(ix.match(0x7f0000100000, 0x7f0000101000, 200, 'own'), b);
    assert.equal(ix.match(0x100000, 0x200000, 1, 'any'), MATCH_NONE);
    assert.equal(ix.match(5, 5, 100, 'any'), MATCH_NONE, 'empty range');
  });

  it('overlap agrees with a brute-force check on random tables and ranges', () => {
    let seed = 12345;
    const rnd = (n: number): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed % n; };
    for (let round = 0; round < 200; round++) {
      const vms: MemslotVm[] = [];
      for (let v = 0; v < 1 + rnd(5); v++) {
        const slots: [number, number][] = [];
        for (let k = 0; k < rnd(6); k++) slots.push([rnd(1000) * PAGE, (1 + rnd(300)) * PAGE]);
        vms.push(vm(BigInt(v + 1), 100 + rnd(3), slots));
      }
      const ix = new MemslotIndex(vms);
      for (let q = 0; q < 50; q++) {
        const start = rnd(1300) * PAGE, end = start + (1 + rnd(100)) * PAGE, pid = 100 + rnd(4);
        const hit = (list: number[]): number => (list.length === 0 ? MATCH_NONE : list.length === 1 ? list[0] : MATCH_AMBIGUOUS);
        const over = vms.map((x, i) => (x.slots.some((s) => s.hva < end && s.hva + s.size > start) ? i : -1)).filter((i) => i >= 0);
        const own = over.filter((i) => vms[i].pids.includes(pid));
        assert.equal(ix.match(start, end, pid, 'own'), hit(own), `own round ${round} q ${q}`);
        assert.equal(ix.match(start, end, pid, 'any'), own.length ? hit(own) : hit(over), `any round ${round} q ${q}`);
        for (let i = 0; i < vms.length; i++) assert.equal(ix.overlapsVm(i, start, end), over.includes(i));
      }
    }
  });

  it("tracepoint records: the VMM's madvise counts for its VM inside guest memory, outside it for no VM; kernel threads go to the VM they touched", () => {
    const { source } = fixed(TABLE);
    const src = new InvalidationSources(MADVISE, source);
    src.add(records([
      // pid 100's madvise inside VM A (the tracepoint guessed VM A by pid)
      { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x7f0000000000, end: 0x7f0000001000, repeat: 5, stack: 1 },
      // pid 100's madvise of its heap: no memslot -> outside, not VM A's
      { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x5500000000, end: 0x5500004000, repeat: 3, stack: 1 },
      // pid 100's madvise at an address that is VM B's memory in pid 200: not VM B's (own scope)
      { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x7e0000000000, end: 0x7e0000001000, stack: 1 },
      // ksmd (no VM from the tracepoint): VM B's first slot only
      { pid: 42, byPid: true, comm: 'ksmd', start: 0x7e0000200000, end: 0x7e0000201000, repeat: 7 },
      // khugepaged over an address both VMs have: unknown VM
      { pid: 43, byPid: true, comm: 'khugepaged', start: 0x7f0000100000, end: 0x7f0000300000, repeat: 2 },
      // kswapd outside every VM: outside
      { pid: 44, byPid: true, comm: 'kswapd0', start: 0x1000, end: 0x2000 },
    ]).batch());
    assert.deepEqual(counts(src), {
      '00000000000000aa': { 'vmm-madvise': 5 },
      '00000000000000bb': { ksm: 7 },
      unknown: { 'thp-collapse': 2 },
    });
    assert.deepEqual(src.outsideGuestMemory().map((s) => [s.source, s.count]), [['vmm-madvise', 4], ['reclaim', 1]]);
    const m = src.matchStats();
    assert.deepEqual([m.enabled, m.vms, m.matched, m.ambiguous, m.outside, m.unchecked], [true, 2, 12, 2, 5, 0]);
    assert.equal(src.invalidations, m.matched + m.ambiguous + m.outside + m.unchecked, 'nothing lost');
  });

  it('notifier records (the VM known): inside its memslots counted, outside them not, whatever the pid', () => {
    const src = new InvalidationSources(MADVISE, fixed(TABLE).source);
    src.add(records([
      { pid: 100, vm: A, byPid: false, comm: 'kvmfault-wl', start: 0x7f1000000000, end: 0x7f1000001000, stack: 1 },
      { pid: 100, vm: A, byPid: false, comm: 'kvmfault-wl', start: 0x7e0000000000, end: 0x7e0000001000, stack: 1 }, // B's hva, A's mm
      { pid: 42, vm: B, byPid: false, comm: 'ksmd', start: 0x7f0000100000, end: 0x7f0000101000 },
    ]).batch());
    assert.deepEqual(counts(src), { '00000000000000aa': { 'vmm-madvise': 1 }, '00000000000000bb': { ksm: 1 } });
    assert.deepEqual(src.outsideGuestMemory().map((s) => [s.source, s.count]), [['vmm-madvise', 1]]);
  });

  it('a VM not in the table: read again (rate-limited) and matched; a truncated VM or no table: counted as the record says (unchecked)', () => {
    let now = 0;
    let table: MemslotVm[] = [TABLE[0]];
    let reads = 0;
    const cache = new MemslotCache(() => { reads++; return table; }, 1000, () => now);
    const src = new InvalidationSources(MADVISE, cache);
    const inB = { pid: 200, vm: B, byPid: true, comm: 'kvmfault-wl', start: 0x7e0000000000, end: 0x7e0000001000, stack: 1 };
    src.add(records([inB]).batch());            // first read; miss; refresh at once is not due (same instant)
    assert.equal(reads, 1);
    // the table predates VM B: counted as the record says (unchecked), never as outside guest memory
    assert.deepEqual(src.outsideGuestMemory(), []);
    assert.deepEqual([counts(src)['00000000000000bb'], src.matchStats().unchecked], [{ 'vmm-madvise': 1 }, 1]);
    // a VMM the table does not know, its VM not yet named (no fault seen): unchecked too
    src.add(records([{ pid: 300, byPid: true, comm: 'qemu', start: 0x5500000000, end: 0x5500001000, stack: 1 }]).batch());
    assert.deepEqual([src.outsideGuestMemory(), src.matchStats().unchecked], [[], 2]);
    table = TABLE;                               // VM B appears
    now = 999;
    src.add(records([inB]).batch());
    assert.equal(reads, 1, 'not again within a second');
    now = 1000;
    src.add(records([inB, inB]).batch());
    assert.equal(reads, 2, 'read again once on the miss, then the table has VM B');
    assert.deepEqual(counts(src)['00000000000000bb'], { 'vmm-madvise': 4 }, '2 unchecked (table older than VM B) + 2 matched');

    // VM B shuts down: its last records still reach user space after the next read
    table = [TABLE[0]];
    now = 3000;
    assert.equal(cache.refresh()!.indexOf('00000000000000bb'), 1, 'kept within the grace period');
    now = 6001;
    assert.equal(cache.refresh()!.indexOf('00000000000000bb'), -1, 'gone after it');

    const cut = new InvalidationSources(MADVISE, fixed([vm(A, 100, [[0x7f0000000000, PAGE]], true)]).source);
    cut.add(records([{ pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x5500000000, end: 0x5500001000, stack: 1 }]).batch());
    assert.deepEqual([counts(cut), cut.matchStats().unchecked], [{ '00000000000000aa': { 'vmm-madvise': 1 } }, 1]);

    const none = new InvalidationSources(MADVISE, fixed(null).source);
    none.add(records([{ pid: 42, byPid: true, comm: 'ksmd', start: 0x7e0000200000, end: 0x7e0000201000 }]).batch());
    assert.deepEqual(counts(none), { unknown: { ksm: 1 } });
    assert.deepEqual([none.matchStats().enabled, none.matchStats().unchecked, none.matchStats().error], [false, 1, 'the memslot iterator is not available']);
  });

  it('a capture with the memslots beside it: analyze counts by memslot as watch does; without them, as the records say', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmfault-49-'));
    try {
      const file = path.join(dir, 'inv.kvmf');
      const w = CaptureWriter.create(file, { meta: { hostKernel: '6.12.0' }, flushMs: 0 });
      w.write(records([
        { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x7f0000000000, end: 0x7f0000001000, repeat: 5, stack: 1 },
        { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x5500000000, end: 0x5500004000, repeat: 3, stack: 1 },
        { pid: 42, byPid: true, comm: 'ksmd', start: 0x7e0000200000, end: 0x7e0000201000, repeat: 7 },
      ]).batch());
      w.close();
      writeStacksFile(file, { 1: MADVISE(1)! }, TABLE);
      const r = await analyzeFile(file);
      const inv = r.invalidationSources!;
      assert.deepEqual(inv.vms.map((v) => [v.vmId, v.total]), [['00000000000000bb', 7], ['00000000000000aa', 5]]);
      assert.deepEqual(inv.outsideGuestMemory?.map((s) => [s.source, s.count]), [['vmm-madvise', 3]]);
      assert.match(formatReport(r), /outside guest memory \(in no VM's memslots, counted for no VM\): vmm-madvise 3/);
      writeStacksFile(file, { 1: MADVISE(1)! });
      const old = (await analyzeFile(file)).invalidationSources!;
      assert.deepEqual(old.vms.map((v) => [v.vmId, v.total]), [['00000000000000aa', 8], ['unknown', 7]]);
      assert.equal(old.outsideGuestMemory, null);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('metrics: outside guest memory by source and the match results', async () => {
    const src = new InvalidationSources(MADVISE, fixed(TABLE).source);
    src.add(records([
      { pid: 100, vm: A, byPid: true, comm: 'kvmfault-wl', start: 0x5500000000, end: 0x5500004000, repeat: 3, stack: 1 },
      { pid: 42, byPid: true, comm: 'ksmd', start: 0x7e0000200000, end: 0x7e0000201000, repeat: 7 },
    ]).batch());
    const m = new FaultMetrics({
      detector: new StaleFaultDetector({ retPf: RET_PF_6_1 }),
      tracerStats: () => ({ submitted: 0, dropped: 0, bpfStatsEnabled: false, programs: [], stream: null }),
      kernel: { release: '6.12.0', affected: false }, mode: 'tracepoint', sources: () => src.snapshot(),
      outsideGuestMemory: () => src.outsideGuestMemory(), memslotMatch: () => src.matchStats(),
    });
    const text = await m.registry.metrics();
    assert.match(text, /^kvmfault_invalidations_total\{vm="00000000000000bb",source="ksm"\} 7$/m);
    assert.doesNotMatch(text, /kvmfault_invalidations_total\{vm="00000000000000aa"/);
    assert.match(text, /^kvmfault_invalidations_outside_guest_memory_total\{source="vmm-madvise"\} 3$/m);
    assert.match(text, /^kvmfault_invalidations_memslot_match_total\{result="matched"\} 7$/m);
    assert.match(text, /^kvmfault_invalidations_memslot_match_total\{result="outside"\} 3$/m);
  });
});
