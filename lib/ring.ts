/**
 * The BPF ring buffer consumer protocol, on the kernel's own pages (zero copy).
 *
 * Only the protocol lives here: where records are, when they may be read, when their space
 * goes back to the kernel. Wakeups (when to call pull()) are lib/stream.ts; decoding fields is
 * lib/record.ts.
 *
 * Layout (native/addon/ring.cc maps it like libbpf): consumer page (consumer_pos, RW), producer
 * page (producer_pos, RO), data area mapped twice back to back (RO), so a record that wraps
 * around the end is still contiguous and needs no special case. Each record: 8-byte header
 * (u32 length with BUSY bit 31 and DISCARD bit 30, u32 page offset), payload, padded to 8.
 *
 * Ordering (the kernel is the producer, on other CPUs):
 *  - producer_pos is read with Atomics.load (sequentially consistent, so at least acquire):
 *    every header below it is reserved, and header/payload reads cannot move above it.
 *  - a header with BUSY set is reserved but not committed yet: stop there, retry later.
 *  - consumer_pos is published with Atomics.store (release; on x86-64 an xchg, a full barrier)
 *    only when the caller is done with the batch, i.e. on the next pull()/release().
 *  - after publishing, producer_pos is read again before anyone decides to sleep: a record
 *    committed before our store saw the OLD consumer_pos and did not wake us (the kernel wakes
 *    only a consumer that had caught up), so it must be found by that re-check (pending()).
 *    pull() does publish-then-read in that order, so "pull() returned nothing" is that re-check.
 */
import { native } from './native';
import { RECORD_SIZE, RecordBatch } from './record';

/** BPF_RINGBUF_BUSY_BIT: record reserved, not yet committed. */
export const RINGBUF_BUSY = 0x80000000;
/** BPF_RINGBUF_DISCARD_BIT: record discarded by the producer; consume, never hand out. */
export const RINGBUF_DISCARD = 0x40000000;
/** Payload length bits of a record header. */
export const RINGBUF_LEN_MASK = 0x3fffffff;
/** BPF_RINGBUF_HDR_SZ */
export const RINGBUF_HEADER_SIZE = 8;

/** The ring regions as the addon hands them out (each created once per Ring). */
export interface RingBuffers {
  /** consumer page, read-write: consumer_pos (u64) at offset 0 */
  consumer: ArrayBuffer;
  /** producer page, READ-ONLY (writing kills the process): producer_pos at offset 0 */
  producer: ArrayBuffer;
  /** data area mapped twice (2 * size bytes), READ-ONLY */
  data: ArrayBuffer;
  /** data area size in bytes (power of two) */
  size: number;
}

/** native/addon/ring.cc `Ring`. */
export interface NativeRing {
  readonly size: number;
  readonly closed: boolean;
  buffers(): RingBuffers;
  /** Arm the fd readiness callback (cb may be omitted to re-arm with the previous one). */
  pollStart(cb?: (status: number) => void): void;
  pollStop(): void;
  /** Native publish of consumer_pos (release store + full fence). */
  commit(pos: number): void;
  /**
   * How many records in a row, the first with its header at byte `off` of the data area and the
   * rest `stride` bytes apart, have header word `word` (at most `limit`); acquire loads,
   * prefetching ahead.
   */
  countRun(off: number, stride: number, word: number, limit: number): number;
  /** Copying drain: payloads into recordSize-byte slots of dst; publishes consumer_pos. */
  drainCopy(dst: Uint8Array, recordSize?: number): number;
  close(): void;
}

export interface OpenRingOptions {
  /**
   * Default true: wake only when the kernel wakes the ring's waiters (edge-triggered, through
   * a private epoll), so the producer's wakeup_bytes batching works and a consumer never spins
   * on a level-triggered fd. Requires the publish / re-check-before-sleep rule (pull() does it).
   * false: poll the map fd directly (readable whenever records are pending).
   */
  edgeTriggered?: boolean;
}

/** Maps a BPF ring buffer map (the fd is dup()ed: the caller keeps its own). */
export function openRing(ringMapFd: number, options: OpenRingOptions = {}): NativeRing {
  if (!Number.isInteger(ringMapFd) || ringMapFd < 0) {
    throw new TypeError(`openRing: ringMapFd must be a file descriptor (non-negative integer), got ${ringMapFd}`);
  }
  const Ring = native().Ring;
  return new Ring(ringMapFd, { edgeTriggered: options.edgeTriggered ?? true }) as NativeRing;
}

