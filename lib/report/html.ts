/**
 * `kvmfault analyze --html FILE`: the analysis as one self-contained HTML page.
 *
 * Fed by the AnalysisReport analyze computes (with `timeline: true` for the charts): per VM the
 * mmu_invalidate_seq over time against the 0x80000000 line, per vCPU the attempts over time and
 * the gpa it was on, its verdict (state, cause, confidence, decidedBy) and the evidence lines the
 * text report prints; then counter verdicts, input problems and the whole text report.
 *
 * - Self-contained: inline CSS and server-side SVG, no script, no font, no image, no link to
 *   anything; a Content-Security-Policy (default-src 'none') makes the browser refuse any fetch or
 *   script all the same.
 * - Everything that came from the input (paths, VM names, log lines, capture metadata, kernel
 *   strings) goes through esc(): HTML metacharacters become entities, control and bidi characters
 *   the \x1b form (lib/escape.ts).
 * - Bounded: the timeline has at most TIMELINE_BUCKETS points per series; at most MAX_VCPUS
 *   verdicts, MAX_VCPU_CHARTS vCPU charts and MAX_VM_CHARTS VM charts are drawn (stuck first); the
 *   page says what it left out (all of it is in `analyze --json`).
 */
import { AnalysisReport, formatReport, inputSummary, ReportVcpu, vcpuEvidence, vcpuWho } from '../analyze';
import { formatDuration, VmForecast } from '../detector';
import { escapeControl } from '../escape';
import { hexNum } from '../hex';
import { SIGN_BIT_SEQ } from '../kernels';
import type { TimelineData, VcpuSeries, VmSeries } from './timeline';

export const MAX_VCPUS = 500;
export const MAX_VCPU_CHARTS = 100;
export const MAX_VM_CHARTS = 64;

export interface HtmlReportOptions {
  /** shown in the footer (default: now) */
  generatedAt?: Date;
  /** kvmfault's version, for the footer */
  version?: string;
}

const ENTITY: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text from the input, made safe for HTML text and attribute values. */
export function esc(text: string | number | null | undefined): string {
  return escapeControl(String(text ?? '')).replace(/[&<>"']/g, (c) => ENTITY[c]);
}

const W = 960;          // chart width (viewBox units)
const PAD_L = 92;       // room for the y labels
const PAD_R = 12;
const PLOT_W = W - PAD_L - PAD_R;

function hex(n: number): string {
  return Number.isFinite(n) && n >= 0 ? '0x' + hexNum(Math.round(n)) : String(n);
}

/** A time span in a unit that suits it. */
function span(ns: number): string {
  if (ns < 1e3) return `${ns.toFixed(0)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(ns < 1e4 ? 1 : 0)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`;
  return formatDuration(ns / 1e9);
}

function xOf(t: TimelineData, b: number): number {
  return PAD_L + (b / Math.max(1, t.usedBuckets)) * PLOT_W;
}

function xAxis(t: TimelineData, y: number): string {
  const total = t.usedBuckets * t.bucketNs;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const x = PAD_L + f * PLOT_W;
    const anchor = f === 0 ? 'start' : f === 1 ? 'end' : 'middle';
    return `<line x1="${x.toFixed(1)}" y1="${y}" x2="${x.toFixed(1)}" y2="${y + 4}" class="axis"/>` +
      `<text x="${x.toFixed(1)}" y="${y + 16}" text-anchor="${anchor}" class="tick">${f === 0 ? '0' : '+' + esc(span(f * total))}</text>`;
  });
  return `<line x1="${PAD_L}" y1="${y}" x2="${W - PAD_R}" y2="${y}" class="axis"/>${ticks.join('')}`;
}

/**
 * A per-bucket series as one step line: each known value spans its bucket and holds until the
 * next known one (a sequence keeps its value between the records that show it).
 */
function stepPath(t: TimelineData, values: Float64Array, y: (v: number) => number): string {
  const parts: string[] = [];
  let pen = false;
  for (let b = 0; b < t.usedBuckets; b++) {
    const v = values[b];
    if (Number.isNaN(v)) continue;
    const x0 = xOf(t, b).toFixed(1), x1 = xOf(t, b + 1).toFixed(1), yv = y(v).toFixed(1);
    parts.push(pen ? `H${x0}V${yv}H${x1}` : `M${x0} ${yv}H${x1}`);
    pen = true;
  }
  return parts.join('');
}

