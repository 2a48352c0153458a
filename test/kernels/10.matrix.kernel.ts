/**
 * Kernel-matrix tests: run INSIDE a QEMU guest booted on a Debian kernel by
 * scripts/kernels/matrix.sh (`npm run test:kernels`), never by the normal `npm test` glob
 * (the file name ends in .kernel.ts, not .test.ts). The guest has kprobes, fentry, module BTF
 * (/sys/kernel/btf/kvm) and nested SVM, so the tracer's kprobe mode can be proven for real.
 *
 * Ground truth: the built-in workload (lib/workload.ts) runs a real nested KVM guest in this
 * process and returns KVM's own counters (KVM_GET_STATS_FD pf_taken / pf_fixed); every count
 * below is checked against them, not against a constant.
 *
 * Each test prints one `@@kernels {...}` JSON line with what it measured; matrix.sh collects
 * them into the kernel x mode table (docs/kernels.md is written from those).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { StaleFaultDetector } from '../../lib/detector';
import type { RetPfTable } from '../../lib/kernels';
import { Kind, RecordBatch, UNKNOWN, UNKNOWN_RET } from '../../lib/record';
import { recordComm, recordRangeEvent, recordStackId } from '../../lib/sources';
import { openTracer, Tracer, TracerMode, TracerError } from '../../lib/tracer';
import { runWorkload, WorkloadResult } from '../../lib/workload';

const RECORD_BYTES = 120;
/** x86-64 user space ends below 2^47: any hva above is a kernel value (e.g. KVM_HVA_ERR_BAD) */
const USER_HVA_END = 2 ** 47;
const KIND_NAMES: Record<number, string> = {
  [Kind.FAULT]: 'fault', [Kind.FAULTIN]: 'faultin', [Kind.FAULTIN_RET]: 'faultin_ret', [Kind.MAP]: 'map',
  [Kind.FAULT_RET]: 'fault_ret', [Kind.INVALIDATE_START]: 'invalidate', [Kind.EXIT]: 'exit',
};

function report(what: string, data: object): void {
  console.log(`@@kernels ${JSON.stringify({ kernel: release(), what, ...data })}`);
}

/** Fails (never skips) when this is not a kernel the matrix can test, saying exactly why. */
function requireMatrixKernel(): void {
  if (process.getuid?.() !== 0) throw new Error('kernel-matrix tests need root (run them through `npm run test:kernels`)');
  if (!existsSync('/sys/kernel/btf/vmlinux')) throw new Error(`kernel ${release()} has no BTF (/sys/kernel/btf/vmlinux)`);
  if (!existsSync('/dev/kvm')) {
    throw new Error(`kernel ${release()}: no /dev/kvm (scripts/kernels/matrix.sh loads kvm + kvm_amd; run the tests through it)`);
  }
  if (!existsSync('/sys/kernel/tracing/kprobe_events') && !existsSync('/sys/kernel/debug/tracing/kprobe_events')) {
    throw new Error(`kernel ${release()} has no kprobes (no kprobe_events in tracefs): these tests exist to prove the ` +
      'kprobe mode on kernels that have them; run them under QEMU with `npm run test:kernels`');
  }
}

/** The tracer's RET_PF_* table in the detector's shape (names without the prefix). */
function detectorRetPf(t: Tracer): RetPfTable {
  const out: Record<string, number> = {};
  for (const [name, value] of Object.entries(t.retPf)) out[name.replace(/^RET_PF_/, '')] = value;
  assert.ok('RETRY' in out && 'FIXED' in out && 'SPURIOUS' in out, `RET_PF_* incomplete in BTF: ${JSON.stringify(t.retPf)}`);
  return out as unknown as RetPfTable;
}

interface Traced {
  mode: TracerMode;
  tracer: Tracer;
  records: RecordBatch;
  workload: WorkloadResult;
  dropped: number;
  submitted: number;
}

