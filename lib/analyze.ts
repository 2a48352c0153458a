/**
 * Offline analysis: a capture file or a text log in, one verdict per vCPU (and per VM for
 * counter snapshots) out. The format is detected from the content (the capture magic, else the
 * lines: lib/import/index.ts). "-" reads standard input.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import { CaptureDamage, CaptureError, CaptureMeta, CaptureReader, isCapture, openCapture } from './capture';
import { DetectorOptions, StaleFaultDetector, Verdict, VmForecast, DetectorStats, formatDuration } from './detector';
import { DETECT_BYTES, looksLikeBpftraceLog, SkippedLine } from './import/bpftrace';
import { createMailBpftraceImporter } from './import/bpftrace-mail';
import { escapeControl } from './escape';
import { createTextImporter, detectTextFormat, TEXT_FORMAT_NAMES, TextFormat } from './import/index';
import { CounterVm, EvidenceLines, PSEUDO_GPA } from './import/text';
import { judgeKernel, KernelInfo, retPfTable, RetPfTable, StaleCheckSignature } from './kernels';
import type { EventBatch } from './record';
import { Timeline, TimelineData } from './report/timeline';
import { fixedMemslots } from './memslots';
import { InvalidationSources, MemslotMatchStats, readStacksFile, readStacksFileMemslots, remedy, SourceCount, VmSources } from './sources';

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
  /** also collect the per-VM sequence and per-vCPU attempt series over time (report.timeline: the HTML report's charts) */
  timeline?: boolean;
}

/** A vCPU's verdict in the report: the detector's, plus where in the input its evidence is. */
export type ReportVcpu = Verdict & {
  /** the vCPU's kernel address (struct kvm_vcpu *) as the log printed it, when the log names it only so (tid is then made up) */
  vcpuAddr?: string;
  /** first and last line of the input that were evidence for it (text logs) */
  evidenceLines?: EvidenceLines | null;
};

/** A VM in the report: the detector's forecast, or a counter verdict (kvm-counters). */
export type ReportVm = (VmForecast & { name: string; state: string }) | (CounterVm & { vmId?: undefined });

export interface AnalysisReport {
  path: string;
  format: 'capture' | TextFormat;
  bytes: number;
  kernel: KernelInfo | null;
  /** where the kernel came from */
  kernelSource: 'option' | 'capture' | 'trace text' | 'none';
  retPf: RetPfTable;
  records: number;
  /** final verdict per vCPU thread (also those evicted during the run), stuck first */
  vcpus: ReportVcpu[];
  vms: VmForecast[];
  /** per-VM verdicts from KVM counters (kvm-counters logs), stuck first */
  counterVms: CounterVm[];
  /** who invalidated each VM (captures with INVALIDATE_START records); stacks: where the kernel
   * stacks came from (<capture>.stacks.json) or 'comm only' */
  invalidationSources: {
    vms: VmSources[]; stacks: 'stacks file' | 'comm only';
    /** invalidations outside every VM's memslots (null: the capture has no memslot table, VMs as the records say) */
    outsideGuestMemory: SourceCount[] | null;
    memslotMatch: MemslotMatchStats | null;
  } | null;
  /** VMs whose counters say stuck */
  stuckVms: number;
  /** whether the input names the VMM pid and the vCPU thread (trace-cmd: no pid; uniq -c: neither) */
  hasPid: boolean;
  hasTid: boolean;
  /** what the reader should know about the input (lost events, missing fields) */
  notes: string[];
  stuck: number;
  retrying: number;
  progressing: number;
  detector: DetectorStats;
  importer: {
    lines: number; records: number; ignored: number; skipped: number; skippedLines: SkippedLine[]; kvmfaultText: boolean;
    /** mail/shell noise lines, lines re-joined after a mail client wrapped them, events the tracer lost */
    noise: number; joined: number; lost: number;
  } | null;
  /** version: the capture format; complete: the end chunk was read (version 2; null for version 1, which has none);
   *  gaps: places where records were lost (the detector counts no attempts across one) */
  capture: { meta: CaptureMeta; damage: CaptureDamage[]; version: number; complete: boolean | null; gaps: number; metaIntact: boolean } | null;
  /** the records over time, downsampled (only with options.timeline) */
  timeline: TimelineData | null;
}

