/**
 * kvmfault trace: live records as text (the incident's bpftrace line format) or JSON lines.
 * Exit: 0 (also after -n, --duration, EPIPE), 130/143 after SIGINT/SIGTERM, 2 cannot trace.
 */
import { release as osRelease } from 'node:os';
import type { Command } from 'commander';
import { TextFormatter, jsonLine, textHeader } from '../../format';
import { EventBatch } from '../../record';
import { startSession } from '../lifecycle';
import { announceMode, humanRate, openTracerForCli, StatusLine } from '../live';
import { gpaPage, kindSet, mode, MODE_HELP, ModeChoice, pid, positiveInt, seconds } from '../options';
import { EXIT_OK } from '../errors';

interface Flags {
  json?: boolean;
  pid?: number;
  tid?: number[];
  gpa?: number;
  kind?: Uint8Array;
  duration?: number;
  count?: number;
  mode: ModeChoice;
  coalesce?: boolean;
}

const OUT_CHUNK = 64 * 1024;

export function register(program: Command): void {
  program
    .command('trace')
    .description('print live KVM page-fault records: text in the incident\'s bpftrace line format, or JSON lines')
    .option('--json', 'one JSON object per record (the fields of batch.get(i))')
    .option('-p, --pid <pid>', 'only this VMM process (filtered in the kernel)', pid('--pid'))
    .option('-t, --tid <tid>', 'only this vCPU thread (repeatable)', (t: string, prev: number[] = []) => [...prev, pid('--tid')(t)])
    .option('--gpa <hex>', 'only records on the 4 KiB guest page holding this guest physical address', gpaPage)
    .option('-k, --kind <kinds>', 'only these record kinds, comma-separated: fault,faultin,faultin_ret,map,fault_ret,invalidate,exit', kindSet)
    .option('-d, --duration <seconds>', 'stop after this long', seconds('--duration'))
    .option('-n, --count <n>', 'stop after printing this many records', positiveInt('--count'))
    .option('--mode <mode>', MODE_HELP, mode, 'auto')
    .option('--coalesce', 'fold identical consecutive records in the kernel (repeat = N)')
    .addHelpText('after', `
Examples:
  sudo kvmfault trace                               every fault record on the host, as text
  sudo kvmfault trace --pid 4242 --kind map -n 20   the first 20 mappings of one VM
  sudo kvmfault trace --json --duration 5 > faults.jsonl
  sudo kvmfault trace --gpa 1343fa0b0 | head        one guest page, e.g. the incident's

Text lines use the incident's format, e.g.
  21:25:50:282711 tid[3484173] pid[3484149] FAULT @ rip ffffffff814e6ca5 (92234 hits), gpa = 1343fa0b0, ...
A status line (rate, drops) goes to stderr when stderr is a terminal.`)
    .action(async (opts: Flags) => {
      const session = startSession({ durationS: opts.duration });
      const status = new StatusLine();
      let statusTimer: NodeJS.Timeout | null = null;
      try {
        const tracer = await openTracerForCli({ mode: opts.mode, pid: opts.pid, coalesce: !!opts.coalesce }, session);
        announceMode(tracer, 'tracing');
        const text = opts.json ? null : new TextFormatter();
        if (text) process.stdout.write(textHeader(`mode ${tracer.mode}, kernel ${osRelease()}`) + '\n');
        const tids = opts.tid && opts.tid.length ? new Set(opts.tid) : null;
        const page = opts.gpa;
        const kinds = opts.kind;
        const limit = opts.count ?? Infinity;
        let printed = 0, seen = 0, lastSeen = 0, lastT = Date.now();
        const accept = (b: EventBatch, i: number): boolean =>
          (kinds === undefined || kinds[b.kind(i)] === 1) &&
          (tids === null || tids.has(b.tid(i))) &&
          (page === undefined || (b.gpa(i) !== -1 && Math.floor(b.gpa(i) / 4096) === page));
        if (status.enabled) {
          statusTimer = setInterval(() => {
            const now = Date.now();
            const st = tracer.stats();
            status.update(`${humanRate(((seen - lastSeen) * 1000) / Math.max(1, now - lastT))} records, ${printed} printed, ${st.dropped} dropped`);
            lastSeen = seen;
            lastT = now;
          }, 1000);
        }
        let buf = '';
        for await (const batch of tracer.events({ signal: session.signal })) {
          seen += batch.length;
          for (let i = 0; i < batch.length && printed < limit; i++) {
            if (!accept(batch, i)) continue;
            buf += (text ? text.line(batch, i) : jsonLine(batch, i)) + '\n';
            printed++;
            if (buf.length >= OUT_CHUNK) {
              status.clear();
              process.stdout.write(buf);
              buf = '';
            }
          }
          if (buf) {
            status.clear();
            process.stdout.write(buf);
            buf = '';
          }
          if (printed >= limit) {
            session.stop('count');
            break;
          }
          if (session.reason === 'EPIPE') break;
        }
        const st = tracer.stats();
        tracer.close();
        status.clear();
        if (st.dropped > 0 || status.enabled) {
          process.stderr.write(`kvmfault: ${printed} records printed of ${seen} read; ${st.dropped} dropped in the kernel (ring full)\n`);
        }
      } finally {
        if (statusTimer) clearInterval(statusTimer);
        session.dispose();
      }
      process.exitCode = session.exitCode ?? EXIT_OK;
    });
}