/** A describable failure to open: the code, the message, and every probe with its reason. */
function describeOpenError(mode: string, e: unknown): string {
  const err = e as TracerError;
  const probes = (err.probes ?? []).map((p) => `  ${p.point}: ${p.attached ? 'attached' : p.reason}`).join('\n');
  const log = err.libbpfLog ? `\nlibbpf (last 1500 chars):\n${err.libbpfLog.slice(-1500)}` : '';
  return `openTracer({ mode: '${mode}' }) failed on ${release()}: ${err.code ?? ''} ${err.message}\n${probes}${log}`;
}

/**
 * Runs the workload (2 runs over 1 MiB, MADV_DONTNEED between them, so the VM's sequence moves
 * and every page faults twice) under a tracer in `mode` filtered to this process, and keeps a
 * copy of every record.
 */
async function traceWorkload(mode: TracerMode): Promise<Traced> {
  let tracer: Tracer;
  try {
    tracer = await openTracer({ mode, pid: process.pid, ringBytes: 16 << 20 });
  } catch (e) {
    throw new Error(describeOpenError(mode, e));
  }
  const stop = new AbortController();
  const kept: Uint8Array[] = [];
  const drain = (async () => {
    for await (const batch of tracer.events({ signal: stop.signal })) {
      const copy = batch.copy() as RecordBatch;
      for (let i = 0; i < copy.length; i++) kept.push(copy.recordBytes(i));
    }
  })();
  try {
    const workload = await runWorkload({ pattern: 'sequential', sizeMiB: 1, runs: 2, invalidate: 'between' });
    // every submitted record has reached us once the reader has seen `submitted` of them
    const deadline = Date.now() + 5000;
    while (kept.length < tracer.stats().submitted - tracer.stats().dropped && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    stop.abort();
    await drain;
    const stats = tracer.stats();
    const bytes = new Uint8Array(kept.length * RECORD_BYTES);
    kept.forEach((r, i) => bytes.set(r, i * RECORD_BYTES));
    return {
      mode, tracer, records: RecordBatch.fromPacked(bytes), workload, dropped: stats.dropped, submitted: stats.submitted,
    };
  } finally {
    stop.abort();
    tracer.close();
    await drain.catch(() => undefined);
  }
}

function countKinds(b: RecordBatch, tids: Set<number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < b.length; i++) {
    if (b.kind(i) !== Kind.INVALIDATE_START && !tids.has(b.tid(i))) continue;
    const k = KIND_NAMES[b.kind(i)] ?? `kind${b.kind(i)}`;
    out[k] = (out[k] ?? 0) + b.repeat(i);
  }
  return out;
}

function retNames(b: RecordBatch, kind: number, t: Tracer): Record<string, number> {
  const byValue = new Map(Object.entries(t.retPf).map(([k, v]) => [v, k]));
  const out: Record<string, number> = {};
  for (let i = 0; i < b.length; i++) {
    if (b.kind(i) !== kind) continue;
    const r = b.ret(i);
    const name = r === UNKNOWN_RET ? 'unknown' : byValue.get(r) ?? `undecoded(${r})`;
    out[name] = (out[name] ?? 0) + b.repeat(i);
  }
  return out;
}

