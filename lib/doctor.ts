/**
 * Host checks for kvmfault: can it trace here, what will it see, and what on this host drives
 * the MMU-notifier invalidations that push a VM's sequence towards 0x80000000.
 *
 *   const report = await runDoctor();          // { checks: [...], kernel, privileges, ... }
 *   for (const c of report.checks) console.log(c.status, c.title, c.detail, c.remedy);
 *
 * Every check is read-only except the optional trial attach (`tryTracer`, default on when
 * root): it opens the tracer in 'auto' mode and closes it at once, to say which mode it picks.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hostKernel, KernelInfo } from './kernels';
import { vmNameFromArgv } from './procinfo';
import { escapeControl } from './escape';
import { parseKallsyms, PROBED_FUNCTIONS, readKallsyms, REMEDY, TRACEPOINTS } from './probes';
import { detectKvmHost } from './workload';
import { InvalidationSources, MemslotMatchStats, remedy, SourceCount, VmSources } from './sources';

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'info';

export interface Check {
  id: string;
  title: string;
  status: CheckStatus;
  /** what was found */
  detail: string;
  /** one line: what to do (empty when nothing to do) */
  remedy: string;
}

export interface Privileges {
  euid: number;
  /** CapEff from /proc/self/status as hex */
  capEff: string | null;
  capBpf: boolean;
  capPerfmon: boolean;
  capSysAdmin: boolean;
}

export interface RunningVm {
  pid: number;
  comm: string;
  /** the VMM's -name (QEMU, libvirt), null when it has none */
  name: string | null;
  /** QEMU's vCPU threads ("tid CPU 0/KVM"), when the VMM names them so */
  vcpuThreads: string[];
  /** kvm-vm file descriptors (one per VM the process runs) */
  vmFds: number;
  /** kvm-vcpu:N file descriptors: the vCPUs (each normally runs on its own thread) */
  vcpus: number;
  /** threads of the process */
  threads: number;
}

export interface ProbePoints {
  tracefs: string | null;
  /** tracefs needs mounting (neither /sys/kernel/tracing nor /sys/kernel/debug/tracing has events) */
  tracefsMounted: boolean;
  kprobeEvents: boolean;
  kprobePmu: boolean;
  /** the functions the kprobe and fentry modes probe (probes.ts): true when kallsyms has them, so they can be probed */
  functions: Record<string, boolean>;
  /** the symbol each found function has in kallsyms, when the compiler renamed it (direct_page_fault.isra.0) */
  symbols: Record<string, string>;
  /** tracepoints of the kvm and kvmmmu systems that kvmfault uses, present or not */
  tracepoints: Record<string, boolean>;
}

export interface TracerTrial {
  attempted: boolean;
  mode: string | null;
  attached: string[];
  notAttached: { point: string; reason: string }[];
  notes: string[];
  error: string | null;
}

export interface DoctorReport {
  host: { kernelRelease: string; kvmHost: string; kvmHostDetail: string };
  kernel: KernelInfo;
  privileges: Privileges;
  btf: { vmlinux: boolean; kvmModule: boolean; kvmBuiltin: boolean; kvmInVmlinux: boolean };
  probes: ProbePoints;
  tracer: TracerTrial;
  kvm: { devKvm: boolean; accessible: boolean; vms: RunningVm[] };
  numaBalancing: number | null;
  ksm: { run: number | null; pagesSharing: number | null; fullScans: number | null };
  thp: { enabled: string | null; defrag: string | null };
  sources: SourcesSample | null;
  checks: Check[];
  summary: { pass: number; warn: number; fail: number; info: number };
}

export interface DoctorOptions {
  /** open the tracer once (auto mode) to see which mode it uses; default: when root */
  tryTracer?: boolean;
  /** root of /proc and /sys (tests); default '/' */
  root?: string;
  /** trace every process this many seconds and say which sources invalidate which VMs (0: no sample) */
  sourcesSeconds?: number;
}

/** A live sample of who invalidates which VM (lib/sources.ts), from `doctor --sources`. */
export interface SourcesSample {
  seconds: number;
  mode: string | null;
  vms: VmSources[];
  /** invalidations of VMM memory outside every VM's memslots (not counted for a VM) */
  outsideGuestMemory: SourceCount[];
  memslotMatch: MemslotMatchStats | null;
  error: string | null;
}

