/**
 * Timeline: what happened over time in the records analyze feeds the detector, in a bounded
 * amount of memory whatever the input's length, for the HTML report (lib/report/html.ts).
 *
 *   per VM:   mmu_invalidate_seq per time bucket (lowest, highest, last value seen)
 *   per vCPU: attempts and faults that ended mapped per bucket, the gpa it was on at the bucket's
 *             end and how many times the gpa changed inside the bucket
 *
 * One time axis for all series: BUCKETS buckets from the first record's timestamp, each
 * `bucketNs` wide. When a record falls past the last bucket the width doubles and every series
 * folds pairs of buckets into one, so the axis always spans the whole input (downsampled, never
 * cut) and the cost per record stays O(1). A record older than all before it moves the axis'
 * start back (rebase()); a record without a timestamp counts at the last known time.
 *
 * Attempts are counted as the detector counts them (lib/detector/index.ts): a FAULT record, or a
 * FAULTIN that is not the fault-in step of the FAULT just before it on the same gpa; `repeat`
 * (coalesced records, the bpftrace "(N hits)" counter) counts N. Mapped: a MAP record, or
 * FAULT_RET with a RET_PF_* value that means the fault was handled.
 */
import { handledRets, type RetPfTable } from '../kernels';
import { hex64Padded } from '../hex';
import { EventBatch, Kind, UNKNOWN } from '../record';

/** buckets on the time axis: a chart point every ~4 px at 960 px */
export const TIMELINE_BUCKETS = 240;
/** vCPU threads and VMs given a series; later ones are counted in `untrackedVcpus` / `untrackedVms` */
export const TIMELINE_MAX_VCPUS = 1024;
export const TIMELINE_MAX_VMS = 256;

export interface VmSeries {
  vmId: string;
  pid: number;
  /** per bucket; NaN where no record of the VM carried a sequence */
  seqMin: Float64Array;
  seqMax: Float64Array;
  seqLast: Float64Array;
}

export interface VcpuSeries {
  tid: number;
  pid: number;
  vmId: string;
  /** per bucket */
  attempts: Float64Array;
  mapped: Float64Array;
  /** gpa of the last attempt in the bucket (-1: no attempt in it) */
  gpaLast: Float64Array;
  /** times the gpa changed inside the bucket (the change from the previous bucket's last gpa included) */
  gpaChanges: Uint32Array;
}

export interface TimelineData {
  /** trace time (ns) of bucket 0's start; NaN when no record had a timestamp */
  t0Ns: number;
  bucketNs: number;
  buckets: number;
  /** buckets that hold data (the axis is cut there: the rest is past the last record) */
  usedBuckets: number;
  vms: VmSeries[];
  vcpus: VcpuSeries[];
  untrackedVcpus: number;
  untrackedVms: number;
}

interface VcpuState extends VcpuSeries {
  /** gpa of the previous attempt (-1 none) and whether the previous record was a FAULT on it */
  prevGpa: number;
  faultPending: boolean;
}

function nanArray(n: number): Float64Array {
  return new Float64Array(n).fill(NaN);
}

/** The VM id as the detector names it: 16 hex digits, or pid:<pid> when the records carry none. */
export function vmIdString(lo: number, hi: number, pid: number): string {
  if (lo === 0xffffffff && hi === 0xffffffff) return `pid:${pid}`;
  return hex64Padded(lo, hi);
}

export class Timeline {
  private t0 = NaN;
  private bucketNs = 1000;
  private lastTs = NaN;
  private used = 0;
  private readonly vms = new Map<string, VmSeries>();
  private readonly vcpus = new Map<number, VcpuState>();
  private untrackedVcpus = new Set<number>();
  private untrackedVms = new Set<string>();
  private cacheLo = -1;
  private cacheHi = -1;
  private cachePid = -1;
  private cacheVm: VmSeries | null = null;
  private readonly retFixed: number;
  private readonly retSpurious: number;
  private readonly retEmulate: number;
  private readonly retWriteProtected: number;

