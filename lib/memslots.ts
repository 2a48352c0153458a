/**
 * Every VM's guest memory as host virtual ranges (its memslots), and the question the
 * invalidation sources ask of them: which VM's memory does an invalidated hva range touch?
 *
 * The kvm:kvm_unmap_hva_range tracepoint (the only invalidation record in tracepoint mode) has
 * the range [start, end) and runs in the invalidating task, not in the VM: a kernel thread's
 * invalidation (ksmd, khugepaged, kcompactd, kswapd) names no VM, and a VMM's madvise/munmap of
 * its own heap fires it too although no guest memory is touched. The memslot iterator
 * (native/bpf/kvmcounters.bpf.c, kvm_vm_memslots) reads each VM's slots through its VM fd;
 * MemslotIndex answers "which VM" per record without allocating.
 *
 * Bounds (events.h): at most KF_MEMSLOTS_MAX (64) slots per address space per VM and, on v5.17+
 * kernels, KF_MEMSLOT_CHAIN (8) per bucket of KVM's id hash; a VM cut short says `truncated`.
 */
import { native } from './native';

/** struct kvmfault_memslot (native/bpf/events.h); test 10 checks these against offsetof(). */
export const MEMSLOT_SIZE = 48;
export const MEMSLOT_OFFSETS = { pid: 0, fd: 4, vm_id: 8, userspace_addr: 16, npages: 24, base_gfn: 32, as_id: 40, slot_id: 42, flags: 44 } as const;
export const MEMSLOT_FLAGS = { SUMMARY: 1 << 0, TRUNCATED: 1 << 1, NO_SHAPE: 1 << 2 } as const;

const PAGE = 4096;

export interface Memslot {
  /** host virtual address of the slot's first byte */
  hva: number;
  /** bytes */
  size: number;
  baseGfn: number;
  asId: number;
  slotId: number;
}

export interface MemslotVm {
  /** the VM id as the tracer's records carry it (16 hex digits) when read with the tracer's key */
  vmId: string;
  /** processes holding a fd of this VM (the VMM; more after fork / fd passing) */
  pids: number[];
  slots: Memslot[];
  /** a bound of the walk left slots out: a miss may be guest memory after all */
  truncated: boolean;
  /** this kernel's struct kvm_memslots is neither known shape: no slots read */
  shapeUnknown: boolean;
}

/** Decodes the memslot iterator's output into one entry per VM (VM fds of one VM merged). */
export function parseMemslotRecords(buf: Uint8Array): MemslotVm[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const vms = new Map<string, MemslotVm>();
  const seen = new Map<string, Set<string>>();
  for (let at = 0; at + MEMSLOT_SIZE <= buf.byteLength; at += MEMSLOT_SIZE) {
    const vmId = view.getBigUint64(at + MEMSLOT_OFFSETS.vm_id, true).toString(16).padStart(16, '0');
    const pid = view.getUint32(at + MEMSLOT_OFFSETS.pid, true);
    const flags = view.getUint32(at + MEMSLOT_OFFSETS.flags, true);
    let vm = vms.get(vmId);
    if (!vm) {
      vms.set(vmId, (vm = { vmId, pids: [], slots: [], truncated: false, shapeUnknown: false }));
      seen.set(vmId, new Set());
    }
    if (!vm.pids.includes(pid)) vm.pids.push(pid);
    if (flags & MEMSLOT_FLAGS.SUMMARY) {
      vm.truncated ||= (flags & MEMSLOT_FLAGS.TRUNCATED) !== 0;
      vm.shapeUnknown ||= (flags & MEMSLOT_FLAGS.NO_SHAPE) !== 0;
      continue;
    }
    const slot: Memslot = {
      hva: Number(view.getBigUint64(at + MEMSLOT_OFFSETS.userspace_addr, true)),
      size: Number(view.getBigUint64(at + MEMSLOT_OFFSETS.npages, true)) * PAGE,
      baseGfn: Number(view.getBigUint64(at + MEMSLOT_OFFSETS.base_gfn, true)),
      asId: view.getUint16(at + MEMSLOT_OFFSETS.as_id, true),
      slotId: view.getInt16(at + MEMSLOT_OFFSETS.slot_id, true),
    };
    // the same VM through several fds / processes: each slot once
    const key = `${slot.asId}/${slot.slotId}/${slot.hva}/${slot.size}`;
    if (seen.get(vmId)!.has(key) || slot.size === 0) continue;
    seen.get(vmId)!.add(key);
    vm.slots.push(slot);
  }
  return [...vms.values()];
}

/** match() results that are not a VM index */
export const MATCH_NONE = -1;
export const MATCH_AMBIGUOUS = -2;

/** Whose memory an invalidation can be: the invalidating process's own VMs only, or any VM. */
export type MatchScope = 'own' | 'any';

