// bullpen-guest: write bullpen job processors in JavaScript.
//
// A processor is a function from a `Job` to an `Outcome` (or a plain value,
// the job's return value), compiled to a WebAssembly component with
// `bullpen-build` (bin/build.mjs, around componentize-js). bullpen runs it
// once per attempt, in a fresh instance, on jobs from a BullMQ queue.
//
//   import { exportProcessor, Outcome, JobError } from 'bullpen-guest';
//
//   export const { process } = exportProcessor((job) => {
//     const email = job.data();
//     job.log(`sending to ${email.to}`);
//     job.progress(50);
//     if (!email.to) throw JobError.unrecoverable('no recipient'); // no retries
//     return Outcome.complete({ sent: true });
//   });
//
// The API mirrors the Rust SDK (guest-sdk/rust) name for name, in camelCase,
// and so do its semantics: every host call is checked against the job's lock
// token by the host; a refused call throws a `HostError`. Errors follow Node's
// BullMQ worker: anything `process` throws fails the attempt retryably with
// its message as the failedReason (`JobError` says otherwise: a delay, or no
// retry), and its stack, mapped back to your source files, becomes the job's
// `stacktrace` entry (after a lost lock the host writes nothing at all).

// The component's imports (host.js); under Node, bullpen-guest/testing's
// in-memory job context (testing-host.js): package.json "imports".
import {
  host,
  sendRequest,
  Fields,
  OutgoingRequest,
  OutgoingBody,
  httpErrorCode,
  getVariable,
  inComponent,
} from '#host';

const HOST_ERROR_KINDS = ['lock-lost', 'wrong-state', 'invalid', 'unavailable'];

/** A host call was refused. `kind` says why; `detail` is the host's text. */
export class HostError extends Error {
  constructor(kind, detail = '') {
    super(hostErrorMessage(kind, detail));
    this.name = 'HostError';
    /** 'lock-lost' | 'wrong-state' | 'invalid' | 'unavailable' */
    this.kind = kind;
    /** The host's text ('' for lock-lost). */
    this.detail = detail;
  }

  /** True when the worker lost the job's lock: stop and return (or rethrow). */
  isLockLost() {
    return this.kind === 'lock-lost';
  }
}

// The same text as the Rust SDK's Display for `Error::Host`.
function hostErrorMessage(kind, detail) {
  switch (kind) {
    case 'lock-lost':
      return 'lock lost: this worker no longer owns the job';
    case 'wrong-state':
      return `job in wrong state: ${detail}`;
    case 'invalid':
      return `invalid argument: ${detail}`;
    case 'unavailable':
      return `host unavailable: ${detail}`;
    default:
      return `host error ${kind}: ${detail}`;
  }
}

/**
 * Why an attempt failed, when it is not a plain retry: throw one from
 * `process`. (Any other thrown error is a retry with its message, as in a
 * Node BullMQ worker.)
 */
export class JobError extends Error {
  constructor(kind, reason, delayMs) {
    super(String(reason));
    this.name = 'JobError';
    /** 'retry' | 'retry-after' | 'unrecoverable' */
    this.kind = kind;
    /** The failedReason recorded for the attempt (same as `message`). */
    this.reason = String(reason);
    /** For 'retry-after': milliseconds until the job may run again. */
    this.delayMs = delayMs;
  }

  /** Retry per the job's `attempts`/`backoff`; else fail with this reason. */
  static retry(reason) {
    return new JobError('retry', reason);
  }

  /** Retry after `delayMs` (the guest's own countdown), if attempts remain. */
  static retryAfter(reason, delayMs) {
    return new JobError('retry-after', reason, toU64(delayMs, 'delayMs'));
  }

  /** Fail now, whatever `attempts` says. */
  static unrecoverable(reason) {
    return new JobError('unrecoverable', reason);
  }

  /** Always false: a `JobError` is the guest's own decision. */
  isLockLost() {
    return false;
  }
}

/**
 * End the attempt as a trap, as a Rust `panic!` or a Go `panic` does: a bug,
 * not a failure. The instance is thrown away (even with --instance-reuse),
 * the failedReason is `wasm trap: ... (guest panicked: <message>; ...)`, and
 * retries apply. Never returns.
 */
