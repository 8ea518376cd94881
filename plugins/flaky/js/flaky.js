// @ts-check
// flaky: misbehaves on purpose, to exercise retries, unrecoverable
// failures, traps, retry delays and lost locks. The JavaScript twin of
// plugins/flaky/rust: same reasons, log lines, data writes and return values.
// Fields of `data`:
//
// - `failTimes: n` — fail retryably while `attemptsMade < n`
// - `retryAfterMs: ms` — those failures ask for their own delay (Celery's countdown)
// - `fatal: true` — fail unrecoverably
// - `panic: true` — panic (the SDK's `panic`: a trap, like a Rust panic)
// - `plainError: true` — throw a plain `Error`: a retryable failure whose
//   failedReason is its message and whose stacktrace names this file's line
// - `sleepMs: ms` — sleep first, then write `touchedOnAttempt` into the data
//   (a host call that fails with lock-lost if the lock was taken meanwhile)
// - `returnChildren: true` — include the children's return values (flows)
//
// It also exports a custom backoff: job opts `backoff: {type: "linear"}`
// retry after 300 ms × attempts made; `{type: "never"}` gives up.
import { Backoff, JobError, exportProcessor, Outcome, panic, serdejson } from 'bullpen-guest';

/** @param {import('bullpen-guest').Job} job */
async function handle(job) {
  const data = parseData(job.data());
  const attempt = job.attemptsMade + 1;
  if (data.sleepMs > 0) {
    await new Promise((resolve) => setTimeout(resolve, data.sleepMs));
    job.updateData(serdejson.sortKeys({ ...job.data(), touchedOnAttempt: attempt }));
  }
  if (data.panic) {
    panic(`flaky: asked to panic on attempt ${attempt}`);
  }
  if (data.plainError) {
    throw new Error(`flaky: plain error on attempt ${attempt}`);
  }
  if (data.fatal) {
    throw JobError.unrecoverable(`flaky: fatal error on attempt ${attempt}`);
  }
  if (job.attemptsMade < data.failTimes) {
    const reason = `flaky: failing attempt ${attempt} of ${data.failTimes}`;
    throw data.retryAfterMs === null ? JobError.retry(reason) : JobError.retryAfter(reason, data.retryAfterMs);
  }
  job.log(`flaky: succeeded on attempt ${attempt}`);
  /** @type {Record<string, unknown>} */
  const out = { succeededOnAttempt: attempt };
  if (data.returnChildren) {
    out.children = Object.fromEntries(job.childrenValues());
  }
  return Outcome.complete(serdejson.sortKeys(out));
}

/**
 * @param {string} strategy
 * @param {number} attemptsMade
 * @returns {Backoff}
 */
function strategy(strategy, attemptsMade) {
  switch (strategy) {
    case 'linear':
      return Backoff.delayMs(300 * attemptsMade);
    case 'never':
      return Backoff.giveUp;
    default:
      return Backoff.delayMs(0);
  }
}

export const { process, backoff } = exportProcessor(handle, { backoff: strategy });

// --- the Rust plugin's `Data` (serde, every field defaulted) ----------------

const FIELDS = /** @type {const} */ ({
  failTimes: ['u32', 0],
  retryAfterMs: ['option u64', null],
  fatal: ['bool', false],
  panic: ['bool', false],
  plainError: ['bool', false],
  sleepMs: ['u64', 0],
  returnChildren: ['bool', false],
});

/**
 * The fields above with their defaults; other fields are ignored. Refuses
 * what serde refuses (a failTimes of "three", a negative sleepMs, ...), with
 * serde's words, as an unrecoverable "unexpected JSON shape: ..." failure.
 * @returns {{ failTimes: number, retryAfterMs: number | null, fatal: boolean, panic: boolean, plainError: boolean, sleepMs: number, returnChildren: boolean }}
 */
function parseData(raw) {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalid(`invalid type: ${serdejson.describe(raw)}, expected struct Data`);
  }
  /** @type {any} */
  const data = {};
  for (const [key, [type, dflt]] of Object.entries(FIELDS)) {
    const v = raw[key];
    if (v === undefined || (v === null && type === 'option u64')) {
      data[key] = dflt;
    } else if (type === 'bool') {
      if (typeof v !== 'boolean') throw invalid(`invalid type: ${serdejson.describe(v)}, expected a boolean`);
      data[key] = v;
    } else {
      const want = type === 'u32' ? 'u32' : 'u64';
      if (typeof v !== 'number' || !Number.isInteger(v)) throw invalid(`invalid type: ${serdejson.describe(v)}, expected ${want}`);
      if (v < 0 || v > (want === 'u32' ? 0xffffffff : 18446744073709551615)) throw invalid(`invalid value: integer \`${v}\`, expected ${want}`);
      data[key] = v;
    }
  }
  return data;
}

function invalid(msg) {
  return JobError.unrecoverable(`unexpected JSON shape: ${msg}`);
}
