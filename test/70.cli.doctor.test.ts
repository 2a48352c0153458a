import assert from 'node:assert/strict';
import { bound, requireKvm } from './helpers/host';
import fs from 'node:fs';
import os from 'node:os';
import { cliSync, startWorkloadChild, waitForStderr } from './70.cli.helpers';

describe('70 CLI doctor', function () {
  this.timeout(bound(60_000));

  it('doctor --json on this machine: every fact the issue asks for', function () {
    requireKvm(this);
    const r = cliSync(['doctor', '--json']);
    const j = JSON.parse(r.stdout);
    assert.equal(r.status, j.summary.fail > 0 ? 1 : 0, r.stderr);
    // kernel and the bug
    assert.equal(j.kernel.release, os.release());
    assert.ok(['affected', 'fixed', 'not-affected', 'unknown'].includes(j.kernel.status));
    // privileges, decoded from CapEff
    const capEff = /^CapEff:\s*([0-9a-f]+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1];
    assert.equal(j.privileges.euid, 0);
    assert.equal(j.privileges.capEff, capEff);
    assert.equal(j.privileges.capSysAdmin, ((BigInt('0x' + capEff) >> 21n) & 1n) === 1n);
    assert.equal(typeof j.privileges.capBpf, 'boolean');
    assert.equal(typeof j.privileges.capPerfmon, 'boolean');
    // BTF
    assert.equal(j.btf.vmlinux, fs.existsSync('/sys/kernel/btf/vmlinux'));
    assert.equal(j.btf.kvmModule, fs.existsSync('/sys/kernel/btf/kvm'));
    // probe points and the mode
    for (const f of ['kvm_mmu_faultin_pfn', 'kvm_faultin_pfn', 'direct_page_fault', 'kvm_tdp_page_fault', 'paging64_page_fault']) {
      assert.equal(typeof j.probes.functions[f], 'boolean', f);
    }
    assert.equal(typeof j.probes.kprobeEvents, 'boolean');
    assert.equal(typeof j.probes.tracefsMounted, 'boolean');
    assert.ok('kvm/kvm_page_fault' in j.probes.tracepoints);
    assert.ok('kvmmmu/kvm_mmu_pagetable_walk' in j.probes.tracepoints);
    assert.equal(j.tracer.attempted, true);
    assert.ok(['tracepoint', 'kprobe', 'fentry'].includes(j.tracer.mode), `tracer mode: ${j.tracer.error}`);
    assert.ok(j.tracer.attached.length > 0);
    // KVM and running VMs
    assert.equal(j.kvm.devKvm, true);
    assert.ok(Array.isArray(j.kvm.vms));
    // invalidation sources, compared with the files
    const num = (p: string) => (fs.existsSync(p) ? Number(fs.readFileSync(p, 'utf8').trim()) : null);
    assert.equal(j.numaBalancing, num('/proc/sys/kernel/numa_balancing'));
    assert.equal(j.ksm.run, num('/sys/kernel/mm/ksm/run'));
    assert.ok('pagesSharing' in j.ksm && 'fullScans' in j.ksm);
    const thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    assert.equal(j.thp.enabled, /\[([^\]]+)\]/.exec(thp)![1]);
    // the table: every check has a status, and a remedy when it is not a pass
    const ids = j.checks.map((c: { id: string }) => c.id);
    for (const id of ['kernel', 'privileges', 'btf-vmlinux', 'btf-kvm', 'kprobes', 'tracepoints', 'tracer', 'dev-kvm', 'vms', 'numa-balancing', 'ksm', 'thp']) {
      assert.ok(ids.includes(id), id);
    }
    for (const c of j.checks) {
      assert.ok(['pass', 'warn', 'fail', 'info'].includes(c.status));
      if (c.status === 'warn' || c.status === 'fail') assert.ok(c.remedy.length > 0, `${c.id} has a remedy`);
    }
  });

  it('doctor finds a running VM (the built-in guest) with pid, name and vCPUs', async function () {
    requireKvm(this);
    // the guest runs (its VM and vCPU threads exist: it printed its header) until we stop it
    const { running: w, pid } = await startWorkloadChild(['--duration', '600', '--rate', '1000', '--vcpus', '2', '--size-mib', '2']);
    try {
      assert.equal(pid, w.child.pid);
      const r = cliSync(['doctor', '--json', '--no-attach'], bound(60_000));
      const j = JSON.parse(r.stdout);
      const vm = j.kvm.vms.find((v: { pid: number }) => v.pid === w.child.pid);
      assert.ok(vm, `workload pid ${w.child.pid} not among ${JSON.stringify(j.kvm.vms)}; workload stderr: ${w.stderr()}`);
      assert.equal(vm.comm, 'node');
      assert.equal(vm.vmFds, 1);
      assert.equal(vm.vcpus, 2);
      assert.ok(vm.threads >= 3);
      assert.equal(j.tracer.attempted, false);
    } finally {
      w.child.kill('SIGINT');
      await w.exited;
    }
  });

  it('doctor prints a pass/warn/fail table with the summary', function () {
    requireKvm(this);
    const r = cliSync(['doctor', '--no-attach']);
    assert.ok(r.status === 0 || r.status === 1, r.stderr);
    assert.match(r.stdout, /^(PASS|WARN|FAIL|INFO) {2}kernel vs the is_page_fault_stale sign-extension bug/m);
    assert.match(r.stdout, /\n\d+ pass, \d+ warn, \d+ fail\n$/);
    void waitForStderr;
  });
});
