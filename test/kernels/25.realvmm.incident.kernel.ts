/**
 * A REAL VMM on the incident kernels (issue #16): inside the 6.1-bug / 6.1-fixed test kernel
 * (scripts/kernels/matrix.sh, KVMFAULT_KERNEL_LINE=<line>), the host's own
 * `qemu-system-x86_64 -enable-kvm -cpu host` boots a Debian kernel (the line's 6.1 image) with a
 * tiny busybox initramfs built here: /init prints a marker, writes 16 MiB to a tmpfs, prints a
 * second marker, idles 5 s and powers off. kvmfault watches it as a user would (the CLI, a child).
 *
 * The VM's mmu_invalidate_seq starts at 0x80000000 (kvm.initial_invalidate_seq = 2147483648) on
 * both lines: the fixed kernel must boot the guest anyway; the bug kernel (int mmu_seq in
 * is_page_fault_stale) retries the guest's very first fault forever: the reset vector's
 * instruction fetch, gpa 0xfffffff0, before a single guest instruction has run.
 *
 * Each test prints `@@kernels {...}` lines with what it measured (matrix.sh collects them).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join, resolve } from 'node:path';
import type { Verdict, VmForecast } from '../../lib/detector';
import type { VmCounterView } from '../../lib/counters';
import { Child, child, CLI, cli, deadline, end, LINE, monoNs, PARAM, report, requireIncidentKernel, sleep, stopWatch, VARIANT, waitFor } from './incident-harness';

const START_SEQ = 0x80000000;
const TREE = resolve(__dirname, '../../..');
const VM_NAME = 'incident-guest';
const VCPU_THREAD = 'CPU 0/KVM';
const MARK1 = 'KVMFAULT-GUEST-INIT';
const MARK2 = 'KVMFAULT-GUEST-TOUCHED';
const TOUCH_MIB = 16;
/** the fixed guest runs until its firmware has written to the serial port and KVM has mapped
 *  BOOT_MIN_MAPPED of its faults (or /init's last marker came), then BOOT_OBSERVE_MS more, never
 *  longer than BOOT_CAP_MS. A condition, not a fixed time, and not SeaBIOS's banner: on an idle
 *  machine the banner comes within ~10 s, but twice (the other core busy) the nested guest wrote
 *  only its first bytes ("\ec\e[?7l\e[2J\e[0mSeaBIO") and then nothing for 90 s / 300 s while
 *  KVM kept mapping (237 / 238 faults) and no vCPU was stuck. Any byte is the guest's own
 *  instruction stream past the reset vector; the bug kernel writes none and maps none. Under our nested SVM on TCG its kernel boots, but /init's output has not been
 *  seen within 420 s (open: see docs/notes.md), so the test asserts what the guest does
 *  meanwhile: it runs, its faults are mapped, nothing is stuck; the markers are reported when
 *  they come. */
const BOOT_CAP_MS = 300_000;
const BOOT_OBSERVE_MS = 10_000;
const BOOT_MIN_MAPPED = 100;
/** the bug guest: the stuck verdict must have reached us by then, counted from QEMU's start */
const VERDICT_MAX_MS = 180_000;
/** the reset vector: the first instruction fetch of an x86 CPU (CS base 0xffff0000 + rip 0xfff0) */
const RESET_VECTOR_GPA = 'fffffff0';  // as the verdict spells gpas: hex, no 0x

const secs = (fromNs: number, toNs = monoNs()): number => +((toNs - fromNs) / 1e9).toFixed(2);

// ---- the guest: a Debian kernel image + a busybox initramfs ---------------------------------------

/** The line's kernel image: the matrix boots .cache/kernels/<release>-<variant> (fetch.sh), and the
 *  host's / is the guest's root, so the same file is readable here. Any bzImage would do: the
 *  guest's own kernel never runs KVM. */
function guestKernel(): string {
  const cache = process.env.KVMFAULT_KERNEL_CACHE ?? join(TREE, '.cache/kernels');
  const tried: string[] = [];
  for (const dir of [`${release()}-${VARIANT}`, release()]) {
    const f = join(cache, dir, 'boot', `vmlinuz-${release()}`);
    tried.push(f);
    if (existsSync(f)) return f;
  }
  throw new Error(`no guest kernel image: tried ${tried.join(', ')}`);
}

