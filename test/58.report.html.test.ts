/**
 * `kvmfault analyze --html`: the report generated from the fixtures and from a capture this test
 * writes, loaded in a real headless Chromium (Debian's `chromium`; scripts/setup installs it, a
 * missing browser fails the test with that remedy). Checks: no console errors, no request but
 * the file itself, the sections / SVG charts / verdict text in the DOM, hostile input (a VM name,
 * a path, a log line) shown as text and never run, bounded size. Screenshots are kept in
 * .cache/test-artifacts/ (gitignored). No root, no KVM.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { analyzeFile, AnalysisReport } from '../lib/analyze';
import { CaptureWriter } from '../lib/capture';
import { RET_PF_6_1 } from '../lib/kernels';
import { esc, MAX_VCPU_CHARTS, renderHtmlReport } from '../lib/report/html';
import { Timeline, TIMELINE_BUCKETS } from '../lib/report/timeline';
import { Browser, LoadedPage, startBrowser } from './helpers/chromium';
import { chunked, fixturePath, interleavedMix, TraceBuilder, vcpu } from './helpers/scenarios';

const ROOT = path.resolve(__dirname, '..', '..');
const ARTIFACTS = path.join(ROOT, '.cache', 'test-artifacts');
const CLI = path.join(ROOT, 'dist', 'lib', 'cli', 'main.js');
const HOSTILE = `<script>document.title="pwned"</script><img src=x onerror="document.title='pwned'">`;

/** A VM whose sequence climbs past 0x80000000 while vCPU 0 works; vCPU 1 then hangs with the bug's signature. Another VM is healthy. */
function signBitCapture(file: string): void {
  const b = new TraceBuilder();
  const a0 = vcpu(4000, 0), a1 = vcpu(4000, 1), b0 = vcpu(5000, 0);
  const LAST = 0x80000010;
  let seq = 0x7ffffe00;
  let gpa = 0x100000;
  const MS = 1e6;
  for (let i = 0; i < 600; i++) {
    const ts = 1e9 + i * 5 * MS;
    b.fault(b0, ts + 2000, 0x200000 + i * 4096, { mmuSeq: 0x10000 + (i >> 4), faultSeq: 0x10000 + (i >> 4), inProgress: 0 });
    b.map(b0, ts + 3000, 0x200000 + i * 4096, { mmuSeq: 0x10000 + (i >> 4) });
    if (seq < LAST) {
      // vCPU 0 works while invalidations drive the sequence up
      seq += 2;
      b.fault(a0, ts, gpa, { mmuSeq: seq, faultSeq: seq, inProgress: 0 });
      b.map(a0, ts + 1000, gpa, { mmuSeq: seq });
      gpa += 4096;
    } else {
      // past the sign bit the invalidations stop; vCPU 1's fault retries forever, nothing in
      // progress, the sequence constant
      for (let k = 0; k < 8; k++) b.fault(a1, ts + 4000 + k * 100, 0x1343fa0b0, { mmuSeq: seq, faultSeq: seq, inProgress: 0, rangeStart: 0x7feacde61000, rangeEnd: 0x7feacde62000 });
    }
  }
  const w = CaptureWriter.create(file, { meta: { hostKernel: '6.1.30', bootTimeMs: 1_700_000_000_000, retPf: { ...RET_PF_6_1 }, mode: 'kprobe', vmNames: { 4000: HOSTILE, 5000: 'web2' } } });
  w.write(b.batch());
  w.close();
}

