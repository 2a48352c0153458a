/**
 * kvmfault metrics --listen HOST:PORT: a Prometheus endpoint (/metrics).
 *   --mode counters (default): KVM's own counters for every VM, sampled every --interval (the
 *     fleet mode: ~0 cost), with --escalate tracing a VMM that turns suspect for a bounded time.
 *   --mode auto|tracepoint|kprobe|fentry: the full tracer and the live detector, every fault.
 * Exit: 0 after --duration, 130/143 after SIGINT/SIGTERM, 2 cannot trace or cannot listen.
 */
import type { AddressInfo } from 'node:net';
import type { Command } from 'commander';
import { StaleFaultDetector } from '../../detector';
import { hostKernel, retPfTable } from '../../kernels';
import { CounterView, CounterWatch } from '../../counters';
import { Escalator } from '../../escalate';
import { CounterMetrics, createMetricsServer, FaultMetrics } from '../../metrics';
import { InvalidationSources } from '../../sources';
import type { Registry } from 'prom-client';
import { MODE_CHOICES } from '../../probes';
import { CliError, EXIT_OK, EXIT_USAGE } from '../errors';
import { startSession } from '../lifecycle';
import { everyUntilStopped, openCounterSourceForCli, openTracerForCli } from '../live';
import { listenAddress, mode, ModeChoice, pid, positiveInt, seconds } from '../options';
import type { LiveSession } from '../lifecycle';

type MetricsMode = 'counters' | ModeChoice;

interface Flags {
  listen: { host: string; port: number };
  pid?: number;
  mode: MetricsMode;
  duration?: number;
  interval: number;
  source?: 'bpf-iter' | 'debugfs';
  suspectAttempts?: number;
  escalate?: boolean;
  escalateSeconds: number;
  escalateCooldown: number;
  escalateDir: string;
  escalateMode: ModeChoice;
}

function metricsMode(text: string): MetricsMode {
  return text === 'counters' ? 'counters' : mode(text);
}

function counterSource(text: string): 'bpf-iter' | 'debugfs' {
  if (text !== 'bpf-iter' && text !== 'debugfs') throw new CliError(`--source must be bpf-iter or debugfs (got "${text}")`, EXIT_USAGE);
  return text;
}

/** Serves the registry until the session ends (run() resolves when the data source is done). */
async function serve(opts: Flags, session: LiveSession, registry: Registry, what: string, run: () => Promise<void>): Promise<void> {
  const server = createMetricsServer(registry);
  session.onClose(() => server.close());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new CliError(
      `cannot listen on ${opts.listen.host}:${opts.listen.port}: ${e.code ?? e.message}` +
      (e.code === 'EADDRINUSE' ? ' (another exporter running? pick another port)' : ''), EXIT_USAGE)));
    server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  process.stderr.write(`kvmfault: serving http://${shown}:${addr.port}/metrics (${what}); Ctrl-C stops\n`);
  await run();
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** Counters mode: sample every interval until the session ends; escalate suspect VMMs if asked. */
async function runCounters(opts: Flags, session: LiveSession): Promise<void> {
  const source = openCounterSourceForCli(opts.source, session);
  const watch = new CounterWatch({ minAttempts: opts.suspectAttempts });
  const log = (event: Record<string, unknown>): void => { process.stderr.write(`kvmfault: escalation ${JSON.stringify(event)}\n`); };
  const escalator = opts.escalate ? new Escalator({ seconds: opts.escalateSeconds, cooldownSeconds: opts.escalateCooldown,
    captureDir: opts.escalateDir, mode: opts.escalateMode, log }) : null;
  let view: CounterView | null = null;
  const sampling = { samples: 0, lastSampleSeconds: 0, errors: 0 };
  const sample = (): void => {
    const t0 = process.hrtime.bigint();
    let all;
    try {
      all = source.sample();
    } catch (e) {
      // one failed sample must not take the exporter down: said, counted, the next one tried
      sampling.errors++;
      process.stderr.write(`kvmfault: counter sample failed (${sampling.errors} so far): ${(e as Error).message}\n`);
      return;
    }
    const samples = all.filter((s) => opts.pid === undefined || s.pid === opts.pid);
    view = watch.update(samples);
    sampling.lastSampleSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    sampling.samples++;
    escalator?.consider(view);
  };
  sample();
  const metrics = new CounterMetrics({ view: () => view, source: source.kind, kernel: hostKernel(), sampling: () => sampling, escalator });
  const what = `KVM counters from ${source.kind} every ${opts.interval} s${escalator ? `, escalating suspect VMMs for ${opts.escalateSeconds} s` : ''}`;
  await serve(opts, session, metrics.registry, what, async () => {
    try {
      await everyUntilStopped(session, opts.interval * 1000, sample);
    } finally {
      await escalator?.close();
    }
  });
}

