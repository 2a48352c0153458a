/**
 * What a test needs from the machine, checked in one place. A test that cannot run FAILS and
 * says exactly what is missing — with one exception: on a host without /dev/kvm (our CI machines
 * are themselves PVM guests, where KVM does not bind), `npm test` (scripts/test) sets
 * KVMFAULT_KVM_TESTS=qemu and runs every test that needs a guest again inside the QEMU kernel
 * matrix, where KVM exists (nested SVM). Only then is a KVM test marked pending here, and it
 * prints why and where it runs instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export function isRoot(): boolean {
  return typeof process.geteuid !== 'function' || process.geteuid() === 0;
}

/** Root (loading BPF programs, /dev/kvm is root-only on our machines). */
export function requireRoot(why = 'it loads BPF programs'): void {
  if (!isRoot()) throw new Error(`this test needs root (${why}): run \`npm test\` as root`);
}

/** Root and kernel BTF: enough to load and attach the tracer's programs. */
export function requireBpf(): void {
  requireRoot();
  if (!existsSync('/sys/kernel/btf/vmlinux')) {
    throw new Error('this test needs kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y); this kernel has none');
  }
}

/** Why this host has no /dev/kvm, as precisely as the kernel says. */
export function noKvmReason(): string {
  let why = 'no /dev/kvm on this host';
  const log = spawnSync('dmesg', [], { encoding: 'utf8', timeout: 5000 }).stdout ?? '';
  if (/kvm-pvm: this kernel is itself a kvm-pvm guest/.test(log)) why += ' (this kernel is itself a PVM guest: KVM does not bind)';
  else if (!existsSync('/sys/module/kvm')) why += ' (the kvm module is not loaded)';
  return why;
}

/** Set by scripts/test when the KVM tests also run inside the QEMU kernel matrix. */
export const kvmTestsInQemu = process.env.KVMFAULT_KVM_TESTS === 'qemu';

const announced = new Set<string>();

/**
 * Root, BTF and /dev/kvm: a real guest under the tracer. Pass the mocha context (`before(function
 * () { requireKvm(this); })`) so the deferred case can mark the suite pending.
 */
export function requireKvm(ctx?: Mocha.Context): void {
  requireRoot('/dev/kvm is root-only on the project machines, and it loads BPF programs');
  if (existsSync('/dev/kvm')) return;
  const why = noKvmReason();
  if (kvmTestsInQemu && ctx) {
    const title = ctx.currentTest?.parent?.fullTitle() ?? ctx.test?.parent?.fullTitle() ?? '';
    if (!announced.has(title)) {
      announced.add(title);
      console.log(`      [pending here: ${why}; "${title}" runs inside the QEMU kernel matrix instead]`);
    }
    ctx.skip();
  }
  throw new Error(`this test runs a real KVM guest and needs /dev/kvm: ${why}. Run it on a KVM host, or run \`npm test\`, which runs it inside the QEMU kernel matrix`);
}

// ---- what the tracer's attach modes can use on this kernel -------------------------------------

/** One attach mechanism on this kernel: usable or not, and the evidence either way. */
export interface Mechanism {
  available: boolean;
  /** what was looked at or tried, in words fit for a test title */
  evidence: string;
}

/** fentry is found out by trying it (nothing in sysfs says whether it will load). */
export interface FentryTrial extends Mechanism {
  /** the TracerError of the failed try: code, errno and first message line */
  error?: { code: string; errno?: number; message: string };
}

export interface TraceSupport {
  kprobes: Mechanism;
  fentry: FentryTrial;
  tracepoints: Mechanism;
  /** the mode openTracer({ mode: 'auto' }) must pick here: fentry > kprobe > tracepoint */
  autoMode: 'fentry' | 'kprobe' | 'tracepoint' | null;
}

/** kprobes: the kprobe PMU (perf_event_open) or tracefs' kprobe_events (the tracer uses either). */
export function detectKprobes(): Mechanism {
  const where = ['/sys/bus/event_source/devices/kprobe/type', '/sys/kernel/tracing/kprobe_events',
    '/sys/kernel/debug/tracing/kprobe_events'].filter((p) => existsSync(p));
  if (where.length > 0) return { available: true, evidence: `kprobes available (${where[0]})` };
  return { available: false, evidence: 'kprobes unavailable on this kernel (no kprobe PMU, no kprobe_events)' };
}

