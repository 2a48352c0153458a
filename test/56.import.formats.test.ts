import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { analyzeFile, AnalysisReport, formatReport, reportJson } from '../lib/analyze';
import { createBpftraceV2Importer } from '../lib/import/bpftrace-v2';
import { importMailBpftraceLog } from '../lib/import/bpftrace-mail';
import { detectTextFormat } from '../lib/import/index';
import { createKvmStatImporter } from '../lib/import/kvmstat';
import { createPerfScriptImporter } from '../lib/import/perf';
import { cleanLine, importAll, TextImport } from '../lib/import/text';
import { createTraceCmdImporter } from '../lib/import/tracecmd';
import { EventBatch, Kind, RecordBatch, RecordWriter, UNKNOWN } from '../lib/record';
import { CLI } from './70.cli.helpers';
import { fixturePath, prng } from './helpers/scenarios';
import { mailDamage, perfScriptText, traceCmdText } from './helpers/textformats';

const fx = (name: string): Buffer => readFileSync(fixturePath(name));

/** the records of an import as plain objects (to compare two imports) */
function records(b: EventBatch): object[] {
  const out: object[] = [];
  for (let i = 0; i < b.length; i++) out.push(b.get(i));
  return out;
}

let dir = '';
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-import-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function analyzeText(text: string | Buffer, name = 'in.txt', options = {}): Promise<AnalysisReport> {
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return analyzeFile(file, options);
}

/** a vCPU stuck on one gpa for `n` faults over `seconds`, and one progressing, as records */
function stuckRecords(n: number, seconds: number): RecordBatch {
  const w = new RecordWriter(4 * n);
  const t0 = 51234.5e9;
  // one record of VMM pid 4200: the fields every record here has; returns it for the rest
  const rec = (kind: number, ts: number, tid: number, vcpu: number, rip: bigint): number => {
    const r = w.begin(kind);
    w.setU64(r, 'ts_ns', ts);
    w.setU32(r, 'pid', 4200);
    w.setU32(r, 'tid', tid);
    w.setU32(r, 'vcpu_id', vcpu);
    w.setU64(r, 'rip', rip);
    return r;
  };
  for (let k = 0; k < n; k++) {
    const ts = t0 + Math.round((k * seconds * 1e9) / n / 1000) * 1000;
    rec(Kind.EXIT, ts, 4242, 1, 0xffffffff81234567n);
    let r = rec(Kind.FAULT, ts + 1000, 4242, 1, 0xffffffff81234567n);
    w.setU64(r, 'gpa', 0x1343fa0b0);
    w.setU64(r, 'error_code', 0x683);
    if (k % 10 === 0) {
      r = rec(Kind.FAULT, ts + 2000, 4241, 0, 0xffffffff8100abcdn);
      w.setU64(r, 'gpa', 0x2000000 + k * 4096);
      w.setU64(r, 'error_code', 0x182);
      r = rec(Kind.MAP, ts + 3000, 4241, 0, 0xffffffff8100abcdn);
      w.setU64(r, 'gpa', 0x2000000 + k * 4096);
    }
  }
  return w.batch();
}

/** the fields a text format carries, for round-trip comparison */
function carried(b: EventBatch, withPid: boolean): object[] {
  const out: object[] = [];
  for (let i = 0; i < b.length; i++) {
    out.push({
      kind: b.kind(i), tid: b.tid(i), pid: withPid ? b.pid(i) : 0, tsUs: Math.round(b.tsNs(i) / 1000), vcpu: b.vcpuId(i),
      gpa: b.gpa(i), err: b.kind(i) === Kind.FAULT ? b.errorCode(i) : UNKNOWN,
      // a MAP line (kvm_mmu_set_spte) carries no rip
      rip: b.kind(i) === Kind.MAP ? null : `${b.ripHi(i)}:${b.ripLo(i)}`,
    });
  }
  return out;
}

