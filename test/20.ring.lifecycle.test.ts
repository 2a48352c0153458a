/**
 * Lifetimes: Ring objects opened and closed 1000 times leak no fd, no mapping, no memory;
 * ending an iteration (break, exception, abort, close) calls onClose once and leaves no
 * poll handle behind (a process whose loop broke out of for-await exits by itself).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { openRing } from '../lib/ring';
import { EventStream } from '../lib/stream';
import { collectGarbage, openRingTest, RingTest } from './20.ring.setup';

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}
/** Mappings of BPF ring buffer maps in this process (anon_inode:bpf-map lines). */
function ringMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('bpf')).length;
}

describe('20 ring lifecycle', function () {
  this.timeout(60_000);
  let producer: RingTest | null = null;
  afterEach(() => {
    producer?.close();
    producer = null;
  });

  it('1000 Ring open/buffers/poll/close cycles: fd count, ring mappings and RSS stable', async () => {
    producer = openRingTest({ ringSize: 1 << 16 });
    const fd = producer.ringFd();
    const cycle = (count: number) => {
      for (let i = 0; i < count; i++) {
        const ring = openRing(fd);
        const { data, size } = ring.buffers();
        assert.equal(data.byteLength, 2 * size);
        ring.pollStart(() => undefined);
        ring.pollStop();
        ring.close();
      }
    };
    cycle(100); // warm up (JIT, allocator)
    await collectGarbage();
    const fds = openFds();
    const maps = ringMappings();
    const rss = process.memoryUsage().rss;
    cycle(1000);
    // streams too: each opens a Ring, one pull, then closes
    for (let i = 0; i < 200; i++) new EventStream(fd).close();
    assert.equal(openFds(), fds, 'fds leaked (the dup()ed map fd is not closed)');
    await collectGarbage();
    assert.equal(ringMappings(), maps, 'ring mappings still present after the buffers were collected');
    const grownMiB = (process.memoryUsage().rss - rss) / (1 << 20);
    assert.ok(grownMiB < 32, `RSS grew ${grownMiB.toFixed(1)} MiB over 1000 rings`);
  });

  it('buffers() are created once (never two external buffers over one address) and outlive close()', () => {
    producer = openRingTest({ ringSize: 1 << 16 });
    const ring = openRing(producer.ringFd());
    const b = ring.buffers();
    assert.equal(ring.buffers(), b);
    producer.run(10);
    ring.close();
    // the mapping is owned by the buffers: still readable after close, never unmapped under JS
    const prod = new BigUint64Array(b.producer, 0, 1);
    assert.equal(Atomics.load(prod, 0), 1280n);
  });

  it('a second iterator is refused; close() ends a pending next() with done; onClose runs once', async () => {
    producer = openRingTest({ ringSize: 1 << 16 });
    let closes = 0;
    const stream = new EventStream(producer.ringFd(), { onClose: () => closes++ });
    const it = stream[Symbol.asyncIterator]();
    assert.throws(() => stream[Symbol.asyncIterator](), /already being iterated/);
    const pending = it.next();
    setTimeout(() => stream.close(), 20);
    assert.deepEqual(await pending, { value: undefined, done: true });
    stream.close();
    assert.equal(closes, 1);
    assert.deepEqual(await it.next(), { value: undefined, done: true });
  });

  it('AbortSignal ends the iteration (before and during), with onClose', async () => {
    producer = openRingTest({ ringSize: 1 << 16 });
    let closes = 0;
    const ac = new AbortController();
    const stream = new EventStream(producer.ringFd(), { signal: ac.signal, onClose: () => closes++ });
    producer.run(5);
    let seen = 0;
    setTimeout(() => ac.abort(), 30);
    for await (const b of stream) seen += b.length;
    assert.equal(seen, 5);
    assert.equal(closes, 1);
    const aborted = new EventStream(producer.ringFd(), { signal: AbortSignal.abort() });
    for await (const b of aborted) assert.fail(`got a batch of ${b.length} after abort`);
    assert.ok(aborted.closed);
  });

  it('an exception in the loop body ends the iteration and calls onClose', async () => {
    producer = openRingTest({ ringSize: 1 << 16 });
    let closes = 0;
    const stream = new EventStream(producer.ringFd(), { onClose: () => closes++ });
    producer.run(3);
    await assert.rejects(async () => {
      for await (const b of stream) throw new Error(`boom ${b.length}`);
    }, /boom 3/);
    assert.equal(closes, 1);
    assert.ok(stream.closed);
  });

  it('break out of for-await: onClose runs and no poll handle is left (the process exits by itself)', () => {
    producer = openRingTest({ ringSize: 1 << 16 }); // the environment check, in this process
    producer.close();
    producer = null;
    const lib = path.resolve(__dirname, '../lib');
    // The child waits with the poll armed (a ref'd handle), gets woken, breaks out. If close
    // left the poll handle active, the child would never exit and spawnSync times out.
    const code = `
      const { EventStream } = require(${JSON.stringify(path.join(lib, 'stream'))});
      const { native } = require(${JSON.stringify(path.join(lib, 'native'))});
      const t = new (native().RingTest)({ ringSize: 1 << 16 });
      let closes = 0;
      const stream = new EventStream(t.ringFd(), { tailTimerMs: 0, onClose: () => closes++ });
      setTimeout(() => t.run(4), 50);
      (async () => {
        let n = 0;
        for await (const b of stream) { n += b.length; break; }
        process.on('exit', () => console.log(JSON.stringify({ n, closes, wakeups: stream.stats.wakeups })));
      })();`;
    const r = spawnSync(process.execPath, ['-e', code], { timeout: 10_000, encoding: 'utf8' });
    assert.equal(r.error, undefined, `the child did not exit by itself after break (${r.error?.message}): a poll handle was left active`);
    assert.equal(r.status, 0, `child failed: ${r.stderr}`);
    const out = JSON.parse(r.stdout.trim());
    assert.deepEqual(out, { n: 4, closes: 1, wakeups: 1 });
  });
  it('a ring that never runs dry still lets the event loop turn: a timer fires while the loop reads', async () => {
    producer = openRingTest({ ringSize: 1 << 24 });
    producer.run(100_000);
    const stream = new EventStream(producer.ringFd());
    let fired = false;
    const timer = setTimeout(() => (fired = true), 20);
    let batches = 0;
    try {
      for await (const batch of stream) {
        batches++;
        // refill before it runs dry: next() always finds data, as under a flood of faults
        if (batch.length > 0) producer.run(batch.length);
        if (fired || batches >= 5000) break;
      }
    } finally {
      clearTimeout(timer);
      stream.close();
    }
    assert.ok(fired, `a 20 ms timer never fired during ${batches} back-to-back batches: the read loop starves the event loop (--duration, Ctrl-C)`);
  });
});
