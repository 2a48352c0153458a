import { existsSync } from 'node:fs';

/** Fails (never skips) a test that needs a real KVM guest where none can run, saying why. */
export function requireKvm(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('this test needs root: /dev/kvm is root-only on the project machines (run `npm test` as root)');
  }
  if (!existsSync('/dev/kvm')) throw new Error('this test needs /dev/kvm (a KVM host); this machine has none');
}
