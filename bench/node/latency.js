// job-latency: time from Queue.add (called here) to `completed` seen by
// QueueEvents (here too, so one clock), at a steady add rate.
//   node bench/node/latency.js <redis-url> <queue> <jobs/s> <jobs>
// Prints {"n","p50_ms","p90_ms","p99_ms","max_ms","rate"} on stdout.
'use strict';
const path = require('path');
const { performance } = require('perf_hooks');
const { Queue, QueueEvents } = require(path.join(__dirname, '../../tests/node/node_modules/bullmq'));
const [url, name, rate, total] = process.argv.slice(2);
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };

(async () => {
  const queue = new Queue(name, { connection });
  const events = new QueueEvents(name, { connection });
  await events.waitUntilReady();
  const n = Number(total);
  const added = new Map();
  const lat = [];
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  events.on('completed', ({ jobId }) => {
    const t0 = added.get(jobId);
    if (t0 === undefined) return;
    lat.push(performance.now() - t0);
    added.delete(jobId);
    if (lat.length === n) resolveDone();
  });
  // Steady rate: every 10 ms, add what the schedule says is due.
  const start = performance.now();
  let sent = 0;
  await new Promise((resolve) => {
    const tick = setInterval(() => {
      const due = Math.min(n, Math.floor(((performance.now() - start) / 1000) * Number(rate)));
      for (; sent < due; sent++) {
        const id = `l${sent}`;
        added.set(id, performance.now());
        queue.add('latency', { i: sent }, { jobId: id }).catch((e) => { console.error(e); process.exit(1); });
      }
      if (sent >= n) { clearInterval(tick); resolve(); }
    }, 10);
  });
  const timeout = setTimeout(() => { console.error(`only ${lat.length}/${n} completed`); process.exit(1); }, 120000);
  await done;
  clearTimeout(timeout);
  lat.sort((a, b) => a - b);
  const pct = (p) => lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))];
  const secs = (performance.now() - start) / 1000;
  console.log(JSON.stringify({ n: lat.length, p50_ms: pct(50), p90_ms: pct(90), p99_ms: pct(99), max_ms: lat[lat.length - 1], rate: n / secs }));
  await events.close();
  await queue.close();
  process.exit(0);
})();