/** Vertical strokes from each bucket's lowest to highest value (where they differ). */
function rangePath(t: TimelineData, lo: Float64Array, hi: Float64Array, y: (v: number) => number): string {
  const parts: string[] = [];
  const half = PLOT_W / Math.max(1, t.usedBuckets) / 2;
  for (let b = 0; b < t.usedBuckets; b++) {
    if (Number.isNaN(lo[b]) || lo[b] === hi[b]) continue;
    const x = (xOf(t, b) + half).toFixed(1);
    parts.push(`M${x} ${y(lo[b]).toFixed(1)}V${y(hi[b]).toFixed(1)}`);
  }
  return parts.join('');
}

function seqChart(t: TimelineData, s: VmSeries, lo: number, hi: number, caption: string, cls: string): string {
  const H = 170, top = 10, bottom = 140;
  const y = (v: number) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  const ticks = [lo, lo + (hi - lo) / 2, hi].map((v) =>
    `<text x="${PAD_L - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end" class="tick">${hex(v)}</text>` +
    `<line x1="${PAD_L}" y1="${y(v).toFixed(1)}" x2="${W - PAD_R}" y2="${y(v).toFixed(1)}" class="grid"/>`).join('');
  let sign = '';
  if (SIGN_BIT_SEQ >= lo && SIGN_BIT_SEQ <= hi) {
    const ys = y(SIGN_BIT_SEQ).toFixed(1);
    sign = `<line x1="${PAD_L}" y1="${ys}" x2="${W - PAD_R}" y2="${ys}" class="signbit"><title>0x80000000: on an affected kernel every fault retries forever from here</title></line>` +
      `<text x="${W - PAD_R - 4}" y="${(Number(ys) - 4).toFixed(1)}" text-anchor="end" class="signlabel">0x80000000</text>`;
  }
  return `<figure class="chart ${cls}"><svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(caption)}" class="seq">` +
    ticks + sign +
    `<path d="${rangePath(t, s.seqMin, s.seqMax, y)}" class="seqrange"/>` +
    `<path d="${stepPath(t, s.seqLast, y)}" class="seqline"/>` +
    xAxis(t, bottom) + `</svg><figcaption>${esc(caption)}</figcaption></figure>`;
}

/**
 * The VM names a capture's metadata carries (`kvmfault record` writes the VMM's -name per pid as
 * meta.vmNames). Untrusted like the rest of the file: only string values are taken.
 */
export function vmNamesOf(r: AnalysisReport): Map<number, string> {
  const out = new Map<number, string>();
  const names = r.capture?.meta.vmNames;
  if (!names || typeof names !== 'object' || Array.isArray(names)) return out;
  for (const [pid, name] of Object.entries(names as Record<string, unknown>)) {
    if (/^\d{1,10}$/.test(pid) && typeof name === 'string' && name) out.set(Number(pid), name.length > 200 ? name.slice(0, 200) + '...' : name);
  }
  return out;
}

