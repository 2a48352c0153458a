/**
 * EventStream: live records from a BPF ring buffer map as an async iterator of batches.
 *
 *     const stream = new EventStream(ringMapFd, { signal });
 *     for await (const batch of stream) {
 *       for (let i = 0; i < batch.length; i++) use(batch.gpa(i), batch.kind(i));
 *     }
 *
 * !!! A yielded batch is a VIEW OF THE KERNEL'S RING, valid only until the next next() (the
 * next loop iteration): its space is handed back to the kernel then and gets overwritten.
 * Keep what you need as numbers, or call batch.copy() to keep the batch. The same batch object
 * is reused for every yield.
 *
 * Wakeups: while waiting, uv_poll on the map fd (readable when producer_pos != consumer_pos)
 * plus a tail timer for records submitted without a wakeup (below the program's wakeup_bytes).
 * The poll is disarmed while a batch is leased: consumer_pos lags then, so a level-triggered fd
 * would stay readable and spin. It is re-armed only after consumer_pos is published and the
 * ring re-checked (RingConsumer.pull), so no record can slip between "empty" and "asleep".
 */
import { EventBatch, RECORD_SIZE } from './record';
import { NativeRing, openRing, RingConsumer, DEFAULT_MAX_BATCH } from './ring';

export interface StreamOptions {
  /** Ends the iteration (a pending next() resolves done). */
  signal?: AbortSignal;
  /** 'zero-copy' (default) or 'copy' (records copied into a JS buffer by the addon). */
  mode?: 'zero-copy' | 'copy';
  /** Most records per batch (default DEFAULT_MAX_BATCH, 4096: a batch stays in cache). */
  maxBatch?: number;
  /**
   * While waiting, also look at the ring every tailTimerMs (default 10) to pick up records
   * submitted below the producer's wakeup_bytes (no wakeup). 0 disables: poll wakeups only.
   * With a tail timer, a stream that has just delivered a batch and finds less than a quarter
   * batch waiting also waits (for the wakeup or the timer) rather than pull a tiny batch: a
   * record may then reach you up to tailTimerMs later, in fewer, fuller batches.
   */
  tailTimerMs?: number;
  /** Called once when the iteration ends for any reason (end, break, exception, abort, close). */
  onClose?: () => void;
}

export interface StreamStats {
  /** records yielded */
  records: number;
  /** batches yielded */
  batches: number;
  /** times a wait was woken (fd readable or tail timer) */
  wakeups: number;
  /** record bytes yielded (records * RECORD_SIZE) */
  bytes: number;
  /** discarded records skipped (zero-copy mode) */
  discarded: number;
  /** records shorter than a kvmfault_event, skipped (zero-copy mode) */
  malformed: number;
}

/** batches resolved in a row before one goes through the event loop (16 x 4096 records: ~20 ms at 3.5M/s) */
const MAX_IMMEDIATE_BATCHES = 16;
const DONE: IteratorResult<EventBatch> = Object.freeze({ value: undefined, done: true }) as IteratorResult<EventBatch>;

export class EventStream implements AsyncIterable<EventBatch> {
  readonly stats: StreamStats = { records: 0, batches: 0, wakeups: 0, bytes: 0, discarded: 0, malformed: 0 };

  private readonly ring: NativeRing;
  private readonly consumer: RingConsumer;
  private readonly tailTimerMs: number;
  /** backlog (bytes) below which a stream that has just delivered waits instead of pulling; 0: never */
  private readonly chaseMinBytes: number;
  private readonly signal: AbortSignal | undefined;
  private readonly onCloseCb: (() => void) | undefined;
  private iterating = false;
  private ended = false;
  private armed = false;
  private pollCallbackSet = false;
  private timer: NodeJS.Timeout | null = null;
  /** batches resolved at once in a row, without a trip through the event loop */
  private immediateRun = 0;
  private resolveWait: ((r: IteratorResult<EventBatch>) => void) | null = null;
  private rejectWait: ((e: Error) => void) | null = null;
  /** Reused for every yield: for-await reads it before asking for the next one. */
  private readonly yielded: { value: EventBatch; done: false };
  private readonly iterator: AsyncIterator<EventBatch>;
  private readonly onReadable = (status: number): void => this.wake(status);
  private readonly onTimer = (): void => this.wake(0);
  private readonly onAbort = (): void => this.close();

