// @ts-check
// steps: the step-job pattern from BullMQ's "Process step jobs" guide.
// The JavaScript twin of plugins/steps/rust: same log lines, data writes,
// children and return value.
//
// Initial → (updateData step=Second) → Second → delayUntil(now+200 ms)
// → Third → add two children to `data.childQueue` (default
// `<queue>-children`) → waitForChildren → Finish, which returns the
// children's return values. The step lives in the job data, so a retry, a
// delay or a wait resumes where the job left off.
//
// `data.failAt = "<Step>"` injects one retryable failure on entering that
// step (on the first attempt only), to show a retry resumes at that step.
//
// `data.rateLimitMs = N` makes the job, on entering Second, rate-limit its
// queue for N ms (back to wait); `data.moveToWait = true` moves it back to
// wait there. Each option is taken out of the data first, so it happens
// once and the job then carries on from Second.
import { JobError, exportProcessor, Outcome, serdejson } from 'bullpen-guest';

const STEPS = ['Initial', 'Second', 'Third', 'Finish'];

/** @param {import('bullpen-guest').Job} job */
function handle(job) {
  const data = parseData(job.data());
  for (;;) {
    if (data.failAt === data.step && job.attemptsMade === 0) {
      throw JobError.retry(`steps: injected failure at ${data.step}`);
    }
    job.log(`steps: ${data.step}`);
    switch (data.step) {
      case 'Initial':
        data.step = 'Second';
        job.updateData(toJson(data));
        break;
      case 'Second':
        if ('rateLimitMs' in data.rest) {
          const ms = data.rest.rateLimitMs;
          delete data.rest.rateLimitMs;
          if (!Number.isSafeInteger(ms) || ms < 0) throw invalid('rateLimitMs is not a u64');
          job.updateData(toJson(data));
          return job.rateLimit(ms);
        }
        if ('moveToWait' in data.rest) {
          delete data.rest.moveToWait;
          job.updateData(toJson(data));
          return job.moveToWait();
        }
        data.step = 'Third';
        job.updateData(toJson(data));
        return job.delayUntil(Date.now() + 200);
      case 'Third': {
        const queue = data.childQueue ?? `${job.queue}-children`;
        for (const i of [1, 2]) {
          // An id derived from the parent and the step: a retried step finds
          // its child instead of adding a second one.
          job.addChild(queue, 'child', { child: i, parent: job.id }, { jobId: `${job.id}-child-${i}` });
        }
        data.step = 'Finish';
        job.updateData(toJson(data));
        const moved = job.waitForChildren();
        if (moved) return moved;
        break;
      }
      case 'Finish': {
        // sortKeys puts the children in serde_json's key order too.
        const children = Object.fromEntries(job.childrenValues());
        return Outcome.complete(serdejson.sortKeys({ step: 'Finish', children }));
      }
    }
  }
}

export const { process } = exportProcessor(handle);

// --- the Rust plugin's `Data` (serde), field for field ----------------------

/**
 * @typedef {{ step: string, childQueue: string | null, failAt: string | null, rest: Record<string, unknown> }} Data
 */

/**
 * `step` (default Initial), `childQueue` and `failAt` (null = absent), and
 * whatever else the producer put in the data, kept as it is. Refuses what
 * serde refuses, with serde's words.
 * @returns {Data}
 */
function parseData(raw) {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalid(`invalid type: ${serdejson.describe(raw)}, expected struct Data`);
  }
  const { step = 'Initial', childQueue = null, failAt = null, ...rest } = raw;
  if (childQueue !== null && typeof childQueue !== 'string') {
    throw invalid(`invalid type: ${serdejson.describe(childQueue)}, expected a string`);
  }
  return { step: parseStep(step), childQueue, failAt: failAt === null ? null : parseStep(failAt), rest };
}

function parseStep(v) {
  if (typeof v !== 'string') throw invalid(`invalid type: ${serdejson.describe(v)}, expected enum Step`);
  if (!STEPS.includes(v)) throw invalid(`unknown variant \`${v}\`, expected one of ${STEPS.map((s) => `\`${s}\``).join(', ')}`);
  return v;
}

/**
 * What serde writes for `Data`: step, childQueue and failAt when set, then the
 * other fields in serde_json's (sorted) key order.
 * @param {Data} d
 */
function toJson(d) {
  return {
    step: d.step,
    ...(d.childQueue !== null && { childQueue: d.childQueue }),
    ...(d.failAt !== null && { failAt: d.failAt }),
    ...serdejson.sortKeys(d.rest),
  };
}

function invalid(msg) {
  return JobError.unrecoverable(`unexpected JSON shape: ${msg}`);
}
