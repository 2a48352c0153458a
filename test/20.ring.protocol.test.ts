/**
 * The ring consumer protocol on the real kernel, with the deterministic BPF_PROG_TEST_RUN
 * producer: exact counts in and out, order, wraparound, discards, drops, copy mode.
 */
import assert from 'node:assert/strict';
import { EventStream } from '../lib/stream';
import { openRing, RingConsumer } from '../lib/ring';
import { RECORD_SIZE } from '../lib/record';
import { checkRecord, openRingTest, RING_SLOT, RingTest } from './20.ring.setup';

const RING_64K = 64 * 1024;

describe('20 ring protocol (real kernel, BPF_PROG_TEST_RUN producer)', function () {
  let producer: RingTest | null = null;
  afterEach(() => {
    producer?.close();
    producer = null;
  });

  it('RingConsumer: 200k records through a 64 KiB ring (390 laps), in order, discards skipped', () => {
    producer = openRingTest({ ringSize: RING_64K });
    const ring = openRing(producer.ringFd());
    const consumer = new RingConsumer(ring, { maxBatch: 150 });
    const total = 200_000;
    const burst = 400; // + 1 discard per 10 attempts: 444 slots of 128 B < 64 KiB
    let expected = 0;
    let produced = 0;
    while (produced < total) {
      const want = Math.min(burst, total - produced);
      // attempts so that exactly `want` are submitted with every 10th attempt discarded
      const attempts = want + Math.floor((want - 1) / 9);
      assert.equal(producer.run(attempts, 10), want);
      produced += want;
      for (let b = consumer.pull(); b.length > 0; b = consumer.pull()) {
        assert.ok(b.length <= 150, 'batch larger than maxBatch');
        for (let i = 0; i < b.length; i++) assert.equal(checkRecord(b, i), expected++);
      }
      assert.equal(consumer.pending(), false, 'records left after an empty pull');
    }
    assert.equal(expected, total);
    assert.equal(consumer.records, total);
    assert.ok(consumer.discarded > 20_000, `discarded ${consumer.discarded}`);
    assert.equal(consumer.malformed, 0);
    assert.ok(consumer.bytes / RING_64K > 390, `laps: ${consumer.bytes / RING_64K}`);
    const k = producer.stats();
    assert.equal(k.submitted, total);
    assert.equal(k.dropped, 0);
    consumer.close();
    ring.close();
  });

  it('EventStream: 200k records in bursts across many laps, exact and in order (poll wakeups)', async () => {
    producer = openRingTest({ ringSize: RING_64K });
    const p = producer;
    const total = 200_000;
    const burst = 200; // two bursts fit (one may still be leased while the next is produced)
    let produced = 0;
    const produceBurst = () => {
      const want = Math.min(burst, total - produced);
      if (want > 0) assert.equal(p.run(want + Math.floor((want - 1) / 6), 7), want);
      produced += want;
    };
    const stream = new EventStream(p.ringFd(), { maxBatch: 64, tailTimerMs: 0 });
    produceBurst();
    let expected = 0;
    for await (const b of stream) {
      for (let i = 0; i < b.length; i++) assert.equal(checkRecord(b, i), expected++);
      if (expected === produced) {
        if (produced === total) break;
        produceBurst();
      }
    }
    assert.equal(expected, total);
    assert.equal(stream.stats.records, total);
    assert.equal(stream.stats.bytes, total * RECORD_SIZE);
    assert.ok(stream.stats.discarded > 0);
    assert.equal(p.stats().dropped, 0);
    assert.ok(stream.closed);
  });

  it('stalled consumer: kernel counts drops, submitted + dropped = attempts, every record intact and in order', () => {
    producer = openRingTest({ ringSize: RING_64K });
    const ring = openRing(producer.ringFd());
    const consumer = new RingConsumer(ring, { maxBatch: 100 });
    const capacity = Math.floor(RING_64K / RING_SLOT) - 1; // the kernel keeps one slot's gap
    let attempts = 0;
    let last = -1;
    let received = 0;
    const take = (b: ReturnType<RingConsumer['pull']>) => {
      for (let i = 0; i < b.length; i++) {
        const seq = checkRecord(b, i);
        assert.ok(seq > last, `seq ${seq} after ${last}: out of order or repeated`);
        last = seq;
      }
      received += b.length;
    };
    // 1: nobody consumes; 3x the ring is offered
    const first = producer.run(3 * capacity);
    attempts += 3 * capacity;
    assert.equal(first, capacity, 'a full ring holds size/128 - 1 records');
    // 2: take one batch and keep it leased (consumer_pos not published), produce more
    take(consumer.pull());
    attempts += 1000;
    assert.equal(producer.run(1000), 0, 'space of a leased batch must not be reused');
    // 3: publish (next pull), then produce into the freed space while draining
    for (let round = 0; round < 20; round++) {
      take(consumer.pull());
      attempts += 300;
      producer.run(300);
    }
    for (let b = consumer.pull(); b.length > 0; b = consumer.pull()) take(b);
    const k = producer.stats();
    assert.ok(k.dropped > 0, 'expected drops');
    assert.equal(k.submitted + k.dropped, attempts);
    assert.equal(received, k.submitted);
    assert.equal(consumer.malformed, 0);
    ring.close();
  });

  it('copy mode yields the same records as zero-copy (byte for byte, timestamps aside)', async () => {
    const a = openRingTest({ ringSize: 1 << 20 });
    const b = openRingTest({ ringSize: 1 << 20 });
    try {
      const n = 5000;
      assert.equal(a.run(n + 555, 10), b.run(n + 555, 10));
      const collect = async (fd: number, mode: 'zero-copy' | 'copy') => {
        const out: Uint8Array[] = [];
        const stream = new EventStream(fd, { mode, maxBatch: 777 });
        let got = 0;
        const expected = a.stats().submitted;
        for await (const batch of stream) {
          for (let i = 0; i < batch.length; i++) {
            checkRecord(batch, i);
            out.push(batch.recordBytes(i).slice(8)); // past ts_ns
          }
          got += batch.length;
          if (got >= expected) break;
        }
        return out;
      };
      const zc = await collect(a.ringFd(), 'zero-copy');
      const cp = await collect(b.ringFd(), 'copy');
      assert.equal(zc.length, a.stats().submitted);
      assert.equal(cp.length, zc.length);
      for (let i = 0; i < zc.length; i++) {
        // pid/tid are the test process in both; everything else derives from the seq
        if (Buffer.compare(Buffer.from(zc[i]), Buffer.from(cp[i])) !== 0) assert.fail(`record ${i} differs`);
      }
    } finally {
      a.close();
      b.close();
    }
  });

  it('countRun: counts a run of equal headers, across the ring\'s end, and never reads outside the mapping', () => {
    producer = openRingTest({ ringSize: RING_64K });
    const ring = openRing(producer.ringFd());
    try {
      const slots = RING_64K / RING_SLOT;
      const word = RING_SLOT - 8; // a committed record's header: payload length, no flag bits
      assert.equal(ring.countRun(0, RING_SLOT, word, slots), 0, 'empty ring: no committed header');
      assert.equal(producer.run(slots - 1), slots - 1);
      assert.equal(ring.countRun(0, RING_SLOT, word, slots), slots - 1);
      assert.equal(ring.countRun(0, RING_SLOT, word, 10), 10, 'stops at limit');
      assert.equal(ring.countRun(RING_SLOT * 5, RING_SLOT, word, slots), slots - 6);
      // the second mapping shows the same records: a run may go on past the ring's end
      assert.equal(ring.countRun(RING_64K, RING_SLOT, word, slots), slots - 1);
      // out of range or nonsense arguments: a short count, never a fault
      assert.equal(ring.countRun(2 * RING_64K, RING_SLOT, word, slots), 0);
      assert.equal(ring.countRun(2 * RING_64K - 4, RING_SLOT, word, 1 << 30) <= 1, true);
      assert.equal(ring.countRun(0, 0, word, 1 << 30), 0);
      assert.equal(ring.countRun(RING_64K + RING_SLOT * 5, RING_SLOT, word, 1 << 30), slots - 6);
    } finally {
      ring.close();
    }
    assert.throws(() => ring.countRun(0, RING_SLOT, 120, 1), /closed/);
  });

  it('Ring rejects what is not a ring buffer map, with a clear error', () => {
    producer = openRingTest({ ringSize: RING_64K });
    assert.throws(() => openRing(-1), /file descriptor/);
    assert.throws(() => openRing(0), /not a BPF map|BPF_MAP_TYPE_RINGBUF|bpf_obj_get_info_by_fd/);
    const ring = openRing(producer.ringFd());
    ring.close();
    ring.close(); // idempotent
    assert.throws(() => ring.buffers(), /closed/);
  });
});
