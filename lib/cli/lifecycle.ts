/**
 * One stop path for every live command (trace, watch, record, metrics, demo).
 *
 * SIGINT / SIGTERM abort `session.signal`: the command's loop ends and its own finally-block
 * closes the tracer (detaches every BPF link) and finishes the capture file. The exit code is
 * 130 / 143 (128 + signal number, what shells expect). If the command has not finished within
 * `graceMs` of the signal, or a second signal arrives, the registered closers run here and the
 * process exits: a stuck consumer can delay the exit, never leave a probe attached.
 *
 * stdout EPIPE (`kvmfault trace | head`) is a normal end, not an error: it stops the session
 * with exit code 0.
 */
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

export type StopReason = 'SIGINT' | 'SIGTERM' | 'EPIPE' | 'duration' | 'count' | 'limit' | 'stuck' | 'done';

export interface LiveSession {
  /** aborted when the session must stop (signal, EPIPE, duration, or stop() from the command) */
  readonly signal: AbortSignal;
  /** why it stopped, or null while running */
  readonly reason: StopReason | null;
  /** 130/143 after a signal, 0 after EPIPE, null otherwise (the command decides) */
  readonly exitCode: number | null;
  /** stops the session (idempotent; the first reason wins) */
  stop(reason: StopReason): void;
  /** something to close on a forced exit (tracer.close, writer.close); runs at most once */
  onClose(close: () => void): void;
  /** runs the closers not run yet, removes the handlers; call from the command's finally */
  dispose(): void;
}

export function startSession(options: { durationS?: number; graceMs?: number } = {}): LiveSession {
  const controller = new AbortController();
  const closers: (() => void)[] = [];
  const graceMs = options.graceMs ?? 3000;
  let reason: StopReason | null = null;
  let exitCode: number | null = null;
  let forceTimer: NodeJS.Timeout | null = null;
  let durationTimer: NodeJS.Timeout | null = null;
  let disposed = false;

  const runClosers = (): void => {
    while (closers.length > 0) {
      const close = closers.pop()!;
      try {
        close();
      } catch (e) {
        process.stderr.write(`kvmfault: while closing: ${(e as Error).message}\n`);
      }
    }
  };

  const stop = (why: StopReason): void => {
    if (reason !== null) return;
    reason = why;
    controller.abort(new Error(`stopped: ${why}`));
  };

  const onSignal = (sig: NodeJS.Signals): void => {
    if (reason === 'SIGINT' || reason === 'SIGTERM' || forceTimer) {
      // second signal: do not wait for the command any longer
      runClosers();
      process.exit(SIGNAL_EXIT[sig]);
    }
    exitCode = SIGNAL_EXIT[sig];
    stop(sig as StopReason);
    forceTimer = setTimeout(() => {
      process.stderr.write(`kvmfault: still stopping ${graceMs} ms after ${sig}; closing the probes and exiting\n`);
      runClosers();
      process.exit(SIGNAL_EXIT[sig]);
    }, graceMs);
    forceTimer.unref();
  };

  const onStdoutError = (e: NodeJS.ErrnoException): void => {
    if (e.code === 'EPIPE') {
      if (exitCode === null) exitCode = 0;
      stop('EPIPE');
      return;
    }
    process.stderr.write(`kvmfault: cannot write the output: ${e.message}\n`);
    if (exitCode === null) exitCode = 1;
    stop('EPIPE');
  };

  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.stdout.on('error', onStdoutError);
  if (options.durationS !== undefined) {
    durationTimer = setTimeout(() => stop('duration'), options.durationS * 1000);
  }

  return {
    signal: controller.signal,
    get reason() {
      return reason;
    },
    get exitCode() {
      return exitCode;
    },
    stop,
    onClose(close) {
      if (disposed) close();
      else closers.push(close);
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      runClosers();
      if (durationTimer) clearTimeout(durationTimer);
      if (forceTimer) clearTimeout(forceTimer);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      // keep swallowing EPIPE: output still buffered may fail after the command returns
      if (reason !== 'EPIPE') process.stdout.off('error', onStdoutError);
    },
  };
}

/** Writes to stdout unless the reader went away (EPIPE already seen). */
export function out(session: LiveSession, text: string): void {
  if (session.reason === 'EPIPE') return;
  process.stdout.write(text);
}
