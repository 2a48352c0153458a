/**
 * KVM's own counters for every VM on the host, at no per-fault cost: the cheap first look.
 *
 * In the incident the first sign that worked was KVM's per-VM statistics: pf_taken climbing by
 * millions per second while pf_fixed stood still. Two sources, tried in this order:
 *  - 'bpf-iter': a BPF task_file iterator (native/bpf/kvmcounters.bpf.c) reads vcpu->stat of
 *    every vCPU fd on the host, per vCPU, plus the VM's mmu_invalidate_seq. Runs only when
 *    sampled (~0.4 ms per sample on our machines); works under integrity lockdown, where debugfs
 *    reads fail with EPERM, and needs CAP_BPF + CAP_PERFMON like the tracer.
 *  - 'debugfs': /sys/kernel/debug/kvm/<pid>-<fd>/<stat>, per VM only (KVM sums its vCPUs), no
 *    sequence; where debugfs is mounted and readable.
 *
 *   const source = openCounterSource();          // bpf-iter, else debugfs
 *   const watch = new CounterWatch();
 *   setInterval(() => { const view = watch.update(source.sample()); ... }, 5000);
 *
 * A vCPU is "suspect" when, over a sampling interval, KVM took at least `minAttempts` faults
 * for it and none of them ended fixed, emulated or spurious: every one was retried. That is the
 * stuck vCPU of the incident seen from counters alone; `kvmfault metrics --escalate` then traces
 * that VMM to name the cause.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SIGN_BIT_SEQ } from './kernels';
import { native } from './native';
import { vmName } from './procinfo';

/** KVM statistic names as the kernel spells them, in the iterator's record order (events.h). */
export const KVM_STATS = ['pf_taken', 'pf_fixed', 'pf_emulate', 'pf_spurious', 'pf_fast', 'pf_mmio_spte_created',
  'pf_guest', 'exits', 'io_exits', 'mmio_exits', 'halt_exits', 'insn_emulation'] as const;
export type KvmStatName = (typeof KVM_STATS)[number];

/** struct kvmfault_vcpu_counters (native/bpf/events.h); test 10 checks these against offsetof(). */
export const COUNTERS_SIZE = 136;
export const COUNTERS_OFFSETS = { pid: 0, fd: 4, vcpu_id: 8, tid: 12, vm_id: 16, mmu_seq: 24, in_progress: 32, stat: 40 } as const;

/** Outcomes that mean a fault made progress (pf_fast is a subset of pf_fixed). */
const PROGRESS: readonly KvmStatName[] = ['pf_fixed', 'pf_emulate', 'pf_spurious', 'pf_guest', 'pf_mmio_spte_created'];

export type CounterSourceKind = 'bpf-iter' | 'debugfs';

/** One vCPU (bpf-iter) or one whole VM (debugfs: vcpuId null) at one sample. */
export interface CounterSample {
  pid: number;
  /** the vCPU's fd (bpf-iter) or the VM's fd (debugfs) in the VMM process */
  fd: number;
  /** hashed struct kvm pointer (bpf-iter), or "<pid>-<fd>" (debugfs) */
  vmId: string;
  vcpuId: number | null;
  /** the vCPU thread, null before its first KVM_RUN or from debugfs */
  tid: number | null;
  /** the VM's mmu_invalidate_seq, null when this source cannot see it */
  mmuSeq: number | null;
  inProgress: number | null;
  /** null: this kernel has no such statistic */
  stats: Record<KvmStatName, number | null>;
}

export interface CounterSource {
  readonly kind: CounterSourceKind;
  /** Reads every VM's counters now. */
  sample(): CounterSample[];
  close(): void;
}

export class CounterSourceError extends Error {
  constructor(message: string, readonly code: string, readonly tried: string[] = []) {
    super(message);
    this.name = 'CounterSourceError';
  }
}

const UNKNOWN_U64 = 0xffffffffffffffffn;

