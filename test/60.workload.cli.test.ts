import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { bound, requireKvm, workloadSetupFaults } from './helpers/host';

const CLI = path.join(__dirname, '../lib/cli/main.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'workload', ...args], { encoding: 'utf8' });

describe('60 kvmfault workload (CLI)', function () {
  this.timeout(bound(30_000)); // four CLI starts in one test: seconds each under the matrix's emulation

  it('--help lists the options with examples', () => {
    const r = cli('--help');
    assert.equal(r.status, 0);
    for (const flag of ['--pattern', '--size-mib', '--stride', '--runs', '--duration', '--rate', '--vcpus', '--vms', '--invalidate', '--invalidate-method', '--json']) {
      assert.ok(r.stdout.includes(flag), flag);
    }
    assert.match(r.stdout, /Examples:/);
  });

  it('bad arguments: exit 2 and one line naming the flag', () => {
    const cases: [string[], RegExp][] = [
      [['--vcpus', '0'], /^kvmfault: --vcpus must be an integer from 1 to 32 \(got 0\)\n$/],
      [['--stride', 'x'], /^kvmfault: --stride must be a number \(got "x"\)\n$/],
      [['--pattern', 'zigzag'], /^kvmfault: --pattern must be one of 'sequential', 'random', 'hot' \(got "zigzag"\)\n$/],
      [['--invalidate-method', 'munmap', '--invalidate', 'between'], /^kvmfault: --invalidate-method must be one of/],
    ];
    for (const [args, message] of cases) {
      const r = cli(...args);
      assert.equal(r.status, 2, args.join(' '));
      assert.match(r.stderr, message);
    }
  });

  it('--json: per-run KVM stats, host and threads of a real guest', function () {
    requireKvm(this);
    const r = cli('--size-mib', '2', '--runs', '2', '--invalidate', 'between', '--json');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.ok(['pvm', 'vmx', 'svm'].includes(j.host));
    assert.equal(j.tids.length, 1);
    const setup = workloadSetupFaults(j);
    assert.deepEqual(j.runs.map((x: { vcpu: { pf_taken: number } }) => x.vcpu.pf_taken), [512 + setup, 512]);
    assert.equal(j.total.faults, 1024 + setup);
  });

  it('text output: one line per run and a total', function () {
    requireKvm(this);
    const r = cli('--size-mib', '1', '--runs', '2', '--invalidate', 'between');
    assert.equal(r.status, 0, r.stderr);
    const host = /^host: (pvm|vmx|svm) — (.*)$/m.exec(r.stdout);
    assert.ok(host, r.stdout);
    const first = 256 + workloadSetupFaults({ host: host[1], hostDetail: host[2] });
    assert.match(r.stdout, new RegExp(`\\n +0 +[\\d.]+ +256 +256 +256 +${first} +${first} `));
    assert.match(r.stdout, /\n +1 +[\d.]+ +256 +256 +256 +256 +256 /);
    assert.match(r.stdout, new RegExp(`total: 2 runs, .* ${first + 256} faults \\(0 retried\\)`));
  });
});
