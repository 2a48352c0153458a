/**
 * The incident's other bpftrace script revisions (v3 is bpftrace.ts):
 *
 * - v2 "stuck" lines, one per vCPU thread the script judged stuck, with the per-RIP hit counter:
 *     01:02:03:456789 tid[4242] pid[4200] stuck @ rip ffffffff81234567 (123456 hits), gpa = 1234,
 *       hva = 7f0000001000 : MMU seq = 80001234, in-prog = 0, start = 7f0000100000, end = 7f0000101000
 *   -> one FAULTIN record standing for the hits since the thread's previous line on that rip
 *   (its first line: all of them), as bpftrace.ts does for v3.
 *
 * - `uniq -c` summaries of the per-violation lines (and those lines themselves, count 1):
 *       52311 ept[0] vcpu=ffff888812345000 seq=80001234 inprog=0 start=7f0000100000 end=7f0000101000
 *   the count right-aligned in 7 columns (8-digit counts with no blank before them), an optional
 *   label ("ept[0]"), then key=value pairs; some variants print only vcpu=. These name a vCPU by
 *   its kernel address (struct kvm_vcpu *), not a thread: the records get a stable made-up tid
 *   (ImportContext.tidForAddr) and the report shows the address (vcpuAddr), with tid and pid
 *   null. A key may recur on lines that are not adjacent (uniq -c without sort): each line is a
 *   record with repeat = its count, so the detector sums them per vCPU. The lines print no gpa
 *   (unless a gpa= field is there): they are taken as retries of one fault (PSEUDO_GPA), which is
 *   what a vCPU stuck on one access does; the report says so.
 *
 * Numbers are hex without 0x except counts, hits and in-prog. Mail damage: text.ts.
 */
import { Flag, Kind } from '../record';
import { scanFields } from './bpftrace';
import { V3_CONTINUATION } from './bpftrace-mail';
import { createLineImporter, ImportContext, PSEUDO_GPA, TextImporter, TextImportOptions, countMatching } from './text';

const STUCK = /^(\d{1,2}):(\d{2}):(\d{2})[:.](\d{1,9}) tid\[(\d{1,10})\] pid\[(\d{1,10})\] stuck @ rip (?:0x)?([0-9a-fA-F]{1,16})(?: \((\d{1,15}) hits?\))?,?(.*)$/;
const STUCK_START = /^\d{1,2}:\d{2}:\d{2}[:.]\d{1,9} tid\[\d{1,10}\] pid\[\d{1,10}\] stuck\b/;
/** [count] [label] key=value ... with a vcpu= among them */
// a value holds no blank and no '=': one way only to split "k=v k=v" (no backtracking blow-up)
const UNIQ = /^(?:(\d{1,15}) )?(?:([A-Za-z_][\w-]{0,31}(?:\[\d{1,6}\])?):? )?([A-Za-z_][\w-]{0,31}=[^\s=]{1,40}(?: [A-Za-z_][\w-]{0,31}=[^\s=]{1,40}){0,15})$/;
const UNIQ_START = /^(?:\d{1,15} )?(?:[A-Za-z_][\w-]{0,31}(?:\[\d{1,6}\])?:? )?(?:[A-Za-z_][\w-]{0,31}=[^\s=]{1,40} ){0,15}vcpu=/;
const PAIR = /([A-Za-z_][\w-]{0,31})=([^\s=]{1,40})/g;
const HEX = /^(?:0x)?[0-9a-fA-F]{1,16}$/;
const DEC = /^\d{1,15}$/;
const DAY_NS = 86400e9;

type Entry =
  | { t: 'stuck'; ts: number; tid: number; pid: number; rip: bigint; hits: number; f: Map<string, bigint> }
  | { t: 'uniq'; count: number; vcpu: string; f: Map<string, bigint> };

const hexOf = (t: string): bigint => BigInt(t.startsWith('0x') || t.startsWith('0X') ? t : '0x' + t);

/** the fields of a stuck line's tail; null (with the bad key) when a value is malformed */
function stuckFields(rest: string): Map<string, bigint> | string {
  const raw = new Map<string, string>();
  scanFields(rest, raw);
  const out = new Map<string, bigint>();
  for (const [k, v] of raw) {
    if (k === 'in-prog') {
      if (!/^\d{1,15}$/.test(v)) return k;
      out.set(k, BigInt(v));
    } else {
      if (!HEX.test(v)) return k;
      out.set(k, hexOf(v));
    }
  }
  return out;
}

const KEY_ALIASES: Record<string, string> = {
  seq: 'mmu seq', mmu_seq: 'mmu seq', inprog: 'in-prog', in_prog: 'in-prog', 'in-prog': 'in-prog', in_progress: 'in-prog',
  start: 'start', end: 'end', gpa: 'gpa', hva: 'hva', rip: 'rip', vcpu: 'vcpu', pfn: 'pfn',
};

