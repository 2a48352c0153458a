/**
 * Offline analysis: a capture file or a bpftrace log in, one verdict per vCPU out.
 * The format is detected from the content (the capture magic, else the log's line shape).
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { CaptureDamage, CaptureError, CaptureMeta, CaptureReader, isCapture, openCapture } from './capture';
import { DetectorOptions, RET_PF_6_1, RET_PF_6_12, RetPfTable, StaleFaultDetector, Verdict, VmForecast, DetectorStats, formatDuration } from './detector';
import { createBpftraceImporter, DETECT_BYTES, looksLikeBpftraceLog, SkippedLine } from './import/bpftrace';
import { escapeControl } from './escape';
import { judgeKernel, KernelInfo, StaleCheckSignature } from './kernels';

function isStaleCheck(x: unknown): x is StaleCheckSignature {
  const o = x as StaleCheckSignature | null;
  return !!o && typeof o === 'object' && typeof o.found === 'boolean' && Array.isArray(o.params) &&
    o.params.every((p) => p && typeof p.type === 'string' && typeof p.size === 'number' && typeof p.signed === 'boolean');
}

export interface AnalyzeOptions {
  /** judge against this kernel release (uname -r of the traced host) instead of the capture's */
  kernel?: string;
  /** /proc/version text of that host, for distro ABI release names */
  procVersion?: string;
  /** detector thresholds and sizes (kernel and retPf are filled in from the input) */
  detector?: Omit<DetectorOptions, 'kernel' | 'onVerdict'>;
}

export interface AnalysisReport {
  path: string;
  format: 'capture' | 'bpftrace';
  bytes: number;
  kernel: KernelInfo | null;
  /** where the kernel came from */
  kernelSource: 'option' | 'capture' | 'trace text' | 'none';
  retPf: RetPfTable;
  records: number;
  /** final verdict per vCPU thread (also those evicted during the run), stuck first */
  vcpus: Verdict[];
  vms: VmForecast[];
  stuck: number;
  retrying: number;
  progressing: number;
  detector: DetectorStats;
  importer: { lines: number; records: number; ignored: number; skipped: number; skippedLines: SkippedLine[]; kvmfaultText: boolean } | null;
  /** version: the capture format; complete: the end chunk was read (version 2; null for version 1, which has none);
   *  gaps: places where records were lost (the detector counts no attempts across one) */
  capture: { meta: CaptureMeta; damage: CaptureDamage[]; version: number; complete: boolean | null; gaps: number; metaIntact: boolean } | null;
}

/** Thrown for input that cannot be analysed at all (missing file, unknown format, bad header). */
export class AnalyzeInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AnalyzeInputError';
  }
}

function retPfFor(kernel: KernelInfo | null): RetPfTable {
  const v = kernel?.version;
  if (v && (v.major > 6 || (v.major === 6 && v.minor >= 12))) return { ...RET_PF_6_12 };
  // 5.x (KERNELS.md: 5.10 and 5.15 have RETRY 0 / FIXED 3, no RET_PF_CONTINUE)
  if (v && v.major < 6) return { RETRY: 0, EMULATE: 1, INVALID: 2, FIXED: 3, SPURIOUS: 4 };
  return { ...RET_PF_6_1 };
}

/**
 * Pushes every record of a capture into the detector and returns how many there were. Only
 * verified records come out of the reader; where it lost some, the detector is told
 * (discontinuity()), so no run of attempts is counted across the gap: a stuck verdict rests on
 * records seen without a gap between them, never on damage. Damage ends up in reader.damage.
 */
export async function feedCapture(reader: CaptureReader, detector: StaleFaultDetector): Promise<number> {
  let records = 0;
  let gaps = reader.gaps;
  for await (const batch of reader.batches({ onDamage: 'report' })) {
    if (reader.gaps !== gaps) {
      gaps = reader.gaps;
      detector.discontinuity();
    }
    records += batch.length;
    detector.push(batch);
  }
  return records;
}

