/**
 * Records as the text other tools print (for round trips and generated inputs): trace-cmd
 * report and perf script lines of the kvm / kvmmmu tracepoints, in the kernel's own
 * TP_printk formats (6.6+ kvm_page_fault / kvm_exit).
 */
import { EventBatch, Kind, UNKNOWN } from '../../lib/record';

const hex16 = (v: number | bigint): string => BigInt(v).toString(16).padStart(16, '0');
const hx = (v: number | bigint): string => BigInt(v).toString(16);

/** the event name and fields of record i, or null for a kind these tools have no event for */
export function kvmEventText(b: EventBatch, i: number): [string, string, string] | null {
  const vcpu = b.vcpuId(i) === UNKNOWN ? 0 : b.vcpuId(i);
  const rip = (BigInt(b.ripHi(i) >>> 0) << 32n) | BigInt(b.ripLo(i) >>> 0);
  switch (b.kind(i)) {
    case Kind.FAULT:
      return ['kvm', 'kvm_page_fault', `vcpu ${vcpu} rip 0x${hx(rip)} address 0x${hex16(b.gpa(i))} error_code 0x${hx(b.errorCode(i))}`];
    case Kind.EXIT:
      return ['kvm', 'kvm_exit', `vcpu ${vcpu} reason EPT_VIOLATION rip 0x${hx(rip)} info1 0x${hex16(0x683)} info2 0x${hex16(0)} intr_info 0x00000000 error_code 0x00000000`];
    case Kind.MAP:
      return ['kvmmmu', 'kvm_mmu_set_spte', `gfn ${hx(Math.floor(b.gpa(i) / 4096))} spte 6000001f3a00b77 (rwxu) level 1 at 10c4b3000`];
    case Kind.INVALIDATE_START:
      return ['kvm', 'kvm_unmap_hva_range', `mmu notifier unmap range: 0x${hex16(b.rangeStart(i))} -- 0x${hex16(b.rangeEnd(i))}`];
    default:
      return null;
  }
}

function seconds(tsNs: number): string {
  const us = Math.round(tsNs / 1000);
  return `${Math.floor(us / 1e6)}.${String(us % 1e6).padStart(6, '0')}`;
}

/** trace-cmd report text of a batch (QEMU's vCPU thread names, "CPU n/KVM") */
export function traceCmdText(b: EventBatch): string {
  const out: string[] = ['cpus=4'];
  for (let i = 0; i < b.length; i++) {
    const e = kvmEventText(b, i);
    if (!e) continue;
    const comm = `CPU ${b.vcpuId(i) === UNKNOWN ? 0 : b.vcpuId(i)}/KVM`;
    out.push(`${`${comm}-${b.tid(i)}`.padStart(22)} [${String(i % 4).padStart(3, '0')}] ${seconds(b.tsNs(i))}: ${(e[1] + ':').padEnd(22)}${e[2]}`);
  }
  return out.join('\n') + '\n';
}

/** perf script text of a batch (-F comm,pid,tid,cpu,time,event,trace) */
export function perfScriptText(b: EventBatch): string {
  const out: string[] = [];
  for (let i = 0; i < b.length; i++) {
    const e = kvmEventText(b, i);
    if (!e) continue;
    const comm = `CPU ${b.vcpuId(i) === UNKNOWN ? 0 : b.vcpuId(i)}/KVM`;
    out.push(`${comm.padStart(16)} ${b.pid(i)}/${b.tid(i)} [${String(i % 4).padStart(3, '0')}] ${seconds(b.tsNs(i))}: ${e[0]}:${e[1]}: ${e[2]}`);
  }
  return out.join('\n') + '\n';
}

/** A mail client's damage: quoting, wrapping at ~width (blank kept or dropped), odd blanks. */
export function mailDamage(text: string, rnd: () => number, width = 76): Buffer {
  const quotes = ['> ', '>> ', '> > ', '>\t'];
  const out: Buffer[] = [Buffer.from('On Mon, Mar 6, 2023 at 9:30 PM Some One <someone@example.org> wrote:\n')];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  lines.forEach((l, n) => {
    const q = quotes[Math.floor(n / 7) % quotes.length];
    let s = l;
    const parts: string[] = [];
    while (s.length > width) {
      const cut = s.lastIndexOf(' ', width);
      if (cut <= 0) break;
      parts.push(s.slice(0, cut + (rnd() < 0.5 ? 1 : 0)));
      s = s.slice(cut + 1);
    }
    parts.push(s);
    for (const p of parts) {
      const bytes: number[] = [];
      for (const c of Buffer.from(q + p)) {
        if (c === 0x20 && rnd() < 0.08) bytes.push(...(rnd() < 0.5 ? [0xa0] : [0xef, 0xbf, 0xbd]));
        else bytes.push(c);
      }
      out.push(Buffer.from(bytes), Buffer.from('\n'));
    }
    if (n === 3) out.push(Buffer.from('> ...\n'));
    if (n === 5) out.push(Buffer.from('> $ sudo trace-cmd report | grep kvm\n'));
  });
  out.push(Buffer.from('\nThanks, does this help?\n'));
  return Buffer.concat(out);
}
