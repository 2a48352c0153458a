/**
 * The kvmfault record as TypeScript sees it, and the one batch type every source produces.
 *
 * native/bpf/events.h is the single source of truth for the layout; RECORD_OFFSETS below is
 * checked against the addon's offsetof() exports by test/10.record.offsets.test.ts.
 *
 * EventBatch is what the detector, formatters, recorder and metrics consume: live zero-copy
 * ring batches, capture-file chunks and imported bpftrace logs all hand out RecordBatch views
 * over raw records (a DataView, the first record's byte offset and the stride), so there is
 * exactly one input type and one set of accessors.
 */
import { hex64, hex64Padded } from './hex';

export const RECORD_SIZE = 120;
export const RECORD_VERSION = 1;

/**
 * Byte offsets of each field inside a record (events.h struct kvmfault_event).
 *
 * The record's constants come as const enums (Offset, KindCode, FlagBit, Sentinel) and as the
 * exported objects built from them (RECORD_OFFSETS, Kind, Flag, UNKNOWN). tsc writes a const enum
 * member in as its literal; an exported const compiles to property loads from the module's
 * exports object on every use, which V8 does not fold. Hot paths (the accessors below, the
 * detector) use the enums.
 */
export const enum Offset {
  ts_ns = 0,
  pid = 8,
  tid = 12,
  vm_id = 16,
  vcpu_id = 24,
  kind = 28,
  flags = 30,
  gpa = 32,
  error_code = 40,
  hva = 48,
  pfn = 56,
  rip = 64,
  mmu_seq = 72,
  fault_seq = 80,
  in_progress = 88,
  range_start = 96,
  range_end = 104,
  ret = 112,
  repeat = 116,
}

/** Offset as an object (field tables, tests, callers that index it by name). */
export const RECORD_OFFSETS = {
  ts_ns: Offset.ts_ns,
  pid: Offset.pid,
  tid: Offset.tid,
  vm_id: Offset.vm_id,
  vcpu_id: Offset.vcpu_id,
  kind: Offset.kind,
  flags: Offset.flags,
  gpa: Offset.gpa,
  error_code: Offset.error_code,
  hva: Offset.hva,
  pfn: Offset.pfn,
  rip: Offset.rip,
  mmu_seq: Offset.mmu_seq,
  fault_seq: Offset.fault_seq,
  in_progress: Offset.in_progress,
  range_start: Offset.range_start,
  range_end: Offset.range_end,
  ret: Offset.ret,
  repeat: Offset.repeat,
} as const;
export type RecordField = keyof typeof RECORD_OFFSETS;

/**
 * INVALIDATE_START's overlay of gpa..hva (events.h): who invalidated. Not fields of the capture
 * field table (the same bytes as gpa, error_code, hva); read with lib/sources.ts. All-ones bytes
 * (what older records have there) read as unknown.
 */
export const INVALIDATE_OFFSETS = {
  comm: 32,
  stack_id: 48,
  range_event: 52,
} as const;

/** Record kinds (enum kvmfault_kind). Stored in capture files: values never change. */
export const enum KindCode {
  FAULT = 1,
  FAULTIN = 2,
  FAULTIN_RET = 3,
  MAP = 4,
  FAULT_RET = 5,
  INVALIDATE_START = 6,
  INVALIDATE_END = 7,
  EXIT = 8,
  TEST = 15,
}
export const Kind = {
  FAULT: KindCode.FAULT,
  FAULTIN: KindCode.FAULTIN,
  FAULTIN_RET: KindCode.FAULTIN_RET,
  MAP: KindCode.MAP,
  FAULT_RET: KindCode.FAULT_RET,
  INVALIDATE_START: KindCode.INVALIDATE_START,
  INVALIDATE_END: KindCode.INVALIDATE_END,
  EXIT: KindCode.EXIT,
  TEST: KindCode.TEST,
} as const;
export type KindName =
  | 'fault' | 'faultin' | 'faultin_ret' | 'map' | 'fault_ret'
  | 'invalidate' | 'invalidate_end' | 'exit' | 'test' | 'unknown';

const KIND_NAMES: readonly KindName[] = (() => {
  const names: KindName[] = new Array(16).fill('unknown');
  names[Kind.FAULT] = 'fault';
  names[Kind.FAULTIN] = 'faultin';
  names[Kind.FAULTIN_RET] = 'faultin_ret';
  names[Kind.MAP] = 'map';
  names[Kind.FAULT_RET] = 'fault_ret';
  names[Kind.INVALIDATE_START] = 'invalidate';
  names[Kind.INVALIDATE_END] = 'invalidate_end';
  names[Kind.EXIT] = 'exit';
  names[Kind.TEST] = 'test';
  return names;
})();