export async function analyzeFile(path: string, options: AnalyzeOptions = {}): Promise<AnalysisReport> {
  let stat;
  try {
    stat = await fsp.stat(path);
  } catch (e) {
    throw new AnalyzeInputError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!stat.isFile()) throw new AnalyzeInputError(`${path} is not a regular file`);
  // 4 KB: a capture whose first header block is damaged is still known by the copy after it
  const prefix = new Uint8Array(Math.min(4096, stat.size));
  const fh = await fsp.open(path, 'r');
  await fh.read(prefix, 0, prefix.length, 0).finally(() => fh.close());

  let kernel: KernelInfo | null = options.kernel ? judgeKernel(options.kernel, options.procVersion) : null;
  let kernelSource: AnalysisReport['kernelSource'] = kernel ? 'option' : 'none';
  const latest = new Map<number, Verdict>();
  const makeDetector = (retPf: RetPfTable): StaleFaultDetector =>
    new StaleFaultDetector({
      ...options.detector,
      retPf,
      kernel,
      onVerdict: (v) => latest.set(v.tid, v),
    });

  let detector: StaleFaultDetector;
  let retPf: RetPfTable;
  let importer: AnalysisReport['importer'] = null;
  let capture: AnalysisReport['capture'] = null;
  let records = 0;
  let format: AnalysisReport['format'];

  if (isCapture(prefix)) {
    format = 'capture';
    let reader;
    try {
      reader = await openCapture(path);
    } catch (e) {
      if (e instanceof CaptureError) throw new AnalyzeInputError(e.message);
      throw e;
    }
    const meta = reader.header.meta;
    if (!kernel && meta.hostKernel) {
      kernel = judgeKernel(meta.hostKernel, typeof meta.procVersion === 'string' ? meta.procVersion : undefined,
        isStaleCheck(meta.staleCheck) ? meta.staleCheck : null);
      kernelSource = 'capture';
    }
    retPf = meta.retPf && Number.isInteger(meta.retPf.RETRY) && Number.isInteger(meta.retPf.FIXED) && Number.isInteger(meta.retPf.SPURIOUS)
      ? (meta.retPf as unknown as RetPfTable)
      : retPfFor(kernel);
    detector = makeDetector(retPf);
    records = await feedCapture(reader, detector);
    capture = { meta, damage: reader.damage, version: reader.header.version, complete: reader.complete, gaps: reader.gaps, metaIntact: reader.header.metaIntact };
  } else {
    // detection on the first DETECT_BYTES, then the whole file streamed line by line: memory
    // stays bounded whatever the file's size (one string of it failed past ~512 MiB)
    const head = new Uint8Array(Math.min(DETECT_BYTES, stat.size));
    const hf = await fsp.open(path, 'r');
    const { bytesRead } = await hf.read(head, 0, head.length, 0).finally(() => hf.close());
    if (!looksLikeBpftraceLog(head.subarray(0, bytesRead))) {
      throw new AnalyzeInputError(`${path} is neither a kvmfault capture (no KVMFCAP magic) nor a bpftrace log in the incident's format (no line like "21:25:50:282711 tid[N] pid[N] FAULTIN @ rip ...")`);
    }
    format = 'bpftrace';
    // the detector is made when the first records come: by then the text's header (its first
    // line) has said which kernel traced it
    let textDetector: StaleFaultDetector | null = null;
    let textRetPf: RetPfTable | null = null;
    const ensureDetector = (): StaleFaultDetector => {
      if (!textDetector) {
        if (!kernel && imp.kernel) {
          kernel = judgeKernel(imp.kernel);
          kernelSource = 'trace text';
        }
        // the incident's logs come from 6.1 hosts: MAP_RET ret = 4 is RET_PF_FIXED there
        textRetPf = kernel ? retPfFor(kernel) : { ...RET_PF_6_1 };
        textDetector = makeDetector(textRetPf);
      }
      return textDetector;
    };
    const imp = createBpftraceImporter({ onBatch: (b) => ensureDetector().push(b) });
    try {
      for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) imp.push(chunk as Buffer);
    } catch (e) {
      throw new AnalyzeInputError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const result = imp.end();
    detector = ensureDetector();
    retPf = textRetPf!;
    records = result.records;
    importer = { lines: result.lines, records: result.records, ignored: result.ignored, skipped: result.skipped, skippedLines: result.skippedLines, kvmfaultText: result.kvmfaultText };
  }

  for (const v of detector.snapshot()) latest.set(v.tid, v);
  const order = { stuck: 0, retrying: 1, progressing: 2 } as const;
  const vcpus = [...latest.values()].sort((a, b) => order[a.state] - order[b.state] || a.pid - b.pid || a.tid - b.tid);
  return {
    path,
    format,
    bytes: stat.size,
    kernel,
    kernelSource,
    retPf,
    records,
    vcpus,
    vms: detector.forecast(),
    stuck: vcpus.filter((v) => v.state === 'stuck').length,
    retrying: vcpus.filter((v) => v.state === 'retrying').length,
    progressing: vcpus.filter((v) => v.state === 'progressing').length,
    detector: detector.stats(),
    importer,
    capture,
  };
}

