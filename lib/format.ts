/**
 * Record formatters: text in the incident's bpftrace line format (so a trace can be compared
 * with the thread's logs line by line) and JSON lines.
 *
 *   21:25:50:282711 tid[3484173] pid[3484149] FAULTIN @ rip ffffffff814e6ca5 (92234 hits), gpa = 1343fa0b0,
 *     hva = 7feb409fa000, flags = 0 : MMU seq = 8002dc25, in-prog = 0, start = 7feacde61000, end = 7feacde62000
 *
 * Same field names and number styles as the incident (hex without 0x; ret, in-prog and hits
 * decimal). Kinds the incident's script did not have keep their own names: FAULT (handler
 * entry), FAULT_RET (handler result, ret = RET_PF_*), INVALIDATE (start/end = the hva range),
 * EXIT. Unknown fields are left out, never printed as 0. "(N hits)" counts records (repeat
 * included) at that RIP on that thread since the formatter was created, like the script's
 * per-thread counter.
 *
 * Allocation: the output string and its pieces only; per-thread hit counters live in typed
 * arrays indexed through a Map (a new entry per new thread, not per record).
 */
import { hex64 } from './hex';
import { EventBatch, Flag, Kind, kindName, UNKNOWN, UNKNOWN_RET } from './record';

/** the incident's line kinds: the record kind names in capitals ('invalidate' -> INVALIDATE) */
const LINE_KIND: readonly string[] = Array.from({ length: 16 }, (_, k) => kindName(k).toUpperCase());

const DAY_US = 86_400_000_000;
const MAX_THREADS = 65536;

function pad2(n: number): string {
  return n < 10 ? '0' + n : '' + n;
}

/** Wall clock (ms since the epoch) of CLOCK_MONOTONIC 0, which bpf_ktime_get_ns() counts from. */
export function monotonicEpochMs(): number {
  return Date.now() - Number(process.hrtime.bigint()) / 1e6;
}

export interface TextFormatterOptions {
  /** wall clock (ms since the epoch) of ts_ns 0; default: this host's boot (live records) */
  epochMs?: number;
  /** print times in UTC instead of the local time zone */
  utc?: boolean;
}

export class TextFormatter {
  private readonly epochMs: number;
  private readonly tzOffsetMs: number;
  private readonly slotOf = new Map<number, number>();
  private readonly ripLo = new Uint32Array(MAX_THREADS);
  private readonly ripHi = new Uint32Array(MAX_THREADS);
  private readonly hits = new Float64Array(MAX_THREADS);

  constructor(options: TextFormatterOptions = {}) {
    this.epochMs = options.epochMs ?? monotonicEpochMs();
    // one offset for the session: good enough across a DST change for a trace's purpose
    this.tzOffsetMs = options.utc ? 0 : -new Date().getTimezoneOffset() * 60000;
  }

  /** "HH:MM:SS:micro" of a ts_ns */
  time(tsNs: number): string {
    if (tsNs === UNKNOWN) return '??:??:??:??????';
    // in whole microseconds: ms fractions (tsNs / 1e6) round 20 us down to 19.999..
    const us = Math.floor(tsNs / 1000 + (this.epochMs + this.tzOffsetMs) * 1000);
    const dayUs = ((us % DAY_US) + DAY_US) % DAY_US;
    const s = Math.floor(dayUs / 1e6);
    const micro = dayUs - s * 1e6;
    return `${pad2(Math.floor(s / 3600))}:${pad2(Math.floor(s / 60) % 60)}:${pad2(s % 60)}:${String(micro).padStart(6, '0')}`;
  }

  private countHits(batch: EventBatch, i: number): number {
    const tid = batch.tid(i);
    let slot = this.slotOf.get(tid);
    if (slot === undefined) {
      if (this.slotOf.size >= MAX_THREADS) this.slotOf.clear(); // bounded: restart the counters
      slot = this.slotOf.size;
      this.slotOf.set(tid, slot);
      this.hits[slot] = 0;
    }
    const lo = batch.ripLo(i), hi = batch.ripHi(i);
    if (this.ripLo[slot] !== lo || this.ripHi[slot] !== hi) {
      this.ripLo[slot] = lo;
      this.ripHi[slot] = hi;
      this.hits[slot] = 0;
    }
    this.hits[slot] += batch.repeat(i);
    return this.hits[slot];
  }