export function register(program: Command): void {
  program
    .command('metrics')
    .description('serve live fault metrics in Prometheus text format (faults, retries, stuck vCPUs, sequence and time left per VM, drops, probe cost)')
    .option('-l, --listen <host:port>', 'address to serve /metrics on (port 0: any free port, printed at start)', listenAddress, listenAddress('127.0.0.1:9464'))
    .option('-p, --pid <pid>', 'only this VMM process', pid('--pid'))
    .option('--mode <mode>', `counters (KVM's own counters for every VM, ~0 cost), or the full tracer in attach mode ${MODE_CHOICES.join(', ')}`, metricsMode, 'counters')
    .option('-d, --duration <seconds>', 'stop after this long', seconds('--duration'))
    .option('-i, --interval <seconds>', 'counters: seconds between samples', seconds('--interval'), 5)
    .option('--source <source>', 'counters: bpf-iter (per vCPU, works under lockdown) or debugfs (per VM); default: bpf-iter, else debugfs', counterSource)
    .option('--suspect-attempts <n>', 'counters: faults in one interval, none fixed, before a vCPU is suspect (default 1000)', positiveInt('--suspect-attempts'))
    .option('--escalate', 'counters: when a VM turns suspect, trace its VMM for a while and export the verdict (one at a time, rate-limited)')
    .option('--escalate-seconds <s>', 'how long an escalation traces', seconds('--escalate-seconds'), 20)
    .option('--escalate-cooldown <s>', 'a VMM is escalated again only after this long', seconds('--escalate-cooldown'), 600)
    .option('--escalate-dir <dir>', 'capture file of each escalation goes here', '/var/tmp/kvmfault')
    .option('--escalate-mode <mode>', 'attach mode of escalations (tracepoint: streams even when attached to an already stuck vCPU)', mode, 'tracepoint')
    .addHelpText('after', `
Examples:
  sudo kvmfault metrics                             KVM's counters of every VM on http://127.0.0.1:9464/metrics
  sudo kvmfault metrics --escalate                  ... and trace a VMM that turns suspect, verdict as metrics
  sudo kvmfault metrics --mode auto                 every fault through the tracer and the detector
  curl -s 127.0.0.1:9464/metrics | grep -E 'kvmfault_(vm_suspect|kvm_pf_taken_total)'

Tracer modes: kvmfault_invalidations_total{vm,source} says what invalidates each VM (KSM, NUMA balancing,
the VMM's madvise, ...).
Counters mode: kvmfault_kvm_<stat>_total per vCPU (pf_taken, pf_fixed, exits, ...), kvmfault_vm_suspect
(pf_taken climbing, no fault fixed), the sequence gauges, kvmfault_escalation_verdict.
Probe cost (kvmfault_probe_cost_ns, tracer modes) needs: sysctl -w kernel.bpf_stats_enabled=1
Scrape config and alert rules: docs/prometheus.md`)
    .action(async (opts: Flags) => {
      const session = startSession({ durationS: opts.duration });
      try {
        if (opts.mode === 'counters') {
          await runCounters(opts, session);
        } else {
          const tracer = await openTracerForCli({ mode: opts.mode, pid: opts.pid }, session);
          const kernel = hostKernel();
          const detector = new StaleFaultDetector({ retPf: retPfTable(tracer.retPf, kernel), kernel });
          // invalidations counted for a VM only inside its memslots, read again every interval
          const memslots = tracer.memslots();
          const sources = new InvalidationSources((id) => tracer.stack(id), memslots);
          const metrics = new FaultMetrics({ detector, tracerStats: () => tracer.stats(), kernel, mode: tracer.mode, sources: () => sources.snapshot(),
            outsideGuestMemory: () => sources.outsideGuestMemory(), memslotMatch: () => sources.matchStats() });
          const refresh = setInterval(() => memslots.refresh(), opts.interval * 1000);
          await serve(opts, session, metrics.registry, `${tracer.mode} mode`, async () => {
            try {
              for await (const batch of tracer.events({ signal: session.signal })) {
                detector.push(batch);
                sources.add(batch);
              }
            } finally {
              clearInterval(refresh);
            }
            tracer.close();
          });
        }
      } finally {
        session.dispose();
      }
      process.exitCode = session.exitCode ?? EXIT_OK;
    });
}
