/**
 * kvmfault prove: an active test of this host's KVM for the sequence sign-extension bug.
 * Exit: 0 not affected, 1 affected, 2 could not test (inconclusive, no KVM, cannot trace, bad
 * usage), 130/143 after SIGINT/SIGTERM (the test VM is cancelled and the knob restored first).
 */
import { readFileSync, writeFileSync } from 'fs';
import type { Command } from 'commander';
import { INITIAL_SEQ_KNOB, prove, type ProveProgress, type ProveResult } from '../../prove';
import { CliError } from '../errors';
import { out, startSession } from '../lifecycle';
import { humanRate, StatusLine } from '../live';
import { mode, MODE_HELP, ModeChoice, positiveInt, seconds } from '../options';
import { formatDuration } from '../../detector';

interface Flags {
  mode: ModeChoice;
  json?: boolean;
  knob: boolean;
  knobStart?: number;
  maxInvalidations?: number;
  pages?: number;
  stuckSeconds?: number;
  giveUp?: number;
}

function seqValue(text: string): number {
  const t = text.trim();
  const n = /^0x[0-9a-f]+$/i.test(t) ? parseInt(t, 16) : /^\d+$/.test(t) ? Number(t) : NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n > 0xffffffff) {
    throw new CliError(`--knob-start must be a sequence value from 0 to 0xffffffff, decimal or 0x-hex (got "${text}")`);
  }
  return n;
}

function count(flag: string) {
  return (text: string): number => {
    const t = text.trim().replace(/_/g, '');
    const m = /^(\d+)([kmg]?)$/i.exec(t);
    const n = m ? Number(m[1]) * { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'] : NaN;
    if (!Number.isSafeInteger(n) || n < 0) throw new CliError(`${flag} must be a whole number, e.g. 1000000 or 2G (got "${text}")`);
    return n;
  };
}

function bar(done: number, total: number, width = 24): string {
  const f = total > 0 ? Math.min(1, done / total) : 0;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}] ${(f * 100).toFixed(1).padStart(5)}%`;
}

function big(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function statusText(p: ProveProgress): string {
  const t = `${p.elapsedS.toFixed(0)}s`;
  switch (p.phase) {
    case 'setup': return `prove: ${t} setting up`;
    case 'run1': return `prove: ${t} run 1: the guest touches its pages`;
    case 'burst': {
      const b = p.burst;
      return `prove: ${t} burst ${bar(b.done, b.total)} ${big(b.done)}/${big(b.total)} invalidations` +
        (b.ratePerSec ? ` ${humanRate(b.ratePerSec)}` : '') + (b.etaS !== null ? ` ETA ${formatDuration(b.etaS)}` : '');
    }
    case 'run2': return `prove: ${t} run 2: re-faulting every page (seq ${p.seqMax ?? '?'}, ${p.mappedPastSignBit} mapped past 0x80000000, ${p.attempts} attempts on one gpa)`;
    default: return `prove: ${t} deciding`;
  }
}

function human(r: ProveResult): string {
  const lines: string[] = [];
  const verdict = { affected: 'AFFECTED', 'not-affected': 'NOT AFFECTED', inconclusive: 'INCONCLUSIVE' }[r.verdict];
  lines.push(`kvmfault prove on ${r.release}: ${verdict}`);
  lines.push(`  why: ${r.reason}`);
  const k = r.knob;
  lines.push(k.used
    ? `  knob: ${k.path} set to 0x${(k.set ?? 0).toString(16)} for the test VM (was ${k.previous ?? '?'}; ${k.restored ? 'restored' : 'NOT restored'}); a small burst replaced the 2^31 climb`
    : `  knob: not used (${k.note ?? 'absent'}): the burst climbs the whole way`);
  const b = r.burst;
  lines.push(`  burst: ${b.done} of ${b.requested} invalidations${b.limited ? ` (limited; ${b.needed} needed)` : ''}` +
    (b.seconds !== null ? ` in ${b.seconds.toFixed(2)} s` : '') + (b.ratePerSec ? ` (${humanRate(b.ratePerSec)})` : ''));
  lines.push(`  sequence: first ${r.seq.first ?? '?'}, highest ${r.seq.max ?? '?'}, past 0x80000000: ${r.seq.crossed ? 'yes' : 'no'}` +
    `${r.timeToCrossS !== null ? ` (seen after ${r.timeToCrossS.toFixed(1)} s)` : ''}; ${r.seq.mappedPastSignBit} page(s) mapped past it` +
    (r.seq.signExtended ? `; ${r.seq.signExtended} sign-extended snapshots` : ''));
  if (r.run1) lines.push(`  run 1: pf_taken ${r.run1.pfTaken}, pf_fixed ${r.run1.pfFixed} (${r.pages} pages)`);
  if (r.run2) lines.push(`  run 2: ${r.run2.completed ? `pf_taken ${r.run2.pfTaken}, pf_fixed ${r.run2.pfFixed}` : 'did not complete (cancelled)'}`);
  if (r.stuck) {
    const s = r.stuck;
    const h = (x: string | null) => (x === null ? 'not visible' : `0x${x}`);
    lines.push(`  stuck vCPU: tid ${s.tid}, gpa ${h(s.gpa)}, ${s.attempts} attempts, mmu_seq ${h(s.mmuSeqLast)}, ` +
      `fault seq ${h(s.faultSeqLast)}, in progress ${s.inProgress ?? 'not visible'}, cause ${s.cause} (${s.confidence}, ${s.decidedBy})`);
  }
  if (r.tracer) lines.push(`  tracer: ${r.tracer.mode} mode, ${r.tracer.submitted} records, ${r.tracer.dropped} lost`);
  lines.push(`  BTF/version table (not used for the verdict): ${r.kernelJudgement.affected === null ? 'cannot tell' : r.kernelJudgement.affected ? 'affected' : 'not affected'} (${r.kernelJudgement.decidedBy ?? 'no evidence'})`);
  lines.push(`  verdict after ${r.timeToVerdictS.toFixed(1)} s`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  return lines.join('\n') + '\n';
}

export function register(program: Command): void {
  program
    .command('prove')
    .description("actively test this host's KVM for the 0x80000000 sequence bug: drive a throwaway VM's invalidation sequence past 0x80000000 and watch its next faults")
    .option('--mode <mode>', MODE_HELP, mode, 'auto')
    .option('--json', 'JSON lines: {"type":"progress",...} every second, then one {"type":"result","verdict":...} with the evidence')
    .option('--no-knob', `do not use ${INITIAL_SEQ_KNOB} even where it exists (climb the whole 2^31)`)
    .option('--knob-start <seq>', 'starting sequence of the test VM through the knob (default 0x7ffffff0)', seqValue)
    .option('--max-invalidations <n>', 'cap the burst (e.g. 10M); if 0x80000000 is not reached, the answer is inconclusive', count('--max-invalidations'))
    .option('--pages <n>', 'pages the guest touches per run (default 256)', positiveInt('--pages', 65536))
    .option('--stuck-seconds <s>', 'retrying one gpa this long without a mapping is stuck (default 2)', seconds('--stuck-seconds'))
    .option('--give-up <s>', 'run 2 without a mapped page this long ends the test (default 10)', seconds('--give-up'))
    .addHelpText('after', `
