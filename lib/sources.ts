/**
 * Invalidation sources: which part of the kernel invalidated a VM's memory (issue 17).
 *
 * Every INVALIDATE_START record carries the invalidating task's comm and a kernel stack id
 * (events.h, the overlay of gpa..hva), and on the notifier probes (kprobe / fentry mode) the
 * range's enum mmu_notifier_event. The kernel only takes the stack (bpf_get_stackid: the walk
 * plus one hash into a deduplicating map); the naming happens here, once per distinct stack id,
 * and is cached: a host has a few dozen distinct invalidation stacks, so per record the cost in
 * user space is one Map lookup (docs/notes.md has the measured kernel cost).
 *
 * SOURCE_RULES is the table (function names -> source), checked in order: the first rule any
 * frame matches names the source. The order encodes precedence where one path runs through
 * another: NUMA balancing and compaction migrate pages (migrate_pages), so they come before
 * migration; compaction and reclaim unmap pages, so they come before the VMM's own calls (a VMM
 * page fault that compacts directly is compaction, not the VMM).
 *
 * Which VM (lib/memslots.ts): an invalidation is counted for a VM only when its hva range
 * overlaps one of that VM's memslots. The notifier probes name the VM; the tracepoint (flag
 * VM_BY_PID) does not, so the range decides: among the invalidating process's own VMs for
 * sources that change the task's own address space (its madvise, munmap, fork, ...), else among
 * every VM (kernel threads, direct reclaim / compaction in any process). Several VMs overlapping:
 * the 'unknown' VM. No VM's memory (the VMM's own heap): outsideGuestMemory(), per source, never a
 * VM's. Without a memslot table (no iterator, a capture) records count as their vm_id says.
 */
import * as fs from 'fs';
import { MATCH_AMBIGUOUS, MATCH_NONE, type MemslotSource, type MatchScope, type MemslotIndex, type MemslotVm } from './memslots';
import { Flag, INVALIDATE_OFFSETS, Kind, UNKNOWN, type EventBatch } from './record';

export const SOURCE_NAMES = [
  'memslot', 'numa-balancing', 'ksm', 'thp-collapse', 'compaction', 'reclaim', 'migration',
  'vmm-madvise', 'vmm-munmap', 'vmm-mprotect', 'vmm-mremap', 'vmm-exit', 'fork', 'cow', 'other',
] as const;
export type SourceName = (typeof SOURCE_NAMES)[number];

export interface SourceRule {
  source: SourceName;
  /** kernel function names; a trailing '*' matches any suffix */
  functions: readonly string[];
  /** comms of the kernel thread that does this work, for records without a stack ('*' suffix as above) */
  comms?: readonly string[];
  /** what it is, for people */
  what: string;
}