/** The guest's /init. Its markers go through /dev/kmsg at level 2 (crit, shown at loglevel=4), i.e.
 *  the kernel's polled console: a plain `echo` to the console (the 8250 tty driver, which waits for
 *  the UART's interrupt) printed nothing in 400 s in the nested guest here (measured), while printk
 *  lines came through. */
const INIT = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
say() { echo "<2>$*" > /dev/kmsg; }
say "${MARK1}"
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
say "init at uptime $(cut -d' ' -f1 /proc/uptime)"
mkdir -p /mnt && mount -t tmpfs -o size=${TOUCH_MIB + 16}m tmpfs /mnt
dd if=/dev/zero of=/mnt/fill bs=1M count=${TOUCH_MIB} 2>/dev/null
say "${MARK2} $(( $(wc -c < /mnt/fill) >> 20 )) MiB uptime $(cut -d' ' -f1 /proc/uptime)"
sleep 5
poweroff -f
`;

/** busybox (static) + /init, packed newc cpio | gzip into dir/initrd.gz */
function buildInitramfs(dir: string): string {
  const busybox = '/bin/busybox';
  const ldd = spawnSync('ldd', [busybox], { encoding: 'utf8' });
  if (!existsSync(busybox) || !/not a dynamic/.test(`${ldd.stdout}${ldd.stderr}`)) {
    throw new Error(`${busybox} is missing or not the static build (scripts/setup installs busybox-static)`);
  }
  const root = join(dir, 'root');
  for (const d of ['bin', 'proc', 'dev', 'sys', 'mnt']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync(busybox, join(root, 'bin/busybox'));
  chmodSync(join(root, 'bin/busybox'), 0o755);
  writeFileSync(join(root, 'init'), INIT, { mode: 0o755 });
  const out = join(dir, 'initrd.gz');
  const r = spawnSync('bash', ['-c', 'set -o pipefail; cd "$1" && find . | cpio -o -H newc --quiet | gzip -1 > "$2"', 'pack', root, out], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`packing the initramfs failed (exit ${r.status}): ${r.stderr}`);
  return out;
}

// ---- children ---------------------------------------------------------------------------------

const started = (w: Child, re: RegExp): Promise<boolean> => waitFor(() => re.test(w.stderr) || w.proc.exitCode !== null, 60_000);

/** QEMU as the brief has it, with two changes: `-name NAME,debug-threads=on` (what libvirt passes):
 *  without debug-threads QEMU leaves its vCPU threads named after the process ("qemu-system-x86"),
 *  measured here, so there is no "CPU 0/KVM" to find; `loglevel=4`: every console byte is a port-I/O
 *  exit, and under nested SVM on TCG the full boot log alone took the guest 54 s to reach /init
 *  (measured; the reference recipe also boots with loglevel=4). */
function qemu(kernel: string, initrd: string, onText: (text: string, at: number) => void): Child {
  return child('qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', '256', '-smp', '1', '-kernel', kernel, '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 loglevel=4', '-nographic', '-no-reboot', '-nic', 'none', '-name', `${VM_NAME},debug-threads=on`], undefined, onText);
}

type Snapshot = { at: number; type: string; vms: (VmForecast & { name: string | null })[]; vcpus: (Verdict & { threadName: string | null })[] };
const snapshotsOf = (w: Child): Snapshot[] => w.lines.filter((l) => l.obj.type === 'snapshot' || l.obj.type === 'final')
  .map((l) => ({ at: l.at, type: String(l.obj.type), vms: l.obj.vms as Snapshot['vms'], vcpus: l.obj.vcpus as Snapshot['vcpus'] }));
/** mapped faults of pid's vCPUs in watch's latest snapshot (cumulative counts) */
function lastMapped(w: Child, pid: number): number {
  for (let i = w.lines.length - 1; i >= 0; i--) {
    const o = w.lines[i].obj;
    if (o.type === 'snapshot') return Math.max(0, ...(o.vcpus as Snapshot['vcpus']).filter((v) => v.pid === pid).map((v) => v.mapped));
  }
  return 0;
}
const alertsOf = (w: Child): { at: number; from: string; verdict: Verdict }[] => w.lines.filter((l) => l.obj.type === 'alert')
  .map((l) => ({ at: l.at, from: String(l.obj.from), verdict: l.obj.verdict as Verdict }));

function setParam(v: number): void {
  writeFileSync(PARAM, String(v));
  assert.equal(Number(readFileSync(PARAM, 'utf8').trim()), v, `${PARAM} did not take ${v}`);
}

function checkQemuRuns(): void {
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-system-x86_64 cannot run here (exit ${r.status}, ${r.error?.message ?? r.stderr}): scripts/setup installs qemu-system-x86`);
}

