/** Argument parsers shared by the live commands: each throws a one-line CliError (exit 2). */
import { CliError } from './errors';
import { kindFromName } from '../record';
import { MODE_CHOICES, type ModeChoice } from '../probes';

export function seconds(flag: string) {
  return (text: string): number => {
    const n = Number(text);
    if (text.trim() === '' || !Number.isFinite(n) || n <= 0) throw new CliError(`${flag} must be a positive number of seconds (got "${text}")`);
    return n;
  };
}

export function positiveInt(flag: string, max = Number.MAX_SAFE_INTEGER) {
  return (text: string): number => {
    const n = Number(text);
    if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1 || n > max) {
      throw new CliError(`${flag} must be a whole number from 1 to ${max} (got "${text}")`);
    }
    return n;
  };
}

/** 1048576, 64k, 16M, 2G (binary units) */
export function byteSize(flag: string) {
  return (text: string): number => {
    const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(text.trim());
    if (!m) throw new CliError(`${flag} must be a size like 1048576, 64K, 100M or 2G (got "${text}")`);
    const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
    const n = Math.floor(Number(m[1]) * mult);
    if (n < 4096) throw new CliError(`${flag} must be at least 4K (got "${text}")`);
    return n;
  };
}

/** A guest physical address in hex (with or without 0x); matched by its 4 KiB page. */
export function gpaPage(text: string): number {
  const t = text.trim().replace(/^0x/i, '');
  if (!/^[0-9a-f]{1,13}$/i.test(t)) throw new CliError(`--gpa must be a guest physical address in hex, e.g. 1343fa0b0 (got "${text}")`);
  return Math.floor(parseInt(t, 16) / 4096);
}

export const KIND_CHOICES = ['fault', 'faultin', 'faultin_ret', 'map', 'fault_ret', 'invalidate', 'exit'];

/** "map,fault" -> a 16-entry lookup table by kind number; an empty list is an error (it would filter out everything) */
export function kindSet(text: string): Uint8Array {
  const set = new Uint8Array(16);
  const names = text.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  if (names.length === 0) {
    throw new CliError(`--kind needs at least one record kind (got "${text}"; choose from ${KIND_CHOICES.join(', ')}; comma-separated)`);
  }
  for (const name of names) {
    const k = kindFromName(name);
    if (k === undefined || !KIND_CHOICES.includes(name)) {
      throw new CliError(`--kind: unknown record kind "${name}" (choose from ${KIND_CHOICES.join(', ')}; comma-separated)`);
    }
    set[k] = 1;
  }
  return set;
}

export type { ModeChoice };

export function mode(text: string): ModeChoice {
  if (!(MODE_CHOICES as readonly string[]).includes(text)) {
    throw new CliError(`--mode must be one of ${MODE_CHOICES.join(', ')} (got "${text}")`);
  }
  return text as ModeChoice;
}

export function pid(flag: string) {
  return positiveInt(flag, 0x3fffffff);
}

/** host:port for a listener; the port may be 0 (any free port, printed at start) */
export function listenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-f:.]+)\]|([^:]+)):(\d{1,5})$/i.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new CliError(`--listen must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464 (got "${text}")`);
  return { host: m[1] ?? m[2], port };
}

/** --mode's help text, from the probe catalogue's modes */
export const MODE_HELP = `attach mode: ${MODE_CHOICES.join(', ')}`;
