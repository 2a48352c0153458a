/**
 * Import fuzzing at scale and import speed (not run in CI):
 *
 *   node dist/bench/import-fuzz.js [--cases 1000000] [--seed 1] [--mb 8]
 *
 * 1. `--cases` mutated excerpts of the fixtures (test/helpers/importfuzz.ts), spread over the
 *    importers (trace-cmd, perf script, bpftrace v2 / uniq -c, KVM counters): counts exceptions
 *    (there must be none), malformed results, the slowest case (timed again to rule out a GC
 *    pause) and the heap's peak.
 * 2. Speed: each fixture, clean and mail-damaged, repeated to about `--mb` MiB and analysed
 *    (import + detector, streamed as analyze does): ms per MiB and the verdicts.
 */
import { Readable } from 'node:stream';
import { readFileSync } from 'node:fs';
import { analyzeStream } from '../lib/analyze';
import { fuzzCheck, fuzzInput, fuzzRun, fuzzTargets } from '../test/helpers/importfuzz';
import { fixturePath, prng } from '../test/helpers/scenarios';
import { perfScriptText, traceCmdText } from '../test/helpers/textformats';
import { Kind, RecordWriter } from '../lib/record';

/** one vCPU re-faulting on one gpa for `seconds` (n faults), one progressing: records */
function stuckTrace(n: number, seconds: number) {
  const w = new RecordWriter(3 * n);
  for (let k = 0; k < n; k++) {
    const ts = 1000e9 + Math.round((k * seconds * 1e6) / n) * 1000;
    for (const [kind, tid, gpa] of [[Kind.EXIT, 4242, -1], [Kind.FAULT, 4242, 0x1343fa0b0], [Kind.FAULT, 4241, 0x2000000 + k * 4096], [Kind.MAP, 4241, 0x2000000 + k * 4096]]) {
      if (tid === 4241 && k % 4 !== 0) continue;
      const r = w.begin(kind);
      w.setU64(r, 'ts_ns', ts);
      w.setU32(r, 'pid', 4200);
      w.setU32(r, 'tid', tid);
      w.setU32(r, 'vcpu_id', tid - 4241);
      w.setU64(r, 'rip', 0xffffffff81234567n);
      if (gpa >= 0) w.setU64(r, 'gpa', gpa);
      if (kind === Kind.FAULT) w.setU64(r, 'error_code', 0x683);
    }
  }
  return w.batch();
}

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

async function main(): Promise<void> {
  const cases = arg('--cases', 1_000_000);
  const seed = arg('--seed', 1);
  const mb = arg('--mb', 8);
  const targets = fuzzTargets();
  const rnd = prng(seed);
  const stats = targets.map((t) => ({ name: t.name, cases: 0, throws: 0, bad: 0, slowestMs: 0, slowestLen: 0, bytes: 0, ms: 0, first: '' }));
  let heapPeak = 0;
  const t0 = Date.now();
  for (let c = 0; c < cases; c++) {
    const k = c % targets.length;
    const t = targets[k], s = stats[k];
    const input = fuzzInput(t, rnd);
    s.cases++;
    s.bytes += input.length;
    const a = process.hrtime.bigint();
    try {
      const r = fuzzRun(t, input, rnd);
      const bad = fuzzCheck(r);
      if (bad) {
        s.bad++;
        if (!s.first) s.first = `${bad}: ${JSON.stringify(input.toString('latin1').slice(0, 300))}`;
      }
    } catch (e) {
      s.throws++;
      if (!s.first) s.first = `${(e as Error).stack}: ${JSON.stringify(input.toString('latin1').slice(0, 300))}`;
    }
    let ms = Number(process.hrtime.bigint() - a) / 1e6;
    s.ms += ms;
    if (ms > 20) {
      for (let j = 0; j < 2; j++) {
        const b = process.hrtime.bigint();
        try { fuzzRun(t, input, prng(c)); } catch { /* counted above */ }
        ms = Math.min(ms, Number(process.hrtime.bigint() - b) / 1e6);
      }
    }
    if (ms > s.slowestMs) {
      s.slowestMs = ms;
      s.slowestLen = input.length;
    }
    if ((c & 4095) === 0) heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    if ((c + 1) % 100000 === 0) process.stderr.write(`${c + 1} cases, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
  }
  console.log(`## import fuzz: ${cases} cases, seed ${seed}, ${((Date.now() - t0) / 1000).toFixed(1)} s, heap peak ${(heapPeak / 2 ** 20).toFixed(0)} MiB\n`);
  console.log('| importer | cases | exceptions | malformed | slowest case (ms, its bytes) | mean µs/case |');
  console.log('|---|---|---|---|---|---|');
  for (const s of stats) {
    console.log(`| ${s.name} | ${s.cases} | ${s.throws} | ${s.bad} | ${s.slowestMs.toFixed(2)} (${s.slowestLen}) | ${((s.ms * 1000) / Math.max(1, s.cases)).toFixed(1)} |`);
  }
  for (const s of stats) if (s.first) console.log(`\n${s.name}: first problem: ${s.first}`);

  console.log(`\n## import speed: fixtures repeated to ~${mb} MiB, analysed as \`kvmfault analyze\` does (import + detector)\n`);
  console.log('| input | format | MiB | ms/MiB | verdicts |');
  console.log('|---|---|---|---|---|');
  const files = ['stuck-seq-sign-extension.log', 'stuck-seq-sign-extension.mail.log', 'bpftrace-v2-stuck.log', 'bpftrace-v2-stuck.mail.log', 'bpftrace-uniq-c.txt', 'bpftrace-uniq-c.mail.txt',
    'tracecmd-stuck-excerpt.txt', 'tracecmd-stuck-excerpt.mail.txt', 'perf-stuck-excerpt.txt', 'perf-stuck-excerpt.mail.txt', 'kvm-counters.txt', 'kvm-counters.mail.txt'];
  const generated = stuckTrace(Math.round(mb * 12000), 10);
  const inputs: [string, Buffer][] = files.map((f) => [f, readFileSync(fixturePath(f))]);
  inputs.push(['generated trace-cmd (1 vCPU stuck 10 s, 1 progressing)', Buffer.from(traceCmdText(generated))]);
  inputs.push(['generated perf script (same)', Buffer.from(perfScriptText(generated))]);
  for (const [f, one] of inputs) {
    const times = Math.max(1, Math.round((mb * 2 ** 20) / one.length));
    const chunks: Buffer[] = [];
    const big = Buffer.concat(Array.from({ length: Math.min(times, 4096) }, () => one));
    for (let left = times; left > 0; left -= 4096) chunks.push(left >= 4096 ? big : big.subarray(0, left * one.length));
    const bytes = chunks.reduce((n, c) => n + c.length, 0);
    let best = Infinity, rep;
    for (let k = 0; k < 3; k++) {
      const a = process.hrtime.bigint();
      rep = await analyzeStream(f, Readable.from(chunks.map((c) => c.subarray(0)), { objectMode: true }));
      best = Math.min(best, Number(process.hrtime.bigint() - a) / 1e6);
    }
    const r = rep!;
    const verdict = r.counterVms.length > 0
      ? r.counterVms.map((v) => `${v.name} ${v.state}`).join(', ')
      : `${r.stuck} stuck (${[...new Set(r.vcpus.filter((v) => v.state === 'stuck').map((v) => v.cause))].join(', ') || '-'}), ${r.retrying} retrying, ${r.progressing} progressing`;
    console.log(`| ${f} | ${r.format} | ${(bytes / 2 ** 20).toFixed(1)} | ${(best / (bytes / 2 ** 20)).toFixed(0)} | ${verdict} |`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