  constructor(retPf: RetPfTable) {
    [this.retFixed, this.retSpurious, this.retEmulate, this.retWriteProtected] = handledRets(retPf);
  }

  push(batch: EventBatch): void {
    for (let i = 0; i < batch.length; i++) {
      const kind = batch.kind(i);
      if (kind < Kind.FAULT || kind > Kind.EXIT) continue;
      let ts = batch.tsNs(i);
      if (ts === UNKNOWN) ts = Number.isNaN(this.lastTs) ? 0 : this.lastTs;
      else this.lastTs = ts;
      const b = this.bucketOf(ts);
      if (b + 1 > this.used) this.used = b + 1;

      const seq = batch.mmuSeq(i);
      if (seq !== UNKNOWN) {
        const vm = this.vmOf(batch, i);
        if (vm) {
          if (Number.isNaN(vm.seqMin[b]) || seq < vm.seqMin[b]) vm.seqMin[b] = seq;
          if (Number.isNaN(vm.seqMax[b]) || seq > vm.seqMax[b]) vm.seqMax[b] = seq;
          vm.seqLast[b] = seq;
        }
      }
      if (kind === Kind.INVALIDATE_START || kind === Kind.INVALIDATE_END || kind === Kind.EXIT) continue;
      const v = this.vcpuOf(batch, i);
      if (!v) continue;
      const gpa = batch.gpa(i);
      const rep = batch.repeat(i);
      const n = rep >= 1 && rep !== 0xffffffff ? rep : 1;
      if (kind === Kind.FAULT || kind === Kind.FAULTIN) {
        if (gpa === UNKNOWN) continue;
        if (kind === Kind.FAULTIN && v.faultPending && gpa === v.prevGpa) {
          v.faultPending = false;
          continue;
        }
        v.faultPending = kind === Kind.FAULT;
        v.attempts[b] += n;
        if (gpa !== v.prevGpa) v.gpaChanges[b]++;
        v.gpaLast[b] = gpa;
        v.prevGpa = gpa;
      } else if (kind === Kind.MAP) {
        v.mapped[b] += n;
      } else if (kind === Kind.FAULT_RET) {
        const ret = batch.ret(i);
        if (ret === this.retFixed || ret === this.retSpurious || ret === this.retEmulate || ret === this.retWriteProtected) v.mapped[b] += n;
      }
    }
  }

  data(): TimelineData {
    const strip = ({ prevGpa: _p, faultPending: _f, ...s }: VcpuState): VcpuSeries => s;
    return {
      t0Ns: this.t0,
      bucketNs: this.bucketNs,
      buckets: TIMELINE_BUCKETS,
      usedBuckets: this.used,
      vms: [...this.vms.values()],
      vcpus: [...this.vcpus.values()].map(strip),
      untrackedVcpus: this.untrackedVcpus.size,
      untrackedVms: this.untrackedVms.size,
    };
  }

  private bucketOf(ts: number): number {
    if (Number.isNaN(this.t0)) this.t0 = ts;
    if (ts < this.t0) this.rebase(ts);
    let b = Math.floor((ts - this.t0) / this.bucketNs);
    while (b >= TIMELINE_BUCKETS) {
      this.fold();
      b = Math.floor((ts - this.t0) / this.bucketNs);
    }
    return b;
  }

  /**
   * Moves the axis' start back to `ts` (a record older than every one before it: a capture's CPUs
   * and a log's threads are not strictly ordered): the series shift right by whole buckets,
   * folded first where they would not fit.
   */
  private rebase(ts: number): void {
    let k = Math.ceil((this.t0 - ts) / this.bucketNs);
    while (this.used + k > TIMELINE_BUCKETS) {
      this.fold();
      k = Math.ceil((this.t0 - ts) / this.bucketNs);
    }
    const shift = (a: Float64Array | Uint32Array, empty: number) => {
      a.copyWithin(k, 0, this.used);
      a.fill(empty, 0, k);
    };
    for (const vm of this.vms.values()) {
      shift(vm.seqMin, NaN);
      shift(vm.seqMax, NaN);
      shift(vm.seqLast, NaN);
    }
    for (const v of this.vcpus.values()) {
      shift(v.attempts, 0);
      shift(v.mapped, 0);
      shift(v.gpaLast, -1);
      shift(v.gpaChanges, 0);
    }
    this.t0 -= k * this.bucketNs;
    this.used += k;
  }

