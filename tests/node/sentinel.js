// Node's bullmq through ioredis's Sentinel support, for tests/tests/sentinel.rs.
//
//   node sentinel.js add <host:port,host:port,...> <master> <queue> <n> <per-second> <webhook-url>
//
// Adds n webhook jobs (jobId `j<i>`, data {url, payload: {i}}) at about
// <per-second>, in batches of 10, through a connection that asks the
// sentinels for the master (and asks again after a failover). Commands wait
// out a failover (maxRetriesPerRequest: null). Prints, as JSON, the ids whose
// add Redis acknowledged and how long the slowest batch took.
//
// TLS and passwords, as ioredis takes them: $REDIS_TLS_CA set: sentinels and
// master are TLS-only with that CA (sentinelTLS, tls, enableTLSForSentinelMode);
// $SENTINEL_PASSWORD: the sentinels' (sentinelPassword); $REDIS_PASSWORD: the
// master's (password).
'use strict';
const fs = require('fs');
const { Queue } = require('bullmq');

async function main() {
  const [cmd, sentinels, name, queueName, n, perSecond, url] = process.argv.slice(2);
  if (cmd !== 'add') throw new Error(`unknown command ${cmd}`);
  const connection = {
    sentinels: sentinels.split(',').map((s) => ({ host: s.split(':')[0], port: Number(s.split(':')[1]) })),
    name,
    maxRetriesPerRequest: null,
    sentinelRetryStrategy: () => 100,
    retryStrategy: () => 100,
  };
  if (process.env.REDIS_TLS_CA) {
    const tls = { ca: fs.readFileSync(process.env.REDIS_TLS_CA) };
    Object.assign(connection, { tls, sentinelTLS: tls, enableTLSForSentinelMode: true });
  }
  if (process.env.SENTINEL_PASSWORD) connection.sentinelPassword = process.env.SENTINEL_PASSWORD;
  if (process.env.REDIS_PASSWORD) connection.password = process.env.REDIS_PASSWORD;
  const queue = new Queue(queueName, { connection });
  const acked = [];
  let slowestMs = 0;
  const batch = 10;
  const start = Date.now();
  for (let i = 0; i < Number(n); i += batch) {
    const jobs = [];
    for (let j = i; j < Math.min(i + batch, Number(n)); j++) {
      jobs.push({ name: 'hook', data: { url, payload: { i: j } }, opts: { jobId: `j${j}` } });
    }
    const t = Date.now();
    const added = await queue.addBulk(jobs);
    slowestMs = Math.max(slowestMs, Date.now() - t);
    for (const job of added) acked.push(job.id);
    // Pace: batch k is due at start + k * batch / perSecond.
    const due = start + ((i + batch) * 1000) / Number(perSecond);
    if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
  }
  await queue.close();
  await new Promise((resolve) => process.stdout.write(JSON.stringify({ acked, slowestMs }) + '\n', resolve));
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
