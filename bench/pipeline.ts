/**
 * The whole pipeline, ring → batch → detector, in records/s: the bpf_loop producer (RingTest)
 * fills the ring in chunks, an EventStream (the public async iterator, zero copy) hands out
 * batches and a StaleFaultDetector consumes them. Only the consumer side is timed (the
 * producer runs on the same thread between chunks; its time is reported apart).
 *
 * The producer's records are KF_TEST, which the detector rightly ignores. Two detector runs:
 *   detector (ignores KF_TEST)    the plumbing: ring walk, batch, kind check per record
 *   detector (records as FAULT)   each record shown to the detector as a FAULT on a new gpa
 *                                 through a delegating view (one extra call per field read):
 *                                 the detector's full per-fault path, a conservative figure
 * plus 'count only' (no detector) as the ceiling of the stream itself.
 *
 *   node dist/bench/pipeline.js [--quick] [--repeats N] [--no-record] [--json]
 */
import { StaleFaultDetector } from '../lib/detector';
import { EventBatch, FaultEvent, Kind } from '../lib/record';
import { EventStream } from '../lib/stream';
import { appendResults, benchEnv, fmtSpread, parseFlags, requireRoot, runMain, Spread, spread } from './common';
import { openProducer, SMALL_BATCH } from './ring';

/** A batch whose KF_TEST records read as KF_FAULT; every other field passes through. */
class TestAsFault implements EventBatch {
  inner!: EventBatch;
  get length(): number { return this.inner.length; }
  kind(i: number): number { const k = this.inner.kind(i); return k === Kind.TEST ? Kind.FAULT : k; }
  tsNs(i: number): number { return this.inner.tsNs(i); }
  pid(i: number): number { return this.inner.pid(i); }
  tid(i: number): number { return this.inner.tid(i); }
  vmIdLo(i: number): number { return this.inner.vmIdLo(i); }
  vmIdHi(i: number): number { return this.inner.vmIdHi(i); }
  vcpuId(i: number): number { return this.inner.vcpuId(i); }
  flags(i: number): number { return this.inner.flags(i); }
  gpa(i: number): number { return this.inner.gpa(i); }
  errorCode(i: number): number { return this.inner.errorCode(i); }
  hva(i: number): number { return this.inner.hva(i); }
  pfn(i: number): number { return this.inner.pfn(i); }
  ripLo(i: number): number { return this.inner.ripLo(i); }
  ripHi(i: number): number { return this.inner.ripHi(i); }
  mmuSeq(i: number): number { return this.inner.mmuSeq(i); }
  faultSeq(i: number): number { return this.inner.faultSeq(i); }
  inProgress(i: number): number { return this.inner.inProgress(i); }
  rangeStart(i: number): number { return this.inner.rangeStart(i); }
  rangeEnd(i: number): number { return this.inner.rangeEnd(i); }
  ret(i: number): number { return this.inner.ret(i); }
  repeat(i: number): number { return this.inner.repeat(i); }
  u32At(i: number, offset: number): number { return this.inner.u32At(i, offset); }
  get(i: number): FaultEvent { return this.inner.get(i); }
  copy(): EventBatch { return this.inner.copy(); }
  recordBytes(i: number): Uint8Array { return this.inner.recordBytes(i); }
}

export type PipelineVariant = 'count only' | 'detector (ignores KF_TEST)' | 'detector (records as FAULT)';

export interface PipelineRun {
  variant: PipelineVariant;
  maxBatch: number;
  records: number;
  consumerSeconds: number;
  producerSeconds: number;
  recordsPerSec: number;
  detectorRecords: number;
  dropped: number;
}

export interface PipelineOptions {
  records?: number;
  chunk?: number;
  ringBytes?: number;
  repeats?: number;
  log?: (line: string) => void;
}

