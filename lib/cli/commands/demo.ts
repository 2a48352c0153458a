/**
 * kvmfault demo: the built-in guests (lib/workload.ts) under the live detector, so a new user
 * sees real verdicts on any KVM host: VM 1 zeroes its memory page after page (hot RIP, every
 * fault on the next page: progressing), VM 2 races a host thread that keeps invalidating its
 * memory (faults retried after mmu_notifier invalidations: retrying, never stuck).
 *
 * Also the default job (`kvmfault` with no command): watch the VMs running on this host, or
 * the demo when there are none.
 */
import type { Command } from 'commander';
import { noVmsFound, scanRunningVms } from '../../doctor';
import { analyzeFile, formatReport } from '../../analyze';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { escapeControl } from '../../escape';
import { runWorkload, WorkloadError, WorkloadResult } from '../../workload';
import { CliError, EXIT_OK, EXIT_USAGE } from '../errors';
import { LiveSession, startSession } from '../lifecycle';
import { mode, MODE_HELP, ModeChoice, seconds } from '../options';
import { runWatch } from '../watchview';

interface DemoFlags {
  duration: number;
  mode: ModeChoice;
  json?: boolean;
  interval?: number;
}

const DEFAULT_DURATION_S = 20;
/** the workload's longest duration: the demo's guests are always stopped before it */
const GUESTS_UNTIL_STOPPED_S = 7 * 24 * 3600;

async function runDemo(opts: DemoFlags, session: LiveSession): Promise<number> {
  const stopGuests = new AbortController();
  session.onClose(() => stopGuests.abort());
  session.signal.addEventListener('abort', () => stopGuests.abort(), { once: true });
  // the guests fault until the demo stops them (stopGuests, in finally): a duration counted from
  // here would end them early where attaching the probes is slow (seconds under emulation)
  const common = { sizeMiB: 16, duration: GUESTS_UNTIL_STOPPED_S, signal: stopGuests.signal };
  const guests: Promise<WorkloadResult | null>[] = [
    // progress: one hot RIP, each fault on the next page; memory released between runs so it faults again
    runWorkload({ ...common, pattern: 'sequential', invalidate: 'between'}),
    // race: a host thread invalidates 2 MiB windows while the guest faults them in
    runWorkload({ ...common, pattern: 'sequential', invalidate: 'concurrent', invalidateIntervalUs: 200 }),
  ].map((p) => p.catch((e: Error & { code?: string }) => {
    if (e.name === 'AbortError' || e.code === 'ABORT_ERR') return null;
    session.stop('done');
    throw e;
  }));
  const banner = `demo: two built-in KVM guests in this process (pid ${process.pid}), ${opts.duration} s: ` +
    'VM 1 writes page after page (expect progressing), VM 2 races host invalidations (expect retrying, never stuck)';
  try {
    const r = await runWatch({ pid: process.pid, mode: opts.mode, json: opts.json, intervalS: opts.interval, banner }, session);
    return r.exitCode;
  } finally {
    stopGuests.abort();
    const results = await Promise.allSettled(guests);
    const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (failed) {
      const e = failed.reason as Error;
      throw new CliError(`the built-in guest failed: ${e.message}${e instanceof WorkloadError ? ' (run kvmfault doctor)' : ''}`, EXIT_USAGE);
    }
  }
}

export function register(program: Command): void {
  program
    .command('demo')
    .description('run two built-in KVM guests (progress, and an invalidation race) under the live detector: real verdicts on any KVM host')
    .option('-d, --duration <seconds>', `how long to run (default ${DEFAULT_DURATION_S})`, seconds('--duration'), DEFAULT_DURATION_S)
    .option('--mode <mode>', MODE_HELP, mode, 'auto')
    .option('--json', 'JSON lines as `watch --json`')
    .option('-i, --interval <seconds>', 'seconds between redraws', seconds('--interval'))
    .addHelpText('after', `
Examples:
  sudo kvmfault demo                  20 s of live verdicts from two built-in guests
  sudo kvmfault demo --duration 60
  sudo kvmfault demo --json --duration 5 | jq -c 'select(.type == "final") | .vcpus[] | {tid, state}'`)
    .action(async (opts: DemoFlags) => {
      const session = startSession({ durationS: opts.duration });
      try {
        process.exitCode = await runDemo(opts, session);
      } finally {
        session.dispose();
      }
    });

  // the main job: `kvmfault` alone
  program
    .addHelpText('after', `
With no command, kvmfault watches the VMs running on this host, or runs the demo when none run
(or, on a host without /dev/kvm, replays the incident's recorded trace):
  sudo kvmfault                      watch every VM here, or the built-in demo
  sudo kvmfault doctor               check this host first`)
    .allowExcessArguments(true)
    .action(async (_opts: unknown, cmd: Command) => {
      if (cmd.args.length > 0) throw new CliError(`unknown command "${cmd.args[0]}" (kvmfault --help lists the commands)`, EXIT_USAGE);
      const scan = scanRunningVms({ excludePids: [process.pid] });
      const vms = scan.vms;
      const session = startSession({ durationS: vms.length ? undefined : DEFAULT_DURATION_S });
      try {
        if (vms.length > 0) {
          process.stderr.write(`kvmfault: ${vms.length} VMM process(es) running (${vms.map((v) => `${escapeControl(v.comm)} pid ${v.pid}`).join(', ')}): watching them (Ctrl-C stops)\n`);
          process.exitCode = (await runWatch({ mode: 'auto' }, session)).exitCode;
        } else if (!existsSync('/dev/kvm')) {
          // No VM can run here (no KVM, e.g. a cloud VM without nested virtualisation): show what
          // kvmfault says about the incident's own recorded trace instead, and how to go on.
          const trace = path.join(__dirname, '../../../../examples/incident-trace.log');
          process.stderr.write('kvmfault: no VMs run on this host and there is no /dev/kvm to run the built-in guest ' +
            `(\`kvmfault doctor\` says why): replaying the incident's recorded trace (${path.relative(process.cwd(), trace)}) instead\n`);
          process.stdout.write(formatReport(await analyzeFile(trace)) + '\n');
          process.stderr.write('kvmfault: that was a recording. On a KVM host, `kvmfault` watches the running VMs live; ' +
            '`kvmfault watch --counters` is the cheap first look; `kvmfault analyze FILE` reads your own traces.\n');
          process.exitCode = EXIT_OK;
        } else {
          process.stderr.write(scan.unreadable === 0
            ? 'kvmfault: no VMs run on this host (no process holds a kvm-vm fd): running the built-in demo instead\n'
            : `kvmfault: no VM visible to this user (${noVmsFound(scan).replace(/^none visible: /, '')}; run as root): running the built-in demo instead\n`);
          process.exitCode = await runDemo({ duration: DEFAULT_DURATION_S, mode: 'auto' }, session);
        }
      } finally {
        session.dispose();
      }
      if (process.exitCode === undefined) process.exitCode = EXIT_OK;
    });
}
