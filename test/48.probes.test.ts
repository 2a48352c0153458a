/**
 * The probe catalogue (lib/probes.ts): one kallsyms lookup for the tracer and doctor, so a
 * function the compiler renamed (direct_page_fault.isra.0) is found by both, and the catalogue's
 * names are ones the addon's BTF scan keeps.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { runDoctor } from '../lib/doctor';
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
});
