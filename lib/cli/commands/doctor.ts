/**
 * kvmfault doctor: can kvmfault trace here, and what on this host drives invalidation storms.
 * Exit: 0 no check failed, 1 a check failed.
 */
import type { Command } from 'commander';
import { formatDoctor, runDoctor } from '../../doctor';
import { EXIT_OK, EXIT_PROBLEM } from '../errors';
import { seconds } from '../options';

export function register(program: Command): void {
  program
    .command('doctor')
    .description('check this host: kernel bug, privileges, BTF, probe points and attach mode, /dev/kvm and running VMs, NUMA balancing, KSM, THP')
    .option('--json', 'print the report as JSON (checks plus the raw facts)')
    .option('--no-attach', 'do not try attaching the tracer (by default doctor opens and closes it once when root)')
    .option('--sources <seconds>', 'also trace every process this long and say which sources (KSM, NUMA balancing, compaction, the VMM\'s madvise, ...) invalidate which VMs', seconds('--sources'))
    .addHelpText('after', `
Examples:
  sudo kvmfault doctor              pass/warn/fail table with a remedy for each problem
  sudo kvmfault doctor --json | jq '.checks[] | select(.status != "pass")'
  sudo kvmfault doctor --sources 10     ... and 10 s of who invalidates which VM, with the remedy

Exit status: 0 when no check fails, 1 when one does.`)
    .action(async (opts: { json?: boolean; attach: boolean; sources?: number }) => {
      const report = await runDoctor({ tryTracer: opts.attach ? undefined : false, sourcesSeconds: opts.sources });
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatDoctor(report, { color: process.stdout.isTTY }));
      process.exitCode = report.summary.fail > 0 ? EXIT_PROBLEM : EXIT_OK;
    });
}
