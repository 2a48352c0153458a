/** Shared pieces of the live commands: opening the tracer with one-line errors, status lines. */
import { openTracer, Tracer, TracerError, TracerOptions } from '../tracer';
import { CounterSource, CounterSourceError, CounterSourceKind, openCounterSource } from '../counters';
import { TRACER_ERROR_REMEDY } from '../probes';
import { CliError, EXIT_USAGE } from './errors';
import type { LiveSession } from './lifecycle';

/** Opens the tracer; a TracerError becomes a one-line CliError (exit 2) with the remedy. */
export async function openTracerForCli(options: TracerOptions, session: LiveSession): Promise<Tracer> {
  let tracer: Tracer;
  try {
    tracer = await openTracer({ ...options, verbose: !!process.env.KVMFAULT_DEBUG });
  } catch (e) {
    if (e instanceof TracerError) {
      if (process.env.KVMFAULT_DEBUG && e.libbpfLog) process.stderr.write(e.libbpfLog + '\n');
      const first = e.message.split('\n')[0];
      const remedy = TRACER_ERROR_REMEDY[e.code];
      // the capability check names its own remedy (grant them, or keep them): do not add "run as root"
      const saysRemedy = !remedy || first.includes(remedy) || (e.code === 'EPERM' && first.includes('CapEff'));
      throw new CliError(`cannot trace: ${first}${saysRemedy ? '' : ` (${remedy})`}`, EXIT_USAGE);
    }
    throw e;
  }
  session.onClose(() => tracer.close());
  return tracer;
}

/** Shows the tracer's mode once on stderr (what it can and cannot see is in `doctor`). */
export function announceMode(tracer: Tracer, what: string): void {
  const attached = tracer.probes.filter((p) => p.attached).length;
  process.stderr.write(`kvmfault: ${what} in ${tracer.mode} mode (${attached} probes attached); Ctrl-C stops\n`);
}

export function humanBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

export function humanRate(perSec: number): string {
  if (perSec >= 1e6) return `${(perSec / 1e6).toFixed(2)}M/s`;
  if (perSec >= 1e3) return `${(perSec / 1e3).toFixed(1)}k/s`;
  return `${perSec.toFixed(0)}/s`;
}

/** A one-line status on a TTY stderr, rewritten in place; nothing when stderr is not a TTY. */
export class StatusLine {
  readonly enabled = !!process.stderr.isTTY;
  private shown = false;
  update(text: string): void {
    if (!this.enabled) return;
    const cols = process.stderr.columns || 120;
    process.stderr.write('\r\x1b[2K' + (text.length >= cols ? text.slice(0, cols - 1) : text));
    this.shown = true;
  }
  clear(): void {
    if (this.enabled && this.shown) process.stderr.write('\r\x1b[2K');
    this.shown = false;
  }
}


/** Opens KVM's counters (bpf-iter, else debugfs); failure is a one-line CliError (exit 2). */
export function openCounterSourceForCli(prefer: CounterSourceKind | undefined, session: LiveSession): CounterSource {
  let source: CounterSource;
  try {
    source = openCounterSource(prefer);
  } catch (e) {
    if (e instanceof CounterSourceError) throw new CliError(`cannot read KVM's counters: ${e.message}`, EXIT_USAGE);
    throw e;
  }
  session.onClose(() => source.close());
  return source;
}

/** Calls `tick` every intervalMs until the session ends (Ctrl-C, --duration, a stop). */
export async function everyUntilStopped(session: LiveSession, intervalMs: number, tick: () => void): Promise<void> {
  const timer = setInterval(tick, intervalMs);
  try {
    await new Promise<void>((resolve) => {
      if (session.signal.aborted) resolve();
      else session.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    clearInterval(timer);
  }
}