export function kindName(kind: number): KindName {
  return KIND_NAMES[kind] ?? 'unknown';
}
export function kindFromName(name: string): number | undefined {
  const i = KIND_NAMES.indexOf(name as KindName);
  return i > 0 && name !== 'unknown' ? i : undefined;
}

/** KF_FLAG_* */
export const enum FlagBit {
  RANGE_GFN = 1 << 0,
  WRITE = 1 << 1,
  EXEC = 1 << 2,
  PRESENT = 1 << 3,
  TDP = 1 << 4,
  RIP_STALE = 1 << 5,
  COALESCED = 1 << 6,
  /** INVALIDATE_START from the tracepoint: vm_id is a guess by pid (lib/sources.ts decides by memslot) */
  VM_BY_PID = 1 << 7,
}
export const Flag = {
  RANGE_GFN: FlagBit.RANGE_GFN,
  WRITE: FlagBit.WRITE,
  EXEC: FlagBit.EXEC,
  PRESENT: FlagBit.PRESENT,
  TDP: FlagBit.TDP,
  RIP_STALE: FlagBit.RIP_STALE,
  COALESCED: FlagBit.COALESCED,
  VM_BY_PID: FlagBit.VM_BY_PID,
} as const;

/**
 * Unknown fields. In the record: all-ones for unsigned fields, -1 for in_progress, INT32_MIN
 * for ret. The numeric accessors map every unsigned 64-bit sentinel to UNKNOWN (-1), so a
 * caller tests `x === UNKNOWN` and zero always means zero.
 */
export const enum Sentinel {
  UNKNOWN = -1,
}
export const UNKNOWN: -1 = Sentinel.UNKNOWN;
export const UNKNOWN_RET = -0x80000000;

/** A record as a plain object: for convenience, never used on hot paths. */
export interface FaultEvent {
  tsNs: number;
  pid: number;
  tid: number;
  /** VM id as 16 hex digits (the full 64-bit value) */
  vmId: string;
  vcpuId: number;
  kind: KindName;
  flags: number;
  gpa: number;
  errorCode: number;
  hva: number;
  pfn: number;
  /** guest RIP as hex without 0x (kernel addresses exceed 2^53), or null when unknown */
  rip: string | null;
  mmuSeq: number;
  faultSeq: number;
  inProgress: number;
  rangeStart: number;
  rangeEnd: number;
  /** null when unknown */
  ret: number | null;
  repeat: number;
}

/**
 * Columnar, index-based access to a batch of records. All numeric accessors return numbers;
 * 64-bit fields are exact below 2^53 (gpa, hva, pfn, sequences, ns timestamps up to 104 days of
 * uptime) and UNKNOWN (-1) for the sentinel. RIP and VM id are 64-bit values: use the
 * lo/hi halves on hot paths, or get(i) for strings.
 *
 * Live batches are views into the kernel's ring: valid only until the next pull from the
 * stream. Call copy() to keep one.
 */
export interface EventBatch {
  readonly length: number;
  kind(i: number): number;
  tsNs(i: number): number;
  pid(i: number): number;
  tid(i: number): number;
  vmIdLo(i: number): number;
  vmIdHi(i: number): number;
  vcpuId(i: number): number;
  flags(i: number): number;
  gpa(i: number): number;
  errorCode(i: number): number;
  hva(i: number): number;
  pfn(i: number): number;
  ripLo(i: number): number;
  ripHi(i: number): number;
  mmuSeq(i: number): number;
  faultSeq(i: number): number;
  inProgress(i: number): number;
  rangeStart(i: number): number;
  rangeEnd(i: number): number;
  ret(i: number): number;
  repeat(i: number): number;
  /** The little-endian u32 at byte `offset` of record i: for overlays such as INVALIDATE_OFFSETS
   *  (lib/sources.ts), read without allocating. */
  u32At(i: number, offset: number): number;
  get(i: number): FaultEvent;
  /** A batch that owns its bytes (survives the next pull). */
  copy(): EventBatch;
  /** Raw bytes of record i (a view, RECORD_SIZE bytes). */
  recordBytes(i: number): Uint8Array;
}

/**
 * The one EventBatch implementation: `length` records at a fixed stride inside `view`, record i's
 * payload at byte `base + i * stride`. A fixed stride needs no per-record offsets table: a ring
 * batch is a run of same-size records (128 bytes apart: 8-byte header + 120-byte payload), a
 * packed buffer (capture files, copies) has stride RECORD_SIZE.
 */
