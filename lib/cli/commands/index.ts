import type { Command } from 'commander';
import { register as analyze } from './analyze';
import { register as workload } from './workload';
import { register as doctor } from './doctor';
import { register as trace } from './trace';
import { register as record } from './record';
import { register as watch } from './watch';
import { register as demo } from './demo';
import { register as metrics } from './metrics';
import { register as prove } from './prove';

/** A CLI command module: registers itself on the root program. One file per command. */
export type Register = (program: Command) => void;

// One line per command; each file owns its command.
export const commands: Register[] = [
  analyze,
  workload,
  doctor,
  trace,
  record,
  watch,
  demo,
  metrics,
  prove,
];
