/**
 * The probe catalogue (lib/probes.ts): one kallsyms lookup for the tracer and doctor, so a
 * function the compiler renamed (direct_page_fault.isra.0) is found by both, and the catalogue's
 * names are ones the addon's BTF scan keeps.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { runDoctor } from '../lib/doctor';
import { ProbeCatalogue } from '../lib/tracer';
import { kallsymsHasSymbol, parseKallsyms, PROBED_FUNCTIONS, readKallsyms, FENTRY_TARGETS } from '../lib/probes';

const FIXTURE_ROOT = path.join(__dirname, '..', '..', 'test', 'fixtures', 'kallsyms-isra');

describe('48 probe catalogue', () => {
  const text = readKallsyms(FIXTURE_ROOT);

  it('the fixture is read (root-relative /proc/kallsyms)', () => {
    assert.match(text, /direct_page_fault\.isra\.0/);
  });

  it('kallsyms: suffixed names resolve to their base, the plain name wins, only text symbols count', () => {
    const found = parseKallsyms(text, PROBED_FUNCTIONS);
    assert.deepEqual(Object.fromEntries(found), {
      kvm_mmu_faultin_pfn: 'kvm_mmu_faultin_pfn.constprop.0',
      direct_page_fault: 'direct_page_fault.isra.0', // not direct_page_fault.cold: that is no entry point
      kvm_tdp_page_fault: 'kvm_tdp_page_fault', // plain name after a .part one: the plain name wins
      kvm_mmu_page_fault: 'kvm_mmu_page_fault',
    });
    // paging64_page_fault_helper is another function; paging32_page_fault here is data (d), not code
    assert.equal(found.has('paging64_page_fault'), false);
    assert.equal(found.has('paging32_page_fault'), false);
  });

  it('doctor accepts the renamed functions the way the tracer does (same lookup, same answer)', async () => {
    const r = await runDoctor({ root: FIXTURE_ROOT, tryTracer: false });
    const tracerSees = parseKallsyms(text, PROBED_FUNCTIONS); // what the tracer hands to the addon
    for (const f of PROBED_FUNCTIONS) {
      assert.equal(r.probes.functions[f], tracerSees.has(f), `${f}: doctor and tracer disagree`);
    }
    assert.equal(r.probes.functions.direct_page_fault, true, 'direct_page_fault.isra.0 counts as direct_page_fault');
    assert.equal(r.probes.functions.kvm_mmu_faultin_pfn, true, 'kvm_mmu_faultin_pfn.constprop.0 counts');
    assert.deepEqual(r.probes.symbols, { kvm_mmu_faultin_pfn: 'kvm_mmu_faultin_pfn.constprop.0', direct_page_fault: 'direct_page_fault.isra.0' });
    const kprobes = r.checks.find((c) => c.id === 'kprobes')!;
    assert.match(kprobes.detail, /direct_page_fault \(as direct_page_fault\.isra\.0\)/);
  });

  it('kvm_running_vcpu (a per-cpu variable) is found by exact name, any symbol type', () => {
    assert.equal(kallsymsHasSymbol(text, 'kvm_running_vcpu'), true);
    assert.equal(kallsymsHasSymbol(text, 'kvm_running'), false);
  });

  it('every function the catalogue names passes the addon\'s BTF filter ("page_fault", "faultin_pfn" or "mmu_notifier" in the name)', () => {
    const names = [...PROBED_FUNCTIONS, ...FENTRY_TARGETS.flatMap((t) => t.candidates)];
    for (const n of names) assert.match(n, /page_fault|faultin_pfn|mmu_notifier/, `${n}: native/addon/tracer.cc ScanBtf would not keep it`);
  });

  // The addon's Tracer is reachable directly (bench/kvm.ts drives it): a catalogue or option of
  // the wrong shape once aborted the whole process (FATAL ERROR in Napi's string conversion, exit
  // 134). Run in a child so an abort fails this test instead of killing mocha.
  it('the addon\'s Tracer.open() rejects a missing or malformed catalogue with a TypeError naming the field, no abort', () => {
    const good = { mode: 'tracepoint', pid: 0, ringBytes: 1 << 20, wakeupBytes: 0, coalesce: false, exits: false,
      rawTracepoints: false, invalidationStacks: false, verbose: false, probes: new ProbeCatalogue().forMode('tracepoint') };
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['no probes', { ...good, probes: undefined }, /options\.probes must be the probe catalogue object/],
      ['notifier a number', { ...good, probes: { ...good.probes, notifier: 7 } }, /options\.probes\.notifier must be a string/],
      ['tracepoints not an array', { ...good, probes: { ...good.probes, tracepoints: {} } }, /options\.probes\.tracepoints must be an array/],
      ['a tracepoint without a name', { ...good, probes: { ...good.probes, tracepoints: [{ program: 'x', system: 'kvmmmu' }] } },
        /options\.probes\.tracepoints\[\]\.name must be a string/],
      ['symbols missing', { ...good, probes: { ...good.probes, symbols: null } }, /options\.probes\.symbols must be an object/],
      ['mode unknown', { ...good, mode: 'uprobe' }, /options\.mode must be 'kprobe', 'fentry' or 'tracepoint'/],
      ['ringBytes a string', { ...good, ringBytes: '1M' }, /options\.ringBytes must be a number/],
    ];
    const script = `
      const { native } = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'native'))});
      const out = [];
      for (const [name, o] of ${JSON.stringify(cases.map(([n, o]) => [n, o]))}) {
        const t = new (native().Tracer)();
        try { t.open(o); out.push([name, 'no error']); } catch (e) { out.push([name, e.constructor.name + ': ' + e.message]); }
        finally { t.close(); }
      }
      console.log(JSON.stringify(out));`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, `the child ended with ${r.status ?? r.signal}: ${r.stderr.slice(0, 600)}`);
    const got = new Map<string, string>(JSON.parse(r.stdout));
    for (const [name, , want] of cases) {
      assert.match(got.get(name) ?? '', /^TypeError: Tracer\.open: /, `${name}: ${got.get(name)}`);
      assert.match(got.get(name) ?? '', want, name);
    }
  });
});