export const SOURCE_RULES: readonly SourceRule[] = [
  { source: 'memslot', what: 'the VMM changed or deleted a memory slot (KVM zaps the slot)',
    functions: ['kvm_set_memslot', 'kvm_arch_flush_shadow_memslot', 'kvm_arch_flush_shadow_all', 'kvm_set_memory_region*', '__kvm_set_memory_region'] },
  { source: 'numa-balancing', what: 'automatic NUMA balancing: hinting-fault scans and the migrations they trigger',
    functions: ['task_numa_work', 'change_prot_numa', 'do_numa_page', 'do_huge_pmd_numa_page', 'migrate_misplaced_*', 'numa_migrate_prep'] },
  { source: 'ksm', what: 'KSM (ksmd) merging identical pages',
    functions: ['ksm_do_scan', 'ksm_scan_thread', 'try_to_merge_*', 'replace_page', 'write_protect_page', 'break_ksm*', 'cmp_and_merge_page'],
    comms: ['ksmd'] },
  { source: 'thp-collapse', what: 'khugepaged / MADV_COLLAPSE collapsing small pages into a huge page',
    functions: ['collapse_huge_page', 'khugepaged*', 'hpage_collapse_scan_*', 'khugepaged_scan_*', 'collapse_pte_mapped_thp', 'madvise_collapse', 'collapse_file'],
    comms: ['khugepaged'] },
  { source: 'compaction', what: 'memory compaction (kcompactd, proactive or direct compaction)',
    functions: ['compact_*', 'kcompactd*', 'isolate_migratepages*', 'try_to_compact_pages', 'sysctl_compaction_handler', 'proactive_compact_node', '__alloc_pages_direct_compact'],
    comms: ['kcompactd*'] },
  { source: 'reclaim', what: 'page reclaim / swap (kswapd or direct reclaim)',
    functions: ['kswapd', 'balance_pgdat', 'shrink_*', 'try_to_free_pages', 'do_try_to_free_pages', 'reclaim_pages', 'try_to_unmap', 'try_to_unmap_one'],
    comms: ['kswapd*'] },
  { source: 'migration', what: 'page migration (move_pages, memory hotplug/offline, cgroup cpuset moves)',
    functions: ['migrate_pages', 'migrate_pages_batch', 'do_migrate_pages', 'kernel_move_pages', 'do_pages_move', 'migrate_folio*', 'try_to_migrate*'] },
  { source: 'vmm-madvise', what: "the VMM's own madvise (balloon / free page reporting / DONTNEED)",
    functions: ['do_madvise', '__x64_sys_madvise', '__do_sys_madvise', 'madvise_vma_behavior', 'madvise_dontneed_free', 'madvise_free_single_vma', 'vector_madvise', '__x64_sys_process_madvise'] },
  { source: 'vmm-munmap', what: "the VMM's own munmap / mmap over a mapping",
    functions: ['__vm_munmap', '__x64_sys_munmap', 'do_vmi_munmap', 'do_vmi_align_munmap', 'do_vmi_align_munmap*', 'vms_complete_munmap_vmas', 'mmap_region', '__mmap_region'] },
  { source: 'vmm-mprotect', what: "the VMM's own mprotect",
    functions: ['do_mprotect_pkey', '__x64_sys_mprotect', '__x64_sys_pkey_mprotect', 'mprotect_fixup'] },
  { source: 'vmm-mremap', what: "the VMM's own mremap",
    functions: ['__x64_sys_mremap', '__do_sys_mremap', 'do_mremap', 'move_vma', 'move_page_tables', 'mremap_to'] },
  { source: 'vmm-exit', what: 'the VMM process exiting (its address space torn down)',
    functions: ['exit_mmap', 'mmput', 'do_exit'] },
  { source: 'fork', what: 'the VMM forking: its private memory write-protected for copy-on-write',
    functions: ['copy_page_range', 'dup_mmap'] },
  { source: 'cow', what: 'a copy-on-write break: a write to a page shared after fork or by KSM, or to the zero page a read had mapped (seen in vCPU threads faulting guest memory back in after MADV_DONTNEED)',
    functions: ['wp_page_copy', 'do_wp_page'] },
];

/** Frames of the tracing and notifier machinery above the caller (never the source). */
const MACHINERY = /^(bpf_|__bpf_|trace_|__traceiter_|perf_|kvm_mmu_notifier_|__mmu_notifier_|mmu_notifier_|kvm_unmap_|__kvm_handle_hva_range|kvm_handle_hva_range)/;

/** enum mmu_notifier_event (include/linux/mmu_notifier.h, same values 5.x .. 6.18) */
export const RANGE_EVENTS = ['unmap', 'clear', 'protection-vma', 'protection-page', 'soft-dirty', 'release', 'migrate', 'exclusive'] as const;

export function rangeEventName(event: number): string | null {
  if (event === 0xffffffff || event === UNKNOWN) return null;
  return RANGE_EVENTS[event] ?? `event-${event}`;
}

