/**
 * Capture files: raw records behind a self-describing header, written while tracing and read back
 * (at full speed or in real time) by the same consumers as live batches.
 *
 * Layout (little-endian):
 *   header   "KVMFCAP\0" | u32 version | u32 header bytes | u32 record size | u32 field count
 *            | u32 meta bytes | u32 checksum of the header (this field taken as 0)
 *            | field table: count x { name: 16 bytes NUL-padded, u32 offset, u32 size }
 *            | meta: UTF-8 JSON (host kernel, boot time, start time, RET_PF table, ...)
 *            | zero padding to a multiple of 8
 *   chunks   "KFCK" | u32 record count | u32 checksum of the records | u32 0 | count x record
 *
 * The field table lets a reader detect layout drift (a capture from another build of events.h);
 * chunk checksums let it find corrupt data. Damage never loses what is readable: a truncated or
 * corrupt chunk is reported with its byte offset, the reader resynchronises on the next chunk
 * marker, and complete records of a truncated final chunk are still handed out.
 */
import { promises as fsp, openSync, writeSync, fsyncSync, closeSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { EventBatch, RECORD_OFFSETS, RECORD_SIZE, RECORD_VERSION, RecordBatch } from './record';

export const CAPTURE_MAGIC = 'KVMFCAP\0';
export const CAPTURE_VERSION = 1;
const FIXED_HEADER = 32;
const FIELD_ENTRY = 24;
const FIELD_NAME = 16;
const CHUNK_HEADER = 16;
const CHUNK_MAGIC = 0x4b43464b; // "KFCK" read as little-endian u32
/** A chunk larger than this is corruption, not data (the writer uses <= 8192 records). */
const MAX_CHUNK_RECORDS = 1 << 20;
const RECORD_SIZES: Record<string, number> = {
  ts_ns: 8, pid: 4, tid: 4, vm_id: 8, vcpu_id: 4, kind: 2, flags: 2, gpa: 8, error_code: 8, hva: 8,
  pfn: 8, rip: 8, mmu_seq: 8, fault_seq: 8, in_progress: 8, range_start: 8, range_end: 8, ret: 4, repeat: 4,
};

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

/** Fletcher-style checksum over 32-bit words: cheap enough for hundreds of MB/s, catches flips. */
function checksum(bytes: Uint8Array): number {
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

/** The largest metadata openCapture accepts (bytes of JSON). */
export const MAX_META_BYTES = 1 << 20;

function encodeHeader(meta: CaptureMeta): Uint8Array {
  const fields = fieldTable();
  let json: string | undefined;
  try {
    json = JSON.stringify(meta);
  } catch (e) {
    throw new TypeError(`CaptureWriter: the metadata cannot be stored as JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'string' || !json.startsWith('{')) throw new TypeError('CaptureWriter: the metadata must be a JSON object');
  const metaBytes = Buffer.from(json, 'utf8');
  if (metaBytes.length > MAX_META_BYTES) {
    throw new RangeError(`CaptureWriter: the metadata is ${metaBytes.length} bytes of JSON, a capture holds at most ${MAX_META_BYTES}`);
  }
  const raw = FIXED_HEADER + fields.length * FIELD_ENTRY + metaBytes.length;
  const total = (raw + 7) & ~7;
  const buf = new Uint8Array(total);
  const dv = new DataView(buf.buffer);
  buf.set(Buffer.from(CAPTURE_MAGIC, 'latin1'), 0);
  dv.setUint32(8, CAPTURE_VERSION, true);
  dv.setUint32(12, total, true);
  dv.setUint32(16, RECORD_SIZE, true);
  dv.setUint32(20, fields.length, true);
  dv.setUint32(24, metaBytes.length, true);
  let p = FIXED_HEADER;
  for (const f of fields) {
    buf.set(Buffer.from(f.name, 'latin1').subarray(0, FIELD_NAME - 1), p);
    dv.setUint32(p + FIELD_NAME, f.offset, true);
    dv.setUint32(p + FIELD_NAME + 4, f.size, true);
    p += FIELD_ENTRY;
  }
  buf.set(metaBytes, p);
  dv.setUint32(28, checksum(buf), true);
  return buf;
}

export interface CaptureWriterOptions {
  /** metadata; hostKernel and startTimeMs default to this host and now */
  meta?: Partial<CaptureMeta>;
  /** records buffered before a chunk is written (default 8192, ~1 MB) */
  chunkRecords?: number;
}

/**
 * Streams records to a capture file. write() copies the batch (so live ring batches may be
 * released right after) and writes full chunks synchronously; close() writes the rest, fsyncs
 * and closes. Errors (disk full, ...) are thrown from write()/close() as they happen.
 */
export class CaptureWriter {
  /** bytes written so far, header included */
  bytesWritten = 0;
  records = 0;
  private fd: number;
  private readonly staging: Uint8Array;
  private readonly stagingView: DataView;
  private readonly chunkRecords: number;
  private pending = 0;
  private closed = false;

  private constructor(readonly path: string, fd: number, chunkRecords: number) {
    this.fd = fd;
    this.chunkRecords = chunkRecords;
    this.staging = new Uint8Array(CHUNK_HEADER + chunkRecords * RECORD_SIZE);
    this.stagingView = new DataView(this.staging.buffer);
  }

  /** Creates (truncates) `path` and writes the header. */
  static create(path: string, options: CaptureWriterOptions = {}): CaptureWriter {
    const chunkRecords = options.chunkRecords ?? 8192;
    if (!Number.isInteger(chunkRecords) || chunkRecords < 1 || chunkRecords > MAX_CHUNK_RECORDS) {
      throw new RangeError(`CaptureWriter: chunkRecords must be an integer in 1..${MAX_CHUNK_RECORDS}`);
    }
    const meta: CaptureMeta = {
      hostKernel: osRelease(),
      bootTimeMs: null,
      startTimeMs: Date.now(),
      recordVersion: RECORD_VERSION,
      ...options.meta,
    };
    // encoded before the file is created: metadata that cannot be stored (a BigInt, a cycle,
    // too big) throws here and leaves no empty file behind
    const header = encodeHeader(meta);
    const fd = openSync(path, 'w', 0o644);
    const w = new CaptureWriter(path, fd, chunkRecords);
    try {
      w.writeAll(header);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return w;
  }

  private writeAll(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.byteLength) off += writeSync(this.fd, bytes, off, bytes.byteLength - off);
    this.bytesWritten += bytes.byteLength;
  }

  /** Appends every record of the batch. */
  write(batch: EventBatch): void {
    if (this.closed) throw new Error(`CaptureWriter: ${this.path} is closed`);
    for (let i = 0; i < batch.length; i++) {
      this.staging.set(batch.recordBytes(i), CHUNK_HEADER + this.pending * RECORD_SIZE);
      if (++this.pending === this.chunkRecords) this.flush();
    }
    this.records += batch.length;
  }

  /** Writes buffered records as a chunk. */
  flush(): void {
    if (this.pending === 0) return;
    const body = this.staging.subarray(CHUNK_HEADER, CHUNK_HEADER + this.pending * RECORD_SIZE);
    this.stagingView.setUint32(0, CHUNK_MAGIC, true);
    this.stagingView.setUint32(4, this.pending, true);
    this.stagingView.setUint32(8, checksum(body), true);
    this.stagingView.setUint32(12, 0, true);
    const n = this.pending;
    this.pending = 0;
    this.writeAll(this.staging.subarray(0, CHUNK_HEADER + n * RECORD_SIZE));
  }

  /** Flushes, fsyncs and closes. Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.flush();
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
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

/** A capture opened for reading. Iterate batches(); each yielded batch owns its bytes. */
export class CaptureReader {
  /** damage found so far (offset, what, records lost) */
  readonly damage: CaptureDamage[] = [];
  recordsRead = 0;

  constructor(readonly path: string, readonly header: CaptureHeader, readonly fileSize: number, private readonly fh: fsp.FileHandle) {}

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }

  /** Records as RecordBatch chunks; with speed set, paced by their timestamps. Closes the file when done. */
  async *batches(options: ReplayOptions = {}): AsyncGenerator<RecordBatch, void, undefined> {
    const speed = options.speed ?? 'max';
    let t0Trace = -1, t0Wall = 0;
    try {
      if (speed !== 'max' && !(typeof speed === 'number' && speed > 0 && Number.isFinite(speed))) {
        throw new RangeError(`replay speed must be 'max' or a positive number (got ${String(speed)})`);
      }
      for await (const batch of this.chunks()) {
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
          const offsets = new Uint32Array(to - from);
          for (let k = 0; k < offsets.length; k++) offsets[k] = (from + k) * RECORD_SIZE;
          const view = new DataView(batch.recordBytes(0).buffer, batch.recordBytes(0).byteOffset);
          yield new RecordBatch(view, offsets, offsets.length);
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

  private async *chunks(): AsyncGenerator<RecordBatch, void, undefined> {
    const recordSize = this.header.recordSize;
    let buf = new Uint8Array(0);
    let bufStart = this.header.headerBytes; // file offset of buf[0]
    let eof = false;
    const fill = async (need: number): Promise<void> => {
      while (!eof && buf.byteLength < need) {
        const want = Math.max(READ_BLOCK, need - buf.byteLength);
        const next = new Uint8Array(buf.byteLength + want);
        next.set(buf);
        const { bytesRead } = await this.fh.read(next, buf.byteLength, want, bufStart + buf.byteLength);
        if (bytesRead === 0) eof = true;
        buf = next.subarray(0, buf.byteLength + bytesRead);
      }
    };
    const consume = (n: number): void => {
      buf = buf.subarray(n);
      bufStart += n;
    };
    for (;;) {
      await fill(CHUNK_HEADER);
      if (buf.byteLength === 0) return;
      const off = bufStart;
      if (buf.byteLength < CHUNK_HEADER) {
        this.damage.push({ offset: off, what: `truncated: ${buf.byteLength} stray byte(s) where a chunk header (16 bytes) should start`, recordsLost: null });
        return;
      }
      const dv = new DataView(buf.buffer, buf.byteOffset, CHUNK_HEADER);
      const magic = dv.getUint32(0, true), count = dv.getUint32(4, true), sum = dv.getUint32(8, true);
      if (magic !== CHUNK_MAGIC || count === 0 || count > MAX_CHUNK_RECORDS) {
        const what = magic !== CHUNK_MAGIC ? 'corrupt: no chunk marker' : `corrupt: chunk claims ${count} records`;
        // resynchronise on the next chunk marker (chunks start 8-aligned)
        const skipFrom = off;
        consume(8);
        for (;;) {
          await fill(CHUNK_HEADER);
          if (buf.byteLength < 4) break;
          const m = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0, true);
          if (m === CHUNK_MAGIC) break;
          consume(Math.min(8, buf.byteLength));
        }
        this.damage.push({ offset: skipFrom, what: `${what}; skipped ${bufStart - skipFrom} byte(s) to ${buf.byteLength >= 4 ? 'the next chunk' : 'the end'}`, recordsLost: null });
        continue;
      }
      const bodyBytes = count * recordSize;
      await fill(CHUNK_HEADER + bodyBytes);
      if (buf.byteLength < CHUNK_HEADER + bodyBytes) {
        // truncated final chunk: hand out its complete records, unverified
        const whole = Math.floor((buf.byteLength - CHUNK_HEADER) / recordSize);
        this.damage.push({
          offset: off,
          what: `truncated: chunk of ${count} records ends after ${buf.byteLength - CHUNK_HEADER} of ${bodyBytes} bytes (${whole} complete record(s) kept, unverified)`,
          recordsLost: count - whole,
        });
        if (whole > 0) {
          const bytes = buf.slice(CHUNK_HEADER, CHUNK_HEADER + whole * recordSize);
          this.recordsRead += whole;
          yield RecordBatch.fromPacked(bytes, whole);
        }
        return;
      }
      const body = buf.slice(CHUNK_HEADER, CHUNK_HEADER + bodyBytes);
      if (checksum(body) !== sum) {
        this.damage.push({ offset: off, what: `corrupt: checksum mismatch in a chunk of ${count} records (records dropped)`, recordsLost: count });
        consume(CHUNK_HEADER + bodyBytes);
        continue;
      }
      consume(CHUNK_HEADER + bodyBytes);
      this.recordsRead += count;
      yield RecordBatch.fromPacked(body, count);
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

/** True when the bytes start with the capture magic. */
export function isCapture(prefix: Uint8Array): boolean {
  return prefix.byteLength >= 8 && Buffer.from(prefix.subarray(0, 8)).toString('latin1') === CAPTURE_MAGIC;
}

/**
 * Opens a capture and validates its header. Throws CaptureError (with the offset) for a path
 * that cannot be opened or is not a regular file, a file that is not a capture, a newer
 * version, a corrupt header or a record layout this build cannot read.
 */
export async function openCapture(path: string): Promise<CaptureReader> {
  let fh;
  try {
    fh = await fsp.open(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CaptureError(path, 0, `cannot open: ${code ?? (e as Error).message}${code === 'ENOENT' ? ' (no such file)' : code === 'EACCES' ? ' (permission denied)' : ''}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new CaptureError(path, 0, st.isDirectory() ? 'is a directory, not a capture file' : 'not a regular file, not a capture file');
    const size = st.size;
    const fixed = new Uint8Array(FIXED_HEADER);
    const { bytesRead } = await fh.read(fixed, 0, FIXED_HEADER, 0);
    if (bytesRead < 8 || !isCapture(fixed)) {
      throw new CaptureError(path, 0, 'not a kvmfault capture file (no "KVMFCAP" magic)');
    }
    if (bytesRead < FIXED_HEADER) throw new CaptureError(path, bytesRead, `truncated header: file is ${size} bytes, the fixed header alone is ${FIXED_HEADER}`);
    const dv = new DataView(fixed.buffer);
    const version = dv.getUint32(8, true);
    if (version !== CAPTURE_VERSION) {
      throw new CaptureError(path, 8, version > CAPTURE_VERSION
        ? `capture version ${version} is newer than this kvmfault reads (${CAPTURE_VERSION}): upgrade kvmfault`
        : `unknown capture version ${version} (this kvmfault reads version ${CAPTURE_VERSION})`);
    }
    const headerBytes = dv.getUint32(12, true), recordSize = dv.getUint32(16, true);
    const fieldCount = dv.getUint32(20, true), metaBytes = dv.getUint32(24, true), sum = dv.getUint32(28, true);
    const expectRaw = FIXED_HEADER + fieldCount * FIELD_ENTRY + metaBytes;
    if (fieldCount > 256 || metaBytes > MAX_META_BYTES || headerBytes !== ((expectRaw + 7) & ~7)) {
      throw new CaptureError(path, 12, `corrupt header: sizes disagree (header ${headerBytes} bytes, ${fieldCount} fields, ${metaBytes} bytes of metadata)`);
    }
    if (headerBytes > size) throw new CaptureError(path, size, `truncated header: needs ${headerBytes} bytes, file has ${size}`);
    const head = new Uint8Array(headerBytes);
    await fh.read(head, 0, headerBytes, 0);
    const hv = new DataView(head.buffer);
    hv.setUint32(28, 0, true);
    if (checksum(head) !== sum) throw new CaptureError(path, 0, 'corrupt header: checksum mismatch');
    const fields: CaptureField[] = [];
    for (let i = 0, p = FIXED_HEADER; i < fieldCount; i++, p += FIELD_ENTRY) {
      const nameBytes = head.subarray(p, p + FIELD_NAME);
      const end = nameBytes.indexOf(0);
      fields.push({
        name: Buffer.from(nameBytes.subarray(0, end < 0 ? FIELD_NAME : end)).toString('latin1'),
        offset: hv.getUint32(p + FIELD_NAME, true),
        size: hv.getUint32(p + FIELD_NAME + 4, true),
      });
    }
    // layout drift: this reader hands the bytes to RecordBatch, so the layout must be ours exactly
    if (recordSize !== RECORD_SIZE) {
      throw new CaptureError(path, 16, `record layout drift: records are ${recordSize} bytes, this kvmfault reads ${RECORD_SIZE}-byte records`);
    }
    for (const f of fieldTable()) {
      const g = fields.find((x) => x.name === f.name);
      if (!g) throw new CaptureError(path, FIXED_HEADER, `record layout drift: field ${f.name} missing from the capture's field table`);
      if (g.offset !== f.offset || g.size !== f.size) {
        throw new CaptureError(path, FIXED_HEADER, `record layout drift: field ${f.name} is at ${g.offset} (${g.size} bytes) in the capture, at ${f.offset} (${f.size} bytes) in this kvmfault`);
      }
    }
    let meta: CaptureMeta;
    try {
      const text = Buffer.from(head.subarray(FIXED_HEADER + fieldCount * FIELD_ENTRY, FIXED_HEADER + fieldCount * FIELD_ENTRY + metaBytes)).toString('utf8');
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
      meta = parsed as CaptureMeta;
    } catch (e) {
      throw new CaptureError(path, FIXED_HEADER + fieldCount * FIELD_ENTRY, `corrupt header metadata: ${(e as Error).message}`);
    }
    if (typeof meta.hostKernel !== 'string') meta.hostKernel = '';
    return new CaptureReader(path, { version, recordSize, headerBytes, fields, meta }, size, fh);
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  }
}
