import assert from 'node:assert/strict';
import { normalizeWorkloadOptions, runWorkload } from '../lib/workload';

// Option validation runs before anything reaches the addon: exact messages, no KVM needed.
describe('60 workload options', () => {
  it('defaults: sequential, 64 MiB, 4 KiB stride, one run, one VM with one vCPU, no invalidation', () => {
    const o = normalizeWorkloadOptions({});
    assert.deepEqual(
      { pattern: o.pattern, sizeBytes: o.sizeBytes, stride: o.stride, runs: o.runs, vcpus: o.vcpus, vms: o.vms, invalidate: o.invalidate },
      { pattern: 'sequential', sizeBytes: 64 << 20, stride: 4096, runs: 1, vcpus: 1, vms: 1, invalidate: 'none' },
    );
  });

  it('a duration without runs means runs until the duration is up (runs = 0)', () => {
    assert.equal(normalizeWorkloadOptions({ duration: 2 }).runs, 0);
    assert.equal(normalizeWorkloadOptions({ duration: 2, runs: 5 }).runs, 5);
  });

  const bad: [string, object, new (...a: any[]) => Error, string][] = [
    ['pattern', { pattern: 'zigzag' }, TypeError, `options.pattern must be one of 'sequential', 'random', 'hot' (got "zigzag")`],
    ['vcpus 0', { vcpus: 0 }, RangeError, 'options.vcpus must be an integer from 1 to 32 (got 0)'],
    ['vcpus 1.5', { vcpus: 1.5 }, RangeError, 'options.vcpus must be an integer from 1 to 32 (got 1.5)'],
    ['vms string', { vms: '2' }, TypeError, 'options.vms must be a number (got "2")'],
    ['vms 17', { vms: 17 }, RangeError, 'options.vms must be an integer from 1 to 16 (got 17)'],
    ['stride not a page multiple', { sizeMiB: 1, stride: 6000 }, RangeError, 'options.stride must be a multiple of 4096 (got 6000)'],
    ['size not a stride multiple', { sizeBytes: 3 * 4096, stride: 8192 }, RangeError, 'the region size (12288 bytes) must be a multiple of options.stride (8192)'],
    ['both sizes', { sizeMiB: 1, sizeBytes: 4096 }, TypeError, 'give options.sizeMiB or options.sizeBytes, not both'],
    ['sizeMiB 0', { sizeMiB: 0 }, RangeError, 'options.sizeMiB must be an integer from 1 to 32768 (got 0)'],
    ['runs 0 without duration', { runs: 0 }, RangeError, 'options.runs must be an integer from 1 to 4294967295 (got 0)'],
    ['negative duration', { duration: -1 }, RangeError, 'options.duration must be from 0 to 604800 (got -1)'],
    ['invalidate', { invalidate: 'always' }, TypeError, `options.invalidate must be one of 'none', 'between', 'concurrent' (got "always")`],
    ['method', { invalidateMethod: 'munmap' }, TypeError, `options.invalidateMethod must be one of 'dontneed', 'remap', 'mprotect' (got "munmap")`],
    ['host', { host: 'tdx' }, TypeError, `options.host must be one of 'auto', 'pvm', 'vmx', 'svm' (got "tdx")`],
    ['fewer slots than vCPUs', { sizeBytes: 8192, vcpus: 3 }, RangeError, 'the region has 2 touch slots (size / stride) but options.vcpus is 3: each vCPU needs at least one'],
    ['signal', { signal: {} }, TypeError, 'options.signal must be an AbortSignal'],
    ['onRun', { onRun: 1 }, TypeError, 'options.onRun must be a function'],
    ['burst with one run', { burst: 10 }, RangeError, 'options.burst comes before run 2: it needs options.runs >= 2'],
    ['burst negative', { runs: 2, burst: -1 }, RangeError, `options.burst must be an integer from 0 to ${Number.MAX_SAFE_INTEGER} (got -1)`],
    ['onBurstProgress', { runs: 2, burst: 1, onBurstProgress: 'x' }, TypeError, 'options.onBurstProgress must be a function'],
    ['heap burst with one run', { heapBurst: 10 }, RangeError, 'options.heapBurst comes before run 2: it needs options.runs >= 2'],
    ['heap burst fractional', { runs: 2, heapBurst: 1.5 }, RangeError, `options.heapBurst must be an integer from 0 to ${Number.MAX_SAFE_INTEGER} (got 1.5)`],
  ];
  for (const [what, options, type, message] of bad) {
    it(`rejects ${what} with ${type.name}: ${message}`, async () => {
      assert.throws(() => normalizeWorkloadOptions(options as any), (e: Error) => e instanceof type && e.message === message);
      // runWorkload rejects the same way, before touching /dev/kvm
      await assert.rejects(runWorkload(options as any), (e: Error) => e instanceof type && e.message === message);
    });
  }

  it('an already aborted signal rejects with AbortError before starting', async () => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(runWorkload({ signal: ac.signal }), (e: Error & { code?: string }) => e.name === 'AbortError' && e.code === 'ABORT_ERR');
  });
});