What it does: one throwaway VM (the built-in guest, in this process) touches its pages (run 1);
then single-page madvise(MADV_DONTNEED) calls, one KVM invalidation each, push the VM's
mmu_invalidate_seq past 0x80000000; then the guest faults every page again (run 2) under the
tracer. Affected kernels (is_page_fault_stale with an int snapshot) retry run 2's first fault
forever: the vCPU is reported stuck with the bug's signature and the VM is cancelled.
No version table is used: the answer is what this host's KVM did.

Without the test knob a real host needs 2^31 invalidations: about 10-25 minutes at 1.5-3.8M/s
(47 min at 755k/s on a 2-core KVM PVM host).
Test kernels with ${INITIAL_SEQ_KNOB} (0644) start the VM at
0x7ffffff0 instead (the old value is restored as soon as the VM exists; a VM created by someone
else in that instant would start there too) and need ~80 invalidations.

Verdicts and exit codes: not-affected 0, affected 1, inconclusive 2 (the reason is printed:
e.g. the sequence was never seen past 0x80000000, or the tracer cannot see the fault path);
130/143 after Ctrl-C / SIGTERM (the VM is cancelled, the knob restored, the probes detached).

Examples:
  sudo kvmfault prove                                  about 10-25 min without the knob
  sudo kvmfault prove --json | tail -1 | jq .verdict
  sudo kvmfault prove --max-invalidations 100M         a bounded try: inconclusive if short
  sudo kvmfault prove --mode kprobe --knob-start 0x7fffff00   on a test kernel with the knob`)
    .action(async (f: Flags) => {
      const session = startSession();
      // a forced exit (second Ctrl-C) must not leave the knob set: put the old value back
      let knobBefore: string | null = null;
      try {
        knobBefore = readFileSync(INITIAL_SEQ_KNOB, 'utf8').trim();
      } catch {
        /* no knob on this kernel */
      }
      session.onClose(() => {
        if (knobBefore === null) return;
        try {
          if (readFileSync(INITIAL_SEQ_KNOB, 'utf8').trim() !== knobBefore) writeFileSync(INITIAL_SEQ_KNOB, knobBefore);
        } catch {
          /* best effort at exit */
        }
      });
      const status = new StatusLine();
      try {
        const r = await prove({
          mode: f.mode,
          useKnob: f.knob,
          knobStart: f.knobStart,
          maxInvalidations: f.maxInvalidations,
          pages: f.pages,
          stuckSeconds: f.stuckSeconds,
          noProgressSeconds: f.giveUp,
          signal: session.signal,
          onProgress: (p) => {
            if (f.json) out(session, JSON.stringify({ type: 'progress', ...p }) + '\n');
            else status.update(statusText(p));
          },
        });
        status.clear();
        if (f.json) out(session, JSON.stringify({ type: 'result', ...r }) + '\n');
        else out(session, human(r));
        process.exitCode = session.exitCode ?? r.exitCode;
      } finally {
        status.clear();
        session.dispose();
      }
    });
}
