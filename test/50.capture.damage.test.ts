/**
 * Capture format version 2 under damage: one regression test per finding of the robustness probe
 * (F4-F8) and a bounded fuzz run (bench/capture-fuzz.ts runs a million cases of the same).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { analyzeFile } from '../lib/analyze';
import { CaptureError, CaptureWriter, openCapture } from '../lib/capture';
import { StaleFaultDetector } from '../lib/detector';
import { RECORD_OFFSETS, RECORD_SIZE, RecordBatch } from '../lib/record';
import { FUZZ_DETECTOR, fuzz, makeFuzzCapture, nearStuckScenario } from './helpers/capture-fuzz';
import { interleavedMix, TraceBuilder, vcpu } from './helpers/scenarios';
import { readAll, tempDir } from './50.capture.roundtrip.test';

const CHUNK = 100;
const SLOT = RECORD_SIZE + 4;
const CHUNK_HEADER = 32;
const MS = 1e6;

describe('50 capture v2: damage costs little and never becomes evidence', () => {
  let dir: string, good: string, bytes: Buffer, headerBytes: number, records: Buffer, n: number;
  before(async () => {
    dir = tempDir();
    good = path.join(dir, 'good.kvmfcap');
    const mix = interleavedMix({ vms: 2, vcpusPerVm: 2, records: 2000, seed: 5, stepNs: 10_000 });
    n = mix.batch.length;
    const w = CaptureWriter.create(good, { chunkRecords: CHUNK, meta: { hostKernel: '6.1.30', retPf: { RETRY: 1, FIXED: 4, SPURIOUS: 5 } } });
    w.write(mix.batch);
    w.close();
    bytes = readFileSync(good);
    const r = await openCapture(good);
    headerBytes = r.header.headerBytes;
    await r.close();
    records = Buffer.from(mix.batch.copy().recordBytes(0).buffer);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const chunkAt = (k: number) => headerBytes + k * (CHUNK_HEADER + CHUNK * SLOT);
  const slotAt = (k: number, i: number) => chunkAt(k) + CHUNK_HEADER + i * SLOT;
  const recs = (from: number, to: number) => records.subarray(from * RECORD_SIZE, to * RECORD_SIZE);
  const write = (name: string, b: Buffer) => {
    const f = path.join(dir, name);
    writeFileSync(f, b);
    return f;
  };
  const edit = (name: string, fn: (b: Buffer) => Buffer | void): string => {
    const b = Buffer.from(bytes);
    return write(name, fn(b) ?? b);
  };

  it('intact file: complete (end chunk read), no damage, no gaps', async () => {
    const { bytes: got, reader } = await readAll(good);
    assert.deepEqual(got, records);
    assert.equal(reader.complete, true);
    assert.equal(reader.recordsWritten, n);
    assert.equal(reader.gaps, 0);
    assert.equal(reader.header.version, 2);
  });

  it('F4: a corrupted chunk count (100 -> 73728, -> 900) reads no chunk header as records; every record of every chunk still read', async () => {
    for (const count of [73728, 900, 0]) {
      const f = edit(`f4-${count}.kvmfcap`, (b) => { b.writeUInt32LE(count, chunkAt(3) + 24); });
      const { bytes: got, reader } = await readAll(f, 'report');
      // the records after the damaged header verify one by one: nothing is lost, nothing invented
      assert.deepEqual(got, records, `count ${count}`);
      assert.equal(reader.damage.length, 1);
      assert.equal(reader.damage[0].offset, chunkAt(3));
      assert.match(reader.damage[0].what, /no readable chunk header; 100 verified record\(s\) salvaged/);
      assert.equal(reader.complete, true);
    }
    const report = await analyzeFile(edit('f4-analyze.kvmfcap', (b) => { b.writeUInt32LE(73728, chunkAt(3) + 24); }));
    assert.deepEqual(report.vcpus.map((v) => v.tid).sort(), [10001, 10002, 10101, 10102]);
    assert.equal(report.vms.length, 2);
  });

  it('F5: damage in the last chunk (a deleted byte, a flipped repeat field) never becomes a stuck verdict', async () => {
    const last = Math.floor((n - 1) / CHUNK);
    const del = edit('f5-del.kvmfcap', (b) => Buffer.concat([b.subarray(0, slotAt(last, 3) + 50), b.subarray(slotAt(last, 3) + 51)]));
    const r1 = await analyzeFile(del);
    assert.equal(r1.stuck, 0);
    assert.ok(r1.capture!.damage.length > 0);
    assert.equal(r1.records, last * CHUNK + 3, 'the records before the deleted byte are read, none after it in that chunk');
    // the probe's "553648128 attempts": a damaged repeat field (0x21000000) in the last record
    const rep = edit('f5-repeat.kvmfcap', (b) => { b[slotAt(last, (n - 1) % CHUNK) + RECORD_OFFSETS.repeat + 3] = 0x21; });
    const r2 = await analyzeFile(rep);
    assert.equal(r2.stuck, 0);
    assert.equal(r2.records, n - 1, 'the damaged record is dropped, not handed to the detector');
    assert.ok(r2.vcpus.every((v) => v.attempts < 1000));
    // the CLI: damage with nothing stuck is exit 2, never 1; the intact file is 0
    const cli = (f: string): number | null => spawnSync(process.execPath, [path.join(__dirname, '../lib/cli/main.js'), 'analyze', f], { stdio: 'ignore' }).status;
    assert.equal(cli(del), 2);
    assert.equal(cli(rep), 2);
    assert.equal(cli(good), 0);
  });

  it('F5: records lost in the middle of a run are a gap the detector counts no attempts across', async () => {
    // runs of 30 attempts on one gpa, each ended by a MAP: lose a MAP and two runs look like 60
    const batch = nearStuckScenario(1, 4, 30);
    const f = path.join(dir, 'gap.kvmfcap');
    const w = CaptureWriter.create(f, { chunkRecords: 1000 });
    w.write(batch);
    w.close();
    const b = readFileSync(f);
    const hb = (await openCapture(f).then(async (r) => { await r.close(); return r.header.headerBytes; }));
    // the first run's MAP is record 30: flip a bit of it
    b[hb + CHUNK_HEADER + 30 * SLOT + RECORD_OFFSETS.gpa] ^= 1;
    writeFileSync(f, b);
    const analyzeWith = async (gapAware: boolean): Promise<number> => {
      const reader = await openCapture(f);
      let stuck = 0;
      const det = new StaleFaultDetector({ ...FUZZ_DETECTOR, onVerdict: (v) => { if (v.state === 'stuck') stuck++; } });
      let gaps = reader.gaps;
      for await (const batch of reader.batches({ onDamage: 'report' })) {
        if (gapAware && reader.gaps !== gaps) det.discontinuity();
        gaps = reader.gaps;
        det.push(batch);
      }
      assert.equal(reader.recordsRead, batch.length - 1);
      assert.equal(reader.gaps, 1);
      return stuck;
    };
    assert.equal(await analyzeWith(false), 1, 'control: without the gap the two runs join into a stuck one');
    assert.equal(await analyzeWith(true), 0);
    // and a real stuck vCPU after the gap is still found: 100 attempts without a MAP
    const b2 = new TraceBuilder();
    const v = vcpu(9000, 0);
    for (let i = 0; i < 30; i++) b2.fault(v, 1e9 + i * MS, 0x5000);
    b2.map(v, 1e9 + 30 * MS, 0x5000);
    for (let i = 0; i < 100; i++) b2.fault(v, 1e9 + (31 + i) * MS, 0x6000);
    const f2 = path.join(dir, 'gap-stuck.kvmfcap');
    const w2 = CaptureWriter.create(f2, { chunkRecords: 1000 });
    w2.write(b2.batch());
    w2.close();
    const c = readFileSync(f2);
    c[hb + CHUNK_HEADER + 10 * SLOT + 5] ^= 1;
    writeFileSync(f2, c);
    const r = await analyzeFile(f2, { detector: FUZZ_DETECTOR });
    assert.equal(r.stuck, 1);
    assert.equal(r.vcpus[0].gpa, '6000');
  });

  it('F6: a count off by one loses nothing (the next chunk is read)', async () => {
    const f = edit('f6-count.kvmfcap', (b) => { b.writeUInt32LE(CHUNK + 1, chunkAt(5) + 24); });
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, records);
    assert.equal(reader.damage.length, 1);
  });

  it('F6: an inserted byte at an odd offset loses only the rest of its chunk; every later chunk is read', async () => {
    const at = slotAt(2, 40) + 13;
    const f = edit('f6-insert.kvmfcap', (b) => Buffer.concat([b.subarray(0, at), Buffer.from([0x5a]), b.subarray(at)]));
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, Buffer.concat([recs(0, 2 * CHUNK + 40), recs(3 * CHUNK, n)]));
    assert.ok(reader.damage.some((d) => d.recordsLost === CHUNK - 40));
    assert.equal(reader.complete, true);
    // between two chunks
    const f2 = edit('f6-insert2.kvmfcap', (b) => Buffer.concat([b.subarray(0, chunkAt(7)), Buffer.from([1, 2, 3]), b.subarray(chunkAt(7))]));
    const r2 = await readAll(f2, 'report');
    assert.deepEqual(r2.bytes, records);
    assert.match(r2.reader.damage[0].what, /3 unexpected byte\(s\) before the next chunk/);
  });

  it('F6: a deleted byte loses only the rest of its chunk', async () => {
    const at = slotAt(4, 7) + 3;
    const f = edit('f6-delete.kvmfcap', (b) => Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]));
    const { bytes: got } = await readAll(f, 'report');
    assert.deepEqual(got, Buffer.concat([recs(0, 4 * CHUNK + 7), recs(5 * CHUNK, n)]));
  });

  it('F6: one flipped bit loses one record', async () => {
    const f = edit('f6-flip.kvmfcap', (b) => { b[slotAt(6, 17) + 33] ^= 0x10; });
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, Buffer.concat([recs(0, 6 * CHUNK + 17), recs(6 * CHUNK + 18, n)]));
    assert.equal(reader.damage.length, 1);
    assert.equal(reader.damage[0].offset, slotAt(6, 17));
    assert.equal(reader.damage[0].recordsLost, 1);
    assert.match(reader.damage[0].what, /1 of 100 records of the chunk at \d+ failed their hash/);
    // a flipped bit in a record's hash, in a chunk header's sync word, in its sequence number: nothing lost
    for (const [name, at] of [['hash', slotAt(1, 5) + RECORD_SIZE + 2], ['sync', chunkAt(8) + 3], ['seq', chunkAt(9) + 20]] as const) {
      const g = await readAll(edit(`f6-${name}.kvmfcap`, (b) => { b[at] ^= 4; }), 'report');
      assert.equal(g.bytes.length / RECORD_SIZE, name === 'hash' ? n - 1 : n, `${name}: ${JSON.stringify(g.reader.damage)}`);
    }
  });

  it('F7: a file cut at a chunk boundary, or without its end chunk, reads as incomplete', async () => {
    const f = write('f7-cut.kvmfcap', bytes.subarray(0, chunkAt(5)));
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, recs(0, 5 * CHUNK));
    assert.equal(reader.complete, false);
    assert.match(reader.damage[0].what, /incomplete: no end chunk/);
    const r2 = await openCapture(f);
    await assert.rejects(async () => { for await (const _ of r2.batches()) { /* all */ } }, (e: unknown) => e instanceof CaptureError && /incomplete/.test(e.message));
    const report = await analyzeFile(write('f7-noend.kvmfcap', bytes.subarray(0, bytes.length - 48)));
    assert.equal(report.capture!.complete, false);
    assert.equal(report.records, n);
    assert.ok(report.capture!.damage.length > 0, 'analyze exits 2 for it (damage, nothing stuck)');
  });

  it('F7: records reach the disk within flushMs even when they trickle in; a SIGKILLed writer leaves an incomplete file', async function () {
    this.timeout(20000);
    const f = path.join(dir, 'f7-trickle.kvmfcap');
    const w = CaptureWriter.create(f, { flushMs: 200 });
    const one = RecordBatch.fromPacked(new Uint8Array(records.subarray(0, RECORD_SIZE)), 1);
    w.write(one);
    const before = statSync(f).size;
    await new Promise((r) => setTimeout(r, 400));
    assert.ok(statSync(f).size > before, 'the timer wrote the record');
    const r = await readAll(f, 'report');
    assert.deepEqual(r.bytes, records.subarray(0, RECORD_SIZE));
    assert.equal(r.reader.complete, false);
    w.close();
    assert.equal((await readAll(f)).reader.complete, true);

    // a writer process killed with SIGKILL: what it took more than a second ago is on disk
    const killed = path.join(dir, 'f7-killed.kvmfcap');
    const script = `
      const { CaptureWriter } = require(${JSON.stringify(path.join(__dirname, '../lib/capture'))});
      const { RecordBatch } = require(${JSON.stringify(path.join(__dirname, '../lib/record'))});
      const src = require('fs').readFileSync(${JSON.stringify(good)});
      const hb = src.readUInt32LE(12);
      const w = CaptureWriter.create(${JSON.stringify(killed)}, { flushMs: 1000 });
      let i = 0;
      setInterval(() => {
        const at = hb + Math.floor(i / ${CHUNK}) * (32 + ${CHUNK * SLOT}) + 32 + (i % ${CHUNK}) * ${SLOT};
        const rec = src.subarray(at, at + ${RECORD_SIZE});
        w.write(RecordBatch.fromPacked(new Uint8Array(rec), 1));
        process.stdout.write((++i) + '\\n');
      }, 20);`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let taken = 0;
    const takenAt: number[] = [];
    child.stdout.on('data', (d: Buffer) => {
      for (const line of d.toString().split('\n')) if (line) { taken = Number(line); takenAt[taken] = Date.now(); }
    });
    await new Promise((res) => setTimeout(res, 3000));
    const killedAt = Date.now();
    child.kill('SIGKILL');
    await new Promise((res) => child.once('exit', res));
    const k = await readAll(killed, 'report');
    const onDisk = k.bytes.length / RECORD_SIZE;
    const olderThan1s = takenAt.filter((t) => t !== undefined && t <= killedAt - 1100).length;
    assert.ok(onDisk >= olderThan1s, `${onDisk} records on disk, ${olderThan1s} were taken more than 1.1 s before the kill`);
    assert.ok(onDisk > 0 && onDisk <= taken);
    assert.deepEqual(k.bytes, recs(0, onDisk));
    assert.equal(k.reader.complete, false);
    assert.match(k.reader.damage.map((d) => d.what).join('\n'), /incomplete: no end chunk/);
  });

  it('F8: a damaged metadata byte loses only the metadata; a damaged table block is read from its copy', async () => {
    const metaAt = 2 * (40 + Object.keys(RECORD_OFFSETS).length * 24); // after the table block and its copy
    const f = edit('f8-meta.kvmfcap', (b) => { b[metaAt + 10] ^= 0x20; });
    const { bytes: got, reader } = await readAll(f, 'report');
    assert.deepEqual(got, records);
    assert.equal(reader.header.metaIntact, false);
    assert.equal(reader.header.meta.hostKernel, '');
    assert.match(reader.damage[0].what, /corrupt header metadata: lost/);
    const report = await analyzeFile(f);
    assert.equal(report.records, n);
    assert.equal(report.capture!.metaIntact, false);

    for (const at of [0, 3, 8, 20, 100, 300]) {
      const g = await readAll(edit(`f8-block-${at}.kvmfcap`, (b) => { b[at] ^= 0x01; }), 'report');
      assert.deepEqual(g.bytes, records, `byte ${at}`);
      assert.equal(g.reader.header.metaIntact, true);
      assert.match(g.reader.damage[0].what, /first table block is damaged; read its copy/);
    }
    // the magic itself damaged: analyze still knows the file as a capture by the copy
    const rep = await analyzeFile(edit('f8-magic.kvmfcap', (b) => { b[0] = 0x58; }));
    assert.equal(rep.format, 'capture');
    assert.equal(rep.records, n);
    // bytes before the header, and the copy damaged: the first block is found where it is
    const pre = await readAll(edit('f8-prefix.kvmfcap', (b) => { b[496 + 100] ^= 1; return Buffer.concat([Buffer.from([0x5a, 0x5b]), b]); }), 'report');
    assert.deepEqual(pre.bytes, records);
    assert.match(pre.reader.damage[0].what, /2 unexpected byte\(s\) before the header/);
    // both blocks damaged: refused with a clear error
    await assert.rejects(openCapture(edit('f8-both.kvmfcap', (b) => { b[100] ^= 1; b[496 + 100] ^= 1; })), /both copies of the field table are damaged/);
  });

  it('header errors: not a capture, newer version, truncated header, layout drift, a directory', async () => {
    await assert.rejects(openCapture(write('h-text.kvmfcap', Buffer.from('hello world, not a capture'))), (e: unknown) => e instanceof CaptureError && e.offset === 0 && /not a kvmfault capture/.test(e.message));
    await assert.rejects(openCapture(edit('h-v7.kvmfcap', (b) => { b.writeUInt32LE(7, 8); b.writeUInt32LE(7, 496 + 8); })), /capture version 7 is newer than this kvmfault reads \(2\): upgrade kvmfault/);
    await assert.rejects(openCapture(write('h-short.kvmfcap', bytes.subarray(0, 20))), /truncated header/);
    await assert.rejects(openCapture(dir), (e: unknown) => e instanceof CaptureError && /is a directory/.test(e.message));
    const offsets = RECORD_OFFSETS as unknown as Record<string, number>;
    const saved = offsets.gpa;
    const f = path.join(dir, 'drift.kvmfcap');
    try {
      offsets.gpa = 40; // a capture from another events.h
      CaptureWriter.create(f).close();
    } finally {
      offsets.gpa = saved;
    }
    await assert.rejects(openCapture(f), /record layout drift: field gpa is at 40 \(8 bytes\) in the capture, at 32/);
  });

  it('fuzz (2000 cases): only CaptureError, no damage handed out as a record, no stuck verdict from damage, intact chunks read', async function () {
    this.timeout(120000);
    const cap = makeFuzzCapture();
    const s = await fuzz(cap, 2000, 0x50f0);
    assert.deepEqual(s.failures, [], `${s.failed} of ${s.cases} cases failed`);
    assert.equal(s.falseStuck, 0);
    assert.ok(s.refused < s.cases * 0.05, `${s.refused} refused`);
    assert.ok(s.recordsRead > s.cases * cap.records * 0.5);
  });
});
