/**
 * The probe catalogue: which kernel functions and tracepoints kvmfault attaches to, per attach
 * mode, how their names are found in /proc/kallsyms, and what to do when they cannot be used.
 * The tracer (lib/tracer.ts, which hands the lists and the resolved symbols to the addon),
 * doctor and the CLI all read it here, so they agree on what exists and what it is called.
 */
import { readFileSync } from 'node:fs';

export type TracerMode = 'tracepoint' | 'kprobe' | 'fentry';
/** what --mode and openTracer({ mode }) accept */
export const MODE_CHOICES = ['auto', 'tracepoint', 'kprobe', 'fentry'] as const;
export type ModeChoice = (typeof MODE_CHOICES)[number];
/** 'auto' tries these in order: the typed, cheapest probes first */
export const AUTO_ORDER: readonly TracerMode[] = ['fentry', 'kprobe', 'tracepoint'];

/** The fault-in function (vcpu, fault[, access]): the first of these that exists is probed (kprobe, fentry). */
export const FAULTIN_FUNCTIONS: readonly string[] = ['kvm_mmu_faultin_pfn', 'kvm_faultin_pfn'];
/** The fault handlers taking (vcpu, fault): every one that exists is probed (kprobe). */
export const HANDLER_FUNCTIONS: readonly string[] = ['kvm_tdp_page_fault', 'direct_page_fault', 'paging64_page_fault', 'paging32_page_fault'];
/** Probed only when no handler exists (before 6.14 its return value is coarse: tracer notes). */
export const FALLBACK_HANDLER = 'kvm_mmu_page_fault';
/** fentry/fexit program pairs (kvmfault.bpf.c) and their candidate targets, first found used. */
export const FENTRY_TARGETS: readonly { entry: string; exit: string; candidates: readonly string[] }[] = [
  { entry: 'fe_faultin', exit: 'fx_faultin', candidates: FAULTIN_FUNCTIONS },
  { entry: 'fe_fault_tdp', exit: 'fx_fault_tdp', candidates: ['kvm_tdp_page_fault'] },
  { entry: 'fe_fault_shadow', exit: 'fx_fault_shadow', candidates: ['paging64_page_fault'] },
];
/**
 * Where INVALIDATE_START comes from in kprobe / fentry mode (kp_/fe_notifier_start): it has the
 * struct kvm and the range's reason code (mmu_notifier_range.event), the kvm_unmap_hva_range
 * tracepoint has neither; the tracepoint stays where the notifier cannot be probed.
 */
export const NOTIFIER_START = 'kvm_mmu_notifier_invalidate_range_start';
/** Every function some mode may probe (what doctor looks up in kallsyms). */
export const PROBED_FUNCTIONS: readonly string[] = [...FAULTIN_FUNCTIONS, ...HANDLER_FUNCTIONS, FALLBACK_HANDLER, NOTIFIER_START];

/**
 * The tracepoints: program suffix (tb_<suffix> typed, rt_<suffix> raw, kvmfault.bpf.c), system,
 * name. `faultEntry`: a FAULT source, used only in tracepoint mode (the handler probes give
 * FAULT in the others), with its companions that tell a real fault's walk from the emulator's.
 */
export const TRACEPOINTS: readonly { program: string; system: string; name: string; faultEntry: boolean }[] = [
  { program: 'pagetable_walk', system: 'kvmmmu', name: 'kvm_mmu_pagetable_walk', faultEntry: true },
  { program: 'page_fault', system: 'kvm', name: 'kvm_page_fault', faultEntry: true },
  { program: 'spte_requested', system: 'kvmmmu', name: 'kvm_mmu_spte_requested', faultEntry: false },
  { program: 'unmap_hva_range', system: 'kvm', name: 'kvm_unmap_hva_range', faultEntry: false },
  { program: 'kvm_exit', system: 'kvm', name: 'kvm_exit', faultEntry: false },
  { program: 'emulate_insn', system: 'kvm', name: 'kvm_emulate_insn', faultEntry: true },
  { program: 'userspace_exit', system: 'kvm', name: 'kvm_userspace_exit', faultEntry: true },
];

