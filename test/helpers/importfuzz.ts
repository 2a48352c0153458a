/**
 * Fuzzing the text importers (test/57.import.fuzz.test.ts runs a bounded number of cases,
 * bench/import-fuzz.ts a million or more): valid inputs (the fixtures, clean and mail-damaged)
 * cut into small excerpts and mutated the ways mail and terminals damage text, pushed in random
 * pieces (splitting lines, \r\n pairs and UTF-8 characters). Importers must never throw on
 * content, never hang (parsing is linear in the input), and produce well-formed records.
 */
import { readFileSync } from 'node:fs';
import { createBpftraceV2Importer } from '../../lib/import/bpftrace-v2';
import { createKvmStatImporter } from '../../lib/import/kvmstat';
import { createPerfScriptImporter } from '../../lib/import/perf';
import { TextImport, TextImporter } from '../../lib/import/text';
import { createTraceCmdImporter } from '../../lib/import/tracecmd';
import { Kind } from '../../lib/record';
import { fixturePath } from './scenarios';

export interface FuzzTarget {
  name: string;
  make: () => TextImporter;
  /** valid inputs, as lines of bytes */
  seeds: Buffer[][];
}

function lines(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (let i = 0; i <= b.length; i++) {
    if (i === b.length || b[i] === 0x0a) {
      if (i > at) out.push(b.subarray(at, i));
      at = i + 1;
    }
  }
  return out;
}

export function fuzzTargets(): FuzzTarget[] {
  const fx = (n: string): Buffer[] => lines(readFileSync(fixturePath(n)));
  return [
    { name: 'trace-cmd', make: () => createTraceCmdImporter({ maxReported: 3 }), seeds: [fx('tracecmd-stuck-excerpt.txt'), fx('tracecmd-stuck-excerpt.mail.txt')] },
    { name: 'perf-script', make: () => createPerfScriptImporter({ maxReported: 3 }), seeds: [fx('perf-stuck-excerpt.txt'), fx('perf-stuck-excerpt.mail.txt')] },
    { name: 'bpftrace-v2', make: () => createBpftraceV2Importer({ maxReported: 3 }),
      seeds: [fx('bpftrace-v2-stuck.log'), fx('bpftrace-v2-stuck.mail.log'), fx('bpftrace-uniq-c.txt'), fx('bpftrace-uniq-c.mail.txt'), fx('bpftrace-uniq-c-vcpu-only.txt')] },
    { name: 'kvm-counters', make: () => createKvmStatImporter({ maxReported: 3 }), seeds: [fx('kvm-counters.txt'), fx('kvm-counters.mail.txt')] },
  ];
}

const NASTY = [
  ' ', '\t', '\r', '\n', '\r\n', '> ', '>> ', '>\t', '\xa0', '\ufffd', '...', '-', '/', ':', '[', ']', '(', ')', '=', ',', '0x',
  '99999999999999999999', '-1', 'ffffffffffffffff', 'kvm_exit:', 'kvm_page_fault:', 'vcpu=', '==> pf_taken <==', '@x[a b]: 1',
  'Lost 5 events', 'stuck @ rip ', ' (123 hits)', 'CPU 1/KVM-4242 [000] 1.000001: ', '\u202e', '\x00', '\x1b[31m',
];

