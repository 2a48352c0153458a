/**
 * Shared by the 30.tracer.* tests: what a tracer test needs from the machine (fails, never
 * skips, saying exactly what is missing), and the minimal KVM guest (test/helpers/minivmm.c)
 * compiled once per run with cc.
 */
import { execFileSync, spawn, ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

/** The tracer needs root and kernel BTF. */
export function requireTracerHost(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('this test loads BPF programs and needs root (CAP_BPF + CAP_PERFMON): run `npm test` as root');
  }
  if (!existsSync('/sys/kernel/btf/vmlinux')) {
    throw new Error('this test needs kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y); this kernel has none');
  }
}

/** ...and a guest needs /dev/kvm. */
export function requireGuestHost(): void {
  requireTracerHost();
  if (!existsSync('/dev/kvm')) throw new Error('this test runs a real KVM guest and needs /dev/kvm; this machine has none');
}

let vmmBinary: string | null = null;

/** Compiles test/helpers/minivmm.c (once) and returns the executable's path. */
export function minivmmPath(): string {
  if (vmmBinary) return vmmBinary;
  // dist/test/ -> the repo's test/helpers/minivmm.c
  const src = path.resolve(__dirname, '..', '..', 'test', 'helpers', 'minivmm.c');
  if (!existsSync(src)) throw new Error(`test helper source missing: ${src}`);
  const out = path.join(mkdtempSync(path.join(tmpdir(), 'kvmfault-minivmm-')), 'minivmm');
  try {
    execFileSync('cc', ['-O2', '-Wall', '-o', out, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    throw new Error(`compiling ${src} with cc failed (install gcc/clang): ${(e as { stderr?: Buffer }).stderr?.toString() ?? e}`);
  }
  vmmBinary = out;
  return out;
}

export interface GuestResult {
  pid: number;
  tid: number;
  pages: number;
  runs: number;
  pf_taken: number;
  pf_fixed: number;
  slot_hva: number;
  slot_bytes: number;
  region_gpa: number;
  pvm: boolean;
}

/** A guest process, set up and waiting: attach to `pid`, then start() it. */
export interface Guest {
  pid: number;
  child: ChildProcess;
  /** Lets the guest run; resolves with its own report (KVM's fault counters) when it exits. */
  start(): Promise<GuestResult>;
  kill(): void;
}

export async function spawnGuest(pages: number, runs = 1): Promise<Guest> {
  const child = spawn(minivmmPath(), [String(pages), String(runs)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => (out += d));
  child.stderr!.on('data', (d: string) => (err += d));
  const exited = once(child, 'exit');
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (out.includes('ready ')) resolve();
    };
    child.stdout!.on('data', check);
    child.on('exit', (code) => reject(new Error(`minivmm exited (${code}) before it was ready: ${err.trim()}`)));
  });
  return {
    pid: child.pid!,
    child,
    async start(): Promise<GuestResult> {
      child.stdin!.end('go\n');
      const [code] = await exited;
      if (code !== 0) throw new Error(`minivmm failed (exit ${code}): ${err.trim()}`);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (!line) throw new Error(`minivmm printed no result: ${out}`);
      return JSON.parse(line) as GuestResult;
    },
    kill(): void {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}
