// Typings for bullpen-guest: write bullpen job processors in JavaScript.
// The API mirrors the Rust SDK (guest-sdk/rust) in camelCase.

/** Why the host refused a call (the WIT `job-error` variant). */
export type HostErrorKind = 'lock-lost' | 'wrong-state' | 'invalid' | 'unavailable';

/**
 * A host call was refused. Thrown by the `Job` methods that call the host.
 * Escaping `process`, it fails the attempt retryably with its message; after
 * `lock-lost` the host writes nothing at all (the job's new owner will).
 */
export class HostError extends Error {
  private constructor(kind: HostErrorKind, detail?: string);
  readonly name: 'HostError';
  /** Why the call was refused. */
  readonly kind: HostErrorKind;
  /** The host's text ('' for lock-lost). */
  readonly detail: string;
  /** True when the worker lost the job's lock: stop and return (or rethrow). */
  isLockLost(): boolean;
}

/** How a failure thrown from `process` ends the attempt (the WIT `failure` variant). */
export type FailureKind = 'retry' | 'retry-after' | 'unrecoverable';

/**
 * Why an attempt failed, when it is not a plain retry: throw one from
 * `process`. Anything else thrown (`throw new Error('SMTP server said 550')`)
 * is a retry with its message as the failedReason, as in a Node BullMQ
 * worker. Either way the error's stack, mapped to your source files, is the
 * job's `stacktrace` entry. Every failure counts as an attempt.
 */
export class JobError extends Error {
  private constructor(kind: FailureKind, reason: string, delayMs?: bigint);
  readonly name: 'JobError';
  readonly kind: FailureKind;
  /** The failedReason recorded for the attempt (same as `message`). */
  readonly reason: string;
  /** For 'retry-after': milliseconds until the job may run again. */
  readonly delayMs: bigint | undefined;
  /** Retry per the job's `attempts`/`backoff`; else fail with this reason. */
  static retry(reason: string): JobError;
  /** Retry after `delayMs` (the guest's own countdown), if attempts remain; else fail with this reason. */
  static retryAfter(reason: string, delayMs: number | bigint): JobError;
  /** Fail now, whatever `attempts` says (BullMQ's UnrecoverableError). */
  static unrecoverable(reason: string): JobError;
  /** Always false. */
  isLockLost(): false;
}

/**
 * End the attempt as a trap, as a Rust `panic!` or a Go `panic` does: a bug,
 * not a failure. The instance is thrown away (even with --instance-reuse),
 * the failedReason is `wasm trap: ... (guest panicked: <message>; ...)`, and
 * retries apply.
 */
export function panic(message: string): never;

/** How a successful attempt ended. */
export class Outcome {
  private constructor(kind: 'completed' | 'moved', json?: string);
  readonly kind: 'completed' | 'moved';
  /** For 'completed': the return value as JSON text. */
  readonly json: string | undefined;
  /**
   * Complete the job with `value` (JSON.stringify; undefined = null) as its
   * return value. Throws an unrecoverable JobError if it cannot be serialised.
   */
  static complete(value: unknown): Outcome;
  /** Complete the job with a return value that is already JSON text. */
  static completeJson(text: string): Outcome;
  /** A host call already moved the job (delayUntil, rateLimit, moveToWait, waitForChildren): return this. */
  static readonly moved: Outcome;
}

/** What a custom backoff strategy decides after a retryable failure. */
export class Backoff {
  private constructor(kind: 'delay-ms' | 'give-up', ms?: bigint);
  readonly kind: 'delay-ms' | 'give-up';
  readonly ms: bigint | undefined;
  /** Retry after `ms` milliseconds (0 = at once). */
  static delayMs(ms: number | bigint): Backoff;
  /** Do not retry: fail the job now (BullMQ's custom backoff `-1`). */
  static readonly giveUp: Backoff;
}

/** The parent of a child job in a flow. */
export interface ParentRef {
  /** The parent's job id. */
  id: string;
  /** The parent's queue name (without the key prefix). */
  queue: string;
}

/**
 * The job being processed: a snapshot taken when the attempt started, plus
 * the host calls that act on it. Host calls throw `HostError` when refused;
 * JSON that cannot be (de)serialised throws an unrecoverable `JobError`
 * ("invalid JSON: ...").
 */