export interface RingConsumerOptions {
  /** Most records per batch (default 4096), so a full ring comes out as several batches. */
  maxBatch?: number;
  /** 'zero-copy' (default): batches are views of the ring. 'copy': drainCopy into a JS buffer. */
  mode?: 'zero-copy' | 'copy';
  /**
   * Read the head record's header with Atomics.load. Default: only off x86-64. On x86-64 plain
   * loads are enough: loads are not reordered with older loads (TSO), and V8 does not move memory
   * accesses across the Atomics.load(producer_pos) builtin call that precedes them. The rest of
   * a run is read by the addon's countRun() with acquire loads on every architecture.
   */
  atomicHeaders?: boolean;
  /** Publish consumer_pos with the native commit() instead of Atomics.store (for measuring). */
  nativeCommit?: boolean;
}

// 4096 records (512 KiB of ring) stay in a 1 MiB L2 between the walk and the caller's pass over
// them, and keep the per-batch overhead (one promise, one publish) small. With the fixed-stride
// walk 1024 drains a 64 MiB ring ~8% faster, within the noise of the shared machine it was
// measured on (bench/RESULTS.md, 2026-12-01), and 4096 already beats C libbpf and copy mode.
export const DEFAULT_MAX_BATCH = 4096;

/**
 * Pulls batches of records from a mapped ring. One RecordBatch object is reused: a batch is
 * valid only until the next pull()/release()/close() — its space goes back to the kernel then.
 * Call batch.copy() to keep one.
 */
export class RingConsumer {
  readonly mode: 'zero-copy' | 'copy';
  readonly maxBatch: number;
  /** Records handed out, discarded records skipped, records of the wrong size skipped. */
  records = 0;
  discarded = 0;
  malformed = 0;
  /** Ring bytes consumed (headers, padding and discarded records included; zero-copy mode). */
  bytes = 0;

  private readonly ring: NativeRing;
  private readonly consumerPos: BigUint64Array;
  private readonly producerPos: BigUint64Array;
  private readonly mask: number;
  private readonly headers: Uint32Array;
  private readonly atomicHeaders: boolean;
  private readonly nativeCommit: boolean;
  /** The one batch object every pull() re-points (empty until the first pull). */
  readonly batch: RecordBatch;
  private readonly view: DataView;
  private readonly copyBytes: Uint8Array | null;
  /** Walked up to here (exact as a Number up to 2^53 bytes). */
  private walked: number;
  /** Published to the kernel up to here. */
  private published: number;