function vmSection(r: AnalysisReport, vm: VmForecast, s: VmSeries | undefined, chart: boolean, name: string | undefined): string {
  const t = r.timeline;
  const rate = vm.ratePerSec === null ? 'unknown' : `${vm.ratePerSec.toFixed(1)}/s (${vm.rateSource})`;
  const left = vm.secondsToSignBit === null ? 'unknown' : vm.crossed ? 'crossed' : formatDuration(vm.secondsToSignBit);
  const affected = vm.kernelAffected === true ? 'affected' : vm.kernelAffected === false ? 'not affected' : 'unknown';
  const rows: [string, string][] = [
    ['VM', r.hasPid ? `${vm.vmId} (pid ${vm.pid})` : '? (the log names no VMM pid: all its threads together)'],
    ...(name !== undefined ? [['name (the VMM\'s -name)', name] as [string, string]] : []),
    ['vCPUs', String(vm.vcpus)],
    ['mmu_invalidate_seq (latest)', vm.seq === null ? 'not in this input' : `0x${vm.seq}`],
    ['invalidation rate', rate],
    ['time left to 0x80000000', left],
    ['kernel', `${affected}${vm.decidedBy ? ` (decided by ${vm.decidedBy})` : ''}`],
  ];
  let charts = '';
  if (!chart) charts = '<p class="muted">chart left out (more VMs than the page draws; see analyze --json)</p>';
  else if (!t || !s || s.seqLast.every((v) => Number.isNaN(v))) charts = '<p class="muted">no sequence values over time in this input</p>';
  else {
    let min = Infinity, max = -Infinity;
    for (let b = 0; b < t.usedBuckets; b++) {
      if (!Number.isNaN(s.seqMin[b])) min = Math.min(min, s.seqMin[b]);
      if (!Number.isNaN(s.seqMax[b])) max = Math.max(max, s.seqMax[b]);
    }
    const full = Math.max(SIGN_BIT_SEQ * 1.1, max * 1.05);
    const dist = SIGN_BIT_SEQ - max;
    charts = seqChart(t, s, 0, full, `mmu_invalidate_seq over the input's ${span(t.usedBuckets * t.bucketNs)}, full scale: ` +
      `${hex(min)}..${hex(max)}, ${dist > 0 ? `${dist} below` : `${-dist} past`} 0x80000000`, 'full');
    if (max - min < full * 0.02) {
      const pad = Math.max(1, (max - min) * 0.15);
      charts += seqChart(t, s, Math.max(0, min - pad), max + pad, `zoomed to the values in the input (${max - min} increments)`, 'zoom');
    }
  }
  const state = r.vcpus.some((v) => v.vmId === vm.vmId && v.state === 'stuck') ? 'stuck' : r.vcpus.some((v) => v.vmId === vm.vmId && v.state === 'retrying') ? 'retrying' : 'progressing';
  return `<section class="vm" id="vm-${esc(vm.vmId)}"><h3><span class="badge ${state}">${state}</span> VM ${esc(name ?? (r.hasPid ? vm.vmId : '?'))}</h3>` +
    `<table class="kv">${rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('')}</table>` +
    `<p class="warning ${vm.crossed || (vm.secondsToSignBit !== null && vm.kernelAffected !== false) ? 'warn' : ''}">${esc(vm.warning)}</p>${charts}</section>`;
}

/** A stable colour per gpa (hue from its bits), so one gpa keeps its colour on the page. */
function gpaHue(gpa: number): number {
  const x = Math.imul((gpa / 4096) >>> 0, 0x9e3779b1) >>> 0;
  return x % 360;
}

interface GpaRun { start: number; end: number; gpa: number; many: boolean }

/** Runs of buckets on one gpa (or on many: the gpa changed more than once in a bucket). */
function gpaRuns(t: TimelineData, s: VcpuSeries): GpaRun[] {
  const runs: GpaRun[] = [];
  let cur: GpaRun | null = null;
  for (let b = 0; b < t.usedBuckets; b++) {
    if (s.attempts[b] === 0) {
      if (cur) cur.end = b + 1; // no attempt: the vCPU is still on that gpa
      continue;
    }
    const many = s.gpaChanges[b] > 1;
    const gpa = s.gpaLast[b];
    if (cur && cur.many === many && (many || cur.gpa === gpa) && (many || s.gpaChanges[b] === 0)) {
      cur.end = b + 1;
      cur.gpa = gpa;
      continue;
    }
    cur = { start: b, end: b + 1, gpa, many };
    runs.push(cur);
  }
  // a run carried over trailing empty buckets ends at its last attempt
  for (const run of runs) {
    while (run.end > run.start + 1 && s.attempts[run.end - 1] === 0) run.end--;
  }
  return runs;
}

