/**
 * `trace-cmd report` text of the kvm / kvmmmu events (kvmevents.ts says which and what they
 * become). A line:
 *
 *   CPU 1/KVM-4242  [012] 1234.567890: kvm_exit:             reason EPT_VIOLATION rip 0xffffffff81234567 info 683 800000ec
 *
 * COMM-TID (the comm may hold blanks, slashes and dashes: the tid is the digits after the last
 * dash before the CPU column; QEMU names vCPU threads "CPU 1/KVM"), an optional "(TGID)" column,
 * [CPU], an optional latency column ("d..2."), seconds, the event name without its system, and
 * the event's own fields. The text has no VMM pid unless the tgid column is there. trace-cmd's
 * header ("cpus=4", "version = 6", "CPU 3 is empty") and "[LOST N EVENTS]" lines are noise
 * (lost events are counted). Mail damage: text.ts.
 */
import { KvmTextEntry, kvmTextFormat } from './kvmevents';
import { createLineImporter, TextImporter, TextImportOptions, countMatching } from './text';

// on cleaned lines (single blanks); linear: the lazy comm is followed by a literal '-' and digits
const HEAD = /^(.{0,64}?)-(\d{1,10}) (?:\( ?(\d{1,10}|-{1,10}) ?\) )?\[(\d{1,5})\] (?:[.a-zA-Z0-9]{4,6} )?(\d{1,12})\.(\d{1,9}): ([A-Za-z_]\w{0,63}): ?(.*)$/;
const HEAD_START = /^.{0,64}?-\d{1,10} (?:\( ?(?:\d{1,10}|-{1,10}) ?\) )?\[\d{1,5}\] /;

export function traceCmdFormat() {
  return kvmTextFormat(
    (line) => HEAD_START.test(line),
    (line) => {
      const m = HEAD.exec(line);
      if (!m) return null;
      const tgid = m[3] !== undefined && /^\d/.test(m[3]) ? Number(m[3]) : null;
      return [Number(m[2]), tgid, m[5], m[6], m[7], m[8]];
    },
    '"COMM-TID [CPU] SECONDS: EVENT: fields" (trace-cmd report)');
}

export function createTraceCmdImporter(options: TextImportOptions = {}): TextImporter {
  return createLineImporter<KvmTextEntry>(traceCmdFormat(), options);
}

/** Lines of the input's head that are trace-cmd events (format detection). */
export function traceCmdScore(lines: readonly string[]): number {
  return countMatching(lines, (l) => HEAD.test(l));
}