  constructor(ringMapFd: number, options: StreamOptions = {}) {
    const tail = options.tailTimerMs ?? 10;
    if (!(typeof tail === 'number' && tail >= 0 && Number.isFinite(tail))) {
      throw new RangeError(`EventStream: tailTimerMs must be a number >= 0 (0 = off), got ${String(tail)}`);
    }
    if (options.onClose !== undefined && typeof options.onClose !== 'function') {
      throw new TypeError('EventStream: onClose must be a function');
    }
    this.tailTimerMs = tail;
    this.onCloseCb = options.onClose;
    this.ring = openRing(ringMapFd);
    try {
      this.consumer = new RingConsumer(this.ring, {
        mode: options.mode,
        maxBatch: options.maxBatch ?? DEFAULT_MAX_BATCH,
      });
    } catch (e) {
      this.ring.close();
      throw e;
    }
    this.yielded = { value: this.consumer.batch, done: false };
    // Only with a tail timer: it bounds how long a small backlog can wait (no wakeup comes for
    // records below the producer's wakeup_bytes).
    this.chaseMinBytes = tail > 0 ? (this.consumer.maxBatch * RECORD_SIZE) >> 2 : 0;
    this.iterator = {
      next: () => this.next(),
      return: () => {
        this.close();
        return Promise.resolve(DONE);
      },
      throw: (err?: unknown) => {
        this.close();
        return Promise.reject(err);
      },
    };
    this.signal = options.signal;
    if (this.signal) {
      if (this.signal.aborted) this.close();
      else this.signal.addEventListener('abort', this.onAbort, { once: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<EventBatch> {
    if (this.iterating) {
      throw new Error(
        'EventStream: this stream is already being iterated; only one for-await loop may read it ' +
          '(batches are views that the next pull invalidates). Open another stream for a second reader.',
      );
    }
    this.iterating = true;
    return this.iterator;
  }

  /** Ends the stream: a pending next() resolves done, the ring is unmapped. Idempotent. */
  close(): void {
    this.end(null);
  }

  get closed(): boolean {
    return this.ended;
  }

  private next(): Promise<IteratorResult<EventBatch>> {
    if (this.ended) return Promise.resolve(DONE);
    if (this.resolveWait !== null) {
      return Promise.reject(new Error('EventStream: next() called while the previous next() is still pending'));
    }
    // Behind a producer that keeps writing, every pull would take only the few records written
    // while the last batch was read: many tiny batches, each a promise and a publish (measured:
    // ~600 records a batch at 1.7M records/s). Below a quarter batch of backlog, wait for the
    // next wakeup or the tail timer (at most tailTimerMs later) instead: fewer, fuller batches.
    if (this.chaseMinBytes > 0 && this.stats.batches > 0) {
      this.consumer.release();
      if (this.consumer.backlog() < this.chaseMinBytes) return this.wait();
    }
    // Releases the batch handed out last time, then looks for more.
    const batch = this.consumer.pull();
    if (batch.length > 0) {
      if (++this.immediateRun < MAX_IMMEDIATE_BATCHES) return Promise.resolve(this.deliver(batch.length));
      // A ring that never runs dry would otherwise resolve every next() as a microtask and the
      // event loop would never turn: no timers (--duration), no signal handlers (Ctrl-C), no
      // I/O. Every so many batches the next one goes out through setImmediate.
      this.immediateRun = 0;
      return new Promise<IteratorResult<EventBatch>>((resolve) => {
        setImmediate(() => resolve(this.ended ? DONE : this.deliver(batch.length)));
      });
    }
    return this.wait();
  }

  private wait(): Promise<IteratorResult<EventBatch>> {
    this.immediateRun = 0;
    return new Promise<IteratorResult<EventBatch>>((resolve, reject) => {
      this.resolveWait = resolve;
      this.rejectWait = reject;
      this.arm();
    });
  }

  private deliver(n: number): IteratorResult<EventBatch> {
    const s = this.stats;
    s.records += n;
    s.batches++;
    s.bytes += n * RECORD_SIZE;
    s.discarded = this.consumer.discarded;
    s.malformed = this.consumer.malformed;
    return this.yielded;
  }

  private arm(): void {
    if (!this.armed) {
      if (this.pollCallbackSet) this.ring.pollStart();
      else {
        this.ring.pollStart(this.onReadable);
        this.pollCallbackSet = true;
      }
      this.armed = true;
    }
    if (this.tailTimerMs > 0) {
      if (this.timer === null) {
        this.timer = setTimeout(this.onTimer, this.tailTimerMs);
        this.timer.unref(); // the armed poll keeps the process alive while we wait
      } else {
        this.timer.refresh();
      }
    }
  }

  private disarm(): void {
    if (this.armed) {
      this.ring.pollStop();
      this.armed = false;
    }
  }

  private wake(status: number): void {
    if (this.resolveWait === null || this.ended) {
      this.disarm(); // a late timer or readiness after a delivery: nothing waits
      return;
    }
    this.stats.wakeups++;
    if (status < 0) {
      this.end(new Error(`EventStream: waiting on the ring buffer fd failed (libuv status ${status})`));
      return;
    }
    const batch = this.consumer.pull();
    if (batch.length === 0) {
      // spurious, or the head record is still being written: keep waiting
      if (this.tailTimerMs > 0 && this.timer !== null) this.timer.refresh();
      return;
    }
    this.disarm(); // leased: consumer_pos lags until the next pull
    const resolve = this.resolveWait;
    this.resolveWait = this.rejectWait = null;
    resolve(this.deliver(batch.length));
  }

  private end(error: Error | null): void {
    if (this.ended) return;
    this.ended = true;
    this.disarm();
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.signal?.removeEventListener('abort', this.onAbort);
    this.consumer.close(); // give the last batch's space back
    this.ring.close();
    const resolve = this.resolveWait, reject = this.rejectWait;
    this.resolveWait = this.rejectWait = null;
    if (error && reject) reject(error);
    else if (resolve) resolve(DONE);
    this.onCloseCb?.();
  }
}