describe('56 import: trace-cmd report', () => {
  it('reads the fixture: faults, exits, sptes; other events ignored; nothing skipped', () => {
    const r = importAll(createTraceCmdImporter(), fx('tracecmd-stuck-excerpt.txt'));
    assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
    assert.equal(r.noise, 1, 'cpus=4');
    assert.ok(r.hasTid && !r.hasPid && !r.hasSeq);
    const kinds = new Map<string, number>();
    for (let i = 0; i < r.batch.length; i++) kinds.set(r.batch.get(i).kind, (kinds.get(r.batch.get(i).kind) ?? 0) + 1);
    assert.deepEqual(Object.fromEntries(kinds), { exit: 16, fault: 16, map: 4 });
    const f = r.batch.get(1);
    assert.equal(f.kind, 'fault');
    assert.equal(f.tid, 4242);
    assert.equal(f.vcpuId, 1);
    assert.equal(f.gpa, 0x1343fa0b0);
    assert.equal(f.errorCode, 0x683);
    assert.equal(f.rip, 'ffffffff81234567');
    assert.equal(f.tsNs, 51234500014000);
    assert.deepEqual(r.evidence.get(4242), { first: 3, last: 61, count: 24 });
  });

  it('parses the kernel formats old and new, and comms with blanks, slashes and dashes', () => {
    const text = [
      '  CPU-4242  [012] 1234.567890: kvm_exit:             reason EPT_VIOLATION rip 0xffffffff81234567 info 683 800000ec',
      '  CPU-4242  [012] 1234.567891: kvm_page_fault:       address 1234fe0 error_code 683',
      '  CPU 1/KVM-4243  [012] d..2. 1234.567892: kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x0000000001234fe0 error_code 0x683',
      ' qemu-system-x86-4244 (4200) [001] 1234.567893: kvm_exit: vcpu 0 reason NPF rip 0xffffffff8100abcd info1 0x0000000100000004 info2 0x00000000fee00000 intr_info 0x00000000 error_code 0x00000000',
      '  CPU 0/KVM-4245  [003] 1234.567894: kvm_mmu_pagetable_walk: addr ffffffff81234567 pferr 10 F',
      '  CPU 0/KVM-4245  [003] 1234.567895: fast_page_fault: vcpu 0 gva ffffffff81234000 error_code P|W sptep 00000000ab12cd34 old 0x6000001f3a00b75 new 6000001f3a00b77 spurious 0 fixed 1',
      '  kworker/1:2-99  [001] 1234.567896: kvm_tdp_mmu_spte_changed: as id 0 gfn 1234 level 1 old_spte 6000001f3a00b77 new_spte 5a0',
      '  qemu-4200  [000] 1234.567897: kvm_unmap_hva_range: mmu notifier unmap range: 0x00007f0000100000 -- 0x00007f0000101000',
    ].join('\n');
    const r = importAll(createTraceCmdImporter(), text);
    assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
    const e = records(r.batch) as { kind: string; tid: number; pid: number; rip: string | null; gpa: number; rangeStart: number }[];
    assert.deepEqual(e.map((x) => [x.kind, x.tid]), [
      ['exit', 4242], ['fault', 4242], ['fault', 4243], ['exit', 4244], ['fault', 4245], ['map', 4245], ['invalidate', 99], ['invalidate', 4200],
    ]);
    assert.equal(e[1].rip, 'ffffffff81234567', 'the old kvm_page_fault takes the rip of the thread\'s kvm_exit');
    assert.equal(e[1].gpa, 0x1234fe0);
    assert.equal(e[3].pid, 4200, 'the (TGID) column');
    assert.equal(e[6].rangeStart, 0x1234);
    assert.equal(e[7].rangeStart, 0x7f0000100000);
  });

  it('kvm_page_fault with the incident thread\'s debugging patch carries the invalidation state: the cause is told', async () => {
    const lines: string[] = [];
    for (let k = 0; k < 1200; k++) {
      const ts = (1234 + k / 1000).toFixed(6);
      lines.push(`  CPU 1/KVM-4242  [012] ${ts}: kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x00000001343fa0b0 error_code 0x683, ` +
        'seq = 0x8002dc25, in_prog = 0x0, start = 0x7feacde61000, end = 0x7feacde62000, root = valid');
    }
    const r = importAll(createTraceCmdImporter(), lines.join('\n'));
    assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
    assert.ok(r.hasSeq);
    assert.equal(r.batch.get(0).mmuSeq, 0x8002dc25);
    assert.equal(r.batch.get(0).inProgress, 0);
    const rep = await analyzeText(lines.join('\n'), 'patched.txt');
    assert.deepEqual(rep.vcpus.map((v) => [v.tid, v.state, v.cause]), [[4242, 'stuck', 'seq-sign-extension']]);
  });

  it('a fields line that does not match the kernel format is skipped with its line number and why', () => {
    const r = importAll(createTraceCmdImporter(), '  CPU-4242  [012] 1234.567891: kvm_page_fault: address zz error_code 683\nhello\n');
    // the garbage line after an incomplete event is tried as its continuation: one report, two lines
    assert.equal(r.skipped, 2);
    assert.equal(r.skippedLines[0].line, 1);
    assert.match(r.skippedLines[0].reason, /kvm_page_fault fields/);
    const s = importAll(createTraceCmdImporter(), 'hello\n\n  CPU-4242  [012] 1234.567891: kvm_page_fault: address zz error_code 683\n');
    assert.deepEqual(s.skippedLines.map((x) => x.line), [1, 3]);
  });

  it('the mail-damaged copy gives the same records (quoting, wraps, NBSP bytes, U+FFFD, noise)', () => {
    const clean = importAll(createTraceCmdImporter(), fx('tracecmd-stuck-excerpt.txt'));
    const mail = importAll(createTraceCmdImporter(), fx('tracecmd-stuck-excerpt.mail.txt'));
    assert.ok(fx('tracecmd-stuck-excerpt.mail.txt').includes(0xa0), 'the fixture holds raw 0xA0 bytes');
    assert.deepEqual(records(mail.batch), records(clean.batch));
    assert.ok(mail.joined > 20);
    assert.equal(mail.lost, 12);
    // what is skipped is the mail's prose, not evidence
    assert.deepEqual(mail.skippedLines.map((s) => s.text), ['Thanks, does this help?']);
  });

  it('an event cut inside a token, with or without the blank, is joined back', () => {
    const line = '  CPU 1/KVM-4242  [012] 1234.567891: kvm_page_fault:       vcpu 1 rip 0xffffffff81234567 address 0x0000000001234fe0 error_code 0x683';
    const want = importAll(createTraceCmdImporter(), line);
    for (const cut of [60, 100, 110, line.length - 3]) {
      for (const text of [line.slice(0, cut) + '\n' + line.slice(cut), '> ' + line.slice(0, cut) + ' \n> ' + line.slice(cut)]) {
        const got = importAll(createTraceCmdImporter(), text);
        assert.deepEqual(records(got.batch), records(want.batch), text);
        assert.equal(got.skipped, 0);
      }
    }
  });

  it('round trip: records -> trace-cmd text -> the same records', () => {
    const b = stuckRecords(200, 0.01);
    const r = importAll(createTraceCmdImporter(), traceCmdText(b));
    assert.equal(r.skipped, 0);
    assert.deepEqual(carried(r.batch, false), carried(b, false));
  });

  it('a long trace of one vCPU re-faulting on one rip and gpa, never mapped: stuck, cause unknown, says what would tell', async () => {
    const text = traceCmdText(stuckRecords(1500, 1.5));
    const rep = await analyzeText(text, 'long.txt');
    assert.equal(rep.format, 'trace-cmd');
    const v = rep.vcpus.find((x) => x.tid === 4242)!;
    assert.equal(v.state, 'stuck');
    assert.equal(v.cause, 'unknown');
    assert.equal(v.attempts, 1500);
    assert.match(v.explanation, /no MMU invalidation state.*kvmfault record/);
    assert.equal(rep.vcpus.find((x) => x.tid === 4241)!.state, 'progressing');
    const j = reportJson(rep) as { vcpus: { pid: number | null; tid: number | null; state: string; evidenceLines: object }[] };
    assert.equal(j.vcpus[0].pid, null, 'trace-cmd names no VMM pid');
    assert.equal(j.vcpus[0].tid, 4242);
    assert.deepEqual(j.vcpus[0].evidenceLines, { first: 2, last: 3301, count: 3000 });
    assert.match(formatReport(rep), /evidence: lines 2\.\.3301 of the input/);
    // the mail-damaged copy of the same trace: the same verdicts
    const mail = await analyzeText(mailDamage(text, prng(5)), 'long.mail.txt');
    assert.deepEqual(mail.vcpus.map((x) => [x.tid, x.state, x.attempts]), rep.vcpus.map((x) => [x.tid, x.state, x.attempts]));
  });

  it('the short excerpt is retrying (unexplained), and the report says what would make a verdict', async () => {
    const rep = await analyzeText(fx('tracecmd-stuck-excerpt.txt'));
    const v = rep.vcpus.find((x) => x.tid === 4242)!;
    assert.equal(v.state, 'retrying');
    assert.equal(v.attempts, 12);
    assert.match(v.explanation, /12 attempt\(s\).*pf_taken/);
  });
});

