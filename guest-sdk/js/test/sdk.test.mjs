// Unit tests of the SDK's semantics against a mock host (node --test).
// The real host is exercised by tests/tests/conformance.rs with the example
// plugins; these pin down the mapping to the WIT shapes componentize-js uses.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

const here = dirname(fileURLToPath(import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bullpen-sdk-test-'));
const outfile = join(dir, 'sdk.mjs');
await build({
  stdin: {
    contents: `export * from ${JSON.stringify(join(here, '..', 'index.js'))};
      export * as host from ${JSON.stringify(join(here, 'host-mock.js'))};
      export { wasi } from ${JSON.stringify(join(here, 'wasi-mock.js'))};`,
    resolveDir: here,
  },
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  outfile,
  logLevel: 'silent',
  plugins: [{
    name: 'mock-host',
    setup(b) {
      b.onResolve({ filter: /^bullpen:processor\/job-context@0\.1\.0$/ }, () => ({ path: join(here, 'host-mock.js') }));
      b.onResolve({ filter: /^wasi:(config\/store@0\.2\.0-rc\.1|http\/(types|outgoing-handler)@0\.2\.12)$/ }, () => ({ path: join(here, 'wasi-mock.js') }));
    },
  }],
});
const sdk = await import(outfile);
rmSync(dir, { recursive: true, force: true });
const { exportProcessor, Outcome, JobError, HostError, HttpError, Backoff, variable, panic, host, wasi } = sdk;

const witJob = (over = {}) => ({
  id: '42', name: 'n', queue: 'q', data: '{"a":1}', opts: '{"attempts":3}',
  attemptsMade: 1, attemptsStarted: 2, timestamp: 1700000000123n, progress: '0', parent: undefined, ...over,
});
const run = (f, job = witJob()) => exportProcessor(f).process(job);

beforeEach(() => {
  wasi.variables = {};
  wasi.storeError = undefined;
  wasi.reply = undefined;
  wasi.sent.length = 0;
  host.calls.length = 0;
  for (const k of Object.keys(host.replies)) delete host.replies[k];
});

test('job snapshot accessors', async () => {
  let seen;
  await run((job) => {
    seen = {
      id: job.id, name: job.name, queue: job.queue, data: job.data(), dataJson: job.dataJson, optsJson: job.optsJson,
      attemptsMade: job.attemptsMade, attemptsStarted: job.attemptsStarted, timestamp: job.timestamp,
      progressJson: job.progressJson, parent: job.parent(),
    };
    return Outcome.moved;
  });
  assert.deepEqual(seen, {
    id: '42', name: 'n', queue: 'q', data: { a: 1 }, dataJson: '{"a":1}', optsJson: '{"attempts":3}',
    attemptsMade: 1, attemptsStarted: 2, timestamp: 1700000000123, progressJson: '0', parent: null,
  });
  await run((job) => { seen = job.parent(); }, witJob({ parent: { id: 'p', queue: 'pq' } }));
  assert.deepEqual(seen, { id: 'p', queue: 'pq' });
});

test('outcomes: Outcome, plain values, promises, moved', async () => {
  assert.deepEqual(await run(() => Outcome.complete({ b: [1, 'x'] })), { tag: 'ok', val: { tag: 'completed', val: '{"b":[1,"x"]}' } });
  assert.deepEqual(await run(() => Outcome.completeJson('{"raw": true}')), { tag: 'ok', val: { tag: 'completed', val: '{"raw": true}' } });
  assert.deepEqual(await run(() => ({ plain: 1 })), { tag: 'ok', val: { tag: 'completed', val: '{"plain":1}' } });
  assert.deepEqual(await run(() => undefined), { tag: 'ok', val: { tag: 'completed', val: 'null' } });
  assert.deepEqual(await run(async () => { await new Promise((r) => setTimeout(r, 5)); return 7; }), { tag: 'ok', val: { tag: 'completed', val: '7' } });
  assert.deepEqual(await run(() => Outcome.moved), { tag: 'ok', val: { tag: 'moved' } });
});

test('failures map to the WIT failure variant', async () => {
  assert.deepEqual(await run(() => { throw JobError.retry('r'); }), { tag: 'err', val: { tag: 'retry', val: 'r' } });
  assert.deepEqual(await run(() => { throw JobError.retryAfter('later', 1500.9); }), { tag: 'err', val: { tag: 'retry-after', val: { reason: 'later', delayMs: 1500n } } });
  assert.deepEqual(await run(async () => { throw JobError.unrecoverable('no'); }), { tag: 'err', val: { tag: 'unrecoverable', val: 'no' } });
  assert.deepEqual(await run(() => Outcome.complete(10n)), { tag: 'err', val: { tag: 'unrecoverable', val: 'return value is not serialisable: Do not know how to serialize a BigInt' } });
  assert.deepEqual(await run(() => ({ n: 10n })), { tag: 'err', val: { tag: 'unrecoverable', val: 'return value is not serialisable: Do not know how to serialize a BigInt' } });
});

test('host refusals are HostErrors; escaping process they retry with the Rust SDK text', async () => {
  const cases = [
    [{ tag: 'lock-lost' }, 'lock lost: this worker no longer owns the job', ''],
    [{ tag: 'wrong-state', val: 'not active' }, 'job in wrong state: not active', 'not active'],
    [{ tag: 'invalid', val: 'queue x not allowed' }, 'invalid argument: queue x not allowed', 'queue x not allowed'],
    [{ tag: 'unavailable', val: 'redis down' }, 'host unavailable: redis down', 'redis down'],
  ];
  for (const [error, message, detail] of cases) {
    host.replies.log = { error };
    let caught;
    const r = await run((job) => {
      try { job.log('x'); } catch (e) { caught = e; }
      job.log('again');
    });
    assert.ok(caught instanceof HostError);
    assert.equal(caught.kind, error.tag);
    assert.equal(caught.detail, detail);
    assert.equal(caught.message, message);
    assert.equal(caught.isLockLost(), error.tag === 'lock-lost');
    assert.deepEqual(r, { tag: 'err', val: { tag: 'retry', val: message } });
  }
});

test('host calls send JSON text and u64 as BigInt', async () => {
  host.replies.addChild = { value: 'child-id' };
  host.replies.waitForChildren = { value: false };
  host.replies.childrenValues = { value: [['bull:k:1', '{"v":1}'], ['bull:k:2', '"s"']] };
  let got;
  await run((job) => {
    job.updateData({ step: 'Second', n: 1 });
    job.progress(42);
    job.progress({ pct: 5 });
    job.log('line');
    got = {
      child: job.addChild('k', 'c', { i: 1 }, { jobId: '42-child-1' }),
      child2: job.addChild('k', 'c', [1]),
      wait: job.waitForChildren(),
      values: job.childrenValues(),
      delayed: job.delayUntil(1700000000999.6),
    };
  });
  assert.deepEqual(host.calls, [
    ['updateData', '{"step":"Second","n":1}'],
    ['updateProgress', '42'],
    ['updateProgress', '{"pct":5}'],
    ['log', 'line'],
    ['addChild', 'k', 'c', '{"i":1}', '{"jobId":"42-child-1"}'],
    ['addChild', 'k', 'c', '[1]', ''],
    ['waitForChildren'],
    ['childrenValues'],
    ['moveToDelayed', 1700000000999n],
  ]);
  assert.equal(got.child, 'child-id');
  assert.equal(got.wait, null);
  assert.deepEqual(got.values, [['bull:k:1', { v: 1 }], ['bull:k:2', 's']]);
  assert.equal(got.delayed, Outcome.moved);
  host.replies.waitForChildren = { value: true };
  assert.deepEqual(await run((job) => job.waitForChildren() ?? 'not moved'), { tag: 'ok', val: { tag: 'moved' } });
});

test('rateLimit and moveToWait send their call and give Outcome.moved', async () => {
  assert.deepEqual(await run((job) => job.rateLimit(1500)), { tag: 'ok', val: { tag: 'moved' } });
  assert.deepEqual(await run((job) => job.moveToWait()), { tag: 'ok', val: { tag: 'moved' } });
  assert.deepEqual(host.calls, [['rateLimit', 1500n], ['moveToWait']]);
  // A bad argument throws a RangeError: escaping `process`, a retry with its message (as in Node).
  const bad = await run((job) => job.rateLimit(-1));
  assert.equal(bad.val.tag, 'retry');
  assert.match(bad.val.val, /^rateLimit delayMs must be a non-negative number/);
  assert.deepEqual(host.calls.at(-1)[0], 'setStacktrace', 'a refused argument never reaches the host');
  assert.equal(host.calls.length, 3);
});

test('JSON that does not fit is unrecoverable "invalid JSON: ..."', async () => {
  const bad = await run((job) => job.data(), witJob({ data: '{oops' }));
  assert.equal(bad.val.tag, 'unrecoverable');
  assert.match(bad.val.val, /^invalid JSON: /);
  const big = await run((job) => job.updateData({ n: 1n }));
  assert.deepEqual(big, { tag: 'err', val: { tag: 'unrecoverable', val: 'invalid JSON: Do not know how to serialize a BigInt' } });
  host.replies.childrenValues = { value: [['k', 'not json']] };
  const child = await run((job) => job.childrenValues());
  assert.match(child.val.val, /^invalid JSON: /);
  assert.equal(host.calls.filter(([n]) => n === 'updateData').length, 0, 'nothing written');
});

test('any other exception is a retry with its message, its stack sent first; panic() traps', async () => {
  const lines = [];
  const orig = console.error;
  console.error = (s) => lines.push(String(s));
  try {
    assert.deepEqual(await run(() => { throw new TypeError('boom'); }), { tag: 'err', val: { tag: 'retry', val: 'boom' } });
    const [name, stack] = host.calls.at(-1);
    assert.equal(name, 'setStacktrace');
    assert.match(stack, /^TypeError: boom\n    at /);
    assert.deepEqual(await run(() => { throw 'a string'; }), { tag: 'err', val: { tag: 'retry', val: 'a string' } });
    assert.equal(lines.length, 0, 'nothing printed for a failure');
    await assert.rejects(async () => run(() => panic('bad state')), /bad state/);
  } finally {
    console.error = orig;
  }
  assert.match(lines[0], /^JavaScript panicked at .*:\nbad state$/);
});

test('variable: the value; missing is unrecoverable, an unreadable store retries (the Rust SDK texts)', async () => {
  wasi.variables = { api_key: 'k1', empty: '' };
  assert.equal(variable('api_key'), 'k1');
  assert.equal(variable('empty'), '');
  const missing =
    'variable `nope` is not set for this queue (set it with --var nope=... / --var-env nope=ENVNAME, or in [queues.variables] of bullpen.toml)';
  assert.throws(() => variable('nope'), (e) => e instanceof JobError && e.kind === 'unrecoverable' && e.message === missing);
  assert.deepEqual(await run(() => variable('nope')), { tag: 'err', val: { tag: 'unrecoverable', val: missing } });
  wasi.storeError = { tag: 'io', val: 'disk on fire' };
  assert.throws(() => variable('api_key'), (e) => e.kind === 'retry' && e.message === 'variable `api_key` could not be read: disk on fire');
});

test('fetch sends over wasi:http: method, scheme, authority, path, headers, body', async () => {
  wasi.reply = { status: 201, headers: [['content-type', 'text/plain'], ['x-a', '1'], ['x-a', '2']], body: 'créé' };
  const big = 'x'.repeat(10000);
  const res = await fetch('https://api.example.com:8443/v1/things?a=1#frag', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-sig': 'sha256=ab' },
    body: big,
  });
  assert.equal(wasi.sent.length, 1);
  const req = wasi.sent[0];
  assert.deepEqual([req.method, req.scheme, req.authority, req.path], [{ tag: 'post' }, { tag: 'HTTPS' }, 'api.example.com:8443', '/v1/things?a=1']);
  const headers = Object.fromEntries(req.fields.list.map(([k, v]) => [k, new TextDecoder().decode(v)]));
  assert.equal(headers['content-type'], 'application/json');
  assert.equal(headers['x-sig'], 'sha256=ab');
  assert.equal(headers['content-length'], '10000');
  assert.equal(new TextDecoder().decode(Uint8Array.from(req.outBody.bytes)), big);
  assert.equal(res.status, 201);
  assert.equal(res.ok, true);
  assert.equal(res.headers.get('x-a'), '1, 2');
  assert.equal(res.url, 'https://api.example.com:8443/v1/things?a=1#frag');
  assert.equal(await res.text(), 'créé');

  wasi.reply = { status: 204, headers: [], body: '' };
  const r204 = await fetch('http://h/', { method: 'DELETE' });
  assert.deepEqual([r204.status, wasi.sent[1].method, wasi.sent[1].scheme, wasi.sent[1].path], [204, { tag: 'delete' }, { tag: 'HTTP' }, '/']);
  wasi.reply = { status: 302, headers: [['location', '/next']], body: '' };
  const r302 = await fetch('http://h/old');
  assert.deepEqual([r302.status, r302.headers.get('location')], [302, '/next'], 'a redirect is returned, not followed');
  assert.equal(wasi.sent.length, 3);
  await fetch('http://h/', { method: 'PURGE' });
  assert.deepEqual(wasi.sent[3].method, { tag: 'other', val: 'PURGE' });
});

test('fetch rejects with an HttpError naming a denied origin and the flag; escaping process, it retries', async () => {
  const denied =
    "request to http://127.0.0.1:6379 denied: not in this queue's allow-list (grant it with --allow-outbound http://127.0.0.1:6379, or allowed_outbound_hosts in bullpen.toml)";
  for (const early of [false, true]) {
    wasi.reply = { code: { tag: 'HTTP-request-denied' }, early };
    await assert.rejects(fetch('http://127.0.0.1:6379/x?secret=1', { method: 'POST', body: 'b' }), (e) =>
      e instanceof HttpError && e instanceof TypeError && e.denied && e.origin === 'http://127.0.0.1:6379' && e.code === 'HTTP-request-denied' && e.message === denied);
  }
  assert.deepEqual(await run(async () => { await fetch('http://127.0.0.1:6379/'); }), { tag: 'err', val: { tag: 'retry', val: denied } });
  let caught;
  assert.deepEqual(await run(async () => { try { await fetch('http://127.0.0.1:6379/'); } catch (e) { caught = e.message; } return 1; }), { tag: 'ok', val: { tag: 'completed', val: '1' } });
  assert.equal(caught, denied);

  const texts = [
    [{ tag: 'destination-IP-prohibited' }, 'request to https://a.example refused: the host resolves to a loopback, link-local, private or unspecified address; grant that IP itself with --allow-outbound to reach it'],
    [{ tag: 'connection-refused' }, 'request to https://a.example failed: connection refused'],
    [{ tag: 'HTTP-response-timeout' }, 'request to https://a.example failed: timed out waiting for the response'],
    [{ tag: 'HTTP-response-body-size', val: 17n }, 'response from https://a.example is too large (17 bytes read; --max-http-response-mb)'],
    [{ tag: 'TLS-certificate-error' }, 'request to https://a.example failed: TLS error (TlsCertificateError); a private CA needs --http-ca'],
    [{ tag: 'DNS-error', val: { rcode: 'NXDOMAIN' } }, 'request to https://a.example failed: DNS error (NXDOMAIN)'],
    [{ tag: 'internal-error', val: 'boom' }, 'request to https://a.example failed: boom'],
    [{ tag: 'HTTP-protocol-error' }, 'request to https://a.example failed: HttpProtocolError'],
  ];
  for (const [code, text] of texts) {
    wasi.reply = { code };
    await assert.rejects(fetch('https://a.example/p'), (e) => e instanceof HttpError && e.message === text && e.denied === (code.tag === 'destination-IP-prohibited'));
  }
  await assert.rejects(fetch('ftp://a.example/'), TypeError);
});

test('backoff export', async () => {
  const seen = [];
  const { backoff } = exportProcessor(() => null, {
    backoff: (strategy, attemptsMade, reason, job) => {
      seen.push([strategy, attemptsMade, reason, job.id]);
      return strategy === 'never' ? Backoff.giveUp : Backoff.delayMs(300 * attemptsMade);
    },
  });
  assert.deepEqual(await backoff('linear', 2, 'why', witJob()), { tag: 'delay-ms', val: 600n });
  assert.deepEqual(await backoff('never', 1, 'why', witJob()), { tag: 'give-up' });
  assert.deepEqual(seen, [['linear', 2, 'why', '42'], ['never', 1, 'why', '42']]);
  assert.equal(exportProcessor(() => null).backoff, undefined);
  const orig = console.error;
  console.error = () => {};
  try {
    const { backoff: wrong } = exportProcessor(() => null, { backoff: () => 5 });
    await assert.rejects(wrong('x', 1, 'r', witJob()), /must return Backoff.delayMs/);
  } finally {
    console.error = orig;
  }
  assert.throws(() => Backoff.delayMs(-1), RangeError);
  assert.throws(() => JobError.retryAfter('x', NaN), RangeError);
});

test('serdejson: serde words for values, serde_json key order', () => {
  const { serdejson } = sdk;
  assert.deepEqual(
    [null, true, 3, 1.5, 'three', [1], { a: 1 }].map(serdejson.describe),
    ['null', 'boolean `true`', 'integer `3`', 'floating point `1.5`', 'string "three"', 'sequence', 'map'],
  );
  // (Integer-like keys such as "2" always come first in a JavaScript object.)
  const sorted = serdejson.sortKeys({ é: 0, b: 1, a: { z: 1, y: [{ d: 2, c: 1 }] } });
  assert.equal(JSON.stringify(sorted), '{"a":{"y":[{"c":1,"d":2}],"z":1},"b":1,"é":0}');
});
