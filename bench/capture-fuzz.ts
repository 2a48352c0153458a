/**
 * Capture damage fuzzing at scale (not run in CI; test 50 runs a bounded 2000 cases of the same).
 * One valid capture of a near-stuck but progressing scenario (test/helpers/capture-fuzz.ts), then
 * N cases of random flips, inserted and deleted bytes and truncations, each read in memory the
 * way `kvmfault analyze` reads a file. Prints cases/s, failures (exceptions other than
 * CaptureError, damage handed out as records, intact chunks not read), false stuck verdicts and
 * how many files were refused at open (their header's table blocks were hit).
 *
 * Run: node dist/bench/capture-fuzz.js [--cases N (default 1000000)] [--seed S] [--runs R (default 4)]
 *      [--chunk C records per chunk (default 32)]
 * Exit 1 when any case failed.
 */
import { BenchError, runMain } from './common';
import { fuzz, makeFuzzCapture, nearStuckScenario } from '../test/helpers/capture-fuzz';

function parse(argv: string[]): { cases: number; seed: number; runs: number; chunk: number } {
  const o = { cases: 1_000_000, seed: 2026, runs: 4, chunk: 32 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, '');
    if (!(k in o)) throw new BenchError(`unknown option ${argv[i]} (use --cases N, --seed S, --runs R, --chunk C)`);
    const n = Number(argv[++i]);
    if (!Number.isInteger(n) || n < 1) throw new BenchError(`--${k} needs a positive integer, got ${argv[i]}`);
    o[k as keyof typeof o] = n;
  }
  return o;
}

runMain(async () => {
  const o = parse(process.argv.slice(2));
  const cap = makeFuzzCapture(nearStuckScenario(3, o.runs, 30), o.chunk);
  console.log(`capture: ${cap.bytes.byteLength} bytes, ${cap.records} records in ${cap.chunks.length} chunks (header ${cap.headerBytes} bytes); ${o.cases} cases from seed ${o.seed}`);
  const step = 20_000;
  const total = { cases: 0, refused: 0, failed: 0, falseStuck: 0, recordsRead: 0, seconds: 0 };
  const shown: string[] = [];
  for (let done = 0, part = 0; done < o.cases; done += step, part++) {
    const n = Math.min(step, o.cases - done);
    const s = await fuzz(cap, n, o.seed * 1000 + part, 5);
    total.cases += s.cases;
    total.refused += s.refused;
    total.failed += s.failed;
    total.falseStuck += s.falseStuck;
    total.recordsRead += s.recordsRead;
    total.seconds += s.seconds;
    for (const f of s.failures) if (shown.length < 10) shown.push(`seed ${f.seed} case ${f.caseNo}: ${f.outcome}`);
    console.log(`${total.cases} cases, ${(total.cases / total.seconds).toFixed(0)} cases/s, ${total.failed} failed, ${total.falseStuck} false stuck, ${total.refused} refused at open`);
  }
  console.log(JSON.stringify({ ...total, casesPerSec: Math.round(total.cases / total.seconds), recordsPerCase: +(total.recordsRead / total.cases).toFixed(1) }));
  for (const f of shown) console.log(`FAILED ${f}`);
  if (total.failed > 0) process.exitCode = 1;
});
