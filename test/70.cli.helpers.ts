/** Helpers for the CLI tests: spawn the built CLI, wait for its stderr, bpftool link ids. */
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { bound } from './helpers/host';

export const CLI = path.join(__dirname, '../lib/cli/main.js');

export function cliSync(args: string[], timeoutMs = 60_000) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 256 << 20 });
}

export interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function cliSpawn(args: string[]): Running {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Resolves when the child's output matches (e.g. the "probes attached" line); fails with its stderr. */
async function waitForOutput(r: Running, which: 'stdout' | 'stderr', re: RegExp, timeoutMs: number): Promise<void> {
  const ms = bound(timeoutMs);
  const until = Date.now() + ms;
  while (!re.test(r[which]())) {
    if (r.child.exitCode !== null) throw new Error(`the CLI exited (${r.child.exitCode}) before printing ${re}: ${r.stderr()}`);
    if (Date.now() > until) throw new Error(`no ${re} on ${which} within ${ms} ms: ${r.stderr()}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Resolves when the child's stderr matches (e.g. the "probes attached" line); fails with its stderr. */
export function waitForStderr(r: Running, re: RegExp, timeoutMs = 15_000): Promise<void> {
  return waitForOutput(r, 'stderr', re, timeoutMs);
}

/**
 * Starts the built-in guest as a child (`kvmfault workload`, text output) and resolves once its
 * VMs and vCPU threads exist (the header line it prints then), with its pid and vCPU tids. The
 * caller stops it (SIGINT); give it a --duration well beyond the test so it cannot end first.
 */
export async function startWorkloadChild(args: string[]): Promise<{ running: Running; pid: number; tids: number[] }> {
  const running = cliSpawn(['workload', ...args]);
  await waitForOutput(running, 'stdout', /^pid \d+, vCPU threads .*\n/m, 15_000);
  const line = /^pid (\d+), vCPU threads (.*)$/m.exec(running.stdout())!;
  // "vm0 [246 247], vm1 [250 251]"
  const tids = [...line[2].matchAll(/\[([\d ]*)\]/g)].flatMap((m) => m[1].split(' ').filter(Boolean).map(Number));
  return { running, pid: Number(line[1]), tids };
}

/** BPF links attached to KVM tracepoints or functions now (ids). */
export function kvmLinkIds(): Set<number> {
  const r = spawnSync('bpftool', ['link', 'list', '-j'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool link list failed (install bpftool, run as root): ${r.stderr}`);
  const links = JSON.parse(r.stdout || '[]') as { id: number; tp_name?: string; func_name?: string; attach_type?: string }[];
  return new Set(links.filter((l) => /kvm/.test(`${l.tp_name ?? ''}${l.func_name ?? ''}`) || l.attach_type === 'trace_fentry').map((l) => l.id));
}

/** Runs the built-in guest as a child (`kvmfault workload --json`) and returns its result. */
export async function runWorkloadChild(args: string[]): Promise<{ pid: number; result: { pid: number; total: { faults: number }; tids: number[] } }> {
  const w = cliSpawn(['workload', '--json', ...args]);
  const { code } = await w.exited;
  if (code !== 0) throw new Error(`kvmfault workload ${args.join(' ')} failed (${code}): ${w.stderr()}`);
  return { pid: w.child.pid!, result: JSON.parse(w.stdout()) };
}

export function tmpFile(name: string): string {
  return path.join(fs.mkdtempSync('/tmp/kvmfault-cli-'), name);
}

/** GET /metrics on loopback. */
export function scrapeMetrics(port: number): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    // agent: false: a fresh connection per scrape (a kept-alive one can be reset by the server's
    // keep-alive timeout firing just as the next request is sent)
    http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d)).on('end', () =>
        resolve({ status: res.statusCode!, type: String(res.headers['content-type']), text }));
    }).on('error', reject);
  });
}

/** Prometheus text format: HELP/TYPE comments and `name{labels} value` samples; fails on anything else. */
export function parsePrometheus(text: string): { types: Map<string, string>; samples: { name: string; labels: Record<string, string>; value: number }[] } {
  const types = new Map<string, string>();
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const t = /^# TYPE (\w+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) { types.set(t[1], t[2]); continue; }
    if (/^# HELP \w+ .+$/.test(line)) continue;
    const s = /^(\w+)(?:\{(.*)\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/.exec(line);
    assert.ok(s, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const kv of (s[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    assert.ok(types.has(s[1]), `sample ${s[1]} has a # TYPE`);
    samples.push({ name: s[1], labels, value: Number(s[3]) });
  }
  return { types, samples };
}