/** One mutated excerpt of a seed. */
export function fuzzInput(t: FuzzTarget, rnd: () => number): Buffer {
  const seed = t.seeds[Math.floor(rnd() * t.seeds.length)];
  const n = 1 + Math.floor(rnd() * 6);
  const at = Math.floor(rnd() * Math.max(1, seed.length - n));
  const parts: Buffer[] = [];
  for (let i = at; i < Math.min(seed.length, at + n); i++) parts.push(seed[i], Buffer.from(rnd() < 0.1 ? '\r\n' : '\n'));
  let b = Buffer.concat(parts);
  const muts = Math.floor(rnd() * 5);
  for (let k = 0; k < muts && b.length > 0; k++) {
    const p = Math.floor(rnd() * b.length);
    switch (Math.floor(rnd() * 9)) {
      case 0: // flip a byte
        b = Buffer.from(b);
        b[p] = Math.floor(rnd() * 256);
        break;
      case 1: { // insert a nasty token
        const s = Buffer.from(NASTY[Math.floor(rnd() * NASTY.length)], rnd() < 0.5 ? 'utf8' : 'latin1');
        b = Buffer.concat([b.subarray(0, p), s, b.subarray(p)]);
        break;
      }
      case 2: { // delete a range
        const q = Math.min(b.length, p + 1 + Math.floor(rnd() * 40));
        b = Buffer.concat([b.subarray(0, p), b.subarray(q)]);
        break;
      }
      case 3: { // duplicate a range
        const q = Math.min(b.length, p + 1 + Math.floor(rnd() * 80));
        b = Buffer.concat([b.subarray(0, q), b.subarray(p, q), b.subarray(q)]);
        break;
      }
      case 4: // truncate
        b = b.subarray(0, p);
        break;
      case 5: { // a digit run made huge
        const s = Buffer.from('9'.repeat(1 + Math.floor(rnd() * 40)));
        b = Buffer.concat([b.subarray(0, p), s, b.subarray(p)]);
        break;
      }
      case 6: { // a segment repeated into a long line (up to ~20 KiB: over and under the line limit)
        const q = Math.min(b.length, p + 1 + Math.floor(rnd() * 12));
        const seg = b.subarray(p, q);
        const times = Math.floor(rnd() * (20000 / Math.max(1, seg.length)));
        b = Buffer.concat([b.subarray(0, q), Buffer.alloc(seg.length * times).fill(seg), b.subarray(q)]);
        break;
      }
      case 7: { // a line end inserted (a wrap), with or without the blank
        b = Buffer.concat([b.subarray(0, p), Buffer.from(rnd() < 0.5 ? '\n> ' : ' \n'), b.subarray(p)]);
        break;
      }
      default: { // blanks as NBSP bytes
        b = Buffer.from(b);
        for (let i = 0; i < b.length; i++) if (b[i] === 0x20 && rnd() < 0.2) b[i] = 0xa0;
      }
    }
  }
  return b;
}

/** Runs one case: the input pushed in random pieces (as bytes, or sometimes as text). */
export function fuzzRun(t: FuzzTarget, input: Buffer, rnd: () => number): TextImport {
  const imp = t.make();
  if (rnd() < 0.2) {
    imp.push(input.toString('utf8'));
  } else {
    let at = 0;
    while (at < input.length) {
      const n = 1 + Math.floor(rnd() * (rnd() < 0.5 ? 8 : 400));
      imp.push(input.subarray(at, at + n));
      at += n;
    }
  }
  return imp.end();
}

/** What is wrong with an import's result, or null. */
export function fuzzCheck(r: TextImport): string | null {
  const b = r.batch;
  if (r.records !== b.length) return `records ${r.records} but the batch has ${b.length}`;
  for (let i = 0; i < b.length; i++) {
    const k = b.kind(i);
    if (k < Kind.FAULT || k > Kind.EXIT) return `record ${i}: kind ${k}`;
    const rep = b.repeat(i);
    if (!(rep >= 1 && rep <= 0xfffffffe)) return `record ${i}: repeat ${rep}`;
    if (!Number.isFinite(b.tsNs(i)) && b.tsNs(i) !== -1) return `record ${i}: ts`;
  }
  if (r.skippedLines.length > Math.min(3, r.skipped)) return 'more skipped lines reported than skipped';
  for (const e of r.evidence.values()) if (!(e.first >= 1 && e.first <= e.last && e.count >= 1)) return 'evidence lines out of order';
  for (const vm of r.counters ?? []) {
    if (!Number.isFinite(vm.attempts) || vm.attempts < 0) return `counter vm ${vm.name}: attempts ${vm.attempts}`;
    for (const c of Object.values(vm.counters)) if (!Number.isFinite(c.delta)) return `counter vm ${vm.name}: delta`;
  }
  return null;
}
