/**
 * Tracer lifetimes: 1000 open/close cycles leak no fd, no ring mapping, no memory and no BPF
 * link; a script killed by Ctrl-C (SIGINT, no handler) leaves no BPF link attached; a worker
 * that ends with its tracer still open detaches it (the addon's environment cleanup hook).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { openTracer } from '../lib/tracer';
import { kvmLinkIds } from './70.cli.helpers';
import { requireBpf } from './helpers/host';

const openFds = (): number => readdirSync('/proc/self/fd').length;
const bpfMappings = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('bpf')).length;

/** global.gc, or a clear failure: without --expose-gc the RSS check would measure garbage. */
function requireGc(): () => void {
  const gc = global.gc;
  assert.equal(typeof gc, 'function',
    'global.gc is not exposed: run mocha with --expose-gc (.mocharc.json has node-option "expose-gc"; ' +
    'a run with --no-config needs `node --expose-gc node_modules/mocha/bin/mocha.js` or `mocha --node-option expose-gc`)');
  return gc as () => void;
}

async function cycles(n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const tracer = await openTracer({ mode: 'tracepoint', ringBytes: 1 << 16 });
    tracer.close();
  }
}

describe('30 tracer lifecycle', function () {
  this.timeout(180_000);
  before(requireBpf);

  it('1000 tracer open/close cycles: fds, ring mappings, RSS and BPF links stable', async function () {
    // a hang guard, not a speed check: ~75 s here, more while QEMU shares the two cores
    this.timeout(600_000);
    const collect = requireGc(); // before any work: fails at once without --expose-gc
    const links = kvmLinkIds();
    await cycles(50); // warm-up: the addon, libbpf's caches, V8's code
    collect();
    const fds = openFds();
    const maps = bpfMappings();
    const rss = process.memoryUsage().rss;
    await cycles(1000);
    collect();
    assert.equal(openFds(), fds, 'fds leaked by open/close');
    assert.equal(bpfMappings(), maps, 'ring mappings leaked by open/close');
    const grownMiB = (process.memoryUsage().rss - rss) / (1 << 20);
    assert.ok(grownMiB < 48, `RSS grew ${grownMiB.toFixed(1)} MiB over 1000 tracers`);
    assert.deepEqual([...kvmLinkIds()].filter((id) => !links.has(id)), [], 'BPF links left attached');
  });

  it('SIGINT on a running script (no handler) leaves no BPF link behind', async () => {
    const before = kvmLinkIds();
    const lib = path.resolve(__dirname, '../lib');
    const script = `
      const { openTracer } = require(${JSON.stringify(lib)});
      (async () => {
        const tracer = await openTracer({ mode: 'tracepoint' });
        console.error('attached ' + tracer.probes.filter((p) => p.attached).length);
        for await (const batch of tracer.events()) void batch.length;
      })();`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    const until = Date.now() + 15_000;
    while (!/attached \d+/.test(err)) {
      if (child.exitCode !== null) throw new Error(`the script exited before attaching: ${err}`);
      if (Date.now() > until) throw new Error(`the script did not attach within 15 s: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const during = [...kvmLinkIds()].filter((id) => !before.has(id));
    assert.ok(during.length > 0, 'the running script holds BPF links');
    child.kill('SIGINT');
    assert.equal(await exited, 'SIGINT');
    await new Promise((r) => setTimeout(r, 200)); // link release is asynchronous in the kernel
    const left = [...kvmLinkIds()].filter((id) => during.includes(id));
    assert.deepEqual(left, [], 'BPF links still attached after SIGINT');
  });

  it('a worker ending with its tracer open: the environment cleanup hook detaches it', async () => {
    const before = kvmLinkIds();
    const lib = path.resolve(__dirname, '../lib');
    const worker = new Worker(`
      const { parentPort } = require('node:worker_threads');
      setInterval(() => {}, 1000); // an idle tracer holds no ref: keep the worker until terminate()
      require(${JSON.stringify(lib)}).openTracer({ mode: 'tracepoint' }).then(
        (t) => {
          globalThis.tracer = t; // held: an unreachable tracer is collected and closes itself
          parentPort.postMessage('attached ' + t.probes.filter((p) => p.attached).length);
        },
        (e) => parentPort.postMessage('failed ' + e.message));`, { eval: true });
    let during: number[] = [];
    try {
      const [message] = (await once(worker, 'message')) as [string];
      assert.match(message, /^attached [1-9]/);
      during = [...kvmLinkIds()].filter((id) => !before.has(id));
      assert.ok(during.length > 0, 'the worker holds BPF links');
    } finally {
      await worker.terminate(); // no close(): only the cleanup hook can detach
    }
    const left = [...kvmLinkIds()].filter((id) => during.includes(id));
    assert.deepEqual(left, [], 'BPF links still attached after the worker ended');
  });
  it('tracers opened at once from several worker threads: each gets its own libbpf log and the shared BTF facts', async () => {
    const reference = await openTracer({ mode: 'auto' });
    const want = { mode: reference.mode, notes: reference.modeNotes.join('\n') };
    await reference.close();
    const lib = path.resolve(__dirname, '../lib');
    const script = `
      const { parentPort } = require('node:worker_threads');
      const { openTracer } = require(${JSON.stringify(lib)});
      (async () => {
        const seen = [];
        for (let i = 0; i < 8; i++) {
          const t = await openTracer({ mode: 'auto' });
          seen.push({ mode: t.mode, notes: t.modeNotes.join('\\n') });
          await t.close();
        }
        parentPort.postMessage(seen);
      })().catch((e) => parentPort.postMessage('failed ' + e.message));`;
    const workers = Array.from({ length: 4 }, () => new Worker(script, { eval: true }));
    try {
      const results = await Promise.all(workers.map(async (w) => ((await once(w, 'message')) as [unknown])[0]));
      for (const r of results) {
        assert.ok(Array.isArray(r), String(r));
        // a mode's failure text comes from libbpf's log: another thread's log would change it
        for (const x of r as { mode: string; notes: string }[]) assert.deepEqual(x, want);
      }
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
  });
});
