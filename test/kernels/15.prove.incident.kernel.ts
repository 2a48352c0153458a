/**
 * `kvmfault prove` on the incident kernels (scripts/kernels/matrix.sh runs *.incident.kernel.js
 * on the 6.1-bug / 6.1-fixed lines, KVMFAULT_KERNEL_LINE=<line> in the guest): Debian 6.1 with
 * kvm.ko rebuilt with the bug (is_page_fault_stale takes an int mmu_seq) or without it, both with
 * the knob kvm.initial_invalidate_seq. The CLI itself is run (a child node process, as a user
 * would), so the exit code, the JSON result, the cancelled VM and the restored knob are checked.
 *
 *   6.1-bug:   prove says affected (exit 1): a vCPU stuck with the signature, VM cancelled
 *   6.1-fixed: prove says not-affected (exit 0): run 2's pages mapped with seq >= 0x80000000
 *   any line:  a burst capped below the crossing says inconclusive (exit 2), saying why
 *
 * Runnable directly on a kernel without the knob (e.g. 6.12): the knob test is then pending (a
 * 2^31 climb under QEMU TCG takes far too long), the capped test runs.
 * Each test prints one `@@kernels {...}` line with what it measured.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import * as path from 'node:path';
import { INITIAL_SEQ_KNOB, type ProveResult } from '../../lib/prove';

const CLI = path.resolve(__dirname, '../../lib/cli/main.js');
const LINE = process.env.KVMFAULT_KERNEL_LINE ?? '';

function report(what: string, data: object): void {
  console.log(`@@kernels ${JSON.stringify({ kernel: release(), line: LINE || null, what, ...data })}`);
}

function requireKvmKernel(): void {
  if (process.getuid?.() !== 0) throw new Error('kernel tests need root (run them through `npm run test:kernels`)');
  if (!existsSync('/dev/kvm')) throw new Error(`kernel ${release()}: no /dev/kvm (run through scripts/kernels/matrix.sh, which loads kvm_amd)`);
}

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  wallS: number;
  progress: { phase: string }[];
  result: ProveResult & { type: string };
  stderr: string;
}

/** Runs `kvmfault prove --json ...args`; fails with its output when it does not end in time.
 *  `interrupt`: send SIGINT once the first progress line of that phase is out. */
