/**
 * Ring throughput at the producer's limit, 120-byte records (struct kvmfault_event), four
 * consumers side by side in one run:
 *   js-zero-copy  EventStream over the mapped ring (lib/stream.ts, lib/ring.ts)
 *   js-copy       EventStream in 'copy' mode (native drainCopy into a JS buffer)
 *   c-libbpf      build/Release/cconsumer: libbpf ring_buffer__poll / ring_buffer__consume
 *   bpftrace      a script on the same tracepoint printing the same 19 fields to a file
 * Every consumer does the same work per record: read kind and gpa, check the sequence order.
 *
 * Scenarios:
 *   live-max          loadgen calls getppid() as fast as it can; the ringtest raw tracepoint
 *                     (or bpftrace's) turns each call into a record
 *   live-sustainable  the same, paced at a fraction of the max producer rate measured above
 *   drain             the bpf_loop producer fills the ring with no consumer running, then one
 *                     drain of the full ring is timed (the consumer's own ceiling)
 *
 *   node dist/bench/ring.js [--quick] [--repeats N] [--no-record] [--json]
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../lib/native';
import { DEFAULT_MAX_BATCH, NativeRing, openRing, RingConsumer } from '../lib/ring';
import { EventStream } from '../lib/stream';
import {
  appendResults, benchEnv, BenchError, fmtSpread, hasCommand, parseFlags, ratio, requireRoot, runJsonTool,
  runMain, sleep, spawnLoadgen, spread, Spread, toolPath,
} from './common';

/** native/addon/ringtest.cc */
export interface RingTestProducer {
  run(n: number, discardEvery?: number): number;
  setTarget(tgid: number): void;
  ringFd(): number;
  stats(): { submitted: number; dropped: number; nextSeq: number };
  close(): void;
}

/** kvmFloor: also load the producer's twins at KVM's per-fault tracepoints (bench/probe-cost.ts) */
export function openProducer(ringSize: number, wakeupBytes: number, kvmFloor = false): RingTestProducer {
  const Ctor = native().RingTest;
  return new Ctor({ ringSize, wakeupBytes, kvmFloor }) as RingTestProducer;
}

export type LiveConsumer = 'js-zero-copy' | 'js-copy' | 'c-libbpf' | 'bpftrace';

export interface LiveRun {
  consumer: LiveConsumer;
  /** records the consumer received (bpftrace: lines it printed) */
  records: number;
  /** from the go signal to the last record received */
  seconds: number;
  recordsPerSec: number;
  /** getppid() calls made = records offered by the producer */
  producerCalls: number;
  producerPerSec: number;
  /** records the BPF side could not put in the ring (ring full), or bpftrace's lost events */
  dropped: number;
  /** offered but never received: producerCalls - records */
  lost: number;
  outOfOrder: number;
  /** consumer process CPU time / wall time, % (bpftrace: not measured) */
  cpuPct: number;
  wakeups: number;
}

export interface RingBenchOptions {
  /** records per live run (default 4M; bpftrace gets bpftraceRecords) */
  liveRecords?: number;
  bpftraceRecords?: number;
  repeats?: number;
  ringBytes?: number;
  wakeupBytes?: number;
  /** live-sustainable rate as a fraction of the median max producer rate (default 0.5) */
  sustainableFraction?: number;
  drainRingBytes?: number;
  drainRounds?: number;
  consumers?: LiveConsumer[];
  log?: (line: string) => void;
}

// ---- consumers -------------------------------------------------------------------------------