const CAP_SYS_ADMIN = 21, CAP_PERFMON = 38, CAP_BPF = 39;
/** the tracepoints the tracer attaches to, as system/name */
const TRACEPOINT_PATHS = TRACEPOINTS.map((t) => `${t.system}/${t.name}`);

function read(p: string): string | null {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
}
function readInt(p: string): number | null {
  const t = read(p);
  if (t === null) return null;
  const n = parseInt(t.trim(), 10);
  return Number.isNaN(n) ? null : n;
}
/** "always [madvise] never" -> "madvise" */
function bracketed(p: string): string | null {
  const t = read(p);
  if (t === null) return null;
  return /\[([^\]]+)\]/.exec(t)?.[1] ?? t.trim();
}

export function readPrivileges(root = '/'): Privileges {
  const status = read(path.join(root, 'proc/self/status')) ?? '';
  const hex = /^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? null;
  const caps = hex === null ? 0n : BigInt('0x' + hex);
  const has = (bit: number): boolean => ((caps >> BigInt(bit)) & 1n) === 1n;
  return {
    euid: process.geteuid ? process.geteuid() : -1,
    capEff: hex,
    capBpf: has(CAP_BPF),
    capPerfmon: has(CAP_PERFMON),
    capSysAdmin: has(CAP_SYS_ADMIN),
  };
}

/** What a /proc scan for VMMs found, and what it could not look at. */
export interface VmScan {
  vms: RunningVm[];
  /**
   * Processes whose fd table this process may not read (EACCES: another user's process without
   * CAP_SYS_PTRACE). A VMM among them is invisible: "no VMs" is then not known.
   */
  unreadable: number;
}

/** Processes holding kvm-vm file descriptors (VMMs), with their vCPU fds and threads. */
export function findRunningVms(options: { root?: string; excludePids?: number[] } = {}): RunningVm[] {
  return scanRunningVms(options).vms;
}

/** findRunningVms, plus how many processes' fds could not be read (see VmScan.unreadable). */
export function scanRunningVms(options: { root?: string; excludePids?: number[] } = {}): VmScan {
  const proc = path.join(options.root ?? '/', 'proc');
  const exclude = new Set(options.excludePids ?? []);
  const vms: RunningVm[] = [];
  const scan: VmScan = { vms, unreadable: 0 };
  let entries: string[];
  try {
    entries = fs.readdirSync(proc);
  } catch {
    return scan;
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (exclude.has(pid)) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(path.join(proc, name, 'fd'));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EACCES' || (e as NodeJS.ErrnoException).code === 'EPERM') scan.unreadable++;
      continue; // gone, or not ours to read
    }
    let vmFds = 0, vcpus = 0;
    for (const fd of fds) {
      let target: string;
      try {
        target = fs.readlinkSync(path.join(proc, name, 'fd', fd));
      } catch {
        continue;
      }
      if (target === 'anon_inode:kvm-vm') vmFds++;
      else if (/^anon_inode:kvm-vcpu:\d+$/.test(target)) vcpus++;
    }
    if (vmFds === 0) continue;
    let threads = 0;
    try {
      threads = fs.readdirSync(path.join(proc, name, 'task')).length;
    } catch {
      /* exited meanwhile */
    }
    const argv = (read(path.join(proc, name, 'cmdline')) ?? '').split('\0');
    const vcpuThreads: string[] = [];
    try {
      for (const tid of fs.readdirSync(path.join(proc, name, 'task'))) {
        const tcomm = (read(path.join(proc, name, 'task', tid, 'comm')) ?? '').trim();
        if (/^CPU \d+\/KVM$/.test(tcomm)) vcpuThreads.push(`${tid} ${tcomm}`); // matched: no control characters
      }
    } catch {
      /* exited meanwhile */
    }
    vms.push({ pid, comm: escapeControl((read(path.join(proc, name, 'comm')) ?? '?').trim()), name: vmNameFromArgv(argv), vmFds, vcpus, threads, vcpuThreads });
  }
  return scan;
}

/** One line for "no VM found" that does not claim more than the scan could see. */
export function noVmsFound(scan: VmScan): string {
  return scan.unreadable === 0 ? 'none'
    : `none visible: the fds of ${scan.unreadable} other processes cannot be read without root (or CAP_SYS_PTRACE), so VMs they run are not seen`;
}

