/**
 * Shared by the 30.tracer.* tests: what a tracer test needs from the machine (fails, never
 * skips, saying exactly what is missing).
 */
import { existsSync } from 'node:fs';

/** The tracer needs root and kernel BTF. */
export function requireTracerHost(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('this test loads BPF programs and needs root (CAP_BPF + CAP_PERFMON): run `npm test` as root');
  }
  if (!existsSync('/sys/kernel/btf/vmlinux')) {
    throw new Error('this test needs kernel BTF at /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y); this kernel has none');
  }
}

/** ...and a guest needs /dev/kvm. */
export function requireGuestHost(): void {
  requireTracerHost();
  if (!existsSync('/dev/kvm')) throw new Error('this test runs a real KVM guest and needs /dev/kvm; this machine has none');
}
