/**
 * A per-slot rate window: how fast a growing count (a VM's invalidation sequence, its INVALIDATE
 * records) climbs over roughly the last `windowNs`. Two anchors per slot: the rate is measured
 * from the older one; every window the newer one becomes the older and the current value the
 * newer, so the rate covers one to two windows of recent history without keeping samples.
 */
import { Sentinel } from '../record';

export class RateWindow {
  private readonly anchor: Float64Array;
  private readonly anchorTs: Float64Array;
  private readonly mid: Float64Array;
  private readonly midTs: Float64Array;

  constructor(n: number, private readonly windowNs: number) {
    this.anchor = new Float64Array(n);
    this.anchorTs = new Float64Array(n);
    this.mid = new Float64Array(n);
    this.midTs = new Float64Array(n);
  }

  /** No value yet for slot v (the first observe() anchors both ends). */
  clear(v: number, ts: number): void {
    this.anchor[v] = Sentinel.UNKNOWN;
    this.anchorTs[v] = ts;
    this.mid[v] = Sentinel.UNKNOWN;
    this.midTs[v] = ts;
  }

  /** The count of slot v is `value` at ts. */
  observe(v: number, value: number, ts: number): void {
    if (this.anchor[v] === Sentinel.UNKNOWN) {
      this.anchor[v] = value;
      this.anchorTs[v] = ts;
      this.mid[v] = value;
      this.midTs[v] = ts;
    } else if (ts - this.midTs[v] >= this.windowNs) {
      this.anchor[v] = this.mid[v];
      this.anchorTs[v] = this.midTs[v];
      this.mid[v] = value;
      this.midTs[v] = ts;
    }
  }

  /** Per second from the older anchor to `value` at ts; null before any value or with no time between. */
  perSec(v: number, value: number, ts: number): number | null {
    const dt = ts - this.anchorTs[v];
    if (this.anchor[v] === Sentinel.UNKNOWN || dt <= 0) return null;
    return ((value - this.anchor[v]) * 1e9) / dt;
  }

  /** the older anchor's value (UNKNOWN before any) */
  anchorOf(v: number): number {
    return this.anchor[v];
  }
}