/**
 * Text symbols of `want` in /proc/kallsyms text: base name -> the symbol to attach to. The
 * compiler may have renamed a function with a suffix (`direct_page_fault.isra.0`,
 * `.constprop.0`, `.part.0`): the base name is everything before the first '.', and
 * the plain name wins when both exist. Module symbols carry " [kvm]" after the name.
 */
export function parseKallsyms(text: string, want: Iterable<string>): Map<string, string> {
  const found = new Map<string, string>();
  const names = [...want].map(escapeRegExp);
  if (names.length === 0) return found;
  // one pass over the text (5 MB on a distro kernel): only the lines of wanted names match
  // "ffffffffc0a1b2c0 t direct_page_fault.isra.0\t[kvm]"
  const re = new RegExp(`^\\S+[ \\t]+[tTwW][ \\t]+((${names.join('|')})(?:\\.[^\\s]*)?)(?=\\s|$)`, 'gm');
  for (const m of text.matchAll(re)) {
    const name = m[1], base = m[2];
    if (/\.cold(?:\.\d+)?$/.test(name)) continue; // the split-off cold part of a function, not its entry
    if (!found.has(base) || name === base) found.set(base, name);
  }
  return found;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Whether `name` is a symbol of any type (variables too: kvm_running_vcpu) in /proc/kallsyms text. */
export function kallsymsHasSymbol(text: string, name: string): boolean {
  return new RegExp(`^\\S+[ \\t]+\\S[ \\t]+${escapeRegExp(name)}(?:\\s|$)`, 'm').test(text);
}

/** /proc/kallsyms (or root's copy), '' when unreadable. */
export function readKallsyms(root = '/'): string {
  try {
    return readFileSync(root === '/' ? '/proc/kallsyms' : `${root.replace(/\/$/, '')}/proc/kallsyms`, 'latin1');
  } catch {
    return '';
  }
}

/** One line each: what to do. Doctor's checks and the CLI's tracer errors use the same words. */
export const REMEDY = {
  privileges: 'run as root (sudo kvmfault ...) or grant CAP_BPF and CAP_PERFMON',
  capsDropped: 'this root process has CAP_BPF / CAP_PERFMON dropped: run kvmfault with them kept (no --cap-drop, CapabilityBoundingSet= including them)',
  btf: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y',
  moduleBtf: 'use a kernel with CONFIG_DEBUG_INFO_BTF_MODULES=y',
  loadKvm: 'modprobe kvm_intel (or kvm_amd)',
  kprobes: 'tracepoint mode is used instead (it sees less: no fault-in results); kprobes need CONFIG_KPROBES',
  mountTracefs: 'mount -t tracefs nodev /sys/kernel/tracing',
  otherMode: 'try another --mode (kvmfault doctor lists what exists here)',
  autoMode: 'try --mode auto, or run kvmfault doctor to see which modes work here',
  verifier: 'run kvmfault doctor; KVMFAULT_DEBUG=1 shows the verifier log',
  probePoints: 'run kvmfault doctor to see which probe points exist here',
} as const;

/** The remedy the CLI adds to a TracerError of this code. */
export const TRACER_ERROR_REMEDY: Partial<Record<string, string>> = {
  EPERM: REMEDY.privileges,
  NO_BTF: `this kernel has no /sys/kernel/btf/vmlinux: ${REMEDY.btf}`,
  NO_KVM: `KVM is not loaded: ${REMEDY.loadKvm}`,
  NO_KVM_PROBES: REMEDY.otherMode,
  MODE_UNAVAILABLE: REMEDY.autoMode,
  LOAD_FAILED: REMEDY.verifier,
  ATTACH_FAILED: REMEDY.probePoints,
};
