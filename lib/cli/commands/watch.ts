/**
 * kvmfault watch: the live detector, per VM and vCPU.
 * Exit: 0, 1 with --fail-on-stuck when a vCPU was stuck, 130/143 after SIGINT/SIGTERM, 2 cannot trace.
 */
import type { Command } from 'commander';
import { startSession } from '../lifecycle';
import { CliError, EXIT_USAGE } from '../errors';
import { runWatch } from '../watchview';
import { runCounterWatch } from '../counterview';
import { mode, MODE_HELP, ModeChoice, pid, positiveInt, seconds } from '../options';

interface Flags {
  pid?: number;
  mode: ModeChoice;
  json?: boolean;
  failOnStuck?: boolean;
  duration?: number;
  interval?: number;
  stuckAttempts?: number;
  stuckSeconds?: number;
  counters?: boolean;
}

export function register(program: Command): void {
  program
    .command('watch')
    .description('live verdicts per VM and vCPU: fault rate, progressing/retrying/stuck, cause, and time left until the sequence reaches 0x80000000')
    .option('-p, --pid <pid>', 'only this VMM process', pid('--pid'))
    .option('--mode <mode>', MODE_HELP, mode, 'auto')
    .option('--json', 'JSON lines: a snapshot per interval ({"type":"snapshot",...}) and one per verdict change ({"type":"alert",...})')
    .option('--fail-on-stuck', 'exit 1 as soon as a vCPU is stuck (with --counters: as soon as a VM is suspect), for scripts and health checks')
    .option('--counters', 'KVM\'s own counters per VM and vCPU instead of the tracer: no per-fault cost, a SUSPECT state instead of a cause')
    .option('-d, --duration <seconds>', 'stop after this long', seconds('--duration'))
    .option('-i, --interval <seconds>', 'seconds between redraws (default 1 on a terminal, 10 when piped)', seconds('--interval'))
    .option('--stuck-attempts <n>', 'attempts on one gpa without progress before stuck (default 1000)', positiveInt('--stuck-attempts'))
    .option('--stuck-seconds <s>', 'and for at least this long (default 1)', seconds('--stuck-seconds'))
    .addHelpText('after', `
Examples:
  sudo kvmfault watch                              every VM on the host, redrawn in place
  sudo kvmfault watch --pid 4242 --fail-on-stuck --duration 60 || page-oncall
  sudo kvmfault watch --json | jq -c 'select(.type == "alert")'
  sudo kvmfault watch --counters                   the cheap first look: KVM's counters, no tracer

Columns: FAULTS/S (fault attempts per second), STATE, ATTEMPTS (on the current gpa since the
last progress), STUCK FOR, CAUSE (seq-sign-extension, invalidation-stuck, unknown; or why it
retries), GPA. Per VM: the invalidation sequence, its rate and the time left to 0x80000000.
With --counters: PF/S, FIXED/S, RETRIED/S (faults KVM took and did not fix), EXITS/S per vCPU;
SUSPECT when faults are taken and none fixed.`)
    .action(async (opts: Flags) => {
      const session = startSession({ durationS: opts.duration });
      try {
        if (opts.counters) {
          if (opts.mode !== 'auto' || opts.stuckAttempts !== undefined || opts.stuckSeconds !== undefined) {
            throw new CliError('--counters reads KVM\'s counters, not the tracer: --mode, --stuck-attempts and --stuck-seconds do not apply', EXIT_USAGE);
          }
          process.exitCode = (await runCounterWatch({ pid: opts.pid, json: opts.json, failOnSuspect: opts.failOnStuck, intervalS: opts.interval }, session)).exitCode;
          return;
        }
        const r = await runWatch({
          pid: opts.pid, mode: opts.mode, json: opts.json, failOnStuck: opts.failOnStuck,
          intervalS: opts.interval, stuckAttempts: opts.stuckAttempts, stuckSeconds: opts.stuckSeconds,
        }, session);
        process.exitCode = r.exitCode;
      } finally {
        session.dispose();
      }
    });
}
