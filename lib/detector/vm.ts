/**
 * Per-VM state, one typed-array entry per slot: the VM's key, its sequence and invalidation
 * counts with their rate windows, and whether one of its vCPUs showed the bug's signature.
 */
import { Sentinel } from '../record';
import { hex64Padded } from '../hex';
import { RateWindow } from './rate';

export const enum VmKey {
  /** key kinds: the record's vm_id, or the VMM pid when the vm id is unknown (bpftrace logs) */
  ID = 0,
  PID = 1,
  /** the hash key's high half for pid keys: a pid key never equals a vm id key */
  PID_HI = 0xfffffffe,
}

export class VmTable {
  readonly keyLo: Uint32Array;
  readonly keyHi: Uint32Array;
  readonly keyKind: Uint8Array;
  readonly pid: Uint32Array;
  /** idOf() of each slot, made once when the VM is first seen: every verdict carries it */
  private readonly ids: string[];
  /** vCPUs tracked now */
  readonly vcpus: Int32Array;
  readonly lastTs: Float64Array;
  /** latest sequence (mmu_seq, else the fault's snapshot when not sign-extended) and when */
  readonly seq: Float64Array;
  readonly seqTs: Float64Array;
  readonly seqRate: RateWindow;
  /** INVALIDATE_START records (their repeat counts) */
  readonly inv: Float64Array;
  readonly invRate: RateWindow;
  /** 1 once a vCPU of the VM was stuck with the signature in its records */
  readonly signature: Uint8Array;

  constructor(m: number, rateWindowNs: number) {
    this.keyLo = new Uint32Array(m);
    this.keyHi = new Uint32Array(m);
    this.keyKind = new Uint8Array(m);
    this.pid = new Uint32Array(m);
    this.ids = new Array<string>(m).fill('');
    this.vcpus = new Int32Array(m);
    this.lastTs = new Float64Array(m);
    this.seq = new Float64Array(m);
    this.seqTs = new Float64Array(m);
    this.seqRate = new RateWindow(m, rateWindowNs);
    this.inv = new Float64Array(m);
    this.invRate = new RateWindow(m, rateWindowNs);
    this.signature = new Uint8Array(m);
  }

  init(v: number, lo: number, hi: number, keyKind: number, pid: number, ts: number): void {
    this.keyLo[v] = lo;
    this.keyHi[v] = hi;
    this.keyKind[v] = keyKind;
    this.pid[v] = pid;
    this.ids[v] = keyKind === VmKey.PID ? `pid:${lo}` : hex64Padded(lo, hi);
    this.vcpus[v] = 0;
    this.lastTs[v] = ts;
    this.seq[v] = Sentinel.UNKNOWN;
    this.seqTs[v] = ts;
    this.seqRate.clear(v, ts);
    this.inv[v] = 0;
    this.invRate.clear(v, ts);
    this.invRate.observe(v, 0, ts);
    this.signature[v] = 0;
  }

  /** the record being consumed: its time and the VM sequence it carries (UNKNOWN: none). Set by the
   *  detector before update(): fields, not arguments, so a call V8 does not inline boxes no double */
  recTs = 0;
  recSeq = Sentinel.UNKNOWN;

  /** One record of VM v (recTs, recSeq). */
  update(v: number): void {
    const ts = this.recTs, seq = this.recSeq;
    if (ts > this.lastTs[v]) this.lastTs[v] = ts;
    if (seq !== Sentinel.UNKNOWN && seq >= this.seq[v]) {
      this.seqRate.observe(v, seq, ts);
      this.seq[v] = seq;
      this.seqTs[v] = ts;
    }
    this.invRate.observe(v, this.inv[v], ts);
  }

  /** "pid:<pid>" for pid keys, else the vm id as 16 hex digits */
  idOf(v: number): string {
    return this.ids[v];
  }
}