export function bpftraceV2Format() {
  const hitsOf = new Map<number, { rip: bigint; hits: number }>();
  let dayOffset = 0, lastTs = -1;
  return {
    isHead: (line: string): boolean => STUCK_START.test(line) || UNIQ_START.test(line),
    // stuck lines' fields parse laxly (any tail would do): only a fields-like line continues one
    isContinuation: (line: string): boolean => V3_CONTINUATION.test(line),
    parse(line: string): Entry | string {
      let m = STUCK.exec(line);
      if (m) {
        const hh = Number(m[1]), mm = Number(m[2]), ss = Number(m[3]);
        if (hh > 23 || mm > 59 || ss > 60) return 'bad timestamp';
        const tid = Number(m[5]), pid = Number(m[6]);
        if (tid > 0xffffffff || pid > 0xffffffff) return 'tid/pid out of range';
        const f = stuckFields(m[9]);
        if (typeof f === 'string') return `bad value for ${f}`;
        if (!f.has('gpa')) return 'no gpa';
        return { t: 'stuck', ts: ((hh * 60 + mm) * 60 + ss) * 1e9 + Number(m[4].padEnd(9, '0')), tid, pid, rip: hexOf(m[7]), hits: m[8] === undefined ? -1 : Number(m[8]), f };
      }
      m = UNIQ.exec(line);
      if (!m) return 'not a v2 "stuck" line nor a "[count] [label] vcpu=ADDR key=value ..." line';
      const f = new Map<string, bigint>();
      let vcpu: string | null = null;
      for (const p of m[3].matchAll(PAIR)) {
        const key = KEY_ALIASES[p[1].toLowerCase()];
        const v = p[2].replace(/,$/, '');
        if (key === undefined) continue; // a field this importer does not use
        if (key === 'vcpu') {
          if (!HEX.test(v)) return 'bad value for vcpu';
          vcpu = v;
          continue;
        }
        if (key === 'in-prog' ? !DEC.test(v) : !HEX.test(v)) return `bad value for ${p[1]}`;
        f.set(key, key === 'in-prog' ? BigInt(v) : hexOf(v));
      }
      if (vcpu === null) return 'no vcpu=';
      const count = m[1] === undefined ? 1 : Number(m[1]);
      if (count < 1 || count > 0xfffffffe) return 'count out of range';
      return { t: 'uniq', count, vcpu, f };
    },
    take(e: Entry, first: number, last: number, ctx: ImportContext): void {
      const w = ctx.writer;
      let tid: number, repeat: number, ts = -1, pid = -1;
      if (e.t === 'stuck') {
        ts = e.ts + dayOffset;
        if (lastTs >= 0 && ts < lastTs - DAY_NS / 2) {
          dayOffset += DAY_NS;
          ts += DAY_NS;
        }
        if (ts > lastTs) lastTs = ts;
        tid = e.tid;
        pid = e.pid;
        const prev = hitsOf.get(tid);
        const before = prev && prev.rip === e.rip ? prev.hits : 0;
        repeat = e.hits >= 0 ? Math.max(1, e.hits - before) : 1;
        if (e.hits >= 0) {
          if (!prev && hitsOf.size >= 65536) hitsOf.delete(hitsOf.keys().next().value!);
          hitsOf.set(tid, { rip: e.rip, hits: Math.max(before, e.hits) });
        }
        ctx.hasTid = true;
        ctx.hasPid = true;
      } else {
        tid = ctx.tidForAddr(e.vcpu);
        repeat = e.count;
      }
      const f = e.f;
      const rip = e.t === 'stuck' ? e.rip : f.get('rip');
      const gpa = f.get('gpa');
      if (gpa === undefined) ctx.pseudoGpa = true;
      if (f.has('mmu seq')) ctx.hasSeq = true;
      const ip = f.get('in-prog');
      const write = (n: number): void => {
        const r = w.begin(Kind.FAULTIN);
        if (ts >= 0) w.setU64(r, 'ts_ns', ts);
        if (pid >= 0) w.setU32(r, 'pid', pid);
        w.setU32(r, 'tid', tid);
        if (rip !== undefined) w.setU64(r, 'rip', rip);
        w.setU64(r, 'gpa', gpa ?? PSEUDO_GPA);
        const set = (key: string, field: 'hva' | 'mmu_seq' | 'range_start' | 'range_end'): void => {
          const v = f.get(key);
          if (v !== undefined) w.setU64(r, field, v);
        };
        set('hva', 'hva');
        set('mmu seq', 'mmu_seq');
        set('start', 'range_start');
        set('end', 'range_end');
        if (ip !== undefined) w.setInProgress(r, Number(ip));
        if (n > 1) {
          w.setU32(r, 'repeat', Math.min(n, 0xfffffffe));
          w.setFlags(r, Flag.COALESCED);
        }
      };
      // N faults on one thing: the first, then N - 1 retries of it (a single record for N
      // would read as one first attempt on a new address)
      write(1);
      if (repeat > 1) write(repeat - 1);
      ctx.note(tid, first, last);
    },
  };
}

export function createBpftraceV2Importer(options: TextImportOptions = {}): TextImporter {
  return createLineImporter<Entry>(bpftraceV2Format(), options);
}

/** Lines of the input's head in these formats (format detection). */
export function bpftraceV2Score(lines: readonly string[]): number {
  return countMatching(lines, (l) => STUCK.test(l) || (UNIQ_START.test(l) && UNIQ.test(l)));
}
