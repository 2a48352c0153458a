import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { AnalyzeInputError, analyzeStream } from '../lib/analyze';
import { detectTextFormat } from '../lib/import/index';
import { createTraceCmdImporter } from '../lib/import/tracecmd';
import { createBpftraceV2Importer } from '../lib/import/bpftrace-v2';
import { createPerfScriptImporter } from '../lib/import/perf';
import { createKvmStatImporter } from '../lib/import/kvmstat';
import { fuzzCheck, fuzzInput, fuzzRun, fuzzTargets } from './helpers/importfuzz';
import { importMailBpftraceLog } from '../lib/import/bpftrace-mail';
import { Kind } from '../lib/record';
import { readFileSync } from 'node:fs';
import { fixturePath, prng } from './helpers/scenarios';

/** cases per importer (bench/import-fuzz.ts runs a million and more) */
const CASES = 20000;

describe('57 import fuzz: mutated valid inputs never throw, hang or grow memory', () => {
  for (const t of fuzzTargets()) {
    it(`${t.name}: ${CASES} cases`, function () {
      this.timeout(120_000);
      const rnd = prng(0x5eed ^ t.name.length);
      const heap0 = process.memoryUsage().heapUsed;
      let slowest = 0, records = 0;
      const started = Date.now();
      for (let c = 0; c < CASES; c++) {
        const input = fuzzInput(t, rnd);
        const t0 = process.hrtime.bigint();
        let r;
        try {
          r = fuzzRun(t, input, rnd);
        } catch (e) {
          assert.fail(`case ${c} threw ${(e as Error).stack}\ninput: ${JSON.stringify(input.toString('latin1'))}`);
        }
        let ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (ms > 50) {
          // a GC pause or the other tenant of this machine, or super-linear parsing? time it again
          for (let k = 0; k < 2; k++) {
            const t1 = process.hrtime.bigint();
            fuzzRun(t, input, prng(c));
            ms = Math.min(ms, Number(process.hrtime.bigint() - t1) / 1e6);
          }
        }
        if (ms > slowest) slowest = ms;
        const bad = fuzzCheck(r);
        assert.equal(bad, null, `case ${c}: ${bad}\ninput: ${JSON.stringify(input.toString('latin1'))}`);
        records += r.records + (r.counters?.length ?? 0);
      }
      const heapMiB = (process.memoryUsage().heapUsed - heap0) / 2 ** 20;
      // inputs are at most ~20 KiB: a case taking 250 ms would be super-linear parsing
      assert.ok(slowest < 250, `slowest case ${slowest.toFixed(1)} ms`);
      assert.ok(heapMiB < 256, `heap grew ${heapMiB.toFixed(0)} MiB`);
      assert.ok(records > 0, "the cases made records (or counter verdicts)");
      assert.ok(Date.now() - started < 100_000);
    });
  }

  it('the v3 log by mail (bpftrace-mail.ts): 5000 mutated cases', function () {
    this.timeout(120_000);
    const rnd = prng(99);
    const seeds = ['stuck-seq-sign-extension.log', 'stuck-seq-sign-extension.mail.log', 'progress-hugepage-zeroing.log', 'progress-hugepage-zeroing.mail.log']
      .map((n) => readFileSync(fixturePath(n)).toString('latin1').split('\n').map((l) => Buffer.from(l, 'latin1')));
    const t = { name: 'bpftrace-v3-mail', make: () => null as never, seeds };
    for (let c = 0; c < 5000; c++) {
      const input = fuzzInput(t, rnd);
      let r;
      try {
        r = importMailBpftraceLog(input, { maxReported: 3 });
      } catch (e) {
        assert.fail(`case ${c} threw ${(e as Error).stack}\ninput: ${JSON.stringify(input.toString('latin1'))}`);
      }
      for (let i = 0; i < r.batch.length; i++) assert.ok(r.batch.repeat(i) >= 1 && r.batch.kind(i) >= Kind.FAULT && r.batch.kind(i) <= Kind.EXIT);
    }
  });

  it('pathological long lines parse in linear time (each format, 16 KiB lines)', () => {
    const bodies = ['-1 ', ' -', 'CPU-1 [', 'a=b ', '==> ', '\xa0', 'x ', '1 ', '[0] 1.0: ', '(1 hits), ', 'vcpu=1 '];
    for (const make of [createTraceCmdImporter, createPerfScriptImporter, createBpftraceV2Importer, createKvmStatImporter]) {
      for (const body of bodies) {
        const line = body.repeat(Math.floor(16000 / body.length));
        const t0 = Date.now();
        const imp = make();
        for (let i = 0; i < 20; i++) imp.push(line + '\n');
        imp.end();
        assert.ok(Date.now() - t0 < 2000, `${make.name} on ${JSON.stringify(body)}: ${Date.now() - t0} ms`);
      }
    }
  });

  it('analyze on mutated inputs: a report or AnalyzeInputError, nothing else', async function () {
    this.timeout(120_000);
    const rnd = prng(77);
    const targets = fuzzTargets();
    for (let c = 0; c < 400; c++) {
      const t = targets[c % targets.length];
      const input = fuzzInput(t, rnd);
      detectTextFormat(input);
      try {
        await analyzeStream('fuzz', Readable.from([input]));
      } catch (e) {
        if (!(e instanceof AnalyzeInputError)) assert.fail(`case ${c} threw ${(e as Error).stack}\ninput: ${JSON.stringify(input.toString('latin1'))}`);
      }
    }
  });
});
