/**
 * openTracer on the running kernel: option validation, and what each attach mode does HERE
 * (6.18 PVM machines: tracepoints work; kprobes are not configured; fentry is refused with
 * EPERM). Every probe must be reported, attached or with a reason.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { openTracer, ProbeStatus, resolveTracerOptions, Tracer, TracerError } from '../lib/tracer';
import { requireBpf } from './helpers/host';

const kprobesHere =
  existsSync('/sys/bus/event_source/devices/kprobe/type') || existsSync('/sys/kernel/tracing/kprobe_events');

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
  let tracer: Tracer | null = null;
  before(requireBpf);
  afterEach(() => {
    tracer?.close();
    tracer = null;
  });

  it('tracepoint: loads, attaches the fault-entry, map, invalidation and exit probes, reports each', async () => {
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
    for (const p of tracer.probes) assert.ok(p.attached || (p.reason && p.reason.length > 0), `${p.name}: neither attached nor a reason`);
    // RET_PF_* come from this kernel's BTF, not from a table in our code
    assert.equal(typeof tracer.retPf.RET_PF_RETRY, 'number');
    assert.equal(typeof tracer.retPf.RET_PF_FIXED, 'number');
    assert.ok(tracer.retPf.RET_PF_FIXED > tracer.retPf.RET_PF_RETRY);
    assert.ok(tracer.modeNotes.some((n) => n.startsWith('tracepoint mode')), tracer.modeNotes.join('\n'));
    const s = tracer.stats();
    assert.equal(s.dropped, 0);
    assert.ok(s.programs.length >= 4, `per-program stats: ${JSON.stringify(s.programs)}`);
  });

  it('kprobe: fails with MODE_UNAVAILABLE naming the missing kernel feature, every probe with a reason', async function () {
    if (kprobesHere) {
      throw new Error('this kernel HAS kprobes (kprobe PMU or kprobe_events present): this test is written for the ' +
        'project machines (no CONFIG_KPROBES); run the kprobe mode test on a kprobe kernel instead');
    }
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

  it('fentry: fails with MODE_UNAVAILABLE "fentry: Operation not permitted" and a remedy', async () => {
    await assert.rejects(openTracer({ mode: 'fentry' }), (e: TracerError) => {
      assert.ok(e instanceof TracerError, String(e));
      assert.equal(e.code, 'MODE_UNAVAILABLE', e.message);
      assert.equal(e.errno, 1);
      assert.match(e.message, /^fentry: Operation not permitted .*use mode 'tracepoint' or 'kprobe'/);
      assert.doesNotMatch(e.message, /ulimit/);
      assert.ok(e.probes.some((p) => p.point === 'fentry:kvm_mmu_faultin_pfn'), JSON.stringify(e.probes));
      for (const p of e.probes) assert.ok(!p.attached && p.reason);
      return true;
    });
  });

  it('auto: picks tracepoint and says why fentry and kprobe were not used', async () => {
    tracer = await openTracer({ mode: 'auto' });
    assert.equal(tracer.mode, 'tracepoint');
    assert.match(tracer.modeNotes[0], /^fentry not used: fentry: Operation not permitted/);
    assert.match(tracer.modeNotes[1], /^kprobe not used: kprobes not available on this kernel/);
    // the probes of the modes not used are listed too, with the reason
    const kp = tracer.probes.filter((p) => p.point.startsWith('kprobe:'));
    const fe = tracer.probes.filter((p) => p.point.startsWith('fentry:'));
    assert.ok(kp.length > 0 && fe.length > 0);
    for (const p of [...kp, ...fe]) assert.ok(!p.attached && p.reason);
    assert.ok(tracer.probes.some((p) => p.attached && p.point.endsWith('kvm_mmu_spte_requested')));
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