/** "try_to_merge_one_page.isra.0+0x1e5/0x300 [kvm]" -> "try_to_merge_one_page" */
export function frameFunction(frame: string): string {
  let s = frame.trim();
  const sp = s.search(/[\s[]/);
  if (sp >= 0) s = s.slice(0, sp);
  const plus = s.indexOf('+');
  if (plus >= 0) s = s.slice(0, plus);
  const dot = s.indexOf('.');
  return dot > 0 ? s.slice(0, dot) : s;
}

function matches(pattern: string, name: string): boolean {
  return pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : name === pattern;
}

export interface Attribution {
  source: SourceName;
  /** the frame (function name) or comm that decided it; for 'other': the first frame below the notifier */
  evidence: string;
  /** how it was decided */
  by: 'stack' | 'comm' | 'range-event' | 'none';
}

/**
 * The source of one invalidation. frames: innermost first (as bpf_get_stackid stores them),
 * symbolised (frameFunction() is applied); comm: the invalidating task; event: the range's
 * enum mmu_notifier_event or null.
 */
export function classifyInvalidation(frames: readonly string[] | null, comm: string | null, event: number | null = null): Attribution {
  const names = frames ? frames.map(frameFunction) : [];
  for (const rule of SOURCE_RULES) {
    for (const name of names) {
      if (rule.functions.some((p) => matches(p, name))) return { source: rule.source, evidence: name, by: 'stack' };
    }
  }
  if (comm) {
    for (const rule of SOURCE_RULES) {
      if (rule.comms?.some((p) => matches(p, comm))) return { source: rule.source, evidence: comm, by: 'comm' };
    }
  }
  if (event !== null && RANGE_EVENTS[event] === 'migrate') return { source: 'migration', evidence: 'range event migrate', by: 'range-event' };
  const top = names.find((n) => !MACHINERY.test(n));
  return { source: 'other', evidence: top ?? (comm ? `comm ${comm}` : 'no stack'), by: 'none' };
}

/** Kernel symbols for stack addresses: /proc/kallsyms read once, sorted, binary-searched. */
export class KernelSymbols {
  private addrs: BigUint64Array = new BigUint64Array(0);
  private names: string[] = [];
  private loaded = false;

  constructor(private readonly text: () => string = () => fs.readFileSync('/proc/kallsyms', 'latin1')) {}

  private load(): void {
    this.loaded = true;
    const rows: [bigint, string][] = [];
    for (const line of this.text().split('\n')) {
      const a = line.indexOf(' ');
      if (a < 0) continue;
      const type = line[a + 1];
      if (type !== 't' && type !== 'T' && type !== 'w' && type !== 'W') continue;
      const rest = line.slice(a + 3);
      const tab = rest.indexOf('\t');
      rows.push([BigInt('0x' + line.slice(0, a)), tab < 0 ? rest : rest.slice(0, tab)]);
    }
    rows.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    this.addrs = BigUint64Array.from(rows.map((r) => r[0]));
    this.names = rows.map((r) => r[1]);
  }

  /** "function+0xoff", or the address in hex when no symbol covers it (kptr_restrict: all zero). */
  resolve(ip: bigint): string {
    if (!this.loaded) this.load();
    let lo = 0, hi = this.addrs.length - 1, at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.addrs[mid] <= ip) { at = mid; lo = mid + 1; } else hi = mid - 1;
    }
    if (at < 0 || this.addrs[at] === 0n) return '0x' + ip.toString(16);
    return `${this.names[at]}+0x${(ip - this.addrs[at]).toString(16)}`;
  }
}

/** The comm in an INVALIDATE_START record, or null when the record has none (comm[0] = 0xff). */
export function recordComm(batch: EventBatch, i: number): string | null {
  const at = INVALIDATE_OFFSETS.comm;
  if ((batch.u32At(i, at) & 0xff) === 0xff) return null;
  const b = batch.recordBytes(i);
  let end = at;
  while (end < at + 16 && b[end] !== 0) end++;
  return Buffer.from(b.subarray(at, end)).toString('latin1');
}

function recordU32(batch: EventBatch, i: number, off: number): number {
  return batch.u32At(i, off);
}

