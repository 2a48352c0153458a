/**
 * Capture files: raw records behind a self-describing header, written while tracing and read back
 * (at full speed or in real time) by the same consumers as live batches.
 *
 * Version 2 (written by this kvmfault), built to survive damage. Little-endian throughout.
 *
 *   header   table block: "KVMFCAP\0" | u32 version 2 | u32 header bytes | u32 record size
 *                         | u32 field count | u32 meta bytes | u32 records per chunk (the writer's
 *                         maximum) | u32 hash of the metadata | u32 hash of this block (bytes 0..35
 *                         and the field table)
 *                         | field table: count x { name: 16 bytes NUL-padded, u32 offset, u32 size }
 *            the same table block again (a copy: a damaged first block is read from it)
 *            meta: UTF-8 JSON (host kernel, boot time, start time, RET_PF table, ...)
 *            zero padding to a multiple of 8
 *   chunks   sync word (16 fixed random-looking bytes) | u32 type (1 records, 2 end) | u32 chunk
 *            sequence number | u32 record count | u32 hash of type, sequence and count
 *            | count x { record (120 bytes), u32 hash of the record }
 *   end      a chunk of type 2 with count 0 | u64 records written | u32 data chunks | u32 hash
 *
 * What damage costs: a flipped bit in a record loses that record (each record has its own hash);
 * in a chunk header, nothing (the records after it are still verified one by one); in the
 * metadata JSON, only the metadata (the field table has its own hash and a copy). An inserted or
 * deleted byte loses the rest of its chunk (at most `chunkRecords` records): the reader finds the
 * next chunk by its sync word at any byte offset. A file without the end chunk (cut short, or the
 * recorder was killed) reads as incomplete. Only records whose hash verifies are ever handed out;
 * where records were lost the reader counts a gap (CaptureReader.gaps), so a consumer such as the
 * detector never counts a run of attempts across missing records.
 *
 * Version 1 files (16-byte "KFCK" chunk headers, one checksum per chunk, no end marker) are still
 * read; of a damaged version 1 chunk nothing is handed out.
 */