export function panic(message) {
  throw new Panic(String(message));
}

// What `panic` throws: `exportProcessor` lets it end the call as a trap.
class Panic {
  constructor(message) {
    this.message = message;
    this.at = callerFrame(new Error().stack);
  }
}

/** How a successful attempt ended. */
export class Outcome {
  constructor(kind, json) {
    /** 'completed' | 'moved' */
    this.kind = kind;
    /** For 'completed': the return value as JSON text. */
    this.json = json;
    Object.freeze(this);
  }

  /** Complete the job with `value` serialised (JSON.stringify) as its return value. */
  static complete(value) {
    let json;
    try {
      json = JSON.stringify(value);
    } catch (e) {
      throw JobError.unrecoverable(`return value is not serialisable: ${errorText(e)}`);
    }
    return new Outcome('completed', json === undefined ? 'null' : json);
  }

  /** Complete the job with a return value that is already JSON text. */
  static completeJson(text) {
    return new Outcome('completed', String(text));
  }
}

/** A host call already moved the job (delayed, waiting for children). */
Outcome.moved = new Outcome('moved', undefined);

/** What a custom backoff strategy decides after a retryable failure. */
export class Backoff {
  constructor(kind, ms) {
    /** 'delay-ms' | 'give-up' */
    this.kind = kind;
    /** For 'delay-ms': milliseconds until the retry (0 = at once). */
    this.ms = ms;
    Object.freeze(this);
  }

  /** Retry after `ms` milliseconds (0 = at once). */
  static delayMs(ms) {
    return new Backoff('delay-ms', toU64(ms, 'Backoff.delayMs'));
  }
}

/** Do not retry: fail the job now (BullMQ's custom backoff `-1`). */
Backoff.giveUp = new Backoff('give-up', undefined);

/**
 * The job being processed: a snapshot taken when the attempt started, plus
 * the host calls that act on it.
 */
export class Job {
  #inner;

  /** Made by `exportProcessor` from the host's job record. */
  constructor(inner) {
    this.#inner = inner;
  }