/** stack_id as a signed number: >= 0 an id, -1 not taken, other negative: -errno */
export function recordStackId(batch: EventBatch, i: number): number {
  return recordU32(batch, i, INVALIDATE_OFFSETS.stack_id) | 0;
}
export function recordRangeEvent(batch: EventBatch, i: number): number | null {
  const v = recordU32(batch, i, INVALIDATE_OFFSETS.range_event);
  return v === 0xffffffff ? null : v;
}

/** A stack by id as symbolised frames (innermost first), or null when it is gone / unknown. */
export type StackLookup = (id: number) => readonly string[] | null;

export interface SourceCount {
  source: SourceName;
  /** invalidations (the sum of repeat) */
  count: number;
  /** the frame or comm that decided it, from the first such record */
  evidence: string;
  /** the comm of the first such record */
  comm: string | null;
}

export interface VmSources {
  /** 16 hex digits, or 'unknown' when the record could not say which VM */
  vmId: string;
  total: number;
  sources: SourceCount[];
}

const UNKNOWN_VM = 'unknown';
const TWO32 = 4294967296;

/** Sources that change the invalidating task's own address space: only its own VMs can be hit. */
const OWN_MM_SOURCES: ReadonlySet<SourceName> = new Set<SourceName>(['vmm-madvise', 'vmm-munmap', 'vmm-mprotect', 'vmm-mremap', 'vmm-exit', 'fork', 'cow', 'numa-balancing']);
export function matchScope(source: SourceName): MatchScope {
  return OWN_MM_SOURCES.has(source) ? 'own' : 'any';
}

/** How the records' hva ranges fared against the VMs' memslots (invalidations, i.e. sums of repeat). */
export interface MemslotMatchStats {
  /** a memslot table was available (false: every record counted as its vm_id says) */
  enabled: boolean;
  /** why there is no table, or why the last read failed */
  error: string | null;
  /** VMs in the current table */
  vms: number;
  /** checked against the table and counted for the one VM they overlap */
  matched: number;
  /** overlapping several VMs' memslots (same hva in different VMM processes): counted for the 'unknown' VM */
  ambiguous: number;
  /** overlapping no VM's memslots: not counted for any VM (outsideGuestMemory) */
  outside: number;
  /** counted as their vm_id says without a check: no table, or the VM missing from it or cut short by the walk's bounds */
  unchecked: number;
}

interface Decided {
  attribution: Attribution;
  /** comm of the first record seen with this stack / comm */
  comm: string | null;
}

interface VmEntry {
  vmId: string;
  total: number;
  counts: Map<SourceName, SourceCount>;
}

/**
 * Counts invalidations per VM and source from record batches. Per record, with nothing
 * allocated once a stack / comm / VM has been seen: a Map lookup by stack id (symbolised and
 * classified on first sight), or by a number made of the comm's bytes when there is no stack.
 * The stacks it resolved are kept (stacks()) so a capture can carry them.
 */
export class InvalidationSources {
  private readonly byStack = new Map<number, Decided>();
  private readonly byComm = new Map<number, Decided>();
  private readonly vms = new Map<number, VmEntry>();
  private readonly outside = new Map<SourceName, SourceCount>();
  /** stack id -> frames as resolved, for captures */
  private readonly frames = new Map<number, readonly string[]>();
  private readonly match = { matched: 0, ambiguous: 0, outside: 0, unchecked: 0 };
  invalidations = 0;

  /**
   * lookup: the live tracer's stacks (symbolised); or a capture's stored table. memslots: every
   * VM's memslots (Tracer.memslots()), or null: no check, each record counts for its vm_id.
   */
  constructor(private readonly lookup: StackLookup | null, private readonly memslots: MemslotSource | null = null) {}

  /** Frames resolved so far (id -> innermost-first function+offset strings). */
  stacks(): Record<string, readonly string[]> {
    return Object.fromEntries([...this.frames].map(([id, f]) => [String(id), f]));
  }

