/**
 * Shared setup for the 20.ring.* tests: the environment check (these tests load BPF programs
 * on the running kernel: root and BTF are required, and a test that cannot run FAILS saying
 * why) and the RingTest producer's record formulas (native/bpf/ringtest.bpf.c fill()).
 */
import assert from 'node:assert/strict';
import { requireBpf } from './helpers/host';
import { native } from '../lib/native';
import { EventBatch, Kind } from '../lib/record';

/** native/addon/ringtest.cc */
export interface RingTest {
  run(n: number, discardEvery?: number): number;
  setTarget(tgid: number): void;
  ringFd(): number;
  stats(): { submitted: number; dropped: number; nextSeq: number };
  close(): void;
}

export { requireBpf };

export function openRingTest(options: { ringSize?: number; wakeupBytes?: number } = {}): RingTest {
  requireBpf();
  const RingTestCtor = native().RingTest;
  return new RingTestCtor(options) as RingTest;
}

/** Bytes a 120-byte record takes in the ring: 8-byte header + payload, padded to 8. */
export const RING_SLOT = 128;

/**
 * Checks record i of a batch against the producer's formulas for its sequence number (gpa).
 * Returns the sequence number. A torn or overwritten record fails here.
 */
export function checkRecord(batch: EventBatch, i: number): number {
  const seq = batch.gpa(i);
  if (batch.kind(i) !== Kind.TEST) assert.fail(`record ${i} (seq ${seq}): kind ${batch.kind(i)}, expected KF_TEST`);
  if (
    batch.errorCode(i) !== seq + 1 || batch.hva(i) !== seq + 2 || batch.pfn(i) !== seq + 3 ||
    batch.ripLo(i) !== seq + 4 || batch.mmuSeq(i) !== seq + 5 || batch.faultSeq(i) !== seq + 6 ||
    batch.rangeStart(i) !== seq + 7 || batch.rangeEnd(i) !== seq + 8 || batch.inProgress(i) !== 0 ||
    batch.ret(i) !== (seq & 0x7fffffff) || batch.repeat(i) !== 1 || batch.vcpuId(i) !== (seq & 0xffff) ||
    batch.vmIdLo(i) !== (seq ^ 0x5a5a5a5a) >>> 0 || batch.flags(i) !== 0
  ) {
    assert.fail(`record ${i} (seq ${seq}) is corrupt: ${JSON.stringify(batch.get(i))}`);
  }
  return seq;
}

/**
 * Reads until `total` records arrived, each checked to be the next in sequence; returns the count.
 * A record out of sequence fails with what it means: a gap is records the producer dropped (ring
 * full) or lost, a step back is records delivered twice. `kernelStats` adds the producer's counts.
 */
export async function receiveInOrder(
  stream: AsyncIterable<EventBatch>, total: number, kernelStats?: () => { submitted: number; dropped: number },
): Promise<number> {
  let expected = 0;
  for await (const b of stream) {
    for (let i = 0; i < b.length; i++) {
      const seq = checkRecord(b, i);
      if (seq !== expected) {
        const k = kernelStats ? ` (producer: ${JSON.stringify(kernelStats())})` : '';
        assert.fail(seq > expected
          ? `records missing: got seq ${seq} where ${expected} was next, a gap of ${seq - expected}${k}`
          : `records delivered twice: got seq ${seq} again after ${expected - 1}, ${expected - seq} back${k}`);
      }
      expected++;
    }
    if (expected >= total) break;
  }
  return expected;
}

/** node --expose-gc without the flag: a gc() that also lets external-buffer finalizers run. */
export async function collectGarbage(): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const v8 = require('node:v8');
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const vm = require('node:vm');
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  for (let i = 0; i < 4; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}