  constructor(ring: NativeRing, options: RingConsumerOptions = {}) {
    const maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH;
    if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > 1 << 24) {
      throw new RangeError(`RingConsumer: maxBatch must be an integer from 1 to ${1 << 24}, got ${maxBatch}`);
    }
    const mode = options.mode ?? 'zero-copy';
    if (mode !== 'zero-copy' && mode !== 'copy') {
      throw new TypeError(`RingConsumer: mode must be 'zero-copy' or 'copy', got ${String(mode)}`);
    }
    this.ring = ring;
    this.mode = mode;
    this.maxBatch = maxBatch;
    const { consumer, producer, data, size } = ring.buffers();
    // Positions are u64 read/written whole: BigUint64Array + Atomics, never DataView.getBigUint64
    // (not guaranteed to be a single 64-bit load).
    this.consumerPos = new BigUint64Array(consumer, 0, 1);
    this.producerPos = new BigUint64Array(producer, 0, 1);
    this.mask = size - 1;
    this.headers = new Uint32Array(data);
    this.atomicHeaders = options.atomicHeaders ?? process.arch !== 'x64';
    this.nativeCommit = options.nativeCommit ?? false;
    if (mode === 'copy') {
      this.copyBytes = new Uint8Array(maxBatch * RECORD_SIZE);
      this.view = new DataView(this.copyBytes.buffer);
    } else {
      this.copyBytes = null;
      this.view = new DataView(data);
    }
    this.batch = new RecordBatch(this.view, 0, RECORD_SIZE, 0);
    this.walked = this.published = Number(Atomics.load(this.consumerPos, 0));
  }

  /**
   * Releases the previous batch (publishes consumer_pos), then collects the next one: up to
   * maxBatch committed records. An empty batch means the ring was empty (or its head record is
   * still being written) AFTER publishing: safe to sleep until the next wakeup.
   */
  pull(): RecordBatch {
    if (this.copyBytes !== null) return this.pullCopy(this.copyBytes);
    for (;;) {
      this.release();
      const before = this.walked;
      const n = this.walk();
      // Only discarded/malformed records seen: give their space back and look again rather
      // than return an empty batch with consumer_pos lagging (the fd would stay readable).
      if (n > 0 || this.walked === before) return this.batch;
    }
  }

  /** Publishes consumer_pos for everything walked so far (the batch is no longer valid). */
  release(): void {
    const pos = this.walked;
    if (pos === this.published) return;
    if (this.nativeCommit) this.ring.commit(pos);
    else Atomics.store(this.consumerPos, 0, BigInt(pos)); // release; xchg on x86-64
    this.published = pos;
  }

  /** True when records are waiting beyond what was published (call after release()). */
  pending(): boolean {
    const prod = Number(Atomics.load(this.producerPos, 0));
    const cons = this.copyBytes !== null ? Number(Atomics.load(this.consumerPos, 0)) : this.published;
    return prod !== cons;
  }

  /** Bytes committed or reserved by the producer and not yet published by us. */
  backlog(): number {
    return Number(Atomics.load(this.producerPos, 0)) - Number(Atomics.load(this.consumerPos, 0));
  }

  /** Releases the last batch. The ring itself belongs to the caller. */
  close(): void {
    if (this.copyBytes === null && !this.ring.closed) this.release();
  }

  /**
   * Walks committed records from `walked`: the batch is the run of records that follows any
   * discarded or malformed ones at the head and has the same header word as its first record
   * (same length, BUSY and DISCARD clear), so its records sit at one fixed stride and the
   * batch needs no offsets table. Anything else (BUSY, DISCARD, another length) ends the run;
   * the next walk starts there. Producers write one record size, so runs end only at the
   * producer position or maxBatch in practice.
   */
  private walk(): number {
    const prod = Number(Atomics.load(this.producerPos, 0)); // acquire
    const headers = this.headers;
    const mask = this.mask;
    const atomic = this.atomicHeaders;
    let pos = this.walked;
    let n = 0, first = 0, word = 0, stride = 0;
    // the head: skip discarded and short records, take the first record to hand out
    while (pos < prod) {
      // pos & mask is exact for pos < 2^53: mask < 2^31 and ToInt32 keeps the low 32 bits
      const off = pos & mask;
      const len = atomic ? Atomics.load(headers, off >>> 2) : headers[off >>> 2];
      if (len & RINGBUF_BUSY) break; // reserved, not committed: stop, retry on the next pull
      const payload = len & RINGBUF_LEN_MASK;
      const size = (payload + RINGBUF_HEADER_SIZE + 7) & ~7;
      pos += size;
      if (len & RINGBUF_DISCARD) {
        this.discarded++;
      } else if (payload < RECORD_SIZE) {
        this.malformed++; // not a kvmfault_event: never hand out a short record
      } else {
        first = off + RINGBUF_HEADER_SIZE;
        word = len;
        stride = size;
        n = 1;
        break;
      }
    }
    if (n === 1) {
      // The rest of the run: headers at a fixed stride, so every address is known before any
      // header is loaded and the cache misses overlap (a length-chained walk takes them one at
      // a time). Counted natively: C can prefetch ahead, JS cannot (measured on a 64 MiB ring:
      // ~1.3x the same loop in JS; bench/RESULTS.md). One call per batch; acquire loads.
      // Offsets run on past the ring's end into the second mapping, as the payloads do:
      // first < size and the run is at most size bytes, so they stay inside the 2 * size data.
      const limit = Math.min(this.maxBatch - 1, Math.floor((prod - pos) / stride));
      const more = limit > 0 ? this.ring.countRun(first - RINGBUF_HEADER_SIZE + stride, stride, word >>> 0, limit) : 0;
      n += more;
      pos += more * stride;
    }
    this.bytes += pos - this.walked;
    this.walked = pos;
    this.records += n;
    this.batch.reset(this.view, first, stride, n);
    return n;
  }

  private pullCopy(dst: Uint8Array): RecordBatch {
    // drainCopy publishes what it copied (release + fence) before returning, and reads
    // producer_pos after the previous call's publish: the same re-check as pull().
    const n = this.ring.drainCopy(dst, RECORD_SIZE);
    this.records += n;
    this.bytes += n * RECORD_SIZE;
    this.batch.reset(this.view, 0, RECORD_SIZE, n);
    return this.batch;
  }
}