  /** The BullMQ job id. */
  get id() {
    return this.#inner.id;
  }
  /** The job name given by the producer. */
  get name() {
    return this.#inner.name;
  }
  /** The queue the job came from. */
  get queue() {
    return this.#inner.queue;
  }
  /** The job data as JSON text, exactly as stored in Redis. */
  get dataJson() {
    return this.#inner.data;
  }
  /** The job options as JSON text (BullMQ field names). */
  get optsJson() {
    return this.#inner.opts;
  }
  /** Attempts that ended before this one (BullMQ `attemptsMade`). */
  get attemptsMade() {
    return this.#inner.attemptsMade;
  }
  /** Times the job was started, this one included (`attemptsStarted`). */
  get attemptsStarted() {
    return this.#inner.attemptsStarted;
  }
  /** When the job was added, ms since the Unix epoch. */
  get timestamp() {
    return Number(this.#inner.timestamp);
  }
  /** The last reported progress as JSON text. */
  get progressJson() {
    return this.#inner.progress;
  }

  /** The job data, parsed (a fresh copy on every call). */
  data() {
    return parseJson(this.#inner.data);
  }

  /** The parent job `{id, queue}`, or null when this job is not a child in a flow. */
  parent() {
    const p = this.#inner.parent;
    return p ? { id: p.id, queue: p.queue } : null;
  }

  /** Replace the job's data (seen by later attempts): the step pattern's memory. */
  updateData(value) {
    const json = toJson(value);
    call(() => host.updateData(json));
  }

  /** Report progress (a number or any JSON value). */
  progress(value) {
    const json = toJson(value);
    call(() => host.updateProgress(json));
  }

  /** Append a line to the job's BullMQ log. */
  log(line) {
    const text = String(line);
    call(() => host.log(text));
  }

  /**
   * Delay the job until `timestampMs` (ms since the Unix epoch) and end the
   * attempt: return the `Outcome.moved` this gives. `attemptsMade` does not grow.
   */
  delayUntil(timestampMs) {
    const ts = toU64(timestampMs, 'delayUntil timestamp');
    call(() => host.moveToDelayed(ts));
    return Outcome.moved;
  }

  /**
   * Rate-limit this job's queue for every worker for `delayMs` (Node's
   * `worker.rateLimit(ms)` + `Worker.RateLimitError`), put the job back in
   * wait and end the attempt: return the `Outcome.moved` this gives.
   * `attemptsMade` does not grow. `delayMs` must be at least 1.
   */
  rateLimit(delayMs) {
    const ms = toU64(delayMs, 'rateLimit delayMs');
    call(() => host.rateLimit(ms));
    return Outcome.moved;
  }

  /**
   * Put the job back in wait, without a delay (BullMQ's
   * `job.moveToWait(token)` + `WaitingError`), and end the attempt: return
   * the `Outcome.moved` this gives. `attemptsMade` does not grow.
   */
  moveToWait() {
    call(() => host.moveToWait());
    return Outcome.moved;
  }

  /**
   * Add a child job to `queue` whose parent is this job; returns its id.
   * `opts` are BullMQ job options (e.g. `{ jobId: '...' }`), or null/undefined.
   */
  addChild(queue, name, data, opts) {
    const dataJson = toJson(data);
    const optsJson = opts === null || opts === undefined ? '' : toJson(opts);
    return call(() => host.addChild(String(queue), String(name), dataJson, optsJson));
  }

  /**
   * `Outcome.moved` when the job now waits for pending children (return it);
   * null when no child is pending (carry on).
   */
  waitForChildren() {
    return call(() => host.waitForChildren()) ? Outcome.moved : null;
  }

  /**
   * The return values of completed children as `[key, value]` pairs, keyed by
   * child key (`prefix:queue:id`), values parsed from JSON.
   */
  childrenValues() {
    return call(() => host.childrenValues()).map(([key, json]) => [key, parseJson(json)]);
  }
}

// The export's result for what the processor returned (or threw).
function finished(result) {
  let outcome;
  try {
    outcome = result instanceof Outcome ? result : Outcome.complete(result);
  } catch (e) {
    return failed(e);
  }
  return outcome.kind === 'moved'
    ? { tag: 'ok', val: { tag: 'moved' } }
    : { tag: 'ok', val: { tag: 'completed', val: outcome.json } };
}

function failed(e) {
  if (e instanceof Panic) trap(e);
  return { tag: 'err', val: toFailure(e) };
}

// What `await` would wait for.
function isThenable(v) {
  return (typeof v === 'object' || typeof v === 'function') && v !== null && typeof v.then === 'function';
}

/**
 * Make the exports of a processor component from `process(job)`, and
 * optionally a custom backoff strategy `backoff(strategy, attemptsMade, reason,
 * job) -> Backoff`, called when a job whose `opts.backoff.type` is not
 * `fixed`/`exponential` fails retryably (`attemptsMade` counts the failed
 * attempt). The entry module must export what this returns:
 *
 *   export const { process } = exportProcessor(handle);
 *   export const { process, backoff } = exportProcessor(handle, { backoff: strategy });
 *
 * `process(job)` may return an `Outcome`, a plain value (= `Outcome.complete(value)`),
 * or a Promise of either. It fails the attempt by throwing, as in a Node
 * BullMQ worker: a `JobError` fails it as it says; anything else
 * (`throw new Error('SMTP server said 550')`, a `HostError`, an `HttpError`)
 * fails it retryably, with its message as the failedReason. The error's
 * stack, mapped through the bundle's source map to your files and lines,
 * is the job's `stacktrace` entry for the attempt. `panic(message)` makes
 * the attempt trap instead.
 */
export function exportProcessor(process, options = {}) {
  if (typeof process !== 'function') {
    throw new TypeError('exportProcessor: the first argument must be the process(job) function');
  }
  const exports = {
    process(witJob) {
      let result;
      try {
        result = process(new Job(witJob));
      } catch (e) {
        return failed(e);
      }
      // A synchronous processor's outcome goes back as is: an async export
      // would cost every attempt a promise and an async function (the
      // bindings await the result either way).
      return isThenable(result) ? result.then(finished, failed) : finished(result);
    },
  };
  const backoff = options.backoff;
  if (backoff !== undefined) {
    if (typeof backoff !== 'function') {
      throw new TypeError('exportProcessor: options.backoff must be a function');
    }
    exports.backoff = async (strategy, attemptsMade, reason, witJob) => {
      let decision;
      try {
        decision = await backoff(strategy, attemptsMade, reason, new Job(witJob));
        if (!(decision instanceof Backoff)) {
          throw new TypeError(`backoff must return Backoff.delayMs(ms) or Backoff.giveUp, not ${describe(decision)}`);
        }
      } catch (e) {
        trap(e instanceof Panic ? e : new Panic(errorText(e)));
      }
      return decision.kind === 'give-up' ? { tag: 'give-up' } : { tag: 'delay-ms', val: decision.ms };
    };
  }
  return exports;
}

/**
 * The queue's variable `name` (`--var`, `--var-env`, `[queues.variables]` in
 * bullpen.toml): configuration and secrets. A guest reads only its own
 * queue's. Missing, it throws an unrecoverable `JobError` naming the
 * variable and how to set it (a retry would not make it appear); a store
 * that cannot be read throws a retryable one. The Rust SDK's `variable`.
 */
export function variable(name) {
  const key = String(name);
  let value;
  try {
    value = getVariable(key);
  } catch (e) {
    const p = e && typeof e === 'object' ? e.payload : undefined;
    const why = p && typeof p.val === 'string' ? p.val : errorText(e);
    throw JobError.retry(`variable \`${key}\` could not be read: ${why}`);
  }
  if (value === undefined || value === null) {
    throw JobError.unrecoverable(
      `variable \`${key}\` is not set for this queue (set it with --var ${key}=... / --var-env ${key}=ENVNAME, ` +
        'or in [queues.variables] of bullpen.toml)',
    );
  }
  return value;
}

/**
 * Why a `fetch` got no response: it rejects with one. A `TypeError`, as
 * fetch's network errors are; escaping `process`, it fails the attempt
 * retryably with its message (network trouble may pass), as the Rust SDK's
 * `HttpError` does with `?`.
 */
export class HttpError extends TypeError {
  constructor(message, origin = '', denied = false, code = undefined) {
    super(message);
    this.name = 'HttpError';
    /** The request's `scheme://host[:port]` (never its path or query). */
    this.origin = origin;
    /**
     * True when the host refused it before it left: not in the queue's
     * `--allow-outbound`, or the SSRF rule (a name resolving to a private address).
     */
    this.denied = denied;
    /** The wasi:http `error-code` tag (e.g. 'connection-refused'), when there was one. */
    this.code = code;
  }
}

// --- internals -------------------------------------------------------------

// The global `fetch`, over wasi:http/outgoing-handler (the host sends only
// to origins the queue grants). Not StarlingMonkey's own: componentize-js
// 0.23's fetch turns every wasi:http error code into a bare "NetworkError
// when attempting to fetch resource" (so a denial could not name the origin
// and the flag), and traps the instance when a request with a body fails
// (denied, connection refused). Measured, its http feature also costs every
// attempt (bench/README.md). bullpen-build evaluates the SDK first, so a
// library that keeps a reference to `fetch` gets this one.
//
// `new Request(input, init)` does the argument handling (URL, method, header
// and body types) as the web platform does; the request is then sent with the
// whole body, and `fetch` resolves once the whole response body is read (the
// host caps it: --max-http-response-mb). Redirects are not followed (the
// host never does): a 3xx is returned like any other response. While a
// request waits, the guest blocks and the host runs other attempts; requests
// started in the same tick (Promise.all) are in flight together.
// Only in a component: under Node (unit tests) the global fetch stays Node's.
const wasiFetch = async function fetch(input, init = undefined) {
  const request = new Request(input, init);
  if (request.signal && request.signal.aborted) throw request.signal.reason;
  const url = new URL(request.url);
  const scheme = url.protocol.slice(0, -1);
  const origin = `${scheme}://${url.host}`;
  if (scheme !== 'http' && scheme !== 'https') {
    throw new HttpError(`invalid URL ${JSON.stringify(request.url)}: the scheme must be http or https`);
  }
  const method = request.method;
  const body =
    method === 'GET' || method === 'HEAD' || request.body === null ? null : new Uint8Array(await request.arrayBuffer());
  const pending = send(origin, url, method, request.headers, body);
  // Let requests started in the same tick be sent before this one blocks.
  await null;
  return receive(origin, request.url, pending);
};
if (inComponent) globalThis.fetch = wasiFetch;

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
const utf8 = new TextEncoder();
const dispose = Symbol.dispose || Symbol.for('dispose');

// Drop a wasi resource now, not at GC: wasi:http wants a child (a stream)
// gone before its parent (a body) is finished.
function drop(resource) {
  if (resource && typeof resource[dispose] === 'function') resource[dispose]();
}

// Send the request and write its body; what `receive` needs.
function send(origin, url, method, headers, body) {
  const fields = new Fields();
  let hasLength = false;
  for (const [name, value] of headers) {
    if (name === 'content-length') hasLength = true;
    try {
      fields.append(name, utf8.encode(value));
    } catch (e) {
      throw new HttpError(`header ${JSON.stringify(name)} refused: ${payloadText(e)}`, origin);
    }
  }
  // The whole body is known: say its length (else it goes chunked, which
  // some servers refuse).
  if (!hasLength && (body !== null || method === 'POST' || method === 'PUT' || method === 'PATCH')) {
    fields.append('content-length', utf8.encode(String(body === null ? 0 : body.length)));
  }
  const req = new OutgoingRequest(fields);
  req.setMethod(METHODS.includes(method) ? { tag: method.toLowerCase() } : { tag: 'other', val: method });
  req.setScheme({ tag: url.protocol === 'https:' ? 'HTTPS' : 'HTTP' });
  req.setAuthority(url.host);
  req.setPathWithQuery(`${url.pathname || '/'}${url.search}`);
  const outBody = req.body();
  let future;
  try {
    future = sendRequest(req, undefined);
  } catch (e) {
    if (!e || !e.payload) throw e;
    throw describeCode(origin, e.payload);
  }
  // A body that cannot be sent is usually a request that failed (refused,
  // denied): that error is the response's, so remember the write's and
  // report the response's first.
  let writeError;
  if (body !== null && body.length > 0) {
    const stream = outBody.write();
    try {
      for (let i = 0; i < body.length; i += 4096) {
        stream.blockingWriteAndFlush(body.subarray(i, i + 4096));
      }
    } catch (e) {
      writeError = streamError(origin, e, 'sending the body failed');
    }
    drop(stream);
  }
  if (!writeError) {
    try {
      OutgoingBody.finish(outBody, undefined);
    } catch (e) {
      writeError = describeCode(origin, e.payload);
    }
  }
  return { future, writeError };
}

// Wait for the response and read its body: a Response, or an HttpError thrown.
function receive(origin, requestUrl, { future, writeError }) {
  let got = future.get();
  if (got === undefined) {
    const ready = future.subscribe();
    ready.block();
    drop(ready);
    got = future.get();
  }
  drop(future);
  if (got === undefined || got.tag === 'err') throw new HttpError(`request to ${origin} failed: the response was already taken`, origin);
  if (got.val.tag === 'err') throw describeCode(origin, got.val.val);
  if (writeError) throw writeError;
  const response = got.val.val;
  const status = response.status();
  const headerFields = response.headers();
  const headers = new Headers();
  const text = new TextDecoder();
  for (const [name, value] of headerFields.entries()) headers.append(name, text.decode(value));
  drop(headerFields);
  const incoming = response.consume();
  const stream = incoming.stream();
  const chunks = [];
  let length = 0;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(65536n);
      } catch (e) {
        if (e && e.payload && e.payload.tag === 'closed') break;
        throw streamError(origin, e, `reading the response from ${origin} failed`);
      }
      chunks.push(chunk);
      length += chunk.length;
    }
  } finally {
    drop(stream);
    drop(incoming);
    drop(response);
  }
  const bytes = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  // A null-body status (204, 205, 304) cannot be constructed with a body.
  const res = new Response([204, 205, 304].includes(status) ? null : bytes, { status, headers });
  Object.defineProperty(res, 'url', { value: requestUrl, enumerable: true });
  return res;
}