function isPng(buf: Buffer): { width: number; height: number } {
  assert.ok(buf.length > 1000, `a PNG of some size (${buf.length} bytes)`);
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  assert.equal(buf.subarray(12, 16).toString('latin1'), 'IHDR');
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

async function report(file: string): Promise<{ r: AnalysisReport; html: string; ms: number }> {
  const t0 = process.hrtime.bigint();
  const r = await analyzeFile(file, { timeline: true });
  const html = renderHtmlReport(r, { generatedAt: new Date(0), version: 'test' });
  return { r, html, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

describe('58 report: analyze --html in a headless browser', function () {
  this.timeout(180_000);
  let dir: string;
  let browser: Browser;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'kvmfault-html-'));
    mkdirSync(ARTIFACTS, { recursive: true });
    browser = await startBrowser();
  });
  after(async () => {
    await browser?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function load(name: string, html: string): Promise<LoadedPage> {
    const file = path.join(dir, name);
    writeFileSync(file, html);
    const page = await browser.open(pathToFileURL(file).href);
    const bad = page.console.filter((c) => c.level === 'error' || c.level === 'warning');
    assert.deepEqual(bad, [], `no console errors or warnings loading ${name}`);
    // the page fetches nothing: its own URL is the only request
    assert.deepEqual(page.requests, [pathToFileURL(file).href], 'requests');
    const shot = await page.screenshot();
    const png = path.join(ARTIFACTS, `58-${name.replace(/[^a-zA-Z0-9.-]/g, '_')}.png`);
    writeFileSync(png, shot);
    const { width } = isPng(shot);
    assert.ok(width >= 1000, `screenshot ${png} is ${width} px wide`);
    return page;
  }

  it('the harness sees console errors and requests (so the checks below can fail)', async () => {
    const file = path.join(dir, 'noisy.html');
    // port 9 on loopback: nothing listens, the request fails at once
    writeFileSync(file, '<!DOCTYPE html><title>noisy</title><script>console.error("from the page")</script><img src="http://127.0.0.1:9/x.png">');
    const page = await browser.open(pathToFileURL(file).href);
    assert.ok(page.console.some((c) => c.level === 'error' && c.text.includes('from the page')), JSON.stringify(page.console));
    assert.ok(page.requests.includes('http://127.0.0.1:9/x.png'), JSON.stringify(page.requests));
  });

  it('the stuck fixture: verdict, evidence, the sequence chart against 0x80000000, a vCPU timeline', async () => {
    const { r, html } = await report(fixturePath('stuck-seq-sign-extension.log'));
    assert.equal(r.stuck, 2);
    const page = await load('stuck-seq-sign-extension.html', html);
    const dom = await page.evaluate<{ title: string; vms: number; seqSvgs: number; signbit: number; seqPath: string; vcpus: string[]; attempts: number; bars: string; band: string[]; text: string }>(`(() => ({
      title: document.title,
      vms: document.querySelectorAll('#vms ~ section.vm').length,
      seqSvgs: document.querySelectorAll('section.vm svg.seq').length,
      signbit: document.querySelectorAll('section.vm svg.seq line.signbit').length,
      seqPath: document.querySelector('section.vm svg.seq path.seqline').getAttribute('d'),
      vcpus: [...document.querySelectorAll('section.vcpu')].map((s) => s.className),
      attempts: document.querySelectorAll('section.vcpu svg.attempts').length,
      bars: document.querySelector('section.vcpu svg.attempts path.bar.stuck').getAttribute('d'),
      band: [...document.querySelectorAll('section.vcpu svg.attempts rect.gpa')].map((e) => e.parentNode.textContent),
      text: document.body.innerText,
    }))()`);
    assert.match(dom.title, /^kvmfault analyze: .*stuck-seq-sign-extension\.log$/);
    assert.equal(dom.vms, 1);
    assert.ok(dom.seqSvgs >= 1 && dom.signbit >= 1, 'a sequence chart with the 0x80000000 line');
    assert.match(dom.seqPath, /^M[\d.]+ [\d.]+H/, 'the sequence is drawn');
    assert.deepEqual(dom.vcpus, ['vcpu stuck', 'vcpu stuck']);
    assert.equal(dom.attempts, 2, 'a timeline per vCPU');
    assert.match(dom.bars, /^M/, 'attempt bars');
    assert.ok(dom.band.some((t) => t.includes('gpa 1343fa0b0')), `the gpa band names the gpa: ${dom.band.join(' | ')}`);
    for (const want of ['seq-sign-extension', 'high', 'behaviour', 'evidence: lines 1..5 of the input (6 entries)', 'hva 7feb409fa000, rip ffffffff814e6ca5, seq 8002dc25..8002dc25',
      'is_page_fault_stale() compares a sign-extended int snapshot', '0x80000000']) {
      assert.ok(dom.text.includes(want), `the page says "${want}"`);
    }
  });

  it('a capture written here: the climb past 0x80000000, the stuck vCPU, and a hostile VM name shown as text', async () => {
    const file = path.join(dir, 'signbit.kvmf');
    signBitCapture(file);
    const { r, html } = await report(file);
    assert.equal(r.stuck, 1);
    assert.ok(!html.includes(HOSTILE) && html.includes(esc(HOSTILE)), 'the VM name is escaped in the HTML');
    const page = await load('signbit-capture.html', html);
    const dom = await page.evaluate<{ title: string; scripts: number; imgs: number; handlers: number; h3: string[]; seqSvgs: number; stuck: string; capture: string }>(`(() => ({
      title: document.title,
      scripts: document.querySelectorAll('script').length,
      imgs: document.querySelectorAll('img').length,
      handlers: document.querySelectorAll('[onerror],[onload],[onclick]').length,
      h3: [...document.querySelectorAll('section.vm h3')].map((h) => h.textContent),
      seqSvgs: document.querySelectorAll('section.vm svg.seq').length,
      stuck: document.querySelector('section.vcpu.stuck').innerText,
      capture: document.getElementById('capture').textContent,
    }))()`);
    assert.equal(dom.scripts, 0, 'no script element');
    assert.equal(dom.imgs, 0, 'no img element');
    assert.equal(dom.handlers, 0, 'no event handler attribute');
    assert.ok(!dom.title.includes('pwned'), 'nothing ran');
    assert.ok(dom.h3.some((h) => h.includes(HOSTILE)), `the name is shown literally: ${dom.h3.join(' | ')}`);
    assert.ok(dom.h3.some((h) => h.includes('web2')));
    assert.ok(dom.seqSvgs >= 2, 'a chart per VM');
    assert.match(dom.stuck, /seq-sign-extension/);
    assert.match(dom.stuck, new RegExp(`VM name\\s+${HOSTILE.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(dom.capture, /capture format 2, complete, kprobe mode, .*host kernel 6\.1\.30/);
    // the timeline saw the climb: the first VM's last bucket is past the sign bit, its first below
    const vm = r.timeline!.vms.find((v) => v.pid === 4000)!;
    const known = [...vm.seqLast.subarray(0, r.timeline!.usedBuckets)].filter((x) => !Number.isNaN(x));
    assert.ok(known[0] < 0x80000000 && known[known.length - 1] > 0x80000000, 'the sequence crosses 0x80000000 on the chart');
  });

  it('hostile text input: a path and log lines with markup stay text', async () => {
    const name = '<img src=x onerror=alert(1)>.log';
    const file = path.join(dir, name);
    const fixture = readFileSync(fixturePath('stuck-seq-sign-extension.log'), 'utf8');
    writeFileSync(file, fixture + `21:25:50:282800 tid[3484173] pid[3484149] FAULTIN @ rip ${HOSTILE}\n\u202e<b>bold</b>\x1b[31m\n`);
    const { r, html } = await report(file);
    assert.ok(r.importer!.skipped >= 1, 'the bad lines are skipped and listed');
    const page = await load('hostile-text.html', html);
    const dom = await page.evaluate<{ scripts: number; imgs: number; bold: number; skipped: string; title: string }>(`(() => ({
      scripts: document.querySelectorAll('script').length,
      imgs: document.querySelectorAll('img').length,
      bold: document.querySelectorAll('b').length,
      skipped: document.querySelector('ul.skipped').innerText,
      title: document.title,
    }))()`);
    assert.deepEqual([dom.scripts, dom.imgs, dom.bold], [0, 0, 0]);
    assert.ok(dom.title.includes(name), 'the path is in the title as text');
    assert.ok(dom.skipped.includes(HOSTILE), `the log line is shown as text: ${dom.skipped}`);
    assert.ok(dom.skipped.includes('\\u{202e}<b>bold</b>\\x1b[31m'), `bidi override and ESC shown escaped: ${dom.skipped}`);
  });

  it('every fixture renders (text logs, counter snapshots, the v1 capture)', async () => {
    const fixtures = readdirSync(path.join(ROOT, 'test', 'fixtures')).filter((f) => /\.(log|txt|kvmfcap)$/.test(f));
    assert.ok(fixtures.length >= 10);
    for (const f of fixtures) {
      const { r, html, ms } = await report(fixturePath(f));
      assert.match(html, /^<!DOCTYPE html>/, f);
      assert.ok(html.length < 512 * 1024, `${f}: ${html.length} bytes`);
      assert.ok(ms < 5000, `${f}: ${ms} ms`);
      if (r.counterVms.length) assert.match(html, /VMs by their KVM counters/, f);
      if (r.vcpus.length) assert.match(html, /class="vcpu /, f);
    }
    // one of the counter logs in the browser
    const { html } = await report(fixturePath('kvm-counters.mail.txt'));
    const page = await load('kvm-counters.html', html);
    assert.match(await page.evaluate<string>(`document.getElementById('counters').nextElementSibling.innerText`), /STUCK|stuck/);
  });

  it('a large capture: bounded page (downsampled series, capped charts), time and size measured', async () => {
    const mix = interleavedMix({ vms: 8, vcpusPerVm: 24, records: 200_000, seed: 3, stuckVcpu: 5, stepNs: 20_000 });
    const file = path.join(dir, 'large.kvmf');
    const w = CaptureWriter.create(file, { meta: { hostKernel: '6.1.30', bootTimeMs: null, retPf: { ...RET_PF_6_1 }, mode: 'tracepoint' } });
    for (const b of chunked(mix.batch, 8192)) w.write(b);
    w.close();
    const { r, html, ms } = await report(file);
    const t = r.timeline!;
    assert.ok(t.usedBuckets <= TIMELINE_BUCKETS && t.bucketNs > 1000, `downsampled: ${t.usedBuckets} buckets of ${t.bucketNs} ns`);
    assert.equal(r.vcpus.length, 192);
    assert.equal((html.match(/<svg [^>]*class="attempts"/g) ?? []).length, MAX_VCPU_CHARTS, 'vCPU charts capped');
    assert.match(html, /chart left out/);
    assert.ok(html.length < 4 * 1024 * 1024, `${html.length} bytes`);
    process.stdout.write(`      (${r.records} records, ${r.vcpus.length} vCPUs: ${(html.length / 1024).toFixed(0)} KiB of HTML in ${ms.toFixed(0)} ms)\n`);
    const page = await load('large-capture.html', html);
    assert.equal(await page.evaluate<number>(`document.querySelectorAll('section.vcpu').length`), 192);
  });

  it('the timeline keeps totals through folding and out-of-order records', () => {
    const b = new TraceBuilder();
    const v = vcpu(7000, 0);
    b.fault(v, 5e9, 0x1000, { mmuSeq: 10 });           // first record
    b.fault(v, 2e9, 0x1000, { mmuSeq: 9 });            // older than it: the axis moves back
    for (let i = 0; i < 5000; i++) b.fault(v, 5e9 + i * 1e6, 0x2000 + (i % 3 === 0 ? 0 : 4096), { mmuSeq: 11 + i }, 2);
    b.map(v, 9e9, 0x3000);
    const t = new Timeline(RET_PF_6_1);
    for (const part of chunked(b.batch(), 333)) t.push(part);
    const d = t.data();
    const s = d.vcpus[0];
    assert.equal(s.attempts.reduce((a, x) => a + x, 0), 2 + 5000 * 2);
    assert.equal(s.mapped.reduce((a, x) => a + x, 0), 1);
    assert.ok(d.t0Ns <= 2e9 && d.t0Ns + d.usedBuckets * d.bucketNs > 9e9, 'the axis spans every record');
    assert.ok(d.usedBuckets <= TIMELINE_BUCKETS);
    const vm = d.vms[0];
    assert.equal(Math.min(...[...vm.seqMin].filter((x) => !Number.isNaN(x))), 9);
    assert.equal(Math.max(...[...vm.seqMax].filter((x) => !Number.isNaN(x))), 11 + 4999);
  });

  it('the CLI: --html writes the page and keeps the text report and exit code; an unwritable path is exit 2', () => {
    const out = path.join(dir, 'cli.html');
    const r = spawnSync(process.execPath, [CLI, 'analyze', '--html', out, fixturePath('stuck-seq-sign-extension.log')], { encoding: 'utf8' });
    assert.equal(r.status, 1, 'stuck: exit 1, as without --html');
    assert.match(r.stdout, /vCPUs: 2 stuck/);
    assert.match(r.stderr, new RegExp(`kvmfault: wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\([\\d.]+ KiB\\)`));
    assert.match(readFileSync(out, 'utf8'), /<svg /);
    const bad = spawnSync(process.execPath, [CLI, 'analyze', '--html', path.join(dir, 'no', 'such', 'dir', 'x.html'), fixturePath('stuck-seq-sign-extension.log')], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /cannot write the HTML report to .*x\.html: ENOENT \(pick a writable path\)/);
  });
});
