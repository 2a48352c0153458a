import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CaptureError, CaptureWriter, openCapture } from '../lib/capture';
import { RECORD_SIZE } from '../lib/record';
import { interleavedMix, prng } from './helpers/scenarios';
import { readAll, tempDir } from './50.capture.roundtrip.test';

const CHUNK = 100;

describe('50 capture: truncated and corrupt files', () => {
  let dir: string, good: string, bytes: Buffer, headerBytes: number, records: Buffer;
  before(async () => {
    dir = tempDir();
    good = path.join(dir, 'good.kvmfcap');
    const mix = interleavedMix({ vms: 2, vcpusPerVm: 2, records: 1000, seed: 5, stepNs: 10_000 });
    const w = CaptureWriter.create(good, { chunkRecords: CHUNK, meta: { hostKernel: '6.1.30' } });
    w.write(mix.batch);
    w.close();
    bytes = readFileSync(good);
    const r = await openCapture(good);
    headerBytes = r.header.headerBytes;
    await r.close();
    records = Buffer.from(mix.batch.copy().recordBytes(0).buffer);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const chunkAt = (k: number) => headerBytes + k * (16 + CHUNK * RECORD_SIZE);
  const write = (name: string, b: Buffer) => {
    const f = path.join(dir, name);
    writeFileSync(f, b);
    return f;
  };

  it('truncated in the middle of a chunk: earlier chunks and complete records kept, then a CaptureError with the offset', async () => {
    const cut = chunkAt(3) + 16 + 10 * RECORD_SIZE + 50; // 10 whole records + half of one into chunk 3
    const f = write('trunc.kvmfcap', bytes.subarray(0, cut));
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, records.subarray(0, (3 * CHUNK + 10) * RECORD_SIZE));
    assert.equal(reader.damage.length, 1);
    assert.equal(reader.damage[0].offset, chunkAt(3));
    assert.match(reader.damage[0].what, /truncated/);
    // default: everything readable is yielded first, then the error
    const r2 = await openCapture(f);
    let n = 0;
    await assert.rejects(async () => {
      for await (const b of r2.batches()) n += b.length;
    }, (e: unknown) => e instanceof CaptureError && e.offset === chunkAt(3) && /at byte offset/.test(e.message));
    assert.equal(n, 3 * CHUNK + 10);
  });

  it('truncated inside a chunk header: stray bytes reported', async () => {
    const f = write('trunc-hdr.kvmfcap', bytes.subarray(0, chunkAt(2) + 7));
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.equal(got.length, 2 * CHUNK * RECORD_SIZE);
    assert.equal(reader.damage[0].offset, chunkAt(2));
  });

  it('a corrupt chunk is dropped and reported; the chunks after it are still read', async () => {
    const b = Buffer.from(bytes);
    b[chunkAt(4) + 16 + 5 * RECORD_SIZE + 33] ^= 0x40; // one bit in a record of chunk 4
    b.writeUInt32LE(0xdeadbeef, chunkAt(7)); // chunk 7's marker
    const { bytes: got, reader } = await readAll(write('corrupt.kvmfcap', b), 'report');
    assert.equal(reader.damage.length, 2);
    assert.equal(reader.damage[0].offset, chunkAt(4));
    assert.match(reader.damage[0].what, /checksum/);
    assert.equal(reader.damage[0].recordsLost, CHUNK);
    assert.equal(reader.damage[1].offset, chunkAt(7));
    assert.match(reader.damage[1].what, /no chunk marker; skipped \d+ byte\(s\) to the next chunk/);
    const expect = Buffer.concat([0, 1, 2, 3, 5, 6, 8, 9].map((k) => records.subarray(k * CHUNK * RECORD_SIZE, (k + 1) * CHUNK * RECORD_SIZE)));
    assert.deepEqual(got, expect);
  });

  it('corrupt header, unknown version, layout drift: CaptureError naming the offset and what is wrong', async () => {
    const cases: [string, (b: Buffer) => void, RegExp, number][] = [
      ['magic', (b) => b.write('XVMFCAP', 0, 'latin1'), /not a kvmfault capture/, 0],
      ['version', (b) => b.writeUInt32LE(7, 8), /capture version 7 is newer than this kvmfault reads \(1\): upgrade kvmfault/, 8],
      ['version0', (b) => b.writeUInt32LE(0, 8), /unknown capture version 0/, 8],
      ['sizes', (b) => b.writeUInt32LE(99999, 24), /corrupt header: sizes disagree/, 12],
      ['checksum', (b) => { b[headerBytes - 12] ^= 1; }, /corrupt header: checksum mismatch|corrupt header metadata/, 0],
    ];
    for (const [name, mutate, re, offset] of cases) {
      const b = Buffer.from(bytes);
      mutate(b);
      await assert.rejects(openCapture(write(`h-${name}.kvmfcap`, b)), (e: unknown) => {
        assert.ok(e instanceof CaptureError, `${name}: ${String(e)}`);
        assert.match(e.message, re, name);
        assert.equal(e.offset, offset, name);
        return true;
      });
    }
    await assert.rejects(openCapture(write('h-short.kvmfcap', bytes.subarray(0, 20))), /truncated header/);
  });

  it('layout drift in the field table is detected (a capture from another events.h)', async () => {
    // rewrite the field table entry of 'gpa' to another offset and fix the header checksum the way a writer would
    const b = Buffer.from(bytes);
    const fieldsAt = 32;
    let i = 0;
    while (b.toString('latin1', fieldsAt + i * 24, fieldsAt + i * 24 + 3) !== 'gpa') i++;
    b.writeUInt32LE(40, fieldsAt + i * 24 + 16);
    const h = Buffer.from(b.subarray(0, headerBytes));
    h.writeUInt32LE(0, 28);
    // recompute the checksum through the writer's function: open with a patched header via the public reader is not possible, so mirror it
    const words = new Uint32Array(h.buffer, h.byteOffset, h.length >>> 2);
    let x = 0x9e3779b9 | 0, y = 0;
    for (const w of words) { x = (x + w) | 0; y = (y + x) | 0; }
    b.writeUInt32LE((Math.imul(y, 0x01000193) ^ x) >>> 0, 28);
    await assert.rejects(openCapture(write('drift.kvmfcap', b)), /record layout drift: field gpa is at 40 \(8 bytes\) in the capture, at 32/);
  });

  it('fuzz: random mutations and truncations never crash the reader; only CaptureError, with what was readable yielded', async function () {
    this.timeout(30000);
    const rnd = prng(0xfeed);
    for (let round = 0; round < 300; round++) {
      const b = Buffer.from(bytes);
      const flips = 1 + Math.floor(rnd() * 8);
      for (let k = 0; k < flips; k++) {
        const at = rnd() < 0.2 ? Math.floor(rnd() * headerBytes) : Math.floor(rnd() * b.length);
        b[at] = Math.floor(rnd() * 256);
      }
      const len = rnd() < 0.3 ? Math.floor(rnd() * b.length) : b.length;
      const f = write('fuzz.kvmfcap', b.subarray(0, len));
      try {
        const reader = await openCapture(f);
        let n = 0;
        try {
          for await (const batch of reader.batches()) {
            n += batch.length;
            for (let i = 0; i < batch.length; i++) batch.get(i);
          }
        } catch (e) {
          assert.ok(e instanceof CaptureError, `round ${round}: ${String(e)}`);
          assert.ok(e.offset >= headerBytes && e.offset <= len);
        }
        assert.ok(n <= 1000);
      } catch (e) {
        assert.ok(e instanceof CaptureError, `round ${round}: ${(e as Error).stack}`);
        assert.match(e.message, /at byte offset \d+/);
      }
    }
  });
});
