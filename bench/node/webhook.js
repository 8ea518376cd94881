// Benchmark baseline for the webhook scenario: BullMQ's own Node worker
// doing the webhook plugin's work in-process (README "Calling other
// services"): JSON.stringify(payload), HMAC-SHA256 with node:crypto keyed
// with the secret, the global fetch POST with content-type and
// x-bullpen-signature, `{status, body: first 1024 bytes}` on 2xx; any other
// status or a network error fails the attempt (the plugins retry; the
// benchmark's jobs have one attempt, so either is a failed job).
//   node bench/node/webhook.js <redis-url> <queue> <concurrency> <secret>
'use strict';
const path = require('path');
const crypto = require('crypto');
const { Worker } = require(path.join(__dirname, '../../tests/node/node_modules/bullmq'));
const [url, queue, concurrency, secret] = process.argv.slice(2);
const u = new URL(url);
const worker = new Worker(queue, async (job) => {
  const { url, payload } = job.data;
  const body = JSON.stringify(payload);
  const signature = 'sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex');
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-bullpen-signature': signature },
    body,
  });
  const head = Buffer.from(await res.arrayBuffer()).subarray(0, 1024);
  if (res.status >= 200 && res.status <= 299) return { status: res.status, body: head.toString('utf8') };
  throw new Error(`HTTP ${res.status}`);
}, { connection: { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null }, concurrency: Number(concurrency) });
worker.waitUntilReady().then(() => process.stderr.write('worker ready\n'));
process.on('SIGTERM', async () => { await worker.close(); process.exit(0); });
