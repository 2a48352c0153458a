/**
 * `perf script` text of the kvm / kvmmmu tracepoints (kvmevents.ts says which and what they
 * become). perf's default layout:
 *
 *   CPU 1/KVM  4242 [012]  1234.567890: kvm:kvm_page_fault: vcpu 1 rip 0xffffffff81234567 address 0x0000000001234fe0 error_code 0x683
 *
 * comm (may hold blanks and slashes), tid or "pid/tid" (-F pid,tid), [CPU] (optional), seconds,
 * an optional period, "system:event:", the event's fields. Mail damage: text.ts.
 */
import { KvmTextEntry, kvmTextFormat } from './kvmevents';
import { createLineImporter, TextImporter, TextImportOptions, countMatching } from './text';

// on cleaned lines; the lazy comm is followed by a blank and digits
const HEAD = /^(.{0,64}?) ?(?:(\d{1,10})\/)?(\d{1,10}) (?:\[(\d{1,5})\] )?(\d{1,12})\.(\d{1,9}): (?:\d{1,20} )?([A-Za-z_]\w{0,63}):([A-Za-z_]\w{0,63}): ?(.*)$/;
const HEAD_START = /^.{0,64}? ?(?:\d{1,10}\/)?\d{1,10} (?:\[\d{1,5}\] )?\d{1,12}\.\d{1,9}:(?: |$)/;

export function perfScriptFormat() {
  return kvmTextFormat(
    (line) => HEAD_START.test(line),
    (line) => {
      const m = HEAD.exec(line);
      if (!m) return null;
      return [Number(m[3]), m[2] === undefined ? null : Number(m[2]), m[5], m[6], m[8], m[9]];
    },
    '"COMM [PID/]TID [CPU] SECONDS: SYSTEM:EVENT: fields" (perf script)');
}

export function createPerfScriptImporter(options: TextImportOptions = {}): TextImporter {
  return createLineImporter<KvmTextEntry>(perfScriptFormat(), options);
}

/** Lines of the input's head that are perf script events (format detection). */
export function perfScriptScore(lines: readonly string[]): number {
  return countMatching(lines, (l) => HEAD.test(l));
}