function probePoints(root: string): ProbePoints {
  let tracefs: string | null = null;
  for (const p of ['sys/kernel/tracing', 'sys/kernel/debug/tracing']) {
    if (fs.existsSync(path.join(root, p, 'events'))) {
      tracefs = path.join(root, p);
      break;
    }
  }
  const tracepoints: Record<string, boolean> = {};
  for (const tp of TRACEPOINT_PATHS) tracepoints[tp] = tracefs !== null && fs.existsSync(path.join(tracefs, 'events', tp));
  // the tracer's own lookup: a renamed function (direct_page_fault.isra.0) is found and probed
  const found = parseKallsyms(readKallsyms(root), PROBED_FUNCTIONS);
  const functions: Record<string, boolean> = {};
  const symbols: Record<string, string> = {};
  for (const f of PROBED_FUNCTIONS) {
    functions[f] = found.has(f);
    if (found.has(f) && found.get(f) !== f) symbols[f] = found.get(f)!;
  }
  return {
    tracefs,
    tracefsMounted: tracefs !== null,
    kprobeEvents: (tracefs !== null && fs.existsSync(path.join(tracefs, 'kprobe_events'))),
    kprobePmu: fs.existsSync(path.join(root, 'sys/bus/event_source/devices/kprobe')),
    functions,
    symbols,
    tracepoints,
  };
}

/** Traces every process for `seconds` (auto mode) and counts invalidations per VM and source. */
async function sampleSources(seconds: number): Promise<SourcesSample> {
  const out: SourcesSample = { seconds, mode: null, vms: [], outsideGuestMemory: [], memslotMatch: null, error: null };
  try {
    const { openTracer } = await import('./tracer');
    const t = await openTracer({ mode: 'auto', ringBytes: 1 << 22 });
    out.mode = t.mode;
    const sources = new InvalidationSources((id) => t.stack(id), t.memslots());
    const stop = AbortSignal.timeout(seconds * 1000);
    try {
      for await (const batch of t.events({ signal: stop })) sources.add(batch);
    } finally {
      t.close();
    }
    out.vms = sources.snapshot();
    out.outsideGuestMemory = sources.outsideGuestMemory();
    out.memslotMatch = sources.matchStats();
  } catch (e) {
    out.error = (e as Error).message.split('\n')[0];
  }
  return out;
}

async function tryTracer(): Promise<TracerTrial> {
  const trial: TracerTrial = { attempted: true, mode: null, attached: [], notAttached: [], notes: [], error: null };
  try {
    const { openTracer } = await import('./tracer');
    const t = await openTracer({ mode: 'auto', ringBytes: 1 << 16 });
    try {
      trial.mode = t.mode;
      for (const p of t.probes) {
        if (p.attached) trial.attached.push(p.point);
        else trial.notAttached.push({ point: p.point, reason: p.reason ?? 'not attached' });
      }
      trial.notes = [...t.modeNotes];
    } finally {
      t.close();
    }
  } catch (e) {
    trial.error = (e as Error).message.split('\n')[0];
    for (const p of (e as { probes?: { point: string; reason?: string }[] }).probes ?? []) {
      trial.notAttached.push({ point: p.point, reason: p.reason ?? 'not attached' });
    }
  }
  return trial;
}

