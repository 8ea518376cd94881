// bullpen-guest: write bullpen job processors in JavaScript.
//
// A processor is a function from a `Job` to an `Outcome` (or a plain value,
// the job's return value), compiled to a WebAssembly component with
// `bullpen-build` (bin/build.mjs, around componentize-js). bullpen runs it
// once per attempt, in a fresh instance, on jobs from a BullMQ queue.
//
//   import { exportProcessor, Outcome, BullpenError } from 'bullpen-guest';
//
//   export const { process } = exportProcessor((job) => {
//     const email = job.data();
//     job.log(`sending to ${email.to}`);
//     job.progress(50);
//     if (!email.to) throw BullpenError.unrecoverable('no recipient'); // no retries
//     return Outcome.complete({ sent: true });
//   });
//
// The API mirrors the Rust SDK (guest-sdk/rust) name for name, in camelCase,
// and so do its semantics: every host call is checked against the job's lock
// token by the host; a refused call throws a `HostError`, and a `HostError`
// that escapes `process` fails the attempt retryably with its message (after a
// lost lock the host writes nothing at all).

import * as host from 'bullpen:processor/job-context@0.1.0';

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

/** Why an attempt failed: throw one from `process`. */
export class BullpenError extends Error {
  constructor(kind, reason, delayMs) {
    super(String(reason));
    this.name = 'BullpenError';
    /** 'retry' | 'retry-after' | 'unrecoverable' */
    this.kind = kind;
    /** The failedReason recorded for the attempt (same as `message`). */
    this.reason = String(reason);
    /** For 'retry-after': milliseconds until the job may run again. */
    this.delayMs = delayMs;
  }

  /** Retry per the job's `attempts`/`backoff`; else fail with this reason. */
  static retry(reason) {
    return new BullpenError('retry', reason);
  }

  /** Retry after `delayMs` (the guest's own countdown), if attempts remain. */
  static retryAfter(reason, delayMs) {
    return new BullpenError('retry-after', reason, toU64(delayMs, 'delayMs'));
  }

  /** Fail now, whatever `attempts` says. */
  static unrecoverable(reason) {
    return new BullpenError('unrecoverable', reason);
  }

  /** Always false: a `BullpenError` is the guest's own decision. */
  isLockLost() {
    return false;
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
      throw BullpenError.unrecoverable(`return value is not serialisable: ${errorText(e)}`);
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
 * or a Promise of either. It fails the attempt by throwing: a `BullpenError`
 * fails it as it says; a `HostError` fails it retryably with its message.
 * Anything else thrown is a bug, as a Rust panic is: the attempt traps, its
 * message and stack go to the job log, and retries apply.
 */
export function exportProcessor(process, options = {}) {
  if (typeof process !== 'function') {
    throw new TypeError('exportProcessor: the first argument must be the process(job) function');
  }
  const exports = {
    async process(witJob) {
      const job = new Job(witJob);
      let outcome;
      try {
        const result = await process(job);
        outcome = result instanceof Outcome ? result : Outcome.complete(result);
      } catch (e) {
        return { tag: 'err', val: toFailure(e) };
      }
      return outcome.kind === 'moved'
        ? { tag: 'ok', val: { tag: 'moved' } }
        : { tag: 'ok', val: { tag: 'completed', val: outcome.json } };
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
        panic('backoff', e);
      }
      return decision.kind === 'give-up' ? { tag: 'give-up' } : { tag: 'delay-ms', val: decision.ms };
    };
  }
  return exports;
}

// --- internals -------------------------------------------------------------

// StarlingMonkey defines a global `fetch`, but bullpen-build compiles
// wasi:http out (guests get no network), and calling that `fetch` traps the
// instance with a bare `unreachable instruction executed`. Importing the SDK
// replaces it (bullpen-build evaluates the SDK before the processor and its
// other imports, so a library that keeps a reference to `fetch` gets this
// one): it rejects, as fetch does on a network error, with an unrecoverable
// BullpenError (no retry can bring a network): awaited in `process`, it fails
// the job with that reason; a guest may also catch it.
const NO_FETCH = 'fetch is not available in the bullpen sandbox: guests have no network access';
globalThis.fetch = function fetch() {
  return Promise.reject(BullpenError.unrecoverable(NO_FETCH));
};

// What `process` threw, as the WIT `failure` variant.
function toFailure(e) {
  if (e instanceof BullpenError) {
    switch (e.kind) {
      case 'retry':
        return { tag: 'retry', val: e.reason };
      case 'retry-after':
        return { tag: 'retry-after', val: { reason: e.reason, delayMs: e.delayMs } };
      case 'unrecoverable':
        return { tag: 'unrecoverable', val: e.reason };
    }
  }
  if (e instanceof HostError) {
    // As the Rust SDK: a host refusal fails the attempt retryably (and after
    // a lost lock the host ignores the failure and writes nothing).
    return { tag: 'retry', val: e.message };
  }
  panic('process', e);
}

// An exception that is not a failure is a bug, as a Rust panic is: report it
// on stderr (it lands in the job log, and the host puts the message in the
// failedReason, as it does for a Rust panic's) and trap.
function panic(where, e) {
  const msg = errorText(e);
  const at = e instanceof Error && typeof e.stack === 'string' ? firstFrame(e.stack) : where;
  console.error(`JavaScript exception in ${where}, panicked at ${at}:\n${msg}`);
  if (e instanceof Error && e.stack) console.error(`stack:\n${e.stack.trimEnd()}`);
  throw e instanceof Error ? e : new Error(msg);
}

function firstFrame(stack) {
  const line = stack.split('\n').find((l) => l.trim() !== '');
  return line ? line.trim().replace(/^[^@]*@/, '') : 'unknown location';
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
    throw BullpenError.unrecoverable(`invalid JSON: ${errorText(e)}`);
  }
}

function toJson(value) {
  let json;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw BullpenError.unrecoverable(`invalid JSON: ${errorText(e)}`);
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
