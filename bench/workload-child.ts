/**
 * The built-in workload as a process of its own for the benchmarks (bench/kvm.ts
 * spawnWorkload): `node workload-child.js '<WorkloadOptions JSON>'` waits for a line on stdin
 * (the parent opens its tracer on our pid first), runs the workload and prints the result as
 * JSON. Errors: one line on stderr, exit 1.
 */
import { runWorkload, WorkloadOptions } from '../lib/workload';

async function main(): Promise<void> {
  const options = JSON.parse(process.argv[2] ?? '{}') as WorkloadOptions;
  await new Promise<void>((resolve) => {
    process.stdin.once('data', () => resolve());
    process.stdin.once('end', () => resolve());
  });
  process.stdin.pause();
  const result = await runWorkload(options);
  process.stdout.write(JSON.stringify(result));
}

main().catch((e: Error & { code?: string }) => {
  process.stderr.write(`workload: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  process.exitCode = 1;
});
