/**
 * Shared helpers for the benchmarks: the machine and commit a run is recorded against, repeat
 * statistics, the native helper tools (build/Release/<name>, from bench/native/<name>.c), the
 * load generator, bpf_stats, and the results file.
 *
 * Benchmarks are not tests: they print numbers and ratios against references measured in the
 * same run; nothing here asserts a speed.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Repository root (this file runs from dist/bench/). */
export const ROOT = path.resolve(__dirname, '..', '..');
export const RESULTS_FILE = path.join(ROOT, 'bench', 'RESULTS.md');

export class BenchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BenchError';
  }
}

export interface BenchEnv {
  date: string;
  kernel: string;
  cpu: string;
  cores: number;
  node: string;
  commit: string;
  /** 1-minute load average when the run started: other users of the 2 cores show here */
  load1: number;
}

export function benchEnv(): BenchEnv {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' });
    if (dirty.trim() !== '') commit += ' (+ uncommitted changes in the tree)';
  } catch {
    // not a git checkout: keep 'unknown'
  }
  return {
    date: new Date().toISOString(),
    kernel: os.release(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    node: process.version,
    commit,
    load1: os.loadavg()[0],
  };
}

export function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new BenchError(`${what} loads BPF programs: run it as root (e.g. sudo npm run bench)`);
  }
  if (!existsSync('/sys/kernel/btf/vmlinux')) {
    throw new BenchError(`${what} needs kernel BTF (/sys/kernel/btf/vmlinux): a kernel with CONFIG_DEBUG_INFO_BTF=y`);
  }
}

/** build/Release/<name>: a helper built from bench/native/<name>.c. */
export function toolPath(name: string): string {
  const p = path.join(ROOT, 'build', 'Release', name);
  if (!existsSync(p)) {
    throw new BenchError(
      `${p} is missing: build the benchmark helpers with \`npx cmake-js rebuild\` (bench/native/${name}.c)`,
    );
  }
  return p;
}

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

// ---- statistics over repeats ---------------------------------------------------------------

export interface Spread {
  n: number;
  median: number;
  min: number;
  max: number;
  mean: number;
  /** coefficient of variation, % (stddev / mean) */
  cvPct: number;
}

export function spread(values: readonly number[]): Spread {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const n = v.length;
  if (n === 0) return { n: 0, median: NaN, min: NaN, max: NaN, mean: NaN, cvPct: NaN };
  const mean = v.reduce((a, b) => a + b, 0) / n;
  const sd = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
  const median = n % 2 ? v[(n - 1) / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return { n, median, min: v[0], max: v[n - 1], mean, cvPct: mean ? (100 * sd) / mean : 0 };
}

/** "3.52M/s (3.41–3.60, ±2.1%, n=3)" */
export function fmtSpread(s: Spread, unit = '/s', scale = 1e6, suffix = 'M'): string {
  if (s.n === 0) return 'n/a';
  const f = (x: number): string => (x / scale).toFixed(x / scale >= 100 ? 0 : 2);
  const range = s.n > 1 ? ` (${f(s.min)}–${f(s.max)}, ±${s.cvPct.toFixed(1)}%, n=${s.n})` : '';
  return `${f(s.median)}${suffix}${unit}${range}`;
}

export function ratio(a: number, b: number): string {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return 'n/a';
  return `${(a / b).toFixed(2)}×`;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- the load generator --------------------------------------------------------------------

export interface LoadgenResult {
  calls: number;
  seconds: number;
}

export interface Loadgen {
  pid: number;
  child: ChildProcess;
  /** Start the calls (the consumer must be attached to `pid` by now). */
  go(): void;
  /** Its "<calls> <seconds>" report once it exited. */
  done: Promise<LoadgenResult>;
}

/** Starts build/Release/loadgen N RATE, waiting for go(). rate 0 = as fast as possible. */
export function spawnLoadgen(calls: number, rate = 0): Loadgen {
  const child = spawn(toolPath('loadgen'), [String(calls), String(Math.round(rate))], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => (out += d));
  const done = new Promise<LoadgenResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      const [c, s] = out.trim().split(/\s+/).map(Number);
      if (code !== 0 || !Number.isFinite(c) || !Number.isFinite(s)) {
        reject(new BenchError(`loadgen exited with ${code} and printed ${JSON.stringify(out)}`));
      } else resolve({ calls: c, seconds: s });
    });
  });
  if (child.pid === undefined) throw new BenchError('loadgen did not start');
  return { pid: child.pid, child, go: () => child.stdin!.end('go\n'), done };
}