describe('56 import: perf script', () => {
  it('reads the fixture (pid/tid column) and its mail-damaged copy to the same records', () => {
    const clean = importAll(createPerfScriptImporter(), fx('perf-stuck-excerpt.txt'));
    assert.equal(clean.skipped, 0, JSON.stringify(clean.skippedLines));
    assert.ok(clean.hasPid);
    assert.equal(clean.batch.get(1).pid, 4200);
    assert.equal(clean.batch.get(1).tid, 4242);
    const mail = importAll(createPerfScriptImporter(), fx('perf-stuck-excerpt.mail.txt'));
    assert.deepEqual(records(mail.batch), records(clean.batch));
    // the same events as the trace-cmd fixture
    const tc = importAll(createTraceCmdImporter(), fx('tracecmd-stuck-excerpt.txt'));
    assert.deepEqual(carried(clean.batch, false), carried(tc.batch, false));
  });

  it('perf without the pid column, without the cpu column, with a period', () => {
    const r = importAll(createPerfScriptImporter(), [
      '       CPU 1/KVM  4242 [002] 51234.500014: kvm:kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x00000001343fa0b0 error_code 0x683',
      '       CPU 1/KVM  4242 51234.500015: kvm:kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x00000001343fa0b0 error_code 0x683',
      '       CPU 1/KVM  4242 [002] 51234.500016:          1 kvm:kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x00000001343fa0b0 error_code 0x683',
    ].join('\n'));
    assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
    assert.equal(r.batch.length, 3);
    assert.ok(!r.hasPid);
  });

  it('round trip: records -> perf script text -> the same records (with the pid)', () => {
    const b = stuckRecords(200, 0.01);
    const r = importAll(createPerfScriptImporter(), perfScriptText(b));
    assert.equal(r.skipped, 0);
    assert.deepEqual(carried(r.batch, true), carried(b, true));
  });
});