  /** The attribution of record i (an INVALIDATE_START) and the comm first seen with it. */
  decide(batch: EventBatch, i: number): Decided {
    const id = recordStackId(batch, i);
    if (id >= 0) {
      const d = this.byStack.get(id);
      if (d) return d;
      const frames = this.lookup ? this.lookup(id) : null;
      const comm = recordComm(batch, i);
      const made = { attribution: classifyInvalidation(frames, comm, recordRangeEvent(batch, i)), comm };
      if (frames) {
        this.frames.set(id, frames);
        this.byStack.set(id, made);
      }
      return made;
    }
    // no stack: comm (its first 12 bytes, which tell every kernel thread apart) + range event
    const c = INVALIDATE_OFFSETS.comm;
    const key = ((recordU32(batch, i, c) ^ Math.imul(recordU32(batch, i, c + 4), 0x9e3779b1) ^
      Math.imul(recordU32(batch, i, c + 8), 0x85ebca6b)) >>> 0) * 256 + ((recordU32(batch, i, INVALIDATE_OFFSETS.range_event) + 1) & 0xff);
    let d = this.byComm.get(key);
    if (!d) {
      const comm = recordComm(batch, i);
      this.byComm.set(key, (d = { attribution: classifyInvalidation(null, comm, recordRangeEvent(batch, i)), comm }));
    }
    return d;
  }

  add(batch: EventBatch): void {
    for (let i = 0; i < batch.length; i++) {
      if (batch.kind(i) !== Kind.INVALIDATE_START) continue;
      const d = this.decide(batch, i);
      const n = batch.repeat(i);
      this.invalidations += n;
      const lo = batch.vmIdLo(i), hi = batch.vmIdHi(i);
      let index = this.memslots ? this.memslots.current() : null;
      if (!index) {
        this.match.unchecked += n;
        this.countFor(lo, hi, d, n);
        continue;
      }
      const start = batch.rangeStart(i), end = batch.rangeEnd(i);
      const unknownVm = lo === 0xffffffff && hi === 0xffffffff;
      if (!unknownVm && (batch.flags(i) & Flag.VM_BY_PID) === 0) {
        // the notifier named the VM: its memory or not
        let v = index.indexOfHalves(lo, hi);
        if (v < 0 && (index = this.memslots!.refreshOnMiss())) v = index.indexOfHalves(lo, hi);
        if (!index || v < 0 || (index.vms[v].truncated && !index.overlapsVm(v, start, end))) {
          this.match.unchecked += n;
          this.countFor(lo, hi, d, n);
        } else if (index.overlapsVm(v, start, end)) {
          this.match.matched += n;
          this.countFor(lo, hi, d, n);
        } else {
          this.countOutside(d, n);
        }
        continue;
      }
      // the tracepoint: the range decides (a miss may be a VM created since the last read)
      const pid = batch.pid(i);
      const scope = matchScope(d.attribution.source);
      let m = index.match(start, end, pid, scope);
      if (m === MATCH_NONE && (index = this.memslots!.refreshOnMiss())) m = index.match(start, end, pid, scope);
      if (index && m >= 0) {
        this.match.matched += n;
        this.countFor(index.vmIdLo[m], index.vmIdHi[m], d, n);
      } else if (m === MATCH_AMBIGUOUS) {
        this.match.ambiguous += n;
        this.countFor(0xffffffff, 0xffffffff, d, n);
      } else if (!index || index.truncatedFor(pid, scope) || this.staleFor(index, lo, hi, unknownVm, pid, scope)) {
        this.match.unchecked += n;
        this.countFor(lo, hi, d, n);
      } else {
        this.countOutside(d, n);
      }
    }
  }

  /**
   * A miss that proves nothing: the table predates the record's VM (the tracepoint named one by
   * pid that the table lacks) or, for the task's own address space, the task holds no VM in it,
   * though only a VMM's mm has KVM's notifier. Until the rate-limited re-read has the VM, such
   * records are counted as they say (unchecked), not as outside guest memory (measured: ~0.5 s of
   * a new VMM's 170k/s madvise burst, 91,632 invalidations, went 'outside' before this).
   */
  private staleFor(index: MemslotIndex, lo: number, hi: number, unknownVm: boolean, pid: number, scope: MatchScope): boolean {
    if (!unknownVm && index.indexOfHalves(lo, hi) < 0) return true;
    return scope === 'own' && !index.holdsVm(pid);
  }

