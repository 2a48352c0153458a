/**
 * What the deploy files (alert rules, the Grafana dashboard) may name: the metrics real registries
 * register (FaultMetrics of the tracer modes, CounterMetrics of counters mode with --escalate), and
 * the series names a PromQL expression uses.
 */
import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import { StaleFaultDetector } from '../../lib/detector';
import { RET_PF_6_1 } from '../../lib/kernels';
import { Escalator } from '../../lib/escalate';
import { CounterMetrics, FaultMetrics } from '../../lib/metrics';

const KERNEL = { release: '6.1.0', affected: true } as const;

/** Names a tracer-mode exporter registers (`metrics --mode auto|tracepoint|kprobe|fentry`), from a live registry. */
export function faultMetricNames(): Set<string> {
  const m = new FaultMetrics({
    detector: new StaleFaultDetector({ retPf: RET_PF_6_1 }),
    tracerStats: () => ({ submitted: 0, dropped: 0, bpfStatsEnabled: false, programs: [], stream: null }),
    kernel: KERNEL,
    mode: 'kprobe',
  });
  return new Set(m.registry.getMetricsAsArray().map((x) => x.name));
}

/**
 * Names a counters-mode exporter with --escalate registers (`metrics`, the default mode), built the
 * way lib/cli/commands/metrics.ts builds it; an Escalator with no capture dir needs no root.
 */
export function counterMetricNames(): Set<string> {
  const m = new CounterMetrics({
    view: () => null,
    source: 'bpf-iter',
    kernel: KERNEL,
    sampling: () => ({ samples: 0, lastSampleSeconds: 0, errors: 0 }),
    escalator: new Escalator({ captureDir: null }),
  });
  return new Set(m.registry.getMetricsAsArray().map((x) => x.name));
}

/** Names registered by lib/metrics.ts in either mode, read from live registries (not a copy of the list). */
export function registeredMetricNames(): Set<string> {
  return new Set([...faultMetricNames(), ...counterMetricNames()]);
}

/** Series Prometheus makes itself for every scrape target. */
export const SCRAPE_SERIES = new Set(['up']);

/**
 * The series names in a PromQL expression: identifiers that are not a function call, a keyword,
 * a label name inside {...} or by/on(...) lists, a string, a duration or a number.
 */
export function seriesNames(expr: string): string[] {
  const s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')          // strings
    .replace(/\{[^}]*\}/g, ' ')                                              // label matchers
    .replace(/\[[^\]]*\]/g, ' ')                                             // ranges, subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/\$\{?\w+\}?/g, ' ');                                           // dashboard variables
  const keywords = new Set(['and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'inf', 'nan']);
  const out: string[] = [];
  for (const m of s.matchAll(/(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[2]) continue; // a function or aggregation: name(
    if (keywords.has(m[1].toLowerCase())) continue;
    if (/^\d/.test(m[1])) continue;
    out.push(m[1]);
  }
  return out;
}

/** Runs a system tool; fails with what to install when it is missing (never a silent skip). */
export function runTool(cmd: string, args: string[], debianPackage: string, opts: { cwd?: string; timeout?: number } = {}): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, timeout: opts.timeout ?? 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new Error(`${cmd} is not installed: run \`bash scripts/setup\` (it installs the Debian package ${debianPackage}) or apt-get install ${debianPackage}`);
  }
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  return r;
}
