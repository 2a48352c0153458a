/**
 * KVM's per-VM counters from debugfs (/sys/kernel/debug/kvm/<pid>-<fd>/pf_taken, pf_fixed,
 * pf_spurious, pf_emulate, ...), as people paste them: `tail -n1 pf*` output, a
 * "==> pf_taken <==" (or "==> /sys/kernel/debug/kvm/4200-11/pf_taken <==") header and the value
 * on the next line, or `grep . pf*` output ("pf_taken:123", "4200-11/pf_taken:123"); two or
 * more snapshots, separated by a `date` line, by a blank line and a new block, or simply by a
 * counter coming again. The VM is named by the "<pid>-<fd>" in the path; a header without a
 * path takes the name from the last command or prompt that showed one ("cd .../4200-11"), else
 * "vm" (or "all VMs" for the files at the top of /sys/kernel/debug/kvm).
 *
 * Verdict per VM, between its first and last snapshot (counters are faults of all its vCPUs):
 * - stuck: pf_taken grew by at least `stuckAttempts` (default 1000) while pf_fixed and
 *   pf_emulate did not move: faults are taken and none completes (the sign-extension hang
 *   looks like this: every fault is abandoned as stale, RET_PF_RETRY counts nothing);
 * - retrying: pf_taken grew by at least the threshold and under 1% of the faults were fixed or
 *   emulated;
 * - progressing: faults are fixed; idle: pf_taken did not move; unknown: one snapshot.
 * The growth of pf_taken counts as attempts (the counters carry the history: README). Counters
 * say nothing of which vCPU or address, nor of the cause: the explanation says what to capture.
 */
import { createLineImporter, CounterVm, ImportContext, TextImporter, TextImportOptions } from './text';