  /** One record as one line (no newline). */
  line(batch: EventBatch, i: number): string {
    const kind = batch.kind(i);
    const lo = batch.ripLo(i), hi = batch.ripHi(i);
    const hits = this.countHits(batch, i);
    const ripKnown = !(lo === 0xffffffff && hi === 0xffffffff);
    const rip = ripKnown ? hex64(lo, hi) : '?';
    let s = `${this.time(batch.tsNs(i))} tid[${batch.tid(i)}] pid[${batch.pid(i)}] ${LINE_KIND[kind] ?? 'UNKNOWN'} @ rip ${rip}` +
      `${batch.flags(i) & Flag.RIP_STALE ? '?' : ''} (${hits} hits)`;

    const gpa = batch.gpa(i), hva = batch.hva(i), pfn = batch.pfn(i), ret = batch.ret(i);
    const isInvalidate = kind === Kind.INVALIDATE_START || kind === Kind.INVALIDATE_END;
    if (!isInvalidate) {
      if (gpa !== UNKNOWN) s += `, gpa = ${gpa.toString(16)}`;
      if (hva !== UNKNOWN) s += `, hva = ${hva.toString(16)}`;
      if (kind === Kind.FAULT || kind === Kind.FAULTIN) {
        const err = batch.errorCode(i);
        if (err !== UNKNOWN) s += `, flags = ${err.toString(16)}`;
      }
      if (pfn !== UNKNOWN && kind !== Kind.FAULT && kind !== Kind.FAULTIN) s += `, pfn = ${pfn.toString(16)}`;
      if (ret !== UNKNOWN_RET && kind !== Kind.FAULT && kind !== Kind.FAULTIN) s += `, ret = ${ret}`;
    }
    const vcpu = batch.vcpuId(i);
    if (vcpu !== UNKNOWN) s += `, vcpu = ${vcpu}`;
    const repeat = batch.repeat(i);
    if (repeat > 1) s += `, repeat = ${repeat}`;

    // the VM's invalidation state, after " : " as in the incident
    const seq = batch.mmuSeq(i), ip = batch.inProgress(i), start = batch.rangeStart(i), end = batch.rangeEnd(i);
    if (seq !== UNKNOWN || ip !== -1 || start !== UNKNOWN) {
      const parts: string[] = [];
      if (seq !== UNKNOWN) parts.push(`MMU seq = ${seq.toString(16)}`);
      if (ip !== -1) parts.push(`in-prog = ${ip}`);
      if (start !== UNKNOWN) parts.push(`start = ${start.toString(16)}`);
      if (end !== UNKNOWN) parts.push(`end = ${end.toString(16)}`);
      const fseq = batch.faultSeq(i);
      if (fseq !== UNKNOWN) parts.push(`fault seq = ${fseq.toString(16)}`);
      if (batch.flags(i) & Flag.RANGE_GFN && !isInvalidate) parts.push('range = gfn');
      s += ' : ' + parts.join(', ');
    }
    return s;
  }
}

/**
 * The first line of `kvmfault trace` text: it tells the importer (lib/import/bpftrace.ts) that
 * every line is exactly one record (repeat in `repeat =`), unlike the incident's bpftrace logs,
 * whose lines are a sample of the probe hits their "(N hits)" counter counts.
 */
export const TEXT_HEADER_PREFIX = '# kvmfault trace text v1';

export function textHeader(detail: string): string {
  return `${TEXT_HEADER_PREFIX}: one line per record${detail ? `; ${detail}` : ''}`;
}

/** One record as a JSON line (no newline): batch.get(i). */
export function jsonLine(batch: EventBatch, i: number): string {
  return JSON.stringify(batch.get(i));
}
