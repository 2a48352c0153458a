import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cliSpawn, cliSync, waitForStderr } from './70.cli.helpers';

const COMMANDS = ['doctor', 'trace', 'watch', 'record', 'metrics', 'demo', 'prove'];

describe('70 CLI usage: help and bad arguments', function () {
  this.timeout(60_000);

  for (const cmd of COMMANDS) {
    it(`${cmd} --help: exit 0 with examples`, () => {
      const r = cliSync([cmd, '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`Usage: kvmfault ${cmd}`));
      assert.match(r.stdout, /Examples:\n\s+(sudo )?kvmfault /);
    });
  }

  it('kvmfault --help lists every command and the default job', () => {
    const r = cliSync(['--help']);
    assert.equal(r.status, 0);
    for (const cmd of COMMANDS) assert.match(r.stdout, new RegExp(`\\n\\s+${cmd}\\b`));
    assert.match(r.stdout, /With no command, kvmfault watches the VMs running on this host, or runs the demo/);
  });

  const bad: [string[], RegExp][] = [
    [['trace', '--kind', 'bogus'], /^kvmfault: --kind: unknown record kind "bogus" \(choose from fault, /],
    [['trace', '--kind', ','], /^kvmfault: --kind needs at least one record kind \(got ","; choose from fault, faultin, faultin_ret, map, fault_ret, invalidate, exit; comma-separated\)\n$/],
    [['trace', '--kind', ''], /^kvmfault: --kind needs at least one record kind \(got ""; choose from fault, /],
    [['trace', '--kind', ' , ,'], /^kvmfault: --kind needs at least one record kind/],
    [['trace', '--kind', 'map,,bogus'], /^kvmfault: --kind: unknown record kind "bogus"/],
    [['trace', '--gpa', 'zz'], /^kvmfault: --gpa must be a guest physical address in hex/],
    [['trace', '-n', '0'], /^kvmfault: --count must be a whole number from 1/],
    [['trace', '--mode', 'magic'], /^kvmfault: --mode must be one of auto, tracepoint, kprobe, fentry \(got "magic"\)/],
    [['watch', '--duration', '-1'], /^kvmfault: --duration must be a positive number of seconds \(got "-1"\)/],
    [['watch', '--pid', 'abc'], /^kvmfault: --pid must be a whole number/],
    [['record'], /^kvmfault: required option '-o, --output <file>' not specified/],
    [['record', '-o', '/tmp/x.kvmf', '--max-bytes', '12Q'], /^kvmfault: --max-bytes must be a size like/],
    [['metrics', '--listen', 'nope'], /^kvmfault: --listen must be host:port/],
    [['demo', '--duration', 'x'], /^kvmfault: --duration must be a positive number of seconds \(got "x"\)/],
    [['prove', '--knob-start', '0x1ffffffff'], /^kvmfault: --knob-start must be a sequence value from 0 to 0xffffffff/],
    [['prove', '--max-invalidations', 'lots'], /^kvmfault: --max-invalidations must be a whole number, e.g. 1000000 or 2G \(got "lots"\)/],
    [['prove', '--give-up', '0'], /^kvmfault: --give-up must be a positive number of seconds \(got "0"\)/],
    [['doctor', '--bogus'], /^kvmfault: unknown option '--bogus'/],
    [['bogus'], /^kvmfault: unknown command "bogus"/],
  ];
  for (const [args, message] of bad) {
    it(`${args.join(' ')}: exit 2 and a one-line message`, () => {
      const r = cliSync(args);
      assert.equal(r.status, 2, `exit ${r.status}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace: ${r.stderr}`);
      assert.equal(r.stdout, '');
    });
  }

  it('analyze and errors show input text with control characters escaped, never raw', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvmfault-70-'));
    try {
      const log = fs.readFileSync(path.join(__dirname, '../../test/fixtures/stuck-seq-sign-extension.log'), 'utf8');
      const file = path.join(dir, 'evil.log');
      fs.writeFileSync(file, log + '\x1b]0;pwned\x07\x1b[2J\0\u009b31m\n');
      const r = cliSync(['analyze', file]);
      assert.equal(r.status, 1, r.stderr);
      assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(r.stdout), JSON.stringify(r.stdout));
      assert.match(r.stdout, /: \\x1b\]0;pwned\\x07\\x1b\[2J\\x00\\x9b31m$/m);
      const j = cliSync(['analyze', '--json', file]);
      assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(j.stdout));
      assert.equal(JSON.parse(j.stdout).importer.skippedLines[0].text, '\x1b]0;pwned\x07\x1b[2J\0\u009b31m', 'JSON keeps the text');
      // a missing file whose name holds ESC and BEL; an unknown option with ESC and a newline
      for (const args of [['analyze', path.join(dir, 'no\x1b[31mpe\x07')], ['analyze', '--k\x1b[2Jx\ny', file]]) {
        const e = cliSync(args);
        assert.equal(e.status, 2, e.stderr);
        assert.ok(!/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(e.stderr), JSON.stringify(e.stderr));
        assert.equal(e.stderr.split('\n').length, 2, 'one line');
        assert.match(e.stderr, /\\x1b\[/);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('record into an unwritable path: exit 2 naming the path', function () {
    if (process.geteuid && process.geteuid() !== 0) throw new Error('needs root to open the tracer first: run the suite as root');
    const r = cliSync(['record', '-o', '/nonexistent-dir/x.kvmf', '--duration', '1']);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /kvmfault: cannot create \/nonexistent-dir\/x.kvmf: ENOENT \(pick a writable path\)/);
  });

  it(`the main job (no command) on this host: ${fs.existsSync('/dev/kvm') ? '/dev/kvm present' : 'no /dev/kvm'}`, async function () {
    this.timeout(150_000); // the demo runs 20 s
    if (process.geteuid && process.geteuid() !== 0) throw new Error('the main job traces: run the suite as root');
    const r = cliSpawn([]);
    const until = Date.now() + 120_000;
    // it says which case it is in within its first lines: VMs found (then it watches them until
    // Ctrl-C, as an operator's host would have it), the demo, or the replay
    while (!/VMM process\(es\) running|running the built-in demo instead|replaying the incident's recorded trace/.test(r.stderr())) {
      if (r.child.exitCode !== null || Date.now() > until) break;
      await new Promise((res) => setTimeout(res, 50));
    }
    if (/VMM process\(es\) running/.test(r.stderr())) {
      await waitForStderr(r, /watching in \w+ mode/, 60_000);
      r.child.kill('SIGINT');
      const x = await r.exited;
      assert.equal(x.code, 130, `exit ${JSON.stringify(x)} after Ctrl-C: ${r.stderr()}`);
      this.test!.title += ': VMs run here, so it watched them (Ctrl-C: exit 130)';
      return;
    }
    const timer = setTimeout(() => r.child.kill('SIGKILL'), Math.max(0, until - Date.now()));
    const x = await r.exited;
    clearTimeout(timer);
    assert.equal(x.code, 0, `exit ${JSON.stringify(x)}: ${r.stderr()}`);
    if (!fs.existsSync('/dev/kvm')) {
      // no KVM: the incident's recorded trace, with what to do on a KVM host
      assert.match(r.stderr(), /no \/dev\/kvm to run the built-in guest .*replaying the incident's recorded trace/);
      assert.match(r.stdout(), /vCPUs: 2 stuck/);
      assert.match(r.stdout(), /cause seq-sign-extension \(high confidence, decided by behaviour\)/);
      this.test!.title += ': replayed the incident trace (2 stuck, seq-sign-extension)';
    } else {
      assert.match(r.stderr(), /running the built-in demo instead/);
      assert.match(r.stdout(), /^demo: two built-in KVM guests/m);
      this.test!.title += ': ran the built-in demo';
    }
  });
});