export class RecordBatch implements EventBatch {
  length: number;
  private view: DataView;
  private base: number;
  private stride: number;

  constructor(view: DataView, base: number, stride: number, length: number) {
    this.view = view;
    this.base = base;
    this.stride = stride;
    this.length = length;
  }

  /** Re-point this batch (reused by streams so a pull allocates nothing). */
  reset(view: DataView, base: number, stride: number, length: number): void {
    this.view = view;
    this.base = base;
    this.stride = stride;
    this.length = length;
  }

  /** A batch over `count` records packed back to back in `bytes` (capture files, copies). */
  static fromPacked(bytes: Uint8Array, count = Math.floor(bytes.byteLength / RECORD_SIZE)): RecordBatch {
    return new RecordBatch(new DataView(bytes.buffer, bytes.byteOffset, count * RECORD_SIZE), 0, RECORD_SIZE, count);
  }

  // The accessors compute the offset themselves and u64 is kept short: V8 inlines them within a
  // bytecode budget per optimized caller, and one left out of line returns its double boxed.
  /** Byte offset of record i's payload in the view. */
  private at(i: number): number {
    return this.base + i * this.stride;
  }
  private u32(i: number, off: number): number {
    return this.view.getUint32(this.base + i * this.stride + off, true);
  }
  private u64(i: number, off: number): number {
    const v = this.view, p = this.base + i * this.stride + off;
    const lo = v.getUint32(p, true), hi = v.getUint32(p + 4, true);
    // both halves all ones (the & of two u32 is an int32): the sentinel. 2^32 as a literal: a
    // module const would be a context load on every call
    return (hi & lo) === -1 ? Sentinel.UNKNOWN : hi * 0x100000000 + lo;
  }

  kind(i: number): number { return this.view.getUint16(this.base + i * this.stride + Offset.kind, true); }
  flags(i: number): number { return this.view.getUint16(this.at(i) + Offset.flags, true); }
  tsNs(i: number): number { return this.u64(i, Offset.ts_ns); }
  pid(i: number): number { return this.u32(i, Offset.pid); }
  tid(i: number): number { return this.u32(i, Offset.tid); }
  vmIdLo(i: number): number { return this.u32(i, Offset.vm_id); }
  vmIdHi(i: number): number { return this.u32(i, Offset.vm_id + 4); }
  vcpuId(i: number): number {
    const v = this.u32(i, Offset.vcpu_id);
    return v === 0xffffffff ? Sentinel.UNKNOWN : v;
  }
  gpa(i: number): number { return this.u64(i, Offset.gpa); }
  errorCode(i: number): number { return this.u64(i, Offset.error_code); }
  hva(i: number): number { return this.u64(i, Offset.hva); }
  pfn(i: number): number { return this.u64(i, Offset.pfn); }
  ripLo(i: number): number { return this.u32(i, Offset.rip); }
  ripHi(i: number): number { return this.u32(i, Offset.rip + 4); }
  mmuSeq(i: number): number { return this.u64(i, Offset.mmu_seq); }
  faultSeq(i: number): number { return this.u64(i, Offset.fault_seq); }
  inProgress(i: number): number {
    // s64; -1 is the sentinel. Counts fit in 32 bits; read the low half signed.
    return this.view.getInt32(this.base + i * this.stride + Offset.in_progress, true);
  }
  rangeStart(i: number): number { return this.u64(i, Offset.range_start); }
  rangeEnd(i: number): number { return this.u64(i, Offset.range_end); }
  ret(i: number): number { return this.view.getInt32(this.at(i) + Offset.ret, true); }
  repeat(i: number): number { return this.u32(i, Offset.repeat); }
  u32At(i: number, offset: number): number { return this.u32(i, offset); }

  get(i: number): FaultEvent {
    const ripLo = this.ripLo(i), ripHi = this.ripHi(i);
    const ret = this.ret(i);
    return {
      tsNs: this.tsNs(i),
      pid: this.pid(i),
      tid: this.tid(i),
      vmId: hex64Padded(this.vmIdLo(i), this.vmIdHi(i)),
      vcpuId: this.vcpuId(i),
      kind: kindName(this.kind(i)),
      flags: this.flags(i),
      gpa: this.gpa(i),
      errorCode: this.errorCode(i),
      hva: this.hva(i),
      pfn: this.pfn(i),
      rip: ripLo === 0xffffffff && ripHi === 0xffffffff ? null : hex64(ripLo, ripHi),
      mmuSeq: this.mmuSeq(i),
      faultSeq: this.faultSeq(i),
      inProgress: this.inProgress(i),
      rangeStart: this.rangeStart(i),
      rangeEnd: this.rangeEnd(i),
      ret: ret === UNKNOWN_RET ? null : ret,
      repeat: this.repeat(i),
    };
  }

