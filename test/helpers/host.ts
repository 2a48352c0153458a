/**
 * What a test needs from the machine, checked in one place. A test that cannot run FAILS and
 * says exactly what is missing — with one exception: on a host without /dev/kvm (our CI machines
 * are themselves PVM guests, where KVM does not bind), `npm test` (scripts/test) sets
 * KVMFAULT_KVM_TESTS=qemu and runs every test that needs a guest again inside the QEMU kernel
 * matrix, where KVM exists (nested SVM). Only then is a KVM test marked pending here, and it
 * prints why and where it runs instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

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