/**
 * The memslots of every VM, sorted by hva for lookups that allocate nothing. Ranges of different
 * VMs may overlap (each VM lives in its own process's address space): match() reports that as
 * ambiguous unless the invalidating process holds exactly one of the VMs.
 */
export class MemslotIndex {
  readonly vms: readonly MemslotVm[];
  /** per VM: the id's halves as the records' vmIdLo / vmIdHi read them */
  readonly vmIdLo: Uint32Array;
  readonly vmIdHi: Uint32Array;
  private readonly start: Float64Array;
  private readonly end: Float64Array;
  /** max(end) over slots 0..i: the backward scan stops once nothing earlier can reach start */
  private readonly maxEnd: Float64Array;
  private readonly vmOf: Int32Array;
  /** pid -> bit set of its VMs' indices (first 31 VMs; more: looked up in vms[].pids) */
  private readonly pidVms = new Map<number, number>();
  private readonly byId = new Map<string, number>();
  /** 53 bits of the id (as InvalidationSources keys VMs) -> VM index: a lookup per record, no string */
  private readonly byHalves = new Map<number, number>();

  constructor(vms: readonly MemslotVm[], readonly readAtMs = Date.now()) {
    this.vms = vms;
    this.vmIdLo = new Uint32Array(vms.length);
    this.vmIdHi = new Uint32Array(vms.length);
    const rows: [number, number, number][] = [];
    vms.forEach((vm, v) => {
      this.vmIdHi[v] = parseInt(vm.vmId.slice(0, 8), 16) >>> 0;
      this.vmIdLo[v] = parseInt(vm.vmId.slice(8, 16), 16) >>> 0;
      this.byId.set(vm.vmId, v);
      this.byHalves.set((this.vmIdHi[v] & 0x1fffff) * 4294967296 + this.vmIdLo[v], v);
      for (const pid of vm.pids) this.pidVms.set(pid, (this.pidVms.get(pid) ?? 0) | (v < 31 ? 1 << v : 0));
      for (const s of vm.slots) rows.push([s.hva, s.hva + s.size, v]);
    });
    rows.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    this.start = Float64Array.from(rows, (r) => r[0]);
    this.end = Float64Array.from(rows, (r) => r[1]);
    this.vmOf = Int32Array.from(rows, (r) => r[2]);
    this.maxEnd = new Float64Array(rows.length);
    let m = 0;
    for (let i = 0; i < rows.length; i++) this.maxEnd[i] = m = Math.max(m, this.end[i]);
  }

  /** The VM index of an id (16 hex digits), or -1 when this table does not have the VM. */
  indexOf(vmId: string): number {
    return this.byId.get(vmId) ?? -1;
  }

  /** The VM index of a record's vm_id halves, or -1. */
  indexOfHalves(lo: number, hi: number): number {
    const v = this.byHalves.get((hi & 0x1fffff) * 4294967296 + lo);
    return v !== undefined && this.vmIdLo[v] === lo && this.vmIdHi[v] === hi ? v : -1;
  }

  /** Whether a VM that match(…, pid, scope) could name was cut short by the walk's bounds (a miss is then no proof). */
  truncatedFor(pid: number, scope: MatchScope): boolean {
    for (let v = 0; v < this.vms.length; v++) {
      if (this.vms[v].truncated && (scope === 'any' || this.ownedBy(v, pid))) return true;
    }
    return false;
  }

  /** Whether the process holds a fd of some VM in this table. */
  holdsVm(pid: number): boolean {
    return this.pidVms.has(pid);
  }

  private ownedBy(v: number, pid: number): boolean {
    const bits = this.pidVms.get(pid);
    if (bits === undefined) return false;
    return v < 31 ? (bits & (1 << v)) !== 0 : this.vms[v].pids.includes(pid);
  }

  /** Whether [start, end) overlaps a memslot of VM v. */
  overlapsVm(v: number, start: number, end: number): boolean {
    for (let i = this.lastStartingBefore(end); i >= 0 && this.maxEnd[i] > start; i--) {
      if (this.vmOf[i] === v && this.end[i] > start) return true;
    }
    return false;
  }

  /**
   * The VM whose guest memory [start, end) overlaps: its index, MATCH_NONE (no VM's) or
   * MATCH_AMBIGUOUS (several VMs'). scope 'own': only VMs that pid holds (the invalidation is of
   * the invalidating task's own address space: its madvise, munmap, ...). 'any': the pid's own
   * VMs first (one of them overlapping decides), else every VM (kernel threads, direct reclaim or
   * compaction in another process).
   */
  match(start: number, end: number, pid: number, scope: MatchScope): number {
    if (!(end > start)) return MATCH_NONE;
    let own = MATCH_NONE, any = MATCH_NONE;
    for (let i = this.lastStartingBefore(end); i >= 0 && this.maxEnd[i] > start; i--) {
      if (this.end[i] <= start) continue;
      const v = this.vmOf[i];
      if (this.ownedBy(v, pid)) own = own === MATCH_NONE || own === v ? v : MATCH_AMBIGUOUS;
      any = any === MATCH_NONE || any === v ? v : MATCH_AMBIGUOUS;
    }
    if (own !== MATCH_NONE || scope === 'own') return own;
    return any;
  }