import { promises as fsp, openSync, readFileSync, writeSync, fsyncSync, closeSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { EventBatch, RECORD_OFFSETS, RECORD_SIZE, RECORD_VERSION, RecordBatch } from './record';
import { monotonicEpochMs } from './format';
import { hostKernel, retPfTable } from './kernels';

export const CAPTURE_MAGIC = 'KVMFCAP\0';
/** The version this kvmfault writes; it reads this one and version 1. */
export const CAPTURE_VERSION = 2;
const FIELD_ENTRY = 24;
const FIELD_NAME = 16;
const MAX_FIELDS = 256;
/** the most metadata JSON a capture holds (bytes) */
export const MAX_META_BYTES = 1 << 20;
const MAX_META = MAX_META_BYTES;
const RECORD_SIZES: Record<string, number> = {
  ts_ns: 8, pid: 4, tid: 4, vm_id: 8, vcpu_id: 4, kind: 2, flags: 2, gpa: 8, error_code: 8, hva: 8,
  pfn: 8, rip: 8, mmu_seq: 8, fault_seq: 8, in_progress: 8, range_start: 8, range_end: 8, ret: 4, repeat: 4,
};

// ---- version 2 ----
const V2_FIXED = 40;
/** Starts every chunk. 128 random bits: never in a record or a hash by chance. */
const SYNC = Buffer.from('e3b5d1f0a7c2489e9c1f6b2d4a83e57d', 'hex');
const SYNC_BYTES = 16;
const CHUNK_HEADER = 32;
const SLOT = RECORD_SIZE + 4;
const END_BODY = 16;
const TYPE_RECORDS = 1, TYPE_END = 2;
/** The largest chunk a reader accepts (the writer default is 256 records). */
const MAX_CHUNK_RECORDS = 65536;
const DEFAULT_CHUNK_RECORDS = 256;
const SEED_RECORD = 0x6b766d66, SEED_CHUNK = 0x63686e6b, SEED_HEADER = 0x68656164, SEED_META = 0x6d657461, SEED_END = 0x656e6421;

// ---- version 1 ----
const V1_FIXED = 32;
const V1_CHUNK_HEADER = 16;
const V1_CHUNK_MAGIC = 0x4b43464b; // "KFCK" read as little-endian u32
const V1_MAX_CHUNK_RECORDS = 1 << 20;

export interface CaptureMeta {
  /** uname -r of the traced host */
  hostKernel: string;
  /** wall clock (ms since the epoch) of ts_ns 0, i.e. of boot, for CLOCK_MONOTONIC timestamps */
  bootTimeMs: number | null;
  /** wall clock (ms since the epoch) when the capture started */
  startTimeMs: number;
  /** record layout version of events.h */
  recordVersion: number;
  /** RET_PF_* table of the traced kernel, when the tracer read it from BTF */
  retPf?: Record<string, number>;
  /** the attach mode, or any other note the writer wants to keep */
  [key: string]: unknown;
}

/**
 * The metadata of a capture written live from a tracer (`record`, escalations): the host kernel
 * and how it was judged, the kernel's RET_PF_* table, the attach mode, the clock anchor.
 */
export function liveCaptureMeta(tracer: { retPf: Readonly<Record<string, number>>; mode: string; rangeIsGfn: boolean },
  o: { pid?: number | null; coalesce?: boolean } = {}): Omit<CaptureMeta, 'startTimeMs' | 'recordVersion'> {
  let procVersion: string | undefined;
  try {
    procVersion = readFileSync('/proc/version', 'utf8').trim();
  } catch {
    /* optional metadata */
  }
  return {
    hostKernel: hostKernel().release,
    procVersion,
    staleCheck: hostKernel().btf,
    bootTimeMs: monotonicEpochMs(),
    retPf: { ...retPfTable(tracer.retPf, hostKernel()) },
    mode: tracer.mode,
    rangeIsGfn: tracer.rangeIsGfn,
    pid: o.pid ?? null,
    coalesce: !!o.coalesce,
  };
}

export interface CaptureField {
  name: string;
  offset: number;
  size: number;
}

export interface CaptureHeader {
  version: number;
  recordSize: number;
  headerBytes: number;
  fields: CaptureField[];
  meta: CaptureMeta;
  /** false when the metadata was damaged and replaced by empty defaults (version 2) */
  metaIntact: boolean;
  /** the writer's records per chunk (version 2; version 1: null) */
  chunkRecords: number | null;
}

/** A problem with a capture file at a byte offset. */
export class CaptureError extends Error {
  constructor(readonly path: string, readonly offset: number, readonly what: string, readonly damage: CaptureDamage[] = []) {
    super(`${path}: ${what} (at byte offset ${offset})`);
    this.name = 'CaptureError';
  }
}

export interface CaptureDamage {
  offset: number;
  what: string;
  /** records lost (unknown: null) */
  recordsLost: number | null;
}

/** murmur3 (x86, 32 bit) of 30 words: the per-record hash. `w` is host-endian = little-endian on x86. */
function hashRecordWords(w: Uint32Array, at: number): number {
  let h = SEED_RECORD;
  for (let i = at, end = at + RECORD_SIZE / 4; i < end; i++) {
    let k = Math.imul(w[i], 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  return fmix32(h ^ RECORD_SIZE);
}

/** murmur3 (x86, 32 bit) of any bytes. */
function hashBytes(b: Uint8Array, seed: number): number {
  let h = seed | 0;
  const n = b.byteLength, words = n >>> 2;
  for (let i = 0; i < words; i++) {
    const p = i * 4;
    let k = b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  let k = 0;
  for (let i = n - 1; i >= words * 4; i--) k = (k << 8) | b[i];
  if (n & 3) {
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
  }
  return fmix32(h ^ n);
}

/** murmur3's finalizer: every input bit reaches every output bit. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Version 1's Fletcher-style checksum over 32-bit words. */
function checksumV1(bytes: Uint8Array): number {
  const words = bytes.byteLength >>> 2;
  const aligned = (bytes.byteOffset & 3) === 0;
  const u32 = aligned ? new Uint32Array(bytes.buffer, bytes.byteOffset, words) : null;
  const dv = aligned ? null : new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let a = 0x9e3779b9 | 0, b = 0;
  for (let i = 0; i < words; i++) {
    const w = u32 ? u32[i] : dv!.getUint32(i * 4, true);
    a = (a + w) | 0;
    b = (b + a) | 0;
  }
  for (let i = words * 4; i < bytes.byteLength; i++) {
    a = (a + bytes[i]) | 0;
    b = (b + a) | 0;
  }
  return (Math.imul(b, 0x01000193) ^ a) >>> 0;
}

function fieldTable(): CaptureField[] {
  return Object.entries(RECORD_OFFSETS).map(([name, offset]) => ({ name, offset, size: RECORD_SIZES[name] }));
}

function u32le(b: Uint8Array, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)) >>> 0;
}

/** The header of a version 2 file for this metadata. Throws (before any file exists) for metadata JSON cannot hold. */
function encodeHeader(meta: CaptureMeta, chunkRecords: number): Uint8Array {
  const fields = fieldTable();
  let json: string | undefined;
  try {
    json = JSON.stringify(meta);
  } catch (e) {
    throw new TypeError(`CaptureWriter: the metadata cannot be stored as JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'string' || !json.startsWith('{')) throw new TypeError('CaptureWriter: metadata must be a plain object');
  const metaBytes = Buffer.from(json, 'utf8');
  if (metaBytes.length > MAX_META) throw new RangeError(`CaptureWriter: the metadata is ${metaBytes.length} bytes of JSON, a capture holds at most ${MAX_META}`);
  const block = V2_FIXED + fields.length * FIELD_ENTRY;
  const total = (2 * block + metaBytes.length + 7) & ~7;
  const buf = new Uint8Array(total);
  const dv = new DataView(buf.buffer);
  buf.set(Buffer.from(CAPTURE_MAGIC, 'latin1'), 0);
  dv.setUint32(8, CAPTURE_VERSION, true);
  dv.setUint32(12, total, true);
  dv.setUint32(16, RECORD_SIZE, true);
  dv.setUint32(20, fields.length, true);
  dv.setUint32(24, metaBytes.length, true);
  dv.setUint32(28, chunkRecords, true);
  dv.setUint32(32, hashBytes(metaBytes, SEED_META), true);
  let p = V2_FIXED;
  for (const f of fields) {
    buf.set(Buffer.from(f.name, 'latin1').subarray(0, FIELD_NAME - 1), p);
    dv.setUint32(p + FIELD_NAME, f.offset, true);
    dv.setUint32(p + FIELD_NAME + 4, f.size, true);
    p += FIELD_ENTRY;
  }
  const blockSum = hashBytes(Buffer.concat([buf.subarray(0, 36), buf.subarray(V2_FIXED, block)]), SEED_HEADER);
  dv.setUint32(36, blockSum, true);
  buf.copyWithin(block, 0, block);
  buf.set(metaBytes, 2 * block);
  return buf;
}

export interface CaptureWriterOptions {
  /** metadata; hostKernel and startTimeMs default to this host and now */
  meta?: Partial<CaptureMeta>;
  /** most records in one chunk (default 256, ~31 KB): what one inserted or deleted byte can cost */
  chunkRecords?: number;
  /** records are written at most this long after write() took them (default 1000 ms; 0: only by count) */
  flushMs?: number;
}

/**
 * Streams records to a capture file. write() copies the batch (so live ring batches may be
 * released right after) and writes full chunks synchronously; a timer (and write() itself) writes
 * a partial chunk once its oldest record waited flushMs/2; close() writes the rest and the end
 * chunk, fsyncs and closes. Errors (disk full, ...) are thrown from write()/close() as they happen
 * (a timed flush's error from the next write()/close()).
 */
export class CaptureWriter {
  /** bytes written so far, header included */
  bytesWritten = 0;
  records = 0;
  /** data chunks written */
  chunks = 0;
  private fd: number;
  private readonly staging: Uint8Array;
  private readonly stagingWords: Uint32Array;
  private readonly stagingView: DataView;
  private readonly chunkRecords: number;
  private readonly flushMs: number;
  private pending = 0;
  private pendingSince = 0;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  private timerError: unknown = null;

  private constructor(readonly path: string, fd: number, chunkRecords: number, flushMs: number) {
    this.fd = fd;
    this.chunkRecords = chunkRecords;
    this.flushMs = flushMs;
    this.staging = new Uint8Array(CHUNK_HEADER + chunkRecords * SLOT);
    this.stagingWords = new Uint32Array(this.staging.buffer);
    this.stagingView = new DataView(this.staging.buffer);
  }

  /** Creates (truncates) `path` and writes the header. Bad options or metadata throw before the file is touched. */
  static create(path: string, options: CaptureWriterOptions = {}): CaptureWriter {
    const chunkRecords = options.chunkRecords ?? DEFAULT_CHUNK_RECORDS;
    if (!Number.isInteger(chunkRecords) || chunkRecords < 1 || chunkRecords > MAX_CHUNK_RECORDS) {
      throw new RangeError(`CaptureWriter: chunkRecords must be an integer in 1..${MAX_CHUNK_RECORDS}`);
    }
    const flushMs = options.flushMs ?? 1000;
    if (!(flushMs >= 0) || !Number.isFinite(flushMs)) throw new RangeError('CaptureWriter: flushMs must be a number >= 0');
    const meta: CaptureMeta = {
      hostKernel: osRelease(),
      bootTimeMs: null,
      startTimeMs: Date.now(),
      recordVersion: RECORD_VERSION,
      ...options.meta,
    };
    const header = encodeHeader(meta, chunkRecords);
    const fd = openSync(path, 'w', 0o644);
    const w = new CaptureWriter(path, fd, chunkRecords, flushMs);
    try {
      w.writeAll(header);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    if (flushMs > 0) {
      w.timer = setInterval(() => {
        try {
          if (w.pending > 0) w.flush();
        } catch (e) {
          w.timerError ??= e;
        }
      }, Math.max(1, flushMs / 2));
      w.timer.unref();
    }
    return w;
  }

  private writeAll(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.byteLength) off += writeSync(this.fd, bytes, off, bytes.byteLength - off);
    this.bytesWritten += bytes.byteLength;
  }

  private throwTimerError(): void {
    if (this.timerError !== null) {
      const e = this.timerError;
      this.timerError = null;
      throw e;
    }
  }

  /** The file's size after `more` further records and close() (exact unless a timed flush splits a chunk in between). */
  sizeAfter(more: number): number {
    const n = this.pending + more;
    return this.bytesWritten + n * SLOT + Math.ceil(n / this.chunkRecords) * CHUNK_HEADER + CHUNK_HEADER + END_BODY;
  }

  /** Appends every record of the batch. */
  write(batch: EventBatch): void {
    if (this.closed) throw new Error(`CaptureWriter: ${this.path} is closed`);
    this.throwTimerError();
    for (let i = 0; i < batch.length; i++) {
      if (this.pending === 0) this.pendingSince = Date.now();
      const at = CHUNK_HEADER + this.pending * SLOT;
      this.staging.set(batch.recordBytes(i), at);
      this.stagingWords[(at + RECORD_SIZE) >>> 2] = hashRecordWords(this.stagingWords, at >>> 2);
      if (++this.pending === this.chunkRecords) this.flush();
    }
    this.records += batch.length;
    if (this.flushMs > 0 && this.pending > 0 && Date.now() - this.pendingSince >= this.flushMs / 2) this.flush();
  }

  private chunkHeader(into: DataView, at: number, type: number, seq: number, count: number): void {
    new Uint8Array(into.buffer, into.byteOffset + at, SYNC_BYTES).set(SYNC);
    into.setUint32(at + 16, type, true);
    into.setUint32(at + 20, seq, true);
    into.setUint32(at + 24, count, true);
    into.setUint32(at + 28, hashBytes(new Uint8Array(into.buffer, into.byteOffset + at + 16, 12), SEED_CHUNK), true);
  }

  /** Writes buffered records as a chunk. */
  flush(): void {
    if (this.pending === 0) return;
    const n = this.pending;
    this.chunkHeader(this.stagingView, 0, TYPE_RECORDS, this.chunks, n);
    this.pending = 0;
    this.chunks++;
    this.writeAll(this.staging.subarray(0, CHUNK_HEADER + n * SLOT));
  }

  /** Flushes, writes the end chunk, fsyncs and closes. Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    try {
      this.throwTimerError();
      this.flush();
      const end = new Uint8Array(CHUNK_HEADER + END_BODY);
      const dv = new DataView(end.buffer);
      this.chunkHeader(dv, 0, TYPE_END, this.chunks, 0);
      dv.setUint32(CHUNK_HEADER, this.records % 0x100000000, true);
      dv.setUint32(CHUNK_HEADER + 4, Math.floor(this.records / 0x100000000), true);
      dv.setUint32(CHUNK_HEADER + 8, this.chunks, true);
      dv.setUint32(CHUNK_HEADER + 12, hashBytes(end.subarray(CHUNK_HEADER, CHUNK_HEADER + 12), SEED_END), true);
      this.writeAll(end);
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
      this.fd = -1;
    }
  }
}

export interface ReplayOptions {
  /** 'max' (default): as fast as the consumer takes them; a number: real time scaled by it (2 = twice as fast) */
  speed?: 'max' | number;
  /** stops the replay (the iterator throws the signal's reason) */
  signal?: AbortSignal;
  /** 'throw' (default): after everything readable was yielded, throw a CaptureError for damage;
   *  'report': only fill reader.damage */
  onDamage?: 'throw' | 'report';
}

const READ_BLOCK = 4 << 20;

/** Where the bytes come from: a file, or memory (tests, the fuzz bench). */
interface ByteSource {
  readonly size: number;
  read(into: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

function fileSource(fh: fsp.FileHandle, size: number): ByteSource {
  return {
    size,
    read: async (into, offset, length, position) => (await fh.read(into, offset, length, position)).bytesRead,
    close: () => fh.close().catch(() => undefined),
  };
}

function memorySource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.byteLength,
    read: (into, offset, length, position) => {
      const n = Math.max(0, Math.min(length, bytes.byteLength - position));
      into.set(bytes.subarray(position, position + n), offset);
      return Promise.resolve(n);
    },
    close: () => Promise.resolve(),
  };
}

/** A sliding window over the source: buf holds file bytes [start, start + buf.length). */
class Window {
  buf: Buffer = Buffer.alloc(0);
  start = 0;
  constructor(private readonly src: ByteSource, start: number) {
    this.start = start;
  }

  /** Drops bytes before `pos` (never needed again). */
  discard(pos: number): void {
    const n = pos - this.start;
    if (n <= 0) return;
    if (n >= this.buf.length) {
      this.buf = Buffer.alloc(0);
      this.start = pos;
    } else {
      this.buf = this.buf.subarray(n);
      this.start = pos;
    }
  }

  /** Makes [pos, pos + len) available as far as the file has it; returns how many of those bytes are. */
  async ensure(pos: number, len: number): Promise<number> {
    const want = Math.min(pos + len, this.src.size);
    if (want > this.start + this.buf.length) {
      const from = this.start + this.buf.length;
      const grow = Math.min(Math.max(READ_BLOCK, want - from), this.src.size - from);
      const next = Buffer.allocUnsafe(this.buf.length + grow);
      this.buf.copy(next, 0);
      let got = 0;
      while (got < grow) {
        const n = await this.src.read(next, this.buf.length + got, grow - got, from + got);
        if (n <= 0) break;
        got += n;
      }
      this.buf = next.subarray(0, this.buf.length + got);
    }
    return Math.max(0, Math.min(pos + len, this.start + this.buf.length) - pos);
  }

  /** Index in buf of file offset pos. */
  at(pos: number): number {
    return pos - this.start;
  }

  u32(pos: number): number {
    return u32le(this.buf, pos - this.start);
  }

  /** The first sync word starting in [from, to), or -1. */
  async syncIn(from: number, to: number): Promise<number> {
    if (to <= from) return -1;
    await this.ensure(from, to - from + SYNC_BYTES - 1);
    const a = this.at(from);
    const i = this.buf.subarray(a, Math.min(this.buf.length, this.at(to) + SYNC_BYTES - 1)).indexOf(SYNC);
    return i < 0 ? -1 : from + i;
  }

  /** The first sync word at or after `from` up to the end of the file, or -1. Discards what it passes. */
  async syncAfter(from: number): Promise<number> {
    for (;;) {
      const avail = await this.ensure(from, READ_BLOCK);
      const i = this.buf.subarray(this.at(from), this.at(from) + avail).indexOf(SYNC);
      if (i >= 0) return from + i;
      if (from + avail >= this.src.size) return -1;
      from = Math.max(from, from + avail - (SYNC_BYTES - 1));
      this.discard(from);
    }
  }
}

const ACC_RECORDS = 4096;

/** A capture opened for reading. Iterate batches(); each yielded batch owns its bytes. */
export class CaptureReader {
  /** damage found so far (offset, what, records lost) */
  readonly damage: CaptureDamage[] = [];
  recordsRead = 0;
  /**
   * Places in the record stream where records were lost, so far. It grows before the first batch
   * after the gap is yielded: a consumer that compares it between batches knows the batch does not
   * continue the previous one.
   */
  gaps = 0;
  /** Version 2: true once the end chunk was read, false when the file ended without one; null before the end and for version 1 (it has no end marker). */
  complete: boolean | null = null;
  /** Version 2: what the end chunk says was written */
  recordsWritten: number | null = null;

  constructor(readonly path: string, readonly header: CaptureHeader, readonly fileSize: number, private readonly src: ByteSource,
    headerDamage: CaptureDamage[] = [], private readonly metaAt = header.headerBytes) {
    this.damage.push(...headerDamage);
  }

  async close(): Promise<void> {
    await this.src.close();
  }

  /** Records as RecordBatch chunks; with speed set, paced by their timestamps. Closes the file when done. */
  async *batches(options: ReplayOptions = {}): AsyncGenerator<RecordBatch, void, undefined> {
    const speed = options.speed ?? 'max';
    let t0Trace = -1, t0Wall = 0;
    try {
      if (speed !== 'max' && !(typeof speed === 'number' && speed > 0 && Number.isFinite(speed))) {
        throw new RangeError(`replay speed must be 'max' or a positive number (got ${String(speed)})`);
      }
      const source = this.header.version === 1 ? this.chunksV1() : this.chunksV2();
      for await (const batch of source) {
        options.signal?.throwIfAborted();
        if (speed === 'max') {
          yield batch;
          continue;
        }
        // real time: hand out the records that are due, sleep until the next one is
        let from = 0;
        while (from < batch.length) {
          let to = from;
          for (; to < batch.length; to++) {
            const ts = batch.tsNs(to);
            if (ts < 0) continue;
            if (t0Trace < 0) {
              t0Trace = ts;
              t0Wall = performance.now();
            }
            const dueMs = (ts - t0Trace) / 1e6 / speed;
            const waitMs = dueMs - (performance.now() - t0Wall);
            if (waitMs > 1) {
              if (to > from) break;
              options.signal?.throwIfAborted();
              await sleep(waitMs, options.signal);
            }
          }
          const first = batch.recordBytes(0);
          const view = new DataView(first.buffer, first.byteOffset);
          yield new RecordBatch(view, from * RECORD_SIZE, RECORD_SIZE, to - from);
          from = to;
        }
      }
    } finally {
      await this.close();
    }
    if (this.damage.length > 0 && (options.onDamage ?? 'throw') === 'throw') {
      const d = this.damage[0];
      throw new CaptureError(this.path, d.offset, `${d.what}${this.damage.length > 1 ? ` (and ${this.damage.length - 1} more problem(s))` : ''}`, this.damage);
    }
  }

  private async *chunksV2(): AsyncGenerator<RecordBatch, void, undefined> {
    let win = new Window(this.src, this.header.headerBytes);
    const salvageMax = Math.min(MAX_CHUNK_RECORDS, Math.max(1, this.header.chunkRecords ?? DEFAULT_CHUNK_RECORDS));
    const acc = new Uint8Array(Math.min(ACC_RECORDS, Math.ceil(this.fileSize / SLOT) + 1) * RECORD_SIZE);
    const accMax = acc.byteLength / RECORD_SIZE;
    const accWords = new Uint32Array(acc.buffer);
    let accN = 0;
    const take = (): RecordBatch => {
      const b = RecordBatch.fromPacked(acc.slice(0, accN * RECORD_SIZE), accN);
      this.recordsRead += accN;
      accN = 0;
      return b;
    };
    /** Copies the slot at `pos` into the accumulator if its hash verifies. */
    const accept = (pos: number): boolean => {
      const a = win.at(pos);
      win.buf.copy(acc, accN * RECORD_SIZE, a, a + RECORD_SIZE);
      if (hashRecordWords(accWords, (accN * RECORD_SIZE) >>> 2) !== u32le(win.buf, a + RECORD_SIZE)) return false;
      accN++;
      return true;
    };
    const hdr = new Uint8Array(12);
    let scratch = new Uint8Array(0);
    let scratchWords = new Uint32Array(0);
    let E = this.header.headerBytes; // where the next chunk should start
    {
      // the first chunk: right after the header, unless bytes of the metadata went missing or
      // were added (then its sync word is a little before or after)
      const a = await win.ensure(E, SYNC_BYTES);
      if (a < SYNC_BYTES || !win.buf.subarray(win.at(E), win.at(E) + SYNC_BYTES).equals(SYNC)) {
        const metaAt = this.metaAt;
        const near = new Window(this.src, metaAt);
        const S = await near.syncIn(metaAt, Math.min(this.fileSize, E + CHUNK_HEADER + SLOT));
        if (S >= 0 && S !== E) {
          this.damage.push({ offset: Math.min(S, E), what: `corrupt: the first chunk starts at ${S}, not at ${E} (header bytes missing or added)`, recordsLost: 0 });
          E = S;
          win = new Window(this.src, E);
        }
      }
    }
    let expectSeq = 0;
    let lastDamaged = false;
    for (;;) {
      win.discard(E);
      const avail = await win.ensure(E, CHUNK_HEADER);
      if (avail === 0) {
        this.complete = false;
        this.damage.push({ offset: E, what: `incomplete: no end chunk (the file was cut short or the recorder was killed); ${this.recordsRead + accN} verified record(s) read`, recordsLost: null });
        break;
      }
      const a = win.at(E);
      const syncOk = avail >= SYNC_BYTES && win.buf.subarray(a, a + SYNC_BYTES).equals(SYNC);
      let type = 0, seq = 0, count = 0, hdrOk = false;
      if (avail >= CHUNK_HEADER) {
        hdr.set(win.buf.subarray(a + 16, a + 28));
        type = u32le(hdr, 0);
        seq = u32le(hdr, 4);
        count = u32le(hdr, 8);
        hdrOk = hashBytes(hdr, SEED_CHUNK) === win.u32(E + 28) &&
          ((type === TYPE_RECORDS && count >= 1 && count <= MAX_CHUNK_RECORDS) || (type === TYPE_END && count === 0));
      }
      if (hdrOk && type === TYPE_END) {
        const got = await win.ensure(E + CHUNK_HEADER, END_BODY);
        const body = win.buf.subarray(win.at(E + CHUNK_HEADER), win.at(E + CHUNK_HEADER) + got);
        if (accN > 0) yield take();
        this.complete = got === END_BODY;
        if (got < END_BODY) {
          this.damage.push({ offset: E + CHUNK_HEADER + got, what: 'truncated: the file ends inside the end chunk (every record before it was read)', recordsLost: null });
        } else if (hashBytes(body.subarray(0, 12), SEED_END) === u32le(body, 12)) {
          const written = u32le(body, 0) + u32le(body, 4) * 0x100000000, chunks = u32le(body, 8);
          this.recordsWritten = written;
          if (seq !== chunks) this.damage.push({ offset: E, what: `corrupt: the end chunk's sequence number ${seq} disagrees with its count of ${chunks} chunks`, recordsLost: null });
          // records lost where no count was known (a damaged chunk header, skipped bytes)
          const known = this.damage.reduce((t, d) => t + (d.recordsLost ?? 0), 0);
          const unexplained = written - this.recordsRead - known;
          if (unexplained !== 0) {
            this.damage.push({ offset: E, what: `the end chunk counts ${written} records written: ${this.recordsRead} read intact, ${known} lost where reported, ${unexplained} more in the damaged places`, recordsLost: unexplained > 0 ? unexplained : null });
          }
        } else {
          this.damage.push({ offset: E + CHUNK_HEADER, what: 'corrupt: the end chunk\'s totals are damaged (the file is complete; lost records are reported where they were)', recordsLost: null });
        }
        const after = E + CHUNK_HEADER + END_BODY;
        if (this.fileSize > after) this.damage.push({ offset: after, what: `${this.fileSize - after} unexpected byte(s) after the end chunk (ignored)`, recordsLost: null });
        break;
      }
      const isRecords = hdrOk && type === TYPE_RECORDS;
      if (isRecords) {
        if (seq !== expectSeq && !lastDamaged) {
          if (accN > 0) yield take();
          this.gaps++;
          this.damage.push({ offset: E, what: seq > expectSeq ? `chunk(s) ${expectSeq}..${seq - 1} missing (the next intact chunk is ${seq})` : `chunk ${seq} out of order (expected ${expectSeq})`, recordsLost: null });
        }
        expectSeq = seq + 1;
      } else if (avail < CHUNK_HEADER && !syncOk) {
        // a stray tail shorter than a chunk header, maybe a sync word
        if (accN > 0) yield take();
        this.complete = false;
        this.damage.push({ offset: E, what: `truncated: ${avail} stray byte(s) where a chunk should start; no end chunk`, recordsLost: null });
        break;
      }
      // the records: a counted chunk, or (header unreadable) as many verified slots as follow
      const slots = isRecords ? count : salvageMax;
      let ok = 0, bad = 0, firstBad = -1, next = -1, truncatedAt = -1;
      let from = E + 1; // where a sync word inside the chunk may start
      let k0 = 0;
      if (isRecords && (await win.ensure(E, CHUNK_HEADER + count * SLOT + SYNC_BYTES)) >= CHUNK_HEADER + count * SLOT) {
        // fast path: the whole chunk at hand, copied once to aligned memory and checked slot by
        // slot; the first slot that does not verify goes to the careful loop below
        if (scratch.byteLength < count * SLOT) {
          scratch = new Uint8Array(count * SLOT);
          scratchWords = new Uint32Array(scratch.buffer);
        }
        const a0 = win.at(E + CHUNK_HEADER);
        scratch.set(win.buf.subarray(a0, a0 + count * SLOT));
        for (; k0 < count; k0++) {
          const w = k0 * (SLOT >>> 2);
          if (hashRecordWords(scratchWords, w) !== scratchWords[w + (RECORD_SIZE >>> 2)]) break;
          const d = accN * (RECORD_SIZE >>> 2);
          for (let j = 0; j < RECORD_SIZE >>> 2; j++) accWords[d + j] = scratchWords[w + j];
          accN++;
          ok++;
          if (accN === accMax) yield take();
        }
        if (k0 > 0) from = E + CHUNK_HEADER + k0 * SLOT;
      }
      for (let k = k0; k < slots; k++) {
        const s = E + CHUNK_HEADER + k * SLOT;
        let got = SLOT + SYNC_BYTES - 1;
        if (s + got > win.start + win.buf.length) {
          win.discard(Math.min(from, s));
          got = await win.ensure(s, got);
        }
        if (got >= SLOT && accept(s)) {
          ok++;
          from = s + SLOT;
          if (accN === accMax) yield take();
          continue;
        }
        // not a record: a chunk may start in here (the chunk was shortened, or this is its end)
        const S = await win.syncIn(from, Math.min(s + SLOT, this.fileSize));
        if (S >= 0) {
          next = S;
          break;
        }
        if (got < SLOT) {
          truncatedAt = s;
          break;
        }
        bad++;
        if (firstBad < 0) firstBad = s;
        if (accN > 0) yield take();
        this.gaps++;
        from = s + SLOT;
      }
      const endOfSlots = E + CHUNK_HEADER + slots * SLOT;
      if (!isRecords) {
        lastDamaged = true;
        if (accN > 0) yield take();
        this.gaps++;
        if (next < 0 && truncatedAt < 0) next = await win.syncAfter(from);
        const until = next >= 0 ? next : this.fileSize;
        this.damage.push({
          offset: E,
          what: `corrupt: no readable chunk header; ${ok > 0 ? `${ok} verified record(s) salvaged, ` : ''}${until - E} byte(s) skipped to ${next >= 0 ? 'the next chunk' : 'the end of the file'}`,
          recordsLost: null,
        });
        if (next < 0) {
          this.complete = false;
          this.damage.push({ offset: this.fileSize, what: `incomplete: no end chunk; ${this.recordsRead + accN} verified record(s) read`, recordsLost: null });
          break;
        }
        E = next;
        continue;
      }
      lastDamaged = bad > 0 || next >= 0 || truncatedAt >= 0;
      if (truncatedAt >= 0) {
        if (accN > 0) yield take();
        this.complete = false;
        this.damage.push({ offset: truncatedAt, what: `truncated: the file ends inside the chunk at ${E} (${ok} of ${count} records intact); no end chunk`, recordsLost: count - ok });
        break;
      }
      if (next >= 0) {
        if (accN > 0) yield take();
        this.gaps++;
        this.damage.push({ offset: firstBad >= 0 ? firstBad : next, what: `corrupt: the chunk at ${E} ends early, at ${next} (bytes missing or inserted); ${ok} of ${count} records intact`, recordsLost: count - ok });
        E = next;
        continue;
      }
      if (bad > 0) this.damage.push({ offset: firstBad, what: `corrupt: ${bad} of ${count} records of the chunk at ${E} failed their hash (dropped)`, recordsLost: bad });
      E = endOfSlots;
      // the next chunk normally starts right here; if not, the loop finds it
      const nAvail = await win.ensure(E, SYNC_BYTES);
      if (nAvail >= SYNC_BYTES && !win.buf.subarray(win.at(E), win.at(E) + SYNC_BYTES).equals(SYNC)) {
        const h = await win.ensure(E, CHUNK_HEADER);
        const headerHere = h === CHUNK_HEADER && hashBytes(win.buf.subarray(win.at(E) + 16, win.at(E) + 28), SEED_CHUNK) === win.u32(E + 28);
        if (!headerHere) {
          // bytes inserted at the chunk boundary, or a damaged next chunk start: the next sync word
          const S = await win.syncIn(E, Math.min(E + CHUNK_HEADER + SLOT, this.fileSize));
          if (S > E) {
            if (accN > 0) yield take();
            this.gaps++;
            lastDamaged = true;
            this.damage.push({ offset: E, what: `corrupt: ${S - E} unexpected byte(s) before the next chunk (skipped)`, recordsLost: null });
            E = S;
          }
        }
      }
    }
    if (accN > 0) yield take();
  }

  /** Version 1: chunks with one checksum each; a chunk that does not verify is dropped whole. */
  private async *chunksV1(): AsyncGenerator<RecordBatch, void, undefined> {
    const recordSize = this.header.recordSize;
    const win = new Window(this.src, this.header.headerBytes);
    let pos = this.header.headerBytes;
    for (;;) {
      win.discard(pos);
      const avail = await win.ensure(pos, V1_CHUNK_HEADER);
      if (avail === 0) return;
      const off = pos;
      if (avail < V1_CHUNK_HEADER) {
        this.damage.push({ offset: off, what: `truncated: ${avail} stray byte(s) where a chunk header (16 bytes) should start`, recordsLost: null });
        return;
      }
      const magic = win.u32(pos), count = win.u32(pos + 4), sum = win.u32(pos + 8);
      let what: string | null = null, lost: number | null = null;
      if (magic !== V1_CHUNK_MAGIC || count === 0 || count > V1_MAX_CHUNK_RECORDS) {
        what = magic !== V1_CHUNK_MAGIC ? 'corrupt: no chunk marker' : `corrupt: chunk claims ${count} records`;
      } else {
        const bodyBytes = count * recordSize;
        const got = await win.ensure(pos + V1_CHUNK_HEADER, bodyBytes);
        const a = win.at(pos + V1_CHUNK_HEADER);
        if (got === bodyBytes && checksumV1(win.buf.subarray(a, a + bodyBytes)) === sum) {
          const body = Uint8Array.prototype.slice.call(win.buf, a, a + bodyBytes);
          pos += V1_CHUNK_HEADER + bodyBytes;
          this.recordsRead += count;
          yield RecordBatch.fromPacked(body, count);
          continue;
        }
        // a chunk that does not verify may be a wrong count as well as damaged records: nothing of
        // it is handed out, and the next marker is looked for right after this one
        what = got < bodyBytes
          ? `truncated or corrupt: chunk of ${count} records has ${got} of ${bodyBytes} bytes (records dropped: unverifiable)`
          : `corrupt: checksum mismatch in a chunk of ${count} records (records dropped)`;
        lost = got < bodyBytes ? null : count;
      }
      // resynchronise on the next chunk marker, at any byte offset
      const S = await (async () => {
        let from = pos + 1;
        for (;;) {
          const n = await win.ensure(from, READ_BLOCK);
          if (n < 4) return -1;
          const i = win.buf.subarray(win.at(from), win.at(from) + n).indexOf('KFCK', 0, 'latin1');
          if (i >= 0) return from + i;
          from += n - 3;
          win.discard(from);
        }
      })();
      this.gaps++;
      this.damage.push({ offset: off, what: `${what}; skipped ${(S < 0 ? this.fileSize : S) - off} byte(s) to ${S < 0 ? 'the end' : 'the next chunk'}`, recordsLost: lost });
      if (S < 0) return;
      pos = S;
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

const MAGIC_BYTES = Buffer.from(CAPTURE_MAGIC, 'latin1');

/**
 * True when the bytes start like a capture: the magic at 0, or (a damaged first header block)
 * the copy of a version 2 header block right after it. Pass at least the first 4 KB to see the copy.
 */
export function isCapture(prefix: Uint8Array): boolean {
  const b = Buffer.from(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  if (b.length >= 8 && b.subarray(0, 8).equals(MAGIC_BYTES)) return true;
  for (let i = b.indexOf(MAGIC_BYTES, 1); i >= 0 && i + 12 <= b.length; i = b.indexOf(MAGIC_BYTES, i + 1)) {
    if (u32le(b, i + 8) === 2 && parseBlockV2(b, i) !== null) return true;
  }
  return false;
}

interface BlockV2 {
  headerBytes: number;
  recordSize: number;
  fieldCount: number;
  metaBytes: number;
  chunkRecords: number;
  metaSum: number;
  fields: CaptureField[];
  blockBytes: number;
}

/** The version 2 table block at `at`, or null when it does not verify. */
function parseBlockV2(b: Uint8Array, at: number): BlockV2 | null {
  if (at + V2_FIXED > b.byteLength) return null;
  if (!Buffer.from(b.buffer, b.byteOffset + at, 8).equals(MAGIC_BYTES) || u32le(b, at + 8) !== 2) return null;
  const fieldCount = u32le(b, at + 20);
  if (fieldCount > MAX_FIELDS) return null;
  const blockBytes = V2_FIXED + fieldCount * FIELD_ENTRY;
  if (at + blockBytes > b.byteLength) return null;
  const sum = hashBytes(Buffer.concat([b.subarray(at, at + 36), b.subarray(at + V2_FIXED, at + blockBytes)]), SEED_HEADER);
  if (sum !== u32le(b, at + 36)) return null;
  const headerBytes = u32le(b, at + 12), metaBytes = u32le(b, at + 24);
  if (metaBytes > MAX_META || headerBytes !== ((2 * blockBytes + metaBytes + 7) & ~7)) return null;
  const fields: CaptureField[] = [];
  for (let i = 0, p = at + V2_FIXED; i < fieldCount; i++, p += FIELD_ENTRY) {
    const nameBytes = b.subarray(p, p + FIELD_NAME);
    const end = nameBytes.indexOf(0);
    fields.push({ name: Buffer.from(nameBytes.subarray(0, end < 0 ? FIELD_NAME : end)).toString('latin1'), offset: u32le(b, p + FIELD_NAME), size: u32le(b, p + FIELD_NAME + 4) });
  }
  return { headerBytes, recordSize: u32le(b, at + 16), fieldCount, metaBytes, chunkRecords: u32le(b, at + 28), metaSum: u32le(b, at + 32), fields, blockBytes };
}

/** Throws a CaptureError when the capture's record layout is not this build's. */
function checkLayout(path: string, recordSize: number, fields: CaptureField[], fieldsAt: number, sizeAt: number): void {
  // layout drift: this reader hands the bytes to RecordBatch, so the layout must be ours exactly
  if (recordSize !== RECORD_SIZE) {
    throw new CaptureError(path, sizeAt, `record layout drift: records are ${recordSize} bytes, this kvmfault reads ${RECORD_SIZE}-byte records`);
  }
  for (const f of fieldTable()) {
    const g = fields.find((x) => x.name === f.name);
    if (!g) throw new CaptureError(path, fieldsAt, `record layout drift: field ${f.name} missing from the capture's field table`);
    if (g.offset !== f.offset || g.size !== f.size) {
      throw new CaptureError(path, fieldsAt, `record layout drift: field ${f.name} is at ${g.offset} (${g.size} bytes) in the capture, at ${f.offset} (${f.size} bytes) in this kvmfault`);
    }
  }
}

function parseMeta(bytes: Uint8Array): CaptureMeta {
  const parsed: unknown = JSON.parse(Buffer.from(bytes).toString('utf8'));
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
  const meta = parsed as CaptureMeta;
  if (typeof meta.hostKernel !== 'string') meta.hostKernel = '';
  return meta;
}

const HEADER_PROBE = 64 << 10;

async function openSource(path: string, src: ByteSource): Promise<CaptureReader> {
  const size = src.size;
  const probe = new Uint8Array(Math.min(size, HEADER_PROBE));
  let got = 0;
  while (got < probe.length) {
    const n = await src.read(probe, got, probe.length - got, got);
    if (n <= 0) break;
    got += n;
  }
  const head = probe.subarray(0, got);
  const magicOk = head.length >= 8 && Buffer.from(head.buffer, head.byteOffset, 8).equals(MAGIC_BYTES);
  const version = head.length >= 12 ? u32le(head, 8) : -1;
  if (magicOk && version === 1) return openV1(path, src, head);

  // version 2: the first table block, else its copy
  const damage: CaptureDamage[] = [];
  let block = parseBlockV2(head, 0);
  let copyAt = block ? block.blockBytes : -1;
  if (!block) {
    const m = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
    for (let i = m.indexOf(MAGIC_BYTES, 1); i >= 0; i = m.indexOf(MAGIC_BYTES, i + 1)) {
      const c = parseBlockV2(head, i);
      if (!c) continue;
      if (i <= 64) {
        // the first block itself, a few bytes on: bytes were added before it
        block = c;
        copyAt = i + c.blockBytes;
        damage.push({ offset: 0, what: `corrupt: ${i} unexpected byte(s) before the header`, recordsLost: 0 });
        break;
      }
      // the copy follows the first block, a few bytes off if bytes of that went missing or were added
      if (Math.abs(c.blockBytes - i) <= 64) {
        block = c;
        copyAt = i;
        damage.push({ offset: 0, what: `corrupt: the header's first table block is damaged; read its copy at ${i}`, recordsLost: 0 });
        break;
      }
    }
  }
  if (!block) {
    if (!magicOk) throw new CaptureError(path, 0, 'not a kvmfault capture file (no "KVMFCAP" magic)');
    if (head.length < 12) throw new CaptureError(path, head.length, `truncated header: file is ${size} bytes`);
    if (version > CAPTURE_VERSION) {
      throw new CaptureError(path, 8, `capture version ${version} is newer than this kvmfault reads (${CAPTURE_VERSION}): upgrade kvmfault`);
    }
    if (version !== CAPTURE_VERSION) throw new CaptureError(path, 8, `unknown capture version ${version} (this kvmfault reads versions 1 and ${CAPTURE_VERSION})`);
    const fieldCount = head.length >= 24 ? u32le(head, 20) : 0;
    if (head.length < V2_FIXED || head.length < V2_FIXED + Math.min(fieldCount, MAX_FIELDS) * FIELD_ENTRY * 2) {
      throw new CaptureError(path, head.length, `truncated header: file is ${size} bytes`);
    }
    throw new CaptureError(path, 0, 'corrupt header: both copies of the field table are damaged');
  }
  checkLayout(path, block.recordSize, block.fields, V2_FIXED, 16);
  const metaAt = copyAt + block.blockBytes;
  let meta: CaptureMeta | null = null;
  if (metaAt + block.metaBytes <= size) {
    const metaBuf = new Uint8Array(block.metaBytes);
    let n = 0;
    while (n < metaBuf.length) {
      const r = await src.read(metaBuf, n, metaBuf.length - n, metaAt + n);
      if (r <= 0) break;
      n += r;
    }
    if (n === metaBuf.length && hashBytes(metaBuf, SEED_META) === block.metaSum) {
      try {
        meta = parseMeta(metaBuf);
      } catch {
        meta = null;
      }
    }
  }
  const metaIntact = meta !== null;
  if (!meta) {
    damage.push({ offset: metaAt, what: 'corrupt header metadata: lost (host kernel, RET_PF table, boot time unknown); the records are read with the field table', recordsLost: 0 });
    meta = { hostKernel: '', bootTimeMs: null, startTimeMs: 0, recordVersion: RECORD_VERSION };
  }
  return new CaptureReader(path, {
    version: 2, recordSize: block.recordSize, headerBytes: block.headerBytes, fields: block.fields, meta, metaIntact,
    chunkRecords: block.chunkRecords >= 1 && block.chunkRecords <= MAX_CHUNK_RECORDS ? block.chunkRecords : DEFAULT_CHUNK_RECORDS,
  }, size, src, damage, metaAt);
}

/** Version 1 header: one checksum over all of it. */
async function openV1(path: string, src: ByteSource, probe: Uint8Array): Promise<CaptureReader> {
  const size = src.size;
  if (probe.length < V1_FIXED) throw new CaptureError(path, probe.length, `truncated header: file is ${size} bytes, the fixed header alone is ${V1_FIXED}`);
  const headerBytes = u32le(probe, 12), recordSize = u32le(probe, 16);
  const fieldCount = u32le(probe, 20), metaBytes = u32le(probe, 24), sum = u32le(probe, 28);
  const expectRaw = V1_FIXED + fieldCount * FIELD_ENTRY + metaBytes;
  if (fieldCount > MAX_FIELDS || metaBytes > MAX_META || headerBytes !== ((expectRaw + 7) & ~7)) {
    throw new CaptureError(path, 12, `corrupt header: sizes disagree (header ${headerBytes} bytes, ${fieldCount} fields, ${metaBytes} bytes of metadata)`);
  }
  if (headerBytes > size) throw new CaptureError(path, size, `truncated header: needs ${headerBytes} bytes, file has ${size}`);
  const head = new Uint8Array(headerBytes);
  let n = 0;
  while (n < headerBytes) {
    const r = await src.read(head, n, headerBytes - n, n);
    if (r <= 0) break;
    n += r;
  }
  const hv = new DataView(head.buffer);
  hv.setUint32(28, 0, true);
  if (checksumV1(head) !== sum) throw new CaptureError(path, 0, 'corrupt header: checksum mismatch');
  const fields: CaptureField[] = [];
  for (let i = 0, p = V1_FIXED; i < fieldCount; i++, p += FIELD_ENTRY) {
    const nameBytes = head.subarray(p, p + FIELD_NAME);
    const end = nameBytes.indexOf(0);
    fields.push({
      name: Buffer.from(nameBytes.subarray(0, end < 0 ? FIELD_NAME : end)).toString('latin1'),
      offset: hv.getUint32(p + FIELD_NAME, true),
      size: hv.getUint32(p + FIELD_NAME + 4, true),
    });
  }
  checkLayout(path, recordSize, fields, V1_FIXED, 16);
  let meta: CaptureMeta;
  try {
    meta = parseMeta(head.subarray(V1_FIXED + fieldCount * FIELD_ENTRY, V1_FIXED + fieldCount * FIELD_ENTRY + metaBytes));
  } catch (e) {
    throw new CaptureError(path, V1_FIXED + fieldCount * FIELD_ENTRY, `corrupt header metadata: ${(e as Error).message}`);
  }
  return new CaptureReader(path, { version: 1, recordSize, headerBytes, fields, meta, metaIntact: true, chunkRecords: null }, size, src);
}

/**
 * Opens a capture (version 2 or 1) and validates its header. Throws CaptureError (with the offset)
 * for a path that is not a regular file, a file that is not a capture, a newer version, a header
 * damaged beyond use or a record layout this build cannot read. Damage the reader works around
 * (version 2: a damaged first header block, damaged metadata) is in reader.damage from the start.
 */
export async function openCapture(path: string): Promise<CaptureReader> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EISDIR') throw new CaptureError(path, 0, 'is a directory, not a capture file');
    throw new CaptureError(path, 0, `cannot open: ${code ?? (e as Error).message}${code === 'ENOENT' ? ' (no such file)' : code === 'EACCES' ? ' (permission denied)' : ''}`);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new CaptureError(path, 0, 'is a directory, not a capture file');
    if (!st.isFile()) throw new CaptureError(path, 0, 'not a regular file, not a capture file');
    return await openSource(path, fileSource(fh, st.size));
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  }
}

/** Opens a capture held in memory (tests, the fuzz bench); `name` stands in for the path in messages. */
export function openCaptureBytes(bytes: Uint8Array, name = '<memory>'): Promise<CaptureReader> {
  return openSource(name, memorySource(bytes));
}
