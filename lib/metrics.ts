/**
 * Prometheus metrics of a live detector (prom-client, a private registry): faults and retries
 * per VM and vCPU, stuck vCPUs, the invalidation sequence and time left to 0x80000000 per VM,
 * dropped records, and probe cost when kernel.bpf_stats_enabled is on.
 *
 *   const m = new FaultMetrics({ detector, tracerStats: () => tracer.stats(), kernel });
 *   res.end(await m.registry.metrics());
 *
 * Values are read from the detector at scrape time (collect callbacks): nothing runs per record.
 * Per-vCPU counters are the detector's running totals: a vCPU evicted as idle and seen again
 * starts from 0, which Prometheus' rate() treats as a counter reset.
 */
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import type { StaleFaultDetector } from './detector';
import type { KernelInfo } from './kernels';
import type { TracerStats } from './tracer';
import { CounterSourceKind, CounterView, KVM_STATS, VcpuCounterView, VmCounterView } from './counters';
import type { Escalator } from './escalate';
import type { MemslotMatchStats, SourceCount, VmSources } from './sources';

export interface FaultMetricsOptions {
  detector: StaleFaultDetector;
  tracerStats: () => TracerStats;
  kernel: Pick<KernelInfo, 'release' | 'affected'> & Partial<Pick<KernelInfo, 'decidedBy'>>;
  mode: string;
  /** records pushed into the detector so far */
  records?: () => number;
  /** invalidations per VM and source (lib/sources.ts), when the tracer feeds an InvalidationSources */
  sources?: () => VmSources[];
  /** invalidations of VMM memory that is no VM's guest memory, by source (InvalidationSources.outsideGuestMemory) */
  outsideGuestMemory?: () => SourceCount[];
  /** how invalidations fared against the VMs' memslots (InvalidationSources.matchStats) */
  memslotMatch?: () => MemslotMatchStats;
}

const VCPU_LABELS = ['vm', 'pid', 'tid', 'vcpu'] as const;
const VM_LABELS = ['vm', 'pid'] as const;

/** read() at most once per millisecond, so the collect callbacks of one scrape share one result */
function perScrape<T>(read: () => T): () => T {
  let value: T | undefined;
  let at = -1;
  return () => {
    const now = Date.now();
    if (now !== at || value === undefined) {
      value = read();
      at = now;
    }
    return value;
  };
}

/**
 * The HTTP handler of the exporter: GET or HEAD on /metrics (or /), any query string ignored
 * (?x=1 from a scraper or a cache buster); HEAD answers with the headers only. Other paths:
 * 404; other methods: 405 with Allow.
 */
export function metricsRequestListener(registry: Registry): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const url = req.url ?? '/';
    const end = url.search(/[?#]/);
    const pathname = end < 0 ? url : url.slice(0, end);
    if (pathname !== '/metrics' && pathname !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('kvmfault: see /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' }).end('kvmfault: GET or HEAD /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': registry.contentType, 'content-length': Buffer.byteLength(text) });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`kvmfault: ${e.message}\n`),
    );
  };
}

/**
 * The exporter's HTTP server: metricsRequestListener with limits, so no client can hold more
 * than a bounded share of it. A client that sends its headers slowly is cut after 10 s (Node's
 * default is 60), a whole request after 30 s; at most 256 connections at once (Prometheus opens
 * one per target); a request line or headers over 16 KiB get 431 (Node's maxHeaderSize).
 */
export function createMetricsServer(registry: Registry): Server {
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, metricsRequestListener(registry));
  server.maxConnections = 256;
  return server;
}

/** One VM's invalidation sequence as both exporters see it. */
interface VmSequence {
  vm: string;
  pid: number;
  seq: number | null;
  ratePerSec: number | null;
  secondsToSignBit: number | null;
}

/** The per-VM sequence gauges, the same names in both modes (the alert rules use them). */
function vmSequenceGauges(r: Registry[], read: () => VmSequence[]): void {
  new Gauge({ name: 'kvmfault_vm_mmu_invalidate_seq', help: "the VM's mmu_invalidate_seq (latest seen)", labelNames: VM_LABELS, registers: r,
    collect() {
      this.reset();
      for (const vm of read()) if (vm.seq !== null) this.set({ vm: vm.vm, pid: String(vm.pid) }, vm.seq);
    } });
  new Gauge({ name: 'kvmfault_vm_invalidation_rate', help: 'sequence increments (invalidations) per second, recent window', labelNames: VM_LABELS, registers: r,
    collect() {
      this.reset();
      for (const vm of read()) if (vm.ratePerSec !== null) this.set({ vm: vm.vm, pid: String(vm.pid) }, vm.ratePerSec);
    } });
  new Gauge({ name: 'kvmfault_vm_seconds_to_sign_bit', help: 'seconds until the sequence reaches 0x80000000 at the current rate (0: already crossed; absent: unknown)', labelNames: VM_LABELS, registers: r,
    collect() {
      this.reset();
      for (const vm of read()) if (vm.secondsToSignBit !== null) this.set({ vm: vm.vm, pid: String(vm.pid) }, vm.secondsToSignBit);
    } });
}