  private countFor(lo: number, hi: number, d: Decided, n: number): void {
    const key = (hi & 0x1fffff) * TWO32 + lo;  // 53 bits of a keyed hash: distinct per VM in practice
    let v = this.vms.get(key);
    if (!v) {
      const vmId = lo === 0xffffffff && hi === 0xffffffff ? UNKNOWN_VM
        : hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
      this.vms.set(key, (v = { vmId, total: 0, counts: new Map() }));
    }
    v.total += n;
    const src = d.attribution.source;
    const c = v.counts.get(src);
    if (c) c.count += n;
    else v.counts.set(src, { source: src, count: n, evidence: d.attribution.evidence, comm: d.comm });
  }

  private countOutside(d: Decided, n: number): void {
    this.match.outside += n;
    const src = d.attribution.source;
    const c = this.outside.get(src);
    if (c) c.count += n;
    else this.outside.set(src, { source: src, count: n, evidence: d.attribution.evidence, comm: d.comm });
  }

  /** Invalidations of VMM memory that is no VM's guest memory (heap madvise / munmap ...), by source, most first. */
  outsideGuestMemory(): SourceCount[] {
    return [...this.outside.values()].map((c) => ({ ...c })).sort((a, b) => b.count - a.count);
  }

  /** How the records' ranges fared against the memslots. */
  matchStats(): MemslotMatchStats {
    const index = this.memslots ? this.memslots.current() : null;
    const error = this.memslots ? this.memslots.error ?? null : 'no memslot table (a capture, or not asked for)';
    return { enabled: index !== null, error, vms: index ? index.vms.length : 0, ...this.match };
  }

  /** Per VM (most invalidated first), sources most frequent first. */
  snapshot(): VmSources[] {
    return [...this.vms.values()].map((v) => ({
      vmId: v.vmId, total: v.total,
      sources: [...v.counts.values()].map((c) => ({ ...c })).sort((a, b) => b.count - a.count),
    })).sort((a, b) => b.total - a.total);
  }
}

/** Per-VM per-source rates (per second) between two snapshots taken dtMs apart. */
export function sourceRates(before: VmSources[], after: VmSources[], dtMs: number): { vmId: string; source: SourceName; perSec: number; evidence: string; comm: string | null }[] {
  const prev = new Map<string, number>();
  for (const v of before) for (const s of v.sources) prev.set(`${v.vmId}/${s.source}`, s.count);
  const out: { vmId: string; source: SourceName; perSec: number; evidence: string; comm: string | null }[] = [];
  for (const v of after) {
    for (const s of v.sources) {
      const d = s.count - (prev.get(`${v.vmId}/${s.source}`) ?? 0);
      if (d > 0) out.push({ vmId: v.vmId, source: s.source, perSec: dtMs > 0 ? (d * 1000) / dtMs : 0, evidence: s.evidence, comm: s.comm });
    }
  }
  return out.sort((a, b) => b.perSec - a.perSec);
}