async function jsLive(mode: 'zero-copy' | 'copy', calls: number, rate: number, o: Required<RingBenchOptions>): Promise<LiveRun> {
  const producer = openProducer(o.ringBytes, o.wakeupBytes);
  const abort = new AbortController();
  let stream: EventStream | undefined;
  let loadgen: ReturnType<typeof spawnLoadgen> | undefined;
  try {
    stream = new EventStream(producer.ringFd(), { mode, signal: abort.signal });
    loadgen = spawnLoadgen(calls, rate);
    producer.setTarget(loadgen.pid);
    let finished: { calls: number; seconds: number } | null = null;
    let submitted = Infinity;
    let got = 0, last = -1, outOfOrder = 0, gpaSum = 0;
    let tLast = 0n;
    const lg = loadgen;
    lg.done.then((r) => {
      finished = r;
      submitted = producer.stats().submitted; // the producer is idle: final
      if (got >= submitted) abort.abort();
    }, () => abort.abort());
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    lg.go();
    for await (const batch of stream) {
      const n = batch.length;
      for (let i = 0; i < n; i++) {
        const seq = batch.gpa(i);
        if (seq <= last || batch.kind(i) !== 15) outOfOrder++;
        last = seq;
        gpaSum += seq;
      }
      got += n;
      tLast = process.hrtime.bigint();
      if (got >= submitted) break;
    }
    const cpu = process.cpuUsage(cpu0);
    const r = await lg.done; // rejects if loadgen failed
    void finished;
    const stats = producer.stats();
    const seconds = Number(tLast - t0) / 1e9;
    return {
      consumer: mode === 'copy' ? 'js-copy' : 'js-zero-copy',
      records: got,
      seconds,
      recordsPerSec: got / seconds,
      producerCalls: r.calls,
      producerPerSec: r.calls / r.seconds,
      dropped: stats.dropped,
      lost: r.calls - got,
      outOfOrder,
      cpuPct: (100 * (cpu.user + cpu.system)) / 1e6 / seconds,
      wakeups: stream.stats.wakeups,
    };
  } finally {
    stream?.close();
    if (loadgen && loadgen.child.exitCode === null) loadgen.child.kill('SIGKILL');
    producer.close();
  }
}

interface CLiveOut {
  records: number; seconds: number; producerCalls: number; producerSeconds: number; submitted: number;
  dropped: number; outOfOrder: number; badSize: number; wakeups: number; cpuSeconds: number; loadgenExit: number;
}

async function cLive(calls: number, rate: number, o: Required<RingBenchOptions>): Promise<LiveRun> {
  const r = await runJsonTool<CLiveOut>('cconsumer', [
    'live', String(calls), String(Math.round(rate)), String(o.ringBytes), String(o.wakeupBytes), toolPath('loadgen'),
  ]);
  if (r.loadgenExit !== 0) throw new BenchError(`cconsumer: loadgen exited with ${r.loadgenExit}`);
  return {
    consumer: 'c-libbpf',
    records: r.records,
    seconds: r.seconds,
    recordsPerSec: r.records / r.seconds,
    producerCalls: r.producerCalls,
    producerPerSec: r.producerCalls / r.producerSeconds,
    dropped: r.dropped,
    lost: r.producerCalls - r.records,
    outOfOrder: r.outOfOrder + r.badSize,
    cpuPct: (100 * r.cpuSeconds) / r.seconds,
    wakeups: r.wakeups,
  };
}

/**
 * bpftrace printing the same fields as the record, from the same tracepoint (classic
 * raw_syscalls:sys_enter; ours is the raw tracepoint of the same event), to a file.
 */
export function bpftraceScript(): string {
  return `tracepoint:raw_syscalls:sys_enter /pid == $1 && args->id == 110/ {
  @seq = @seq + 1;
  printf("%llu %u %u %llx %u %u %u %llx %llx %llx %llx %llx %llx %llx %lld %llx %llx %d %u\\n",
    nsecs, pid, tid, @seq ^ 0x5a5a5a5a, @seq & 0xffff, 15, 0, @seq, @seq + 1, @seq + 2, @seq + 3,
    @seq + 4, @seq + 5, @seq + 6, 0, @seq + 7, @seq + 8, @seq & 0x7fffffff, 1);
}
`;
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

/** Record lines (they start with a digit) and the events bpftrace reported lost in its output. */
function countBpftraceOutput(text: string): { printed: number; lostEvents: number } {
  let printed = 0, lostEvents = 0;
  for (let i = 0; i < text.length;) {
    const nl = text.indexOf('\n', i);
    if (nl < 0) break; // a line still being written
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      printed++;
    } else {
      const m = /^Lost (\d+) events/.exec(text.slice(i, nl));
      if (m) lostEvents += Number(m[1]);
    }
    i = nl + 1;
  }
  return { printed, lostEvents };
}

