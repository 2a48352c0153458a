/**
 * Names a person knows a VM and a vCPU by, read from /proc: the VMM's `-name` (QEMU: `-name
 * web1` or `-name guest=web1,debug-threads=on`, libvirt passes the latter) and the vCPU
 * thread's name (QEMU names them "CPU 0/KVM"). Cached per pid/tid: looked up when a table is
 * drawn, not per record. A pid gone or unreadable gives null, never an error. Both are another
 * process's text and go to a terminal: control characters come back escaped.
 */
import { readFileSync } from 'node:fs';
import { escapeControl } from './escape';

const vmNames = new Map<number, string | null>();
const threadNames = new Map<number, string | null>();

/** The VM name from a VMM command line (argv), or null. */
export function vmNameFromArgv(argv: readonly string[]): string | null {
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-name' && argv[i] !== '--name') continue;
    const v = argv[i + 1];
    // QEMU's option syntax: "guest=NAME,process=...,debug-threads=on" or a bare "NAME[,...]"; ",," escapes a comma
    const parts = v.replace(/,,/g, '\0').split(',').map((p) => p.replace(/\0/g, ','));
    const guest = parts.find((p) => p.startsWith('guest='));
    const name = guest ? guest.slice(6) : parts[0].includes('=') ? '' : parts[0];
    return name ? escapeControl(name) : null;
  }
  return null;
}

export function vmName(pid: number): string | null {
  let n = vmNames.get(pid);
  if (n === undefined) {
    try {
      n = vmNameFromArgv(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0'));
    } catch {
      n = null;
    }
    vmNames.set(pid, n);
  }
  return n;
}

export function threadName(pid: number, tid: number): string | null {
  let n = threadNames.get(tid);
  if (n === undefined) {
    try {
      n = escapeControl(readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()) || null;
    } catch {
      n = null;
    }
    // a thread may be renamed after it starts (QEMU names its vCPU threads at creation): cache only names
    if (n !== null) threadNames.set(tid, n);
  }
  return n;
}
