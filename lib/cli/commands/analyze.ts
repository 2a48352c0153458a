/**
 * kvmfault analyze <file>: capture file or bpftrace log -> per-vCPU verdicts.
 * Exit: 0 nothing stuck, 1 a vCPU is stuck, 2 bad input/usage (or a damaged capture with
 * nothing stuck in what was readable).
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { AnalyzeInputError, analyzeFile, formatReport, reportJson } from '../../analyze';
import { escapeControl, escapeJsonControl } from '../../escape';
import { renderHtmlReport } from '../../report/html';
import { CliError, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE } from '../errors';

function positiveNumber(name: string) {
  return (text: string): number => {
    const n = Number(text);
    if (!(n > 0) || !Number.isFinite(n)) throw new CliError(`${name} must be a positive number (got "${text}")`);
    return n;
  };
}

export function register(program: Command): void {
  program
    .command('analyze')
    .description('classify every vCPU of a capture file or a text log (bpftrace, trace-cmd report, perf script, KVM counters): progressing, retrying or stuck (with cause and evidence)')
    .argument('<file>', 'capture file (kvmfault record), or a text log: the incident\'s bpftrace output (v2/v3, uniq -c), `trace-cmd report`, `perf script`, debugfs counter snapshots; "-" reads standard input')
    .option('--json', 'print the report as JSON (a `vcpus` array with pid, tid, state, cause, gpa, attempts and evidence)')
    .option('--html <file>', 'also write the report as one self-contained HTML page (charts of the sequence per VM and the attempts per vCPU; no network, no script)')
    .option('--kernel <release>', "judge against this kernel release (the traced host's uname -r) instead of the capture's")
    .option('--stuck-attempts <n>', 'attempts on one gpa without progress before stuck (default 1000)', positiveNumber('--stuck-attempts'))
    .option('--stuck-seconds <s>', 'and for at least this long (default 1)', positiveNumber('--stuck-seconds'))
    .addHelpText('after', `
Examples:
  kvmfault analyze test/fixtures/stuck-seq-sign-extension.log
  kvmfault analyze --html report.html vm.kvmf        the text report, and report.html to open in a browser
  kvmfault analyze --json vm.kvmf | jq '.vcpus[] | select(.state == "stuck")'`)
    .action(async (file: string, opts: { json?: boolean; html?: string; kernel?: string; stuckAttempts?: number; stuckSeconds?: number }) => {
      let report;
      try {
        report = await analyzeFile(file, {
          timeline: opts.html !== undefined,
          kernel: opts.kernel,
          detector: {
            stuckAttempts: opts.stuckAttempts,
            stuckNs: opts.stuckSeconds === undefined ? undefined : opts.stuckSeconds * 1e9,
          },
        });
      } catch (e) {
        if (e instanceof AnalyzeInputError) throw new CliError(e.message, EXIT_USAGE);
        throw e;
      }
      if (opts.html !== undefined) {
        const html = renderHtmlReport(report, { version: require('../../../../package.json').version as string });
        try {
          writeFileSync(opts.html, html);
        } catch (e) {
          throw new CliError(`cannot write the HTML report to ${escapeControl(opts.html)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (pick a writable path)`, EXIT_USAGE);
        }
        process.stderr.write(`kvmfault: wrote ${escapeControl(opts.html)} (${(Buffer.byteLength(html) / 1024).toFixed(1)} KiB)\n`);
      }
      // JSON.stringify escapes C0 controls; DEL, C1 and bidi overrides from the input are escaped too
      process.stdout.write(opts.json ? escapeJsonControl(JSON.stringify(reportJson(report), null, 2)) + '\n' : formatReport(report));
      const damaged = (report.capture?.damage.length ?? 0) > 0;
      process.exitCode = report.stuck > 0 || report.stuckVms > 0 ? EXIT_PROBLEM : damaged ? EXIT_USAGE : EXIT_OK;
    });
}
