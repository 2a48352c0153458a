/**
 * kvmfault metrics --listen HOST:PORT: the live detector as a Prometheus endpoint (/metrics).
 * Exit: 0 after --duration, 130/143 after SIGINT/SIGTERM, 2 cannot trace or cannot listen.
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Command } from 'commander';
import { retPfTable, StaleFaultDetector } from '../../detector';
import { hostKernel } from '../../kernels';
import { FaultMetrics, metricsRequestListener } from '../../metrics';
import { CliError, EXIT_OK, EXIT_USAGE } from '../errors';
import { startSession } from '../lifecycle';
import { openTracerForCli } from '../live';
import { listenAddress, mode, ModeChoice, pid, seconds } from '../options';

interface Flags {
  listen: { host: string; port: number };
  pid?: number;
  mode: ModeChoice;
  duration?: number;
}

export function register(program: Command): void {
  program
    .command('metrics')
    .description('serve live fault metrics in Prometheus text format (faults, retries, stuck vCPUs, sequence and time left per VM, drops, probe cost)')
    .option('-l, --listen <host:port>', 'address to serve /metrics on (port 0: any free port, printed at start)', listenAddress, listenAddress('127.0.0.1:9464'))
    .option('-p, --pid <pid>', 'only this VMM process', pid('--pid'))
    .option('--mode <mode>', 'attach mode: auto, tracepoint, kprobe, fentry', mode, 'auto')
    .option('-d, --duration <seconds>', 'stop after this long', seconds('--duration'))
    .addHelpText('after', `
Examples:
  sudo kvmfault metrics                             serves http://127.0.0.1:9464/metrics
  sudo kvmfault metrics --listen 0.0.0.0:9464       for a Prometheus server elsewhere
  curl -s 127.0.0.1:9464/metrics | grep kvmfault_stuck_vcpus

Probe cost (kvmfault_probe_cost_ns) needs: sysctl -w kernel.bpf_stats_enabled=1
Scrape config and alert rules: docs/prometheus.md`)
    .action(async (opts: Flags) => {
      const session = startSession({ durationS: opts.duration });
      try {
        const tracer = await openTracerForCli({ mode: opts.mode, pid: opts.pid }, session);
        const kernel = hostKernel();
        const detector = new StaleFaultDetector({ retPf: retPfTable(tracer.retPf), kernel });
        const metrics = new FaultMetrics({ detector, tracerStats: () => tracer.stats(), kernel, mode: tracer.mode });
        const server = http.createServer(metricsRequestListener(metrics.registry));
        session.onClose(() => server.close());
        await new Promise<void>((resolve, reject) => {
          server.once('error', (e: NodeJS.ErrnoException) => reject(new CliError(
            `cannot listen on ${opts.listen.host}:${opts.listen.port}: ${e.code ?? e.message}` +
            (e.code === 'EADDRINUSE' ? ' (another exporter running? pick another port)' : ''), EXIT_USAGE)));
          server.listen(opts.listen.port, opts.listen.host, () => resolve());
        });
        const addr = server.address() as AddressInfo;
        const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
        process.stderr.write(`kvmfault: serving http://${shown}:${addr.port}/metrics (${tracer.mode} mode); Ctrl-C stops\n`);
        for await (const batch of tracer.events({ signal: session.signal })) detector.push(batch);
        tracer.close();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
      } finally {
        session.dispose();
      }
      process.exitCode = session.exitCode ?? EXIT_OK;
    });
}