/** What removes a source, by whether the kernel has the incident's bug. */
export function remedy(source: SourceName, affected: boolean): string {
  if (!affected) {
    return 'fixed kernel: not a hang risk; each invalidation zaps SPTEs the guest then refaults (CPU cost)' +
      (source === 'numa-balancing' ? ' — NUMA balancing off (sysctl kernel.numa_balancing=0) removes it on VM hosts' : '');
  }
  const fix: Partial<Record<SourceName, string>> = {
    'numa-balancing': 'turn NUMA balancing off on VM hosts: sysctl kernel.numa_balancing=0',
    ksm: 'turn KSM off: echo 0 > /sys/kernel/mm/ksm/run (or 2 to unmerge), or stop the VMM marking guest memory MADV_MERGEABLE',
    'thp-collapse': 'stop khugepaged collapsing guest memory: /sys/kernel/mm/transparent_hugepage/khugepaged/defrag=0 (or back guests with hugetlbfs)',
    compaction: 'make compaction rarer: /sys/kernel/mm/transparent_hugepage/defrag=never or madvise, vm.compaction_proactiveness=0',
    reclaim: 'give the host memory headroom (the guest is being reclaimed/swapped): lower overcommit, or lock guest memory',
    migration: 'find what migrates guest pages (cpuset moves, memory offlining, move_pages callers)',
    memslot: 'memslot changes come from the VMM (hotplug, ROM/PCI BAR remaps): expected to be rare',
    cow: 'copy-on-write breaks: a VMM that discards guest pages (MADV_DONTNEED: balloon, free page reporting) makes every next write a zero-page copy; no fork() in the VMM, no KSM on guest memory',
    fork: 'the VMM forks: make it not fork (or mark guest memory MADV_DONTFORK)',
  };
  const specific = fix[source] ?? (source.startsWith('vmm-') ? "the VMM's own calls (balloon, free page reporting): reduce them in the VMM's configuration" : 'see the evidence frame');
  return `affected kernel: ${specific}; live-migrate the VM before its forecast crossing of 0x80000000 (migration resets the sequence)`;
}

/**
 * The kernel stacks of a capture's invalidations (stack id -> frames) live beside it in
 * <capture>.stacks.json: the capture header is written before any stack is known, and the
 * format has no chunk type for them yet. Without the file, analyze names sources by comm only.
 */
export function stacksFilePath(capture: string): string {
  return `${capture}.stacks.json`;
}

/** memslots: every VM's memslots seen while recording (the VM ids are the capture's), for analyze's memslot match */
export function writeStacksFile(capture: string, stacks: Record<string, readonly string[]>, memslots?: readonly MemslotVm[]): void {
  fs.writeFileSync(stacksFilePath(capture), JSON.stringify({ format: 'kvmfault invalidation stacks v1', stacks, ...(memslots?.length ? { memslots } : {}) }) + '\n');
}

/** The stacks file's JSON, or null (no file, unreadable). */
function readStacksJson(capture: string): { stacks?: unknown; memslots?: unknown } | null {
  try {
    return JSON.parse(fs.readFileSync(stacksFilePath(capture), 'utf8'));
  } catch {
    return null;
  }
}

/** The VMs' memslots stored beside a capture, or null (none stored, no file, unreadable). */
export function readStacksFileMemslots(capture: string): MemslotVm[] | null {
  const list = readStacksJson(capture)?.memslots;
  if (!Array.isArray(list)) return null;
  const ok = (v: unknown): v is MemslotVm => {
    const m = v as MemslotVm;
    return typeof m === 'object' && m !== null && typeof m.vmId === 'string' && /^[0-9a-f]{16}$/.test(m.vmId) &&
      Array.isArray(m.pids) && m.pids.every((p) => Number.isInteger(p)) && Array.isArray(m.slots) &&
      m.slots.every((s) => typeof s === 'object' && s !== null && Number.isFinite(s.hva) && Number.isFinite(s.size));
  };
  const vms = list.filter(ok).map((m) => ({ ...m, truncated: m.truncated === true, shapeUnknown: m.shapeUnknown === true }));
  return vms.length ? vms : null;
}

/** The lookup for a capture's stacks, or null when it has no stacks file (or an unreadable one). */
export function readStacksFile(capture: string): StackLookup | null {
  const stacks = readStacksJson(capture)?.stacks;
  if (typeof stacks !== 'object' || stacks === null) return null;
  const table = new Map<number, readonly string[]>();
  for (const [id, frames] of Object.entries(stacks as Record<string, unknown>)) {
    if (Array.isArray(frames) && frames.every((f) => typeof f === 'string')) table.set(Number(id), frames as string[]);
  }
  return (id) => table.get(id) ?? null;
}