/** The human-readable report. */
export function formatReport(r: AnalysisReport): string {
  const out: string[] = [];
  const src = r.format === 'capture'
    ? `capture, ${r.records} records${r.capture?.meta.hostKernel ? `, traced on ${r.capture.meta.hostKernel}` : ''}`
    : `${r.importer!.kvmfaultText ? 'kvmfault trace text' : 'bpftrace log'}, ${r.importer!.lines} lines -> ${r.records} records, ${r.importer!.skipped} line(s) skipped`;
  out.push(`${r.path}: ${src}`);
  if (r.kernel) {
    const st = r.kernel.affected === true ? 'AFFECTED' : r.kernel.affected === false ? 'not affected' : 'unknown';
    out.push(`kernel ${r.kernel.release} (${r.kernelSource === 'option' ? '--kernel' : `from the ${r.kernelSource}`}): sign-extension bug ${st}: ${r.kernel.reason}`);
    out.push('  (a stuck vCPU whose records show the bug\'s signature outranks this judgement: see each verdict\'s "decided by")');
  } else {
    out.push('kernel: unknown (the log does not say; pass --kernel <release> of the traced host)');
  }
  if (r.importer && r.importer.skipped > 0) {
    out.push(`skipped lines: ${r.importer.skipped}`);
    for (const s of r.importer.skippedLines) out.push(`  line ${s.line}: ${s.reason}: ${s.text}`);
  }
  if (r.capture && r.capture.damage.length > 0) {
    const c = r.capture;
    out.push(`capture damage (${c.damage.length}); every record that verified was analysed${c.gaps > 0 ? `, no attempts counted across the ${c.gaps} gap(s)` : ''}:`);
    for (const d of c.damage) out.push(`  at byte offset ${d.offset}: ${d.what}`);
  }
  if (r.capture && r.capture.version === 1) out.push('capture format version 1: it has no end marker, so a file cut short at a chunk boundary cannot be told from a complete one');
  out.push('');
  out.push(`vCPUs: ${r.stuck} stuck, ${r.retrying} retrying, ${r.progressing} progressing`);
  for (const v of r.vcpus) {
    const tag = v.state === 'stuck' ? 'STUCK' : v.state === 'retrying' ? 'retrying' : 'progressing';
    const cause = v.cause ? ` cause ${v.cause} (${v.confidence} confidence, decided by ${v.decidedBy})` : v.retryReason ? ` (${v.retryReason})` : '';
    out.push(`  ${tag.padEnd(11)} vm ${v.vmId} pid ${v.pid} tid ${v.tid}${v.vcpu !== null ? ` vcpu ${v.vcpu}` : ''}: gpa ${v.gpa ?? '?'}, ${v.attempts} attempt(s)${cause}${v.evicted ? ' [evicted]' : ''}`);
    if (v.state !== 'progressing') {
      const range = v.range ? `, range ${v.range.unit} [${v.range.start}, ${v.range.end})` : '';
      out.push(`              hva ${v.hva ?? '?'}, rip ${v.rip ?? '?'}, seq ${v.mmuSeqFirst ?? '?'}..${v.mmuSeqLast ?? '?'}` +
        `${v.faultSeqLast !== null ? `, fault seq ${v.faultSeqLast}` : ''}, in-progress ${v.inProgress ?? '?'}${range}, ` +
        `seen ${((v.lastSeen - v.firstSeen) / 1e9).toFixed(6)} s`);
    }
    out.push(`              ${v.explanation}`);
  }
  if (r.vms.length > 0) {
    out.push('');
    out.push('VMs (early warning: invalidation sequence vs 0x80000000):');
    for (const vm of r.vms) {
      const rate = vm.ratePerSec === null ? 'rate unknown' : `${vm.ratePerSec.toFixed(1)}/s (${vm.rateSource})`;
      const left = vm.secondsToSignBit === null ? '' : vm.crossed ? ', crossed' : `, ${formatDuration(vm.secondsToSignBit)} left`;
      out.push(`  vm ${vm.vmId} pid ${vm.pid}: ${vm.vcpus} vCPU(s), ${rate}${left}; ${vm.warning}`);
    }
  }
  const st = r.detector;
  if (st.evictedIdle + st.evictedForCapacity > 0) out.push(`evicted vCPUs: ${st.evictedIdle} idle, ${st.evictedForCapacity} for capacity`);
  // each entry is one line; what came from the input (skipped lines, the capture's metadata, the
  // path, a kernel release) may hold control characters: shown escaped, never sent raw
  return out.map(escapeControl).join('\n') + '\n';
}

/** The --json document: the report with a `vcpus` array (pid, tid, state, cause, gpa, attempts, evidence). */
export function reportJson(r: AnalysisReport): object {
  return {
    path: r.path,
    format: r.format,
    records: r.records,
    kernel: r.kernel,
    kernelSource: r.kernelSource,
    retPf: r.retPf,
    summary: { stuck: r.stuck, retrying: r.retrying, progressing: r.progressing },
    vcpus: r.vcpus,
    vms: r.vms,
    importer: r.importer,
    capture: r.capture,
    detector: r.detector,
  };
}