/** Which record fields are known (not the sentinel) per kind: the "what each kind carries" table. */
function fieldsCarried(b: RecordBatch): Record<string, string[]> {
  const fields: [string, (i: number) => boolean][] = [
    ['gpa', (i) => b.gpa(i) !== UNKNOWN], ['error_code', (i) => b.errorCode(i) !== UNKNOWN],
    ['hva', (i) => b.hva(i) !== UNKNOWN], ['pfn', (i) => b.pfn(i) !== UNKNOWN],
    ['rip', (i) => !(b.ripLo(i) === 0xffffffff && b.ripHi(i) === 0xffffffff)],
    ['vcpu_id', (i) => b.vcpuId(i) !== UNKNOWN], ['mmu_seq', (i) => b.mmuSeq(i) !== UNKNOWN],
    ['fault_seq', (i) => b.faultSeq(i) !== UNKNOWN], ['in_progress', (i) => b.inProgress(i) !== UNKNOWN],
    ['range', (i) => b.rangeStart(i) !== UNKNOWN], ['ret', (i) => b.ret(i) !== UNKNOWN_RET],
  ];
  const out: Record<string, string[]> = {};
  for (const kind of [Kind.FAULT, Kind.FAULTIN, Kind.FAULTIN_RET, Kind.MAP, Kind.FAULT_RET, Kind.INVALIDATE_START]) {
    const idx: number[] = [];
    for (let i = 0; i < b.length; i++) if (b.kind(i) === kind) idx.push(i);
    // INVALIDATE_START's gpa..hva bytes are the who-invalidated overlay (events.h)
    const own: [string, (i: number) => boolean][] = kind !== Kind.INVALIDATE_START ? fields : [
      ...fields.filter(([n]) => n !== 'gpa' && n !== 'error_code' && n !== 'hva'),
      ['comm', (i) => recordComm(b, i) !== null], ['stack_id', (i) => recordStackId(b, i) >= 0],
      ['range_event', (i) => recordRangeEvent(b, i) !== null],
    ];
    if (idx.length) out[KIND_NAMES[kind]] = own.filter(([, known]) => idx.every(known)).map(([n]) => n);
  }
  return out;
}

/** The fault-in symbol this kernel has (resolved like the tracer must: from kallsyms). */
function kallsymsKvm(): Set<string> {
  const names = new Set<string>();
  for (const line of readFileSync('/proc/kallsyms', 'latin1').split('\n')) {
    if (!line.endsWith('[kvm]')) continue;
    names.add(line.split(/\s+/)[2]);
  }
  return names;
}

describe(`kernel matrix on ${release()}: attach modes`, function () {
  this.timeout(120_000);
  before(requireMatrixKernel);

  it('kprobe mode loads and attaches kprobe + kretprobe on the fault-in function and a fault handler', async () => {
    const syms = kallsymsKvm();
    const faultin = ['kvm_mmu_faultin_pfn', 'kvm_faultin_pfn', '__kvm_faultin_pfn'].find((s) => syms.has(s));
    assert.ok(faultin, `no fault-in function in kallsyms [kvm] on ${release()}`);
    let t: Tracer;
    try {
      t = await openTracer({ mode: 'kprobe' });
    } catch (e) {
      throw new Error(describeOpenError('kprobe', e));
    }
    try {
      report('probes', { mode: 'kprobe', probes: t.probes.map((p) => ({ point: p.point, attached: p.attached, reason: p.reason })) });
      assert.equal(t.mode, 'kprobe');
      const on = new Set(t.probes.filter((p) => p.attached).map((p) => p.point));
      assert.ok(on.has(`kprobe:${faultin}`), `kprobe:${faultin} not attached: ${JSON.stringify(t.probes)}`);
      assert.ok(on.has(`kretprobe:${faultin}`), `kretprobe:${faultin} not attached`);
      assert.ok([...on].some((p) => /^kprobe:(kvm_tdp_page_fault|direct_page_fault|paging64_page_fault)$/.test(p)),
        `no fault-handler kprobe attached: ${[...on].join(', ')}`);
      assert.ok(on.has('tp_btf:kvmmmu:kvm_mmu_spte_requested') || on.has('raw_tp:kvmmmu:kvm_mmu_spte_requested'),
        'MAP tracepoint not attached');
    } finally {
      t.close();
    }
  });

  it('tracepoint mode loads and attaches (tp_btf on the kvm module BTF)', async () => {
    let t: Tracer;
    try {
      t = await openTracer({ mode: 'tracepoint' });
    } catch (e) {
      throw new Error(describeOpenError('tracepoint', e));
    }
    try {
      report('probes', { mode: 'tracepoint', probes: t.probes.map((p) => ({ point: p.point, attached: p.attached, reason: p.reason })) });
      assert.equal(t.mode, 'tracepoint');
      const on = t.probes.filter((p) => p.attached).map((p) => p.point);
      assert.ok(on.some((p) => p.endsWith('kvm:kvm_page_fault')), `kvm:kvm_page_fault (the SVM fault entry) not attached: ${on}`);
      assert.ok(on.some((p) => p.endsWith('kvm_mmu_spte_requested')), `kvm_mmu_spte_requested not attached: ${on}`);
    } finally {
      t.close();
    }
  });

  it("auto picks the first mode of fentry -> kprobe -> tracepoint that works alone, and it is not 'tracepoint'", async () => {
    const works: Record<string, string> = {};
    for (const mode of ['fentry', 'kprobe'] as const) {
      try {
        (await openTracer({ mode })).close();
        works[mode] = 'ok';
      } catch (e) {
        works[mode] = `${(e as TracerError).code}: ${(e as Error).message.split('\n')[0]}`;
      }
    }
    let t: Tracer;
    try {
      t = await openTracer({ mode: 'auto' });
    } catch (e) {
      throw new Error(describeOpenError('auto', e));
    }
    try {
      report('auto', { picked: t.mode, alone: works, notes: t.modeNotes });
      const expected = works.fentry === 'ok' ? 'fentry' : works.kprobe === 'ok' ? 'kprobe' : 'tracepoint';
      assert.equal(t.mode, expected, `auto picked ${t.mode}; alone: ${JSON.stringify(works)}`);
      assert.notEqual(t.mode, 'tracepoint',
        `kprobes exist on ${release()} but auto fell back to tracepoint: fentry ${works.fentry}; kprobe ${works.kprobe}`);
    } finally {
      t.close();
    }
  });
});

