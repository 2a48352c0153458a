/**
 * The kvm and kvmmmu tracepoints as text (what trace-cmd report and perf script print after the
 * event name), parsed strictly against their TP_printk formats in the kernel
 * (arch/x86/kvm/trace.h, arch/x86/kvm/mmu/mmutrace.h, include/trace/events/kvm.h), old and new:
 *
 *   kvm_page_fault       "address %lx error_code %x"                          (<= 6.5)
 *                        "vcpu %u rip 0x%lx address 0x%lx error_code %x", then
 *                        "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx" (6.6+),
 *                        and with the incident thread's debugging patch
 *                        "..., seq = 0x%lx, in_prog = 0x%lx, start = 0x%lx, end = 0x%lx, root = %s"
 *                        (then the fault carries the invalidation state and a cause can be told)
 *   kvm_exit             "reason %s rip 0x%lx info %llx %llx"                 (old)
 *                        "[vcpu %u ]reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx
 *                         intr_info 0x%08x error_code 0x%08x"                 (5.7+; vcpu 5.12+)
 *   kvm_entry            "vcpu %u[, rip 0x%lx][ ...]"
 *   kvm_inj_virq         "irq %u" / "IRQ 0x%x[ (reinjected)]"
 *   kvm_mmu_pagetable_walk "addr %llx pferr %x %s"
 *   kvm_mmu_set_spte     "gfn %llx spte %llx (%s%s%s%s) level %d at %llx"
 *   kvm_mmu_spte_requested "gfn %llx pfn %llx level %d"
 *   kvm_tdp_mmu_spte_changed "as id %d gfn %llx level %d old_spte %llx new_spte %llx"
 *   fast_page_fault      "vcpu %d gva %llx error_code %s sptep %p old %#llx new %llx spurious %d fixed %d"
 *   kvm_unmap_hva_range  "mmu notifier unmap range: %#016lx -- %#016lx"      (<= 5.11)
 *
 * Records (per vCPU thread, the tid of the line):
 * - kvm_page_fault -> FAULT (gpa = address, error code, rip: the event's, else the thread's last
 *   kvm_exit rip; vcpu id when printed). kvm_mmu_pagetable_walk -> FAULT only on threads that
 *   never printed a kvm_page_fault (shadow paging, where the walk is the fault's entry).
 * - an spte installed for the thread's current fault: kvm_mmu_set_spte, kvm_tdp_mmu_spte_changed
 *   with a present new spte, on that fault's gfn, and fast_page_fault with fixed or spurious 1
 *   -> MAP (the fault ended mapped: progress). spte_requested only says the map path was
 *   entered: no record.
 * - an spte zapped (kvm_tdp_mmu_spte_changed, present -> not present) and kvm_unmap_hva_range
 *   -> INVALIDATE (range in gfn or hva): the VM saw an invalidation.
 * - kvm_exit -> EXIT (rip, vcpu); kvm_entry, kvm_inj_virq and the other kvmmmu events are
 *   recognised and make no record; events of other systems are ignored.
 * Stock tracepoints do not show the MMU invalidation sequence, the in-progress count or the
 * fault's own snapshot, so a stuck vCPU's cause stays 'unknown' unless the kernel judgement
 * (--kernel) fills the gap (or the kernel carried the thread's patch above).
 */
import { Flag, Kind } from '../record';
import { ImportContext } from './text';

const X = '(?:0x)?([0-9a-fA-F]{1,16})';
const D = '(-?\\d{1,10})';
// lines are cleaned: one blank between tokens
const re = (s: string): RegExp => new RegExp('^' + s + '$');

