/**
 * Issue 14's goals, each as one row with its ratio and met / missed, from the figures the
 * scenarios of one `npm run bench` measured (bench/run-all.ts prints it last and records it).
 * Nothing here measures: a goal whose scenario failed or did not run says so.
 */
import type { E2eResult } from './e2e';
import { faultFloor, faultPathPrograms, type ProbeCostResult } from './probe-cost';
import type { RingBenchResult } from './ring';

export interface GoalInputs {
  ring?: RingBenchResult;
  e2e?: E2eResult;
  probeCost?: ProbeCostResult;
  /** bench/detector.ts's stdout (its own process) */
  detectorText?: string;
}

interface GoalRow { goal: string; measured: string; met: boolean | null }

const x = (v: number): string => `${v.toFixed(2)}×`;
const pct = (v: number): string => `${v.toFixed(1)} %`;

function ringRows(r: RingBenchResult | undefined): GoalRow[] {
  if (!r) return [{ goal: '1. zero-copy drain ≥ C libbpf and ≥ copy mode', measured: 'ring scenario did not run', met: null }];
  const t = r.targets;
  const cpu = (c: string): number | undefined => r.liveMax.find((s) => s.consumer === c)?.cpuPct.median;
  const js = cpu('js-zero-copy'), cc = cpu('c-libbpf');
  return [
    {
      goal: '1. full-ring drain, zero-copy, default batch ≥ 1.0× C libbpf and ≥ 1.0× copy mode',
      measured: `${(t.drainRecordsPerSec / 1e6).toFixed(1)}M/s = ${x(t.drainVsC)} C, ${x(t.drainVsCopy)} copy`,
      met: t.drainVsC >= 1 && t.drainVsCopy >= 1,
    },
    { goal: '1. live, producer at its max rate: zero-copy ≥ 1.0× C', measured: x(t.zeroCopyVsCLive), met: t.zeroCopyVsCLive >= 1 },
    {
      goal: '5. live consumer CPU at max rate ≤ the C consumer\'s',
      measured: js === undefined || cc === undefined ? 'not measured' : `${js.toFixed(0)} % vs ${cc.toFixed(0)} %`,
      met: js === undefined || cc === undefined ? null : js <= cc,
    },
  ];
}

function probeRows(p: ProbeCostResult | undefined): GoalRow[] {
  const goal = '2. BPF cost per hit of each fault-path program ≤ 1.3× the minimal producer';
  if (!p || p.referenceNs === null) return [{ goal, measured: 'probe-cost scenario did not run', met: null }];
  const ref = p.referenceNs;
  const floor = faultFloor(p.programs);
  const fault = faultPathPrograms(p.programs);
  if (!fault.length) return [{ goal, measured: 'no fault-path program ran', met: null }];
  const rows: GoalRow[] = [{
    goal: `${goal} at sys_enter (ringtest, ${ref.toFixed(0)} ns)`,
    measured: fault.map((q) => `${q.program} ${q.nsPerRun.median.toFixed(0)} ns ${x(q.nsPerRun.median / ref)}`).join(', '),
    met: fault.every((q) => q.nsPerRun.median <= 1.3 * ref),
  }];
  const typed = fault.filter((q) => q.source === 'kvm tracer (tracepoint)');
  if (floor && typed.length) {
    rows.push({
      goal: `${goal} at the tracer's own per-fault tracepoint (${floor.tracepoint}; same work there: ${floor.ringNs.toFixed(0)} ns)`,
      measured: typed.map((q) => `${q.program} ${x(q.nsPerRun.median / floor.ringNs)}`).join(', '),
      met: typed.every((q) => q.nsPerRun.median <= 1.3 * floor.ringNs),
    });
  }
  return rows;
}

function e2eRows(e: E2eResult | undefined): GoalRow[] {
  const goal = '3. real-fault overhead ≤ 5 % at the workload\'s max rate';
  if (!e) return [{ goal, measured: 'e2e scenario did not run', met: null }];
  return e.summary.filter((s) => s.mode !== 'off').map((s) => ({
    goal: `${goal} (${s.mode})`, measured: pct(s.overheadPct), met: s.overheadPct <= 5,
  }));
}

function detectorRows(text: string | undefined): GoalRow[] {
  const goal = '4. detector ≥ 20M records/s on one core';
  const m = text ? /([\d.]+)M\/s[^\n]*?the 20M\/s goal: (met|missed)/.exec(text) : null;
  if (!m) return [{ goal, measured: 'detector scenario did not run', met: null }];
  return [{ goal, measured: `${m[1]}M/s (no listener)`, met: m[2] === 'met' }];
}

/** The goals table (markdown). */
export function goalsMarkdown(g: GoalInputs, cpu: string): string {
  const rows = [...ringRows(g.ring), ...probeRows(g.probeCost), ...e2eRows(g.e2e), ...detectorRows(g.detectorText)];
  const mark = (m: boolean | null): string => (m === null ? 'not measured' : m ? 'met' : '**missed**');
  return [
    `### Issue 14's goals in this run (${cpu})`,
    '',
    '| goal | measured | |',
    '|---|---|---|',
    ...rows.map((r) => `| ${r.goal} | ${r.measured} | ${mark(r.met)} |`),
  ].join('\n');
}
