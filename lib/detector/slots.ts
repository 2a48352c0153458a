/**
 * SlotTable: a fixed number of slots, each owned by one 64-bit key (a vCPU's tid, a VM's id),
 * found by key in O(1) and handed out and taken back without allocating. vCPUs and VMs keep
 * their state in typed arrays indexed by the slot number (vcpu.ts, vm.ts).
 */

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * Open addressing (linear probing) from a 64-bit key (two u32 halves) to a slot number, with
 * backward-shift deletion so lookups never walk tombstones. Sized at >= 2x its capacity.
 */
class KeyIndex {
  private readonly lo: Uint32Array;
  private readonly hi: Uint32Array;
  private readonly val: Int32Array;
  private readonly mask: number;

  constructor(capacity: number) {
    const size = nextPow2(capacity * 2);
    this.lo = new Uint32Array(size);
    this.hi = new Uint32Array(size);
    this.val = new Int32Array(size).fill(-1);
    this.mask = size - 1;
  }

  private home(lo: number, hi: number): number {
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> 7) & this.mask;
  }

  get(lo: number, hi: number): number {
    let p = this.home(lo, hi);
    for (;;) {
      const v = this.val[p];
      if (v < 0) return -1;
      if (this.lo[p] === lo && this.hi[p] === hi) return v;
      p = (p + 1) & this.mask;
    }
  }

  set(lo: number, hi: number, slot: number): void {
    let p = this.home(lo, hi);
    while (this.val[p] >= 0 && !(this.lo[p] === lo && this.hi[p] === hi)) p = (p + 1) & this.mask;
    this.lo[p] = lo;
    this.hi[p] = hi;
    this.val[p] = slot;
  }

  delete(lo: number, hi: number): void {
    let p = this.home(lo, hi);
    for (;;) {
      if (this.val[p] < 0) return;
      if (this.lo[p] === lo && this.hi[p] === hi) break;
      p = (p + 1) & this.mask;
    }
    // backward shift: pull later entries of the cluster into the hole if their home allows it
    let hole = p;
    let q = (p + 1) & this.mask;
    while (this.val[q] >= 0) {
      const h = this.home(this.lo[q], this.hi[q]);
      // entry at q may move to hole iff its home is not in (hole, q] cyclically
      const between = hole <= q ? h > hole && h <= q : h > hole || h <= q;
      if (!between) {
        this.lo[hole] = this.lo[q];
        this.hi[hole] = this.hi[q];
        this.val[hole] = this.val[q];
        hole = q;
      }
      q = (q + 1) & this.mask;
    }
    this.val[hole] = -1;
  }
}

export class SlotTable {
  readonly capacity: number;
  /** 1 while the slot is owned by a key */
  readonly used: Uint8Array;
  /** slots owned now */
  live = 0;
  private readonly index: KeyIndex;
  private readonly keyLo: Uint32Array;
  private readonly keyHi: Uint32Array;
  private readonly free: Int32Array;
  private freeTop: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.used = new Uint8Array(capacity);
    this.index = new KeyIndex(capacity);
    this.keyLo = new Uint32Array(capacity);
    this.keyHi = new Uint32Array(capacity);
    this.free = new Int32Array(capacity);
    // slot 0 is handed out first
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  /** the key's slot, -1 when it has none */
  find(lo: number, hi: number): number {
    return this.index.get(lo, hi);
  }

  get full(): boolean {
    return this.freeTop === 0;
  }

  /** A free slot for the key (the caller made room when full). */
  claim(lo: number, hi: number): number {
    const s = this.free[--this.freeTop];
    this.used[s] = 1;
    this.live++;
    this.keyLo[s] = lo;
    this.keyHi[s] = hi;
    this.index.set(lo, hi, s);
    return s;
  }

  release(s: number): void {
    this.index.delete(this.keyLo[s], this.keyHi[s]);
    this.used[s] = 0;
    this.live--;
    this.free[this.freeTop++] = s;
  }

  /** The used slot with the oldest lastTs (the eviction victim when full), -1 when none is used. */
  leastRecent(lastTs: Float64Array): number {
    let victim = -1;
    for (let k = 0; k < this.capacity; k++) {
      if (this.used[k] && (victim < 0 || lastTs[k] < lastTs[victim])) victim = k;
    }
    return victim;
  }
}