// the tail: the debugging patch from the incident's thread that added the invalidation state
// (", seq = 0x%lx, in_prog = 0x%lx, start = 0x%lx, end = 0x%lx, root = %s")
const PAGE_FAULT = re(`(?:vcpu ${D},? )?(?:rip ${X},? )?address ${X},? error_code ${X}(?:, seq = ${X}, in_prog = ${X}, start = ${X}, end = ${X}(?:, root = [^,]{0,60})?)?`);
const EXIT = re(`(?:vcpu ${D},? )?reason (\\S{1,64})((?: [A-Z][A-Z_]{0,40}){0,8}) rip ${X},? (?:info ${X} ${X}|info1 ${X} info2 ${X}(?: intr_info ${X} error_code ${X})?)`);
const ENTRY = /^vcpu (\d{1,10})(?:, ?rip (?:0x)?([0-9a-fA-F]{1,16}))?(?: .{0,200})?$/;
const VIRQ = /^(?:irq|IRQ) (?:0x)?[0-9a-fA-F]{1,8}(?: .{0,100})?$/;
const WALK = re(`addr ${X} pferr ${X}(?: [A-Z|]{0,40})?`);
const SET_SPTE = re(`gfn ${X} spte ${X} \\(([-rwxu]{0,4})\\) level ${D} at ${X}`);
const REQUESTED = re(`gfn ${X} pfn ${X} level ${D}`);
const SPTE_CHANGED = re(`as id ${D} gfn ${X} level ${D} old_spte ${X} new_spte ${X}`);
const FAST_PF = re(`vcpu ${D} gva ${X} error_code (?:[A-Z|]{1,40} )?sptep (?:0x)?[0-9a-fA-F]{1,16} old ${X} new ${X} spurious ([01]) fixed ([01])`);
const UNMAP = re(`mmu notifier unmap range: ${X} -- ${X}`);

/** kvmmmu events that are recognised and make no record */
const KNOWN_QUIET = new Set([
  'kvm_mmu_paging_element', 'kvm_mmu_set_accessed_bit', 'kvm_mmu_set_dirty_bit', 'kvm_mmu_walker_error',
  'kvm_mmu_get_page', 'kvm_mmu_sync_page', 'kvm_mmu_unsync_page', 'kvm_mmu_prepare_zap_page',
  'mark_mmio_spte', 'handle_mmio_page_fault', 'kvm_mmu_zap_all_fast', 'check_mmio_spte',
  'kvm_mmu_split_huge_page', 'kvm_age_hva', 'kvm_test_age_hva', 'kvm_set_spte_hva', 'kvm_age_page',
]);

/** The event names this module knows (the rest are other systems' events: ignored). */
export const KVM_EVENTS = new Set([
  'kvm_page_fault', 'kvm_exit', 'kvm_entry', 'kvm_inj_virq', 'kvm_mmu_pagetable_walk', 'kvm_mmu_set_spte',
  'kvm_mmu_spte_requested', 'kvm_tdp_mmu_spte_changed', 'fast_page_fault', 'kvm_unmap_hva_range', ...KNOWN_QUIET,
]);

export type KvmEvent =
  | { t: 'pf'; vcpu: number | null; rip: bigint | null; gpa: bigint; err: bigint; inv: { seq: bigint; inProg: bigint; start: bigint; end: bigint } | null }
  | { t: 'exit'; vcpu: number | null; reason: string; rip: bigint }
  | { t: 'entry'; vcpu: number; rip: bigint | null }
  | { t: 'walk'; addr: bigint; err: bigint }
  | { t: 'spte'; gfn: bigint; present: boolean; old: boolean | null; level: number }
  | { t: 'fast'; vcpu: number; gpa: bigint; mapped: boolean }
  | { t: 'unmap'; start: bigint; end: bigint }
  | { t: 'quiet' };

const hex = (s: string): bigint => BigInt('0x' + s);
/** a present spte: EPT RWX bits (0..2) or the MMU-present bit 11; 0 and REMOVED (0x5a0) are not */
const present = (spte: bigint): boolean => (spte & 0x807n) !== 0n;

/**
 * A kvm/kvmmmu event's fields (the text after "name: "), or why they do not parse, or null
 * for an event this module does not know.
 */