// A wasi:io stream error: its http error code when it has one, else its text.
function streamError(origin, e, what) {
  const p = e && typeof e === 'object' ? e.payload : undefined;
  if (p && p.tag === 'closed') return new HttpError(`${what}: the connection closed`, origin);
  if (p && p.tag === 'last-operation-failed') {
    const code = httpErrorCode(p.val);
    if (code !== undefined) return describeCode(origin, code);
    // wasmtime-wasi-http 48 reports body errors as its own error type,
    // which http-error-code does not recognise: the text is all there is.
    const detail = p.val.toDebugString();
    const hint = detail.includes('body size exceeds limit') ? ' (--max-http-response-mb)' : '';
    return new HttpError(`${what}: ${detail}${hint}`, origin);
  }
  return new HttpError(`${what}: ${errorText(e)}`, origin);
}

// The text for a wasi:http error code: what happened, to which origin, and
// for a refusal, the flag that grants it. The Rust SDK's texts (http.rs).
function describeCode(origin, code) {
  const tag = code && typeof code === 'object' ? code.tag : String(code);
  const val = code && typeof code === 'object' ? code.val : undefined;
  const fail = (what, denied = false) => new HttpError(what, origin, denied, tag);
  switch (tag) {
    case 'HTTP-request-denied':
      return fail(
        `request to ${origin} denied: not in this queue's allow-list ` +
          `(grant it with --allow-outbound ${origin}, or allowed_outbound_hosts in bullpen.toml)`,
        true,
      );
    case 'destination-IP-prohibited':
      return fail(
        `request to ${origin} refused: the host resolves to a loopback, link-local, private or ` +
          'unspecified address; grant that IP itself with --allow-outbound to reach it',
        true,
      );
    case 'connection-refused':
      return fail(`request to ${origin} failed: connection refused`);
    case 'connection-timeout':
      return fail(`request to ${origin} failed: connect timed out`);
    case 'connection-read-timeout':
    case 'HTTP-response-timeout':
      return fail(`request to ${origin} failed: timed out waiting for the response`);
    case 'connection-limit-reached':
      return fail(`request to ${origin} refused: too many requests in flight in this attempt (--max-http-in-flight)`);
    case 'HTTP-response-body-size':
      return fail(
        `response from ${origin} is too large (${val === undefined ? 'over the limit' : String(val)} bytes read; --max-http-response-mb)`,
      );
    case 'TLS-certificate-error':
    case 'TLS-protocol-error':
    case 'TLS-alert-received':
      return fail(`request to ${origin} failed: TLS error (${rustName(tag)}); a private CA needs --http-ca`);
    case 'DNS-error':
      return fail(`request to ${origin} failed: DNS error (${(val && val.rcode) || ''})`);
    case 'internal-error':
      if (typeof val === 'string') return fail(`request to ${origin} failed: ${val}`);
  }
  return fail(`request to ${origin} failed: ${rustName(tag)}`);
}