export class Job {
  private constructor(inner: unknown);
  /** The BullMQ job id. */
  readonly id: string;
  /** The job name given by the producer. */
  readonly name: string;
  /** The queue the job came from. */
  readonly queue: string;
  /** The job data as JSON text, exactly as stored in Redis. */
  readonly dataJson: string;
  /** The job options as JSON text (BullMQ field names). */
  readonly optsJson: string;
  /** Attempts that ended before this one (BullMQ `attemptsMade`). 0 on the first attempt. */
  readonly attemptsMade: number;
  /** Times the job was started, this one included (`attemptsStarted`). */
  readonly attemptsStarted: number;
  /** When the job was added, ms since the Unix epoch. */
  readonly timestamp: number;
  /** The last reported progress as JSON text (`0` if none). */
  readonly progressJson: string;
  /** The job data, parsed (a fresh copy on every call). */
  data<T = any>(): T;
  /** The parent job, or null when this job is not a child in a flow. */
  parent(): ParentRef | null;
  /** Replace the job's data (seen by later attempts): the step pattern's memory. */
  updateData(value: unknown): void;
  /** Report progress: a number or any JSON value. Emits BullMQ's `progress` event. */
  progress(value: unknown): void;
  /** Append a line to the job's BullMQ log. */
  log(line: string): void;
  /**
   * Delay the job until `timestampMs` (ms since the Unix epoch) and end the
   * attempt: return the `Outcome.moved` this gives. `attemptsMade` does not grow.
   */
  delayUntil(timestampMs: number | bigint): Outcome;
  /**
   * Rate-limit this job's queue for every worker for `delayMs` (Node's
   * `worker.rateLimit(ms)` + `Worker.RateLimitError`), put the job back in
   * wait and end the attempt: return the `Outcome.moved` this gives.
   * `attemptsMade` does not grow. `delayMs` must be at least 1.
   */
  rateLimit(delayMs: number | bigint): Outcome;
  /**
   * Put the job back in wait, without a delay (BullMQ's `job.moveToWait(token)`
   * + `WaitingError`), and end the attempt: return the `Outcome.moved` this
   * gives. `attemptsMade` does not grow.
   */
  moveToWait(): Outcome;
  /**
   * Add a child job to `queue` whose parent is this job; returns its id.
   * `opts` are BullMQ job options (e.g. `{ jobId: 'parent-step-1' }`).
   */
  addChild(queue: string, name: string, data: unknown, opts?: Record<string, unknown> | null): string;
  /**
   * `Outcome.moved` when the job now waits for pending children (return it);
   * null when no child is pending (carry on).
   */
  waitForChildren(): Outcome | null;
  /** The return values of completed children as `[childKey, value]` pairs (key `prefix:queue:id`). */
  childrenValues(): Array<[string, any]>;
}

/** A processor: an Outcome, or any other value as the job's return value, or a Promise of either. */
export type ProcessFn = (job: Job) => unknown;

/** A custom backoff strategy; `attemptsMade` counts the attempt that just failed. */
export type BackoffFn = (strategy: string, attemptsMade: number, reason: string, job: Job) => Backoff | Promise<Backoff>;

/** What the entry module must export (the component's WIT exports). */
export interface ProcessorExports {
  process: (job: unknown) => Promise<unknown>;
}
export interface ProcessorWithBackoffExports extends ProcessorExports {
  backoff: (strategy: string, attemptsMade: number, reason: string, job: unknown) => Promise<unknown>;
}

/**
 * Make the exports of a processor component. The entry module must export
 * what this returns:
 *
 *   export const { process } = exportProcessor(handle);
 *   export const { process, backoff } = exportProcessor(handle, { backoff: strategy });
 *
 * `process` fails the attempt by throwing, as in a Node BullMQ worker: a
 * `JobError` as it says; anything else (a plain `Error`, a `HostError`, an
 * `HttpError` from `fetch`) retryably, with its message as the failedReason.
 * The error's stack, mapped to your source files, is the job's `stacktrace`
 * entry. `panic(message)` makes the attempt trap instead.
 */
export function exportProcessor(process: ProcessFn): ProcessorExports;
export function exportProcessor(process: ProcessFn, options: { backoff: BackoffFn }): ProcessorWithBackoffExports;
export function exportProcessor(process: ProcessFn, options?: { backoff?: BackoffFn }): ProcessorExports;

/**
 * The queue's variable `name` (`--var`, `--var-env`, `[queues.variables]` in
 * bullpen.toml): configuration and secrets; a guest reads only its own
 * queue's. Missing, it throws an unrecoverable `JobError` naming the
 * variable and how to set it; a store that cannot be read, a retryable one.
 */
export function variable(name: string): string;

/**
 * Why a `fetch` got no response: it rejects with one. The global `fetch` is
 * the SDK's, over wasi:http: the host sends only to origins the queue grants
 * (`--allow-outbound`), follows no redirects (a 3xx is returned), and bounds
 * every wait by the attempt's `--timeout-ms`; `fetch` resolves once the whole
 * body is read (capped by `--max-http-response-mb`). A `TypeError`, as fetch's
 * network errors are; escaping `process`, it fails the attempt retryably
 * with its message (the Rust SDK's `HttpError` texts).
 */
export class HttpError extends TypeError {
  private constructor(message: string, origin?: string, denied?: boolean, code?: string);
  readonly name: 'HttpError';
  /** The request's `scheme://host[:port]` (never its path or query). */
  readonly origin: string;
  /**
   * True when the host refused it before it left: not in the queue's
   * `--allow-outbound`, or the SSRF rule (a name resolving to a private address).
   */
  readonly denied: boolean;
  /** The wasi:http `error-code` tag (e.g. 'HTTP-request-denied', 'connection-refused'), when there was one. */
  readonly code: string | undefined;
}

/**
 * For processors that must read and write JSON exactly as a Rust processor
 * does with serde_json: the JavaScript twin of the Go SDK's `serdejson`.
 */
export declare const serdejson: {
  /** serde's name for a value in its errors: integer `3`, string "x", map, ... */
  describe(value: unknown): string;
  /** A copy with every object's keys in serde_json's order (sorted by code point). */
  sortKeys<T>(value: T): T;
};
