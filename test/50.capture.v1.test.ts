/**
 * Capture format version 1 (kvmfault 0.1.0: "KFCK" chunks with one checksum each, no end marker)
 * still reads: test/fixtures/capture-v1.kvmfcap was written by that writer (500 records of
 * interleavedMix seed 5, 50 per chunk). Damaged version 1 chunks are dropped whole: nothing
 * unverified is handed out.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { analyzeFile } from '../lib/analyze';
import { openCapture } from '../lib/capture';
import { RECORD_SIZE } from '../lib/record';
import { fixturePath, interleavedMix } from './helpers/scenarios';
import { readAll, tempDir } from './50.capture.roundtrip.test';

const CHUNK = 50;

describe('50 capture v1: files of the previous format', () => {
  let dir: string, fixture: string, bytes: Buffer, records: Buffer, headerBytes: number, n: number;
  before(async () => {
    dir = tempDir();
    fixture = fixturePath('capture-v1.kvmfcap');
    bytes = readFileSync(fixture);
    const mix = interleavedMix({ vms: 2, vcpusPerVm: 2, records: 500, seed: 5, stepNs: 10_000 });
    n = mix.batch.length;
    records = Buffer.from(mix.batch.copy().recordBytes(0).buffer);
    const r = await openCapture(fixture);
    headerBytes = r.header.headerBytes;
    await r.close();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const chunkAt = (k: number) => headerBytes + k * (16 + CHUNK * RECORD_SIZE);
  const recs = (from: number, to: number) => records.subarray(from * RECORD_SIZE, to * RECORD_SIZE);
  const write = (name: string, b: Buffer) => {
    const f = path.join(dir, name);
    writeFileSync(f, b);
    return f;
  };

  it('reads every record and the metadata; completeness is unknown (no end marker in version 1)', async () => {
    const { bytes: got, reader } = await readAll(fixture);
    assert.deepEqual(got, records);
    assert.equal(reader.header.version, 1);
    assert.equal(reader.header.meta.hostKernel, '6.1.30');
    assert.deepEqual(reader.header.meta.retPf, { RETRY: 1, FIXED: 4, SPURIOUS: 5 });
    assert.equal(reader.complete, null);
    const report = await analyzeFile(fixture);
    assert.equal(report.records, n);
    assert.equal(report.stuck, 0);
    assert.equal(report.capture!.version, 1);
  });

  it('truncated inside a chunk: earlier chunks kept, the unverifiable rest dropped, the offset reported', async () => {
    const f = write('trunc.kvmfcap', bytes.subarray(0, chunkAt(3) + 16 + 10 * RECORD_SIZE + 50));
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, recs(0, 3 * CHUNK));
    assert.equal(reader.damage[0].offset, chunkAt(3));
    assert.match(reader.damage[0].what, /truncated/);
  });

  it('a corrupt chunk (flipped bit, damaged marker) is dropped; the chunks after it are read', async () => {
    const b = Buffer.from(bytes);
    b[chunkAt(4) + 16 + 5 * RECORD_SIZE + 33] ^= 0x40;
    b.writeUInt32LE(0xdeadbeef, chunkAt(7));
    const { bytes: got, reader } = await readAll(write('corrupt.kvmfcap', b), 'report');
    assert.equal(reader.damage.length, 2);
    assert.match(reader.damage[0].what, /checksum/);
    assert.match(reader.damage[1].what, /no chunk marker/);
    assert.deepEqual(got, Buffer.concat([0, 1, 2, 3, 5, 6, 8, 9].map((k) => recs(k * CHUNK, (k + 1) * CHUNK))));
  });

  it('F4 on version 1: a corrupted count hands out no chunk header as a record and loses only its chunk', async () => {
    const b = Buffer.from(bytes);
    b.writeUInt32LE(73728 / 8, chunkAt(3) + 4);
    const { bytes: got } = await readAll(write('count.kvmfcap', b), 'report');
    assert.deepEqual(got, Buffer.concat([recs(0, 3 * CHUNK), recs(4 * CHUNK, n)]));
    const report = await analyzeFile(write('count2.kvmfcap', b));
    assert.deepEqual(report.vcpus.map((v) => v.tid).sort(), [10001, 10002, 10101, 10102]);
  });
});
