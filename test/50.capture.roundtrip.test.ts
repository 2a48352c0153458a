import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CaptureError, CaptureWriter, MAX_META_BYTES, openCapture } from '../lib/capture';
import { RECORD_SIZE, RecordBatch } from '../lib/record';
import { StaleFaultDetector } from '../lib/detector';
import { chunked, interleavedMix, stuckSignExtension } from './helpers/scenarios';
import { analyzeFile, formatReport } from '../lib/analyze';

export function tempDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'kvmfault-cap-'));
}

export async function readAll(file: string, onDamage: 'throw' | 'report' = 'throw'): Promise<{ bytes: Buffer; batches: number; reader: Awaited<ReturnType<typeof openCapture>> }> {
  const reader = await openCapture(file);
  const parts: Buffer[] = [];
  let batches = 0;
  for await (const b of reader.batches({ onDamage })) {
    batches++;
    for (let i = 0; i < b.length; i++) parts.push(Buffer.from(b.recordBytes(i)));
  }
  return { bytes: Buffer.concat(parts), batches, reader };
}

function packed(b: RecordBatch): Buffer {
  return Buffer.from(b.copy().recordBytes(0).buffer);
}

describe('50 capture: write and read back', () => {
  let dir: string;
  before(() => { dir = tempDir(); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('round trip: every record byte for byte, header metadata kept, bytes counted', async () => {
    const mix = interleavedMix({ vms: 3, vcpusPerVm: 4, records: 30_000, seed: 1, stuckVcpu: 2, stepNs: 50_000 });
    const file = path.join(dir, 'rt.kvmfcap');
    const w = CaptureWriter.create(file, { chunkRecords: 1000, meta: { hostKernel: '6.1.30', bootTimeMs: 1_700_000_000_000, retPf: { RETRY: 1, FIXED: 4, SPURIOUS: 5 }, mode: 'kprobe' } });
    for (const b of chunked(mix.batch, 333)) w.write(b);
    w.close();
    w.close(); // twice is fine
    assert.equal(w.records, mix.batch.length);
    assert.equal(w.bytesWritten, statSync(file).size);
    const { bytes, reader } = await readAll(file);
    assert.deepEqual(bytes, packed(mix.batch));
    assert.equal(reader.recordsRead, mix.batch.length);
    assert.equal(reader.header.meta.hostKernel, '6.1.30');
    assert.equal(reader.header.meta.bootTimeMs, 1_700_000_000_000);
    assert.deepEqual(reader.header.meta.retPf, { RETRY: 1, FIXED: 4, SPURIOUS: 5 });
    assert.equal(reader.header.meta.mode, 'kprobe');
    assert.ok(reader.header.meta.startTimeMs > 1.7e12);
    assert.equal(reader.header.recordSize, RECORD_SIZE);
    assert.ok(reader.header.fields.some((f) => f.name === 'in_progress' && f.offset === 88 && f.size === 8));
    assert.deepEqual(reader.damage, []);
    assert.equal(reader.complete, true);
    assert.equal(reader.header.version, 2);
  });

  it('metadata JSON cannot hold is refused before the file is created', () => {
    const file = path.join(dir, 'bad-meta.kvmfcap');
    assert.throws(() => CaptureWriter.create(file, { meta: { big: 1n } as never }), /the metadata cannot be stored as JSON/);
    assert.throws(() => statSync(file), /ENOENT/);
  });

  it('the detector gives the same verdicts from the capture as from memory', async () => {
    const mix = interleavedMix({ vms: 2, vcpusPerVm: 3, records: 20_000, seed: 9, stuckVcpu: 4, stepNs: 200_000 });
    const file = path.join(dir, 'same.kvmfcap');
    const w = CaptureWriter.create(file);
    w.write(mix.batch);
    w.close();
    const mem = new StaleFaultDetector();
    mem.push(mix.batch);
    const cap = new StaleFaultDetector();
    for await (const b of (await openCapture(file)).batches()) cap.push(b);
    assert.deepEqual(cap.snapshot(), mem.snapshot());
    assert.equal(cap.snapshot().filter((v) => v.state === 'stuck').length, 1);
  });

  it('an empty capture reads as no records, no damage', async () => {
    const file = path.join(dir, 'empty.kvmfcap');
    CaptureWriter.create(file).close();
    const { bytes, batches } = await readAll(file);
    assert.equal(bytes.length, 0);
    assert.equal(batches, 0);
  });

  it('real-time replay is paced by the timestamps (scaled), full speed is not', async () => {
    const mix = interleavedMix({ vms: 1, vcpusPerVm: 2, records: 200, seed: 3, stepNs: 1_000_000 }); // ~200 ms of trace
    const file = path.join(dir, 'rt-replay.kvmfcap');
    const w = CaptureWriter.create(file);
    w.write(mix.batch);
    w.close();
    const reader = await openCapture(file);
    let n = 0, batches = 0;
    const t0 = performance.now();
    for await (const b of reader.batches({ speed: 4 })) {
      n += b.length;
      batches++;
    }
    const elapsed = performance.now() - t0;
    assert.equal(n, mix.batch.length);
    // a correctness check, not a timing assertion: pacing splits the one chunk into several batches
    assert.ok(batches > 5, `real-time replay handed out ${batches} batch(es)`);
    assert.ok(elapsed > 0);
    const ac = new AbortController();
    const r2 = await openCapture(file);
    await assert.rejects(async () => {
      for await (const _ of r2.batches({ speed: 0.001, signal: ac.signal })) ac.abort(new Error('stop'));
    }, /stop/);
    await assert.rejects(async () => {
      for await (const _ of (await openCapture(file)).batches({ speed: -1 })) { /* nothing */ }
    }, /replay speed must be/);
  });

  it("the capture's metadata is shown with control characters escaped (ESC, BEL, NUL, newline)", async () => {
    const file = path.join(dir, 'evil-meta.kvmf');
    const w = CaptureWriter.create(file, { meta: { hostKernel: '6.1.0\x1b]0;pwned\x07\x1b[2J\0\nkernel 6.12: not affected\u009b31m' } });
    w.write(stuckSignExtension(10));
    w.close();
    const text = formatReport(await analyzeFile(file));
    assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(text), JSON.stringify(text));
    assert.match(text, /traced on 6\.1\.0\\x1b\]0;pwned\\x07\\x1b\[2J\\x00\\x0akernel 6\.12: not affected\\x9b31m/);
    assert.equal(text.split('\n')[0].startsWith(`${file}: capture`), true, 'no line forged');
  });

  it('not a capture, missing file: clear errors', async () => {
    const file = path.join(dir, 'text.txt');
    writeFileSync(file, 'hello');
    await assert.rejects(openCapture(file), (e: unknown) => e instanceof CaptureError && e.offset === 0 && /not a kvmfault capture/.test(e.message));
    await assert.rejects(openCapture(path.join(dir, 'nope')), (e: unknown) => e instanceof CaptureError && /cannot open: ENOENT/.test(e.message));
    assert.ok(readFileSync(file).length === 5);
    // a directory: a CaptureError saying so (was a raw EISDIR from the first read)
    await assert.rejects(openCapture(dir), (e: unknown) => e instanceof CaptureError && e.offset === 0 && /is a directory, not a capture file/.test(e.message));
  });

  it('metadata that cannot be stored throws before the file is created (no empty file left, none truncated)', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ big: 1n }, /^(TypeError|RangeError): CaptureWriter: the metadata cannot be stored as JSON: .*BigInt/],
      [{ cyclic }, /^(TypeError|RangeError): CaptureWriter: the metadata cannot be stored as JSON: .*circular/i],
      [{ note: 'x'.repeat(MAX_META_BYTES) }, /^(TypeError|RangeError): CaptureWriter: the metadata is \d+ bytes of JSON, a capture holds at most 1048576/],
    ];
    for (const [meta, message] of cases) {
      const fresh = path.join(dir, 'bad-meta.kvmf');
      assert.throws(() => CaptureWriter.create(fresh, { meta }), message);
      assert.ok(!existsSync(fresh), 'no file created');
      const existing = path.join(dir, 'keep.kvmf');
      writeFileSync(existing, 'previous content');
      assert.throws(() => CaptureWriter.create(existing, { meta }), message);
      assert.equal(readFileSync(existing, 'utf8'), 'previous content', 'an existing file is not truncated');
    }
  });
});
