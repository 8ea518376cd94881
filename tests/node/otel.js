// The Node side of bullpen's tracing test (tests/tests/tracing.rs): the real
// `bullmq` with `bullmq-otel` telemetry and the OpenTelemetry Node SDK,
// exporting its spans over OTLP/HTTP (protobuf) to <otlp-url>/v1/traces.
//
//   node otel.js add    <redis-url> <queue> '[{"name":..,"data":..,"opts":..}]' <otlp-url>
//        -> [{"id", "traceId", "spanId"}]: each job, and its `add <queue>.<name>` span
//   node otel.js worker <redis-url> <queue> <count> <otlp-url>
//        -> ["id", ...]: a Node worker with telemetry (returning {"node": true})
//           until it has completed <count> jobs
'use strict';
const { Queue, Worker } = require('bullmq');
const { BullMQOtel } = require('bullmq-otel');
const { NodeTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { resourceFromAttributes } = require('@opentelemetry/resources');

function out(value) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(value) + '\n', resolve));
}

function connection(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 6379), maxRetriesPerRequest: null };
}

async function main() {
  const [cmd, url, queueName, arg, otlp] = process.argv.slice(2);
  // Every span this process makes, with its ids, for the test to compare.
  const made = [];
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': `node-${cmd}` }),
    spanProcessors: [
      new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${otlp}/v1/traces` })),
      { onStart() {}, onEnd(s) { made.push(s); }, forceFlush: async () => {}, shutdown: async () => {} },
    ],
  });
  provider.register();
  const telemetry = new BullMQOtel('bullpen-test');
  const prefix = process.env.BULLMQ_PREFIX || 'bull';
  if (cmd === 'add') {
    const queue = new Queue(queueName, { connection: connection(url), prefix, telemetry });
    const jobs = [];
    for (const j of JSON.parse(arg)) {
      const job = await queue.add(j.name, j.data, j.opts || {});
      const span = made.find((s) => s.name === `add ${queueName}.${j.name}` && s.attributes['bullmq.job.id'] === job.id);
      jobs.push({ id: job.id, traceId: span.spanContext().traceId, spanId: span.spanContext().spanId });
    }
    await queue.close();
    await provider.shutdown();
    await out(jobs);
  } else if (cmd === 'worker') {
    const done = [];
    let finish;
    const all = new Promise((resolve) => (finish = resolve));
    const worker = new Worker(queueName, async () => ({ node: true }), { connection: connection(url), prefix, telemetry, name: 'node' });
    worker.on('completed', (job) => {
      done.push(job.id);
      if (done.length >= Number(arg)) finish();
    });
    await all;
    await worker.close();
    await provider.shutdown();
    await out(done);
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