function kernelGauge(r: Registry[], kernel: FaultMetricsOptions['kernel']): void {
  new Gauge({ name: 'kvmfault_kernel_affected', help: 'the running kernel has the is_page_fault_stale sign-extension bug: 1 yes, 0 no, -1 unknown', labelNames: ['release', 'decided_by'], registers: r,
    collect() {
      this.set({ release: kernel.release, decided_by: kernel.decidedBy ?? 'none' }, kernel.affected === true ? 1 : kernel.affected === false ? 0 : -1);
    } });
}

export class FaultMetrics {
  readonly registry = new Registry();

  constructor(o: FaultMetricsOptions) {
    const r = [this.registry];
    const labelsOf = (v: { vmId: string; pid: number; tid: number; vcpu: number | null }) =>
      ({ vm: v.vmId, pid: String(v.pid), tid: String(v.tid), vcpu: v.vcpu === null ? '' : String(v.vcpu) });

    // the series are filled from one detector snapshot and one forecast per scrape
    const snapshot = perScrape(() => o.detector.snapshot());
    const forecast = perScrape(() => o.detector.forecast());

    const faults = new Counter({ name: 'kvmfault_vcpu_faults_total', help: 'fault attempts seen for the vCPU (retried ones included)', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.inc(labelsOf(v), v.totalAttempts);
      } });
    void faults;
    new Counter({ name: 'kvmfault_vcpu_mapped_total', help: 'faults of the vCPU that ended with a mapping installed', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.inc(labelsOf(v), v.mapped);
      } });
    new Counter({ name: 'kvmfault_vcpu_retries_total', help: 'fault attempts of the vCPU that did not end mapped (retried: stale, invalidation in progress, ...)', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.inc(labelsOf(v), Math.max(0, v.totalAttempts - v.mapped));
      } });
    new Gauge({ name: 'kvmfault_vcpu_state', help: 'verdict of the vCPU: 1 for its current state (progressing, retrying, stuck)', labelNames: [...VCPU_LABELS, 'state', 'cause'], registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.set({ ...labelsOf(v), state: v.state, cause: v.cause ?? '' }, 1);
      } });
    new Gauge({ name: 'kvmfault_vcpu_attempts_on_gpa', help: 'attempts on the current gpa since the vCPU last made progress', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.set(labelsOf(v), v.attempts);
      } });
    new Gauge({ name: 'kvmfault_vcpu_stuck_seconds', help: 'how long the vCPU has retried its current gpa (0 when progressing)', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const v of snapshot()) this.set(labelsOf(v), v.state === 'progressing' ? 0 : (v.lastSeen - v.firstSeen) / 1e9);
      } });
    new Gauge({ name: 'kvmfault_stuck_vcpus', help: 'vCPUs stuck now', registers: r,
      collect() {
        this.set(snapshot().filter((v) => v.state === 'stuck').length);
      } });

    // per VM
    vmSequenceGauges(r, () => forecast().map((vm) => ({ vm: vm.vmId, pid: vm.pid, seq: vm.seq === null ? null : parseInt(vm.seq, 16),
      ratePerSec: vm.ratePerSec, secondsToSignBit: vm.secondsToSignBit })));

    const sources = o.sources;
    if (sources) {
      new Counter({ name: 'kvmfault_invalidations_total', help: "mmu_notifier invalidations of the VM's memory by source (numa-balancing, ksm, thp-collapse, compaction, reclaim, migration, vmm-madvise, ...); vm=\"unknown\": kernel threads the tracepoint cannot tie to a VM, or a range inside several VMs' memslots", labelNames: ['vm', 'source'], registers: r,
        collect() {
          this.reset();
          for (const v of sources()) for (const s of v.sources) this.inc({ vm: v.vmId, source: s.source }, s.count);
        } });
    }
    const outside = o.outsideGuestMemory;
    if (outside) {
      new Counter({ name: 'kvmfault_invalidations_outside_guest_memory_total', help: "mmu_notifier invalidations of a VMM's memory that overlap no VM's memslots (the VMM's own heap madvise / munmap): counted for no VM", labelNames: ['source'], registers: r,
        collect() {
          this.reset();
          for (const s of outside()) this.inc({ source: s.source }, s.count);
        } });
    }
    const match = o.memslotMatch;
    if (match) {
      new Counter({ name: 'kvmfault_invalidations_memslot_match_total', help: "invalidations by how their hva range matched the VMs' memslots: matched (one VM), ambiguous (several VMs: vm=\"unknown\"), outside (no VM), unchecked (no memslot table: counted as the record's VM)", labelNames: ['result'], registers: r,
        collect() {
          this.reset();
          const m = match();
          for (const result of ['matched', 'ambiguous', 'outside', 'unchecked'] as const) this.inc({ result }, m[result]);
        } });
    }

    // the host and the tracer
    kernelGauge(r, o.kernel);
    new Gauge({ name: 'kvmfault_tracer_info', help: 'the attach mode in use', labelNames: ['mode'], registers: r,
      collect() {
        this.set({ mode: o.mode }, 1);
      } });
    new Counter({ name: 'kvmfault_records_total', help: 'records the BPF programs submitted to the ring', registers: r,
      collect() {
        this.reset();
        this.inc(o.tracerStats().submitted);
      } });
    new Counter({ name: 'kvmfault_dropped_records_total', help: 'records lost because the ring was full', registers: r,
      collect() {
        this.reset();
        this.inc(o.tracerStats().dropped);
      } });
    new Gauge({ name: 'kvmfault_bpf_stats_enabled', help: '1 when kernel.bpf_stats_enabled is on (probe cost metrics are counted)', registers: r,
      collect() {
        this.set(o.tracerStats().bpfStatsEnabled ? 1 : 0);
      } });
    new Counter({ name: 'kvmfault_probe_runs_total', help: 'runs of each BPF program (only while kernel.bpf_stats_enabled=1)', labelNames: ['program'], registers: r,
      collect() {
        this.reset();
        for (const p of o.tracerStats().programs) this.inc({ program: p.name }, p.runCount);
      } });
    new Counter({ name: 'kvmfault_probe_run_time_seconds_total', help: 'time spent in each BPF program (only while kernel.bpf_stats_enabled=1)', labelNames: ['program'], registers: r,
      collect() {
        this.reset();
        for (const p of o.tracerStats().programs) this.inc({ program: p.name }, p.runTimeNs / 1e9);
      } });
    new Gauge({ name: 'kvmfault_probe_cost_ns', help: 'average ns per run of each BPF program (run_time_ns / run_cnt)', labelNames: ['program'], registers: r,
      collect() {
        this.reset();
        for (const p of o.tracerStats().programs) if (p.runCount > 0) this.set({ program: p.name }, p.runTimeNs / p.runCount);
      } });
  }
}

