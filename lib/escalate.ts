/**
 * Escalation: from "this VM looks stuck" (KVM's counters, ~0 cost) to "this vCPU is stuck,
 * because ..." (the BPF tracer and the detector), for one VMM at a time and for a bounded time.
 *
 *   const esc = new Escalator({ seconds: 20, captureDir: '/var/tmp/kvmfault', log });
 *   esc.consider(counterView);            // after every counter sample
 *   esc.results                           // the latest verdict per escalated VMM
 *
 * Rate limits: one escalation at a time (tracing cost stays bounded whatever the fleet does), and
 * a VMM is escalated again only after `cooldownSeconds`. Every start, end and skip is logged.
 * An escalation ends early once a vCPU is stuck and `afterStuckSeconds` more records (the
 * evidence) are in the capture.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CaptureWriter, liveCaptureMeta } from './capture';
import type { CounterView } from './counters';
import { StaleFaultDetector, Verdict } from './detector';
import { hostKernel, retPfTable } from './kernels';
import { openTracer, TracerMode } from './tracer';

export interface EscalationOptions {
  /** how long to trace a suspect VMM (default 20 s) */
  seconds?: number;
  /** once stuck, keep recording this long for the evidence (default 2 s) */
  afterStuckSeconds?: number;
  /** a VMM is not escalated again within this many seconds of the last escalation (default 600) */
  cooldownSeconds?: number;
  /** directory for capture files (one per escalation); null: no capture */
  captureDir?: string | null;
  mode?: 'auto' | TracerMode;
  /** one JSON-able object per event: started, finished, failed, skipped */
  log?: (event: Record<string, unknown>) => void;
}

export interface EscalationResult {
  pid: number;
  vmName: string | null;
  startedAtMs: number;
  endedAtMs: number;
  /** the worst vCPU's state: stuck > retrying > progressing; 'no-faults' when none was seen */
  state: Verdict['state'] | 'no-faults' | 'error';
  cause: Verdict['cause'];
  confidence: Verdict['confidence'];
  decidedBy: Verdict['decidedBy'];
  tid: number | null;
  vcpu: number | null;
  gpa: string | null;
  seq: string | null;
  records: number;
  dropped: number;
  mode: string | null;
  capture: string | null;
  error?: string;
}

export interface EscalationStats {
  started: number;
  finished: number;
  failed: number;
  /** suspect VMMs not escalated: another escalation was running */
  skippedBusy: number;
  /** suspect VMMs not escalated: escalated within the cooldown */
  skippedCooldown: number;
}

const RANK: Record<string, number> = { stuck: 3, retrying: 2, progressing: 1 };

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, not ours
  }
}

export class Escalator {
  readonly results = new Map<number, EscalationResult>();
  readonly stats: EscalationStats = { started: 0, finished: 0, failed: 0, skippedBusy: 0, skippedCooldown: 0 };
  private readonly seconds: number;
  private readonly afterStuckMs: number;
  private readonly cooldownMs: number;
  private readonly captureDir: string | null;
  private readonly mode: 'auto' | TracerMode;
  private readonly log: (event: Record<string, unknown>) => void;
  private readonly lastStartMs = new Map<number, number>();
  private running: { pid: number; abort: AbortController; done: Promise<EscalationResult> } | null = null;
  private closed = false;

  constructor(o: EscalationOptions = {}) {
    this.seconds = o.seconds ?? 20;
    this.afterStuckMs = (o.afterStuckSeconds ?? 2) * 1000;
    this.cooldownMs = (o.cooldownSeconds ?? 600) * 1000;
    this.captureDir = o.captureDir ?? null;
    this.mode = o.mode ?? 'auto';
    this.log = o.log ?? (() => undefined);
    if (!(this.seconds > 0)) throw new RangeError(`Escalator: seconds must be > 0, got ${o.seconds}`);
    if (!(this.cooldownMs >= 0)) throw new RangeError(`Escalator: cooldownSeconds must be >= 0, got ${o.cooldownSeconds}`);
    if (this.captureDir !== null) fs.mkdirSync(this.captureDir, { recursive: true });
  }

  /** The VMM being traced now, if any. */
  get active(): number | null {
    return this.running?.pid ?? null;
  }

  /** Starts an escalation for the first suspect VMM that is not rate-limited. */
  consider(view: CounterView, nowMs = Date.now()): void {
    if (this.closed) return;
    this.forgetExited(view);
    for (const vm of view.vms) {
      if (!vm.suspect || vm.pid === this.running?.pid) continue;
      if (this.running) {
        this.stats.skippedBusy++;
        this.log({ event: 'skipped', pid: vm.pid, why: `escalation of pid ${this.running.pid} still running` });
        continue;
      }
      const last = this.lastStartMs.get(vm.pid);
      if (last !== undefined && nowMs - last < this.cooldownMs) {
        this.stats.skippedCooldown++;
        continue; // not logged every sample: once per cooldown would be noise
      }
      this.start(vm.pid, vm.name, nowMs);
    }
  }

