/**
 * The live detector view shared by `watch`, `demo` and the default job: the tracer feeds a
 * StaleFaultDetector; every interval a table per VM and vCPU is drawn (in place on a TTY,
 * as plain lines when piped, as JSON lines with --json) and verdict changes become alerts.
 */
import { readFileSync } from 'node:fs';
import { formatDuration, StaleFaultDetector, Verdict, VmForecast } from '../detector';
import { hostKernel, retPfTable } from '../kernels';
import { threadName, vmName } from '../procinfo';
import { escapeControl } from '../escape';
import { EXIT_OK, EXIT_PROBLEM } from './errors';
import { LiveSession, out } from './lifecycle';
import { InvalidationSources, MemslotMatchStats, remedy, SourceCount, sourceRates, VmSources } from '../sources';
import { announceMode, humanRate, openTracerForCli } from './live';
import type { ModeChoice } from './options';

export interface WatchOptions {
  pid?: number;
  mode: ModeChoice;
  json?: boolean;
  failOnStuck?: boolean;
  /** seconds between redraws (default 1 on a TTY, 10 when piped) */
  intervalS?: number;
  stuckAttempts?: number;
  stuckSeconds?: number;
  /** a line shown above the table (the demo says what it runs) */
  banner?: string;
  /** force TTY rendering on or off (default: stdout is a TTY) */
  tty?: boolean;
}

export interface WatchResult {
  exitCode: number;
  stuckSeen: number;
  records: number;
  dropped: number;
  final: Verdict[];
  vms: VmForecast[];
}

/** non-stuck transitions of one vCPU are alerted at most this often (a race flips every fault) */
const ALERT_QUIET_MS = 5000;
const MAX_ALERTS_SHOWN = 8;

const commCache = new Map<number, string>();
export function comm(pid: number): string {
  let c = commCache.get(pid);
  if (c === undefined) {
    try {
      c = escapeControl(readFileSync(`/proc/${pid}/comm`, 'utf8').trim());
    } catch {
      c = '?';
    }
    commCache.set(pid, c);
  }
  return c;
}

export function clock(d = new Date()): string {
  return d.toTimeString().slice(0, 8);
}

function describe(v: Verdict): string {
  const why = v.state === 'stuck' ? ` cause ${v.cause} (${v.confidence})` : v.state === 'retrying' && v.retryReason ? ` (${v.retryReason})` : '';
  return `pid ${v.pid} tid ${v.tid}${v.vcpu !== null ? ` vcpu ${v.vcpu}` : ''} ${v.state}${why}: gpa ${v.gpa ?? '?'}, ${v.attempts} attempt(s)`;
}

/** Draws a frame over the previous one on a TTY (cut to the terminal); returns its line count. */
export function redraw(session: LiveSession, lines: string[], prevLines: number): number {
  const cols = process.stdout.columns || 160;
  const rows = process.stdout.rows || 50;
  const shown = lines.slice(0, Math.max(1, rows - 1)).map((l) => (l.length >= cols ? l.slice(0, cols - 1) : l));
  // back to the top of the previous frame, clear below, draw
  const up = prevLines > 0 ? `\x1b[${prevLines}F` : '';
  out(session, `${up}\x1b[J${shown.join('\n')}\n`);
  return shown.length;
}

export function pad(s: string, n: number): string {
  return s.length >= n ? s.slice(0, n) : s + ' '.repeat(n - s.length);
}

