/**
 * The built-in workload run in this process under a live tracer on this pid (tracepoint mode:
 * the one every host kind has, PVM, VMX and SVM; kprobe and fentry on a real guest are proven by
 * the kernel matrix, test/kernels): every batch goes to onBatch, and it returns once the ring's
 * tail has been read.
 */
import type { EventBatch } from '../../lib/record';
import { openTracer, TracerOptions } from '../../lib/tracer';
import { runWorkload, WorkloadOptions, WorkloadResult } from '../../lib/workload';

export interface TracedRun {
  result: WorkloadResult;
  dropped: number;
  mode: string;
}

export async function traceOwnWorkload(
  workload: WorkloadOptions,
  tracerOptions: TracerOptions,
  onBatch: (batch: EventBatch) => void,
): Promise<TracedRun> {
  const tracer = await openTracer({ mode: 'tracepoint', pid: process.pid, ...tracerOptions });
  const stop = new AbortController();
  const drain = (async () => {
    for await (const batch of tracer.events({ signal: stop.signal })) onBatch(batch);
  })();
  try {
    const result = await runWorkload(workload);
    await new Promise((r) => setTimeout(r, 200)); // the ring's tail timer delivers the last records
    stop.abort();
    await drain;
    return { result, dropped: tracer.stats().dropped, mode: tracer.mode };
  } finally {
    stop.abort();
    tracer.close();
    await drain.catch(() => undefined);
  }
}