function vcpuChart(t: TimelineData, s: VcpuSeries, v: ReportVcpu): string {
  const H = 150, top = 8, bottom = 88, bandY = 96, bandH = 22;
  let maxA = 0;
  let total = 0, mappedTotal = 0;
  for (let b = 0; b < t.usedBuckets; b++) {
    maxA = Math.max(maxA, s.attempts[b], s.mapped[b]);
    total += s.attempts[b];
    mappedTotal += s.mapped[b];
  }
  // log scale: one record can carry ~90 000 earlier attempts (the bpftrace hit counter)
  const lg = (x: number) => Math.log10(1 + x);
  const y = (x: number) => bottom - (lg(x) / Math.max(lg(maxA), 1e-9)) * (bottom - top);
  const bw = PLOT_W / Math.max(1, t.usedBuckets);
  const bars = (a: Float64Array) => {
    const parts: string[] = [];
    for (let b = 0; b < t.usedBuckets; b++) {
      if (a[b] <= 0) continue;
      parts.push(`M${xOf(t, b).toFixed(1)} ${bottom}V${y(a[b]).toFixed(1)}h${Math.max(1, bw * 0.8).toFixed(1)}V${bottom}z`);
    }
    return parts.join('');
  };
  const yTicks = [maxA, Math.round(Math.sqrt(maxA))].filter((x, i, a) => x > 1 && a.indexOf(x) === i).map((x) =>
    `<text x="${PAD_L - 6}" y="${(y(x) + 4).toFixed(1)}" text-anchor="end" class="tick">${x}</text>` +
    `<line x1="${PAD_L}" y1="${y(x).toFixed(1)}" x2="${W - PAD_R}" y2="${y(x).toFixed(1)}" class="grid"/>`).join('');
  const verdictGpa = v.gpa === null ? NaN : parseInt(v.gpa, 16);
  const band = gpaRuns(t, s).map((run) => {
    const x0 = xOf(t, run.start), x1 = xOf(t, run.end);
    const w = Math.max(1, x1 - x0);
    const t0 = span(run.start * t.bucketNs), t1 = span(run.end * t.bucketNs);
    const label = run.many ? 'many gpas' : `gpa ${run.gpa.toString(16)}`;
    const cls = run.many ? 'many' : run.gpa === verdictGpa && v.state !== 'progressing' ? `on ${v.state}` : 'on';
    const fill = run.many || cls !== 'on' ? '' : ` style="fill:hsl(${gpaHue(run.gpa)} 55% 62%)"`;
    const text = w > 8 * label.length ? `<text x="${(x0 + 4).toFixed(1)}" y="${bandY + 15}" class="bandlabel">${esc(label)}</text>` : '';
    return `<g><rect x="${x0.toFixed(1)}" y="${bandY}" width="${w.toFixed(1)}" height="${bandH}" class="gpa ${cls}"${fill}/>${text}` +
      `<title>${esc(`${label}, +${t0} .. +${t1}`)}</title></g>`;
  }).join('');
  const caption = `attempts per ${span(t.bucketNs)} (log scale; ${total} in all, ${mappedTotal} ended mapped) and the gpa the vCPU was on`;
  return `<figure class="chart"><svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(caption)}" class="attempts">` +
    yTicks +
    `<path d="${bars(s.attempts)}" class="bar ${v.state}"/>` +
    `<path d="${bars(s.mapped)}" class="bar mapped"/>` +
    `<text x="${PAD_L - 6}" y="${bandY + 15}" text-anchor="end" class="tick">gpa</text>${band}` +
    xAxis(t, bandY + bandH + 4) +
    `</svg><figcaption>${esc(caption)}; <span class="key attempts ${v.state}">attempts</span> <span class="key mapped">mapped</span></figcaption></figure>`;
}