async function once(variant: PipelineVariant, maxBatch: number, o: Required<PipelineOptions>): Promise<PipelineRun> {
  const producer = openProducer(o.ringBytes, 0);
  const stream = new EventStream(producer.ringFd(), { maxBatch, tailTimerMs: 0 });
  const detector = variant === 'count only' ? null : new StaleFaultDetector();
  const view = variant === 'detector (records as FAULT)' ? new TestAsFault() : null;
  let got = 0, produced = 0, producerNs = 0n;
  let gpaSum = 0;
  const produce = (): void => {
    const t = process.hrtime.bigint();
    produced += producer.run(Math.min(o.chunk, o.records - produced));
    producerNs += process.hrtime.bigint() - t;
  };
  try {
    produce();
    const firstChunkNs = producerNs; // before t0: not inside the timed loop
    producerNs = 0n;
    const t0 = process.hrtime.bigint();
    for await (const batch of stream) {
      if (detector === null) {
        for (let i = 0; i < batch.length; i++) gpaSum += batch.gpa(i);
      } else if (view !== null) {
        view.inner = batch;
        detector.push(view);
      } else {
        detector.push(batch);
      }
      got += batch.length;
      if (got >= produced) {
        if (produced >= o.records) break;
        produce(); // the ring is empty: the next chunk (timed apart)
      }
    }
    const totalNs = process.hrtime.bigint() - t0;
    const consumerSeconds = Number(totalNs - producerNs) / 1e9;
    producerNs += firstChunkNs;
    void gpaSum;
    return {
      variant, maxBatch, records: got, consumerSeconds, producerSeconds: Number(producerNs) / 1e9,
      recordsPerSec: got / consumerSeconds, detectorRecords: detector?.stats().records ?? 0,
      dropped: producer.stats().dropped,
    };
  } finally {
    stream.close();
    producer.close();
  }
}

export interface PipelineResult {
  runs: PipelineRun[];
  summary: { variant: PipelineVariant; maxBatch: number; recordsPerSec: Spread; dropped: number }[];
  markdown: string;
}

export async function runPipelineBench(options: PipelineOptions = {}): Promise<PipelineResult> {
  requireRoot('the pipeline benchmark');
  const o: Required<PipelineOptions> = {
    records: 4_000_000, chunk: 200_000, ringBytes: 64 << 20, repeats: 3, log: () => {}, ...options,
  };
  const variants: PipelineVariant[] = ['count only', 'detector (ignores KF_TEST)', 'detector (records as FAULT)'];
  const batches = [65536, SMALL_BATCH];
  const runs: PipelineRun[] = [];
  for (let r = 0; r < o.repeats; r++) {
    for (const v of variants) {
      for (const mb of batches) {
        const run = await once(v, mb, o);
        runs.push(run);
        o.log(`  pipeline #${r + 1} ${v.padEnd(28)} maxBatch ${String(mb).padEnd(5)} ${(run.recordsPerSec / 1e6).toFixed(2)}M rec/s (dropped ${run.dropped})`);
      }
    }
  }
  const summary = variants.flatMap((variant) => batches.map((maxBatch) => {
    const mine = runs.filter((x) => x.variant === variant && x.maxBatch === maxBatch);
    return { variant, maxBatch, recordsPerSec: spread(mine.map((x) => x.recordsPerSec)), dropped: mine.reduce((a, x) => a + x.dropped, 0) };
  }));
  const markdown = [
    `### Pipeline: ring → EventStream batch → StaleFaultDetector (${o.records.toLocaleString('en')} records in chunks of ${o.chunk.toLocaleString('en')}, ring ${o.ringBytes >> 20} MiB, ${o.repeats} repeats; consumer time only)`,
    '',
    '| consumer | maxBatch | records/s (median, range, CV, n) | dropped |',
    '|---|---|---|---|',
    ...summary.map((s) => `| ${s.variant} | ${s.maxBatch} | ${fmtSpread(s.recordsPerSec)} | ${s.dropped} |`),
    '',
    'KF_TEST records are ignored by the detector; "records as FAULT" shows them to it as faults on a new gpa each ' +
      '(the progressing path) through a delegating view that adds one call per field read.',
  ].join('\n');
  return { runs, summary, markdown };
}

if (require.main === module) {
  runMain(async () => {
    const flags = parseFlags();
    const env = benchEnv();
    const opts: PipelineOptions = flags.quick ? { records: 200_000, chunk: 50_000, ringBytes: 16 << 20, repeats: 1 } : {};
    if (flags.repeats) opts.repeats = flags.repeats;
    opts.log = flags.json ? () => {} : (l) => console.log(l);
    const r = await runPipelineBench(opts);
    if (flags.json) console.log(JSON.stringify(r));
    else console.log('\n' + r.markdown);
    if (flags.record) appendResults('Pipeline', env, r.markdown);
  });
}