export function parseKvmEvent(name: string, body: string): KvmEvent | string | null {
  let m: RegExpExecArray | null;
  switch (name) {
    case 'kvm_page_fault':
      if (!(m = PAGE_FAULT.exec(body))) return 'kvm_page_fault fields not as in the kernel ("[vcpu N rip 0xR ]address A error_code E")';
      return {
        t: 'pf', vcpu: m[1] === undefined ? null : Number(m[1]), rip: m[2] === undefined ? null : hex(m[2]), gpa: hex(m[3]), err: hex(m[4]),
        inv: m[5] === undefined ? null : { seq: hex(m[5]), inProg: hex(m[6]), start: hex(m[7]), end: hex(m[8]) },
      };
    case 'kvm_exit':
      if (!(m = EXIT.exec(body))) return 'kvm_exit fields not as in the kernel ("[vcpu N ]reason R rip 0xR info ...")';
      return { t: 'exit', vcpu: m[1] === undefined ? null : Number(m[1]), reason: m[2], rip: hex(m[4]) };
    case 'kvm_entry':
      if (!(m = ENTRY.exec(body))) return 'kvm_entry fields not as in the kernel ("vcpu N, rip 0xR")';
      return { t: 'entry', vcpu: Number(m[1]), rip: m[2] === undefined ? null : hex(m[2]) };
    case 'kvm_inj_virq':
      return VIRQ.test(body) ? { t: 'quiet' } : 'kvm_inj_virq fields not as in the kernel ("irq N")';
    case 'kvm_mmu_pagetable_walk':
      if (!(m = WALK.exec(body))) return 'kvm_mmu_pagetable_walk fields not as in the kernel ("addr A pferr E FLAGS")';
      return { t: 'walk', addr: hex(m[1]), err: hex(m[2]) };
    case 'kvm_mmu_set_spte':
      if (!(m = SET_SPTE.exec(body))) return 'kvm_mmu_set_spte fields not as in the kernel ("gfn G spte S (rwx) level L at P")';
      return { t: 'spte', gfn: hex(m[1]), present: true, old: null, level: Number(m[4]) };
    case 'kvm_mmu_spte_requested':
      return REQUESTED.test(body) ? { t: 'quiet' } : 'kvm_mmu_spte_requested fields not as in the kernel ("gfn G pfn P level L")';
    case 'kvm_tdp_mmu_spte_changed':
      if (!(m = SPTE_CHANGED.exec(body))) return 'kvm_tdp_mmu_spte_changed fields not as in the kernel ("as id N gfn G level L old_spte O new_spte S")';
      return { t: 'spte', gfn: hex(m[2]), present: present(hex(m[5])), old: present(hex(m[4])), level: Number(m[3]) };
    case 'fast_page_fault':
      if (!(m = FAST_PF.exec(body))) return 'fast_page_fault fields not as in the kernel';
      return { t: 'fast', vcpu: Number(m[1]), gpa: hex(m[2]), mapped: m[5] === '1' || m[6] === '1' };
    case 'kvm_unmap_hva_range':
      if (!(m = UNMAP.exec(body))) return 'kvm_unmap_hva_range fields not as in the kernel';
      return { t: 'unmap', start: hex(m[1]), end: hex(m[2]) };
    default:
      return KNOWN_QUIET.has(name) ? { t: 'quiet' } : null;
  }
}

interface ThreadState {
  vcpu: number | null;
  rip: bigint | null;
  sawPageFault: boolean;
  faultGpa: bigint | null;
}

const MAX_THREADS = 65536;

/** Turns parsed events into records, with the per-thread state they need. */
export class KvmEventSink {
  private readonly threads = new Map<number, ThreadState>();

  private thread(tid: number): ThreadState {
    let th = this.threads.get(tid);
    if (!th) {
      if (this.threads.size >= MAX_THREADS) this.threads.delete(this.threads.keys().next().value!);
      th = { vcpu: null, rip: null, sawPageFault: false, faultGpa: null };
      this.threads.set(tid, th);
    }
    return th;
  }