const HEADER = /^==> ?(.{0,300}?) ?<==$/;
const VALUE = /^-?\d{1,20}$/;
const GREP = /^((?:[^\s:]{0,300}\/)?)([a-z][a-z0-9_]{0,63}):(-?\d{1,20})$/;
const VMDIR = /(?:^|\/)(\d{1,10})-(\d{1,10})(?:\/|$)/;
const MONTHS = 'Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec';
const DATE = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),? (?:(${MONTHS}) (\\d{1,2})|(\\d{1,2}) (${MONTHS})\\.?),? (\\d{1,2}):(\\d{2}):(\\d{2})(?: [AP]M)?(?: [A-Z]{1,5}| [+-]\\d{4})?,? (\\d{4})$`);

type Entry =
  | { t: 'header'; path: string }
  | { t: 'value'; v: number }
  | { t: 'grep'; path: string; name: string; v: number }
  | { t: 'date'; ms: number };

interface Snapshot {
  values: Map<string, number>;
  ms: number | null;
  first: number;
  last: number;
}

export function kvmStatFormat(stuckAttempts = 1000) {
  let curName: string | null = null; // from a prompt or command
  let header: { vm: string; counter: string; line: number } | null = null;
  let dateMs: number | null = null;
  const vms = new Map<string, Snapshot[]>();

  const vmOf = (path: string): { vm: string; counter: string } => {
    const slash = path.lastIndexOf('/');
    const counter = path.slice(slash + 1);
    const dir = VMDIR.exec(path.slice(0, slash + 1));
    if (dir) return { vm: `${dir[1]}-${dir[2]}`, counter };
    if (/\/kvm\/?$/.test(path.slice(0, slash + 1))) return { vm: 'all VMs', counter };
    return { vm: curName ?? 'vm', counter };
  };
  const record = (vm: string, counter: string, v: number, line: number, first: number): void => {
    let snaps = vms.get(vm);
    if (!snaps) {
      if (vms.size >= 4096) return;
      vms.set(vm, (snaps = []));
    }
    let s = snaps[snaps.length - 1];
    // a counter seen again (or a date since the snapshot began) starts a new snapshot
    if (!s || s.values.has(counter) || (dateMs !== null && s.ms !== dateMs)) {
      if (snaps.length >= 100000) snaps.splice(1, 1); // keep the first, bounded
      s = { values: new Map(), ms: dateMs, first, last: line };
      snaps.push(s);
    }
    s.values.set(counter, v);
    s.last = line;
  };

  return {
    isHead: (line: string): boolean => HEADER.test(line) || VALUE.test(line) || GREP.test(line) || DATE.test(line),
    parse(line: string): Entry | string {
      let m = HEADER.exec(line);
      if (m) return { t: 'header', path: m[1] };
      if (VALUE.test(line)) return { t: 'value', v: Number(line) };
      if ((m = GREP.exec(line))) return { t: 'grep', path: m[1] + m[2], name: m[2], v: Number(m[3]) };
      if ((m = DATE.exec(line))) {
        const mon = m[1] ?? m[4], day = m[2] ?? m[3];
        const ms = Date.parse(`${day} ${mon} ${m[8]} ${m[5]}:${m[6]}:${m[7]} UTC`);
        if (Number.isNaN(ms)) return 'bad date';
        return { t: 'date', ms };
      }
      return 'not a counter line ("==> pf_taken <==", a value, "pf_taken:N" or a date)';
    },
    take(e: Entry, first: number, last: number, ctx: ImportContext): void {
      switch (e.t) {
        case 'header':
          header = { ...vmOf(e.path), line: first };
          break;
        case 'value':
          if (!header) {
            ctx.ignored++;
            break;
          }
          record(header.vm, header.counter, e.v, last, header.line);
          header = null;
          break;
        case 'grep': {
          const { vm, counter } = vmOf(e.path);
          record(vm, counter, e.v, last, first);
          break;
        }
        case 'date':
          dateMs = e.ms;
          break;
      }
    },
    noise(line: string): void {
      // a prompt or command naming a VM directory: headers without a path belong to it
      for (const raw of line.split(/[ ;&|]/)) {
        const word = raw.replace(/^.*:/, '').replace(/[#$%>]+$/, '');
        const d = /(?:^|\/)(\d{1,10})-(\d{1,10})\/?$/.exec(word);
        if (d) curName = `${d[1]}-${d[2]}`;
      }
    },
    finish(ctx: ImportContext): void {
      const out: CounterVm[] = [];
      for (const [name, snaps] of vms) out.push(verdict(name, snaps, stuckAttempts));
      const order = { stuck: 0, retrying: 1, progressing: 2, idle: 3, unknown: 4 } as const;
      out.sort((a, b) => order[a.state] - order[b.state] || a.name.localeCompare(b.name));
      ctx.counters = out;
    },
  };
}

function verdict(name: string, snaps: Snapshot[], stuckAttempts: number): CounterVm {
  const a = snaps[0], b = snaps[snaps.length - 1];
  const counters: CounterVm['counters'] = {};
  for (const [k, v] of a.values) {
    // the last snapshot that has the counter
    let last = v;
    for (let i = snaps.length - 1; i > 0; i--) {
      const x = snaps[i].values.get(k);
      if (x !== undefined) {
        last = x;
        break;
      }
    }
    counters[k] = { first: v, last, delta: last - v };
  }
  const d = (k: string): number | null => (counters[k] ? counters[k].delta : null);
  const taken = d('pf_taken'), fixed = d('pf_fixed') ?? 0, emulate = d('pf_emulate') ?? 0, spurious = d('pf_spurious') ?? 0;
  const seconds = a.ms !== null && b.ms !== null && b.ms > a.ms ? (b.ms - a.ms) / 1000 : null;
  const dir = /^\d+-\d+$/.test(name);
  const pid = dir ? Number(name.split('-')[0]) : null;
  const during = seconds !== null ? ` in ${seconds} s` : '';
  let state: CounterVm['state'];
  let explanation: string;
  const attempts = taken === null ? 0 : Math.max(0, taken - fixed - emulate - spurious);
  if (snaps.length < 2 || taken === null) {
    state = 'unknown';
    explanation = taken === null ? 'no pf_taken counter in the log' : 'one snapshot only: take two, some seconds apart, to see what moves';
  } else if (taken <= 0) {
    state = 'idle';
    explanation = `pf_taken did not move over ${snaps.length} snapshots${during}: no faults (no vCPU is spinning in EPT/NPT faults)`;
  } else if (taken >= stuckAttempts && fixed === 0 && emulate === 0) {
    state = 'stuck';
    explanation = `pf_taken +${taken}${during} while pf_fixed and pf_emulate stayed flat: this VM's vCPUs take faults that never complete (abandoned and retried). ` +
      'The counters cannot tell which vCPU, which address or why: capture `kvmfault record` (or trace-cmd with kvm:kvm_page_fault and kvmmmu:*) and compare the kernel with `kvmfault doctor` (sign-extension bug of 6.1 before 6.1.50)';
  } else if (taken >= stuckAttempts && (fixed + emulate) * 100 < taken) {
    state = 'retrying';
    explanation = `pf_taken +${taken}${during} but only ${fixed + emulate} fixed or emulated: most faults are retried (an invalidation storm, or some vCPUs stuck while others progress)`;
  } else {
    state = 'progressing';
    explanation = `pf_taken +${taken}, pf_fixed +${fixed}${emulate ? `, pf_emulate +${emulate}` : ''}${during}: faults complete`;
  }
  return { name, pid, state, snapshots: snaps.length, seconds, counters, attempts, evidenceLines: { first: a.first, last: b.last }, explanation };
}

export function createKvmStatImporter(options: TextImportOptions & { stuckAttempts?: number } = {}): TextImporter {
  return createLineImporter<Entry>(kvmStatFormat(options.stuckAttempts), options);
}

/** Lines of the input's head that are counter lines (format detection: headers and grep lines). */
export function kvmStatScore(lines: readonly string[]): number {
  let n = 0;
  for (const l of lines) {
    const h = HEADER.exec(l);
    if ((h && /(?:^|\/)pf_[a-z_]+$|(?:^|\/)(?:exits|mmu_[a-z_]+|remote_tlb_flush)$/.test(h[1])) || (GREP.test(l) && /(?:^|\/)pf_[a-z_]+:/.test(l))) n++;
  }
  return n;
}
