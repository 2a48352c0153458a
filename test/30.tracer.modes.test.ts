/**
 * openTracer on the running kernel: option validation, and what each attach mode does HERE.
 * Each mode test first finds out what this kernel offers (test/helpers/host.ts traceSupport():
 * kprobes from sysfs/tracefs, fentry by trying it, the KVM tracepoints from tracefs/kallsyms),
 * says it in its title, and asserts the outcome that follows: the mode attaches and reports its
 * probes where it is supported, fails with a clear TracerError where not, and `auto` picks
 * fentry > kprobe > tracepoint as available. Every probe must be reported, attached or with a
 * reason. (6.18 PVM machines: tracepoints only, fentry refused with EPERM, no kprobes; the
 * Debian 6.1/6.12 kernels of the QEMU matrix: all three, auto picks fentry.)
 */
import assert from 'node:assert/strict';
import { openTracer, ProbeStatus, resolveTracerOptions, Tracer, TracerError } from '../lib/tracer';
import { requireBpf, traceSupport } from './helpers/host';

describe('30 tracer options (validated in TypeScript)', () => {
  const bad: [unknown, ErrorConstructor, string][] = [
    [null, TypeError, 'openTracer: options must be an object'],
    [{ mode: 3 }, TypeError, 'openTracer: options.mode must be a string, got number'],
    [{ mode: 'ebpf' }, RangeError, "openTracer: options.mode must be one of 'auto', 'tracepoint', 'kprobe', 'fentry', got 'ebpf'"],
    [{ pid: '12' }, TypeError, 'openTracer: options.pid must be a number, got string'],
    [{ pid: 0 }, RangeError, 'openTracer: options.pid must be a process id (integer 1 .. 2^30-1), got 0'],
    [{ pid: 1.5 }, RangeError, 'openTracer: options.pid must be a process id (integer 1 .. 2^30-1), got 1.5'],
    [{ ringBytes: 5000 }, RangeError, 'openTracer: options.ringBytes must be a power of two from 4096 to 1073741824, got 5000'],
    [{ ringBytes: 2048 }, RangeError, 'openTracer: options.ringBytes must be a power of two from 4096 to 1073741824, got 2048'],
    [{ ringBytes: 4096, wakeupBytes: 4096 }, RangeError,
      'openTracer: options.wakeupBytes must be an integer from 0 to ringBytes - 1 (4095), got 4096'],
    [{ coalesce: 1 }, TypeError, 'openTracer: options.coalesce must be a boolean, got number'],
    [{ signal: {} }, TypeError, 'openTracer: options.signal must be an AbortSignal'],
  ];
  for (const [opts, type, message] of bad) {
    it(`rejects ${JSON.stringify(opts)}`, async () => {
      await assert.rejects(openTracer(opts as never), (e: Error) => e instanceof type && e.message === message);
    });
  }
  it('defaults: auto, all processes, 16 MiB ring, wakeup at 256 KiB, no coalescing', () => {
    const o = resolveTracerOptions({});
    assert.deepEqual([o.mode, o.pid, o.ringBytes, o.wakeupBytes, o.coalesce, o.exits], ['auto', 0, 16 << 20, 256 << 10, false, false]);
    assert.equal(resolveTracerOptions({ ringBytes: 4096 }).wakeupBytes, 1024);
  });
});

