/**
 * The text formats `analyze` reads, told apart by their content: the first lines (up to 1 MiB)
 * are cleaned of mail damage (text.ts) and each format counts the lines it recognises; the
 * format with the most wins (ties: the order below).
 */
import { importMailBpftraceLog } from './bpftrace-mail';
import { bpftraceV2Score, createBpftraceV2Importer } from './bpftrace-v2';
import { createKvmStatImporter, kvmStatScore } from './kvmstat';
import { createPerfScriptImporter, perfScriptScore } from './perf';
import { headLines, TextImporter, TextImportOptions } from './text';
import { createTraceCmdImporter, traceCmdScore } from './tracecmd';

export type TextFormat = 'bpftrace' | 'bpftrace-v2' | 'trace-cmd' | 'perf-script' | 'kvm-counters';

export const TEXT_FORMAT_NAMES: Readonly<Record<TextFormat, string>> = {
  'bpftrace': 'bpftrace log (the incident\'s v3 script) or kvmfault trace text',
  'bpftrace-v2': 'bpftrace log (the incident\'s v2 "stuck" lines / uniq -c of per-violation lines)',
  'trace-cmd': 'trace-cmd report text (kvm/kvmmmu events)',
  'perf-script': 'perf script text (kvm/kvmmmu tracepoints)',
  'kvm-counters': 'KVM debugfs counter snapshots (pf_taken, pf_fixed, ...)',
};

/** The text format of an input's head (bytes or text), or null when none fits. */
export function detectTextFormat(head: string | Uint8Array): TextFormat | null {
  const lines = headLines(head);
  if (lines.length === 0) return null;
  const v3 = importMailBpftraceLog(typeof head === 'string' ? head.slice(0, 1 << 20) : head.subarray(0, 1 << 20), { maxReported: 0 });
  const scores: [TextFormat, number][] = [
    ['bpftrace', v3.records > 0 ? v3.lines - v3.skipped : 0],
    ['bpftrace-v2', bpftraceV2Score(lines)],
    ['trace-cmd', traceCmdScore(lines)],
    ['perf-script', perfScriptScore(lines)],
    ['kvm-counters', kvmStatScore(lines)],
  ];
  let best: [TextFormat, number] = ['bpftrace', 0];
  for (const s of scores) if (s[1] > best[1]) best = s;
  return best[1] > 0 ? best[0] : null;
}

/** An importer for one of the formats other than the v3 bpftrace log (bpftrace.ts has its own). */
export function createTextImporter(format: Exclude<TextFormat, 'bpftrace'>, options: TextImportOptions & { stuckAttempts?: number } = {}): TextImporter {
  switch (format) {
    case 'bpftrace-v2': return createBpftraceV2Importer(options);
    case 'trace-cmd': return createTraceCmdImporter(options);
    case 'perf-script': return createPerfScriptImporter(options);
    case 'kvm-counters': return createKvmStatImporter(options);
  }
}

export { importAll } from './text';
export type { CounterVm, EvidenceLines, TextImport, TextImporter, TextImportOptions } from './text';
