// Live KVM page-fault records from a real guest, through the public API.
// Run as root from the repository after `bash scripts/setup`:  node examples/live-faults.js
'use strict';
const { openTracer, runWorkload, TextFormatter, Kind } = require('../dist/lib');

async function main() {
  const tracer = await openTracer({ pid: process.pid }); // the guest below runs in this process
  console.log(`mode: ${tracer.mode}`);
  for (const note of tracer.modeNotes) console.log(`  ${note}`);

  // a tiny built-in guest: writes one byte to each of 1024 pages, twice, with the host
  // releasing its memory between the runs (every page faults again)
  const guest = runWorkload({ sizeMiB: 4, runs: 2, invalidate: 'between' });

  const text = new TextFormatter();
  let maps = 0;
  let shown = 0;
  const done = guest.then(() => setTimeout(() => tracer.close(), 50)); // let the tail arrive
  for await (const batch of tracer.events()) { // batches are views: valid until the next pull
    for (let i = 0; i < batch.length; i++) {
      if (batch.kind(i) === Kind.MAP) maps++;
      if (shown < 10) { console.log(text.line(batch, i)); shown++; }
    }
  }
  const result = await guest;
  await done;
  const stats = tracer.stats();
  console.log(`map records: ${maps}, KVM pf_taken: ${result.total.faults}, ` +
              `records: ${stats.submitted}, dropped: ${stats.dropped}`);
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exitCode = 2; });