describe('30 tracer modes on this kernel (root, real BPF)', function () {
  this.timeout(30_000);
  const here = traceSupport();
  let tracer: Tracer | null = null;
  before(requireBpf);
  afterEach(() => {
    tracer?.close();
    tracer = null;
  });

  const FAULTIN = /^kvm(_mmu)?_faultin_pfn$/;
  const HANDLER = /^(kvm_tdp_page_fault|direct_page_fault|paging64_page_fault|paging32_page_fault|kvm_mmu_page_fault)$/;
  const MAP_TP = /^(tp_btf|raw_tp):kvmmmu:kvm_mmu_spte_requested$/;
  const INVAL_TP = /^(tp_btf|raw_tp):kvm:kvm_unmap_hva_range$/;

  function attachedPoints(t: Tracer): string[] {
    return t.probes.filter((p) => p.attached).map((p) => p.point);
  }
  function everyProbeAccounted(probes: ProbeStatus[]): void {
    for (const p of probes) assert.ok(p.attached || (p.reason && p.reason.length > 0), `${p.name} (${p.point}): neither attached nor a reason`);
  }
  /** RET_PF_* come from this kernel's BTF, not from a table in our code */
  function retPfFromBtf(t: Tracer): void {
    assert.equal(typeof t.retPf.RET_PF_RETRY, 'number');
    assert.equal(typeof t.retPf.RET_PF_FIXED, 'number');
    assert.ok(t.retPf.RET_PF_FIXED > t.retPf.RET_PF_RETRY);
  }
  function statsSane(t: Tracer): void {
    const s = t.stats();
    assert.equal(s.dropped, 0);
    assert.ok(s.programs.length >= 4, `per-program stats: ${JSON.stringify(s.programs)}`);
  }
  /** kprobe/fentry mode: entry + exit probe on the fault-in function and on a fault handler, the MAP tracepoint, INVALIDATE */
  function handlerModeAttached(t: Tracer, entry: string, exit: string): void {
    const on = attachedPoints(t);
    const fn = (p: string, kind: string): string | null => (p.startsWith(kind + ':') ? p.slice(kind.length + 1) : null);
    const faultin = on.map((p) => fn(p, entry)).find((f) => f !== null && FAULTIN.test(f));
    assert.ok(faultin, `no ${entry} on the fault-in function attached: ${on.join(', ')}`);
    assert.ok(on.includes(`${exit}:${faultin}`), `${exit}:${faultin} not attached: ${on.join(', ')}`);
    const handler = on.map((p) => fn(p, entry)).find((f) => f !== null && HANDLER.test(f));
    assert.ok(handler, `no ${entry} on a fault handler attached: ${on.join(', ')}`);
    assert.ok(on.includes(`${exit}:${handler}`), `${exit}:${handler} not attached: ${on.join(', ')}`);
    assert.ok(on.some((p) => MAP_TP.test(p)), `the MAP tracepoint (kvm_mmu_spte_requested) not attached: ${on.join(', ')}`);
    // INVALIDATE_START: the notifier itself where it can be probed (it has the VM and the reason
    // code), else the tracepoint; never both (every invalidation would be counted twice)
    const notifier = on.includes(`${entry}:kvm_mmu_notifier_invalidate_range_start`);
    assert.ok(notifier || on.some((p) => INVAL_TP.test(p)), `neither the notifier probe nor the INVALIDATE tracepoint (kvm_unmap_hva_range) attached: ${on.join(', ')}`);
    assert.ok(!(notifier && on.some((p) => INVAL_TP.test(p))), `both the notifier probe and the INVALIDATE tracepoint attached: ${on.join(', ')}`);
  }

  // ---- tracepoint ----
  if (here.tracepoints.available) {
    it(`tracepoint mode: ${here.tracepoints.evidence} → loads, attaches the fault-entry, map, invalidation and exit probes, reports each`, async () => {
      tracer = await openTracer({ mode: 'tracepoint' });
      assert.equal(tracer.mode, 'tracepoint');
      const names = tracer.probes.map((p) => p.point);
      for (const tp of ['kvmmmu:kvm_mmu_pagetable_walk', 'kvm:kvm_page_fault', 'kvmmmu:kvm_mmu_spte_requested',
        'kvm:kvm_unmap_hva_range', 'kvm:kvm_exit']) {
        const probe: ProbeStatus | undefined = tracer.probes.find((x) => x.point.endsWith(':' + tp));
        assert.ok(probe, `no probe reported for ${tp}: ${names.join(', ')}`);
        assert.equal(probe.attached, true, `${probe.point} not attached: ${probe.reason}`);
        assert.match(probe.point, /^(tp_btf|raw_tp):/);
      }
      everyProbeAccounted(tracer.probes);
      retPfFromBtf(tracer);
      assert.ok(tracer.modeNotes.some((n) => n.startsWith('tracepoint mode')), tracer.modeNotes.join('\n'));
      statsSane(tracer);
    });
  } else {
    it(`tracepoint mode: ${here.tracepoints.evidence} → a clear TracerError, every probe with a reason`, async () => {
      await assert.rejects(openTracer({ mode: 'tracepoint' }), (e: TracerError) => {
        assert.ok(e instanceof TracerError, String(e));
        assert.ok(['NO_KVM', 'NO_KVM_PROBES'].includes(e.code), `${e.code}: ${e.message}`);
        for (const p of e.probes) assert.ok(!p.attached && p.reason, `${p.point}: no reason`);
        return true;
      });
    });
  }

  // ---- kprobe ----
  if (here.kprobes.available) {
    it(`kprobe mode: ${here.kprobes.evidence} → attaches kprobe + kretprobe on the fault-in function and a fault handler, reports each`, async () => {
      tracer = await openTracer({ mode: 'kprobe' });
      assert.equal(tracer.mode, 'kprobe');
      handlerModeAttached(tracer, 'kprobe', 'kretprobe');
      // the fault-entry tracepoints are tracepoint mode's: the handler probes give FAULT here
      assert.ok(!attachedPoints(tracer).some((p) => /kvm_mmu_pagetable_walk|kvm:kvm_page_fault$/.test(p)));
      everyProbeAccounted(tracer.probes);
      retPfFromBtf(tracer);
      assert.ok(tracer.modeNotes.some((n) => n.startsWith('kprobe mode')), tracer.modeNotes.join('\n'));
      statsSane(tracer);
    });
  } else {
    it(`kprobe mode: ${here.kprobes.evidence} → fails with MODE_UNAVAILABLE naming the missing kernel feature, every probe with a reason`, async () => {
      await assert.rejects(openTracer({ mode: 'kprobe' }), (e: TracerError) => {
        assert.ok(e instanceof TracerError, String(e));
        assert.equal(e.code, 'MODE_UNAVAILABLE');
        assert.match(e.message, /^kprobes not available on this kernel \(CONFIG_KPROBES off: .*kprobe_events missing\)$/);
        assert.ok(e.probes.some((p) => p.point.startsWith('kprobe:') && /faultin/.test(p.point)), JSON.stringify(e.probes));
        assert.ok(e.probes.some((p) => p.point.startsWith('kretprobe:')));
        for (const p of e.probes) assert.ok(!p.attached && p.reason, `${p.point}: no reason`);
        return true;
      });
    });
  }

  // ---- fentry ----
  if (here.fentry.available) {
    it(`fentry mode: ${here.fentry.evidence} → attaches fentry + fexit on the fault-in function and a fault handler, reports each`, async () => {
      tracer = await openTracer({ mode: 'fentry' });
      assert.equal(tracer.mode, 'fentry');
      handlerModeAttached(tracer, 'fentry', 'fexit');
      everyProbeAccounted(tracer.probes);
      retPfFromBtf(tracer);
      assert.ok(tracer.modeNotes.some((n) => n.startsWith('fentry mode')), tracer.modeNotes.join('\n'));
      statsSane(tracer);
    });
  } else if (here.fentry.error?.errno === 1) {
    it(`fentry mode: ${here.fentry.evidence} → fails with MODE_UNAVAILABLE "fentry: Operation not permitted" and a remedy`, async () => {
      await assert.rejects(openTracer({ mode: 'fentry' }), (e: TracerError) => {
        assert.ok(e instanceof TracerError, String(e));
        assert.equal(e.code, 'MODE_UNAVAILABLE', e.message);
        assert.equal(e.errno, 1);
        assert.match(e.message, /^fentry: Operation not permitted .*use mode 'tracepoint' or 'kprobe'/);
        assert.doesNotMatch(e.message, /ulimit/);
        assert.ok(e.probes.some((p) => /^fentry:kvm(_mmu)?_faultin_pfn$/.test(p.point)), JSON.stringify(e.probes));
        for (const p of e.probes) assert.ok(!p.attached && p.reason);
        return true;
      });
    });
  } else {
    // refused for another reason (e.g. the functions are not in BTF): still a clear, typed error
    it(`fentry mode: ${here.fentry.evidence} → fails with a clear MODE_UNAVAILABLE/NO_KVM_PROBES TracerError, every probe with a reason`, async () => {
      await assert.rejects(openTracer({ mode: 'fentry' }), (e: TracerError) => {
        assert.ok(e instanceof TracerError, String(e));
        assert.ok(['MODE_UNAVAILABLE', 'NO_KVM_PROBES'].includes(e.code), `not a clear "unavailable": ${e.code}: ${e.message}`);
        assert.match(e.message, /^(fentry: |none of this mode's KVM fault probe points)/);
        assert.ok(e.probes.some((p) => p.point.startsWith('fentry:')), JSON.stringify(e.probes));
        for (const p of e.probes) assert.ok(!p.attached && p.reason, `${p.point}: no reason`);
        return true;
      });
    });
  }

  // ---- auto ----
  const autoWhy = [here.fentry, here.kprobes, here.tracepoints].map((m) => m.evidence).join(', ');
  it(`auto: ${autoWhy} → picks ${here.autoMode ?? 'nothing (no mode works)'} and says why the modes before it were not used`, async () => {
    assert.ok(here.autoMode, `no attach mode is available here: ${autoWhy}`);
    tracer = await openTracer({ mode: 'auto' });
    assert.equal(tracer.mode, here.autoMode);
    const tried = (['fentry', 'kprobe', 'tracepoint'] as const).slice(0, ['fentry', 'kprobe', 'tracepoint'].indexOf(here.autoMode));
    // one "not used" note per mode tried before, in order, with that mode's own error
    assert.deepEqual(tracer.modeNotes.slice(0, tried.length).map((n) => n.split(':')[0]), tried.map((m) => `${m} not used`),
      tracer.modeNotes.join('\n'));
    assert.ok(!tracer.modeNotes.slice(tried.length).some((n) => / not used: /.test(n)), tracer.modeNotes.join('\n'));
    if (tried.includes('fentry')) {
      assert.ok(tracer.modeNotes[0].startsWith(`fentry not used: ${here.fentry.error?.message ?? ''}`), tracer.modeNotes[0]);
      if (here.fentry.error?.errno === 1) assert.match(tracer.modeNotes[0], /^fentry not used: fentry: Operation not permitted/);
    }
    if (tried.includes('kprobe')) {
      assert.match(tracer.modeNotes[tried.indexOf('kprobe')], /^kprobe not used: kprobes not available on this kernel/);
    }
    // the probes of the modes not used are listed too, with the reason
    for (const m of tried) {
      const prefix = m === 'fentry' ? /^(fentry|fexit):/ : /^(kprobe|kretprobe):/;
      const theirs = tracer.probes.filter((p) => prefix.test(p.point));
      assert.ok(theirs.length > 0, `no ${m} probes listed`);
      for (const p of theirs) assert.ok(!p.attached && p.reason, `${p.point}: attached or no reason`);
    }
    if (here.autoMode === 'tracepoint') {
      assert.ok(tracer.probes.some((p) => p.attached && p.point.endsWith('kvm_mmu_spte_requested')));
    } else {
      handlerModeAttached(tracer, here.autoMode === 'fentry' ? 'fentry' : 'kprobe', here.autoMode === 'fentry' ? 'fexit' : 'kretprobe');
    }
    everyProbeAccounted(tracer.probes);
  });

  it('close() is idempotent and events() after close is a CLOSED error', async () => {
    tracer = await openTracer({ mode: 'tracepoint', ringBytes: 65536 });
    tracer.close();
    tracer.close();
    assert.equal(tracer.closed, true);
    assert.throws(() => tracer!.events(), (e: TracerError) => e.code === 'CLOSED');
  });

  it('an aborted signal closes the tracer', async () => {
    const ac = new AbortController();
    tracer = await openTracer({ mode: 'tracepoint', ringBytes: 65536, signal: ac.signal });
    ac.abort();
    assert.equal(tracer.closed, true);
    await assert.rejects(openTracer({ signal: ac.signal }), (e: TracerError) => e.code === 'ABORTED');
  });
});