// 'TLS-certificate-error' -> 'TlsCertificateError', as Rust's Debug names it.
function rustName(tag) {
  return String(tag)
    .split('-')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1).toLowerCase())
    .join('');
}

function payloadText(e) {
  const p = e && typeof e === 'object' ? e.payload : undefined;
  return p && p.tag ? p.tag : errorText(e);
}

// What `process` threw, as the WIT `failure` variant; its stack goes to the
// host first (`set-stacktrace`), as Node's worker writes `err.stack`.
function toFailure(e) {
  if (e instanceof Error) {
    try {
      host.setStacktrace(sourceStack(e));
    } catch {
      // A host without `set-stacktrace` is refused at load; nothing to do here.
    }
  }
  if (e instanceof JobError) {
    switch (e.kind) {
      case 'retry':
        return { tag: 'retry', val: e.reason };
      case 'retry-after':
        return { tag: 'retry-after', val: { reason: e.reason, delayMs: e.delayMs } };
      case 'unrecoverable':
        return { tag: 'unrecoverable', val: e.reason };
    }
  }
  // Anything else, as a Node worker: a retry with the message (a host
  // refusal, network trouble and a plain `throw new Error(...)` alike; after
  // a lost lock the host ignores the failure and writes nothing).
  return { tag: 'retry', val: e instanceof Error ? e.message : errorText(e) };
}