function runProve(args: string[], timeoutMs: number, interrupt?: string): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CLI, 'prove', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (interrupt && !sent && stdout.includes(`"phase":"${interrupt}"`)) {
        sent = true;
        setTimeout(() => child.kill('SIGINT'), 1000);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kvmfault prove ${args.join(' ')} did not end within ${timeoutMs / 1000} s\nstdout:\n${stdout.slice(-3000)}\nstderr:\n${stderr.slice(-3000)}`));
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const lines = stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; phase: string });
      const result = lines.find((l) => l.type === 'result') as unknown as Ran['result'] | undefined;
      if (!result) {
        reject(new Error(`no result line from kvmfault prove (exit ${code}, signal ${signal})\nstdout:\n${stdout.slice(-3000)}\nstderr:\n${stderr.slice(-3000)}`));
        return;
      }
      resolve({ code, signal, wallS: (Date.now() - t0) / 1000, progress: lines.filter((l) => l.type === 'progress'), result, stderr });
    });
  });
}

function facts(r: Ran): object {
  const x = r.result;
  return {
    exit: r.code, verdict: x.verdict, reason: x.reason, wallS: r.wallS, timeToVerdictS: x.timeToVerdictS,
    timeToCrossS: x.timeToCrossS, tracer: x.tracer, knob: x.knob, burst: x.burst, seq: x.seq, run1: x.run1, run2: x.run2,
    attempts: x.attempts,
    stuck: x.stuck && { gpa: x.stuck.gpa, cause: x.stuck.cause, confidence: x.stuck.confidence, decidedBy: x.stuck.decidedBy,
      attempts: x.stuck.attempts, mmuSeqLast: x.stuck.mmuSeqLast, faultSeqLast: x.stuck.faultSeqLast, inProgress: x.stuck.inProgress },
    kernelJudgement: x.kernelJudgement.affected, phases: [...new Set(r.progress.map((p) => p.phase))], warnings: x.warnings,
  };
}

function knobValue(): string | null {
  try {
    return readFileSync(INITIAL_SEQ_KNOB, 'utf8').trim();
  } catch {
    return null;
  }
}

describe(`kvmfault prove on ${release()}${LINE ? ` (line ${LINE})` : ''}`, function () {
  this.timeout(300_000);
  before(requireKvmKernel);

  it('with the knob: affected on a -bug kernel (exit 1), not-affected on a -fixed kernel (exit 0)', async function () {
    const before = knobValue();
    if (before === null) {
      if (/-(bug|fixed)$/.test(LINE)) throw new Error(`line ${LINE} must have ${INITIAL_SEQ_KNOB} (scripts/kernels/incident.sh builds it in)`);
      // without the knob a 2^31 climb under QEMU TCG does not fit any test timeout; never reached
      // in CI (this file runs only on the -bug/-fixed lines, which have the knob: thrown above)
      console.log(`      [skipped: ${INITIAL_SEQ_KNOB} is missing on ${release()}, and without it prove needs 2^31 invalidations]`);
      this.skip();
    }
    const r = await runProve([], 240_000);
    report('prove', facts(r));
    const x = r.result;
    assert.equal(knobValue(), before, 'the knob was not restored');
    assert.equal(x.knob.used, true, `knob not used: ${x.knob.note}`);
    assert.equal(x.knob.restored, true);
    assert.ok(x.burst.done >= 0x80000000 - (x.knob.set ?? 0), `burst ${x.burst.done} too short`);
    assert.ok(x.run1 && x.run1.pfFixed >= x.pages, `run 1 did not map its pages: ${JSON.stringify(x.run1)}`);
    if (LINE.endsWith('-bug')) {
      assert.equal(x.verdict, 'affected', x.reason);
      assert.equal(r.code, 1);
      assert.ok(x.stuck, 'no stuck vCPU in the evidence');
      assert.equal(x.stuck.cause, 'seq-sign-extension');
      assert.ok(x.stuck.attempts >= 1000, `${x.stuck.attempts} attempts`);
      assert.ok(parseInt(x.stuck.mmuSeqLast ?? '0', 16) >= 0x80000000, `stuck at seq ${x.stuck.mmuSeqLast}`);
      assert.equal(x.seq.mappedPastSignBit, 0, 'a page mapped past 0x80000000 on the bug kernel');
      assert.equal(x.run2?.completed, false, 'run 2 completed on the bug kernel');
    } else if (LINE.endsWith('-fixed')) {
      assert.equal(x.verdict, 'not-affected', x.reason);
      assert.equal(r.code, 0);
      assert.equal(x.seq.crossed, true);
      assert.equal(x.seq.mappedPastSignBit, x.pages, `${x.seq.mappedPastSignBit} of ${x.pages} pages mapped past 0x80000000`);
      assert.ok(x.run2 && x.run2.completed && x.run2.pfFixed >= x.pages, `run 2: ${JSON.stringify(x.run2)}`);
      assert.equal(x.stuck, null);
    } else {
      // a kernel with the knob outside the matrix's incident lines: any definite answer
      assert.notEqual(x.verdict, 'inconclusive', x.reason);
    }
  });

  it('a burst capped below the crossing answers inconclusive (exit 2) and says why', async () => {
    const before = knobValue();
    const r = await runProve(['--no-knob', '--max-invalidations', '2000'], 240_000);
    report('prove-capped', facts(r));
    const x = r.result;
    assert.equal(knobValue(), before, 'the knob changed');
    assert.equal(x.verdict, 'inconclusive', x.reason);
    assert.equal(r.code, 2);
    assert.equal(x.knob.used, false);
    assert.equal(x.burst.limited, true);
    assert.equal(x.burst.done, 2000);
    assert.equal(x.seq.crossed, false);
    assert.match(x.reason, /never seen past 0x80000000/);
    assert.ok(x.run2?.completed, 'run 2 did not complete');
    // the sequence moved by the burst (+1 for the between-run invalidation) as KVM counts it
    const moved = parseInt(x.seq.max ?? '0', 16) - parseInt(x.seq.first ?? '0', 16);
    assert.ok(moved >= 2000, `sequence moved by ${moved} for a burst of 2000`);
  });

  it('Ctrl-C during the burst: exit 130, a result saying it stopped, the VM cancelled, the knob as before', async () => {
    const before = knobValue();
    const r = await runProve(['--no-knob'], 120_000, 'burst');
    report('prove-sigint', facts(r));
    const x = r.result;
    assert.equal(r.code, 130, `exit ${r.code}: ${r.stderr}`);
    assert.equal(x.verdict, 'inconclusive');
    assert.equal(x.stopped, 'signal');
    assert.match(x.reason, /stopped during the burst/);
    assert.ok(x.burst.done > 0 && x.burst.done < x.burst.requested, `burst ${x.burst.done} of ${x.burst.requested}`);
    assert.equal(knobValue(), before);
  });
});
