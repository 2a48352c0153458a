/**
 * The README's runnable API examples (examples/*.js) run on this machine's KVM and print what
 * the README says: live records whose MAP count equals KVM's pf_taken, and verdicts, none stuck.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { detectKvmHost } from '../lib/workload';
import { requireKvm, workloadSetupFaults } from './helpers/host';

function runExample(name: string): string {
  const file = path.resolve(__dirname, '../../examples', name);
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `${name} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

describe('80 README examples', function () {
  this.timeout(90_000);
  before(function () { requireKvm(this); });

  it('examples/live-faults.js: records printed, map records = KVM pf_taken, nothing dropped', () => {
    const out = runExample('live-faults.js');
    assert.match(out, /^mode: \w+/m);
    assert.match(out, / MAP @ rip [0-9a-f]+ .*gpa = [0-9a-f]+, hva = [0-9a-f]+/, 'no MAP line in the incident format');
    const m = /map records: (\d+), KVM pf_taken: (\d+), records: (\d+), dropped: (\d+)/.exec(out);
    assert.ok(m, `no summary line in:\n${out}`);
    assert.equal(Number(m[1]), Number(m[2]), m[0]);
    const { host, detail } = detectKvmHost();
    const setup = workloadSetupFaults({ host, hostDetail: detail });
    assert.equal(Number(m[2]), 2 * 1024 + setup, `2 runs x 1024 pages + ${setup} setup page(s) on ${host} (${detail})`);
    assert.equal(Number(m[4]), 0, m[0]);
  });

  it('examples/verdicts.js: verdict changes reported, the racing guest never stuck', () => {
    const out = runExample('verdicts.js');
    const m = /verdict changes: (\{.*\})/.exec(out);
    assert.ok(m, `no verdict summary in:\n${out}`);
    const changes = JSON.parse(m[1]) as Record<string, number>;
    assert.ok(changes.progressing > 0, m[0]);
    assert.equal(changes.stuck, 0, out);
    assert.match(out, /^now: tid \d+ vcpu 0 progressing/m);
    assert.match(out, /KVM pf_taken: [1-9]\d*, dropped: 0/);
  });
});