  recordBytes(i: number): Uint8Array {
    return new Uint8Array(this.view.buffer, this.view.byteOffset + this.at(i), RECORD_SIZE);
  }

  copy(): RecordBatch {
    const out = new Uint8Array(this.length * RECORD_SIZE);
    const src = new Uint8Array(this.view.buffer, this.view.byteOffset, this.view.byteLength);
    if (this.stride === RECORD_SIZE) {
      out.set(src.subarray(this.base, this.base + this.length * RECORD_SIZE)); // packed: one copy
    } else {
      for (let i = 0; i < this.length; i++) out.set(src.subarray(this.at(i), this.at(i) + RECORD_SIZE), i * RECORD_SIZE);
    }
    return RecordBatch.fromPacked(out, this.length);
  }
}

/**
 * Builds records in memory (importers, generators, tests). Fields not set keep their
 * "unknown" sentinel; repeat defaults to 1.
 */
export class RecordWriter {
  private bytes: Uint8Array;
  private view: DataView;
  count = 0;

  constructor(capacity = 1024) {
    this.bytes = new Uint8Array(capacity * RECORD_SIZE);
    this.view = new DataView(this.bytes.buffer);
  }

  /** Starts a new record with every field unknown; returns its index. */
  begin(kind: number): number {
    if ((this.count + 1) * RECORD_SIZE > this.bytes.byteLength) {
      const grown = new Uint8Array(this.bytes.byteLength * 2);
      grown.set(this.bytes);
      this.bytes = grown;
      this.view = new DataView(grown.buffer);
    }
    const base = this.count * RECORD_SIZE;
    this.bytes.fill(0xff, base, base + RECORD_SIZE);
    const v = this.view;
    v.setUint32(base + RECORD_OFFSETS.pid, 0, true);
    v.setUint32(base + RECORD_OFFSETS.tid, 0, true);
    v.setUint16(base + RECORD_OFFSETS.kind, kind, true);
    v.setUint16(base + RECORD_OFFSETS.flags, 0, true);
    v.setInt32(base + RECORD_OFFSETS.ret, UNKNOWN_RET, true);
    v.setUint32(base + RECORD_OFFSETS.repeat, 1, true);
    return this.count++;
  }

  /** Sets an unsigned 64-bit field from a number (< 2^53) or a bigint. */
  setU64(index: number, field: RecordField, value: number | bigint): void {
    const base = index * RECORD_SIZE + RECORD_OFFSETS[field];
    const big = typeof value === 'bigint' ? value : BigInt(value);
    this.view.setBigUint64(base, BigInt.asUintN(64, big), true);
  }
  setU32(index: number, field: 'pid' | 'tid' | 'vcpu_id' | 'repeat', value: number): void {
    this.view.setUint32(index * RECORD_SIZE + RECORD_OFFSETS[field], value >>> 0, true);
  }
  setFlags(index: number, flags: number): void {
    this.view.setUint16(index * RECORD_SIZE + RECORD_OFFSETS.flags, flags, true);
  }
  setInProgress(index: number, value: number): void {
    this.view.setBigInt64(index * RECORD_SIZE + RECORD_OFFSETS.in_progress, BigInt(value), true);
  }
  setRet(index: number, value: number): void {
    this.view.setInt32(index * RECORD_SIZE + RECORD_OFFSETS.ret, value, true);
  }
  /** INVALIDATE_START's who-invalidated overlay (INVALIDATE_OFFSETS); fields left out stay unknown. */
  setInvalidator(index: number, o: { comm?: string; stackId?: number; rangeEvent?: number }): void {
    const base = index * RECORD_SIZE;
    if (o.comm !== undefined) {
      const at = base + INVALIDATE_OFFSETS.comm;
      this.bytes.fill(0, at, at + 16);
      this.bytes.set(Buffer.from(o.comm, 'latin1').subarray(0, 15), at);
    }
    if (o.stackId !== undefined) this.view.setInt32(base + INVALIDATE_OFFSETS.stack_id, o.stackId, true);
    if (o.rangeEvent !== undefined) this.view.setUint32(base + INVALIDATE_OFFSETS.range_event, o.rangeEvent >>> 0, true);
  }

  /** The records written so far as a batch (shares memory with this writer until it grows). */
  batch(): RecordBatch {
    return RecordBatch.fromPacked(this.bytes.subarray(0, this.count * RECORD_SIZE), this.count);
  }
  /** Forget the records (reuse the memory). */
  clear(): void {
    this.count = 0;
  }
}