/** Thrown for input that cannot be analysed at all (missing file, unknown format, bad header). */
export class AnalyzeInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AnalyzeInputError';
  }
}

/**
 * Pushes every record of a capture into the detector and returns how many there were. Only
 * verified records come out of the reader; where it lost some, the detector is told
 * (discontinuity()), so no run of attempts is counted across the gap: a stuck verdict rests on
 * records seen without a gap between them, never on damage. Damage ends up in reader.damage.
 */
export async function feedCapture(reader: CaptureReader, detector: StaleFaultDetector, also?: (batch: EventBatch) => void): Promise<number> {
  let records = 0;
  let gaps = reader.gaps;
  for await (const batch of reader.batches({ onDamage: 'report' })) {
    if (reader.gaps !== gaps) {
      gaps = reader.gaps;
      detector.discontinuity();
    }
    records += batch.length;
    detector.push(batch);
    also?.(batch);
  }
  return records;
}

/** Reads the first `want` bytes of a stream, and gives back the whole stream (those bytes first). */
async function peek(source: AsyncIterable<Buffer | string>, want: number): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const it = source[Symbol.asyncIterator]();
  const got: Buffer[] = [];
  let n = 0, done = false;
  while (n < want) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    const b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    got.push(b);
    n += b.length;
  }
  const head = Buffer.concat(got);
  async function* rest(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    if (done) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    }
  }
  return { head: head.subarray(0, want), rest: rest() };
}

/**
 * Analyses a file, or standard input when `path` is "-" (a capture must be a file: it is read
 * by offset). Text is streamed: memory stays bounded whatever the input's size.
 */
export async function analyzeFile(path: string, options: AnalyzeOptions = {}): Promise<AnalysisReport> {
  if (path === '-') return analyzeStream('-', process.stdin, options);
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
  if (isCapture(prefix)) return analyzeCapture(path, stat.size, options);
  return analyzeStream(path, createReadStream(path, { highWaterMark: 1 << 20 }), options, stat.size);
}

function newState(options: AnalyzeOptions) {
  const st = {
    kernel: (options.kernel ? judgeKernel(options.kernel, options.procVersion) : null) as KernelInfo | null,
    kernelSource: (options.kernel ? 'option' : 'none') as AnalysisReport['kernelSource'],
    latest: new Map<number, Verdict>(),
    timeline: null as Timeline | null,
    makeDetector: (retPf: RetPfTable): StaleFaultDetector => {
      if (options.timeline) st.timeline = new Timeline(retPf);
      return new StaleFaultDetector({
        ...options.detector,
        retPf,
        kernel: st.kernel,
        onVerdict: (v) => st.latest.set(v.tid, v),
      });
    },
  };
  return st;
}

async function analyzeCapture(path: string, bytes: number, options: AnalyzeOptions): Promise<AnalysisReport> {
  const st = newState(options);
  let reader;
  try {
    reader = await openCapture(path);
  } catch (e) {
    if (e instanceof CaptureError) throw new AnalyzeInputError(e.message);
    throw e;
  }
  const meta = reader.header.meta;
  if (!st.kernel && meta.hostKernel) {
    st.kernel = judgeKernel(meta.hostKernel, typeof meta.procVersion === 'string' ? meta.procVersion : undefined,
      isStaleCheck(meta.staleCheck) ? meta.staleCheck : null);
    st.kernelSource = 'capture';
  }
  const retPf = retPfTable(meta.retPf, st.kernel);
  const detector = st.makeDetector(retPf);
  const timeline = st.timeline;
  const stackLookup = path === '-' ? null : readStacksFile(path);
  const slots = path === '-' ? null : readStacksFileMemslots(path);
  const sources = new InvalidationSources(stackLookup, slots ? fixedMemslots(slots) : null);
  const records = await feedCapture(reader, detector, (b) => {
    timeline?.push(b);
    sources.add(b);
  });
  return finishReport({
    path, format: 'capture', bytes, kernel: st.kernel, kernelSource: st.kernelSource, retPf, records, detector, latest: st.latest, timeline: st.timeline,
    importer: null, capture: { meta, damage: reader.damage, version: reader.header.version, complete: reader.complete, gaps: reader.gaps, metaIntact: reader.header.metaIntact }, evidence: null, vcpuAddrs: null, counterVms: [],
    hasPid: true, hasTid: true, hasSeq: true, pseudoGpa: false, lost: 0,
    invalidationSources: sources.invalidations > 0 ? { vms: sources.snapshot(), stacks: stackLookup ? 'stacks file' : 'comm only',
      outsideGuestMemory: slots ? sources.outsideGuestMemory() : null, memslotMatch: slots ? sources.matchStats() : null } : null,
  });
}