// ---- fixed kernel: the guest boots, nothing is stuck ----------------------------------------------

interface FixedRun {
  qemuExit: { code: number | null; signal: NodeJS.Signals | null; by: string };
  qemuS: number;
  out: string;
  qemuStderr: string;
  mark1S: number | null;
  mark2S: number | null;
  qemuPid: number;
  watchExit: { code: number | null; signal: NodeJS.Signals | null; by: string };
  watchStderr: string;
  snapshots: Snapshot[];
  alerts: { at: number; from: string; verdict: Verdict }[];
  /** when QEMU's output came (s after its start) and how many characters */
  outTimes: [number, number][];
}

async function runFixed(kernel: string, initrd: string): Promise<FixedRun> {
  setParam(START_SEQ);
  const watch = cli(['watch', '--json', '--interval', '1', '--fail-on-stuck', '--duration', '900']);
  let q: Child | null = null;
  try {
    assert.ok(await started(watch, /watching in \w+ mode/) && watch.proc.exitCode === null, `kvmfault watch did not start: exit ${watch.proc.exitCode}\n${watch.stderr}`);
    const marks: { m1: number | null; m2: number | null } = { m1: null, m2: null };
    let text = '';
    const outTimes: [number, number][] = [];
    const t0 = monoNs();
    q = qemu(kernel, initrd, (d, at) => {
      text += d;
      outTimes.push([secs(t0, at), d.length]);
      if (marks.m1 === null && text.includes(MARK1)) marks.m1 = at;
      if (marks.m2 === null && text.includes(MARK2)) marks.m2 = at;
    });
    const qc = q;
    const qemuPid = qc.proc.pid!;
    const booted = (): boolean => marks.m2 !== null || (text.length > 0 && lastMapped(watch, qemuPid) >= BOOT_MIN_MAPPED);
    await Promise.race([qc.exited, waitFor(booted, BOOT_CAP_MS)]);
    const observeMs = Math.min(BOOT_OBSERVE_MS, Math.max(1000, BOOT_CAP_MS - (monoNs() - t0) / 1e6));
    const done = await Promise.race([qc.exited.then(() => true), deadline(observeMs)]);
    const qemuExit = done ? { ...(await qc.exited), by: 'itself' } : await end(qc);
    const qemuS = secs(t0, done ? (await qc.exited).at : monoNs());
    await sleep(1500);  // one more snapshot after the VM is gone
    const watchExit = await stopWatch(watch);
    return {
      qemuExit, qemuS, out: qc.out, qemuStderr: qc.stderr, qemuPid,
      mark1S: marks.m1 === null ? null : secs(t0, marks.m1), mark2S: marks.m2 === null ? null : secs(t0, marks.m2),
      watchExit, watchStderr: watch.stderr, snapshots: snapshotsOf(watch), alerts: alertsOf(watch), outTimes,
    };
  } finally {
    if (q) await end(q, 2000);
    await end(watch, 2000);
    writeFileSync(PARAM, '0');
  }
}

// ---- bug kernel: the guest never runs, the vCPU is stuck on the reset vector ----------------------

interface BugRun {
  qemuPid: number;
  out: string;
  qemuStderr: string;
  qemuExit: { code: number | null; signal: NodeJS.Signals | null; by: string };
  qemuS: number;
  stuck: { at: number; verdict: Verdict } | null;
  stuckS: number | null;
  watchExit: { code: number | null; signal: NodeJS.Signals | null; by: string };
  watchStderr: string;
  snapshots: Snapshot[];
  alerts: { at: number; from: string; verdict: Verdict }[];
  doctor: { status: number | null; json: { kvm: { vms: { pid: number; name: string | null; vcpus: number; vcpuThreads?: unknown }[] } } | null; stderr: string; s: number };
  counters: { suspect: { at: number; vm: VmCounterView } | null; suspectS: number | null; exit: { code: number | null; signal: NodeJS.Signals | null; by: string }; stderr: string; lastVm: VmCounterView | null };
}

