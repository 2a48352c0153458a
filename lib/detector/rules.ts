/**
 * The detector's rules: which cause a stuck vCPU's attempts show, when attempts are enough to
 * call it stuck, how sure that is and what decided it, and the English that explains verdicts
 * and forecasts. The evidence comes from vcpu.ts (per-run counters filled by StaleFaultDetector);
 * the kernel judgement (kernels.ts) only fills gaps the records leave.
 */
import { Sentinel } from '../record';
import { hexNum } from '../hex';
import { KernelEvidence, SIGN_BIT_SEQ } from '../kernels';
import { Bit } from './flags';
import type { DetectorKernel, StuckCause, Verdict, VcpuState, VmForecast } from './types';
import type { VcpuTable } from './vcpu';

export const STATE_NAMES: readonly (VcpuState | null)[] = [null, 'progressing', 'retrying', 'stuck'];

// Cause.SIGN: the signature seen in the records; Cause.SIGN_KERNEL: the sequence part seen, in-progress
// not visible in this trace mode, and the kernel judged affected (by BTF or version)
export const enum Cause {
  NONE = 0,
  SIGN = 1,
  INVAL = 2,
  UNKNOWN = 3,
  SIGN_KERNEL = 4,
}
export const CAUSE_NAMES: readonly (StuckCause | null)[] = [null, 'seq-sign-extension', 'invalidation-stuck', 'unknown', 'seq-sign-extension'];

/** The cause the current run of vCPU s shows (called once it has enough attempts to be stuck). */
export function causeOf(vc: VcpuTable, s: number, kernel: DetectorKernel | null): number {
  const known = vc.obsKnown[s], stale = vc.obsStale[s], notStale = vc.obsNotStale[s];
  if (stale > 0 && notStale === 0 && vc.inProg[s] > 0) return Cause.INVAL;
  const seq = vc.seqLast[s];
  const sxSeen = (vc.bits[s] & Bit.SIGN_EXTENDED) !== 0;
  const seqHighConstant = seq !== Sentinel.UNKNOWN && seq >= SIGN_BIT_SEQ && vc.seqChanges[s] === 0;
  const saysNotStale = known > 0 && stale === 0;
  // the bug's signature in the records decides, whatever the kernel judgement says
  if ((seqHighConstant || sxSeen) && saysNotStale) return Cause.SIGN;
  // in-progress not visible in this trace (mode): the kernel judgement fills that gap only
  if (seqHighConstant && known === 0 && kernel?.affected === true) return Cause.SIGN_KERNEL;
  return Cause.UNKNOWN;
}

/**
 * A signature needs no minimum duration: the bug's retries (or one invalidation held over the
 * address with the sequence standing still) are stuck however short the excerpt is. Without
 * one, time (or a huge count) must rule out a passing storm.
 */
export function isSignature(cause: number, seqChanges: number): boolean {
  return cause === Cause.SIGN || (cause === Cause.INVAL && seqChanges === 0);
}

export function confidenceOf(cause: number): Verdict['confidence'] {
  return cause === Cause.SIGN || cause === Cause.INVAL ? 'high' : cause === Cause.SIGN_KERNEL ? 'medium' : 'low';
}

export function decidedByOf(cause: number, kernel: DetectorKernel | null): KernelEvidence {
  return cause === Cause.SIGN_KERNEL ? (kernel?.decidedBy ?? 'version') : 'behaviour';
}

