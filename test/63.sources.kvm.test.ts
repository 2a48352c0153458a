/**
 * Invalidation sources on a real guest (issue 17): the built-in workload's own madvise / mmap
 * (remap) / mprotect invalidations of guest memory, counted per source against what the VMM did;
 * KSM merging the guest's identical pages for real (ksmd); compaction by
 * /proc/sys/vm/compact_memory where it moves guest pages; and the kernel cost of the attribution
 * (bpf_stats run time of the invalidation program with and without the stack). NUMA balancing
 * needs two NUMA nodes, which our machines do not have: test 48 checks it on stacks only.
 *
 * Only invalidations of the workload's guest region count: KVM's notifier fires for every
 * mapping change of this process (node's own heap too), so records are kept when their hva range
 * overlaps the region. Each distinct stack seen is printed as an `@@kernels` line (matrix.sh keeps
 * them in .cache/kernels/results/<kernel>.jsonl): the captured fixtures of test 48 come from there.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { Kind, UNKNOWN, type EventBatch } from '../lib/record';
import { MemslotIndex } from '../lib/memslots';
import { InvalidationSources, rangeEventName, recordComm, recordRangeEvent, recordStackId, SourceName } from '../lib/sources';
import { openTracer, Tracer, TracerError, TracerOptions } from '../lib/tracer';
import { runWorkload, WorkloadInfo, WorkloadOptions, WorkloadResult } from '../lib/workload';
import { requireKvm, traceSupport } from './helpers/host';
import { runDoctor } from '../lib/doctor';

function report(what: string, data: object): void {
  console.log(`@@kernels ${JSON.stringify({ kernel: release(), what, ...data })}`);
}

interface Region { start: number; end: number }

interface Traced {
  result: WorkloadResult | null;
  info: WorkloadInfo;
  /** in-region invalidations per source (sum of repeat) */
  bySource: Partial<Record<SourceName, number>>;
  /** in-region invalidations per VM id ('unknown' when the record has none) */
  byVm: Record<string, number>;
  /** comms seen per source (in region) */
  comms: Partial<Record<SourceName, string[]>>;
  /** range events (enum mmu_notifier_event names) seen per source, in region; none from the tracepoint */
  events: Partial<Record<SourceName, string[]>>;
  /** the library's own count (lib/sources.ts), VMs decided by memslot (lib/memslots.ts) */
  sources: InvalidationSources;
  /** the vm_id of the in-region records (16 hex digits), as the probes wrote them */
  recordVmIds: string[];
  /** kernel time (ts_ns) of the first and last in-region vmm-madvise record, and their count */
  madviseSpanNs: { first: number; last: number; n: number } | null;
  /** the memslot table as the tracer read it last (null: the iterator did not work) */
  memslots: MemslotIndex | null;
  memslotError: string | null;
  programs: { name: string; runCount: number; runTimeNs: number }[];
  dropped: number;
}

/** The workload's VM in the memslot table: the one VM of this process whose slots hold the region. */
function workloadVmId(t: Traced): string {
  assert.ok(t.memslots, `no memslot table: ${t.memslotError}`);
  const region = t.info.vms[0].regionHva;
  const mine = t.memslots.vms.filter((v) => v.pids.includes(t.info.pid) && v.slots.some((s) => s.hva <= region && s.hva + s.size > region));
  assert.equal(mine.length, 1, `VMs of pid ${t.info.pid} holding the region: ${JSON.stringify(t.memslots.vms)}`);
  return mine[0].vmId;
}

/**
 * Runs the workload in this process under a tracer (tracepoint mode; every process when pid is
 * not given, so kernel threads are seen) and attributes the invalidations of its guest region.
 */
