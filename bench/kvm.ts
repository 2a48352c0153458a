/**
 * Real KVM faults for the benchmarks: the built-in workload in a child process (so the VMM and
 * the tracer are separate processes, as on a real host) and the live tracer on its pid.
 *
 * The tracer is driven through the addon's Tracer (native/addon/tracer.cc) in tracepoint mode,
 * the one mode this machine's kernel offers, with the ring read by an EventStream: the layers a
 * consumer pays for, without openTracer's mode probing (auto tries fentry first) in every run.
 */
import { ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { native } from '../lib/native';
import type { EventBatch } from '../lib/record';
import { EventStream } from '../lib/stream';
import { ProbeCatalogue } from '../lib/tracer';
import type { WorkloadOptions, WorkloadResult } from '../lib/workload';
import { BenchError } from './common';

export interface TracerProgramStats {
  name: string;
  runCount: number;
  runTimeNs: number;
}

export interface KvmTracer {
  ringFd(): number;
  stats(): { submitted: number; dropped: number; bpfStatsEnabled: boolean; programs: TracerProgramStats[] };
  probes: { name: string; point: string; attached: boolean; reason?: string }[];
  close(): void;
}

export interface KvmTracerOptions {
  pid: number;
  mode?: 'tracepoint' | 'kprobe' | 'fentry';
  /** raw_tp programs instead of tp_btf for the tracepoints */
  rawTracepoints?: boolean;
  ringBytes?: number;
  wakeupBytes?: number;
  coalesce?: boolean;
}

export function openKvmTracer(o: KvmTracerOptions): KvmTracer {
  const t = new (native().Tracer)();
  try {
    t.open({
      mode: o.mode ?? 'tracepoint',
      pid: o.pid,
      ringBytes: o.ringBytes ?? 16 << 20,
      wakeupBytes: o.wakeupBytes ?? 256 << 10,
      coalesce: o.coalesce ?? false,
      exits: false,
      rawTracepoints: o.rawTracepoints ?? false,
      invalidationStacks: false,
      verbose: false,
      probes: new ProbeCatalogue().forMode(o.mode ?? 'tracepoint'),
    });
    t.load();
    const probes = t.attach() as KvmTracer['probes'];
    if (!probes.some((p) => p.attached)) {
      throw new BenchError(`no KVM probe attached: ${probes.map((p) => `${p.point}: ${p.reason}`).join('; ')}`);
    }
    return { ringFd: () => t.ringFd(), stats: () => t.stats(), probes, close: () => t.close() };
  } catch (e) {
    t.close();
    const err = e as Error & { code?: string };
    if (e instanceof BenchError) throw e;
    throw new BenchError(`the KVM tracer could not start (${err.code ?? 'error'}): ${err.message}`);
  }
}

export interface WorkloadChild {
  pid: number;
  child: ChildProcess;
  go(): void;
  done: Promise<WorkloadResult>;
}

/**
 * Starts dist/bench/workload-child.js with these workload options; it waits for go() so a
 * tracer can be opened on its pid first.
 */
export function spawnWorkload(options: Omit<WorkloadOptions, 'signal' | 'onStart' | 'onRun'>): WorkloadChild {
  const script = path.join(__dirname, 'workload-child.js');
  const child = spawn(process.execPath, [script, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '', err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<WorkloadResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code === 0) {
        try {
          resolve(JSON.parse(out) as WorkloadResult);
          return;
        } catch {
          // fall through: report what it printed
        }
      }
      reject(new BenchError(`the workload failed (exit ${code}): ${(err || out).trim().split('\n').slice(-3).join(' ')}`));
    });
  });
  if (child.pid === undefined) throw new BenchError('the workload process did not start');
  return { pid: child.pid, child, go: () => child.stdin!.end('go\n'), done };
}

export interface TracedWorkload {
  result: WorkloadResult;
  /** records read from the ring: every one the programs submitted */
  records: number;
  statsBefore: ReturnType<KvmTracer['stats']>;
  statsAfter: ReturnType<KvmTracer['stats']>;
  /** this process's CPU time and the wall time from go() to the last record */
  cpu: NodeJS.CpuUsage;
  wallS: number;
}

/**
 * Runs the workload in a child with a KVM tracer on its pid and reads every record it causes:
 * once the child has exited, the count the kernel says it submitted is the end of the stream.
 */
export async function traceWorkloadChild(
  workload: Parameters<typeof spawnWorkload>[0],
  onBatch?: (batch: EventBatch) => void,
  tracerOptions: Omit<KvmTracerOptions, 'pid'> = {},
): Promise<TracedWorkload> {
  const child = spawnWorkload(workload);
  let tracer: KvmTracer;
  try {
    tracer = openKvmTracer({ ...tracerOptions, pid: child.pid });
  } catch (e) {
    child.done.catch(() => {}); // killed: its exit is not the failure to report
    child.child.kill('SIGKILL');
    throw e;
  }
  const abort = new AbortController();
  const stream = new EventStream(tracer.ringFd(), { signal: abort.signal });
  let records = 0;
  let submitted = Infinity;
  let failure: unknown = null;
  child.done.then(
    () => {
      submitted = tracer.stats().submitted; // the workload exited: no more records
      if (records >= submitted) abort.abort();
    },
    (e) => {
      failure = e;
      abort.abort();
    },
  );
  const statsBefore = tracer.stats();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  child.go();
  try {
    for await (const batch of stream) {
      records += batch.length;
      onBatch?.(batch);
      if (records >= submitted) break;
    }
    const cpu = process.cpuUsage(cpu0);
    const wallS = Number(process.hrtime.bigint() - t0) / 1e9;
    if (failure) throw failure;
    const result = await child.done;
    return { result, records, statsBefore, statsAfter: tracer.stats(), cpu, wallS };
  } finally {
    stream.close();
    tracer.close();
    if (child.child.exitCode === null) child.child.kill('SIGKILL');
  }
}