describe('56 import: bpftrace v2 "stuck" lines and uniq -c summaries', () => {
  it('v2 stuck lines: hit counters are attempts; seq-sign-extension from the signature', async () => {
    const rep = await analyzeText(fx('bpftrace-v2-stuck.log'), 'v2.log');
    assert.equal(rep.format, 'bpftrace-v2');
    assert.deepEqual(rep.vcpus.map((v) => [v.tid, v.state, v.cause, v.attempts]), [
      [3484173, 'stuck', 'seq-sign-extension', 123482],
      [3484174, 'stuck', 'seq-sign-extension', 120904],
    ]);
    assert.equal(rep.importer!.noise, 4, 'Attaching, ^C, two map dump lines');
    const mail = await analyzeText(fx('bpftrace-v2-stuck.mail.log'), 'v2.mail.log');
    assert.deepEqual(mail.vcpus.map((v) => [v.tid, v.state, v.cause, v.attempts]), rep.vcpus.map((v) => [v.tid, v.state, v.cause, v.attempts]));
    assert.deepEqual(mail.importer!.skippedLines.map((s) => s.text), ['Thanks, does this help?']);
  });

  it('uniq -c: counts summed per vCPU over non-adjacent lines, 8-digit counts, vCPUs by address', async () => {
    const rep = await analyzeText(fx('bpftrace-uniq-c.txt'), 'uniq.txt');
    assert.equal(rep.format, 'bpftrace-v2');
    const by = new Map(rep.vcpus.map((v) => [v.vcpuAddr, v]));
    assert.equal(by.get('ffff888812345000')!.attempts, 52311 + 41002);
    assert.equal(by.get('ffff888812349000')!.attempts, 48877 + 12000345);
    assert.equal(by.get('ffff888812345000')!.state, 'stuck');
    assert.equal(by.get('ffff888812345000')!.cause, 'seq-sign-extension');
    assert.equal(by.get('ffff88881234d000')!.state, 'retrying');
    const j = reportJson(rep) as { vcpus: { pid: number | null; tid: number | null; vcpuAddr: string; gpa: string | null }[] };
    for (const v of j.vcpus) {
      assert.equal(v.pid, null);
      assert.equal(v.tid, null);
      assert.match(v.vcpuAddr, /^ffff8888/);
      assert.equal(v.gpa, null, 'the log prints no gpa');
    }
    assert.match(formatReport(rep), /STUCK {7}vcpu at ffff888812345000: gpa \?, 93313 attempt/);
    const mail = await analyzeText(fx('bpftrace-uniq-c.mail.txt'), 'uniq.mail.txt');
    assert.deepEqual(mail.vcpus.map((v) => [v.vcpuAddr, v.state, v.attempts]), rep.vcpus.map((v) => [v.vcpuAddr, v.state, v.attempts]));
  });

  it('the made-up tid of an address is stable and distinct per address; vcpu= alone is enough', () => {
    const a = importAll(createBpftraceV2Importer(), fx('bpftrace-uniq-c-vcpu-only.txt'));
    const b = importAll(createBpftraceV2Importer(), '      5 vcpu=ffff888812349000\n  91200 vcpu=ffff888812345000\n');
    const tidOf = (r: TextImport, addr: string) => [...r.vcpuAddrs].find(([, x]) => x === addr)![0];
    assert.equal(tidOf(a, 'ffff888812345000'), tidOf(b, 'ffff888812345000'));
    assert.notEqual(tidOf(a, 'ffff888812345000'), tidOf(a, 'ffff888812349000'));
    assert.ok(tidOf(a, 'ffff888812345000') >= 0x80000000, 'above any real tid');
    assert.equal(a.skipped, 0);
  });
});