async function traceSources(workload: WorkloadOptions, tracerOptions: TracerOptions,
  during?: (t: Tracer, seen: () => Traced) => void): Promise<Traced & { mode: string; probes: string[] }> {
  const tracer = await openTracer({ mode: 'tracepoint', ...tracerOptions });
  const probes = tracer.probes.filter((p) => p.attached).map((p) => p.name);
  const sources = new InvalidationSources((id) => tracer.stack(id), tracer.memslots());
  const regions: Region[] = [];
  let info: WorkloadInfo | null = null;
  const out: Traced = { result: null, info: null as unknown as WorkloadInfo, bySource: {}, byVm: {}, comms: {}, events: {}, sources,
    recordVmIds: [], madviseSpanNs: null, memslots: null, memslotError: null, programs: [], dropped: 0 };
  const printed = new Set<number>();
  // records that came before onStart said where the guest region is (the ring can be read first)
  const early: { batch: EventBatch; i: number }[] = [];
  const tally = (batch: EventBatch, i: number): void => {
    const s = batch.rangeStart(i), e = batch.rangeEnd(i);
    if (!regions.some((r) => s < r.end && e > r.start)) return;
    const attribution = sources.decide(batch, i).attribution;
    const n = batch.repeat(i);
    out.bySource[attribution.source] = (out.bySource[attribution.source] ?? 0) + n;
    if (attribution.source === 'vmm-madvise') {
      const ts = batch.tsNs(i);
      const sp = (out.madviseSpanNs ??= { first: ts, last: ts, n: 0 });
      sp.first = Math.min(sp.first, ts);
      sp.last = Math.max(sp.last, ts);
      sp.n += n;
    }
    const lo = batch.vmIdLo(i), hi = batch.vmIdHi(i);
    const vm = lo === 0xffffffff && hi === 0xffffffff ? 'unknown' : 'known';
    out.byVm[vm] = (out.byVm[vm] ?? 0) + n;
    const hex = hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
    if (vm === 'known' && !out.recordVmIds.includes(hex)) out.recordVmIds.push(hex);
    const comm = recordComm(batch, i) ?? '?';
    const list = (out.comms[attribution.source] ??= []);
    if (!list.includes(comm)) list.push(comm);
    const ev = rangeEventName(recordRangeEvent(batch, i) ?? UNKNOWN);
    if (ev) {
      const evs = (out.events[attribution.source] ??= []);
      if (!evs.includes(ev)) evs.push(ev);
    }
    const id = recordStackId(batch, i);
    if (id >= 0 && !printed.has(id)) {
      printed.add(id);
      report('invalidation stack', { source: attribution.source, comm, stackId: id, frames: sources.stacks()[String(id)] ?? null });
    }
  };
  const onBatch = (batch: EventBatch): void => {
    sources.add(batch);  // resolves each new stack id while the tracer's stack map is open
    let kept: EventBatch | null = null;
    for (let i = 0; i < batch.length; i++) {
      if (batch.kind(i) !== Kind.INVALIDATE_START) continue;
      if (regions.length) {
        tally(batch, i);
      } else {
        kept ??= batch.copy();
        early.push({ batch: kept, i });
      }
    }
  };
  const stop = new AbortController();
  const drain = (async () => {
    for await (const batch of tracer.events({ signal: stop.signal })) onBatch(batch);
  })();
  try {
    const wl = runWorkload({
      ...workload,
      onStart: (i) => {
        info = i;
        for (const vm of i.vms) regions.push({ start: vm.regionHva, end: vm.regionHva + i.options.sizeBytes });
        // the VM exists and has its memory now: the table the assertions name the VM from
        out.memslots = tracer.memslots().refresh();
        for (const r of early.splice(0)) tally(r.batch, r.i);
        workload.onStart?.(i);
      },
    });
    const timer = during ? setInterval(() => during(tracer, () => out), 100) : null;
    try {
      out.result = await wl.catch((e: Error) => {
        if (e.name === 'AbortError') return null;
        throw e;
      });
    } finally {
      if (timer) clearInterval(timer);
    }
    await new Promise((r) => setTimeout(r, 300)); // the ring's tail timer delivers the last records
    stop.abort();
    await drain;
    const st = tracer.stats();
    out.programs = st.programs;
    out.dropped = st.dropped;
    out.memslotError = tracer.memslots().error;
  } finally {
    stop.abort();
    tracer.close();
    await drain.catch(() => undefined);
  }
  assert.ok(info, 'the workload never started');
  out.info = info;
  return { ...out, mode: tracer.mode, probes };
}