  /** One event of thread tid (pid null when the text has none) at tsNs, from lines first..last. */
  take(ev: KvmEvent, tid: number, pid: number | null, tsNs: number, first: number, last: number, ctx: ImportContext): void {
    const w = ctx.writer;
    const th = this.thread(tid);
    const begin = (kind: number): number => {
      const r = w.begin(kind);
      w.setU64(r, 'ts_ns', Math.max(0, Math.round(tsNs)));
      w.setU32(r, 'tid', tid);
      if (pid !== null) w.setU32(r, 'pid', pid);
      if (th.vcpu !== null) w.setU32(r, 'vcpu_id', th.vcpu);
      ctx.note(tid, first, last);
      return r;
    };
    switch (ev.t) {
      case 'pf': {
        if (ev.vcpu !== null) th.vcpu = ev.vcpu;
        th.sawPageFault = true;
        th.faultGpa = ev.gpa;
        const r = begin(Kind.FAULT);
        w.setU64(r, 'gpa', ev.gpa);
        w.setU64(r, 'error_code', ev.err);
        const rip = ev.rip ?? th.rip;
        if (rip !== null) w.setU64(r, 'rip', rip);
        if (ev.inv) {
          ctx.hasSeq = true;
          w.setU64(r, 'mmu_seq', ev.inv.seq);
          w.setInProgress(r, Number(ev.inv.inProg & 0x7fffffffn));
          w.setU64(r, 'range_start', ev.inv.start);
          w.setU64(r, 'range_end', ev.inv.end);
        }
        break;
      }
      case 'walk': {
        if (th.sawPageFault) {
          ctx.ignored++;
          break;
        }
        th.faultGpa = ev.addr;
        const r = begin(Kind.FAULT);
        w.setU64(r, 'gpa', ev.addr);
        w.setU64(r, 'error_code', ev.err);
        if (th.rip !== null) w.setU64(r, 'rip', th.rip);
        break;
      }
      case 'exit': {
        if (ev.vcpu !== null) th.vcpu = ev.vcpu;
        th.rip = ev.rip;
        const r = begin(Kind.EXIT);
        w.setU64(r, 'rip', ev.rip);
        break;
      }
      case 'entry':
        th.vcpu = ev.vcpu;
        ctx.ignored++;
        break;
      case 'spte': {
        if (ev.present) {
          if (th.faultGpa !== null && (th.faultGpa >> 12n) >> BigInt(9 * (Math.max(1, ev.level) - 1)) === ev.gfn >> BigInt(9 * (Math.max(1, ev.level) - 1))) {
            const r = begin(Kind.MAP);
            w.setU64(r, 'gpa', th.faultGpa);
            if (th.rip !== null) w.setU64(r, 'rip', th.rip);
          } else {
            ctx.ignored++;
          }
        } else if (ev.old !== false) {
          const pages = 1n << BigInt(9 * Math.min(4, Math.max(0, ev.level - 1)));
          const r = begin(Kind.INVALIDATE_START);
          w.setU64(r, 'range_start', ev.gfn);
          w.setU64(r, 'range_end', ev.gfn + pages);
          w.setFlags(r, Flag.RANGE_GFN);
        } else {
          ctx.ignored++;
        }
        break;
      }
      case 'fast': {
        th.vcpu = ev.vcpu;
        if (ev.mapped) {
          const r = begin(Kind.MAP);
          w.setU64(r, 'gpa', th.faultGpa !== null && th.faultGpa >> 12n === ev.gpa >> 12n ? th.faultGpa : ev.gpa);
        } else {
          ctx.ignored++;
        }
        break;
      }
      case 'unmap': {
        const r = begin(Kind.INVALIDATE_START);
        w.setU64(r, 'range_start', ev.start);
        w.setU64(r, 'range_end', ev.end);
        break;
      }
      default:
        ctx.ignored++;
    }
  }
}

/** One event line of trace-cmd report or perf script, parsed. */
export interface KvmTextEntry {
  tid: number;
  pid: number | null;
  tsNs: number;
  /** null: an event of another system (ignored) */
  ev: KvmEvent | null;
}

/** "sec.frac" as ns */
export function secondsToNs(sec: string, frac: string): number {
  return Number(sec) * 1e9 + Number(frac.padEnd(9, '0').slice(0, 9));
}

/** two events run together (a lost line end): a second "[CPU] TIME:" inside the fields */
const SECOND_EVENT = /\[\d{1,5}\] (?:[.a-zA-Z0-9]{4,6} )?\d{1,12}\.\d{1,9}: /;

/**
 * The LineFormat of a text of kvm events, given how its head parses into
 * [tid, pid | null, sec, frac, event name, fields].
 */
export function kvmTextFormat(isHead: (line: string) => boolean,
  head: (line: string) => [number, number | null, string, string, string, string] | null, what: string) {
  const sink = new KvmEventSink();
  return {
    isHead,
    parse(line: string): KvmTextEntry | string {
      const h = head(line);
      if (!h) return `not a ${what} line`;
      const [tid, pid, sec, frac, name, body] = h;
      if (tid > 0xffffffff || (pid !== null && pid > 0xffffffff)) return 'tid/pid out of range';
      if (SECOND_EVENT.test(body)) return 'two events in one line';
      const ev = parseKvmEvent(name, body);
      if (typeof ev === 'string') return ev;
      return { tid, pid, tsNs: secondsToNs(sec, frac), ev };
    },
    take(e: KvmTextEntry, first: number, last: number, ctx: ImportContext): void {
      if (e.ev === null) {
        ctx.ignored++;
        return;
      }
      ctx.hasTid = true;
      if (e.pid !== null) ctx.hasPid = true;
      sink.take(e.ev, e.tid, e.pid, e.tsNs, first, last, ctx);
    },
  };
}