function vcpuSection(r: AnalysisReport, v: ReportVcpu, s: VcpuSeries | undefined, chart: boolean, vmName: string | undefined): string {
  const rows: [string, string][] = [
    ...(vmName !== undefined ? [['VM name', vmName] as [string, string]] : []),
    ['state', v.state],
    ['cause', v.cause ?? (v.retryReason ? `(retrying: ${v.retryReason})` : '-')],
    ['confidence', v.confidence ?? '-'],
    ['decided by', v.decidedBy ?? '-'],
    ['gpa', v.gpa ?? '?'],
    ['attempts on this gpa', `${v.attempts}${v.explainedAttempts ? ` (${v.explainedAttempts} explained by an invalidation)` : ''}${v.offPathAttempts ? `, ${v.offPathAttempts} off-path` : ''}`],
    ['attempts in all / mapped', `${v.totalAttempts} / ${v.mapped}`],
  ];
  let charts: string;
  const t = r.timeline;
  if (!chart) charts = '<p class="muted">chart left out (more vCPUs than the page draws; see analyze --json)</p>';
  else if (!t || !s) charts = '<p class="muted">no timeline for this vCPU (none in this input, or more threads than the timeline tracks)</p>';
  else charts = vcpuChart(t, s, v);
  return `<section class="vcpu ${v.state}" id="vcpu-${v.tid}"><h3><span class="badge ${v.state}">${v.state}</span> ${esc(vcpuWho(r, v))}${v.evicted ? ' <span class="muted">[evicted]</span>' : ''}</h3>` +
    `<table class="kv verdict">${rows.map(([k, val]) => `<tr><th>${esc(k)}</th><td>${esc(val)}</td></tr>`).join('')}</table>` +
    `<ul class="evidence">${vcpuEvidence(v).map((l) => `<li><code>${esc(l)}</code></li>`).join('')}</ul>` +
    `<p class="explanation">${esc(v.explanation)}</p>${charts}</section>`;
}

function summaryTable(r: AnalysisReport, shown: ReportVcpu[]): string {
  if (shown.length === 0) return '';
  return `<table class="list"><thead><tr><th>state</th><th>vCPU</th><th>cause</th><th>confidence</th><th>decided by</th><th>gpa</th><th>attempts</th></tr></thead><tbody>` +
    shown.map((v) => `<tr class="${v.state}"><td><span class="badge ${v.state}">${v.state}</span></td><td><a href="#vcpu-${v.tid}">${esc(vcpuWho(r, v))}</a></td>` +
      `<td>${esc(v.cause ?? v.retryReason ?? '')}</td><td>${esc(v.confidence ?? '')}</td><td>${esc(v.decidedBy ?? '')}</td><td><code>${esc(v.gpa ?? '?')}</code></td><td>${v.attempts}</td></tr>`).join('') +
    '</tbody></table>';
}

const CSS = `
:root{--stuck:#c62828;--retrying:#ef8f00;--progressing:#2e7d32;--mapped:#1565c0;--muted:#666}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1040px;padding:16px 24px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:0 0 6px}
code,pre{font:12.5px/1.4 "DejaVu Sans Mono",Menlo,Consolas,monospace}pre{white-space:pre-wrap;word-break:break-all;background:#f6f6f6;padding:8px;border-radius:4px}
.muted{color:var(--muted)}.counts span{margin-right:14px}
.badge{display:inline-block;min-width:78px;text-align:center;border-radius:3px;color:#fff;font-size:12px;padding:1px 6px;text-transform:uppercase}
.badge.stuck{background:var(--stuck)}.badge.retrying{background:var(--retrying)}.badge.progressing{background:var(--progressing)}.badge.idle,.badge.unknown{background:#888}
section.vm,section.vcpu,section.counter{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
section.vcpu.stuck{border-left:5px solid var(--stuck)}section.vcpu.retrying{border-left:5px solid var(--retrying)}section.vcpu.progressing{border-left:5px solid var(--progressing)}
table{border-collapse:collapse}table.kv th{text-align:left;font-weight:600;padding:1px 12px 1px 0;color:#333;vertical-align:top}table.kv td{padding:1px 0}
table.list{width:100%}table.list th,table.list td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee}
ul.evidence{margin:6px 0;padding-left:18px}p.explanation{margin:6px 0}p.warning.warn{color:var(--stuck);font-weight:600}
figure.chart{margin:8px 0}figure.chart svg{width:100%;height:auto;display:block}figcaption{font-size:12px;color:var(--muted)}
.axis{stroke:#444;stroke-width:1}.grid{stroke:#e4e4e4;stroke-width:1}.tick{font-size:11px;fill:#444}
.signbit{stroke:var(--stuck);stroke-width:1.5;stroke-dasharray:6 4}.signlabel{font-size:11px;fill:var(--stuck);font-weight:600}
.seqline{fill:none;stroke:#5e35b1;stroke-width:2}.seqrange{fill:none;stroke:#5e35b1;stroke-width:5;stroke-opacity:.35}
.bar{stroke:none}.bar.stuck{fill:var(--stuck)}.bar.retrying{fill:var(--retrying)}.bar.progressing{fill:var(--progressing)}.bar.mapped{fill:var(--mapped);fill-opacity:.75}
.gpa{stroke:#fff;stroke-width:.5}.gpa.on.stuck{fill:var(--stuck)}.gpa.on.retrying{fill:var(--retrying)}.gpa.many{fill:#9e9e9e}.bandlabel{font-size:11px;fill:#111}
.key{display:inline-block;padding:0 5px;border-radius:2px;color:#fff}.key.attempts.stuck{background:var(--stuck)}.key.attempts.retrying{background:var(--retrying)}.key.attempts.progressing{background:var(--progressing)}.key.mapped{background:var(--mapped)}
footer{margin-top:28px;font-size:12px;color:var(--muted)}
@media print{section{break-inside:avoid}}
`;

