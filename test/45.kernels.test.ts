import assert from 'node:assert/strict';
import { hostKernel, judgeKernel, KernelStatus } from '../lib/kernels';

const DEBIAN_61_PROC = 'Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-1 (2025-11-01)';
const DEBIAN_61_OLD_PROC = 'Linux version 6.1.0-9-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.27-1 (2023-05-08)';

// [release, /proc/version text or undefined, affected, status, certain, sublevel]
const TABLE: [string, string | undefined, boolean | null, KernelStatus, boolean, number | null][] = [
  ['4.19.0-27-amd64', undefined, false, 'not-affected', true, null],
  ['4.19.325', undefined, false, 'not-affected', true, 325],
  ['5.10.0-32-amd64', undefined, false, 'not-affected', true, null],
  ['5.15.0', undefined, false, 'not-affected', true, 0],
  ['5.15.0-91-generic', undefined, null, 'unknown', false, null],
  ['5.15.0-91-generic', 'Ubuntu 5.15.0-91.101-generic 5.15.131', null, 'unknown', false, 131],
  ['5.15.120', undefined, null, 'unknown', false, 120],
  ['5.16.0', undefined, true, 'affected', true, 0],
  ['5.19.0-46-generic', undefined, true, 'affected', false, null],
  ['6.0.19', undefined, true, 'affected', true, 19],
  ['6.1.0', undefined, true, 'affected', true, 0],
  ['6.1.30', undefined, true, 'affected', true, 30],
  ['6.1.49', undefined, true, 'affected', true, 49],
  ['6.1.50', undefined, false, 'fixed', true, 50],
  ['6.1.0-56-amd64', undefined, null, 'unknown', false, null],
  ['6.1.0-56-amd64', DEBIAN_61_PROC, false, 'fixed', true, 192],
  ['6.1.0-9-amd64', DEBIAN_61_OLD_PROC, true, 'affected', true, 27],
  ['6.2.16', undefined, true, 'affected', true, 16],
  ['6.3.0', undefined, false, 'fixed', true, 0],
  ['6.6.58-cloud', undefined, false, 'fixed', true, 58],
  ['6.12.117+deb12-amd64', undefined, false, 'fixed', true, 117],
  ['6.18.44-fc-v657', undefined, false, 'fixed', true, 44],
  ['6.8.0-45-generic', undefined, false, 'fixed', true, null],
];

describe('45 kernels: is_page_fault_stale sign-extension bug by release', () => {
  for (const [release, proc, affected, status, certain, sublevel] of TABLE) {
    it(`${release}${proc ? ' + /proc/version' : ''} -> ${status}`, () => {
      const k = judgeKernel(release, proc);
      assert.equal(k.release, release);
      assert.equal(k.affected, affected, k.reason);
      assert.equal(k.status, status, k.reason);
      assert.equal(k.certain, certain, k.reason);
      assert.equal(k.version?.sublevel ?? null, sublevel);
      assert.ok(k.reason.length > 10);
    });
  }

  it('the Debian ABI name says where the real version is', () => {
    assert.match(judgeKernel('6.1.0-56-amd64').reason, /\/proc\/version/);
    assert.equal(judgeKernel('6.1.0-56-amd64', DEBIAN_61_PROC).versionSource, 'proc-version');
  });

  it('a /proc/version of another line does not override the release', () => {
    const k = judgeKernel('6.1.30', 'Linux version 6.12.117 ... Debian 6.12.117-1');
    assert.equal(k.version?.sublevel, 30);
    assert.equal(k.affected, true);
  });

  it('garbage releases are unknown with a reason, never a throw', () => {
    for (const r of ['', 'linux', 'v6', '-1.2', '6']) {
      const k = judgeKernel(r);
      assert.equal(k.affected, null);
      assert.equal(k.status, 'unknown');
      assert.match(k.reason, /cannot read a version/);
    }
  });

  it('the running kernel is judged (this machine: 6.18, not affected)', () => {
    const k = hostKernel();
    assert.ok(k.version, `uname -r of this machine did not parse: ${k.release}`);
    if (k.version!.major > 6 || (k.version!.major === 6 && k.version!.minor >= 3)) assert.equal(k.affected, false);
  });
});