describe('56 import: KVM counter snapshots', () => {
  it('pf_taken climbing by millions with pf_fixed flat: that VM is stuck; the other progresses', async () => {
    const rep = await analyzeText(fx('kvm-counters.txt'), 'counters.txt');
    assert.equal(rep.format, 'kvm-counters');
    assert.equal(rep.stuckVms, 1);
    const [a, b] = rep.counterVms;
    assert.equal(a.name, '4200-11');
    assert.equal(a.pid, 4200);
    assert.equal(a.state, 'stuck');
    assert.equal(a.counters.pf_taken.delta, 925119230 - 918273645);
    assert.equal(a.counters.pf_fixed.delta, 0);
    assert.equal(a.attempts, 925119230 - 918273645);
    assert.equal(a.seconds, 10);
    assert.equal(b.name, '4310-12');
    assert.equal(b.state, 'progressing');
    const j = reportJson(rep) as { vms: { name: string; state: string; counters: object }[] };
    assert.deepEqual(j.vms.map((v) => [v.name, v.state]), [['4200-11', 'stuck'], ['4310-12', 'progressing']]);
    assert.match(formatReport(rep), /STUCK {7}vm 4200-11: 2 snapshot\(s\) over 10 s; .*pf_taken \+6845585/);
    const mail = await analyzeText(fx('kvm-counters.mail.txt'), 'counters.mail.txt');
    assert.deepEqual(mail.counterVms.map((v) => [v.name, v.state, v.attempts]), rep.counterVms.map((v) => [v.name, v.state, v.attempts]));
  });

  it('paths in the headers name the VMs; grep-style lines; one snapshot is unknown; both flat is idle', () => {
    const text = [
      '==> /sys/kernel/debug/kvm/100-5/pf_taken <==', '5000000', '==> /sys/kernel/debug/kvm/100-5/pf_fixed <==', '77',
      '==> /sys/kernel/debug/kvm/200-6/pf_taken <==', '10', '==> /sys/kernel/debug/kvm/200-6/pf_fixed <==', '10',
      '',
      '==> /sys/kernel/debug/kvm/100-5/pf_taken <==', '9000000', '==> /sys/kernel/debug/kvm/100-5/pf_fixed <==', '77',
      '==> /sys/kernel/debug/kvm/200-6/pf_taken <==', '10', '==> /sys/kernel/debug/kvm/200-6/pf_fixed <==', '10',
      '/sys/kernel/debug/kvm/300-7/pf_taken:12',
    ].join('\n');
    const r = importAll(createKvmStatImporter(), text);
    assert.equal(r.skipped, 0);
    assert.deepEqual(r.counters!.map((v) => [v.name, v.state]), [['100-5', 'stuck'], ['200-6', 'idle'], ['300-7', 'unknown']]);
  });
});

