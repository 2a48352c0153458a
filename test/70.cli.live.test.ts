/**
 * The live commands on a real guest (the built-in workload in a child process), as root:
 * trace --json counts, record -> analyze equals watching live, SIGINT exits 130 leaving no
 * BPF link and a valid capture, the metrics endpoint parses as Prometheus text.
 */
import assert from 'node:assert/strict';
import { bound, requireKvm, waitFor } from './helpers/host';
import { writeFileSync } from 'node:fs';
import { cliSpawn, cliSync, kvmLinkIds, parsePrometheus, runWorkloadChild, Running, scrapeMetrics, tmpFile, waitForStderr } from './70.cli.helpers';

const ATTACHED = /probes attached\); Ctrl-C stops/;

async function interrupt(r: Running): Promise<number | null> {
  r.child.kill('SIGINT');
  const { code } = await r.exited;
  return code;
}

function linksGone(ours: Set<number>): void {
  const now = kvmLinkIds();
  const left = [...ours].filter((id) => now.has(id));
  assert.deepEqual(left, [], `BPF links still attached after the CLI stopped: ${left.join(', ')}`);
}

function newLinks(before: Set<number>): Set<number> {
  return new Set([...kvmLinkIds()].filter((id) => !before.has(id)));
}

describe('70 CLI live commands on a real guest', function () {
  this.timeout(bound(90_000));
  before(function () { requireKvm(this); });

  it('trace --json: one map record per KVM fault of the guest; SIGINT exits 130 with no link left', async () => {
    const before = kvmLinkIds();
    const t = cliSpawn(['trace', '--json', '--kind', 'map']);
    try {
      await waitForStderr(t, ATTACHED);
      const ours = newLinks(before);
      assert.ok(ours.size > 0, 'the running trace holds BPF links');
      const w = await runWorkloadChild(['--size-mib', '4', '--runs', '2', '--invalidate', 'between']);
      // SIGINT closes the ring at once: first let trace print every record of the guest (the
      // ring's tail comes with a 10 ms timer); a drop is reported on stderr only at exit, so
      // this waits for all of them and, if some never come, SIGINT reports how many dropped
      const lines = (): { pid: number; kind: string; tid: number }[] =>
        t.stdout().split('\n').filter((l) => l.endsWith('}')).map((l) => JSON.parse(l));
      await waitFor(() => lines().filter((e) => e.pid === w.pid).length >= w.result.total.faults, 10_000, () => 'records still coming')
        .catch(() => undefined);
      assert.equal(await interrupt(t), 130, t.stderr());
      linksGone(ours);
      const mine = t.stdout().split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((e) => e.pid === w.pid);
      assert.ok(mine.every((e) => e.kind === 'map' && w.result.tids.includes(e.tid)));
      const dropped = Number(/(\d+) dropped/.exec(t.stderr())?.[1] ?? 0);
      if (dropped === 0) assert.equal(mine.length, w.result.total.faults, 'map records = KVM pf_taken');
      else assert.ok(mine.length + dropped >= w.result.total.faults, `${mine.length} + ${dropped} dropped < ${w.result.total.faults}`);
    } finally {
      t.child.kill('SIGKILL');
    }
  });

  it('trace text: incident line format; -n stops after N; EPIPE-safe', async () => {
    // ends at -n 5 (asserted below); the duration only bounds a failure (the guest child takes
    // seconds to start under the matrix's emulation)
    const t = cliSpawn(['trace', '-n', '5', '--kind', 'fault,map', '--duration', String(bound(60))]);
    await waitForStderr(t, ATTACHED);
    const w = runWorkloadChild(['--size-mib', '2', '--runs', '1']);
    const { code } = await t.exited;
    await w;
    assert.equal(code, 0, t.stderr());
    const [header, ...lines] = t.stdout().trim().split('\n');
    assert.match(header, /^# kvmfault trace text v1: one line per record; mode \w+, kernel \S+/);
    assert.equal(lines.length, 5);
    for (const l of lines) {
      assert.match(l, /^\d\d:\d\d:\d\d:\d{6} tid\[\d+\] pid\[\d+\] (FAULT|MAP) @ rip [0-9a-f?]+ \(\d+ hits\), gpa = [0-9a-f]+/);
    }
    // analyze reads the text back, with the kernel from the header
    const file = tmpFile('trace.txt');
    writeFileSync(file, t.stdout());
    const a = cliSync(['analyze', '--json', file]);
    const report = JSON.parse(a.stdout);
    assert.equal(report.records, 5, a.stderr);
    assert.equal(report.kernelSource, 'trace text');
  });

  it('record and watch on the same guest; record -> analyze gives the verdicts seen live; SIGINT leaves a valid capture', async () => {
    const file = tmpFile('live.kvmf');
    const before = kvmLinkIds();
    const rec = cliSpawn(['record', '-o', file]);
    const watch = cliSpawn(['watch', '--json', '--interval', '1']);
    try {
      await waitForStderr(rec, ATTACHED);
      await waitForStderr(watch, ATTACHED);
      const ours = newLinks(before);
      const w = await runWorkloadChild(['--pattern', 'sequential', '--size-mib', '8', '--runs', '2', '--invalidate', 'between']);
      // SIGINT closes the rings at once: first let watch show every fault of the guest mapped
      // (record, a plain copy to a file, is not slower than watch with its detector)
      const mappedSeen = (): number => {
        const snaps = watch.stdout().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
          .filter((l) => l.type === 'snapshot');
        const last = snaps[snaps.length - 1];
        return (last?.vcpus ?? []).filter((v: { pid: number }) => v.pid === w.pid).reduce((a: number, v: { mapped: number }) => a + v.mapped, 0);
      };
      await waitFor(() => mappedSeen() >= w.result.total.faults, 30_000,
        () => `watch shows ${mappedSeen()} faults of the guest mapped, KVM counted ${w.result.total.faults}`, 200);
      assert.equal(await interrupt(rec), 130, rec.stderr());
      assert.equal(await interrupt(watch), 130, watch.stderr());
      linksGone(ours);
      assert.match(rec.stderr(), /kvmfault: wrote .*live\.kvmf: \d+ records, .* \(SIGINT\); \d+ dropped/);

      const lines = watch.stdout().trim().split('\n').map((l) => JSON.parse(l));
      const final = lines.find((l) => l.type === 'final');
      assert.ok(final, 'watch printed its final snapshot after SIGINT');
      const live = final.vcpus.filter((v: { pid: number }) => v.pid === w.pid);
      assert.ok(live.length > 0, 'watch saw the guest');

      const a = cliSync(['analyze', '--json', file]);
      assert.equal(a.status, 0, a.stderr); // readable, undamaged, nothing stuck
      const report = JSON.parse(a.stdout);
      assert.equal(report.format, 'capture');
      const offline = report.vcpus.filter((v: { pid: number }) => v.pid === w.pid);
      const pick = (vs: { tid: number; state: string; cause: string | null; gpa: string; totalAttempts: number; mapped: number }[]) =>
        vs.map((v) => ({ tid: v.tid, state: v.state, cause: v.cause, gpa: v.gpa, totalAttempts: v.totalAttempts, mapped: v.mapped }))
          .sort((x, y) => x.tid - y.tid);
      assert.deepEqual(pick(offline), pick(live));
      assert.ok(live.every((v: { state: string }) => v.state !== 'stuck'));
    } finally {
      rec.child.kill('SIGKILL');
      watch.child.kill('SIGKILL');
    }
  });

  it('record --max-bytes and --duration finish the file cleanly', async () => {
    const file = tmpFile('limited.kvmf');
    // ends at --max-bytes (asserted below); the duration only bounds a failure
    const rec = cliSpawn(['record', '-o', file, '--max-bytes', '64K', '--duration', String(bound(60))]);
    await waitForStderr(rec, ATTACHED);
    const w = runWorkloadChild(['--size-mib', '4', '--runs', '2', '--invalidate', 'between']);
    const { code } = await rec.exited;
    await w;
    assert.equal(code, 0, rec.stderr());
    assert.match(rec.stderr(), /\(--max-bytes reached\)/);
    const size = Number(cliSync(['analyze', '--json', file]).status === 0) && (await import('node:fs')).statSync(file).size;
    assert.ok(size > 0 && size <= 65536, `file size ${size}`);
  });

  it('metrics --mode auto (the tracer): scraped over loopback on an ephemeral port, valid Prometheus text', async () => {
    const m = cliSpawn(['metrics', '--mode', 'auto', '--listen', '127.0.0.1:0', '--duration', '600']); // stopped by SIGINT below
    try {
      await waitForStderr(m, /serving http:\/\/127\.0\.0\.1:\d+\/metrics/);
      const port = Number(/127\.0\.0\.1:(\d+)/.exec(m.stderr())![1]);
      const w = await runWorkloadChild(['--size-mib', '4', '--runs', '1']);
      const scrape = () => scrapeMetrics(port);
      let body = await scrape();
      const guestSeen = (text: string) => new RegExp(`^kvmfault_vcpu_mapped_total\\{[^}]*pid="${w.pid}"[^}]*\\} [1-9]`, 'm').test(text);
      const until = Date.now() + bound(15_000);
      while (!guestSeen(body.text) && Date.now() < until) {
        await new Promise((res) => setTimeout(res, 200));
        body = await scrape();
      }
      assert.equal(body.status, 200);
      assert.match(body.type, /^text\/plain; version=0\.0\.4/);
      const { types, samples } = parsePrometheus(body.text);
      const get = (name: string, pid?: number) => samples.filter((x) => x.name === name && (pid === undefined || x.labels.pid === String(pid)));
      assert.equal(types.get('kvmfault_vcpu_faults_total'), 'counter');
      const faults = get('kvmfault_vcpu_faults_total', w.pid);
      assert.ok(faults.length > 0 && faults.every((f) => w.result.tids.includes(Number(f.labels.tid))), 'per-vCPU faults of the guest');
      assert.ok(get('kvmfault_vcpu_mapped_total', w.pid).reduce((a, x) => a + x.value, 0) >= 1);
      assert.equal(get('kvmfault_stuck_vcpus')[0].value, 0);
      assert.ok(get('kvmfault_vm_mmu_invalidate_seq', w.pid).length === 1);
      assert.ok(get('kvmfault_dropped_records_total').length === 1);
      assert.ok(get('kvmfault_records_total')[0].value > 0);
      assert.ok(get('kvmfault_kernel_affected').length === 1);
      assert.ok(get('kvmfault_bpf_stats_enabled').length === 1);
      assert.equal(await interrupt(m), 130, m.stderr());
    } finally {
      m.child.kill('SIGKILL');
    }
  });

  it('metrics (default: KVM\'s counters, no tracer): the running guest\'s vCPU with KVM\'s pf_taken, not suspect', async () => {
    const m = cliSpawn(['metrics', '--listen', '127.0.0.1:0', '--interval', '0.5', '--duration', '600']); // stopped by SIGINT below
    const w = cliSpawn(['workload', '--json', '--size-mib', '8', '--duration', '6', '--invalidate', 'between']);
    try {
      await waitForStderr(m, /serving http:\/\/127\.0\.0\.1:\d+\/metrics \(KVM counters from bpf-iter/);
      const port = Number(/127\.0\.0\.1:(\d+)/.exec(m.stderr())![1]);
      const pid = w.child.pid!;
      // scraped until the guest's vCPU shows faults (sampled every 0.5 s while it runs)
      const taken = (text: string) => parsePrometheus(text).samples.filter((x) => x.name === 'kvmfault_kvm_pf_taken_total' && x.labels.pid === String(pid));
      let body = await scrapeMetrics(port);
      const until = Date.now() + bound(20_000);
      while (!taken(body.text).some((x) => x.value > 0) && Date.now() < until) {
        await new Promise((res) => setTimeout(res, 250));
        body = await scrapeMetrics(port);
      }
      assert.equal(body.status, 200);
      const { types, samples } = parsePrometheus(body.text);
      const get = (name: string) => samples.filter((x) => x.name === name && (x.labels.pid === undefined || x.labels.pid === String(pid)));
      assert.equal(types.get('kvmfault_kvm_pf_taken_total'), 'counter');
      const vcpu = taken(body.text);
      assert.equal(vcpu.length, 1, `one vCPU of pid ${pid}: ${JSON.stringify(vcpu)}`);
      assert.ok(vcpu[0].value > 0 && vcpu[0].labels.vcpu === '0' && /^\d+$/.test(vcpu[0].labels.tid));
      assert.ok(get('kvmfault_kvm_pf_fixed_total')[0].value > 0);
      assert.equal(get('kvmfault_vcpu_suspect')[0].value, 0);
      assert.equal(get('kvmfault_vm_suspect')[0].value, 0);
      assert.equal(get('kvmfault_suspect_vms')[0].value, 0);
      assert.equal(get('kvmfault_vm_mmu_invalidate_seq').length, 1, 'the sequence, read by the iterator');
      assert.equal(samples.find((x) => x.name === 'kvmfault_counters_info')?.labels.source, 'bpf-iter');
      const cost = samples.find((x) => x.name === 'kvmfault_counters_sample_seconds')!.value;
      assert.ok(cost > 0 && cost < 1, `one sample took ${cost} s`);
      const { code } = await w.exited;
      assert.equal(code, 0, w.stderr());
      assert.equal(await interrupt(m), 130, m.stderr());
    } finally {
      m.child.kill('SIGKILL');
      w.child.kill('SIGKILL');
    }
  });
});