/** The report as one HTML document (a string; the caller writes it). */
export function renderHtmlReport(r: AnalysisReport, o: HtmlReportOptions = {}): string {
  const t = r.timeline;
  const source = r.path === '-' ? 'standard input' : r.path;
  const vcpus = r.vcpus.slice(0, MAX_VCPUS);
  const vcpuSeries = new Map((t?.vcpus ?? []).map((s) => [s.tid, s]));
  const vmSeries = new Map((t?.vms ?? []).map((s) => [s.vmId, s]));
  const names = vmNamesOf(r);
  const out: string[] = [];
  out.push('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
    // no fetch of any kind and no script, whatever the page holds
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">`,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>kvmfault analyze: ${esc(source)}</title><style>${CSS}</style></head><body>`);

  out.push(`<header><h1>kvmfault analyze</h1><p><code>${esc(source)}</code>: ${esc(inputSummary(r))}</p>`,
    `<p class="counts" id="summary"><span><span class="badge stuck">stuck</span> ${r.stuck}</span><span><span class="badge retrying">retrying</span> ${r.retrying}</span>` +
    `<span><span class="badge progressing">progressing</span> ${r.progressing}</span>${r.counterVms.length ? `<span>VMs stuck by their counters: ${r.stuckVms}</span>` : ''}</p>`);
  if (r.kernel) {
    const st = r.kernel.affected === true ? 'AFFECTED' : r.kernel.affected === false ? 'not affected' : 'unknown';
    out.push(`<p id="kernel">kernel <code>${esc(r.kernel.release)}</code> (${esc(r.kernelSource === 'option' ? '--kernel' : `from the ${r.kernelSource}`)}): ` +
      `sign-extension bug <strong>${esc(st)}</strong>: ${esc(r.kernel.reason)}<br><span class="muted">a stuck vCPU whose records show the bug's signature outranks this judgement: see each verdict's "decided by"</span></p>`);
  } else {
    out.push('<p id="kernel">kernel: unknown (the input does not say; <code>--kernel &lt;release&gt;</code> of the traced host tells)</p>');
  }
  if (r.capture) {
    const m = r.capture.meta;
    const facts = [`capture format ${r.capture.version}`, r.capture.complete === false ? 'incomplete (no end chunk)' : r.capture.complete ? 'complete' : '',
      typeof m.mode === 'string' ? `${m.mode} mode` : '', Number.isFinite(m.startTimeMs) ? `started ${new Date(m.startTimeMs).toISOString()}` : '',
      typeof m.hostKernel === 'string' && m.hostKernel ? `host kernel ${m.hostKernel}` : ''].filter(Boolean);
    out.push(`<p id="capture">${esc(facts.join(', '))}</p>`);
  }
  if (r.notes.length) out.push(`<ul class="notes">${r.notes.map((n) => `<li>note: ${esc(n)}</li>`).join('')}</ul>`);
  if (t && !Number.isNaN(t.t0Ns)) {
    out.push(`<p class="muted">time axis: the input's ${esc(span(t.usedBuckets * t.bucketNs))} in ${t.usedBuckets} steps of ${esc(span(t.bucketNs))} from the first record` +
      `${t.untrackedVcpus ? `; ${t.untrackedVcpus} vCPU thread(s) beyond the first ${t.vcpus.length} have no timeline` : ''}` +
      `${t.untrackedVms ? `; ${t.untrackedVms} VM(s) beyond the first ${t.vms.length} have no chart` : ''}</p>`);
  }
  out.push('</header>');

  if (r.vms.length > 0) {
    out.push(`<h2 id="vms">VMs: mmu_invalidate_seq against 0x80000000</h2>`);
    // VMs with a stuck vCPU first, then those past or nearest to 0x80000000
    const rank = (vm: VmForecast) => (r.vcpus.some((v) => v.vmId === vm.vmId && v.state === 'stuck') ? 0 : 1);
    const vms = [...r.vms].sort((a, b) => rank(a) - rank(b) || (a.secondsToSignBit ?? Infinity) - (b.secondsToSignBit ?? Infinity));
    vms.forEach((vm, i) => out.push(vmSection(r, vm, vmSeries.get(vm.vmId), i < MAX_VM_CHARTS, r.hasPid ? names.get(vm.pid) : undefined)));
  }

  out.push(`<h2 id="vcpus">vCPUs: ${r.stuck} stuck, ${r.retrying} retrying, ${r.progressing} progressing</h2>`);
  if (r.vcpus.length > vcpus.length) out.push(`<p class="muted">the first ${vcpus.length} of ${r.vcpus.length} vCPU verdicts (stuck first); analyze --json has them all</p>`);
  out.push(summaryTable(r, vcpus));
  vcpus.forEach((v, i) => out.push(vcpuSection(r, v, vcpuSeries.get(v.tid), i < MAX_VCPU_CHARTS, r.hasPid ? names.get(v.pid) : undefined)));

  if (r.counterVms.length > 0) {
    out.push(`<h2 id="counters">VMs by their KVM counters: ${r.stuckVms} stuck</h2>`);
    for (const vm of r.counterVms) {
      const deltas = Object.entries(vm.counters).map(([k, c]) => `${k} ${c.delta >= 0 ? '+' : ''}${c.delta}`).join(', ');
      const e = vm.evidenceLines;
      out.push(`<section class="counter"><h3><span class="badge ${esc(vm.state)}">${esc(vm.state)}</span> VM ${esc(vm.name)}</h3>` +
        `<p>${vm.snapshots} snapshot(s)${vm.seconds !== null ? ` over ${vm.seconds} s` : ''}; ${esc(deltas)}</p>` +
        `<ul class="evidence"><li><code>evidence: lines ${e.first}..${e.last} of the input</code></li></ul><p class="explanation">${esc(vm.explanation)}</p></section>`);
    }
  }

  const problems: string[] = [];
  if (r.importer && r.importer.skipped > 0) {
    problems.push(`<p>${r.importer.skipped} line(s) skipped${r.importer.skippedLines.length < r.importer.skipped ? ` (the first ${r.importer.skippedLines.length} shown)` : ''}:</p><ul class="skipped">` +
      r.importer.skippedLines.map((s) => `<li>line ${s.line}: ${esc(s.reason)}: <code>${esc(s.text)}</code></li>`).join('') + '</ul>');
  }
  if (r.capture && r.capture.damage.length > 0) {
    problems.push(`<p>capture damage (${r.capture.damage.length}); every record that verified was analysed${r.capture.gaps ? `, no attempts counted across the ${r.capture.gaps} gap(s)` : ''}:</p><ul>` +
      r.capture.damage.map((d) => `<li>at byte offset ${d.offset}: ${esc(d.what)}</li>`).join('') + '</ul>');
  }
  if (problems.length) out.push(`<h2 id="input">Input problems</h2>${problems.join('')}`);

  out.push(`<h2 id="text">Text report</h2><details open><summary>the same analysis as <code>kvmfault analyze</code> prints it</summary><pre>${formatReport(r).split('\n').map(esc).join('\n')}</pre></details>`);
  out.push(`<footer>kvmfault${o.version ? ` ${esc(o.version)}` : ''} analyze, ${esc((o.generatedAt ?? new Date()).toISOString())}; ` +
    `${r.records} records; all of it as JSON: <code>kvmfault analyze --json</code></footer></body></html>\n`);
  return out.join('\n');
}