  /** Doubles the bucket width: bucket i becomes buckets 2i and 2i+1 together. */
  private fold(): void {
    const half = TIMELINE_BUCKETS / 2;
    const sum = (a: Float64Array) => {
      for (let i = 0; i < half; i++) a[i] = a[2 * i] + a[2 * i + 1];
      a.fill(0, half);
    };
    const pick = (a: Float64Array, f: (x: number, y: number) => number, empty: number) => {
      for (let i = 0; i < half; i++) {
        const x = a[2 * i], y = a[2 * i + 1];
        a[i] = Number.isNaN(x) || x === empty ? y : Number.isNaN(y) || y === empty ? x : f(x, y);
      }
      a.fill(empty, half);
    };
    for (const vm of this.vms.values()) {
      pick(vm.seqMin, Math.min, NaN);
      pick(vm.seqMax, Math.max, NaN);
      pick(vm.seqLast, (_x, y) => y, NaN);
    }
    for (const v of this.vcpus.values()) {
      sum(v.attempts);
      sum(v.mapped);
      pick(v.gpaLast, (_x, y) => y, -1);
      const c = v.gpaChanges;
      for (let i = 0; i < half; i++) c[i] = c[2 * i] + c[2 * i + 1];
      c.fill(0, half);
    }
    this.bucketNs *= 2;
    this.used = Math.ceil(this.used / 2);
  }

  private vmOf(batch: EventBatch, i: number): VmSeries | null {
    const lo = batch.vmIdLo(i), hi = batch.vmIdHi(i);
    const pid = lo === 0xffffffff && hi === 0xffffffff ? batch.pid(i) : -1;
    if (lo === this.cacheLo && hi === this.cacheHi && pid === this.cachePid) return this.cacheVm;
    const id = vmIdString(lo, hi, batch.pid(i));
    let vm = this.vms.get(id) ?? null;
    if (!vm) {
      if (this.vms.size >= TIMELINE_MAX_VMS) {
        this.untrackedVms.add(id);
      } else {
        vm = { vmId: id, pid: batch.pid(i), seqMin: nanArray(TIMELINE_BUCKETS), seqMax: nanArray(TIMELINE_BUCKETS), seqLast: nanArray(TIMELINE_BUCKETS) };
        this.vms.set(id, vm);
      }
    }
    this.cacheLo = lo;
    this.cacheHi = hi;
    this.cachePid = pid;
    this.cacheVm = vm;
    return vm;
  }

  private vcpuOf(batch: EventBatch, i: number): VcpuState | null {
    const tid = batch.tid(i);
    const v = this.vcpus.get(tid);
    if (v) return v;
    if (this.vcpus.size >= TIMELINE_MAX_VCPUS) {
      this.untrackedVcpus.add(tid);
      return null;
    }
    const s: VcpuState = {
      tid,
      pid: batch.pid(i),
      vmId: vmIdString(batch.vmIdLo(i), batch.vmIdHi(i), batch.pid(i)),
      attempts: new Float64Array(TIMELINE_BUCKETS),
      mapped: new Float64Array(TIMELINE_BUCKETS),
      gpaLast: new Float64Array(TIMELINE_BUCKETS).fill(-1),
      gpaChanges: new Uint32Array(TIMELINE_BUCKETS),
      prevGpa: -1,
      faultPending: false,
    };
    this.vcpus.set(tid, s);
    return s;
  }
}
