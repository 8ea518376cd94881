// The Node side of bullpen's interop tests and demo: the real `bullmq`
// package as producer and observer. One command per call; output is JSON on
// stdout so the Rust tests can read it.
//
//   node driver.js add     <redis-url> <queue> '[{"name":..,"data":..,"opts":..}]'
//   node driver.js inspect <redis-url> <queue> '["id1","id2"]'
//   node driver.js events  <redis-url> <queue> <finished-count> <timeout-ms>
//   node driver.js counts  <redis-url> <queue>
//   node driver.js flow    <redis-url> - '<FlowProducer.add tree>'   -> {id, queue, children: [...]}
//   node driver.js retry   <redis-url> <queue> <id>   (Node's Job.retry('failed'))
//   node driver.js bulk    <redis-url> <queue> <n> [first-i]  (addBulk {i} jobs)  -> ids
//   node driver.js report  <redis-url> <queue>  -> {counts, jobs: [every job, with logs and processedBy]}
//   node driver.js ratelimit-ttl <redis-url> <queue> [maxJobs]  -> {ttl} (Queue.getRateLimitTtl)
//   node driver.js global-rate-limit <redis-url> <queue> <max> <duration-ms>  (Queue.setGlobalRateLimit)
//   node driver.js scheduler <redis-url> <queue> <scheduler-id> <every-ms> '{"name":..,"data":..}'  (upsertJobScheduler)
//   node driver.js worker  <redis-url> <queue> <run-ms> '<WorkerOptions JSON>'  (a Node worker named "node"
//                           returning {"node": true} for run-ms; prints how many jobs it completed)
//   node driver.js cancel-request <redis-url> <queue> <id> <reason>  (README's "Cancelling a job
//                           from Node" recipe, verbatim: asks the bullpen worker running job <id> to stop it)
// Several comma-separated URLs (<url>,<url>,...) are Redis Cluster seed nodes
// (an ioredis Cluster connection; set BULLMQ_PREFIX to a hash tag such as '{bull}').
// A rediss:// URL connects over TLS, trusting the CA in $REDIS_TLS_CA (with a
// client certificate from $REDIS_TLS_CERT/$REDIS_TLS_KEY when set); a URL's
// user and password are used.
'use strict';
const { Queue, QueueEvents, Job, FlowProducer, Worker } = require('bullmq');
const { Cluster } = require('ioredis');

// process.exit() would cut a large pipe write short: wait for the flush.
function out(value) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(value) + '\n', resolve));
}

function tls() {
  const read = (v) => (process.env[v] ? require('fs').readFileSync(process.env[v]) : undefined);
  return { ca: read('REDIS_TLS_CA'), cert: read('REDIS_TLS_CERT'), key: read('REDIS_TLS_KEY') };
}

function connection(url) {
  const urls = url.split(',').map((x) => new URL(x));
  const auth = { username: decodeURIComponent(urls[0].username) || undefined, password: decodeURIComponent(urls[0].password) || undefined };
  const extra = { ...auth, ...(urls[0].protocol === 'rediss:' ? { tls: tls() } : {}) };
  const nodes = urls.map((u) => ({ host: u.hostname, port: Number(u.port || 6379) }));
  if (nodes.length > 1) return new Cluster(nodes, { redisOptions: { maxRetriesPerRequest: null, ...extra } });
  return { ...nodes[0], maxRetriesPerRequest: null, ...extra };
}