/** A text log (any format lib/import reads) from a stream. */
export async function analyzeStream(path: string, source: AsyncIterable<Buffer | string>, options: AnalyzeOptions = {}, size?: number): Promise<AnalysisReport> {
  const st = newState(options);
  let peeked;
  try {
    peeked = await peek(source, DETECT_BYTES);
  } catch (e) {
    throw new AnalyzeInputError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const { head, rest } = peeked;
  if (isCapture(head.subarray(0, 8))) throw new AnalyzeInputError(`${path} is a kvmfault capture: give it as a file path (a capture is read by offset, not from a pipe)`);
  const format = looksLikeBpftraceLog(head) ? 'bpftrace' : detectTextFormat(head);
  if (format === null) {
    throw new AnalyzeInputError(`${path === '-' ? 'standard input' : path} is in no format analyze reads: a kvmfault capture (KVMFCAP magic), or text: ` +
      Object.values(TEXT_FORMAT_NAMES).join('; ') + ' (README: "Capture files, bpftrace logs, analysis")');
  }
  let bytes = 0;
  const read = async (push: (b: Buffer) => void): Promise<void> => {
    try {
      for await (const chunk of rest) {
        bytes += chunk.length;
        push(chunk);
      }
    } catch (e) {
      throw new AnalyzeInputError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };

  if (format === 'bpftrace') {
    // the detector is made when the first records come: by then the text's header (its first
    // line) has said which kernel traced it
    let textDetector: StaleFaultDetector | null = null;
    let textRetPf: RetPfTable | null = null;
    const ensureDetector = (): StaleFaultDetector => {
      if (!textDetector) {
        if (!st.kernel && imp.kernel) {
          st.kernel = judgeKernel(imp.kernel);
          st.kernelSource = 'trace text';
        }
        // no kernel named: the incident's logs come from 6.1 hosts (MAP_RET ret = 4 is RET_PF_FIXED there)
        textRetPf = retPfTable(null, st.kernel);
        textDetector = st.makeDetector(textRetPf);
      }
      return textDetector;
    };
    const imp = createMailBpftraceImporter({ onBatch: (b) => {
      ensureDetector().push(b);
      st.timeline?.push(b);
    } });
    await read((b) => imp.push(b));
    const result = imp.end();
    const detector = ensureDetector();
    return finishReport({
      path, format, bytes: size ?? bytes, kernel: st.kernel, kernelSource: st.kernelSource, retPf: textRetPf!, records: result.records, detector, latest: st.latest, timeline: st.timeline,
      importer: { lines: result.lines, records: result.records, ignored: result.ignored, skipped: result.skipped, skippedLines: result.skippedLines, kvmfaultText: result.kvmfaultText, noise: result.noise, joined: result.joined, lost: result.lost },
      capture: null, evidence: result.evidence, vcpuAddrs: null, counterVms: [], hasPid: true, hasTid: true, hasSeq: true, pseudoGpa: false, lost: result.lost,
    });
  }

  const retPf = retPfTable(null, st.kernel);
  const detector = st.makeDetector(retPf);
  const imp = createTextImporter(format, { onBatch: (b) => {
    detector.push(b);
    st.timeline?.push(b);
  }, stuckAttempts: options.detector?.stuckAttempts });
  await read((b) => imp.push(b));
  const result = imp.end();
  return finishReport({
    path, format, bytes: size ?? bytes, kernel: st.kernel, kernelSource: st.kernelSource, retPf, records: result.records, detector, latest: st.latest, timeline: st.timeline,
    importer: { lines: result.lines, records: result.records, ignored: result.ignored + result.noise, skipped: result.skipped, skippedLines: result.skippedLines, kvmfaultText: false, noise: result.noise, joined: result.joined, lost: result.lost },
    capture: null, evidence: result.evidence, vcpuAddrs: result.vcpuAddrs, counterVms: result.counters ?? [],
    hasPid: result.hasPid, hasTid: result.hasTid, hasSeq: result.hasSeq, pseudoGpa: result.pseudoGpa, lost: result.lost,
  });
}

interface Finish {
  path: string;
  format: AnalysisReport['format'];
  bytes: number;
  kernel: KernelInfo | null;
  kernelSource: AnalysisReport['kernelSource'];
  retPf: RetPfTable;
  records: number;
  detector: StaleFaultDetector;
  latest: Map<number, Verdict>;
  timeline: Timeline | null;
  importer: AnalysisReport['importer'];
  capture: AnalysisReport['capture'];
  evidence: Map<number, EvidenceLines> | null;
  vcpuAddrs: Map<number, string> | null;
  counterVms: CounterVm[];
  hasPid: boolean;
  hasTid: boolean;
  hasSeq: boolean;
  pseudoGpa: boolean;
  lost: number;
  invalidationSources?: AnalysisReport['invalidationSources'];
}

const PSEUDO_GPA_HEX = PSEUDO_GPA.toString(16);

function finishReport(f: Finish): AnalysisReport {
  const { detector, latest } = f;
  for (const v of detector.snapshot()) latest.set(v.tid, v);
  const order = { stuck: 0, retrying: 1, progressing: 2 } as const;
  const notes: string[] = [];
  if (f.lost > 0) notes.push(`the tracer lost ${f.lost} event(s) ("Lost N events" / "[LOST N EVENTS]" lines): attempts may be undercounted`);
  if (f.pseudoGpa) notes.push('the log prints no guest address: each vCPU\'s lines are taken as retries of one fault (what a vCPU stuck on one access does)');
  const vcpus: ReportVcpu[] = [...latest.values()].map((v) => {
    const out: ReportVcpu = { ...v };
    const addr = f.vcpuAddrs?.get(v.tid);
    if (addr !== undefined) out.vcpuAddr = addr;
    if (f.evidence) out.evidenceLines = f.evidence.get(v.tid) ?? null;
    if (f.pseudoGpa && v.gpa === PSEUDO_GPA_HEX) {
      out.gpa = null;
      out.explanation = out.explanation.split(`gpa ${PSEUDO_GPA_HEX}`).join('its one fault').split(PSEUDO_GPA_HEX).join('?');
      out.explanation += ' (the log prints no gpa: its lines for this vCPU are taken as one fault)';
    }
    if (v.state === 'retrying' && v.retryReason === 'unexplained' && !f.hasSeq) {
      out.explanation += ` This excerpt shows ${v.attempts} attempt(s) over ${((v.lastSeen - v.firstSeen) / 1e9).toFixed(6)} s and no invalidation state: ` +
        'stuck needs more attempts over a longer time (--stuck-attempts, --stuck-seconds), or a signature only the invalidation state shows. ' +
        'A longer trace, two snapshots of the VM\'s pf_taken / pf_fixed counters, or a `kvmfault record` capture would tell.';
    }
    if (v.state === 'stuck' && v.cause === 'unknown' && !f.hasSeq) {
      out.explanation += ' The log shows no MMU invalidation state (sequence, in-progress count, range): to tell the cause, ' +
        'capture on that host with `kvmfault record` (or the incident\'s bpftrace script, which prints "MMU seq", "in-prog", start/end), ' +
        'or give the host\'s kernel with --kernel so the kernel judgement can fill the gap.';
    }
    return out;
  });
  vcpus.sort((a, b) => order[a.state] - order[b.state] || a.pid - b.pid || a.tid - b.tid);
  const cOrder = { stuck: 0, retrying: 1, progressing: 2, idle: 3, unknown: 4 } as const;
  const counterVms = [...f.counterVms].sort((a, b) => cOrder[a.state] - cOrder[b.state]);
  return {
    path: f.path,
    format: f.format,
    bytes: f.bytes,
    kernel: f.kernel,
    kernelSource: f.kernelSource,
    retPf: f.retPf,
    records: f.records,
    vcpus,
    vms: detector.forecast(),
    counterVms,
    invalidationSources: f.invalidationSources ?? null,
    stuckVms: counterVms.filter((v) => v.state === 'stuck').length,
    hasPid: f.hasPid,
    hasTid: f.hasTid,
    notes,
    stuck: vcpus.filter((v) => v.state === 'stuck').length,
    retrying: vcpus.filter((v) => v.state === 'retrying').length,
    progressing: vcpus.filter((v) => v.state === 'progressing').length,
    detector: detector.stats(),
    importer: f.importer,
    capture: f.capture,
    timeline: f.timeline?.data() ?? null,
  };
}

/** Who a vCPU is, as far as the input says (vm and pid only when the input names them). */
export function vcpuWho(r: AnalysisReport, v: ReportVcpu): string {
  return v.vcpuAddr !== undefined ? `vcpu at ${v.vcpuAddr}` : `${r.hasPid ? `vm ${v.vmId} pid ${v.pid} ` : ''}tid ${v.tid}${v.vcpu !== null ? ` vcpu ${v.vcpu}` : ''}`;
}

/** The evidence under a verdict: where in the input it is, and (unless progressing) the fault's invalidation state. */
export function vcpuEvidence(v: ReportVcpu): string[] {
  const out: string[] = [];
  if (v.evidenceLines) {
    const e = v.evidenceLines;
    out.push(`evidence: line${e.first === e.last ? ` ${e.first}` : `s ${e.first}..${e.last}`} of the input (${e.count} entr${e.count === 1 ? 'y' : 'ies'})`);
  }
  if (v.state !== 'progressing') {
    const range = v.range ? `, range ${v.range.unit} [${v.range.start}, ${v.range.end})` : '';
    out.push(`hva ${v.hva ?? '?'}, rip ${v.rip ?? '?'}, seq ${v.mmuSeqFirst ?? '?'}..${v.mmuSeqLast ?? '?'}` +
      `${v.faultSeqLast !== null ? `, fault seq ${v.faultSeqLast}` : ''}, in-progress ${v.inProgress ?? '?'}${range}, ` +
      `seen ${((v.lastSeen - v.firstSeen) / 1e9).toFixed(6)} s`);
  }
  return out;
}

/** What the input was: its format and how much of it was read. */
export function inputSummary(r: AnalysisReport): string {
  return r.format === 'capture'
    ? `capture, ${r.records} records${r.capture?.meta.hostKernel ? `, traced on ${r.capture.meta.hostKernel}` : ''}`
    : `${r.importer!.kvmfaultText ? 'kvmfault trace text' : TEXT_FORMAT_NAMES[r.format]}, ${r.importer!.lines} lines -> ${r.records} records, ${r.importer!.skipped} line(s) skipped` +
      `${r.importer!.noise ? `, ${r.importer!.noise} noise line(s)` : ''}${r.importer!.joined ? `, ${r.importer!.joined} wrapped line(s) re-joined` : ''}`;
}

/** The human-readable report. */
export function formatReport(r: AnalysisReport): string {
  const out: string[] = [];
  out.push(`${r.path === '-' ? 'standard input' : r.path}: ${inputSummary(r)}`);
  for (const n of r.notes) out.push(`note: ${n}`);
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
    out.push(`  ${tag.padEnd(11)} ${vcpuWho(r, v)}: gpa ${v.gpa ?? '?'}, ${v.attempts} attempt(s)${cause}${v.evicted ? ' [evicted]' : ''}`);
    for (const line of vcpuEvidence(v)) out.push(`              ${line}`);
    out.push(`              ${v.explanation}`);
  }
  if (r.vms.length > 0) {
    out.push('');
    out.push('VMs (early warning: invalidation sequence vs 0x80000000):');
    for (const vm of r.vms) {
      const rate = vm.ratePerSec === null ? 'rate unknown' : `${vm.ratePerSec.toFixed(1)}/s (${vm.rateSource})`;
      const left = vm.secondsToSignBit === null ? '' : vm.crossed ? ', crossed' : `, ${formatDuration(vm.secondsToSignBit)} left`;
      out.push(`  vm ${r.hasPid ? `${vm.vmId} pid ${vm.pid}` : '? (the log names no VMM pid: all its threads together)'}: ${vm.vcpus} vCPU(s), ${rate}${left}; ${vm.warning}`);
    }
  }
  if (r.counterVms.length > 0) {
    out.push('');
    out.push(`VMs by their KVM counters: ${r.stuckVms} stuck`);
    for (const vm of r.counterVms) {
      const tag = vm.state === 'stuck' ? 'STUCK' : vm.state;
      const deltas = Object.entries(vm.counters).map(([k, c]) => `${k} ${c.delta >= 0 ? '+' : ''}${c.delta}`).join(', ');
      out.push(`  ${tag.padEnd(11)} vm ${vm.name}: ${vm.snapshots} snapshot(s)${vm.seconds !== null ? ` over ${vm.seconds} s` : ''}; ${deltas}`);
      const e = vm.evidenceLines;
      out.push(`              evidence: lines ${e.first}..${e.last} of the input`);
      out.push(`              ${vm.explanation}`);
    }
  }
  if (r.invalidationSources) {
    const inv = r.invalidationSources;
    out.push('');
    out.push(`invalidation sources (${inv.stacks === 'stacks file' ? 'from the kernel stacks beside the capture' : 'by comm only: no .stacks.json beside the capture'}):`);
    for (const vm of inv.vms) {
      out.push(`  vm ${vm.vmId}: ${vm.total} invalidation(s): ${vm.sources.map((x) => `${x.source} ${x.count} (${x.evidence}${x.comm && x.comm !== x.evidence ? `, ${x.comm}` : ''})`).join(', ')}`);
      if (r.kernel && r.kernel.affected !== null) out.push(`    remedy: ${remedy(vm.sources[0].source, r.kernel.affected)}`);
    }
    const outside = inv.outsideGuestMemory;
    if (outside === null || outside === undefined) out.push('  (no memslot table beside the capture: every invalidation counted for the VM its record names)');
    else if (outside.length) out.push(`  outside guest memory (in no VM's memslots, counted for no VM): ${outside.map((x) => `${x.source} ${x.count}`).join(', ')}`);
  }
  const st = r.detector;
  if (st.evictedIdle + st.evictedForCapacity > 0) out.push(`evicted vCPUs: ${st.evictedIdle} idle, ${st.evictedForCapacity} for capacity`);
  // each entry is one line; what came from the input (skipped lines, the capture's metadata, the
  // path, a kernel release) may hold control characters: shown escaped, never sent raw
  return out.map(escapeControl).join('\n') + '\n';
}

/**
 * The --json document: the report with a `vcpus` array (pid, tid, state, cause, gpa, attempts,
 * evidence; vcpuAddr and evidenceLines for text logs) and a `vms` array (name, state; the
 * forecast, or for counter logs the counter deltas).
 */
export function reportJson(r: AnalysisReport): object {
  return {
    path: r.path,
    format: r.format,
    records: r.records,
    kernel: r.kernel,
    kernelSource: r.kernelSource,
    retPf: r.retPf,
    summary: { stuck: r.stuck, retrying: r.retrying, progressing: r.progressing, stuckVms: r.stuckVms },
    notes: r.notes,
    vcpus: r.vcpus.map((v) => ({
      ...v,
      // null when the log does not name them (trace-cmd: no pid; uniq -c: a vCPU address only)
      pid: r.hasPid && v.vcpuAddr === undefined ? v.pid : null,
      tid: r.hasTid && v.vcpuAddr === undefined ? v.tid : null,
      vmId: r.hasPid ? v.vmId : null,
    })),
    vms: [
      ...r.vms.map((vm) => {
        const mine = r.vcpus.filter((v) => v.vmId === vm.vmId);
        const state = mine.some((v) => v.state === 'stuck') ? 'stuck' : mine.some((v) => v.state === 'retrying') ? 'retrying' : 'progressing';
        // a log without the VMM pid puts every thread in one VM it cannot name
        return r.hasPid ? { name: vm.vmId, state, ...vm } : { ...vm, name: null, state, vmId: null, pid: null };
      }),
      ...r.counterVms,
    ],
    importer: r.importer,
    capture: r.capture,
    invalidationSources: r.invalidationSources,
    detector: r.detector,
  };
}