for (const mode of ['kprobe', 'tracepoint'] as const) {
  describe(`kernel matrix on ${release()}: ${mode} mode on a real nested guest`, function () {
    this.timeout(120_000);
    let traced: Traced | null = null;
    let setupError: Error | null = null;
    let tids = new Set<number>();

    before(async function () {
      requireMatrixKernel();
      try {
        traced = await traceWorkload(mode);
        tids = new Set(traced.workload.tids);
        const r = traced.records;
        report('trace', {
          mode, host: traced.workload.host, pfTaken: traced.workload.total.vcpu.pf_taken,
          pfFixed: traced.workload.total.vcpu.pf_fixed, kinds: countKinds(r, tids), dropped: traced.dropped,
          faultRet: retNames(r, Kind.FAULT_RET, traced.tracer), faultinRet: retNames(r, Kind.FAULTIN_RET, traced.tracer),
          carried: fieldsCarried(r), retPf: traced.tracer.retPf, rangeIsGfn: traced.tracer.rangeIsGfn,
        });
      } catch (e) {
        setupError = e as Error;  // every test below fails with it (mocha would report only the hook)
      }
    });
    function got(): Traced {
      if (setupError) throw setupError;
      return traced!;
    }

    it('the guest ran natively (nested SVM) and KVM counted one fault per touched page', () => {
      const { workload } = got();
      assert.equal(workload.host, 'svm', `expected the nested guest on SVM, got ${workload.host} (${workload.hostDetail})`);
      assert.equal(workload.total.pagesVerified, 2 * workload.pagesPerRun);
      assert.ok(workload.total.vcpu.pf_taken >= 2 * workload.pagesPerRun,
        `pf_taken ${workload.total.vcpu.pf_taken} < 2 x ${workload.pagesPerRun} pages`);
    });

    it('records = KVM fault counters exactly, nothing dropped, nothing from other processes', () => {
      const { records, workload, dropped } = got();
      const pfTaken = workload.total.vcpu.pf_taken;
      const kinds = countKinds(records, tids);
      assert.equal(dropped, 0, 'the ring dropped records');
      for (let i = 0; i < records.length; i++) assert.equal(records.pid(i), process.pid);
      assert.equal(kinds.map, workload.total.vcpu.pf_fixed, `MAP records ${kinds.map} != pf_fixed`);
      assert.equal(kinds.fault, pfTaken, `FAULT records ${kinds.fault} != pf_taken ${pfTaken}`);
      if (mode === 'kprobe') {
        assert.equal(kinds.fault_ret, pfTaken, `FAULT_RET records ${kinds.fault_ret} != pf_taken ${pfTaken}`);
        assert.equal(kinds.faultin, kinds.faultin_ret, 'every FAULTIN has its FAULTIN_RET');
        assert.equal(kinds.faultin, pfTaken, `FAULTIN records ${kinds.faultin} != pf_taken ${pfTaken} (no retries in this run)`);
      }
      assert.ok((kinds.invalidate ?? 0) >= 1, 'the MADV_DONTNEED between the runs gave no INVALIDATE record');
    });

    if (mode === 'kprobe') {
      it('RET_PF results decode by name from BTF: FIXED count = pf_fixed, fault-in returns CONTINUE', () => {
        const { records, tracer, workload } = got();
        const faultRet = retNames(records, Kind.FAULT_RET, tracer);
        const faultinRet = retNames(records, Kind.FAULTIN_RET, tracer);
        for (const name of [...Object.keys(faultRet), ...Object.keys(faultinRet)]) {
          assert.match(name, /^RET_PF_[A-Z_]+$/, `a ret value is not a RET_PF_* of this kernel's BTF: ${name}`);
        }
        assert.equal(faultRet.RET_PF_FIXED, workload.total.vcpu.pf_fixed);
        assert.equal(faultinRet.RET_PF_CONTINUE, workload.total.vcpu.pf_taken);
      });

      it('one fault = FAULT, FAULTIN, FAULTIN_RET, MAP, FAULT_RET on one gfn, hva inside the memslot', () => {
        const { records, workload } = got();
        const order = [Kind.FAULT, Kind.FAULTIN, Kind.FAULTIN_RET, Kind.MAP, Kind.FAULT_RET];
        const regionEnd = workload.regionGpa + workload.pagesPerRun * 4096;
        let faults = 0;
        let regionFaults = 0;
        // the vCPU threads' fault records in ring order; an INVALIDATE from the host thread
        // (another CPU) may land between two records of one fault
        const seq: number[] = [];
        for (let r = 0; r < records.length; r++) {
          if (tids.has(records.tid(r)) && order.includes(records.kind(r) as typeof order[number])) seq.push(r);
        }
        for (let s = 0; s + 4 < seq.length; s++) {
          const i = seq[s];
          if (records.kind(i) !== Kind.FAULT) continue;
          const at = (k: number): number => seq[s + k];
          const gfn = Math.floor(records.gpa(i) / 4096);
          for (let k = 0; k < 5; k++) {
            const j = at(k);
            assert.equal(records.kind(j), order[k], `record ${j}: expected ${KIND_NAMES[order[k]]}, got ${KIND_NAMES[records.kind(j)]}`);
            assert.equal(records.tid(j), records.tid(i));
            assert.equal(Math.floor(records.gpa(j) / 4096), gfn, `${KIND_NAMES[order[k]]} gfn differs from the FAULT's`);
          }
          for (const j of [at(2), at(3), at(4)]) {  // after fault-in: hva and pfn resolved
            assert.notEqual(records.pfn(j), UNKNOWN, `${KIND_NAMES[records.kind(j)]} without pfn`);
            assert.ok(records.hva(j) !== UNKNOWN && records.hva(j) < USER_HVA_END, `bad hva ${records.hva(j)}`);
          }
          const gpa = records.gpa(i);
          if (gpa >= workload.regionGpa && gpa < regionEnd) {
            regionFaults++;
            assert.equal(records.hva(at(3)) - workload.vms[0].regionHva, gpa - workload.regionGpa,
              'MAP hva is not the memslot address of the gpa');
          }
          faults++;
          s += 4;
        }
        assert.equal(faults, workload.total.vcpu.pf_taken, 'every fault is a complete 5-record group');
        assert.equal(regionFaults, 2 * workload.pagesPerRun);
      });
    }

    it('MAP gpa = gfn*4096 inside guest memory, hva inside the memslot at the same offset', () => {
      const { records, workload } = got();
      const regionEnd = workload.regionGpa + workload.pagesPerRun * 4096;
      let region = 0;
      for (let i = 0; i < records.length; i++) {
        if (records.kind(i) !== Kind.MAP) continue;
        const gpa = records.gpa(i);
        assert.equal(gpa % 4096, 0, `MAP gpa ${gpa.toString(16)} is not gfn*4096`);
        assert.ok(gpa < workload.guestMemoryBytes, `MAP gpa ${gpa.toString(16)} outside guest memory`);
        if (gpa >= workload.regionGpa && gpa < regionEnd) {
          region++;
          assert.equal(records.hva(i) - workload.vms[0].regionHva, gpa - workload.regionGpa, 'hva offset != gpa offset');
        }
      }
      assert.equal(region, 2 * workload.pagesPerRun);
    });

    it('no field is silently wrong: a field is the fault\'s real value or the UNKNOWN sentinel', () => {
      const { records } = got();
      const problems = new Map<string, number>();
      const note = (what: string): void => void problems.set(what, (problems.get(what) ?? 0) + 1);
      let seqMoved = false;
      for (let i = 0; i < records.length; i++) {
        const kind = records.kind(i);
        if (kind === Kind.INVALIDATE_START || !tids.has(records.tid(i))) continue;
        const k = KIND_NAMES[kind];
        const hva = records.hva(i);
        if (hva !== UNKNOWN && hva >= USER_HVA_END) note(`${k}: hva ${hva.toString(16)} is a kernel address, not a host virtual address`);
        if (records.mmuSeq(i) === UNKNOWN) note(`${k}: mmu_seq unknown`);
        if (records.inProgress(i) === UNKNOWN) note(`${k}: in_progress unknown`);
        if (records.vcpuId(i) !== 0) note(`${k}: vcpu_id ${records.vcpuId(i)} (one vCPU, id 0)`);
        const seq = records.mmuSeq(i);
        const fseq = records.faultSeq(i);
        if (seq > 0) seqMoved = true;
        // the sequence moved at the MADV_DONTNEED: a real snapshot taken after it is not 0
        if (fseq !== UNKNOWN && seq !== UNKNOWN && seq > 0 && fseq === 0) {
          note(`${k}: fault_seq 0 while the VM sequence is ${seq} (the snapshot is not taken yet: should be UNKNOWN)`);
        }
        if (fseq !== UNKNOWN && seq !== UNKNOWN && fseq > seq) note(`${k}: fault_seq newer than the VM sequence`);
      }
      assert.ok(seqMoved, 'mmu_invalidate_seq never moved above 0 after MADV_DONTNEED: read as 0?');
      const list = [...problems].map(([what, n]) => `${what} (${n} records)`);
      report('field-problems', { mode, problems: list });
      assert.deepEqual(list, [], `records with wrong values:\n  ${list.join('\n  ')}`);
    });

    it('the detector sees the sequential guest as progressing, never stuck', () => {
      const { records, tracer } = got();
      const detector = new StaleFaultDetector({ retPf: detectorRetPf(tracer) });
      detector.push(records);
      const verdicts = detector.snapshot().filter((v) => tids.has(v.tid));
      report('detector', { mode, verdicts: verdicts.map((v) => ({ tid: v.tid, state: v.state, attempts: v.attempts, mapped: v.mapped })) });
      assert.ok(verdicts.length >= 1, 'the detector has no verdict for the guest\'s vCPU');
      for (const v of verdicts) assert.equal(v.state, 'progressing', `vCPU ${v.tid}: ${v.state} (${v.explanation})`);
    });
  });
}

