import assert from 'node:assert/strict';
import { threadName, vmName, vmNameFromArgv } from '../lib/procinfo';

describe('46 VM and vCPU thread names from /proc', () => {
  it("QEMU's -name forms: bare, guest=, with options, escaped commas; none", () => {
    const q = (...a: string[]) => vmNameFromArgv(['qemu-system-x86_64', '-enable-kvm', ...a, '-m', '512']);
    assert.equal(q('-name', 'web1'), 'web1');
    assert.equal(q('-name', 'guest=db-2,debug-threads=on'), 'db-2');
    assert.equal(q('-name', 'process=x,guest=a,,b'), 'a,b');
    assert.equal(q('-name', 'web1,debug-threads=on'), 'web1');
    assert.equal(q('-name', 'debug-threads=on'), null);
    assert.equal(q(), null);
    assert.equal(vmNameFromArgv(['qemu', '-name']), null);
    // another process's text on our terminal: control characters escaped
    assert.doesNotMatch(q('-name', 'evil\x1b[2J\x07')!, /[\x00-\x1f]/);
  });

  it('this process: no -name; its main thread has a name; a pid that does not exist gives null', () => {
    assert.equal(vmName(process.pid), null);
    assert.equal(typeof threadName(process.pid, process.pid), 'string');
    assert.equal(threadName(2 ** 22 + 7, 2 ** 22 + 7), null);
  });
});