// A panic: its message and where it was, on stderr as a Rust panic prints
// them (the host puts them in the failedReason), then a trap.
function trap(p) {
  console.error(`JavaScript panicked at ${p.at}:\n${p.message}`);
  // An exception escaping the export is componentize-js's trap.
  throw new Error(p.message);
}

// The first frame outside this SDK, mapped to the source ('file:line:col').
function callerFrame(stack) {
  const frame = parseStack(stack).find((f) => !f.sdk);
  return frame ? frame.at : 'unknown location';
}

// `err.stack` as Node writes it (`Name: message` and `    at fn (file:line:col)`
// per frame), with the bundle's positions mapped back to the source files
// through the source map bullpen-build embeds; the SDK's own frames are left
// out.
function sourceStack(e) {
  const head = e.message ? `${e.name || 'Error'}: ${e.message}` : e.name || 'Error';
  const frames = parseStack(e.stack)
    .filter((f) => !f.sdk)
    .map((f) => (f.fn ? `    at ${f.fn} (${f.at})` : `    at ${f.at}`));
  return [head, ...frames].join('\n');
}

// SpiderMonkey's stack lines (a component): `fn@file:line:col`,
// `async*fn@...`, `@file:line:col`; V8's (Node, bullpen-guest/testing):
// `    at fn (file:line:col)`, `    at file:line:col`.
function parseStack(stack) {
  if (typeof stack !== 'string') return [];
  const frames = [];
  for (const line of stack.split('\n')) {
    const m =
      /^(?:async\*)?(.*)@(.*):(\d+):(\d+)$/.exec(line.trim()) ??
      /^at (?:async )?(?:(.*?) \()?(.*?):(\d+):(\d+)\)?$/.exec(line.trim());
    if (!m) continue;
    const [, fn = '', file, l, c] = m;
    if (!inComponent) {
      // Node ran the source itself: positions are the source's.
      frames.push({ fn, at: `${file}:${l}:${c}`, sdk: file === import.meta.url });
      continue;
    }
    const src = sourcePosition(Number(l), Number(c));
    if (src) frames.push({ fn, at: `${src.file}:${src.line}:${src.column}`, sdk: src.sdk });
    // Without a map (not built by bullpen-build) every frame is the bundle's;
    // with one, a frame it does not cover is componentize-js's own glue.
    else if (!globalThis[SOURCE_MAP]) frames.push({ fn, at: `${file}:${l}:${c}`, sdk: false });
  }
  return frames;
}