export async function runWatch(o: WatchOptions, session: LiveSession): Promise<WatchResult> {
  const tty = o.tty ?? !!process.stdout.isTTY;
  const intervalMs = (o.intervalS ?? (tty ? 1 : 10)) * 1000;
  const tracer = await openTracerForCli({ mode: o.mode, pid: o.pid }, session);
  announceMode(tracer, 'watching');
  const kernel = hostKernel();
  const pending = new Map<number, Verdict>();
  const detector = new StaleFaultDetector({
    retPf: retPfTable(tracer.retPf),
    kernel,
    stuckAttempts: o.stuckAttempts,
    stuckNs: o.stuckSeconds === undefined ? undefined : o.stuckSeconds * 1e9,
    onVerdict: (v) => pending.set(v.tid, v),
  });

  // who invalidates each VM (lib/sources.ts): stacks resolved once per id through the tracer
  // counted for a VM only inside its memslots (lib/memslots.ts), read again at every frame
  const memslots = tracer.memslots();
  const sources = new InvalidationSources((id) => tracer.stack(id), memslots);
  let prevOutside: { count: number; t: number } = { count: 0, t: Date.now() };
  let outsideRate = 0;
  let prevSources: { snap: VmSources[]; t: number } = { snap: [], t: Date.now() };
  let sourceRateList: ReturnType<typeof sourceRates> = [];
  const sourceLines = (vmId: string): string[] => {
    const mine = sourceRateList.filter((r) => r.vmId === vmId).slice(0, 4);
    if (!mine.length) return [];
    const lines = [`  invalidated by: ${mine.map((r) => `${r.source} ${humanRate(r.perSec)} (${escapeControl(r.evidence)}${r.comm && r.comm !== r.evidence ? `, ${escapeControl(r.comm)}` : ''})`).join(', ')}`];
    if (kernel.affected !== null && kernel.affected !== undefined) lines.push(`  remedy: ${remedy(mine[0].source, kernel.affected)}`);
    return lines;
  };

  const alertedState = new Map<number, string>();
  const alertedAt = new Map<number, number>();
  const alerts: string[] = [];
  const lastTotal = new Map<number, { total: number; t: number; rate: number }>();
  let stuckSeen = 0;
  let prevLines = 0;
  let bannerShown = false;
  let records = 0;
  const started = Date.now();

  const takeAlerts = (): { line: string; v: Verdict; from: string }[] => {
    const now = Date.now();
    const fresh: { line: string; v: Verdict; from: string }[] = [];
    for (const v of pending.values()) {
      const from = alertedState.get(v.tid) ?? 'new';
      const key = v.state + (v.cause ?? '');
      if (from === key || (from === 'new' && v.state === 'progressing')) {
        if (from === 'new') alertedState.set(v.tid, key);
        continue;
      }
      const involvesStuck = v.state === 'stuck' || from.startsWith('stuck');
      if (!involvesStuck && now - (alertedAt.get(v.tid) ?? 0) < ALERT_QUIET_MS) continue;
      alertedState.set(v.tid, key);
      alertedAt.set(v.tid, now);
      if (v.state === 'stuck') stuckSeen++;
      const fromName = from === 'new' ? 'new' : from.replace(/^stuck.*/, 'stuck');
      const line = `${clock()} ${v.state === 'stuck' ? 'ALERT STUCK' : from.startsWith('stuck') ? 'RECOVERED' : 'change'}: ${describe(v)} (was ${fromName})` +
        (v.state === 'stuck' ? `\n         ${v.explanation}` : '');
      fresh.push({ line, v, from: fromName });
    }
    pending.clear();
    return fresh;
  };

  const frame = (final: boolean): { lines: string[]; vcpus: (Verdict & { faultsPerSec: number; threadName: string | null })[]; vms: (VmForecast & { name: string | null })[]; sources: VmSources[];
    match: MemslotMatchStats; outside: SourceCount[] } => {
    const now = Date.now();
    const verdicts = detector.snapshot();
    const vms = detector.forecast().map((vm) => ({ ...vm, name: vmName(vm.pid) }));
    const vcpus = verdicts.map((v) => {
      const prev = lastTotal.get(v.tid);
      let rate = prev?.rate ?? 0;
      if (prev && now > prev.t) rate = ((v.totalAttempts - prev.total) * 1000) / (now - prev.t);
      if (!final) lastTotal.set(v.tid, { total: v.totalAttempts, t: now, rate });
      return { ...v, threadName: threadName(v.pid, v.tid), faultsPerSec: Math.max(0, rate) };
    });
    const snap = sources.snapshot();
    sourceRateList = sourceRates(prevSources.snap, snap, now - prevSources.t);
    const match = sources.matchStats();
    if (now > prevOutside.t) outsideRate = ((match.outside - prevOutside.count) * 1000) / (now - prevOutside.t);
    if (!final) {
      prevSources = { snap, t: now };
      prevOutside = { count: match.outside, t: now };
      memslots.refresh();
    }
    const st = tracer.stats();
    const lines: string[] = [];
    if (o.banner && (tty || o.json || final || !bannerShown)) lines.push(o.banner);
    bannerShown = true;
    const counts = { stuck: 0, retrying: 0, progressing: 0 };
    for (const v of vcpus) counts[v.state]++;
    lines.push(`kvmfault watch  ${clock()}  ${tracer.mode} mode  ${vms.length} VM(s), ${vcpus.length} vCPU(s): ` +
      `${counts.stuck} stuck, ${counts.retrying} retrying, ${counts.progressing} progressing  ` +
      `records ${records}, dropped ${st.dropped}  kernel ${kernel.release} ${kernel.affected === true ? 'AFFECTED' : kernel.affected === false ? 'not affected' : 'unknown'}${kernel.decidedBy ? ` (${kernel.decidedBy === 'btf' ? 'by its BTF' : 'from the version only'})` : ''}`);
    if (vcpus.length === 0) lines.push(`  no KVM page faults seen yet${o.pid ? ` for pid ${o.pid}` : ''} (${((now - started) / 1000).toFixed(0)} s)`);
    for (const vm of vms) {
      const mine = vcpus.filter((v) => v.vmId === vm.vmId);
      const vmRate = mine.reduce((a, v) => a + v.faultsPerSec, 0);
      const left = vm.crossed ? 'CROSSED 0x80000000' : vm.secondsToSignBit === null ? 'time to 0x80000000 unknown' : `0x80000000 in ${formatDuration(vm.secondsToSignBit)}`;
      lines.push(`VM ${vm.vmId.slice(0, 16)} pid ${vm.pid} (${comm(vm.pid)}${vm.name ? `, ${vm.name}` : ''})  faults ${humanRate(vmRate)}  seq ${vm.seq ?? '?'}` +
        `${vm.ratePerSec !== null ? ` +${humanRate(vm.ratePerSec)}` : ''}  ${left}`);
      lines.push(...sourceLines(vm.vmId));
      lines.push(`  ${pad('TID', 9)}${pad('THREAD', 12)}${pad('VCPU', 6)}${pad('FAULTS/S', 10)}${pad('STATE', 13)}${pad('ATTEMPTS', 10)}${pad('STUCK FOR', 11)}${pad('CAUSE', 20)}GPA`);
      for (const v of mine) {
        const stuckFor = v.state === 'progressing' ? '-' : formatDuration((v.lastSeen - v.firstSeen) / 1e9);
        const cause = v.cause ?? (v.state === 'retrying' ? v.retryReason ?? '-' : '-');
        lines.push(`  ${pad(String(v.tid), 9)}${pad(v.threadName ?? '?', 12)}${pad(v.vcpu === null ? '?' : String(v.vcpu), 6)}${pad(humanRate(v.faultsPerSec).replace('/s', ''), 10)}` +
          `${pad(v.state, 13)}${pad(String(v.attempts), 10)}${pad(stuckFor, 11)}${pad(cause, 20)}${v.gpa ?? '?'}`);
      }
    }
    const unknownVm = sourceLines('unknown');
    if (unknownVm.length) {
      lines.push(match.enabled ? "invalidations inside several VMs' memslots (same addresses in different VMMs):"
        : `invalidations the tracepoint cannot tie to a VM (kernel threads; no memslot table: ${match.error ?? '?'}):`, ...unknownVm);
    }
    if (match.outside > 0) {
      const top = sources.outsideGuestMemory().slice(0, 3).map((s) => `${s.source} ${s.count}`).join(', ');
      lines.push(`outside guest memory (VMM memory in no memslot, counted for no VM): ${humanRate(Math.max(0, outsideRate))}, ${match.outside} in all (${top})`);
    }
    return { lines, vcpus, vms, sources: snap, match, outside: sources.outsideGuestMemory() };
  };

  const draw = (final: boolean): void => {
    const fresh = takeAlerts();
    const f = frame(final);
    if (o.json) {
      for (const a of fresh) out(session, JSON.stringify({ type: 'alert', time: new Date().toISOString(), from: a.from, verdict: a.v }) + '\n');
      const st = tracer.stats();
      out(session, JSON.stringify({ type: final ? 'final' : 'snapshot', time: new Date().toISOString(), mode: tracer.mode, records,
        dropped: st.dropped, kernel: { release: kernel.release, affected: kernel.affected, decidedBy: kernel.decidedBy }, vms: f.vms, vcpus: f.vcpus,
        sources: f.sources.map((v) => ({ ...v, sources: v.sources.map((x) => ({ ...x, perSec: sourceRateList.find((r) => r.vmId === v.vmId && r.source === x.source)?.perSec ?? 0 })) })),
        outsideGuestMemory: { total: f.match.outside, perSec: Math.max(0, outsideRate), sources: f.outside }, memslotMatch: f.match }) + '\n');
    } else if (tty) {
      for (const a of fresh) alerts.push(a.line);
      while (alerts.length > MAX_ALERTS_SHOWN) alerts.shift();
      const lines = [...f.lines];
      if (alerts.length) lines.push('', 'alerts:', ...alerts.flatMap((a) => a.split('\n')).map((a) => '  ' + a));
      prevLines = redraw(session, lines, prevLines);
    } else {
      for (const a of fresh) out(session, a.line + '\n');
      if (final || f.vcpus.length > 0 || Date.now() - started >= intervalMs) out(session, (final ? '-- final\n' : '') + f.lines.join('\n') + '\n');
    }
    if (o.failOnStuck && fresh.some((a) => a.v.state === 'stuck')) session.stop('stuck');
  };

  const timer = setInterval(() => draw(false), intervalMs);
  let final: Verdict[] = [];
  let vms: VmForecast[] = [];
  try {
    for await (const batch of tracer.events({ signal: session.signal })) {
      records += batch.length;
      detector.push(batch);
      sources.add(batch);
      if (o.failOnStuck && pending.size > 0) {
        for (const v of pending.values()) if (v.state === 'stuck') draw(false);
      }
      if (session.reason === 'EPIPE' || session.reason === 'stuck') break;
    }
  } finally {
    clearInterval(timer);
  }
  if (session.reason !== 'EPIPE') draw(true);
  final = detector.snapshot();
  vms = detector.forecast();
  const dropped = tracer.stats().dropped;
  tracer.close();
  const exitCode = session.exitCode ?? (o.failOnStuck && stuckSeen > 0 ? EXIT_PROBLEM : EXIT_OK);
  return { exitCode, stuckSeen, records, dropped, final, vms };
}