/** The verdict's explanation (v: the verdict of vCPU s, explanation not yet set). */
export function explain(v: Verdict, vc: VcpuTable, s: number, kernel: DetectorKernel | null): string {
  const gpa = v.gpa === null ? 'an unknown gpa' : `gpa ${v.gpa}`;
  if (v.state === 'progressing') {
    return `progressing: ${v.mapped} fault(s) mapped, ${v.totalAttempts} attempt(s) in all; last ${gpa}`;
  }
  // built only for the states that print them: a progressing verdict is the common one
  const secs = ((v.lastSeen - v.firstSeen) / 1e9).toFixed(3);
  const seq = v.mmuSeqLast === null ? 'sequence unknown' : `seq ${v.mmuSeqLast}`;
  const inv = v.inProgress === null
    ? 'in-progress unknown in this trace mode'
    : `in-progress ${v.inProgress}${v.range ? `, range ${v.range.unit} [${v.range.start}, ${v.range.end})` : ''}`;
  if (v.state === 'retrying') {
    return v.retryReason === 'invalidation'
      ? `retrying ${gpa}: ${v.attempts} attempts, ${v.explainedAttempts} explained by invalidations (${v.seqChanges} sequence change(s); ${inv})`
      : `retrying ${gpa}: ${v.attempts} attempts, not (yet) explained by the invalidation state (${seq}, ${inv}); below the stuck thresholds`;
  }
  const offPath = v.offPathAttempts > 0 ? ` (+${v.offPathAttempts} entries on other addresses, not counted: they do not free it)` : '';
  const head = `stuck on ${gpa}: ${v.attempts} attempts over ${secs} s, never mapped${offPath}`;
  switch (v.cause) {
    case 'seq-sign-extension': {
      const bug = 'is_page_fault_stale() compares a sign-extended int snapshot and retries forever (fixed in 6.1.50 and 6.3)';
      if (v.decidedBy !== 'behaviour') {
        return `${head}; ${seq} >= 80000000 and constant, in-progress not visible in this trace mode: ${bug}; ` +
          `the kernel is affected ${v.decidedBy === 'btf' ? "by its own BTF" : 'from the version only'} (${kernel?.release ?? '?'})`;
      }
      return `${head}; ${seq} >= 80000000 and constant, the invalidation state says not stale (${inv}): ${bug}; ` +
        `decided by the observed behaviour` + kernelDisagreement(kernel);
    }
    case 'invalidation-stuck':
      return `${head}; an invalidation never ends: ${inv}, the ${(vc.bits[s] & Bit.RANGE_GFN) !== 0 ? 'gfn' : 'hva'} is inside the range on every attempt`;
    default: {
      const seqHigh = vc.seqLast[s] !== Sentinel.UNKNOWN && vc.seqLast[s] >= SIGN_BIT_SEQ && vc.seqChanges[s] === 0;
      if (seqHigh && vc.obsKnown[s] === 0) {
        return `${head}; ${seq} >= 80000000 and constant, but in-progress is not visible in this trace mode and the kernel ` +
          `${kernel?.affected === false ? `is judged not affected (${kernel.decidedBy ?? 'version'})` : 'judgement is unknown'}: ` +
          'cause unknown; a mode that reads the VM\'s invalidation state (kprobe, fentry, or tp_btf where kvm_running_vcpu resolves) can tell';
      }
      if (vc.seqChanges[s] > 0) return `${head}; the sequence moved ${v.seqChanges} time(s) while retrying: invalidations keep racing the fault (${inv}); cause unknown`;
      return `${head}; the invalidation state does not explain it (${seq}, ${inv}); cause unknown, see the evidence`;
    }
  }
}

/** When the kernel judgement said "not affected" but the records show the bug: say why they win. */
function kernelDisagreement(k: DetectorKernel | null): string {
  if (!k || k.affected !== false) return k?.affected === true ? `; kernel ${k.release} is affected (${k.decidedBy ?? 'version'} agrees)` : '';
  return `; the ${k.decidedBy === 'btf' ? "kernel's BTF" : 'version table'} says ${k.release} is not affected, ` +
    'but the records outrank it: a backported bug, a rebuilt kvm module or a gap in the table';
}

/** The explanation of a verdict delivered as its vCPU is dropped from the table. */
export function evictedExplanation(idle: boolean, last: string): string {
  return `${idle ? 'idle' : 'table full'}: no longer tracked; last verdict: ${last}`;
}

/** The forecast's one line (seq UNKNOWN: not visible; seconds null: no rate). */
export function forecastWarning(seq: number, crossed: boolean, secondsToSignBit: number | null, rate: number | null,
  affected: boolean | null, decidedBy: KernelEvidence | null): VmForecast['warning'] {
  const kernelNote = (affected === true ? 'kernel affected' : affected === false ? 'kernel not affected' : 'kernel unknown') +
    (decidedBy === 'behaviour' ? ': a vCPU of this VM shows the bug' : decidedBy === 'btf' ? ', by its BTF' : decidedBy === 'version' ? ', from the version only' : '');
  if (seq === Sentinel.UNKNOWN) return `sequence not visible in this trace (${kernelNote})`;
  if (crossed) return affected === false
    ? `sequence ${hexNum(seq)} is past 80000000; no hang expected on this kernel (${kernelNote})`
    : `sequence ${hexNum(seq)} is past 80000000: on an affected kernel every fault of this VM retries forever (${kernelNote})`;
  if (secondsToSignBit === null) return `sequence ${hexNum(seq)} not moving in this trace (${kernelNote})`;
  return `sequence ${hexNum(seq)} reaches 80000000 in ${formatDuration(secondsToSignBit)} at ${rate!.toFixed(1)}/s (${kernelNote})`;
}

export function formatDuration(seconds: number): string {
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  if (seconds < 3 * 31557600) return `${(seconds / 86400).toFixed(1)} days`;
  return `${(seconds / 31557600).toFixed(1)} years`;
}