/** Decodes the iterator's output: one struct kvmfault_vcpu_counters per vCPU fd. */
export function parseCounterRecords(buf: Uint8Array): CounterSample[] {
  const out: CounterSample[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u64 = (off: number): number | null => {
    const v = view.getBigUint64(off, true);
    return v === UNKNOWN_U64 ? null : Number(v);
  };
  for (let at = 0; at + COUNTERS_SIZE <= buf.byteLength; at += COUNTERS_SIZE) {
    const stats = {} as Record<KvmStatName, number | null>;
    KVM_STATS.forEach((name, i) => { stats[name] = u64(at + COUNTERS_OFFSETS.stat + 8 * i); });
    const inProgress = view.getBigInt64(at + COUNTERS_OFFSETS.in_progress, true);
    const tid = view.getUint32(at + COUNTERS_OFFSETS.tid, true);
    out.push({
      pid: view.getUint32(at + COUNTERS_OFFSETS.pid, true),
      fd: view.getUint32(at + COUNTERS_OFFSETS.fd, true),
      vmId: view.getBigUint64(at + COUNTERS_OFFSETS.vm_id, true).toString(16).padStart(16, '0'),
      vcpuId: view.getUint32(at + COUNTERS_OFFSETS.vcpu_id, true),
      tid: tid === 0 ? null : tid,
      mmuSeq: u64(at + COUNTERS_OFFSETS.mmu_seq),
      inProgress: inProgress < 0n ? null : Number(inProgress),
      stats,
    });
  }
  return out;
}

/** KVM names a VM's debugfs directory after the thread that created it: the process is its Tgid. */
function tgidOf(tid: number): number {
  try {
    const m = /^Tgid:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${tid}/status`, 'utf8'));
    return m ? Number(m[1]) : tid;
  } catch {
    return tid; // the thread is gone: keep what the directory says
  }
}

/** The BPF iterator source (throws CounterSourceError when it cannot load here). */
export function openBpfCounterSource(): CounterSource {
  let it: { sample(): Buffer; close(): void };
  try {
    it = new (native().KvmCounters)();
  } catch (e) {
    const err = e as Error & { code?: string };
    throw new CounterSourceError(err.message, err.code ?? 'LOAD_FAILED');
  }
  return { kind: 'bpf-iter', sample: () => parseCounterRecords(it.sample()), close: () => it.close() };
}

/** KVM's debugfs directory: one <pid>-<fd> directory per VM. */
export const KVM_DEBUGFS = '/sys/kernel/debug/kvm';

/**
 * The debugfs source: VM totals from /sys/kernel/debug/kvm/<pid>-<fd>/. Throws when debugfs is
 * not mounted, or when a VM's files are there but cannot be read (EPERM: integrity lockdown).
 */
export function openDebugfsCounterSource(dir = KVM_DEBUGFS): CounterSource {
  const readVms = (): CounterSample[] => {
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch (e) {
      throw new CounterSourceError(`cannot list ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} ` +
        '(debugfs not mounted? mount -t debugfs none /sys/kernel/debug)', 'NO_DEBUGFS');
    }
    const out: CounterSample[] = [];
    for (const name of entries) {
      const m = /^(\d+)-(\d+)$/.exec(name);
      if (!m) continue;
      const stats = {} as Record<KvmStatName, number | null>;
      for (const stat of KVM_STATS) {
        try {
          stats[stat] = Number(fs.readFileSync(path.join(dir, name, stat), 'utf8').trim());
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          // no such statistic on this kernel, or the VM went away meanwhile
          if (code === 'ENOENT') { stats[stat] = null; continue; }
          throw new CounterSourceError(`cannot read ${path.join(dir, name, stat)}: ${code} ` +
            '(integrity lockdown forbids debugfs reads: use the bpf-iter source)', 'DEBUGFS_EPERM');
        }
      }
      out.push({ pid: tgidOf(Number(m[1])), fd: Number(m[2]), vmId: name, vcpuId: null, tid: null, mmuSeq: null, inProgress: null, stats });
    }
    return out;
  };
  readVms(); // fail now, not at the first sample
  return { kind: 'debugfs', sample: readVms, close: () => undefined };
}

/** bpf-iter, else debugfs; the error says why each failed. */
export function openCounterSource(prefer?: CounterSourceKind): CounterSource {
  const tried: string[] = [];
  for (const kind of prefer ? [prefer] : (['bpf-iter', 'debugfs'] as const)) {
    try {
      return kind === 'bpf-iter' ? openBpfCounterSource() : openDebugfsCounterSource();
    } catch (e) {
      if (!(e instanceof CounterSourceError)) throw e;
      tried.push(`${kind}: ${e.message}`);
      if (prefer) throw new CounterSourceError(e.message, e.code, tried);
    }
  }
  throw new CounterSourceError(`no source of KVM counters works here: ${tried.join('; ')}`, 'NO_SOURCE', tried);
}

// ---- rates and the suspect state ---------------------------------------------------------------

export interface CounterWatchOptions {
  /** faults KVM must take in one interval, all retried, before a vCPU is suspect (default 1000) */
  minAttempts?: number;
}

export interface VcpuCounterView extends CounterSample {
  /** per second over the last interval (null: first sample, or the statistic is missing) */
  rates: Record<KvmStatName, number | null>;
  /** faults taken in the last interval that ended in no outcome (retried) */
  retriedInInterval: number | null;
  /** the same per second */
  retriedPerSec: number | null;
  suspect: boolean;
  /** when the vCPU turned suspect (ms since the epoch), null when not suspect */
  suspectSinceMs: number | null;
}

export interface VmCounterView {
  pid: number;
  vmId: string;
  /** the VMM's -name (QEMU, libvirt), null when it has none */
  name: string | null;
  vcpus: VcpuCounterView[];
  mmuSeq: number | null;
  /** sequence increments (invalidations) per second over the last interval */
  seqRatePerSec: number | null;
  /** seconds until mmu_invalidate_seq reaches 0x80000000 at that rate; 0 once past */
  secondsToSignBit: number | null;
  suspect: boolean;
  suspectSinceMs: number | null;
}

export interface CounterView {
  atMs: number;
  intervalMs: number | null;
  vms: VmCounterView[];
  suspectVms: number;
}

interface Prev {
  atMs: number;
  stats: Record<KvmStatName, number | null>;
  mmuSeq: number | null;
  suspectSinceMs: number | null;
}

/** Turns successive samples into rates and suspect states (state is kept per vCPU between updates). */
export class CounterWatch {
  private readonly minAttempts: number;
  private prev = new Map<string, Prev>();
  private lastAtMs: number | null = null;

  constructor(options: CounterWatchOptions = {}) {
    this.minAttempts = options.minAttempts ?? 1000;
    if (!(Number.isFinite(this.minAttempts) && this.minAttempts >= 1)) {
      throw new RangeError(`CounterWatch: minAttempts must be >= 1, got ${options.minAttempts}`);
    }
  }

  update(samples: CounterSample[], atMs = Date.now()): CounterView {
    const next = new Map<string, Prev>();
    const byVm = new Map<string, VmCounterView>();
    for (const s of samples) {
      const key = `${s.pid}/${s.vmId}/${s.vcpuId ?? 'vm'}/${s.fd}`;
      const p = this.prev.get(key);
      const dt = p ? (atMs - p.atMs) / 1000 : 0;
      const rates = {} as Record<KvmStatName, number | null>;
      for (const name of KVM_STATS) {
        const now = s.stats[name], before = p?.stats[name] ?? null;
        rates[name] = now !== null && before !== null && dt > 0 && now >= before ? (now - before) / dt : null;
      }
      let retried: number | null = null;
      let suspect = false;
      const taken = p && s.stats.pf_taken !== null && p.stats.pf_taken !== null ? s.stats.pf_taken - p.stats.pf_taken : null;
      if (taken !== null && taken >= 0) {
        let progress = 0;
        for (const name of PROGRESS) {
          const now = s.stats[name], before = p!.stats[name];
          if (now !== null && before !== null) progress += now - before;
        }
        retried = Math.max(0, taken - progress);
        suspect = taken >= this.minAttempts && progress === 0;
      }
      const suspectSinceMs = suspect ? (p?.suspectSinceMs ?? p?.atMs ?? atMs) : null;
      next.set(key, { atMs, stats: s.stats, mmuSeq: s.mmuSeq, suspectSinceMs });
      const vcpu: VcpuCounterView = { ...s, rates, retriedInInterval: retried, retriedPerSec: retried !== null && dt > 0 ? retried / dt : null, suspect, suspectSinceMs };

      const vmKey = `${s.pid}/${s.vmId}`;
      let vm = byVm.get(vmKey);
      if (!vm) {
        let seqRate: number | null = null;
        if (p && s.mmuSeq !== null && p.mmuSeq !== null && dt > 0 && s.mmuSeq >= p.mmuSeq) seqRate = (s.mmuSeq - p.mmuSeq) / dt;
        let secondsToSignBit: number | null = null;
        if (s.mmuSeq !== null && s.mmuSeq >= SIGN_BIT_SEQ) secondsToSignBit = 0;
        else if (s.mmuSeq !== null && seqRate !== null && seqRate > 0) secondsToSignBit = (SIGN_BIT_SEQ - s.mmuSeq) / seqRate;
        vm = { pid: s.pid, vmId: s.vmId, name: vmName(s.pid), vcpus: [], mmuSeq: s.mmuSeq, seqRatePerSec: seqRate,
          secondsToSignBit, suspect: false, suspectSinceMs: null };
        byVm.set(vmKey, vm);
      }
      vm.vcpus.push(vcpu);
      if (suspect) {
        vm.suspect = true;
        vm.suspectSinceMs = vm.suspectSinceMs === null ? suspectSinceMs : Math.min(vm.suspectSinceMs, suspectSinceMs!);
      }
    }
    const intervalMs = this.lastAtMs === null ? null : atMs - this.lastAtMs;
    this.prev = next; // vCPUs that went away are forgotten
    this.lastAtMs = atMs;
    const vms = [...byVm.values()].sort((a, b) => a.pid - b.pid || a.vmId.localeCompare(b.vmId));
    for (const vm of vms) vm.vcpus.sort((a, b) => (a.vcpuId ?? -1) - (b.vcpuId ?? -1));
    return { atMs, intervalMs, vms, suspectVms: vms.filter((v) => v.suspect).length };
  }
}