  /** index of the last slot whose start is < end, or -1 */
  private lastStartingBefore(end: number): number {
    let lo = 0, hi = this.start.length - 1, at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.start[mid] < end) { at = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return at;
  }
}

/**
 * Where the invalidation sources get the memslot table: the current one (refreshed by the
 * caller's own timer, e.g. when counters are sampled) and a refresh on a miss, which the source
 * rate-limits. null from current(): memslots cannot be read here (no iterator, a capture).
 */
export interface MemslotSource {
  current(): MemslotIndex | null;
  /** why there is no table or the last read failed (null: fine) */
  readonly error?: string | null;
  /** read again if the last read is older than the source's minimum interval; the table after */
  refreshOnMiss(): MemslotIndex | null;
}

/** A fixed table (a capture's, from its stacks file): no refresh. */
export function fixedMemslots(vms: readonly MemslotVm[]): MemslotSource {
  const index = new MemslotIndex(vms);
  return { current: () => index, refreshOnMiss: () => index, error: null };
}

/**
 * Every VM seen over a recording: each table read is merged in (a VM keeps its last slots), so a
 * VM that went away before the end is still there for analyze.
 */
export class MemslotHistory {
  private readonly vms = new Map<string, MemslotVm>();
  add(index: MemslotIndex | null): void {
    if (index) for (const vm of index.vms) this.vms.set(vm.vmId, vm);
  }
  all(): MemslotVm[] {
    return [...this.vms.values()];
  }
}

/**
 * A MemslotSource over a reader function; refreshes on a miss at most every minIntervalMs. A VM
 * gone from a read stays in the table for graceMs: records reach user space after the fact (the
 * ring's lag), and the last invalidations of a VM that shut down would otherwise find no VM.
 */
export class MemslotCache implements MemslotSource {
  private index: MemslotIndex | null = null;
  private lastTryMs = -Infinity;
  /** every VM read, with when it was last in a read */
  private readonly seen = new Map<string, { vm: MemslotVm; atMs: number }>();
  /** why the last read failed (null: it worked) */
  error: string | null = null;
  reads = 0;

  /** called with every table read (record keeps them for analyze) */
  onRead: ((index: MemslotIndex) => void) | null = null;

  constructor(private readonly read: () => MemslotVm[] | null, private readonly minIntervalMs = 1000,
    private readonly now: () => number = Date.now, private readonly graceMs = 5000) {}

  /** Reads now, whatever the interval. */
  refresh(): MemslotIndex | null {
    this.lastTryMs = this.now();
    try {
      const vms = this.read();
      this.reads++;
      this.error = vms ? null : 'the memslot iterator is not available';
      if (vms) {
        const at = this.lastTryMs;
        for (const vm of vms) this.seen.set(vm.vmId, { vm, atMs: at });
        for (const [id, s] of this.seen) if (at - s.atMs > this.graceMs) this.seen.delete(id);
      }
      this.index = vms ? new MemslotIndex([...this.seen.values()].map((s) => s.vm), this.lastTryMs) : null;
      if (this.index) this.onRead?.(this.index);
    } catch (e) {
      this.error = (e as Error).message;  // keep the last good table
    }
    return this.index;
  }

  current(): MemslotIndex | null {
    if (this.index === null && this.lastTryMs === -Infinity) this.refresh();
    return this.index;
  }

  refreshOnMiss(): MemslotIndex | null {
    return this.now() - this.lastTryMs >= this.minIntervalMs ? this.refresh() : this.index;
  }
}

/** The memslot iterator (the addon's KvmCounters object, which also holds the counters iterator). */
export interface MemslotReader {
  /** every VM's memslots now; null: the memslot iterator did not load on this kernel */
  read(): MemslotVm[] | null;
  /** why the iterator is not available (null when it is) */
  readonly unavailable: string | null;
  close(): void;
}

/**
 * Opens the memslot iterator. key: the tracer's vm_id key, so the VM ids equal the records'
 * (lib/tracer.ts passes it). Throws the addon's Error (.code EPERM, NO_KVM, LOAD_FAILED, ...).
 */
export function openMemslotReader(key?: bigint): MemslotReader {
  const it: { memslots(): Buffer | null; memslotsError(): string | null; close(): void } =
    key === undefined ? new (native().KvmCounters)() : new (native().KvmCounters)(key);
  const unavailable = it.memslotsError();
  return {
    unavailable,
    read: () => {
      const buf = it.memslots();
      return buf ? parseMemslotRecords(buf) : null;
    },
    close: () => it.close(),
  };
}