/** A sysfs / procfs value set for the test and put back after. */
function setting(path: string): { set(v: string): void; restore(): void; get(): string } {
  const before = readFileSync(path, 'utf8').trim();
  return { set: (v) => writeFileSync(path, v), restore: () => writeFileSync(path, before), get: () => readFileSync(path, 'utf8').trim() };
}

/**
 * The workload with MADV_MERGEABLE guest memory while KSM runs (ksm/run = 1, fast scans),
 * traced until `enough` says so (or 240 s); the burst keeps the VM alive between its runs while
 * ksmd scans. KSM's settings are put back after (run = 2 first: unmerge what was merged).
 */
async function traceKsmMerging(tracerOptions: TracerOptions, enough: (seen: Traced) => boolean): Promise<Awaited<ReturnType<typeof traceSources>>> {
  let ksm: ReturnType<typeof setting>[];
  try {
    ksm = ['run', 'pages_to_scan', 'sleep_millisecs'].map((f) => setting(`/sys/kernel/mm/ksm/${f}`));
  } catch (e) {
    throw new Error(`KSM is not available in this kernel (${(e as Error).message}): CONFIG_KSM off`);
  }
  const [run, pages, sleep] = ksm;
  const ac = new AbortController();
  try {
    pages.set('4096');
    sleep.set('10');
    run.set('1');
    const deadline = Date.now() + 240_000;
    return await traceSources({ sizeMiB: 8, runs: 2, burst: 50_000_000, mergeable: true, signal: ac.signal }, tracerOptions,
      (_tracer, seen) => { if (enough(seen()) || Date.now() > deadline) ac.abort(); });
  } finally {
    ac.abort();
    run.set('2');
    for (const x of ksm) x.restore();
  }
}