async function main() {
  const [cmd, url, queueName, ...rest] = process.argv.slice(2);
  // A JSON argument of '-' is read from stdin (large payloads exceed argv limits).
  for (let i = 0; i < rest.length; i++) if (rest[i] === '-') rest[i] = require('fs').readFileSync(0, 'utf8');
  const conn = connection(url);
  const prefix = process.env.BULLMQ_PREFIX || 'bull';
  if (cmd === 'add') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const ids = [];
    for (const j of JSON.parse(rest[0])) {
      const job = await queue.add(j.name, j.data, j.opts || {});
      ids.push(job.id);
    }
    await queue.close();
    await out(ids);
  } else if (cmd === 'inspect') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const jobs = [];
    for (const id of JSON.parse(rest[0])) {
      // State first: finishing is one script, so a hash read after a
      // `completed`/`failed` state is final (read the other way round, a
      // job finishing in between showed `completed` with attemptsMade 0).
      const state = await queue.getJobState(id);
      const job = await Job.fromId(queue, id);
      if (!job) { jobs.push({ id, missing: true }); continue; }
      const { logs } = await queue.getJobLogs(id);
      jobs.push({
        id: job.id, name: job.name, data: job.data, opts: job.opts, state,
        returnvalue: job.returnvalue, progress: job.progress, attemptsMade: job.attemptsMade,
        attemptsStarted: job.attemptsStarted, failedReason: job.failedReason || null,
        finishedOn: job.finishedOn || null, processedOn: job.processedOn || null, logs,
        stacktrace: job.stacktrace,
      });
    }
    const counts = await queue.getJobCounts();
    await queue.close();
    await out({ jobs, counts });
  } else if (cmd === 'flow') {
    const fp = new FlowProducer({ connection: conn, prefix });
    const tree = await fp.add(JSON.parse(rest[0]));
    const ids = (node) => ({ id: node.job.id, queue: node.job.queueName, children: (node.children || []).map(ids) });
    await fp.close();
    await out(ids(tree));
  } else if (cmd === 'bulk') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const [n, first] = [Number(rest[0]), Number(rest[1] || 0)];
    const ids = [];
    for (let i = first; i < first + n; i += 1000) {
      const batch = [];
      for (let j = i; j < Math.min(first + n, i + 1000); j++) batch.push({ name: 'job', data: { i: j } });
      for (const job of await queue.addBulk(batch)) ids.push(job.id);
    }
    await queue.close();
    await out(ids);
  } else if (cmd === 'report') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const all = await queue.getJobs(['completed', 'failed', 'active', 'wait', 'delayed', 'prioritized', 'waiting-children'], 0, -1);
    const jobs = [];
    for (let i = 0; i < all.length; i += 500) {
      const chunk = all.slice(i, i + 500);
      const logs = await Promise.all(chunk.map((j) => queue.getJobLogs(j.id)));
      const states = await Promise.all(chunk.map((j) => j.getState()));
      chunk.forEach((job, k) => jobs.push({
        id: job.id, data: job.data, state: states[k], returnvalue: job.returnvalue,
        attemptsMade: job.attemptsMade, attemptsStarted: job.attemptsStarted, processedBy: job.processedBy || null,
        processedOn: job.processedOn || null, finishedOn: job.finishedOn || null, logs: logs[k].logs,
      }));
    }
    const counts = await queue.getJobCounts();
    await queue.close();
    await out({ counts, jobs });
  } else if (cmd === 'scheduler') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const [id, every, template] = [rest[0], Number(rest[1]), JSON.parse(rest[2])];
    const job = await queue.upsertJobScheduler(id, { every }, template);
    await queue.close();
    await out({ id: job.id });
  } else if (cmd === 'ratelimit-ttl') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const ttl = await queue.getRateLimitTtl(rest[0] === undefined ? undefined : Number(rest[0]));
    await queue.close();
    await out({ ttl });
  } else if (cmd === 'global-rate-limit') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    await queue.setGlobalRateLimit(Number(rest[0]), Number(rest[1]));
    await queue.close();
    await out({ ok: true });
  } else if (cmd === 'cancel-request') {
    const [id, reason] = rest;
    const IORedis = require('ioredis');
    const jobId = id;
    // -- README recipe starts
    const redis = new IORedis(conn); // ioredis, as bullmq uses; prefix is 'bull' unless you set one
    const key = `${prefix}:${queueName}:bullpen:cancels`;
    await redis
      .multi()
      .hset(key, jobId, JSON.stringify({ failedReason: `cancelled: ${reason}`, retry: false }))
      .publish(key, jobId)
      .exec();
    // -- README recipe ends
    await redis.quit();
    await out({ ok: true });
  } else if (cmd === 'counts') {
    const queue = new Queue(queueName, { connection: conn, prefix });
    const counts = await queue.getJobCounts();
    await queue.close();
    await out(counts);
  } else if (cmd === 'worker') {
    const runMs = Number(rest[0]);
    const opts = JSON.parse(rest[1] || '{}');
    let done = 0;
    const w = new Worker(queueName, async () => ({ node: true }), { connection: conn, prefix, name: 'node', ...opts });
    w.on('completed', () => { done += 1; });
    await w.waitUntilReady();
    process.stderr.write('ready\n');
    await new Promise((resolve) => setTimeout(resolve, runMs));
    await w.close();
    await out({ completed: done });
  } else if (cmd === 'events') {
    const want = Number(rest[0]);
    const timeout = Number(rest[1]);
    const qe = new QueueEvents(queueName, { connection: conn, prefix });
    // A Redis restart (the chaos test) is an 'error' event on the listener;
    // unhandled it would end the process: ioredis reconnects and QueueEvents
    // reads on from the last event id.
    qe.on('error', () => {});
    await qe.waitUntilReady();
    const events = [];
    let finished = 0;
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, timeout);
      const done = () => { if (++finished >= want) { clearTimeout(timer); resolve(); } };
      qe.on('completed', ({ jobId, returnvalue }) => { events.push({ event: 'completed', jobId, returnvalue }); done(); });
      qe.on('failed', ({ jobId, failedReason }) => { events.push({ event: 'failed', jobId, failedReason }); done(); });
      qe.on('progress', ({ jobId, data }) => { events.push({ event: 'progress', jobId, data }); });
      // Readiness line: the caller starts producing once it sees this.
      process.stderr.write('ready\n');
    });
    await qe.close();
    await out(events);
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