/**
 * CO-RE: every relocation of the loaded programs either found its target in this kernel's BTF
 * or is a field the program checks with bpf_core_field_exists (and then records UNKNOWN).
 * Read from libbpf's own debug output (verbose) of a child process that opens the tracer.
 */
describe(`kernel matrix on ${release()}: CO-RE relocations`, function () {
  this.timeout(120_000);
  before(requireMatrixKernel);

  for (const mode of ['kprobe', 'tracepoint'] as const) {
    it(`${mode}: every field read relocates or is guarded by a field-exists check that reported it absent`, () => {
      const script = `require(${JSON.stringify(`${__dirname}/../../lib/tracer`)}).openTracer({ mode: '${mode}', verbose: true })` +
        '.then((t) => { t.close(); }, (e) => { console.error("OPEN FAILED: " + e.message.split("\\n")[0]); process.exit(3); })';
      const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
      const log = child.stderr;
      assert.equal(child.status, 0, `opening in ${mode} mode failed:\n${log.split('\n').filter((l) => /OPEN FAILED|invalid|error|failed/i.test(l)).slice(-15).join('\n')}`);
      // prog 'NAME': relo #N: <kind> [id] struct X.path (...)   then: matching candidate / no matching targets found
      const spec = new Map<string, { kind: string; target: string; struct: string }>();
      const found = new Set<string>();
      const missing = new Set<string>();
      for (const line of log.split('\n')) {
        const m = /prog '([^']+)': relo #(\d+): (.*)$/.exec(line);
        if (!m) continue;
        const key = `${m[1]}#${m[2]}`;
        const rest = m[3];
        const head = /^<([a-z_]+)> \[\d+\] (?:struct|union|enum|typedef)?\s*([^ ]+)/.exec(rest);
        if (head && !spec.has(key)) {
          // target without the ___flavour suffix; struct with it (a guard covers its flavour struct)
          spec.set(key, { kind: head[1], target: head[2].replace(/___[a-z0-9_]+(?=[.:]|$)/, ''), struct: head[2].split(/[.:]/)[0] });
        }
        else if (rest.startsWith('matching candidate')) found.add(key);
        else if (rest.startsWith('no matching targets found')) missing.add(key);
      }
      assert.ok(spec.size > 0, 'no CO-RE relocation lines in libbpf\'s debug output (verbose did not reach stderr?)');
      const absent = new Set<string>();
      const unguarded: string[] = [];
      for (const key of missing) {
        const s = spec.get(key)!;
        const prog = key.split('#')[0];
        absent.add(s.target);
        if (s.kind === 'field_exists' || s.kind === 'type_exists' || s.kind === 'enumval_exists') continue;
        // guarded: the program tested a field of the same (flavour) struct with field_exists and
        // got "absent", so the read is dead code on this kernel (the accessor returns UNKNOWN)
        const guarded = [...missing].some((k) => k.startsWith(`${prog}#`) && spec.get(k)!.kind === 'field_exists' &&
          spec.get(k)!.struct === s.struct);
        if (!guarded) unguarded.push(`${prog}: <${s.kind}> ${s.target}`);
      }
      const relocated = new Set([...found].map((k) => spec.get(k)!.target));
      report('core', { mode, relocated: [...relocated].sort(), absent: [...absent].sort() });
      assert.deepEqual(unguarded, [], `relocations with no target and no field-exists guard:\n  ${unguarded.join('\n  ')}`);
      // the fields the fault analysis stands on exist on every kernel of the matrix (docs/kernels.md)
      for (const need of ['kvm.mmu_invalidate_seq', 'kvm.mmu_invalidate_in_progress', 'kvm_page_fault.gfn']) {
        assert.ok(relocated.has(need), `${need} did not relocate on ${release()}; relocated: ${[...relocated].join(', ')}`);
      }
    });
  }
});
