/**
 * kvmfault workload: start the built-in KVM guest and print KVM's own fault counters per run.
 * Exit: 0 ok (also when stopped with Ctrl-C), 1 the guest misbehaved or ran emulated,
 * 2 bad usage or no usable KVM here.
 */
import type { Command } from 'commander';
import {
  runWorkload,
  WorkloadError,
  type WorkloadInfo,
  type WorkloadOptions,
  type WorkloadResult,
  type WorkloadRun,
} from '../../workload';
import { CliError, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE } from '../errors';

interface Flags {
  pattern?: string;
  sizeMib?: number;
  stride?: number;
  runs?: number;
  duration?: number;
  rate?: number;
  vcpus?: number;
  vms?: number;
  touches?: number;
  hotPages?: number;
  seed?: number;
  invalidate?: string;
  invalidateMethod?: string;
  invalidateInterval?: number;
  host?: string;
  json?: boolean;
}

// Option names in validation messages -> the flags the user typed.
const FLAG_NAMES: Record<string, string> = {
  sizeMiB: '--size-mib',
  stride: '--stride',
  runs: '--runs',
  duration: '--duration',
  rate: '--rate',
  vcpus: '--vcpus',
  vms: '--vms',
  touches: '--touches',
  hotPages: '--hot-pages',
  seed: '--seed',
  pattern: '--pattern',
  invalidate: '--invalidate',
  invalidateMethod: '--invalidate-method',
  invalidateIntervalUs: '--invalidate-interval',
  host: '--host',
};

function number(flag: string) {
  return (text: string): number => {
    const n = Number(text);
    if (text.trim() === '' || !Number.isFinite(n)) throw new CliError(`${flag} must be a number (got "${text}")`);
    return n;
  };
}

const COLUMNS = ['run', 'ms', 'touches', 'pages', 'verified', 'pf_taken', 'pf_fixed', 'retries', 'spurious', 'emulate', 'faults/s', 'inval'];
const WIDTHS = [4, 9, 9, 8, 8, 9, 9, 8, 8, 8, 10, 6];

function row(cells: (string | number)[]): string {
  return cells.map((c, i) => String(c).padStart(WIDTHS[i])).join(' ') + '\n';
}

function runRow(r: WorkloadRun): string {
  return row([
    r.index,
    r.durationMs.toFixed(1),
    r.touches,
    r.pagesTouched,
    r.pagesVerified,
    r.faults,
    r.vcpu.pf_fixed ?? 0,
    r.retries,
    r.vcpu.pf_spurious ?? 0,
    r.vcpu.pf_emulate ?? 0,
    Math.round(r.faultsPerSec),
    r.invalidations,
  ]) + (r.truncated ? '     (cut short by --duration)\n' : '');
}

function header(i: WorkloadInfo): string {
  const o = i.options;
  const vms = i.vms.map((v) => `vm${v.index} [${v.tids.join(' ')}]`).join(', ');
  return (
    `host: ${i.host} — ${i.hostDetail}\n` +
    `pid ${i.pid}, vCPU threads ${vms}\n` +
    `${o.pattern}, ${o.sizeBytes / 1048576} MiB per VM at gpa 0x${i.regionGpa.toString(16)}, stride ${o.stride}, ` +
    `${i.pagesPerRun} pages per run, guest store rip 0x${i.guestStoreRip.toString(16)}, ` +
    `invalidate ${o.invalidate}${o.invalidate === 'none' ? '' : ` (${o.invalidateMethod})`}` +
    `${o.rate ? `, rate ${o.rate}/s per vCPU` : ''}\n` +
    row(COLUMNS)
  );
}

function summary(r: WorkloadResult): string {
  const t = r.total;
  return (
    `total: ${r.runs.length} runs, ${t.durationMs.toFixed(1)} ms, ${t.faults} faults (${t.retries} retried), ` +
    `${Math.round(t.faultsPerSec)} faults/s, ${t.pagesVerified}/${t.pagesTouched} writes verified` +
    (t.pagesLost ? `, ${t.pagesLost} wiped by invalidations and rewritten` : '') +
    '\n'
  );
}

function toOptions(f: Flags): WorkloadOptions {
  return {
    pattern: f.pattern as WorkloadOptions['pattern'],
    sizeMiB: f.sizeMib,
    stride: f.stride,
    runs: f.runs,
    duration: f.duration,
    rate: f.rate,
    vcpus: f.vcpus,
    vms: f.vms,
    touches: f.touches,
    hotPages: f.hotPages,
    seed: f.seed,
    invalidate: f.invalidate as WorkloadOptions['invalidate'],
    invalidateMethod: f.invalidateMethod as WorkloadOptions['invalidateMethod'],
    invalidateIntervalUs: f.invalidateInterval,
    host: f.host as WorkloadOptions['host'],
  };
}

