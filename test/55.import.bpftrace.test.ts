import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { analyzeFile, formatReport } from '../lib/analyze';
import { escapeControl, escapeJsonControl } from '../lib/escape';
import { createBpftraceImporter, DETECT_BYTES, importBpftraceLog, looksLikeBpftraceLog, MAX_LINE_BYTES } from '../lib/import/bpftrace';
import { Flag, Kind, UNKNOWN } from '../lib/record';
import { StaleFaultDetector } from '../lib/detector';
import { RET_PF_6_1 } from '../lib/kernels';
import { TextFormatter, textHeader } from '../lib/format';
import { EventBatch } from '../lib/record';
import { fixturePath, invalidationStorm, invalidationStuck, prng, stuckSignExtension, stuckSmallSeq } from './helpers/scenarios';

const STUCK = readFileSync(fixturePath('stuck-seq-sign-extension.log'), 'utf8');
const PROGRESS = readFileSync(fixturePath('progress-hugepage-zeroing.log'), 'utf8');

describe('55 import: bpftrace logs of the incident', () => {
  it('parses every field of a FAULTIN_RET line (hex without 0x, "hva = X (Y)", hits, timestamp)', () => {
    const line = STUCK.split('\n')[4];
    const { batch, skipped } = importBpftraceLog(line);
    assert.equal(skipped, 0);
    // first line of the thread: a FAULTIN standing for the 92239 earlier hits, then the FAULTIN_RET
    assert.equal(batch.length, 2);
    assert.equal(batch.kind(0), Kind.FAULTIN);
    assert.equal(batch.repeat(0), 92239);
    assert.ok(batch.flags(0) & Flag.COALESCED);
    const e = batch.get(1);
    assert.equal(e.kind, 'faultin_ret');
    assert.equal(e.tsNs, ((21 * 60 + 25) * 60 + 50) * 1e9 + 282726_000);
    assert.equal(e.tid, 3484173);
    assert.equal(e.pid, 3484149);
    assert.equal(e.rip, 'ffffffff814e6ca5');
    assert.equal(e.gpa, 0x1343fa0b0);
    assert.equal(e.hva, 0x7feb409fa000);
    assert.equal(e.pfn, 0x18d1d46);
    assert.equal(e.ret, 0);
    assert.equal(e.mmuSeq, 0x8002dc25);
    assert.equal(e.inProgress, 0);
    assert.equal(e.rangeStart, 0x7feacde61000);
    assert.equal(e.rangeEnd, 0x7feacde62000);
    assert.equal(e.repeat, 1);
    assert.equal(e.faultSeq, UNKNOWN, 'not in the log: unknown, not 0');
    assert.equal(e.vcpuId, UNKNOWN);
  });

  it('the fixtures import with no skipped line; hit counters become attempts', () => {
    const s = importBpftraceLog(STUCK);
    assert.equal(s.lines, 13);
    assert.equal(s.skipped, 0);
    let attempts173 = 0;
    for (let i = 0; i < s.batch.length; i++) if (s.batch.tid(i) === 3484173 && s.batch.kind(i) === Kind.FAULTIN) attempts173 += s.batch.repeat(i);
    assert.equal(attempts173, 92239);
    const p = importBpftraceLog(PROGRESS);
    assert.equal(p.lines, 42);
    assert.equal(p.skipped, 0);
    assert.equal(p.ignored, 12, 'ITER lines make no record');
    const kinds = new Set<string>();
    for (let i = 0; i < p.batch.length; i++) kinds.add(p.batch.get(i).kind);
    assert.deepEqual([...kinds].sort(), ['fault_ret', 'faultin', 'faultin_ret', 'map']);
    for (let i = 0; i < p.batch.length; i++) if (p.batch.kind(i) === Kind.FAULT_RET) assert.equal(p.batch.ret(i), 4);
  });

  it('tolerates email quoting, CRLF and blank lines: same records as the plain log', () => {
    const quoted = STUCK.split('\n').map((l, i) => (l ? (i % 3 === 0 ? '> > ' : i % 3 === 1 ? '> ' : '>') + l : l)).join('\r\n');
    const a = importBpftraceLog(STUCK), b = importBpftraceLog('\n\n' + quoted + '\n\n');
    assert.equal(b.skipped, 0);
    assert.deepEqual(Buffer.from(b.batch.copy().recordBytes(0).buffer), Buffer.from(a.batch.copy().recordBytes(0).buffer));
    assert.ok(looksLikeBpftraceLog(quoted));
  });

  it('takes bytes as well as text; CR-only, LF and CRLF line endings; pieces split anywhere give the same result', () => {
    const a = importBpftraceLog(STUCK);
    const same = (r: ReturnType<typeof importBpftraceLog>, what: string) => {
      assert.equal(r.skipped, 0, `${what}: ${JSON.stringify(r.skippedLines)}`);
      assert.equal(r.lines, a.lines, what);
      assert.deepEqual(Buffer.from(r.batch.copy().recordBytes(0).buffer), Buffer.from(a.batch.copy().recordBytes(0).buffer), what);
    };
    same(importBpftraceLog(Buffer.from(STUCK)), 'Buffer');
    same(importBpftraceLog(new Uint8Array(Buffer.from(STUCK))), 'Uint8Array');
    for (const eol of ['\r', '\r\n', '\n']) {
      const text = STUCK.split('\n').join(eol);
      same(importBpftraceLog(text), JSON.stringify(eol));
      assert.ok(looksLikeBpftraceLog(text) && looksLikeBpftraceLog(Buffer.from(text)));
    }
    // line numbers count \r\n once and a lone \r as a line end
    const numbered = importBpftraceLog('x\r\ny\rz\n\r\nw');
    assert.deepEqual(numbered.skippedLines.map((s) => [s.line, s.text]), [[1, 'x'], [2, 'y'], [3, 'z'], [5, 'w']]);
    // streamed in pieces that split lines, \r\n pairs and multi-byte characters
    const text = ('# \u00e9\u4e2d\r\n' + STUCK.split('\n').join('\r\n')).repeat(3);
    const bytes = Buffer.from(text);
    const whole = importBpftraceLog(bytes);
    for (const size of [1, 2, 3, 7, 64, 4096]) {
      const imp = createBpftraceImporter();
      for (let at = 0; at < bytes.length; at += size) imp.push(bytes.subarray(at, at + size));
      const r = imp.end();
      assert.equal(r.lines, whole.lines);
      assert.equal(r.skipped, 0);
      assert.deepEqual(Buffer.from(r.batch.copy().recordBytes(0).buffer), Buffer.from(whole.batch.copy().recordBytes(0).buffer), `pieces of ${size}`);
    }
  });

  it('format detection looks past a long preamble (bounded by bytes, not lines)', () => {
    const preamble = Array.from({ length: 5000 }, (_, i) => `Attaching probe ${i}...`).join('\n') + '\n';
    assert.ok(looksLikeBpftraceLog(preamble + STUCK), '5000 lines of preamble');
    assert.ok(looksLikeBpftraceLog(Buffer.from(preamble + STUCK)));
    assert.ok(!looksLikeBpftraceLog(preamble + STUCK, preamble.length), 'nothing past maxBytes is read');
    assert.ok(!looksLikeBpftraceLog('x'.repeat(DETECT_BYTES) + '\n' + STUCK), 'past DETECT_BYTES');
  });

  it('analyze streams a text log: a 520 MiB file (more than one string can hold) is read with bounded memory', async function () {
    this.timeout(60_000);
    // sparse: the stuck log, 520 MiB of NUL bytes (one line, skipped as too long), the log again
    const dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-55-'));
    const file = path.join(dir, 'big.log');
    try {
      const hole = 520 << 20;
      const fd = openSync(file, 'w');
      writeSync(fd, STUCK + '\n', 0);
      const tail = Buffer.from('\n' + STUCK);
      const at = Buffer.byteLength(STUCK + '\n') + hole;
      writeSync(fd, tail, 0, tail.length, at);
      closeSync(fd);
      assert.ok(at > 0x1fffffe8, 'larger than the longest string V8 makes');
      const rssBefore = process.memoryUsage().rss;
      let peak = rssBefore;
      const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
      const r = await analyzeFile(file).finally(() => clearInterval(timer));
      assert.equal(r.format, 'bpftrace');
      assert.equal(r.importer!.lines, 27);
      assert.equal(r.importer!.skipped, 1);
      assert.match(r.importer!.skippedLines[0].reason, /^line too long \(545259520 bytes/);
      assert.equal(r.stuck, 2, 'both threads of the stuck log');
      assert.ok(peak - rssBefore < 200 << 20, `memory grew by ${((peak - rssBefore) / 2 ** 20).toFixed(0)} MiB`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('analyze hands the records to the detector in batches: same report as one batch', async function () {
    this.timeout(30_000);
    const dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-55-'));
    try {
      const file = path.join(dir, 'x.log');
      writeFileSync(file, (STUCK + PROGRESS).repeat(2000));
      const r = await analyzeFile(file);
      const d = new StaleFaultDetector({ retPf: RET_PF_6_1 });
      const imp = importBpftraceLog((STUCK + PROGRESS).repeat(2000));
      d.push(imp.batch);
      assert.ok(imp.records > 65536, 'more than one batch');
      assert.equal(r.records, imp.records);
      const pick = (v: { tid: number; state: string; attempts: number; cause: string | null }) => ({ tid: v.tid, state: v.state, attempts: v.attempts, cause: v.cause });
      assert.deepEqual(r.vcpus.map(pick).sort((a, b) => a.tid - b.tid), d.snapshot().map(pick).sort((a, b) => a.tid - b.tid));
      let handed = 0, batches = 0;
      const streamed = createBpftraceImporter({ batchRecords: 1000, onBatch: (b) => { handed += b.length; batches++; } });
      streamed.push((STUCK + PROGRESS).repeat(100));
      const end = streamed.end();
      assert.equal(end.batch.length, 0);
      const small = importBpftraceLog((STUCK + PROGRESS).repeat(100)).records;
      assert.equal(handed, small);
      assert.equal(end.records, small);
      assert.ok(batches >= 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('skipped lines are reported with control characters escaped (ESC, BEL, NUL, C1, bidi)', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-55-'));
    try {
      const file = path.join(dir, 'evil.log');
      writeFileSync(file, STUCK + '\x1b]0;pwned\x07 \x1b[2J\x1b[1;1H\0 NUL \u009b31m \u202egnp.exe\n' + STUCK);
      const r = await analyzeFile(file);
      assert.equal(r.importer!.skipped, 1);
      assert.equal(r.importer!.skippedLines[0].text.charCodeAt(0), 0x1b, 'the report object keeps the text as it is');
      const text = formatReport(r);
      assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(text), JSON.stringify(text));
      assert.ok(!/[\u202a-\u202e]/.test(text));
      assert.match(text, /line 14: not a .*: \\x1b\]0;pwned\\x07 \\x1b\[2J\\x1b\[1;1H\\x00 NUL \\x9b31m \\u\{202e\}gnp\.exe$/m);
      assert.equal(escapeControl('a\tb\\x1b\u2028'), 'a\\x09b\\x1b\\u{2028}', 'tab and separators too; backslashes left');
      assert.equal(escapeControl('plain text, 21:25:50 gpa = 1'), 'plain text, 21:25:50 gpa = 1');
      assert.equal(JSON.parse(escapeJsonControl(JSON.stringify({ s: '\u009b\u007f\u202e' }))).s, '\u009b\u007f\u202e');
      assert.ok(!/[\u007f-\u009f\u202e]/.test(escapeJsonControl(JSON.stringify({ s: '\u009b\u007f\u202e' }))));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts garbage lines and reports the first ones with line numbers, keeps the good ones', () => {
    const lines = STUCK.split('\n').filter(Boolean);
    const text = ['hello world', lines[0], 'Attaching 7 probes...', lines[1], '21:25:50:282711 tid[x] pid[1] FAULTIN @ rip 1', lines[2],
      '99:99:99:1 tid[1] pid[1] FAULTIN @ rip 1 (1 hits), gpa = 1', '21:25:50:1 tid[1] pid[1] BOGUS @ rip 1 (1 hits), gpa = 1',
      '21:25:50:1 tid[1] pid[1] FAULTIN @ rip 1 (1 hits), hva = 1', '21:25:50:1 tid[1] pid[1] FAULTIN @ rip 1 (1 hits), gpa = zz'].join('\n');
    const r = importBpftraceLog(text, { maxReported: 5 });
    assert.equal(r.skipped, 7);
    assert.equal(r.skippedLines.length, 5);
    assert.deepEqual(r.skippedLines.map((s) => s.line), [1, 3, 5, 7, 8]);
    assert.match(r.skippedLines[3].reason, /timestamp/);
    assert.match(r.skippedLines[4].reason, /unknown line kind BOGUS/);
    assert.equal(new Set(Array.from({ length: r.batch.length }, (_, i) => r.batch.tid(i))).size, 1);
    assert.ok(!looksLikeBpftraceLog('just\ntext\n'));
  });

  it('long lines that start like a record parse in linear time: over the limit skipped as too long, under it read', () => {
    const head = '21:25:50:282711 tid[3484173] pid[3484149] FAULTIN @ rip ffffffff814e6ca5 (92234 hits), gpa = 1343fa0b0, ';
    const timed = (text: string) => {
      const t0 = process.hrtime.bigint();
      const r = importBpftraceLog(text);
      return { r, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
    };
    // the probe's inputs: 10 MiB of letters (was 20 s and counting), 160 KB of words (was 24 s)
    for (const tail of ['a'.repeat(10 << 20), 'word '.repeat(32 << 10)]) {
      const { r, ms } = timed(head + tail);
      assert.ok(ms < 1000, `${ms} ms`);
      assert.equal(r.lines, 1);
      assert.equal(r.skipped, 1);
      assert.match(r.skippedLines[0].reason, /^line too long \(\d+ bytes, at most \d+\)$/);
      assert.ok(r.skippedLines[0].text.length <= 203, 'the report keeps a short prefix');
    }
    // just under the limit, every shape the old field regex backtracked on: read, not skipped
    for (const unit of ['a', 'word ', 'a b ', '= ', 'a =', 'x = ', 'f', '= 1 (', '(f', ' \t,', ' \u2028']) {
      const n = MAX_LINE_BYTES - head.length - 1;
      const { r, ms } = timed(head + unit.repeat(Math.floor(n / Buffer.byteLength(unit))));
      assert.ok(ms < 500, `${JSON.stringify(unit)}: ${ms} ms`);
      assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
      assert.equal(r.batch.gpa(0), 0x1343fa0b0);
    }
  });

  it('a log crossing midnight keeps time moving forward', () => {
    const t = (ts: string, hits: number) => `${ts} tid[5] pid[4] FAULTIN @ rip ffffffff81000000 (${hits} hits), gpa = 1000, hva = 7f0000001000, flags = 0 : MMU seq = 10, in-prog = 0, start = 0, end = 0`;
    const r = importBpftraceLog([t('23:59:59:999000', 1), t('00:00:00:001000', 2)].join('\n'));
    assert.equal(r.batch.tsNs(1) - r.batch.tsNs(0), 2_000_000);
  });

  it('a line a few microseconds out of order across midnight does not shift the rest of the log by a day', () => {
    const t = (ts: string, hits: number) => `${ts} tid[5] pid[4] FAULTIN @ rip ffffffff81000000 (${hits} hits), gpa = 1000, hva = 7f0000001000, flags = 0 : MMU seq = 10, in-prog = 0, start = 0, end = 0`;
    const DAY = 86400e9;
    // 23:59:59.999990, then 00:00:00.000001, then a late line from 23:59:59.999999, then on
    const r = importBpftraceLog([t('23:59:59:999990', 1), t('00:00:00:000001', 2), t('23:59:59:999999', 3), t('00:00:00:000020', 4), t('00:00:01:000000', 5)].join('\n'));
    assert.deepEqual(Array.from({ length: r.batch.length }, (_, i) => r.batch.tsNs(i) - DAY), [-10_000, 1_000, -1_000, 20_000, 1e9]);
    // a late line right after the log's first midnight-side line: no previous day, put at 0
    const s = importBpftraceLog([t('00:00:00:000005', 1), t('23:59:59:999999', 2), t('00:00:00:000020', 3), t('00:00:02:000000', 4)].join('\n'));
    assert.deepEqual(Array.from({ length: s.batch.length }, (_, i) => s.batch.tsNs(i)), [5_000, 0, 20_000, 2e9]);

    // the verdict does not change: a vCPU retrying one gpa 2000 times over 0.2 s across midnight
    // is "retrying" (not stuck: under 1 s), with or without one late line
    const lines: string[] = [];
    const start = 86400e6 - 100_000; // microseconds of the day, 0.1 s before midnight
    for (let k = 0; k < 2000; k++) {
      const us = (start + k * 100) % 86400e6;
      const clock = `${String(Math.floor(us / 3600e6)).padStart(2, '0')}:${String(Math.floor(us / 60e6) % 60).padStart(2, '0')}:${String(Math.floor(us / 1e6) % 60).padStart(2, '0')}:${String(us % 1e6).padStart(6, '0')}`;
      lines.push(`${clock} tid[5] pid[4] FAULTIN_RET @ rip ffffffff81000000 (${k + 1} hits), gpa = 1000, hva = 7f0000001000 (7f0000001000), flags = 0, pfn = 1, ret = 0 : MMU seq = 80000010, in-prog = 0, start = 7f0000001000, end = 7f0000002000`);
    }
    const swapped = [...lines];
    [swapped[1000], swapped[1001]] = [swapped[1001], swapped[1000]]; // 23:59:59.999990 printed after 00:00:00.000000
    const verdict = (text: string) => {
      const d = new StaleFaultDetector({ retPf: RET_PF_6_1 });
      d.push(importBpftraceLog(text).batch);
      return d.snapshot().map((v) => ({ state: v.state, attempts: v.attempts, seconds: Math.round((v.lastSeen - v.firstSeen) / 1e6) / 1e3 }));
    };
    const plain = verdict(lines.join('\n'));
    assert.equal(plain[0].seconds, 0.2);
    assert.deepEqual(verdict(swapped.join('\n')), plain);
  });

  it('fuzz: random and mutated input never throws; every record it makes is well-formed', function () {
    this.timeout(20000);
    const rnd = prng(0xc0ffee);
    const base = (STUCK + PROGRESS).split('\n');
    const alphabet = 'abcdef0123456789 :=,()[]>@-_xTIDPFAULTINRETMAPSPTE\t\r';
    let records = 0;
    for (let round = 0; round < 400; round++) {
      const lines: string[] = [];
      for (let k = 0; k < 30; k++) {
        let l = base[Math.floor(rnd() * base.length)];
        const mode = rnd();
        if (mode < 0.3) {
          // flip, insert or delete characters
          const chars = l.split('');
          for (let m = 0; m < 1 + rnd() * 5; m++) {
            const at = Math.floor(rnd() * (chars.length + 1));
            const c = alphabet[Math.floor(rnd() * alphabet.length)];
            const op = rnd();
            if (op < 0.33) chars[at] = c; else if (op < 0.66) chars.splice(at, 0, c); else chars.splice(at, 1);
          }
          l = chars.join('');
        } else if (mode < 0.4) {
          l = l.slice(0, Math.floor(rnd() * l.length));
        } else if (mode < 0.5) {
          l = Array.from({ length: Math.floor(rnd() * 120) }, () => String.fromCharCode(Math.floor(rnd() * 0x3000))).join('');
        } else if (mode < 0.55) {
          l = l.replace(/[0-9a-f]{6,}/, 'ffffffffffffffffffffffff');
        }
        lines.push(l);
      }
      const r = importBpftraceLog(lines.join('\n'));
      // lines end at \n, \r\n or a lone \r
      assert.equal(r.lines, lines.join('\n').split(/\r\n|\r|\n/).filter((l) => l.replace(/^\s*(?:>\s?)+/, '').trim() !== '').length);
      assert.ok(r.skipped <= r.lines);
      for (let i = 0; i < r.batch.length; i++) {
        const e = r.batch.get(i);
        assert.ok(['faultin', 'faultin_ret', 'map', 'fault_ret'].includes(e.kind));
        assert.ok(e.repeat >= 1);
        assert.ok(Number.isFinite(e.tsNs) && e.tsNs >= 0);
      }
      records += r.batch.length;
      new StaleFaultDetector().push(r.batch); // and the detector takes whatever came out
    }
    assert.ok(records > 1000, 'the fuzz kept producing parsable records too');
  });

  describe("kvmfault's own trace text reads back", () => {
    const sources = [invalidationStorm(20, 3), stuckSignExtension(1500), stuckSmallSeq(1500), invalidationStuck(1500, 1e6, true)];

    function asText(batches: EventBatch[]): string {
      const f = new TextFormatter({ epochMs: 0, utc: true });
      const lines = [textHeader('mode kprobe, kernel 6.1.0')];
      for (const b of batches) for (let i = 0; i < b.length; i++) lines.push(f.line(b, i));
      return lines.join('\n') + '\n';
    }

    it('every field the text carries comes back (one record per line, repeat kept)', () => {
      const text = asText(sources);
      const r = importBpftraceLog(text);
      assert.equal(r.skipped, 0, JSON.stringify(r.skippedLines));
      assert.equal(r.kvmfaultText, true);
      assert.equal(r.kernel, '6.1.0', 'the header names the traced kernel');
      const total = sources.reduce((n, b) => n + b.length, 0);
      assert.equal(r.records, total);
      let k = 0;
      for (const b of sources) {
        for (let i = 0; i < b.length; i++, k++) {
          const want = b.get(i), got = r.batch.get(k);
          // the text has no VM id, and time of day in microseconds
          assert.equal(r.batch.tsNs(k), Math.floor(b.tsNs(i) / 1000) * 1000, `record ${k} ts`);
          for (const key of Object.keys(want) as (keyof typeof want)[]) {
            if (key === 'tsNs' || key === 'vmId') continue;
            assert.deepEqual(got[key], want[key], `record ${k} (${want.kind}) ${String(key)}`);
          }
        }
      }
    });

    it('analysed from text, the verdicts equal those on the records', () => {
      const verdicts = (batches: EventBatch[]) => {
        const d = new StaleFaultDetector({ retPf: RET_PF_6_1 });
        for (const b of batches) d.push(b);
        return d.snapshot().map((v) => ({ tid: v.tid, state: v.state, cause: v.cause, gpa: v.gpa, attempts: v.attempts })).sort((a, b) => a.tid - b.tid);
      };
      const direct = verdicts(sources);
      assert.deepEqual(direct.map((v) => v.state), ['progressing', 'stuck', 'stuck', 'stuck']);
      assert.deepEqual(verdicts([importBpftraceLog(asText(sources)).batch]), direct);
    });

    it('without the header line the same text is read as an incident log (hit counters as attempts)', () => {
      const text = asText([stuckSignExtension(10)]).split('\n').slice(1).join('\n');
      const r = importBpftraceLog(text);
      assert.equal(r.skipped, 0);
      assert.ok(r.records >= 10);
    });
  });
});

