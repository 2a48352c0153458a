#!/usr/bin/env node
/**
 * kvmfault CLI entry. Exit codes: 0 ok, 1 found a problem, 2 usage or environment error.
 */
import { Command, CommanderError } from 'commander';
import { commands } from './commands/index';
import { escapeControl } from '../escape';
import { CliError, EXIT_USAGE } from './errors';

/** An error message as one line: its own line breaks as spaces, control characters escaped. */
function oneLine(text: string): string {
  return escapeControl(text.trim().replace(/[ \t]*(?:\r\n|\r|\n)[ \t]*/g, ' '));
}

export function buildProgram(): Command {
  const program = new Command('kvmfault')
    .description('Watch the KVM x86 MMU page-fault path with eBPF: which vCPUs progress, retry or are stuck')
    .version(require('../../../package.json').version)
    .exitOverride()
    // one-line usage errors: commander prints "error: ..."; we add where to look
    .configureOutput({
      // arguments are echoed in these messages: control characters escaped
      outputError: (text, write) => write(`kvmfault: ${oneLine(text.replace(/^error: /, ''))} (see --help)\n`),
    });
  for (const register of commands) register(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; parse errors were already printed by commander
      return e.exitCode === 0 ? 0 : EXIT_USAGE;
    }
    if (e instanceof CliError) {
      process.stderr.write(`kvmfault: ${oneLine(e.message)}\n`);
      return e.exitCode;
    }
    process.stderr.write(`kvmfault: ${oneLine((e as Error)?.message ?? String(e))}\n`);
    if (process.env.KVMFAULT_DEBUG) process.stderr.write(`${(e as Error)?.stack}\n`);
    return EXIT_USAGE;
  }
}

if (require.main === module) {
  // `kvmfault ... | head`: a closed stdout is a normal end, not a crash. Live commands handle
  // it themselves (lib/cli/lifecycle.ts); this covers help and one-shot output.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    // a live command that listens for EPIPE itself stops cleanly (tracer closed, file finished)
    if (process.stdout.listenerCount('error') === 1) process.exit(process.exitCode ?? 0);
  });
  main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
