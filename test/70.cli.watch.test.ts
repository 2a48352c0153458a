/** watch/demo output in a real terminal (tmux) and piped; trace piped into head (EPIPE). */
import assert from 'node:assert/strict';
import { bound, requireKvm, waitFor } from './helpers/host';
import { spawn, spawnSync } from 'node:child_process';
import { CLI, cliSync, runWorkloadChild, startWorkloadChild } from './70.cli.helpers';

function tmux(...args: string[]): string {
  const r = spawnSync('tmux', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`tmux is needed for the terminal test (apt-get install tmux): ${r.error.message}`);
  return r.stdout;
}

describe('70 CLI watch in a terminal and piped', function () {
  this.timeout(bound(90_000));
  before(function () { requireKvm(this); });

  it('demo in a real terminal (tmux): the table is redrawn in place, verdicts shown', async () => {
    const session = `kvmfault-test-${process.pid}`;
    tmux('new-session', '-d', '-s', session, '-x', '200', '-y', '50',
      `${process.execPath} ${CLI} demo --duration 4 --interval 1; echo EXIT=$?; sleep 30`);
    try {
      let screen = '';
      await waitFor(() => /EXIT=\d+/.test((screen = tmux('capture-pane', '-p', '-t', session))), 30_000,
        () => `demo did not end: ${screen}`, 500);
      assert.match(screen, /EXIT=0/, screen);
      // redrawn in place: after 4 redraws the screen holds one header and one table per VM
      assert.equal((screen.match(/^kvmfault watch /gm) ?? []).length, 1, screen);
      assert.equal((screen.match(/^VM [0-9a-f]{16} pid \d+ \(node\)/gm) ?? []).length, 2, screen);
      // TID, THREAD (the vCPU thread's name, '?' once it is gone), VCPU, FAULTS/S, STATE, ATTEMPTS
      assert.match(screen, /^\s+\d+\s+\S+\s+0\s+\S+\s+(progressing|retrying)\s+\d+/m);
      assert.ok(!/stuck\s+\d+/.test(screen.replace(/0 stuck/g, '')), 'nothing stuck in the demo');
      assert.ok(!/\x1b\[/.test(screen), 'no raw escape codes visible');
    } finally {
      tmux('kill-session', '-t', session);
    }
  });

  it('watch piped: plain lines, no escape codes, a final table', async () => {
    // the guest faults before watch starts and for as long as it runs (a run every 128 ms, each
    // refaulting its 256 pages), so whatever watch's 5 s cover, they cover the guest faulting
    const w = await startWorkloadChild(['--size-mib', '1', '--duration', '600', '--rate', '2000', '--invalidate', 'between']);
    try {
      const watch = spawn(process.execPath, [CLI, 'watch', '--duration', '5', '--interval', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
      const exited = new Promise((res) => watch.on('exit', res));
      let out = '', err = '';
      watch.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      watch.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      const code = await exited;
      assert.equal(code, 0, err);
      assert.ok(!/\x1b\[/.test(out), 'no escape codes when piped');
      const final = out.slice(out.indexOf('-- final'));
      assert.ok(out.includes('-- final'), out);
      assert.match(final, new RegExp(`^VM [0-9a-f]{16} pid ${w.pid} \\((node|\\?)\\)`, 'm'), out);
      assert.match(final, new RegExp(`^  ${w.tids[0]}\\s+(kf-vcpu\\d+\\.\\d+|\\?)\\s+0\\s+\\S+\\s+(progressing|retrying)`, 'm'), out);
    } finally {
      w.running.child.kill('SIGINT');
      await w.running.exited;
    }
  });

  it('watch --counters piped: the running guest from KVM\'s counters alone (no tracer), ok, JSON lines too', async () => {
    const w = await startWorkloadChild(['--size-mib', '1', '--duration', '600', '--rate', '2000', '--invalidate', 'between']);
    try {
      const run = (args: string[]) => spawnSync(process.execPath, [CLI, 'watch', '--counters', '--duration', '3', '--interval', '1', ...args], { encoding: 'utf8', timeout: bound(60_000) });
      const r = run([]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /watching KVM's counters \((bpf-iter|debugfs)/);
      assert.ok(!/\x1b\[/.test(r.stdout), 'no escape codes when piped');
      const final = r.stdout.slice(r.stdout.indexOf('-- final'));
      assert.match(final, new RegExp(`^VM [0-9a-f]{16} pid ${w.pid} \\((node|\\?)\\)  seq [0-9a-f]+`, 'm'), r.stdout);
      // VCPU, TID, PF/S > 0, FIXED/S, RETRIED/S, EXITS/S, STATE ok
      assert.match(final, new RegExp(`^  0\\s+${w.tids[0]}\\s+[1-9][0-9.k]*\\s+\\S+\\s+\\S+\\s+\\S+\\s+ok$`, 'm'), r.stdout);
      const j = run(['--json']);
      assert.equal(j.status, 0, j.stderr);
      const lines = j.stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; vms: { pid: number; suspect: boolean; vcpus: { tid: number; rates: { pf_taken: number | null } }[] }[] });
      assert.equal(lines[lines.length - 1].type, 'final');
      const vm = lines[lines.length - 1].vms.find((v) => v.pid === w.pid);
      assert.ok(vm && !vm.suspect && vm.vcpus[0].tid === w.tids[0] && (vm.vcpus[0].rates.pf_taken ?? 0) > 0, JSON.stringify(vm));
    } finally {
      w.running.child.kill('SIGINT');
      await w.running.exited;
    }
  });

  it('trace | head: exits 0 when the reader goes away, no stack trace', async () => {
    const sh = spawn('bash', ['-c', `${process.execPath} ${CLI} trace --duration 20 | head -n 3 >/dev/null; echo "rc=\${PIPESTATUS[0]}" >&2`],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    // listen for exit first: trace can end while the workload is still being awaited
    const exited = new Promise((res) => sh.on('exit', res));
    let err = '';
    sh.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    await new Promise((res) => setTimeout(res, 1500));
    await runWorkloadChild(['--size-mib', '2', '--runs', '1']);
    await exited;
    assert.match(err, /rc=0/, err);
    assert.ok(!/\n\s+at /.test(err) && !/EPIPE/.test(err), err);
    void cliSync;
  });
});