/** Runs a helper to completion and parses its one-line JSON output. */
export function runJsonTool<T>(name: string, args: string[], timeoutMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(toolPath(name), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      let parsed: any;
      try {
        parsed = JSON.parse(out.trim().split('\n').pop() ?? '');
      } catch {
        reject(new BenchError(`${name} ${args.join(' ')}: exit ${code ?? signal}, output ${JSON.stringify(out + err)}`));
        return;
      }
      if (parsed.error) reject(new BenchError(`${name}: ${parsed.error}${err ? ` (${err.trim()})` : ''}`));
      else if (code !== 0) reject(new BenchError(`${name} exited with ${code ?? signal}: ${err.trim()}`));
      else resolve(parsed as T);
    });
  });
}

// ---- kernel.bpf_stats_enabled ----------------------------------------------------------------

const BPF_STATS = '/proc/sys/kernel/bpf_stats_enabled';

/** Turns kernel.bpf_stats_enabled on; returns a function that restores the previous value. */
export function enableBpfStats(): () => void {
  const before = readFileSync(BPF_STATS, 'utf8').trim();
  writeFileSync(BPF_STATS, '1');
  let restored = false;
  const restore = (): void => {
    if (restored) return;
    restored = true;
    try {
      writeFileSync(BPF_STATS, before);
    } catch {
      // the process is exiting and cannot write: nothing better to do
    }
  };
  // restored however the run ends: normally, on an exception (exit), or on Ctrl-C / kill
  const onSignal = (sig: NodeJS.Signals): void => {
    restore();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('exit', restore);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    restore();
    process.removeListener('exit', restore);
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
}

export interface ProgStats {
  id: number;
  name: string;
  runCount: number;
  runTimeNs: number;
}

/** Every loaded BPF program's run count and time (bpftool prog show; needs bpf_stats on). */
export function bpfProgStats(): Map<number, ProgStats> {
  const out = execFileSync('bpftool', ['prog', 'show', '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const map = new Map<number, ProgStats>();
  for (const p of JSON.parse(out) as any[]) {
    map.set(p.id, { id: p.id, name: p.name ?? '', runCount: p.run_cnt ?? 0, runTimeNs: p.run_time_ns ?? 0 });
  }
  return map;
}

/** Per-program deltas between two bpfProgStats() snapshots (programs present in both or new). */
export function progDeltas(before: Map<number, ProgStats>, after: Map<number, ProgStats>): ProgStats[] {
  const out: ProgStats[] = [];
  for (const [id, a] of after) {
    const b = before.get(id);
    const runCount = a.runCount - (b?.runCount ?? 0);
    if (runCount > 0) out.push({ id, name: a.name, runCount, runTimeNs: a.runTimeNs - (b?.runTimeNs ?? 0) });
  }
  return out;
}

// ---- results ---------------------------------------------------------------------------------

export function envLine(env: BenchEnv): string {
  return (
    `${env.date} · kernel ${env.kernel} · ${env.cpu} × ${env.cores} · node ${env.node} · ` +
    `commit ${env.commit} · load ${env.load1.toFixed(2)}`
  );
}

/**
 * Appends one dated section to bench/RESULTS.md. Appends only: other sections (the detector's)
 * are never rewritten.
 */
export function appendResults(title: string, env: BenchEnv, body: string): void {
  if (!existsSync(RESULTS_FILE)) {
    writeFileSync(RESULTS_FILE, '# kvmfault benchmark results\n\nAppended by `npm run bench` (and `bench:*`); newest last.\n');
  }
  appendFileSync(RESULTS_FILE, `\n## ${title} — ${env.date.slice(0, 10)}\n\n${envLine(env)}\n\n${body.trim()}\n`);
}

/** Command-line flags shared by every scenario: --quick (tiny sizes), --repeats N, --no-record. */
export interface CommonFlags {
  quick: boolean;
  repeats: number | undefined;
  record: boolean;
  json: boolean;
}

export function parseFlags(argv: string[] = process.argv.slice(2)): CommonFlags {
  const flags: CommonFlags = { quick: false, repeats: undefined, record: true, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') flags.quick = true;
    else if (a === '--no-record') flags.record = false;
    else if (a === '--json') flags.json = true;
    else if (a === '--repeats') {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1) throw new BenchError(`--repeats needs a positive integer, got ${argv[i]}`);
      flags.repeats = n;
    } else throw new BenchError(`unknown option ${a} (use --quick, --repeats N, --no-record, --json)`);
  }
  return flags;
}

/** Runs a scenario's main: expected failures print one line (no stack trace), exit 1. */
export function runMain(fn: () => Promise<void>): void {
  fn().catch((e) => {
    if (e instanceof BenchError) console.error(`bench: ${e.message}`);
    else console.error(e);
    process.exitCode = 1;
  });
}
