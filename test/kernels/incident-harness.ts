/**
 * What the incident-kernel tests (test/kernels/*.incident.kernel.ts) share: which matrix line
 * this is, the @@kernels reports, the check that fails (never skips) off an incident kernel, and
 * CLI / QEMU children whose output is kept with its arrival time. Not a test file itself.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';

export const LINE = process.env.KVMFAULT_KERNEL_LINE ?? '';
export const VARIANT = /-bug$/.test(LINE) ? 'bug' : /-fixed$/.test(LINE) ? 'fixed' : null;
/** the kvm module parameter incident.sh adds: a new VM's mmu_invalidate_seq starts there */
export const PARAM = '/sys/module/kvm/parameters/initial_invalidate_seq';
export const CLI = join(__dirname, '../../lib/cli/main.js');

/** One measured fact for matrix.sh to collect (.cache/kernels/results/<kernel>.jsonl). */
export function report(what: string, data: object): void {
  console.log(`@@kernels ${JSON.stringify({ kernel: release(), line: LINE, what, ...data })}`);
}

/** CLOCK_MONOTONIC, as bpf_ktime_get_ns */
export const monoNs = (): number => Number(process.hrtime.bigint());
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** a deadline for Promise.race: unref'd, so a race already won does not keep mocha alive */
export const deadline = (ms: number): Promise<false> => new Promise((r) => setTimeout(() => r(false), ms).unref());

export async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

/** Fails (never skips) when this is not an incident kernel booted by the matrix, saying why. */
export function requireIncidentKernel(): void {
  if (process.getuid?.() !== 0) throw new Error('incident-kernel tests need root (run them through scripts/kernels/matrix.sh 6.1-bug 6.1-fixed)');
  if (!VARIANT) {
    throw new Error(`KVMFAULT_KERNEL_LINE is '${LINE}', not a line ending in -bug or -fixed: run through scripts/kernels/matrix.sh 6.1-bug 6.1-fixed`);
  }
  if (!existsSync('/dev/kvm')) throw new Error(`kernel ${release()}: no /dev/kvm (matrix.sh loads kvm + kvm_amd)`);
  if (!existsSync(PARAM)) {
    throw new Error(`${PARAM} is missing: this kvm.ko is not one incident.sh built (line ${LINE}, kernel ${release()})`);
  }
}

export interface JsonLine { at: number; obj: Record<string, unknown> }

export interface Child {
  proc: ChildProcess;
  /** stdout lines that parsed as JSON, stamped with their arrival time (mono ns) */
  lines: JsonLine[];
  /** all of stdout */
  out: string;
  stderr: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

/** Runs a child; onText sees stdout as it comes (with its arrival time), onLine each JSON line. */
export function child(cmd: string, args: string[], onLine?: (l: JsonLine) => void, onText?: (text: string, at: number) => void): Child {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const c: Child = { proc, lines: [], out: '', stderr: '', exited: null as never };
  let buf = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    c.out += d;
    onText?.(d, monoNs());
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!text.startsWith('{')) continue;
      try {
        const l = { at: monoNs(), obj: JSON.parse(text) as Record<string, unknown> };
        c.lines.push(l);
        onLine?.(l);
      } catch { /* a multi-line JSON document (workload --json): read whole from `out` at the end */ }
    }
  });
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { c.stderr += d; });
  c.exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal, at: monoNs() })));
  return c;
}

/** the CLI (node main.js ...), as a user runs it */
export const cli = (args: string[], onLine?: (l: JsonLine) => void): Child => child(process.execPath, [CLI, ...args], onLine);

export type Exit = { code: number | null; signal: NodeJS.Signals | null; by: string };

/** Ends a child: `sig` (SIGTERM), then SIGKILL. Says which one did it, or 'itself'. */
export async function end(c: Child, graceMs = 5000, sig: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
  if (c.proc.exitCode !== null || c.proc.signalCode !== null) return { code: c.proc.exitCode, signal: c.proc.signalCode, by: 'itself' };
  c.proc.kill(sig);
  const t = await Promise.race([c.exited, deadline(graceMs).then(() => null)]);
  if (t) return { code: t.code, signal: t.signal, by: sig };
  c.proc.kill('SIGKILL');
  const k = await c.exited;
  return { code: k.code, signal: k.signal, by: 'SIGKILL' };
}

/** Stops `kvmfault watch` as a user does (Ctrl-C, 10 s grace, then SIGTERM/SIGKILL), or says it ended itself. */
export async function stopWatch(watch: Child): Promise<Exit> {
  if (watch.proc.exitCode === null && watch.proc.signalCode === null) {
    watch.proc.kill('SIGINT');
    const t = await Promise.race([watch.exited, deadline(10_000).then(() => null)]);
    return t ? { code: t.code, signal: t.signal, by: 'SIGINT' } : await end(watch);
  }
  const t = await watch.exited;
  return { code: t.code, signal: t.signal, by: 'itself' };
}
