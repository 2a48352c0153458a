/**
 * kvmfault doctor: can kvmfault trace here, and what on this host drives invalidation storms.
 * Exit: 0 no check failed, 1 a check failed.
 */
import type { Command } from 'commander';
import { formatDoctor, runDoctor } from '../../doctor';
import { EXIT_OK, EXIT_PROBLEM } from '../errors';

export function register(program: Command): void {
  program
    .command('doctor')
    .description('check this host: kernel bug, privileges, BTF, probe points and attach mode, /dev/kvm and running VMs, NUMA balancing, KSM, THP')
    .option('--json', 'print the report as JSON (checks plus the raw facts)')
    .option('--no-attach', 'do not try attaching the tracer (by default doctor opens and closes it once when root)')
    .addHelpText('after', `
Examples:
  sudo kvmfault doctor              pass/warn/fail table with a remedy for each problem
  sudo kvmfault doctor --json | jq '.checks[] | select(.status != "pass")'

Exit status: 0 when no check fails, 1 when one does.`)
    .action(async (opts: { json?: boolean; attach: boolean }) => {
      const report = await runDoctor({ tryTracer: opts.attach ? undefined : false });
      process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : formatDoctor(report, { color: process.stdout.isTTY }));
      process.exitCode = report.summary.fail > 0 ? EXIT_PROBLEM : EXIT_OK;
    });
}