describe('56 import: the v3 bpftrace log by mail', () => {
  for (const name of ['stuck-seq-sign-extension', 'progress-hugepage-zeroing']) {
    it(`${name}: the mail-damaged copy gives the same records and verdicts, line numbers of the input`, async () => {
      const clean = importMailBpftraceLog(fx(`${name}.log`));
      const mail = importMailBpftraceLog(fx(`${name}.mail.log`));
      assert.ok(fx(`${name}.mail.log`).includes(0xa0));
      assert.deepEqual(records(mail.batch), records(clean.batch));
      assert.ok(mail.joined > 10);
      assert.equal(mail.lost, 12);
      assert.deepEqual(mail.skippedLines.map((x) => x.text), ['Thanks, does this help?']);
      const lines = fx(`${name}.mail.log`).toString('latin1').split('\n');
      assert.equal(mail.skippedLines[0].line, lines.indexOf('Thanks, does this help?') + 1);
      const a = await analyzeText(fx(`${name}.log`), `${name}.log`);
      const b = await analyzeText(fx(`${name}.mail.log`), `${name}.mail.log`);
      assert.equal(b.format, 'bpftrace');
      assert.deepEqual(b.vcpus.map((v) => [v.tid, v.state, v.cause, v.attempts]), a.vcpus.map((v) => [v.tid, v.state, v.cause, v.attempts]));
    });
  }
});

describe('56 import: analyze on every format', () => {
  const cases: [string, string][] = [
    ['tracecmd-stuck-excerpt.txt', 'trace-cmd'], ['tracecmd-stuck-excerpt.mail.txt', 'trace-cmd'],
    ['perf-stuck-excerpt.txt', 'perf-script'], ['perf-stuck-excerpt.mail.txt', 'perf-script'],
    ['bpftrace-v2-stuck.log', 'bpftrace-v2'], ['bpftrace-v2-stuck.mail.log', 'bpftrace-v2'],
    ['bpftrace-uniq-c.txt', 'bpftrace-v2'], ['bpftrace-uniq-c.mail.txt', 'bpftrace-v2'], ['bpftrace-uniq-c-vcpu-only.txt', 'bpftrace-v2'],
    ['kvm-counters.txt', 'kvm-counters'], ['kvm-counters.mail.txt', 'kvm-counters'],
    ['stuck-seq-sign-extension.log', 'bpftrace'], ['progress-hugepage-zeroing.log', 'bpftrace'],
    ['stuck-seq-sign-extension.mail.log', 'bpftrace'], ['progress-hugepage-zeroing.mail.log', 'bpftrace'],
  ];
  for (const [name, format] of cases) {
    it(`detects ${name} as ${format}`, () => assert.equal(detectTextFormat(fx(name)), format));
  }

  it('reads standard input ("-"): trace-cmd report | kvmfault analyze -', () => {
    const r = spawnSync(process.execPath, [CLI, 'analyze', '--json', '-'], { input: fx('bpftrace-v2-stuck.mail.log'), encoding: 'utf8', timeout: 30000 });
    assert.equal(r.status, 1, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.format, 'bpftrace-v2');
    assert.equal(j.summary.stuck, 2);
    const t = spawnSync(process.execPath, [CLI, 'analyze', '-'], { input: fx('kvm-counters.txt'), encoding: 'utf8', timeout: 30000 });
    assert.equal(t.status, 1, 'a stuck VM by its counters exits 1');
    assert.match(t.stdout, /^standard input: KVM debugfs counter snapshots/);
  });

  it('text in no known format is a usage error naming the formats', () => {
    const r = spawnSync(process.execPath, [CLI, 'analyze', '-'], { input: 'hello\nworld\n', encoding: 'utf8', timeout: 30000 });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /trace-cmd report.*perf script.*counter/s);
  });

  it('cleanLine undoes quoting and odd blanks', () => {
    assert.equal(cleanLine('>\t>  a\u00a0\u00a0b\ufffdc  '), 'a b c');
    assert.equal(cleanLine('> > CPU 1/KVM-4242  [012]'), 'CPU 1/KVM-4242 [012]');
  });
});