// The source map bullpen-build appends to the bundle (esbuild's, with the
// `sources` made relative to the project), decoded on the first failure.
const SOURCE_MAP = Symbol.for('bullpen-guest.sourceMap');
let decodedMap;

// The source position of a bundle position (1-based line and column), or
// undefined when there is no map or no mapping.
function sourcePosition(line, column) {
  const map = globalThis[SOURCE_MAP];
  if (!map) return undefined;
  decodedMap ??= decodeMappings(map.mappings);
  const segments = decodedMap[line - 1];
  if (!segments) return undefined;
  let best;
  for (const s of segments) {
    if (s.length >= 4 && s[0] <= column - 1) best = s;
    else if (s[0] > column - 1) break;
  }
  if (!best) return undefined;
  const file = map.sources[best[1]];
  return { file, line: best[2] + 1, column: best[3] + 1, sdk: map.sdk.includes(best[1]) };
}

// Source map v3 `mappings` (base64 VLQ) as absolute segments per line:
// [generated column, source index, source line, source column].
function decodeMappings(mappings) {
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const lines = [];
  let source = 0;
  let srcLine = 0;
  let srcCol = 0;
  for (const text of mappings.split(';')) {
    const segments = [];
    let genCol = 0;
    for (const seg of text.split(',')) {
      if (!seg) continue;
      const values = [];
      let value = 0;
      let shift = 0;
      for (const ch of seg) {
        const digit = B64.indexOf(ch);
        value += (digit & 31) << shift;
        if (digit & 32) {
          shift += 5;
        } else {
          values.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      genCol += values[0];
      if (values.length >= 4) {
        source += values[1];
        srcLine += values[2];
        srcCol += values[3];
        segments.push([genCol, source, srcLine, srcCol]);
      } else {
        segments.push([genCol]);
      }
    }
    lines.push(segments);
  }
  return lines;
}

// Run a host import; turn its `job-error` into a HostError.
function call(f) {
  try {
    return f();
  } catch (e) {
    const payload = e && typeof e === 'object' ? e.payload : undefined;
    if (payload && HOST_ERROR_KINDS.includes(payload.tag)) {
      throw new HostError(payload.tag, payload.val ?? '');
    }
    throw e;
  }
}

// JSON that does not fit will not fit on a retry either: unrecoverable, with
// the Rust SDK's "invalid JSON: ..." reason.
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw JobError.unrecoverable(`invalid JSON: ${errorText(e)}`);
  }
}

