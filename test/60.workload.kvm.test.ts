import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { runWorkload, WorkloadError, WorkloadResult } from '../lib/workload';
import { requireKvm, workloadSetupFaults } from './helpers/host';

/** Real guests on this machine's KVM, with KVM's own counters as ground truth. */

/** Open fds of this process, and how many of them are KVM objects (VM, vCPU, stats). */
function fdCounts(): { all: number; kvm: number } {
  let kvm = 0;
  const fds = readdirSync('/proc/self/fd');
  for (const fd of fds) {
    try {
      if (/kvm/.test(readlinkSync(`/proc/self/fd/${fd}`))) kvm++;
    } catch {
      // the fd of readdir itself is gone by now
    }
  }
  return { all: fds.length, kvm };
}

const PAGES = 1024; // 4 MiB at 4 KiB stride
const SIZE_MIB = 4;

function assertAllVerified(r: WorkloadResult): void {
  for (const run of r.runs) {
    assert.equal(run.pagesVerified, run.pagesTouched, `run ${run.index}: host saw ${run.pagesVerified} of ${run.pagesTouched} guest writes`);
  }
}

describe('60 workload on real KVM', function () {
  this.timeout(60_000);
  before(function () { requireKvm(this); });

  it('says what backs /dev/kvm and who runs the vCPUs', async () => {
    let started: number[] | undefined;
    const r = await runWorkload({ sizeMiB: 1, onStart: (i) => (started = i.tids) });
    assert.ok(['pvm', 'vmx', 'svm'].includes(r.host), `host kind ${r.host}`);
    if (existsSync('/sys/module/kvm_pvm')) assert.equal(r.host, 'pvm');
    assert.match(r.hostDetail, /PVM|VMX|SVM/);
    assert.equal(r.pid, process.pid);
    assert.equal(r.tids.length, 1);
    assert.deepEqual(started, r.tids);
    assert.notEqual(r.tids[0], process.pid, 'the vCPU runs on its own thread');
    assert.deepEqual(r.warnings, []);
  });

  it(`sequential, fresh memory: pf_taken = ${PAGES} pages + the setup pages (code; page tables under NPT/EPT), every write verified`, async () => {
    const r = await runWorkload({ pattern: 'sequential', sizeMiB: SIZE_MIB, runs: 2 });
    const setup = workloadSetupFaults(r);
    assert.equal(r.pagesPerRun, PAGES);
    assert.equal(r.runs[0].faults, PAGES + setup);
    assert.equal(r.runs[0].vcpu.pf_fixed, PAGES + setup);
    assert.equal(r.runs[0].pagesTouched, PAGES);
    // the second run finds every page mapped: no fault at all
    assert.equal(r.runs[1].faults, 0);
    assertAllVerified(r);
  });

  it('random walk: every page once in pseudo-random order, same fault count', async () => {
    const r = await runWorkload({ pattern: 'random', sizeMiB: SIZE_MIB, seed: 7 });
    assert.equal(r.runs[0].touches, PAGES);
    assert.equal(r.runs[0].faults, PAGES + workloadSetupFaults(r));
    assertAllVerified(r);
  });

  it('hot set: many touches over 32 pages fault 32 + setup times', async () => {
    const r = await runWorkload({ pattern: 'hot', sizeMiB: SIZE_MIB, hotPages: 32, touches: 5000 });
    assert.equal(r.runs[0].touches, 5000);
    assert.equal(r.runs[0].pagesTouched, 32);
    assert.equal(r.runs[0].faults, 32 + workloadSetupFaults(r));
    assertAllVerified(r);
  });

  for (const method of ['dontneed', 'remap', 'mprotect'] as const) {
    // mprotect keeps the host pages, and KVM then prefetches 8 neighbouring SPTEs per fault:
    // one touch per 8 pages keeps it at one fault per touch.
    const stride = method === 'mprotect' ? 32768 : 4096;
    const pages = (SIZE_MIB << 20) / stride;
    it(`invalidation between runs (${method}): exactly one refault per page per run`, async () => {
      const r = await runWorkload({ sizeMiB: SIZE_MIB, stride, runs: 3, invalidate: 'between', invalidateMethod: method });
      assert.deepEqual(
        r.runs.map((x) => x.faults),
        [pages + workloadSetupFaults(r), pages, pages],
      );
      assert.deepEqual(
        r.runs.map((x) => x.invalidations),
        [0, 1, 1],
      );
      assertAllVerified(r);
    });
  }

  for (const method of ['dontneed', 'mprotect'] as const) {
    it(`concurrent invalidation (${method}): more fault attempts than pages, all pages eventually written`, async () => {
      const r = await runWorkload({
        sizeMiB: 16,
        runs: 2,
        invalidate: 'concurrent',
        invalidateMethod: method,
        invalidateIntervalUs: 50,
      });
      const pages = 4096;
      // The race is made certain (native/workload/vmm.c wait_for_sweep): halfway through pass 1
      // the vCPU waits until the invalidator has swept the whole region (8 windows of 2 MiB,
      // plus one already under way) after its first 2048 writes.
      const sweep = 16 / 2;
      for (const run of r.runs) {
        assert.equal(run.passes, 2);
        assert.equal(run.truncated, false);
        assert.ok(run.invalidations > 0, `run ${run.index}: the host invalidated nothing`);
        assert.ok(run.invalidations >= sweep + 1, `run ${run.index}: ${run.invalidations} invalidations, less than the sweep the guest waits for`);
        assert.equal(run.pagesTouched, pages);
        // dontneed frees every page of the sweep: the first half's writes are gone before pass 2
        if (method === 'dontneed') assert.ok(run.pagesLost >= pages / 2, `run ${run.index}: only ${run.pagesLost} writes wiped`);
      }
      // Racing invalidations make KVM fault the same pages again (and retry some faults).
      const attempts = r.total.faults;
      assert.ok(attempts > pages, `pf_taken ${attempts} over two runs of ${pages} pages`);
      assertAllVerified(r);
      if (method === 'dontneed') assert.ok(r.total.pagesLost > 0, 'no write was wiped by an invalidation: the race did not happen');
    });
  }

  it('several VMs with several vCPUs at once: each VM faults on its own pages, threads told apart', async () => {
    const r = await runWorkload({ sizeMiB: SIZE_MIB, vms: 3, vcpus: 2, runs: 2, invalidate: 'between' });
    assert.equal(r.vms.length, 3);
    assert.equal(new Set(r.tids).size, 6);
    assert.equal(new Set(r.vms.map((v) => v.regionHva)).size, 3);
    assert.equal(r.pagesPerRun, 3 * PAGES);
    const setup = workloadSetupFaults(r);
    for (const vm of r.runs[0].perVm) {
      // own pages + the setup pages; a second vCPU may meet a setup page mid-fault (spurious)
      assert.ok(vm.vcpu.pf_taken >= PAGES + setup && vm.vcpu.pf_taken <= PAGES + setup + 1, `VM pf_taken ${vm.vcpu.pf_taken}, setup ${setup}`);
      assert.equal(vm.perVcpu.length, 2);
      for (const v of vm.perVcpu) assert.ok(v.pf_taken >= PAGES / 2, `a vCPU took only ${v.pf_taken} faults`);
    }
    for (const vm of r.runs[1].perVm) assert.equal(vm.vcpu.pf_taken, PAGES);
    assertAllVerified(r);
  });

  it('rate limit and duration: runs stop at the deadline, writes still verified', async () => {
    const runs: number[] = [];
    const r = await runWorkload({ sizeMiB: 1, rate: 2000, duration: 0.3, invalidate: 'between', onRun: (x) => runs.push(x.index) });
    assert.ok(r.runs.length >= 1);
    assert.deepEqual(runs, r.runs.map((x) => x.index));
    // 256 touches at 2000/s take 128 ms: at most three runs fit in 0.3 s, all but the last complete
    assert.ok(r.runs.length <= 3, `${r.runs.length} runs in 0.3 s`);
    for (const run of r.runs.slice(0, -1)) assert.equal(run.touches, 256);
    for (const run of r.runs) assert.equal(run.faults, run.pagesTouched + (run.index === 0 ? workloadSetupFaults(r) : 0));
    assertAllVerified(r);
  });

  it('the event loop keeps running while the guest faults', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    try {
      await runWorkload({ sizeMiB: 16, runs: 3, invalidate: 'between' });
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks > 0, 'no timer fired during the workload');
  });

  it('AbortSignal stops a long workload with AbortError and the runs done so far', async () => {
    const ac = new AbortController();
    const started = Date.now();
    const p = runWorkload({ sizeMiB: 4, duration: 600, invalidate: 'between', signal: ac.signal, onRun: (x) => x.index === 2 && ac.abort() });
    await assert.rejects(p, (e: Error & { code?: string; partial?: WorkloadResult }) => {
      assert.equal(e.name, 'AbortError');
      assert.equal(e.code, 'ABORT_ERR');
      assert.ok(e.partial && e.partial.runs.length >= 3);
      return true;
    });
    assert.ok(Date.now() - started < 60_000);
  });

  it('a guest set up for the wrong host kind is reported, not silently counted', async function () {
    if (!existsSync('/sys/module/kvm_pvm')) {
      // On VMX/SVM the "wrong" setup is the PVM one: its MSR is refused with a clear error.
      await assert.rejects(runWorkload({ sizeBytes: 65536, host: 'pvm' }), (e: WorkloadError) => e.code === 'UNSUPPORTED_HOST' && /PVCS MSR/.test(e.message));
      return;
    }
    // Under PVM a guest without the PVCS runs emulated: it completes but takes no page faults.
    const r = await runWorkload({ sizeBytes: 65536, host: 'vmx' });
    assert.equal(r.runs[0].faults, 0);
    assert.match(r.warnings.join('\n'), /KVM emulated the guest/);
  });

  it('no /dev/kvm: a clear KVM_UNAVAILABLE error (child process in a mount namespace with an empty /dev)', () => {
    const script = `require(${JSON.stringify(path.join(__dirname, '../lib/workload.js'))}).runWorkload({ sizeMiB: 1 })` +
      `.then(() => console.log('OK'), (e) => console.log(e.name + ' ' + e.code + ': ' + e.message))`;
    const res = spawnSync('unshare', ['-m', 'sh', '-c', `mount -t tmpfs tmpfs /dev && exec "${process.execPath}" -e "$0"`, script], { encoding: 'utf8' });
    assert.equal(res.error, undefined, `unshare could not run: ${res.error}`);
    assert.match(res.stdout, /^WorkloadError KVM_UNAVAILABLE: no \/dev\/kvm: KVM is not available on this host \(load kvm_intel or kvm_amd/, res.stderr);
  });

  it('no permission on /dev/kvm: a clear KVM_PERMISSION error (child process as nobody)', () => {
    const script = `require(${JSON.stringify(path.join(__dirname, '../lib/workload.js'))}).runWorkload({ sizeMiB: 1 })` +
      `.then(() => console.log('OK'), (e) => console.log(e.name + ' ' + e.code + ': ' + e.message))`;
    const res = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', uid: 65534, gid: 65534 });
    assert.match(res.stdout, /^WorkloadError KVM_PERMISSION: permission denied opening \/dev\/kvm: run as root or add this user to the group/, res.stderr);
  });

  it('leaves no fd behind: runs, several VMs, concurrent invalidation, abort and errors', async () => {
    await runWorkload({ sizeMiB: 1 }); // warm up: the addon and libuv's pool are loaded once
    const before = fdCounts();
    await runWorkload({ sizeMiB: 2, vms: 2, vcpus: 2, runs: 2, invalidate: 'concurrent' });
    await runWorkload({ sizeMiB: 1, runs: 2, invalidate: 'between', invalidateMethod: 'remap' });
    const ac = new AbortController();
    await assert.rejects(runWorkload({ sizeMiB: 1, duration: 600, signal: ac.signal, onRun: () => ac.abort() }), { name: 'AbortError' });
    await assert.rejects(runWorkload({ vcpus: 99 }), RangeError);
    await assert.rejects(runWorkload({ sizeMiB: 1, onRun: () => { throw new Error('listener failed'); } }), /listener failed/);
    const after = fdCounts();
    assert.equal(after.kvm, 0, 'a KVM fd is still open');
    assert.equal(after.all, before.all, `fds before ${before.all}, after ${after.all}`);
  });
});
