// Live verdicts per vCPU from the stale-fault detector, through the public API.
// Run as root from the repository after `bash scripts/setup`:  node examples/verdicts.js
'use strict';
const { openTracer, StaleFaultDetector, retPfTable, hostKernel, runWorkload } = require('../dist/lib');

async function main() {
  const tracer = await openTracer({ pid: process.pid }); // the guest below runs in this process
  const changes = { progressing: 0, retrying: 0, stuck: 0 };
  const kernel = hostKernel();                 // is this kernel affected by the sign-extension bug?
  const detector = new StaleFaultDetector({
    retPf: retPfTable(tracer.retPf, kernel),   // this kernel's RET_PF_* values (they differ between kernels)
    kernel,
    onVerdict: (v) => { // every change of a vCPU's state; a race flips it on every page
      changes[v.state]++;
      if (v.state !== 'progressing' && changes[v.state] <= 3) console.log(`${v.state}: tid ${v.tid} ${v.explanation}`);
    },
  });

  // a built-in guest whose memory the host releases while it runs: faults race invalidations
  const guest = runWorkload({ sizeMiB: 8, runs: 3, invalidate: 'concurrent', invalidateIntervalUs: 20 });
  guest.then(() => setTimeout(() => tracer.close(), 100), () => tracer.close()); // let the tail arrive
  for await (const batch of tracer.events()) detector.push(batch);

  const result = await guest;
  for (const v of detector.snapshot().filter((s) => result.tids.includes(s.tid))) {
    console.log(`now: tid ${v.tid} vcpu ${v.vcpu} ${v.state}, ${v.mapped} faults mapped, last gpa ${v.gpa}`);
  }
  console.log(`verdict changes: ${JSON.stringify(changes)}`);
  console.log(`KVM pf_taken: ${result.total.faults}, dropped: ${tracer.stats().dropped}`);
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exitCode = 2; });