/** bpftrace process `pid` has its program attached to raw_syscalls:sys_enter (bpftool perf list). */
function bpftraceAttached(pid: number): boolean {
  try {
    const out = execFileSync('bpftool', ['perf', 'list', '--json'], { encoding: 'utf8' });
    return (JSON.parse(out || '[]') as { pid: number; tracepoint?: string }[]).some((e) => e.pid === pid && e.tracepoint === 'sys_enter');
  } catch (e) {
    throw new BenchError(`bpftool perf list failed (install bpftool; run as root): ${(e as Error).message}`);
  }
}

async function bpftraceLive(calls: number, rate: number): Promise<LiveRun> {
  if (!hasCommand('bpftrace')) {
    throw new BenchError('bpftrace is not installed (apt-get install bpftrace): it is the reference consumer of this benchmark');
  }
  const dir = os.tmpdir();
  const out = path.join(dir, `kvmfault-bench-bpftrace-${process.pid}.out`);
  const script = path.join(dir, `kvmfault-bench-${process.pid}.bt`);
  rmSync(out, { force: true });
  require('node:fs').writeFileSync(script, bpftraceScript());
  const loadgen = spawnLoadgen(calls, rate);
  let stderr = '';
  const bt = spawn('bpftrace', ['-o', out, script, String(loadgen.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  bt.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const btExit = new Promise<number | null>((resolve) => bt.on('exit', (code) => resolve(code)));
  try {
    // attached once its program is on sys_enter (bpftrace prints "Attaching 1 probe..." BEFORE it
    // attaches: a slow machine ran the whole load before bpftrace saw any of it)
    const deadline = Date.now() + 120_000;
    while (!bpftraceAttached(bt.pid!)) {
      if (bt.exitCode !== null) throw new BenchError(`bpftrace exited with ${bt.exitCode} before attaching: ${stderr.trim()}`);
      if (Date.now() > deadline) throw new BenchError(`bpftrace did not attach within 120 s: ${stderr.trim()}`);
      await sleep(50);
    }
    const t0 = Date.now();
    loadgen.go();
    const r = await loadgen.done;
    // bpftrace is still printing what it read: wait until every call is printed or reported lost
    // (its "Lost N events" lines), or, should some vanish unreported, until the file stops growing
    let size = fileSize(out), tLast = Date.now();
    for (;;) {
      const { printed, lostEvents } = countBpftraceOutput(readFileSync(out, 'utf8'));
      if (printed + lostEvents >= r.calls) break;
      await sleep(200);
      const s = fileSize(out);
      if (s !== size) {
        size = s;
        tLast = Date.now();
      } else if (Date.now() - tLast > 5000) {
        break;
      }
    }
    bt.kill('SIGINT');
    await btExit;
    const { printed, lostEvents } = countBpftraceOutput(readFileSync(out, 'utf8'));
    const seconds = Math.max(tLast - t0, 1) / 1e3;
    return {
      consumer: 'bpftrace',
      records: printed,
      seconds,
      recordsPerSec: printed / seconds,
      producerCalls: r.calls,
      producerPerSec: r.calls / r.seconds,
      dropped: lostEvents,
      lost: r.calls - printed,
      outOfOrder: 0,
      cpuPct: NaN,
      wakeups: NaN,
    };
  } finally {
    if (bt.exitCode === null) {
      bt.kill('SIGINT');
      await Promise.race([btExit, sleep(5000)]);
      if (bt.exitCode === null) bt.kill('SIGKILL');
    }
    if (loadgen.child.exitCode === null) loadgen.child.kill('SIGKILL');
    rmSync(out, { force: true });
    rmSync(script, { force: true });
  }
}

function live(consumer: LiveConsumer, calls: number, rate: number, o: Required<RingBenchOptions>): Promise<LiveRun> {
  switch (consumer) {
    case 'js-zero-copy': return jsLive('zero-copy', calls, rate, o);
    case 'js-copy': return jsLive('copy', calls, rate, o);
    case 'c-libbpf': return cLive(calls, rate, o);
    case 'bpftrace': return bpftraceLive(o.bpftraceRecords, rate);
  }
}

// ---- full-ring drain -------------------------------------------------------------------------

export interface DrainResult {
  consumer: string;
  /** records/s of each timed round (the first, cold round is dropped) */
  rates: number[];
  records: number;
  dropped: number;
  outOfOrder: number;
}

/** One JS consumer of the drain scenario: its own producer and ring, kept open across rounds. */
interface JsDrainer {
  consumer: string;
  producer: RingTestProducer;
  ring: NativeRing;
  reader: RingConsumer;
  rates: number[];
  records: number;
  last: number;
  outOfOrder: number;
}

function openJsDrainer(mode: 'zero-copy' | 'copy', ringBytes: number, maxBatch?: number): JsDrainer {
  const producer = openProducer(ringBytes, 0);
  try {
    const ring = openRing(producer.ringFd());
    return {
      consumer: (mode === 'copy' ? 'js-copy' : 'js-zero-copy') + (maxBatch ? ` (maxBatch ${maxBatch})` : ''),
      producer, ring, reader: new RingConsumer(ring, { mode, maxBatch }),
      rates: [], records: 0, last: -1, outOfOrder: 0,
    };
  } catch (e) {
    producer.close();
    throw e;
  }
}

/** Fills the ring, then times one drain of it; returns records/s. */
function jsDrainRound(d: JsDrainer, records: number): number {
  const submitted = d.producer.run(records);
  const consumer = d.reader;
  let last = d.last, outOfOrder = 0, got = 0;
  const t0 = process.hrtime.bigint();
  for (;;) {
    const batch = consumer.pull();
    const n = batch.length;
    if (n === 0) break;
    for (let i = 0; i < n; i++) {
      const seq = batch.gpa(i);
      if (seq <= last || batch.kind(i) !== 15) outOfOrder++;
      last = seq;
    }
    got += n;
  }
  const ns = Number(process.hrtime.bigint() - t0);
  if (got !== submitted) throw new BenchError(`drain (${d.consumer}): ${submitted} records submitted, ${got} drained`);
  d.last = last;
  d.outOfOrder += outOfOrder;
  d.records += got;
  return got / (ns / 1e9);
}

function closeJsDrainer(d: JsDrainer): DrainResult {
  d.reader.close();
  d.ring.close();
  const dropped = d.producer.stats().dropped;
  d.producer.close();
  return { consumer: d.consumer, rates: d.rates, records: d.records, dropped, outOfOrder: d.outOfOrder };
}

/** One cconsumer run: a cold round (page faults, as the JS warm-up round), then one timed round. */
async function cDrainRound(records: number, ringBytes: number): Promise<{ rate: number; records: number; dropped: number; outOfOrder: number }> {
  const r = await runJsonTool<{ rounds: { records: number; submitted: number; seconds: number }[]; dropped: number; outOfOrder: number; badSize: number }>(
    'cconsumer', ['drain', '2', String(records), String(ringBytes)],
  );
  for (const x of r.rounds) {
    if (x.records !== x.submitted) throw new BenchError(`drain (C): ${x.submitted} records submitted, ${x.records} drained`);
  }
  const timed = r.rounds[r.rounds.length - 1];
  return {
    rate: timed.records / timed.seconds,
    records: r.rounds.reduce((a, x) => a + x.records, 0),
    dropped: r.dropped,
    outOfOrder: r.outOfOrder + r.badSize,
  };
}

/**
 * Full-ring drain, consumers interleaved round by round (machine noise hits each alike): the
 * default zero-copy consumer, zero-copy with SMALL_BATCH, copy mode, C libbpf.
 */
export async function drainScenario(o: Required<RingBenchOptions>): Promise<DrainResult[]> {
  // 8-byte header + 120-byte record; a ring of S bytes holds at most S - 1 bytes of records
  const records = Math.floor(o.drainRingBytes / 128) - 1;
  const js: JsDrainer[] = [];
  const c: DrainResult = { consumer: 'c-libbpf', rates: [], records: 0, dropped: 0, outOfOrder: 0 };
  let results: DrainResult[] = [];
  try {
    js.push(openJsDrainer('zero-copy', o.drainRingBytes));
    js.push(openJsDrainer('zero-copy', o.drainRingBytes, SMALL_BATCH));
    js.push(openJsDrainer('copy', o.drainRingBytes));
    for (const d of js) jsDrainRound(d, records); // warms the JIT and faults the ring's pages in
    for (let r = 0; r < o.drainRounds; r++) {
      for (const d of js) d.rates.push(jsDrainRound(d, records));
      const x = await cDrainRound(records, o.drainRingBytes);
      c.rates.push(x.rate);
      c.records += x.records;
      c.dropped += x.dropped;
      c.outOfOrder += x.outOfOrder;
    }
  } finally {
    results = js.map(closeJsDrainer);
  }
  return [...results, c];
}

// ---- the benchmark ---------------------------------------------------------------------------

export interface LiveSummary {
  consumer: LiveConsumer;
  runs: LiveRun[];
  recordsPerSec: Spread;
  producerPerSec: Spread;
  cpuPct: Spread;
  dropped: number;
  lost: number;
  outOfOrder: number;
}

export interface RingBenchResult {
  options: Omit<Required<RingBenchOptions>, 'log'>;
  liveMax: LiveSummary[];
  sustainableRate: number;
  liveSustainable: LiveSummary[];
  drain: (DrainResult & { recordsPerSec: Spread })[];
  /** the figures the targets are about */
  targets: {
    zeroCopyVsCLive: number;
    zeroCopyDropsAtSustainable: number;
    /** zero-copy full-ring drain, default maxBatch: records/s, and its ratio to C and to copy mode (medians, same run) */
    drainRecordsPerSec: number;
    drainVsC: number;
    drainVsCopy: number;
    drainSmallBatchRecordsPerSec: number;
    zeroCopyVsBpftrace: number;
    bpftraceLossPct: number;
  };
  markdown: string;
}

/** A smaller batch than the default, shown beside it (1024 records = 128 KiB of ring). */
export const SMALL_BATCH = 1024;

const DEFAULTS: Omit<Required<RingBenchOptions>, 'log'> = {
  liveRecords: 4_000_000,
  bpftraceRecords: 1_000_000,
  repeats: 3,
  ringBytes: 32 << 20,
  wakeupBytes: 1 << 20,
  sustainableFraction: 0.5,
  drainRingBytes: 64 << 20,
  drainRounds: 5,
  consumers: ['js-zero-copy', 'js-copy', 'c-libbpf', 'bpftrace'],
};

function summarize(consumer: LiveConsumer, runs: LiveRun[]): LiveSummary {
  return {
    consumer,
    runs,
    recordsPerSec: spread(runs.map((r) => r.recordsPerSec)),
    producerPerSec: spread(runs.map((r) => r.producerPerSec)),
    cpuPct: spread(runs.map((r) => r.cpuPct)),
    dropped: runs.reduce((a, r) => a + r.dropped, 0),
    lost: runs.reduce((a, r) => a + r.lost, 0),
    outOfOrder: runs.reduce((a, r) => a + r.outOfOrder, 0),
  };
}

/** Live runs, consumers interleaved round by round so machine noise hits each alike. */
async function liveScenario(rate: number, o: Required<RingBenchOptions>, label: string): Promise<LiveSummary[]> {
  const runs = new Map<LiveConsumer, LiveRun[]>(o.consumers.map((c) => [c, []]));
  for (let r = 0; r < o.repeats; r++) {
    for (const c of o.consumers) {
      // bpftrace is 10-20x slower: one run is enough to show what it delivers
      if (c === 'bpftrace' && r > 0 && o.repeats > 1 && label === 'live-sustainable') continue;
      const run = await live(c, o.liveRecords, rate, o);
      runs.get(c)!.push(run);
      o.log(
        `  ${label} #${r + 1} ${c.padEnd(12)} ${(run.recordsPerSec / 1e6).toFixed(2)}M rec/s, producer ` +
          `${(run.producerPerSec / 1e6).toFixed(2)}M/s, dropped ${run.dropped}, lost ${run.lost}` +
          (Number.isFinite(run.cpuPct) ? `, cpu ${run.cpuPct.toFixed(0)}%` : ''),
      );
    }
  }
  return o.consumers.map((c) => summarize(c, runs.get(c)!));
}

export async function runRingBench(options: RingBenchOptions = {}): Promise<RingBenchResult> {
  requireRoot('the ring benchmark');
  const o: Required<RingBenchOptions> = { ...DEFAULTS, log: () => {}, ...options } as Required<RingBenchOptions>;
  if (o.consumers.includes('bpftrace') && !hasCommand('bpftrace')) {
    throw new BenchError('bpftrace is not installed (apt-get install bpftrace): it is the reference consumer of this benchmark');
  }
  o.log(`ring: ${o.liveRecords} records per live run, ring ${o.ringBytes >> 20} MiB, wakeup_bytes ${o.wakeupBytes}, ${o.repeats} repeats`);
  const liveMax = await liveScenario(0, o, 'live-max');
  const refs = liveMax.filter((s) => s.consumer !== 'bpftrace');
  const maxProducer = spread(refs.flatMap((s) => s.runs.map((r) => r.producerPerSec))).median;
  const sustainableRate = Math.round(maxProducer * o.sustainableFraction);
  o.log(`  sustainable rate: ${(sustainableRate / 1e6).toFixed(2)}M/s (${o.sustainableFraction} × median max producer rate)`);
  const liveSustainable = await liveScenario(sustainableRate, o, 'live-sustainable');

  const drain: (DrainResult & { recordsPerSec: Spread })[] = [];
  for (const d of await drainScenario(o)) {
    drain.push({ ...d, recordsPerSec: spread(d.rates) });
    o.log(`  drain ${d.consumer.padEnd(12)} ${fmtSpread(spread(d.rates))}`);
  }

  const get = (list: LiveSummary[], c: LiveConsumer): LiveSummary | undefined => list.find((s) => s.consumer === c);
  const zcMax = get(liveMax, 'js-zero-copy'), cMax = get(liveMax, 'c-libbpf'), btMax = get(liveMax, 'bpftrace');
  const zcSus = get(liveSustainable, 'js-zero-copy');
  const zcDrain = drain.find((d) => d.consumer === 'js-zero-copy')!;
  const zcDrainSmall = drain.find((d) => d.consumer.startsWith('js-zero-copy ('))!;
  const copyDrain = drain.find((d) => d.consumer === 'js-copy')!;
  const cDrain = drain.find((d) => d.consumer === 'c-libbpf')!;
  const targets = {
    zeroCopyVsCLive: zcMax && cMax ? zcMax.recordsPerSec.median / cMax.recordsPerSec.median : NaN,
    zeroCopyDropsAtSustainable: zcSus ? zcSus.dropped + zcSus.lost : NaN,
    drainRecordsPerSec: zcDrain.recordsPerSec.median,
    drainVsC: zcDrain.recordsPerSec.median / cDrain.recordsPerSec.median,
    drainVsCopy: zcDrain.recordsPerSec.median / copyDrain.recordsPerSec.median,
    drainSmallBatchRecordsPerSec: zcDrainSmall.recordsPerSec.median,
    zeroCopyVsBpftrace: zcMax && btMax ? zcMax.recordsPerSec.median / btMax.recordsPerSec.median : NaN,
    bpftraceLossPct: btMax ? (100 * btMax.lost) / btMax.runs.reduce((a, r) => a + r.producerCalls, 0) : NaN,
  };
  const { log: _log, ...recorded } = o;
  void _log;
  const result: RingBenchResult = { options: recorded, liveMax, sustainableRate, liveSustainable, drain, targets, markdown: '' };
  result.markdown = ringMarkdown(result);
  return result;
}

function liveTable(list: LiveSummary[]): string {
  const c = list.find((s) => s.consumer === 'c-libbpf');
  const rows = list.map((s) => {
    const cpu = s.cpuPct.n && Number.isFinite(s.cpuPct.median) ? `${s.cpuPct.median.toFixed(0)}%` : 'n/a';
    return `| ${s.consumer} | ${fmtSpread(s.recordsPerSec)} | ${c ? ratio(s.recordsPerSec.median, c.recordsPerSec.median) : 'n/a'} | ` +
      `${fmtSpread(s.producerPerSec)} | ${s.dropped} | ${s.lost} | ${cpu} | ${s.outOfOrder} |`;
  });
  return [
    '| consumer | records/s delivered (median, range, CV, n) | vs C | producer calls/s | dropped (BPF/bpftrace lost) | not delivered | consumer CPU | out of order |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

export function ringMarkdown(r: RingBenchResult): string {
  const o = r.options;
  const c = r.drain.find((d) => d.consumer === 'c-libbpf');
  const drainRows = r.drain.map((d) =>
    `| ${d.consumer} | ${fmtSpread(d.recordsPerSec)} | ${c ? ratio(d.recordsPerSec.median, c.recordsPerSec.median) : 'n/a'} | ${d.dropped} | ${d.outOfOrder} |`);
  const t = r.targets;
  const mark = (ok: boolean): string => (ok ? 'met' : '**missed**');
  return [
    `### Ring throughput (120-byte records; ${o.liveRecords.toLocaleString('en')} records per live run, ` +
      `bpftrace ${o.bpftraceRecords.toLocaleString('en')}; ring ${o.ringBytes >> 20} MiB, wakeup_bytes ${o.wakeupBytes}; ${o.repeats} repeats, interleaved)`,
    '',
    'Live producer at its max rate (loadgen getppid() loop → ringtest raw tracepoint → ring):',
    '',
    liveTable(r.liveMax),
    '',
    `Live producer paced at ${(r.sustainableRate / 1e6).toFixed(2)}M calls/s (${o.sustainableFraction} × the median max producer rate above):`,
    '',
    liveTable(r.liveSustainable),
    '',
    `Full-ring drain (${(o.drainRingBytes >> 20)} MiB ring = ${(Math.floor(o.drainRingBytes / 128) - 1).toLocaleString('en')} records filled by the bpf_loop producer, then one timed drain; ` +
      `${o.drainRounds} warm rounds, consumers interleaved round by round; each reads kind and gpa of every record):`,
    '',
    '| consumer | records/s | vs C | dropped | out of order |',
    '|---|---|---|---|---|',
    ...drainRows,
    '',
    'Targets:',
    `- JS zero-copy vs C on the live producer (max rate): ${t.zeroCopyVsCLive.toFixed(2)}× (target ≥ 1.0×: ${mark(t.zeroCopyVsCLive >= 0.995)})`,
    `- JS zero-copy records not delivered at the sustainable rate: ${t.zeroCopyDropsAtSustainable} (target 0: ${mark(t.zeroCopyDropsAtSustainable === 0)})`,
    `- JS zero-copy full-ring drain, default maxBatch (${DEFAULT_MAX_BATCH}): ${(t.drainRecordsPerSec / 1e6).toFixed(1)}M records/s = ` +
      `${t.drainVsC.toFixed(2)}× C libbpf (target ≥ 1.0×: ${mark(t.drainVsC >= 0.995)}) and ${t.drainVsCopy.toFixed(2)}× copy mode ` +
      `(target ≥ 1.0×: ${mark(t.drainVsCopy >= 0.995)}); ${(t.drainSmallBatchRecordsPerSec / 1e6).toFixed(1)}M with maxBatch ${SMALL_BATCH}`,
    `- JS zero-copy vs bpftrace, records delivered per second: ${t.zeroCopyVsBpftrace.toFixed(1)}× (target ≥ 10×: ${mark(t.zeroCopyVsBpftrace >= 10)}); ` +
      `bpftrace did not deliver ${t.bpftraceLossPct.toFixed(1)}% of the calls it was offered`,
  ].join('\n');
}

if (require.main === module) {
  runMain(async () => {
    const flags = parseFlags();
    const env = benchEnv();
    const opts: RingBenchOptions = flags.quick
      ? { liveRecords: 300_000, bpftraceRecords: 50_000, repeats: 1, drainRingBytes: 4 << 20, drainRounds: 2 }
      : {};
    if (flags.repeats) opts.repeats = flags.repeats;
    opts.log = flags.json ? () => {} : (l) => console.log(l);
    const r = await runRingBench(opts);
    if (flags.json) console.log(JSON.stringify(r));
    else console.log('\n' + r.markdown);
    if (flags.record) appendResults('Ring throughput', env, r.markdown);
  });
}