  /** Verdicts of VMMs that have exited are dropped (a restarted VM is a new one). */
  private forgetExited(view: CounterView): void {
    const present = new Set(view.vms.map((vm) => vm.pid));
    for (const pid of [...this.results.keys(), ...this.lastStartMs.keys()]) {
      if (present.has(pid) || pid === this.running?.pid || processExists(pid)) continue;
      this.results.delete(pid);
      this.lastStartMs.delete(pid);
    }
  }

  /** Resolves when the running escalation (if any) has ended. */
  async idle(): Promise<void> {
    if (this.running) await this.running.done;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.running?.abort.abort();
    await this.idle();
  }

  private start(pid: number, vmName: string | null, nowMs: number): void {
    this.lastStartMs.set(pid, nowMs);
    this.stats.started++;
    const abort = new AbortController();
    const done = this.trace(pid, vmName, abort.signal).then(
      (r) => {
        this.stats.finished++;
        return r;
      },
      (e: Error) => {
        this.stats.failed++;
        const r: EscalationResult = { pid, vmName, startedAtMs: nowMs, endedAtMs: Date.now(), state: 'error', cause: null, confidence: null,
          decidedBy: null, tid: null, vcpu: null, gpa: null, seq: null, records: 0, dropped: 0, mode: null, capture: null, error: e.message.split('\n')[0] };
        return r;
      },
    ).then((r) => {
      this.results.set(pid, r);
      this.log({ event: r.state === 'error' ? 'failed' : 'finished', ...r });
      if (this.running?.pid === pid) this.running = null;
      return r;
    });
    this.running = { pid, abort, done };
  }

  private async trace(pid: number, vmName: string | null, signal: AbortSignal): Promise<EscalationResult> {
    const startedAtMs = Date.now();
    const tracer = await openTracer({ mode: this.mode, pid, signal });
    let writer: CaptureWriter | null = null;
    let capture: string | null = null;
    try {
      if (this.captureDir !== null) {
        capture = path.join(this.captureDir, `escalation-${pid}-${new Date(startedAtMs).toISOString().replace(/[:.]/g, '-')}.kvmf`);
        writer = CaptureWriter.create(capture, { chunkRecords: 256, flushMs: 1000, meta: { ...liveCaptureMeta(tracer, { pid }), escalation: true, vmNames: vmName ? { [String(pid)]: vmName } : {} } });
      }
      this.log({ event: 'started', pid, vmName, mode: tracer.mode, seconds: this.seconds, capture });
      const kernel = hostKernel();
      // ends at the deadline, on close(), or afterStuckMs after the first stuck verdict
      const enough = new AbortController();
      let enoughTimer: NodeJS.Timeout | null = null;
      const detector = new StaleFaultDetector({
        retPf: retPfTable(tracer.retPf, kernel), kernel,
        onVerdict: (v) => {
          if (v.state === 'stuck' && enoughTimer === null) enoughTimer = setTimeout(() => enough.abort(), this.afterStuckMs);
        },
      });
      const deadline = AbortSignal.any([signal, enough.signal, AbortSignal.timeout(this.seconds * 1000)]);
      let records = 0;
      try {
        for await (const batch of tracer.events({ signal: deadline })) {
          records += batch.length;
          writer?.write(batch);
          detector.push(batch);
        }
      } finally {
        if (enoughTimer !== null) clearTimeout(enoughTimer);
      }
      const worst = detector.snapshot().sort((a, b) => (RANK[b.state] ?? 0) - (RANK[a.state] ?? 0) || b.attempts - a.attempts)[0];
      const vm = worst ? detector.forecast().find((f) => f.vmId === worst.vmId) : undefined;
      return {
        pid, vmName, startedAtMs, endedAtMs: Date.now(),
        state: worst?.state ?? 'no-faults', cause: worst?.cause ?? null, confidence: worst?.confidence ?? null,
        decidedBy: worst?.decidedBy ?? null, tid: worst?.tid ?? null, vcpu: worst?.vcpu ?? null, gpa: worst?.gpa ?? null,
        seq: vm?.seq ?? worst?.mmuSeqLast ?? null, records, dropped: tracer.stats().dropped, mode: tracer.mode, capture,
      };
    } finally {
      tracer.close();
      writer?.close();
    }
  }
}