function toJson(value) {
  let json;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw JobError.unrecoverable(`invalid JSON: ${errorText(e)}`);
  }
  return json === undefined ? 'null' : json;
}

/**
 * For processors that must read and write JSON exactly as a Rust processor
 * does with serde_json (the example plugins, compared by one conformance
 * suite): the JavaScript twin of the Go SDK's `serdejson` package.
 */
export const serdejson = Object.freeze({
  /** serde's name for a value in its errors ("integer `3`", "string \"x\"", "map", ...). */
  describe: serdeDescribe,
  /**
   * A copy with every object's keys in serde_json's order (sorted by code
   * point), as a Rust `serde_json::Value` writes them. (JavaScript always
   * puts integer-like keys such as "2" first; only those can differ.)
   */
  sortKeys,
});

function serdeDescribe(v) {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer \`${v}\`` : `floating point \`${v}\``;
  if (typeof v === 'string') return `string ${JSON.stringify(v)}`;
  return Array.isArray(v) ? 'sequence' : 'map';
}

/** @returns {any} */
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(
    Object.keys(v)
      .sort(byCodePoint)
      .map((k) => [k, sortKeys(v[k])]),
  );
}

/** @param {string} a @param {string} b */
function byCodePoint(a, b) {
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = /** @type {number} */ (a.codePointAt(i));
    const y = /** @type {number} */ (b.codePointAt(j));
    if (x !== y) return x - y;
    i += x > 0xffff ? 2 : 1;
    j += y > 0xffff ? 2 : 1;
  }
  return a.length - i - (b.length - j);
}

function toU64(n, what) {
  if (typeof n === 'bigint') {
    if (n < 0n || n >= 1n << 64n) throw new RangeError(`${what} must fit in a u64, got ${n}`);
    return n;
  }
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0 || n >= 2 ** 64) {
    throw new RangeError(`${what} must be a non-negative number of milliseconds below 2^64, got ${describe(n)}`);
  }
  return BigInt(Math.trunc(n));
}

function errorText(e) {
  if (e instanceof Error) return e.message;
  try {
    return typeof e === 'string' ? e : JSON.stringify(e) ?? String(e);
  } catch {
    return String(e);
  }
}

function describe(v) {
  if (v === null) return 'null';
  if (typeof v === 'object') return v.constructor ? `a ${v.constructor.name}` : 'an object';
  return `${typeof v} ${String(v)}`;
}

// At build time (componentize-js snapshots the engine after the modules'
// top level ran) run the SDK's own per-call path once on a made-up job, so
// the shapes and lazily made builtins it needs are in the snapshot rather
// than made again by every fresh instance. No processor code and no host
// call runs here. bin/warm-bindings.js does the same for the bindings.
if (inComponent) {
  try {
    const job = new Job({
      id: '1', name: 'warm', queue: 'warm', data: '{"a":[1,"b",null,true,{"c":2.5}]}', opts: '{}',
      attemptsMade: 0, attemptsStarted: 1, timestamp: 0n, progress: '0', parent: undefined,
    });
    const text = `${job.id} (${job.name}) ${job.queue} ${job.attemptsMade} ${job.attemptsStarted} ${job.timestamp}`;
    finished(Outcome.completeJson(job.dataJson));
    finished({ text, data: job.data(), parent: job.parent(), progress: toJson(100) });
  } catch {
    // A warm-up that fails costs speed, never the build.
  }
}