export async function runDoctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const root = options.root ?? '/';
  const checks: Check[] = [];
  const add = (id: string, title: string, status: CheckStatus, detail: string, remedy = ''): void => {
    checks.push({ id, title, status, detail, remedy });
  };

  // kernel and the sign-extension bug
  const kernel = hostKernel();
  add('kernel', 'kernel vs the is_page_fault_stale sign-extension bug',
    kernel.affected === true ? 'fail' : kernel.affected === false ? 'pass' : 'warn',
    `${kernel.release}: ${kernel.status}${kernel.certain ? '' : ' (not certain)'}, decided by ${kernel.decidedBy === 'btf' ? "the kernel's BTF" : kernel.decidedBy === 'version' ? 'the version only' : 'nothing'} ` +
      `(behaviour outranks both: \`kvmfault watch\` names the bug when a vCPU shows it): ${kernel.reason}`,
    kernel.affected === true ? 'upgrade the host kernel to 6.1.50+ or 6.3+; until then keep VM invalidation sequences below 0x80000000 (watch `kvmfault watch`)'
      : kernel.affected === null ? "check the distro's changelog for ba6e3fe25543 / the 6.1.50 fix" : '');

  // privileges
  const privileges = readPrivileges(root);
  // capabilities decide, not the uid (the tracer checks the same): root with them dropped cannot trace
  const capsOk = privileges.capEff === null ? privileges.euid === 0 : privileges.capSysAdmin || (privileges.capBpf && privileges.capPerfmon);
  add('privileges', 'privileges for BPF tracing', capsOk ? 'pass' : 'fail',
    `euid ${privileges.euid}, CapEff ${privileges.capEff ?? '?'} (CAP_BPF ${privileges.capBpf ? 'yes' : 'no'}, CAP_PERFMON ${privileges.capPerfmon ? 'yes' : 'no'}, CAP_SYS_ADMIN ${privileges.capSysAdmin ? 'yes' : 'no'})`,
    capsOk ? '' : privileges.euid === 0 ? REMEDY.capsDropped : REMEDY.privileges);

  // BTF
  const vmlinuxPath = path.join(root, 'sys/kernel/btf/vmlinux');
  const vmlinux = fs.existsSync(vmlinuxPath);
  const kvmModule = fs.existsSync(path.join(root, 'sys/kernel/btf/kvm'));
  const modules = read(path.join(root, 'proc/modules')) ?? '';
  const kvmLoadedAsModule = /^kvm /m.test(modules);
  let kvmInVmlinux = false;
  if (vmlinux && !kvmModule) {
    try {
      kvmInVmlinux = fs.readFileSync(vmlinuxPath).includes('\0kvm_vcpu_arch\0');
    } catch {
      /* unreadable without privileges: reported below */
    }
  }
  const kvmBuiltin = !kvmLoadedAsModule && kvmInVmlinux;
  add('btf-vmlinux', 'BTF for vmlinux (/sys/kernel/btf/vmlinux)', vmlinux ? 'pass' : 'fail',
    vmlinux ? 'present: CO-RE relocations and tp_btf work' : 'missing',
    vmlinux ? '' : `${REMEDY.btf} (every major distro kernel since 2021 has it)`);
  add('btf-kvm', 'BTF for KVM (/sys/kernel/btf/kvm, or KVM built into vmlinux)',
    kvmModule || kvmBuiltin ? 'pass' : kvmLoadedAsModule ? 'fail' : 'warn',
    kvmModule ? 'kvm module BTF present' : kvmBuiltin ? 'KVM is built into the kernel: its types are in vmlinux BTF'
      : kvmLoadedAsModule ? 'kvm is a module without BTF' : 'KVM is not loaded',
    kvmModule || kvmBuiltin ? '' : kvmLoadedAsModule ? REMEDY.moduleBtf : `load KVM: ${REMEDY.loadKvm}`);

  // probe points and the mode the tracer would use
  const probes = probePoints(root);
  const fnFound = Object.entries(probes.functions).filter(([, v]) => v).map(([k]) => k);
  const kprobesPossible = probes.kprobeEvents || probes.kprobePmu;
  add('kprobes', 'kprobe mode: kprobe support and fault-path functions',
    kprobesPossible && fnFound.length > 0 ? 'pass' : 'info',
    `${kprobesPossible ? 'kprobes supported' : 'no kprobes in this kernel (no kprobe_events, no kprobe PMU)'}; ` +
    `functions in kallsyms: ${fnFound.length ? fnFound.map((f) => probes.symbols[f] ? `${f} (as ${probes.symbols[f]})` : f).join(', ') : 'none of ' + PROBED_FUNCTIONS.join(', ')}`,
    kprobesPossible ? '' : REMEDY.kprobes);
  const tpFound = Object.entries(probes.tracepoints).filter(([, v]) => v).map(([k]) => k);
  add('tracepoints', 'tracepoint mode: kvm and kvmmmu tracepoints',
    !probes.tracefsMounted ? 'warn' : tpFound.length > 0 ? 'pass' : 'fail',
    probes.tracefsMounted ? `${probes.tracefs}: ${tpFound.length ? tpFound.join(', ') : 'none of ' + TRACEPOINT_PATHS.join(', ')}`
      : 'tracefs is not mounted, cannot list tracepoints (tp_btf attaches without it)',
    !probes.tracefsMounted ? REMEDY.mountTracefs : tpFound.length ? '' : 'load KVM (modprobe kvm) so its tracepoints exist');

  const wantTrial = options.tryTracer ?? (capsOk && vmlinux);
  const tracer: TracerTrial = wantTrial
    ? await tryTracer()
    : { attempted: false, mode: null, attached: [], notAttached: [], notes: [], error: null };
  if (tracer.attempted) {
    add('tracer', 'attach mode the tracer uses (trial attach, closed at once)', tracer.mode ? 'pass' : 'fail',
      tracer.mode ? `${tracer.mode}: ${tracer.attached.length} probe(s) attached (${tracer.attached.join(', ')})` : `cannot trace: ${tracer.error}`,
      tracer.mode ? '' : 'see the checks above (privileges, BTF, KVM); run with KVMFAULT_DEBUG=1 for libbpf details');
  } else {
    const guess = probes.kprobePmu && fnFound.length > 0 ? 'kprobe' : 'tracepoint';
    add('tracer', 'attach mode the tracer would use', 'info',
      `not tried (needs root and BTF); from the probe points: ${guess}`, capsOk ? '' : 'run doctor as root to try attaching');
  }

  // /dev/kvm and the VMs running now
  const devKvm = fs.existsSync(path.join(root, 'dev/kvm'));
  let accessible = false;
  try {
    fs.accessSync(path.join(root, 'dev/kvm'), fs.constants.R_OK | fs.constants.W_OK);
    accessible = true;
  } catch {
    /* reported */
  }
  const kvmHost = devKvm ? detectKvmHost() : { host: 'unknown', detail: 'no /dev/kvm' };
  add('dev-kvm', '/dev/kvm', devKvm && accessible ? 'pass' : 'fail',
    devKvm ? `${accessible ? 'read-write' : 'present but not accessible'}; ${kvmHost.host}: ${kvmHost.detail}` : 'missing: KVM is not available on this host',
    !devKvm ? 'load KVM (modprobe kvm_intel or kvm_amd) or enable virtualisation in the firmware' : accessible ? '' : 'run as root or join the kvm group');
  const vmScan = scanRunningVms({ root, excludePids: [process.pid] });
  const vms = vmScan.vms;
  add('vms', 'VMs running now (processes holding kvm-vm fds)', vms.length === 0 && vmScan.unreadable > 0 ? 'warn' : 'info',
    vms.length === 0 ? `${noVmsFound(vmScan)} (\`kvmfault demo\` runs a built-in guest to show the live view)`
      : vms.map((v) => `pid ${v.pid} ${v.comm}${v.name ? ` "${v.name}"` : ''}: ${v.vmFds} VM(s), ${v.vcpus} vCPU(s), ${v.threads} threads` +
        (v.vcpuThreads.length ? ` (${v.vcpuThreads.join(', ')})` : '')).join('; '),
    vms.length === 0 && vmScan.unreadable > 0 ? 'run doctor as root (sudo kvmfault doctor) to see every VM' : '');

  // invalidation sources
  const numaBalancing = readInt(path.join(root, 'proc/sys/kernel/numa_balancing'));
  add('numa-balancing', 'NUMA balancing (drives mmu_notifier invalidations)',
    numaBalancing ? 'warn' : 'pass',
    numaBalancing === null ? 'not available in this kernel' : numaBalancing ? `on (${numaBalancing}): every scan invalidates guest memory ranges` : 'off',
    numaBalancing ? 'on affected kernels: sysctl -w kernel.numa_balancing=0 (or pin VMs to nodes)' : '');
  const ksm = {
    run: readInt(path.join(root, 'sys/kernel/mm/ksm/run')),
    pagesSharing: readInt(path.join(root, 'sys/kernel/mm/ksm/pages_sharing')),
    fullScans: readInt(path.join(root, 'sys/kernel/mm/ksm/full_scans')),
  };
  add('ksm', 'KSM (page merging invalidates guest pages)', ksm.run === 1 ? 'warn' : 'pass',
    ksm.run === null ? 'not available in this kernel'
      : `run = ${ksm.run}${ksm.run === 1 ? ' (merging)' : ''}, pages_sharing = ${ksm.pagesSharing ?? '?'}, full_scans = ${ksm.fullScans ?? '?'}`,
    ksm.run === 1 ? 'on affected kernels: echo 0 > /sys/kernel/mm/ksm/run (or 2 to unmerge)' : '');
  const thp = {
    enabled: bracketed(path.join(root, 'sys/kernel/mm/transparent_hugepage/enabled')),
    defrag: bracketed(path.join(root, 'sys/kernel/mm/transparent_hugepage/defrag')),
  };
  const thpBusy = thp.enabled === 'always' && thp.defrag === 'always';
  add('thp', 'transparent hugepages (collapse and compaction invalidate ranges)', thpBusy ? 'warn' : 'pass',
    thp.enabled === null ? 'not available in this kernel' : `enabled = ${thp.enabled}, defrag = ${thp.defrag ?? '?'}`,
    thpBusy ? 'consider defrag = madvise (echo madvise > /sys/kernel/mm/transparent_hugepage/defrag)' : '');

  // a live sample: which sources invalidate which VMs right now
  let sources: SourcesSample | null = null;
  if ((options.sourcesSeconds ?? 0) > 0) {
    sources = await sampleSources(options.sourcesSeconds!);
    const s = sources;
    const per = (n: number): string => `${(n / s.seconds).toFixed(n / s.seconds < 10 ? 1 : 0)}/s`;
    add('invalidation-sources', `who invalidates VM memory (${s.seconds} s live sample)`, s.error ? 'warn' : 'info',
      s.error ? `cannot sample: ${s.error}`
        : s.vms.length === 0 ? `no invalidation of VM memory in ${s.seconds} s (${s.mode} mode)`
          : s.vms.map((v) => `vm ${v.vmId}: ${v.sources.slice(0, 4).map((x) => `${x.source} ${per(x.count)} (${escapeControl(x.evidence)}${x.comm && x.comm !== x.evidence ? `, ${escapeControl(x.comm)}` : ''})`).join(', ')}`).join('; ') +
            (s.vms.some((v) => v.vmId === 'unknown') ? (s.memslotMatch?.enabled ? " (vm unknown: a range inside several VMs' memslots)" : ' (vm unknown: kernel threads, which tracepoint mode cannot tie to a VM without the memslot table)') : '') +
            (s.outsideGuestMemory.length ? `; outside guest memory (no VM's): ${s.outsideGuestMemory.slice(0, 3).map((x) => `${x.source} ${per(x.count)}`).join(', ')}` : '') +
            (s.memslotMatch && !s.memslotMatch.enabled ? `; not checked against memslots (${s.memslotMatch.error ?? 'no table'})` : ''),
      s.vms.length && kernel.affected !== null ? remedy(s.vms[0].sources[0].source, kernel.affected) : '');
  }

  const summary = { pass: 0, warn: 0, fail: 0, info: 0 };
  for (const c of checks) summary[c.status]++;
  return {
    host: { kernelRelease: kernel.release, kvmHost: kvmHost.host, kvmHostDetail: kvmHost.detail },
    kernel, privileges,
    btf: { vmlinux, kvmModule, kvmBuiltin, kvmInVmlinux },
    probes, tracer,
    kvm: { devKvm, accessible, vms },
    numaBalancing, ksm, thp, sources, checks, summary,
  };
}

/** The pass/warn/fail table, one remedy line under each check that has one. */
export function formatDoctor(r: DoctorReport, options: { color?: boolean } = {}): string {
  const color = options.color ?? false;
  const paint: Record<CheckStatus, string> = { pass: '32', warn: '33', fail: '31', info: '36' };
  const lines: string[] = [];
  const width = Math.max(...r.checks.map((c) => c.title.length));
  for (const c of r.checks) {
    const tag = c.status.toUpperCase().padEnd(4);
    lines.push(`${color ? `\x1b[${paint[c.status]}m${tag}\x1b[0m` : tag}  ${c.title.padEnd(width)}  ${c.detail}`);
    if (c.remedy) lines.push(`${' '.repeat(6 + width + 2)}-> ${c.remedy}`);
  }
  if (r.tracer.notes.length > 0) {
    lines.push('', `tracer notes (${r.tracer.mode} mode):`);
    for (const n of r.tracer.notes) lines.push(`  - ${n}`);
  }
  lines.push('', `${r.summary.pass} pass, ${r.summary.warn} warn, ${r.summary.fail} fail`);
  return lines.join('\n') + '\n';
}
