/**
 * `watch --counters`: KVM's own counters for every VM, per vCPU, redrawn every interval — the
 * cheap first look on a busy host (no tracer: a BPF iterator runs once per interval). A vCPU is
 * SUSPECT when KVM took faults for it and fixed none (lib/counters.ts); `watch` without
 * --counters then names the cause.
 */
import { CounterView, CounterWatch, VmCounterView } from '../counters';
import { formatDuration } from '../detector';
import { hostKernel } from '../kernels';
import { EXIT_OK, EXIT_PROBLEM } from './errors';
import { LiveSession, out } from './lifecycle';
import { everyUntilStopped, humanRate, openCounterSourceForCli } from './live';
import { clock, comm, pad, redraw } from './watchview';

export interface CounterWatchViewOptions {
  pid?: number;
  json?: boolean;
  /** exit 1 once a VM is suspect */
  failOnSuspect?: boolean;
  intervalS?: number;
  source?: 'bpf-iter' | 'debugfs';
  suspectAttempts?: number;
  tty?: boolean;
}

const rate = (r: number | null): string => (r === null ? '-' : humanRate(r).replace('/s', ''));

function vmLines(vm: VmCounterView, nowMs: number): string[] {
  const left = vm.mmuSeq === null ? 'sequence not visible (debugfs)' : vm.secondsToSignBit === 0 ? 'CROSSED 0x80000000'
    : vm.secondsToSignBit === null ? 'time to 0x80000000 unknown' : `0x80000000 in ${formatDuration(vm.secondsToSignBit)}`;
  const lines = [`VM ${vm.vmId.slice(0, 16)} pid ${vm.pid} (${comm(vm.pid)}${vm.name ? `, ${vm.name}` : ''})  ` +
    `seq ${vm.mmuSeq === null ? '?' : vm.mmuSeq.toString(16)}${vm.seqRatePerSec !== null ? ` +${humanRate(vm.seqRatePerSec)}` : ''}  ${left}` +
    (vm.suspect ? '  SUSPECT' : '')];
  lines.push(`  ${pad('VCPU', 6)}${pad('TID', 9)}${pad('PF/S', 10)}${pad('FIXED/S', 10)}${pad('RETRIED/S', 11)}${pad('EXITS/S', 10)}STATE`);
  for (const v of vm.vcpus) {
    const state = v.suspect ? `SUSPECT for ${formatDuration((nowMs - v.suspectSinceMs!) / 1000)}` : v.rates.pf_taken === null ? '-' : 'ok';
    lines.push(`  ${pad(v.vcpuId === null ? 'all' : String(v.vcpuId), 6)}${pad(v.tid === null ? '?' : String(v.tid), 9)}${pad(rate(v.rates.pf_taken), 10)}` +
      `${pad(rate(v.rates.pf_fixed), 10)}${pad(rate(v.retriedPerSec), 11)}${pad(rate(v.rates.exits), 10)}${state}`);
  }
  return lines;
}

export async function runCounterWatch(o: CounterWatchViewOptions, session: LiveSession): Promise<{ exitCode: number; suspectSeen: number }> {
  const source = openCounterSourceForCli(o.source, session);
  const tty = o.tty ?? !!process.stdout.isTTY;
  const intervalMs = (o.intervalS ?? (tty ? 1 : 10)) * 1000;
  const watch = new CounterWatch({ minAttempts: o.suspectAttempts });
  const kernel = hostKernel();
  process.stderr.write(`kvmfault: watching KVM's counters (${source.kind}, every ${intervalMs / 1000} s; no tracer attached); Ctrl-C stops\n`);
  let prevLines = 0;
  let suspectSeen = 0;
  const suspectPids = new Set<string>();
  const draw = (view: CounterView, sampleMs: number, final: boolean): void => {
    for (const vm of view.vms) {
      const key = `${vm.pid}/${vm.vmId}`;
      if (vm.suspect && !suspectPids.has(key)) { suspectPids.add(key); suspectSeen++; }
    }
    if (o.json) {
      out(session, JSON.stringify({ type: final ? 'final' : 'counters', time: new Date(view.atMs).toISOString(), source: source.kind,
        sampleMs, kernel: { release: kernel.release, affected: kernel.affected, decidedBy: kernel.decidedBy }, suspectVms: view.suspectVms, vms: view.vms }) + '\n');
    } else {
      const vcpus = view.vms.reduce((a, vm) => a + vm.vcpus.length, 0);
      const lines = [`kvmfault watch --counters  ${clock(new Date(view.atMs))}  ${source.kind}  ${view.vms.length} VM(s), ${vcpus} vCPU(s): ` +
        `${view.suspectVms} suspect  sample ${sampleMs.toFixed(1)} ms  kernel ${kernel.release} ${kernel.affected === true ? 'AFFECTED' : kernel.affected === false ? 'not affected' : 'unknown'}`];
      if (view.vms.length === 0) lines.push('  no vCPU file descriptors on this host' + (o.pid ? ` for pid ${o.pid}` : ''));
      for (const vm of view.vms) lines.push(...vmLines(vm, view.atMs));
      if (view.suspectVms > 0) lines.push('', 'SUSPECT: KVM takes faults for these vCPUs and fixes none. `kvmfault watch --pid <pid>` names the cause.');
      if (tty && !final) prevLines = redraw(session, lines, prevLines);
      else out(session, (final ? '-- final\n' : '') + lines.join('\n') + '\n');
    }
    if (o.failOnSuspect && view.suspectVms > 0) session.stop('stuck');
  };
  const sample = (final: boolean): void => {
    const t0 = process.hrtime.bigint();
    const samples = source.sample().filter((s) => o.pid === undefined || s.pid === o.pid);
    const sampleMs = Number(process.hrtime.bigint() - t0) / 1e6;
    draw(watch.update(samples), sampleMs, final);
  };
  sample(false);
  await everyUntilStopped(session, intervalMs, () => sample(false));
  if (session.reason !== 'EPIPE') sample(true);
  const exitCode = session.exitCode ?? (o.failOnSuspect && suspectSeen > 0 ? EXIT_PROBLEM : EXIT_OK);
  return { exitCode, suspectSeen };
}