/** The KVM MMU tracepoints the tracer needs: in tracefs, or (tracefs not mounted) in kallsyms. */
export function detectKvmTracepoints(): Mechanism {
  const tp = 'kvmmmu/kvm_mmu_spte_requested';
  for (const root of ['/sys/kernel/tracing', '/sys/kernel/debug/tracing']) {
    if (existsSync(`${root}/events/${tp}`)) return { available: true, evidence: `KVM tracepoints present (${root}/events/${tp})` };
  }
  let kallsyms = '';
  try {
    kallsyms = readFileSync('/proc/kallsyms', 'latin1');
  } catch {
    /* unreadable: absent */
  }
  if (/ __tracepoint_kvm_mmu_spte_requested\b/.test(kallsyms)) {
    return { available: true, evidence: 'KVM tracepoints present (__tracepoint_kvm_mmu_spte_requested in kallsyms)' };
  }
  return { available: false, evidence: `KVM tracepoints absent (no ${tp} in tracefs or kallsyms: is kvm loaded?)` };
}

/**
 * fentry: tried for real, in a child process (synchronous, so test titles can say the outcome):
 * openTracer({ mode: 'fentry' }) and close. Needs root and BTF; without them it is not tried.
 */
export function tryFentry(): FentryTrial {
  if (!isRoot() || !existsSync('/sys/kernel/btf/vmlinux')) {
    return { available: false, evidence: 'fentry not tried (needs root and kernel BTF)' };
  }
  const lib = path.resolve(__dirname, '../../lib/tracer.js');
  const script = `require(${JSON.stringify(lib)}).openTracer({ mode: 'fentry' }).then(
    (t) => { t.close(); console.log(JSON.stringify({ ok: true })); },
    (e) => console.log(JSON.stringify({ ok: false, code: String(e.code), errno: e.errno, message: String(e.message).split('\\n')[0] })));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
  let out: { ok: boolean; code?: string; errno?: number; message?: string };
  try {
    out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '');
  } catch {
    return { available: false, evidence: `fentry trial crashed (exit ${r.status}, signal ${r.signal})`,
      error: { code: 'TRIAL_CRASHED', message: `${r.stdout}\n${r.stderr}`.trim() } };
  }
  if (out.ok) return { available: true, evidence: 'fentry works on this kernel (tried)' };
  const code = out.code ?? '?';
  const why = out.errno === 1 ? 'EPERM' : code;
  return { available: false, evidence: `fentry refused on this kernel (tried: ${why})`,
    error: { code, errno: out.errno, message: out.message ?? '' } };
}

let support: TraceSupport | null = null;

/** What this kernel offers each attach mode (computed once per process; fentry is tried). */
export function traceSupport(): TraceSupport {
  if (support) return support;
  const kprobes = detectKprobes();
  const tracepoints = detectKvmTracepoints();
  const fentry = tryFentry();
  const autoMode = fentry.available ? 'fentry' : kprobes.available ? 'kprobe' : tracepoints.available ? 'tracepoint' : null;
  support = { kprobes, fentry, tracepoints, autoMode };
  return support;
}

// ---- what a guest of the built-in workload costs, by host kind ----------------------------------

/**
 * KVM faults a fresh guest of the built-in workload takes outside its touched region: the code
 * page always; with two-dimensional paging (SVM with NPT, VMX with EPT) also the guest's own
 * page-table pages (PML4, PDPT and the PD of the first GiB: native/workload/vmm.c's layout),
 * which the CPU walks through NPT/EPT. Under PVM (shadow paging, or VMX/SVM with EPT/NPT off)
 * KVM reads the guest's tables itself: no fault for them. So: 1 on PVM, 4 on SVM/VMX.
 * Valid while the guest's memory ends within its first GiB (every test's region does).
 */
export function workloadSetupFaults(w: { host: string; hostDetail: string; guestMemoryBytes?: number }): number {
  if (w.guestMemoryBytes !== undefined && w.guestMemoryBytes > 1 << 30) {
    throw new Error(`workloadSetupFaults: guest memory ${w.guestMemoryBytes} bytes spans more than one PD (1 GiB)`);
  }
  if (w.host === 'pvm') return 1;
  if (w.host !== 'svm' && w.host !== 'vmx') throw new Error(`workloadSetupFaults: unknown host kind ${w.host} (${w.hostDetail})`);
  return /\b(NPT|EPT) off\b/.test(w.hostDetail) ? 1 : 4;
}

/**
 * Bounds (never sleeps) for waits on a condition: the QEMU kernel matrix runs the host suite
 * under TCG emulation (KVMFAULT_KERNEL_LINE is set there), where starting node alone takes
 * seconds, so every bound is 4x there. A bound only limits how long a failure takes to show.
 */
export const SLOW = process.env.KVMFAULT_KERNEL_LINE ? 4 : 1;
export const bound = (ms: number): number => ms * SLOW;

/** Waits until check() is true (polling), failing with what() after `ms` (scaled by SLOW). */
export async function waitFor(check: () => boolean, ms: number, what: () => string, everyMs = 50): Promise<void> {
  const until = Date.now() + bound(ms);
  while (!check()) {
    if (Date.now() > until) throw new Error(`not within ${bound(ms)} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