describe('63 invalidation sources on a real guest (the built-in workload)', function () {
  this.timeout(900_000);
  before(function () { requireKvm(this); });

  it("the VMM's own madvise(MADV_DONTNEED): every invalidation of guest memory is vmm-madvise, as many as the VMM made, tied to its VM", async () => {
    const BURST = 2000;
    const t = await traceSources({ sizeMiB: 4, runs: 2, burst: BURST, invalidate: 'between', invalidateMethod: 'dontneed' }, { pid: process.pid });
    const made = BURST + t.result!.runs.reduce((a, r) => a + r.invalidations, 0);
    report('madvise sources', { made, bySource: t.bySource, byVm: t.byVm, comms: t.comms, dropped: t.dropped });
    assert.equal(t.dropped, 0);
    assert.deepEqual(t.bySource, { 'vmm-madvise': made });
    assert.deepEqual(t.byVm, { known: made }, 'the VMM\'s own invalidations carry its VM');
  });

  it("counted by memslot (tracepoint mode): the VMM's madvise of guest memory is its VM's, exactly; its madvise of its own heap (in no memslot) is no VM's, counted apart", async () => {
    const BURST = 2000, HEAP = 3000;
    const t = await traceSources({ sizeMiB: 4, runs: 2, burst: BURST, heapBurst: HEAP, invalidate: 'between', invalidateMethod: 'dontneed' }, { pid: process.pid });
    const made = BURST + t.result!.runs.reduce((a, r) => a + r.invalidations, 0);
    const vmId = workloadVmId(t);
    const snap = t.sources.snapshot();
    const mine = snap.find((v) => v.vmId === vmId);
    const match = t.sources.matchStats();
    const outside = t.sources.outsideGuestMemory();
    report('memslot match', { mode: t.mode, made, heapBurst: t.result!.runs[1].heapBurst, vmId, recordVmIds: t.recordVmIds,
      vms: snap, outside, match, memslots: t.memslots?.vms, dropped: t.dropped });
    assert.equal(t.mode, 'tracepoint');
    assert.equal(t.dropped, 0);
    assert.equal(t.result!.runs[1].heapBurst, HEAP);
    assert.deepEqual(t.recordVmIds, [vmId], 'the memslot iterator and the probes hash the VM to one id (the tracer\'s key)');
    assert.equal(mine?.sources.find((s) => s.source === 'vmm-madvise')?.count, made, `the VM's madvise count: ${JSON.stringify(mine)}`);
    assert.deepEqual(snap.filter((v) => v.vmId !== vmId).map((v) => v.vmId), [], 'invalidations counted for another VM or none');
    const heap = outside.find((s) => s.source === 'vmm-madvise')?.count ?? 0;
    assert.ok(heap >= HEAP, `outside guest memory: ${heap} madvise invalidations, the heap burst made ${HEAP}`);
    assert.equal(match.unchecked + match.ambiguous, 0, JSON.stringify(match));
    assert.equal(t.sources.invalidations, match.matched + match.outside, 'every invalidation is either the VM\'s or outside');
  });

  it("the madvise rate the records give the VM (its memslot-matched count over the records' own time span) equals the burst's true rate", async () => {
    // watch computes its per-frame rate from wall-clock frames (sourceRates between snapshots); in
    // this guest the test process's event loop is starved while the burst runs (single-threaded
    // TCG: one progress timer fired in a 6.9 s burst), so frames there say nothing. The records'
    // own kernel timestamps do: the VM's madvise count by memslot over their span.
    const BURST = 200_000;
    const t = await traceSources({ sizeMiB: 2, runs: 2, burst: BURST }, { pid: process.pid });
    const vmId = workloadVmId(t);
    const run = t.result!.runs[1];
    const counted = t.sources.snapshot().find((v) => v.vmId === vmId)?.sources.find((s) => s.source === 'vmm-madvise')?.count ?? 0;
    const span = t.madviseSpanNs;
    const recordsRate = span ? ((span.n - 1) * 1e9) / (span.last - span.first) : 0;
    const trueRate = (run.burst * 1000) / run.burstMs;
    report('madvise rate', { counted, burst: run.burst, recordsPerSec: recordsRate, workloadPerSec: trueRate, burstMs: run.burstMs,
      spanMs: span ? (span.last - span.first) / 1e6 : null, dropped: t.dropped });
    assert.equal(t.dropped, 0);
    assert.equal(counted, BURST, "the VM's madvise count by memslot");
    assert.ok(span && span.n === BURST, `in-region madvise records: ${span?.n}`);
    assert.ok(Math.abs(recordsRate - trueRate) / trueRate < 0.05, `records ${recordsRate.toFixed(0)}/s vs the workload's ${trueRate.toFixed(0)}/s`);
  });

  for (const [method, source] of [['remap', 'vmm-munmap'], ['mprotect', 'vmm-mprotect']] as const) {
    it(`the VMM's own ${method === 'remap' ? 'mmap(MAP_FIXED) over guest memory' : 'mprotect'}: every invalidation of guest memory is ${source}`, async () => {
      const t = await traceSources({ sizeMiB: 4, runs: 3, invalidate: 'between', invalidateMethod: method }, { pid: process.pid });
      const calls = t.result!.runs.reduce((a, r) => a + r.invalidations, 0);
      report(`${method} sources`, { calls, bySource: t.bySource, byVm: t.byVm, comms: t.comms, dropped: t.dropped });
      assert.equal(t.dropped, 0);
      assert.deepEqual(Object.keys(t.bySource), [source]);
      // remap: one notifier call per mmap(MAP_FIXED); mprotect: the workload's call is a pair
      // (PROT_READ, then back to read-write), each an invalidation of the populated window
      assert.equal(t.bySource[source], method === 'remap' ? calls : 2 * calls);
    });
  }

  it('KSM for real: ksmd merging the guest\'s identical pages is attributed to ksm (by its stack) and, through the memslots, to the VM (the tracepoint names none)', async function () {
    const t = await traceKsmMerging({}, (seen) => (seen.bySource.ksm ?? 0) >= 16);
    const vmId = workloadVmId(t);
    const snap = t.sources.snapshot();
    const ksmOf = (id: string): number => snap.find((v) => v.vmId === id)?.sources.find((s) => s.source === 'ksm')?.count ?? 0;
    report('ksm sources', { bySource: t.bySource, byVm: t.byVm, comms: t.comms, vmId, vms: snap, match: t.sources.matchStats(), dropped: t.dropped });
    assert.ok((t.bySource.ksm ?? 0) >= 16, `ksmd invalidated ${t.bySource.ksm ?? 0} guest pages (sources seen in the region: ${JSON.stringify(t.bySource)})`);
    assert.deepEqual(t.comms.ksm, ['ksmd']);
    assert.ok(ksmOf(vmId) >= t.bySource.ksm!, `ksm counted for the workload's VM: ${ksmOf(vmId)} of ${t.bySource.ksm} in its region`);
    assert.equal(ksmOf('unknown'), 0, 'ksmd invalidations left without a VM');
  });

  it('compaction by /proc/sys/vm/compact_memory: guest pages it migrates are attributed to compaction and to the VM (the writer is this process)', async function () {
    const ac = new AbortController();
    let compactions = 0;
    const t = await traceSources({ sizeMiB: 64, runs: 2, burst: 50_000_000, signal: ac.signal }, { pid: process.pid },
      (_tracer, seen) => {
        if ((seen().bySource.compaction ?? 0) > 0 || compactions >= 20) { ac.abort(); return; }
        compactions++;
        writeFileSync('/proc/sys/vm/compact_memory', '1');
      });
    report('compaction sources', { compactions, bySource: t.bySource, byVm: t.byVm, comms: t.comms, dropped: t.dropped });
    if (!t.bySource.compaction) {
      // nothing to fake: a guest with little fragmentation may not move these pages at all
      console.log(`      [skipped: ${compactions} writes to /proc/sys/vm/compact_memory moved no guest page (little fragmentation here); sources seen: ${JSON.stringify(t.bySource)}]`);
      this.skip();
    }
    assert.ok((t.byVm.known ?? 0) >= t.bySource.compaction!, 'compaction run by this process is tied to its VM');
  });

  for (const mode of ['kprobe', 'fentry'] as const) {
    // what this host offers decides the test (and its title): the notifier probe where the mode
    // exists; where it does not, the tracer refuses the mode and sources come from the tracepoint
    const m = mode === 'kprobe' ? traceSupport().kprobes : traceSupport().fentry;
    if (!m.available) {
      it(`${mode} mode: ${m.evidence} → openTracer refuses it (MODE_UNAVAILABLE), the notifier probe is not loaded; sources come from the tracepoint`, async () => {
        await assert.rejects(openTracer({ mode, pid: process.pid }), (e: TracerError) => {
          assert.equal(e.code, 'MODE_UNAVAILABLE', e.message);
          return true;
        });
        const t = await openTracer({ pid: process.pid });
        try {
          const on = t.probes.filter((p) => p.attached).map((p) => p.name);
          assert.ok(!on.some((p) => p.includes('notifier')), `a notifier probe attached in ${t.mode} mode: ${on.join(' ')}`);
          assert.ok(on.some((p) => p.includes('unmap_hva_range')), `no invalidation source attached in ${t.mode} mode: ${on.join(' ')}`);
        } finally {
          t.close();
        }
      });
      continue;
    }
    it(`${mode} mode (${m.evidence}): the notifier probe names the VM of ksmd's invalidations and the kernel's reason code (mmu_notifier_range.event)`, async function () {
      const t = await traceKsmMerging({ mode }, (seen) => (seen.bySource.ksm ?? 0) >= 16 && (seen.bySource['vmm-madvise'] ?? 0) >= 16);
      report(`${mode} notifier sources`, { mode: t.mode, probes: t.probes, bySource: t.bySource, byVm: t.byVm, comms: t.comms, events: t.events, dropped: t.dropped });
      assert.ok(t.probes.includes(mode === 'kprobe' ? 'kp_notifier_start' : 'fe_notifier_start'), `notifier probe not attached: ${t.probes.join(' ')}`);
      assert.ok(!t.probes.some((p) => p.includes('unmap_hva_range')), 'the tracepoint too: every invalidation would be counted twice');
      assert.ok((t.bySource.ksm ?? 0) >= 16, `ksmd invalidated ${t.bySource.ksm ?? 0} guest pages`);
      assert.equal(t.byVm.unknown ?? 0, 0, 'an invalidation of guest memory without its VM');
      // zap (MADV_DONTNEED) is MMU_NOTIFY_CLEAR; KSM's write protect / replace: CLEAR as well
      assert.deepEqual(t.events['vmm-madvise'], ['clear']);
      assert.ok(t.events.ksm && t.events.ksm.length > 0, 'no range event on the KSM records');
    });
  }

  // A running guest, as a VMM's is: in tracepoint mode the VMM's own invalidations are tied to
  // its VM through its vCPUs' faults and exits (a VMM whose vCPUs never enter KVM_RUN while
  // the sample runs stays "vm unknown" there; kprobe / fentry read the VM off the notifier).
  it("doctor --sources: a short live sample of the whole host names the VMM's madvise as what invalidates its running VM", async () => {
    const ac = new AbortController();
    let started = false;
    const wl = runWorkload({ sizeMiB: 8, duration: 60, invalidate: 'concurrent', invalidateMethod: 'dontneed', signal: ac.signal,
      onStart: () => { started = true; } })
      .catch((e: Error) => { if (e.name !== 'AbortError') throw e; return null; });
    try {
      while (!started) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 1000)); // runs and the invalidating thread going
      const doctor = await runDoctor({ tryTracer: false, sourcesSeconds: 3 });
      const check = doctor.checks.find((c) => c.id === 'invalidation-sources');
      report('doctor sources', { check, sample: doctor.sources });
      assert.ok(check && doctor.sources && !doctor.sources.error, `no sample: ${JSON.stringify(check)}`);
      const top = doctor.sources.vms[0];
      assert.notEqual(top.vmId, 'unknown');
      // with the guest writing while its pages are zapped, the vCPU thread's own copy-on-write of
      // the zero page (cow) may outnumber the madvise calls: both are this VM's
      const madvise = top.sources.find((x) => x.source === 'vmm-madvise');
      assert.ok(madvise && madvise.count > 0 && madvise.comm === 'node', JSON.stringify(top));
      // the frame that decided: do_madvise, madvise_vma_behavior, ... (kernels differ)
      assert.match(check.detail, /vmm-madvise [0-9.]+\/s \(\w*madvise\w*, node\)/);
    } finally {
      ac.abort();
      await wl;
    }
  });

  it('cost of the attribution in the kernel: the invalidation program with and without the stack id (bpf_stats)', async function () {
    const stats = setting('/proc/sys/kernel/bpf_stats_enabled');
    const BURST = 20_000;
    const cost: Record<string, { runs: number; ns: number }> = {};
    try {
      stats.set('1');
      for (const stacks of [false, true, false, true]) {
        const t = await traceSources({ sizeMiB: 2, runs: 2, burst: BURST }, { pid: process.pid, invalidationStacks: stacks });
        const p = t.programs.find((x) => /unmap_hva_range/.test(x.name));
        assert.ok(p && p.runCount >= BURST, `the invalidation program ran ${p?.runCount} times`);
        const key = stacks ? 'stack' : 'noStack';
        cost[key] = { runs: (cost[key]?.runs ?? 0) + p.runCount, ns: (cost[key]?.ns ?? 0) + p.runTimeNs };
      }
    } finally {
      stats.restore();
    }
    const per = (k: string) => cost[k].ns / cost[k].runs;
    report('invalidation attribution cost', { nsPerInvalidationWithStack: per('stack'), nsPerInvalidationWithout: per('noStack'),
      stackNs: per('stack') - per('noStack'), runs: cost });
    assert.ok(per('stack') > 0 && per('noStack') > 0);
  });
});