async function runBug(kernel: string, initrd: string): Promise<BugRun> {
  setParam(START_SEQ);
  const seen: { stuck: BugRun['stuck']; suspect: { at: number; vm: VmCounterView } | null; lastVm: VmCounterView | null } = { stuck: null, suspect: null, lastVm: null };
  let qemuPid = -1;
  const watch = cli(['watch', '--json', '--interval', '1', '--fail-on-stuck', '--duration', '900'], (l) => {
    const v = l.obj.verdict as Verdict | undefined;
    if (l.obj.type === 'alert' && v?.state === 'stuck' && v.pid === qemuPid && !seen.stuck) seen.stuck = { at: l.at, verdict: v };
  });
  const counters = cli(['watch', '--counters', '--json', '--interval', '1', '--fail-on-stuck', '--duration', '900'], (l) => {
    const vm = (l.obj.vms as VmCounterView[] | undefined)?.find((x) => x.pid === qemuPid);
    if (!vm) return;
    seen.lastVm = vm;
    if (vm.suspect && !seen.suspect) seen.suspect = { at: l.at, vm };
  });
  let q: Child | null = null;
  try {
    assert.ok(await started(watch, /watching in \w+ mode/) && watch.proc.exitCode === null, `kvmfault watch did not start: exit ${watch.proc.exitCode}\n${watch.stderr}`);
    assert.ok(await started(counters, /watching KVM's counters/) && counters.proc.exitCode === null, `kvmfault watch --counters did not start: exit ${counters.proc.exitCode}\n${counters.stderr}`);
    const t0 = monoNs();
    q = qemu(kernel, initrd, () => undefined);
    const qc = q;
    qemuPid = qc.proc.pid!;
    await Promise.race([waitFor(() => seen.stuck !== null, VERDICT_MAX_MS), watch.exited, qc.exited]);
    const stuckS = seen.stuck ? secs(t0, seen.stuck.at) : null;
    // the hung VM as doctor lists it (QEMU still running)
    const d0 = monoNs();
    const d = spawnSync(process.execPath, [CLI, 'doctor', '--json'], { encoding: 'utf8', timeout: 120_000 });
    let dj: BugRun['doctor']['json'] = null;
    try { dj = JSON.parse(d.stdout) as BugRun['doctor']['json']; } catch { /* reported below */ }
    const doctor = { status: d.status, json: dj, stderr: (d.stderr ?? '').slice(-2000), s: secs(d0) };
    // KVM's counters: the VM turns suspect (the counters watch exits 1 on it); bounded
    await Promise.race([counters.exited, deadline(Math.max(1000, VERDICT_MAX_MS - (monoNs() - t0) / 1e6))]);
    const countersExit = await end(counters, 5000, 'SIGINT');
    // give the guest a last chance to show it was only slow, then kill QEMU
    await sleep(1000);
    const qemuS = secs(t0);
    const qemuExit = await end(qc, 5000);
    const watchExit = await end(watch, 10_000, 'SIGINT');
    return {
      qemuPid, out: qc.out, qemuStderr: qc.stderr, qemuExit, qemuS, stuck: seen.stuck, stuckS, watchExit, watchStderr: watch.stderr,
      snapshots: snapshotsOf(watch), alerts: alertsOf(watch), doctor,
      counters: { suspect: seen.suspect, suspectS: seen.suspect ? secs(t0, seen.suspect.at) : null, exit: countersExit, stderr: counters.stderr, lastVm: seen.lastVm },
    };
  } finally {
    if (q) await end(q, 2000, 'SIGKILL');
    await end(counters, 2000);
    await end(watch, 2000);
    writeFileSync(PARAM, '0');
  }
}

// ---- the tests ------------------------------------------------------------------------------------

describe(`real VMM on incident kernel ${LINE || '(no line)'}: host QEMU -enable-kvm -cpu host boots a busybox guest, VM sequence from 0x80000000`, function () {
  this.timeout(900_000);
  let dir: string | null = null;
  let fixed: FixedRun | null = null;
  let bug: BugRun | null = null;
  let setupError: Error | null = null;

  before(async function () {
    requireIncidentKernel();
    try {
      checkQemuRuns();
      dir = mkdtempSync('/tmp/kvmfault-realvmm-');
      const kernel = guestKernel();
      const initrd = buildInitramfs(dir);
      report('realvmm-guest', { kernel, initrdBytes: readFileSync(initrd).length, startSeq: START_SEQ.toString(16) });
      if (VARIANT === 'fixed') {
        const f = fixed = await runFixed(kernel, initrd);
        report('realvmm-fixed', {
          qemuExit: f.qemuExit, qemuS: f.qemuS, mark1S: f.mark1S, mark2S: f.mark2S,
          guestSays: f.out.split(/\r?\n/).filter((l) => l.includes('KVMFAULT-GUEST')),
          alerts: f.alerts.map((a) => `${a.from} -> ${a.verdict.state}`), snapshots: f.snapshots.length, watchExit: f.watchExit,
          qemuStderr: f.qemuStderr.split('\n').filter(Boolean).slice(-5),
          outTimes: f.outTimes.slice(0, 5).concat(f.outTimes.slice(-5)), outTail: f.out.slice(-600),
        });
      } else {
        const b = bug = await runBug(kernel, initrd);
        const last = [...b.snapshots].reverse().find((s) => s.vcpus.some((v) => v.pid === b.qemuPid));
        report('realvmm-bug', {
          stuckS: b.stuckS, qemuS: b.qemuS, qemuExit: b.qemuExit, outBytes: b.out.length, watchExit: b.watchExit,
          alerts: b.alerts.map((a) => `${a.from} -> ${a.verdict.state}${a.verdict.cause ? ` ${a.verdict.cause}/${a.verdict.confidence}` : ''}`),
          lastVcpus: last?.vcpus.filter((v) => v.pid === b.qemuPid).map((v) => ({ tid: v.tid, threadName: v.threadName, state: v.state, gpa: v.gpa, attempts: v.attempts, totalAttempts: v.totalAttempts, mapped: v.mapped })) ?? null,
          doctorS: b.doctor.s, countersSuspectS: b.counters.suspectS, countersExit: b.counters.exit,
          qemuStderr: b.qemuStderr.split('\n').filter(Boolean).slice(-5), watchStderr: b.watchStderr.split('\n').filter((l) => l && !/watching in/.test(l)).slice(-5),
        });
      }
    } catch (e) {
      setupError = e as Error;  // every test below fails with it
    }
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function gotFixed(): FixedRun {
    if (setupError) throw setupError;
    return fixed!;
  }
  function gotBug(): BugRun {
    if (setupError) throw setupError;
    return bug!;
  }

  if (VARIANT !== 'bug') {
    it(`the guest runs past the reset vector on the fixed kernel: its firmware writes to the serial port and KVM maps its faults, ${BOOT_MIN_MAPPED} or more (the bug kernel: no byte, none), within ${BOOT_CAP_MS / 1000} s`, function () {
      const f = gotFixed();
      const mapped = Math.max(0, ...f.snapshots.flatMap((s) => s.vcpus.filter((v) => v.pid === f.qemuPid).map((v) => v.mapped)));
      report('realvmm-boot', { qemuS: f.qemuS, mark1S: f.mark1S, mark2S: f.mark2S, qemuExit: f.qemuExit, mapped, outBytes: f.out.length });
      assert.ok(f.out.length > 0, `QEMU's guest wrote nothing to its serial port: ${f.qemuStderr.slice(-1000)}`);
      assert.ok(mapped >= BOOT_MIN_MAPPED, `the tracer saw ${mapped} mapped faults of QEMU's vCPU (the bug kernel maps none)`);
      // how far it got, in the title: the banner (usually) or only its first bytes (a loaded host)
      this.test!.title += /SeaBIOS/.test(f.out) ? ': SeaBIOS banner seen' : `: ${f.out.length} bytes, no full banner (nested guest slowed)`;
    });

    it('no vCPU is ever stuck: no stuck alert, no stuck vCPU in any snapshot, watch stopped by us', () => {
      const f = gotFixed();
      const stuckAlerts = f.alerts.filter((a) => a.verdict.state === 'stuck');
      const stuckSnaps = f.snapshots.filter((s) => s.vcpus.some((v) => v.state === 'stuck'));
      const mine = f.snapshots.flatMap((s) => s.vcpus.filter((v) => v.pid === f.qemuPid));
      report('realvmm-never-stuck', { snapshots: f.snapshots.length, withQemuVcpu: mine.length, states: [...new Set(mine.map((v) => v.state))] });
      assert.ok(mine.length > 0, `no snapshot shows a vCPU of QEMU (pid ${f.qemuPid}): ${f.watchStderr.slice(-1000)}`);
      assert.deepEqual(stuckAlerts.map((a) => a.verdict.explanation), []);
      assert.equal(stuckSnaps.length, 0, `${stuckSnaps.length} snapshots with a stuck vCPU`);
      assert.equal(f.watchExit.by, 'SIGINT', `watch ended ${JSON.stringify(f.watchExit)} before we stopped it: ${f.watchStderr.slice(-1000)}`);
      assert.equal(f.watchExit.code, 130);
    });

    it(`watch names the VM "${VM_NAME}" and its vCPU thread "${VCPU_THREAD}"`, () => {
      const f = gotFixed();
      const vmNames = [...new Set(f.snapshots.flatMap((s) => s.vms.filter((v) => v.pid === f.qemuPid).map((v) => v.name)))];
      const threads = [...new Set(f.snapshots.flatMap((s) => s.vcpus.filter((v) => v.pid === f.qemuPid).map((v) => v.threadName)))];
      report('realvmm-names', { vmNames, threads });
      assert.ok(vmNames.includes(VM_NAME), `VM names seen for pid ${f.qemuPid}: ${JSON.stringify(vmNames)}`);
      assert.ok(threads.includes(VCPU_THREAD), `vCPU thread names seen: ${JSON.stringify(threads)}`);
    });

  } else {
    it(`the guest never runs: no output, watch --fail-on-stuck says stuck / seq-sign-extension / high for "${VM_NAME}" "${VCPU_THREAD}" at gpa ${RESET_VECTOR_GPA} within ${VERDICT_MAX_MS / 1000} s`, () => {
      const b = gotBug();
      assert.ok(b.stuck, `no stuck alert for QEMU (pid ${b.qemuPid}) within ${VERDICT_MAX_MS / 1000} s; alerts: ${JSON.stringify(b.alerts.map((a) => [a.from, a.verdict.state, a.verdict.explanation]))}\n${b.watchStderr.slice(-1000)}\n${b.qemuStderr.slice(-1000)}`);
      const v = b.stuck.verdict as Verdict & { decidedBy?: string };
      // the snapshot drawn with the alert carries the names
      const snap = b.snapshots.find((s) => s.at >= b.stuck!.at - 1e9 && s.vcpus.some((x) => x.tid === v.tid && x.state === 'stuck'));
      const vcpu = snap?.vcpus.find((x) => x.tid === v.tid);
      const vm = snap?.vms.find((x) => x.vmId === v.vmId);
      report('realvmm-verdict', {
        stuckS: b.stuckS, state: v.state, cause: v.cause, confidence: v.confidence, decidedBy: v.decidedBy ?? null, gpa: v.gpa, rip: v.rip,
        attempts: v.attempts, totalAttempts: v.totalAttempts, mapped: v.mapped, mmuSeqFirst: v.mmuSeqFirst, mmuSeqLast: v.mmuSeqLast,
        secondsOfRetriesSeen: +((v.lastSeen - v.firstSeen) / 1e9).toFixed(3), threadName: vcpu?.threadName ?? null, vmName: vm?.name ?? null,
        guestOutput: b.out.slice(0, 200), watchExit: b.watchExit,
      });
      assert.doesNotMatch(b.out, new RegExp(`${MARK1}|${MARK2}`), 'the guest printed a marker on the bug kernel');
      assert.equal(b.out.trim(), '', `the guest printed something: ${b.out.slice(0, 500)}`);
      assert.equal(b.qemuExit.by === 'itself', false, `QEMU ended by itself: ${JSON.stringify(b.qemuExit)}`);
      assert.equal(v.state, 'stuck');
      assert.equal(v.cause, 'seq-sign-extension', `cause ${v.cause} (${v.confidence}): ${v.explanation}`);
      assert.equal(v.confidence, 'high', `confidence ${v.confidence}: ${v.explanation}`);
      assert.equal(v.pid, b.qemuPid);
      assert.equal(v.gpa, RESET_VECTOR_GPA, `stuck at gpa ${v.gpa} (rip ${v.rip})`);
      assert.equal(v.mapped, 0, 'a fault was mapped before the stuck one: the guest ran');
      assert.ok(v.mmuSeqFirst !== null && parseInt(v.mmuSeqFirst, 16) >= START_SEQ, `sequence ${v.mmuSeqFirst}`);
      assert.ok(vm, 'no snapshot with the stuck vCPU\'s VM');
      assert.equal(vm.name, VM_NAME);
      assert.equal(vcpu?.threadName, VCPU_THREAD);
      assert.equal(b.watchExit.code, 1, `watch exit ${JSON.stringify(b.watchExit)} (want 1: --fail-on-stuck)`);
      assert.ok(b.stuckS !== null && b.stuckS * 1000 < VERDICT_MAX_MS);
    });

    it(`doctor --json lists the hung VM: kvm.vms with name "${VM_NAME}"`, () => {
      const b = gotBug();
      const vms = b.doctor.json?.kvm.vms ?? null;
      report('realvmm-doctor', { status: b.doctor.status, s: b.doctor.s, vms });
      assert.ok(b.doctor.json, `doctor printed no JSON (exit ${b.doctor.status}): ${b.doctor.stderr}`);
      const vm = vms!.find((v) => v.pid === b.qemuPid);
      assert.ok(vm, `QEMU (pid ${b.qemuPid}) not in doctor's kvm.vms: ${JSON.stringify(vms)}`);
      assert.equal(vm.name, VM_NAME);
      assert.equal(vm.vcpus, 1);
    });

    it('watch --counters sees the VM suspect from KVM\'s own counters (BPF iterator), its sequence past 0x80000000', () => {
      const b = gotBug();
      const c = b.counters;
      const vm = c.suspect?.vm ?? c.lastVm;
      report('realvmm-counters', { suspectS: c.suspectS, exit: c.exit, name: vm?.name ?? null, mmuSeq: vm?.mmuSeq?.toString(16) ?? null,
        vcpus: vm?.vcpus.map((v) => ({ tid: v.tid, suspect: v.suspect, pfTaken: v.stats.pf_taken, pfFixed: v.stats.pf_fixed, retried: v.retriedInInterval })) ?? null });
      assert.ok(c.suspect, `QEMU's VM never turned suspect in watch --counters (last: ${JSON.stringify(c.lastVm)}): ${c.stderr.slice(-1000)}`);
      assert.equal(c.suspect.vm.name, VM_NAME);
      assert.ok(c.suspect.vm.mmuSeq !== null && c.suspect.vm.mmuSeq >= START_SEQ, `sequence ${c.suspect.vm.mmuSeq}`);
      assert.equal(c.suspect.vm.vcpus.filter((v) => v.suspect).length, 1);
      assert.equal(c.suspect.vm.vcpus[0].stats.pf_fixed, 0, 'KVM fixed a fault of this VM');
      assert.equal(c.exit.code, 1, `watch --counters --fail-on-stuck exit ${JSON.stringify(c.exit)}`);
    });

    it('QEMU is killed: it leaves the stuck KVM_RUN on a signal', () => {
      const b = gotBug();
      report('realvmm-kill', { qemuExit: b.qemuExit, qemuS: b.qemuS });
      assert.ok(b.qemuExit.by === 'SIGTERM' || b.qemuExit.by === 'SIGKILL', JSON.stringify(b.qemuExit));
      assert.notEqual(b.qemuExit.by, 'SIGKILL', 'QEMU did not end on SIGTERM within 5 s');
    });
  }
});