async function action(f: Flags): Promise<void> {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const out = (s: string) => void (f.json ? undefined : process.stdout.write(s));
  let result: WorkloadResult;
  let stopped = false;
  try {
    const options = toOptions(f);
    options.signal = ac.signal;
    options.onStart = (i) => out(header(i));
    options.onRun = (r) => out(runRow(r));
    result = await runWorkload(options);
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) {
      let msg = e.message;
      // longest names first: 'invalidate' is a prefix of 'invalidateMethod'
      for (const [name, flag] of Object.entries(FLAG_NAMES).sort((a, b) => b[0].length - a[0].length)) msg = msg.split(`options.${name}`).join(flag);
      throw new CliError(msg, EXIT_USAGE);
    }
    const err = e as Error & { partial?: WorkloadResult };
    if (err.name === 'AbortError') {
      if (!err.partial) return;
      result = err.partial; // Ctrl-C: report what ran
      stopped = true;
    } else if (e instanceof WorkloadError) {
      const env = ['KVM_UNAVAILABLE', 'KVM_PERMISSION', 'UNSUPPORTED_HOST'].includes(e.code);
      throw new CliError(`workload: ${e.message}`, env ? EXIT_USAGE : EXIT_PROBLEM);
    } else {
      throw e;
    }
  } finally {
    process.removeListener('SIGINT', stop);
    process.removeListener('SIGTERM', stop);
  }
  if (f.json) {
    process.stdout.write(JSON.stringify({ ...result, stopped }, null, 2) + '\n');
  } else {
    out(summary(result));
    for (const w of result.warnings) process.stderr.write(`kvmfault: warning: ${w}\n`);
  }
  process.exitCode = result.warnings.length ? EXIT_PROBLEM : EXIT_OK;
}

export function register(program: Command): void {
  program
    .command('workload')
    .description("start kvmfault's built-in KVM guest: real page faults in a chosen pattern, with KVM's own fault counters per run")
    .option('--pattern <p>', 'sequential (one hot RIP, every fault on the next page) | random | hot', 'sequential')
    .option('--size-mib <n>', 'guest region touched per VM, MiB (default 64)', number('--size-mib'))
    .option('--stride <bytes>', 'bytes between touches, a multiple of 4096 (default 4096)', number('--stride'))
    .option('--runs <n>', 'runs over the region (default 1; unlimited with --duration)', number('--runs'))
    .option('--duration <s>', 'stop after this many seconds', number('--duration'))
    .option('--rate <n>', 'touches per second per vCPU (default: as fast as KVM allows)', number('--rate'))
    .option('--vcpus <n>', 'vCPUs per VM, one thread each (default 1)', number('--vcpus'))
    .option('--vms <n>', 'VMs running at once (default 1)', number('--vms'))
    .option('--touches <n>', 'touches per vCPU per run (default: one per page)', number('--touches'))
    .option('--hot-pages <n>', 'hot pattern: pages in each vCPU\'s hot set (default 64)', number('--hot-pages'))
    .option('--seed <n>', 'random/hot: start of the walk', number('--seed'))
    .option('--invalidate <when>', 'none | between (refault every page each run) | concurrent (race the guest)', 'none')
    .option('--invalidate-method <m>', 'dontneed | remap | mprotect', 'dontneed')
    .option('--invalidate-interval <us>', 'concurrent: µs between invalidations of a 2 MiB window (default 100)', number('--invalidate-interval'))
    .option('--host <kind>', 'guest setup: auto | pvm | vmx | svm', 'auto')
    .option('--json', 'print the whole result (runs with every KVM stat delta, tids, host) as JSON')
    .addHelpText(
      'after',
      `
Examples:
  kvmfault workload --size-mib 64 --runs 3 --invalidate between
      three runs, each faulting on all 16384 pages again (pf_taken 16385, 16384, 16384)
  kvmfault workload --invalidate concurrent --duration 30
      faults racing MMU-notifier invalidations for 30 s (the detector's "retrying" case)
  kvmfault workload --vms 2 --vcpus 2 --pattern random --rate 20000 --duration 60
      two VMs, four vCPU threads, 20k faults/s each, for a minute
Needs read/write access to /dev/kvm (root, or the kvm group).`,
    )
    .action(action);
}
