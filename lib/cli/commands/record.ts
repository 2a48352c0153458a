/**
 * kvmfault record -o FILE: live records into a capture file (lib/capture.ts), replayed by
 * `kvmfault analyze FILE`. Ctrl-C, SIGTERM, --duration and --max-bytes all finish the file
 * (last chunk and the end chunk written, fsync'd, closed); records reach the file within a second
 * even when they trickle in, and a killed recorder leaves a file that analyze reads as incomplete.
 * Exit: 0 finished (also after a signal: 130/143), 2 cannot trace or cannot write the file.
 */
import type { Command } from 'commander';
import { CaptureWriter, liveCaptureMeta } from '../../capture';
import { MemslotHistory } from '../../memslots';
import { InvalidationSources, stacksFilePath, writeStacksFile } from '../../sources';
import { findRunningVms } from '../../doctor';
import { EventBatch, RECORD_SIZE, RecordBatch } from '../../record';
import { CliError, EXIT_OK, EXIT_USAGE } from '../errors';
import { startSession } from '../lifecycle';
import { announceMode, humanBytes, humanRate, openTracerForCli, StatusLine } from '../live';
import { byteSize, mode, MODE_HELP, ModeChoice, pid, seconds } from '../options';

interface Flags {
  output: string;
  pid?: number;
  duration?: number;
  maxBytes?: number;
  mode: ModeChoice;
  coalesce?: boolean;
  quiet?: boolean;
}

/** records per chunk: what one inserted or deleted byte in the file can cost */
const CHUNK_RECORDS = 256;
/** records reach the file at most this long after the tracer handed them over */
const FLUSH_MS = 1000;

/** The first `n` records of a batch, copied (only at the very end of a size-limited capture). */
function firstRecords(batch: EventBatch, n: number): RecordBatch {
  const bytes = new Uint8Array(n * RECORD_SIZE);
  for (let i = 0; i < n; i++) bytes.set(batch.recordBytes(i), i * RECORD_SIZE);
  return RecordBatch.fromPacked(bytes, n);
}

export function register(program: Command): void {
  program
    .command('record')
    .description('write live KVM page-fault records to a capture file (replay it with `kvmfault analyze FILE`)')
    .requiredOption('-o, --output <file>', 'capture file to create (overwritten)')
    .option('-p, --pid <pid>', 'only this VMM process (filtered in the kernel)', pid('--pid'))
    .option('-d, --duration <seconds>', 'stop after this long', seconds('--duration'))
    .option('--max-bytes <size>', 'stop before the file grows past this size (e.g. 100M, 2G)', byteSize('--max-bytes'))
    .option('--mode <mode>', MODE_HELP, mode, 'auto')
    .option('--coalesce', 'fold identical consecutive records in the kernel (repeat = N): smaller files for stuck vCPUs')
    .option('-q, --quiet', 'no progress line')
    .addHelpText('after', `
Examples:
  sudo kvmfault record -o faults.kvmf                     until Ctrl-C
  sudo kvmfault record -o vm.kvmf --pid 4242 --duration 60 --max-bytes 1G
  kvmfault analyze faults.kvmf                            verdicts per vCPU from the file

The progress line (records, bytes, rate, drops) is rewritten in place when stderr is a
terminal, and printed once at the end otherwise.`)
    .action(async (opts: Flags) => {
      const session = startSession({ durationS: opts.duration });
      const status = new StatusLine();
      let timer: NodeJS.Timeout | null = null;
      try {
        const tracer = await openTracerForCli({ mode: opts.mode, pid: opts.pid, coalesce: !!opts.coalesce }, session);
        let writer: CaptureWriter;
        try {
          writer = CaptureWriter.create(opts.output, {
            chunkRecords: CHUNK_RECORDS,
            flushMs: FLUSH_MS,
            meta: {
              ...liveCaptureMeta(tracer, { pid: opts.pid, coalesce: opts.coalesce }),
              // the VMM's -name of each VM running now, by pid: analyze --html shows them beside the pids
              vmNames: Object.fromEntries(findRunningVms({ excludePids: [process.pid] })
                .filter((vm) => vm.name !== null && (opts.pid === undefined || vm.pid === opts.pid)).map((vm) => [String(vm.pid), vm.name])),
            },
          });
        } catch (e) {
          throw new CliError(`cannot create ${opts.output}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (pick a writable path)`, EXIT_USAGE);
        }
        session.onClose(() => writer.close());
        if (!opts.quiet) announceMode(tracer, `recording to ${opts.output}`);
        const maxBytes = opts.maxBytes ?? Infinity;
        const started = Date.now();
        let last = { t: started, records: 0 };
        const progress = (): string => {
          const now = Date.now();
          const rate = ((writer.records - last.records) * 1000) / Math.max(1, now - last.t);
          last = { t: now, records: writer.records };
          return `${opts.output}: ${writer.records} records, ${humanBytes(writer.sizeAfter(0))}, ${humanRate(rate)}, ${tracer.stats().dropped} dropped`;
        };
        if (!opts.quiet && status.enabled) timer = setInterval(() => status.update(progress()), 500);

        // the invalidations' kernel stacks, resolved while the tracer (its stack map) is open
        // and every VM's memslots seen meanwhile (read on a range no VM holds, at most once a second,
        // and every 5 s), so analyze can count invalidations per VM by memslot as watch does
        const memslots = tracer.memslots();
        const seenSlots = new MemslotHistory();
        memslots.onRead = (index) => seenSlots.add(index);
        const sources = new InvalidationSources((id) => tracer.stack(id), memslots);
        const slotTimer = setInterval(() => memslots.refresh(), 5000);
        session.signal.addEventListener('abort', () => clearInterval(slotTimer), { once: true });
        for await (const batch of tracer.events({ signal: session.signal })) {
          sources.add(batch);
          // the file's size once these records and the end chunk are written
          if (writer.sizeAfter(batch.length) <= maxBytes) {
            writer.write(batch);
            continue;
          }
          // the last records that fit, then stop
          let fit = batch.length;
          while (fit > 0 && writer.sizeAfter(fit) > maxBytes) fit--;
          if (fit > 0) writer.write(firstRecords(batch, fit));
          session.stop('limit');
          break;
        }
        clearInterval(slotTimer);
        const st = tracer.stats();
        tracer.close();
        try {
          writer.close();
        } catch (e) {
          throw new CliError(`cannot finish ${opts.output}: ${(e as Error).message}`, EXIT_USAGE);
        }
        const stacks = sources.stacks();
        if (Object.keys(stacks).length > 0) {
          try {
            writeStacksFile(opts.output, stacks, seenSlots.all());
          } catch (e) {
            process.stderr.write(`kvmfault: cannot write ${stacksFilePath(opts.output)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): analyze names invalidation sources by comm only\n`);
          }
        }
        status.clear();
        const secs = (Date.now() - started) / 1000;
        const why = session.reason === 'limit' ? ' (--max-bytes reached)' : session.reason === 'duration' ? '' : session.reason ? ` (${session.reason})` : '';
        process.stderr.write(`kvmfault: wrote ${opts.output}: ${writer.records} records, ${humanBytes(writer.bytesWritten)} in ${secs.toFixed(1)} s${why}; ` +
          `${st.dropped} dropped in the kernel${st.dropped ? ' (ring full: try --coalesce or --pid)' : ''}\n`);
      } finally {
        if (timer) clearInterval(timer);
        session.dispose();
      }
      process.exitCode = session.exitCode ?? EXIT_OK;
    });
}
