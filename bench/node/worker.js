// Benchmark baseline: BullMQ's own Node worker doing echo's work
// (one log line, progress 100, return the data).
//   node bench/node/worker.js <redis-url> <queue> <concurrency>
'use strict';
const path = require('path');
const { Worker } = require(path.join(__dirname, '../../tests/node/node_modules/bullmq'));
const [url, queue, concurrency] = process.argv.slice(2);
const u = new URL(url);
const worker = new Worker(queue, async (job) => {
  await job.log(`echo: job ${job.id} (${job.name})`);
  await job.updateProgress(100);
  return job.data;
}, { connection: { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null }, concurrency: Number(concurrency) });
worker.waitUntilReady().then(() => process.stderr.write('worker ready\n'));
process.on('SIGTERM', async () => { await worker.close(); process.exit(0); });