export interface CounterMetricsOptions {
  /** the latest counter view (CounterWatch.update), null before the first sample */
  view: () => CounterView | null;
  source: CounterSourceKind;
  kernel: FaultMetricsOptions['kernel'];
  /** samples taken, and the CPU time of the last one (seconds) */
  sampling: () => { samples: number; lastSampleSeconds: number; errors: number };
  escalator?: Escalator | null;
}

/**
 * Prometheus metrics of KVM's own counters for every VM (`kvmfault metrics`, counters mode):
 * KVM's statistics per vCPU as counters, the suspect state per vCPU and VM, the sequence gauges
 * (from the iterator), and the escalations' verdicts when --escalate is on. Read from the latest
 * sample at scrape time: a scrape costs no kernel work.
 */
export class CounterMetrics {
  readonly registry = new Registry();

  constructor(o: CounterMetricsOptions) {
    const r = [this.registry];
    const vcpus = (): { vm: VmCounterView; v: VcpuCounterView }[] => (o.view()?.vms ?? []).flatMap((vm) => vm.vcpus.map((v) => ({ vm, v })));
    const vcpuLabels = (v: VcpuCounterView) => ({ vm: v.vmId, pid: String(v.pid), tid: v.tid === null ? '' : String(v.tid), vcpu: v.vcpuId === null ? '' : String(v.vcpuId) });
    for (const stat of KVM_STATS) {
      new Counter({ name: `kvmfault_kvm_${stat}_total`, help: `KVM's own ${stat} statistic of the vCPU (struct kvm_vcpu_stat; per VM from debugfs)`, labelNames: VCPU_LABELS, registers: r,
        collect() {
          this.reset();
          for (const { v } of vcpus()) if (v.stats[stat] !== null) this.inc(vcpuLabels(v), v.stats[stat]!);
        } });
    }
    new Gauge({ name: 'kvmfault_vcpu_suspect', help: 'KVM took faults for the vCPU in the last interval and none was fixed, emulated or spurious (1), else 0', labelNames: VCPU_LABELS, registers: r,
      collect() {
        this.reset();
        for (const { v } of vcpus()) this.set(vcpuLabels(v), v.suspect ? 1 : 0);
      } });
    new Gauge({ name: 'kvmfault_vm_suspect', help: 'a vCPU of the VM is suspect (1), else 0', labelNames: [...VM_LABELS, 'name'], registers: r,
      collect() {
        this.reset();
        for (const vm of o.view()?.vms ?? []) this.set({ vm: vm.vmId, pid: String(vm.pid), name: vm.name ?? '' }, vm.suspect ? 1 : 0);
      } });
    new Gauge({ name: 'kvmfault_suspect_vms', help: 'VMs suspect now', registers: r,
      collect() {
        this.set(o.view()?.suspectVms ?? 0);
      } });
    vmSequenceGauges(r, () => (o.view()?.vms ?? []).map((vm) => ({ vm: vm.vmId, pid: vm.pid, seq: vm.mmuSeq, ratePerSec: vm.seqRatePerSec, secondsToSignBit: vm.secondsToSignBit })));
    kernelGauge(r, o.kernel);
    new Gauge({ name: 'kvmfault_counters_info', help: 'where the counters come from: bpf-iter (every vCPU, works under lockdown) or debugfs (per VM)', labelNames: ['source'], registers: r,
      collect() {
        this.set({ source: o.source }, 1);
      } });
    new Counter({ name: 'kvmfault_counters_samples_total', help: 'counter samples taken', registers: r,
      collect() {
        this.reset();
        this.inc(o.sampling().samples);
      } });
    new Counter({ name: 'kvmfault_counters_sample_errors_total', help: 'counter samples that failed (each said on stderr)', registers: r,
      collect() {
        this.reset();
        this.inc(o.sampling().errors);
      } });
    new Gauge({ name: 'kvmfault_counters_sample_seconds', help: 'time the last sample took (the whole cost of counters mode per interval)', registers: r,
      collect() {
        this.set(o.sampling().lastSampleSeconds);
      } });
    const esc = o.escalator;
    if (!esc) return;
    new Counter({ name: 'kvmfault_escalations_total', help: 'escalations: the tracer attached to a suspect VMM for a bounded time', labelNames: ['result'], registers: r,
      collect() {
        this.reset();
        this.inc({ result: 'started' }, esc.stats.started);
        this.inc({ result: 'finished' }, esc.stats.finished);
        this.inc({ result: 'failed' }, esc.stats.failed);
        this.inc({ result: 'skipped_busy' }, esc.stats.skippedBusy);
        this.inc({ result: 'skipped_cooldown' }, esc.stats.skippedCooldown);
      } });
    new Gauge({ name: 'kvmfault_escalation_active', help: 'pid of the VMM being traced now (absent when none)', registers: r,
      collect() {
        this.reset();
        if (esc.active !== null) this.set(esc.active);
      } });
    new Gauge({ name: 'kvmfault_escalation_verdict', help: "the last escalation's verdict per VMM (its worst vCPU): 1, labelled with state, cause, gpa and the VM's sequence", labelNames: ['pid', 'name', 'state', 'cause', 'decided_by', 'tid', 'vcpu', 'gpa', 'seq'], registers: r,
      collect() {
        this.reset();
        for (const res of esc.results.values()) {
          this.set({ pid: String(res.pid), name: res.vmName ?? '', state: res.state, cause: res.cause ?? '', decided_by: res.decidedBy ?? '',
            tid: res.tid === null ? '' : String(res.tid), vcpu: res.vcpu === null ? '' : String(res.vcpu), gpa: res.gpa ?? '', seq: res.seq ?? '' }, 1);
        }
      } });
    new Gauge({ name: 'kvmfault_escalation_timestamp_seconds', help: 'when the last escalation of the VMM ended (unix time)', labelNames: ['pid'], registers: r,
      collect() {
        this.reset();
        for (const res of esc.results.values()) this.set({ pid: String(res.pid) }, res.endedAtMs / 1000);
      } });
  }
}
