/**
 * Privileges as the kernel sees them: capabilities, not uid 0. Each case runs a child under
 * util-linux `setpriv` (root drops capabilities from its bounding set; uid 65534 "nobody" gets
 * CAP_BPF + CAP_PERFMON as ambient capabilities) and checks that the tracer and doctor agree
 * with what the kernel allows: the tracer opens with CAP_BPF + CAP_PERFMON and no root; root
 * with them dropped is told that, not "run as root"; a user who cannot read other processes'
 * fds is told so rather than "no VMs run".
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { requireBpf } from './helpers/host';

const DIST = path.resolve(__dirname, '..');
const CLI = path.join(DIST, 'lib/cli/main.js');
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const BPF_CAPS = ['--inh-caps=+bpf,+perfmon', '--ambient-caps=+bpf,+perfmon'];
const DROP_BPF_CAPS = ['--bounding-set=-bpf,-perfmon,-sys_admin'];

/** Opens the tracer in a child under `setpriv args`; returns "OPEN <probes>" or "ERR <code> <message>". */
function openTracerAs(setprivArgs: string[]): string {
  const script = `require(${JSON.stringify(path.join(DIST, 'lib/tracer'))}).openTracer({ mode: 'auto' })` +
    `.then((t) => { console.log('OPEN ' + t.mode + ' ' + t.probes.filter((p) => p.attached).length); t.close(); },` +
    ` (e) => console.log('ERR ' + e.code + ' ' + String(e.message).split('\\n')[0]))`;
  return run(setprivArgs, ['-e', script]).trim();
}

function run(setprivArgs: string[], nodeArgs: string[]): string {
  const r = spawnSync('setpriv', [...setprivArgs, process.execPath, ...nodeArgs], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`setpriv (util-linux) could not run: ${r.error.message}`);
  if (/Cannot find module|EACCES/.test(r.stderr)) {
    throw new Error(`uid 65534 cannot read the build under ${DIST} (clone the project where "nobody" can read it, e.g. /tmp or /opt): ${r.stderr.split('\n')[0]}`);
  }
  return r.stdout;
}

interface Check { id: string; status: string; detail: string; remedy: string }
function doctorAs(setprivArgs: string[]): Map<string, Check> {
  const out = run(setprivArgs, [CLI, 'doctor', '--json']);
  return new Map((JSON.parse(out).checks as Check[]).map((c) => [c.id, c]));
}

describe('30 tracer privileges (capabilities decide, not the uid; via setpriv)', function () {
  this.timeout(120_000);
  before(requireBpf);

  it('uid 65534 with CAP_BPF + CAP_PERFMON only: gets past the capability check, doctor says pass', function () {
    const result = openTracerAs([...NOBODY, ...BPF_CAPS]);
    // The capability check is passed when the tracer opens, or fails for a reason that is not
    // privileges (a host whose attach needs tracefs, which is root-only: then it says so).
    assert.doesNotMatch(result, /^ERR EPERM .*(CAP_BPF|run as root)/, result);
    assert.match(result, /^OPEN |^ERR \S+ /, result);
    this.test!.title += ` (found: ${result.slice(0, 80)})`;
    assert.equal(doctorAs([...NOBODY, ...BPF_CAPS]).get('privileges')?.status, 'pass');
  });

  it('root with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped: refused, told the capabilities are dropped', () => {
    const result = openTracerAs(DROP_BPF_CAPS);
    assert.match(result, /^ERR EPERM .*euid 0, CapEff [0-9a-f]+\) lacks CAP_BPF and CAP_PERFMON: it runs as root with those capabilities dropped/, result);
    assert.doesNotMatch(result, /run as root/);
    const privileges = doctorAs(DROP_BPF_CAPS).get('privileges')!;
    assert.equal(privileges.status, 'fail', JSON.stringify(privileges));
    assert.match(privileges.remedy, /dropped/);
  });

  it('uid 65534 without capabilities: refused with what to grant; doctor does not claim "no VMs" for fds it cannot read', () => {
    const result = openTracerAs(NOBODY);
    assert.match(result, /^ERR EPERM .*lacks CAP_BPF and CAP_PERFMON: run as root \(e\.g\. with sudo\) or grant them/, result);
    const checks = doctorAs(NOBODY);
    assert.equal(checks.get('privileges')?.status, 'fail');
    // root's processes (init, at least) are not readable by nobody: the scan must say what it missed
    const vms = checks.get('vms')!;
    assert.match(vms.detail, /^none visible: the fds of \d+ other processes cannot be read without root/, JSON.stringify(vms));
    assert.equal(vms.status, 'warn');
  });
});
