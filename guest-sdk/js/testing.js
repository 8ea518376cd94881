// bullpen-guest/testing: unit-test a processor with `node --test` on the
// build machine: no Redis, no WebAssembly.
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import { TestJob } from 'bullpen-guest/testing';
//   import { process } from './index.js';
//
//   test('sends', async () => {
//     const run = await new TestJob({ to: 'a@b.c' }).run(process);
//     assert.deepEqual(run.outcome, { kind: 'completed', value: { sent: true } });
//     assert.deepEqual(run.calls[0], { name: 'log', args: ['sending to a@b.c'] });
//   });
//
// `run(process)` takes the `process` your module exports (from
// `exportProcessor`), calls it once with the job against an in-memory job
// context, and resolves to a TestRun: the `outcome` and the host `calls` it
// made, named by their WIT functions (update-data, update-progress, log,
// move-to-delayed, rate-limit, move-to-wait, add-child, wait-for-children,
// children-values), with their arguments (JSON text parsed). The job
// answers as `bullpen run` does: update-data changes `run.data`, a move ends
// the attempt (a second is refused with wrong-state), wait-for-children is
// true when children were added in this run or `pendingChildren` is set.
// Outbound HTTP is not available. Under Node the SDK's host imports resolve
// here (package.json "imports": `#host`), so the processor module is the
// one bullpen-build bundles, unchanged.
import { current } from './testing-host.js';

export class TestJob {
  /**
   * @param {unknown} data the job data (serialised with JSON.stringify)
   * @param {{ name?: string, id?: string, queue?: string, attemptsMade?: number,
   *   opts?: object, variables?: Record<string, string>,
   *   childrenValues?: Array<[string, unknown]>, pendingChildren?: boolean }} [options]
   */
  constructor(data, options = {}) {
    this.dataJson = JSON.stringify(data);
    this.name = options.name ?? 'test';
    this.id = options.id ?? '1';
    this.queue = options.queue ?? 'test';
    this.attemptsMade = options.attemptsMade ?? 0;
    this.opts = options.opts ?? {};
    this.variables = options.variables ?? {};
    this.childrenValues = options.childrenValues ?? [];
    this.pendingChildren = options.pendingChildren ?? false;
  }

  /** A job whose data is this JSON text, as stored in Redis. */
  static fromJson(text, options = {}) {
    const job = new TestJob(null, options);
    job.dataJson = String(text);
    return job;
  }

  /**
   * Run `process` (the module's export) once on this job.
   * @returns {Promise<{ outcome: object, calls: Array<{ name: string, args: unknown[] }>, data: unknown }>}
   */
  async run(process) {
    if (typeof process !== 'function') throw new TypeError('run(process): pass the `process` your module exports');
    const state = { job: this, calls: [], data: this.dataJson, moved: null, children: 0, stack: undefined };
    if (current.run) throw new Error('TestJob.run: another run is in progress (await each run)');
    current.run = state;
    let result;
    try {
      result = await process({
        id: this.id,
        name: this.name,
        queue: this.queue,
        data: this.dataJson,
        opts: JSON.stringify(this.opts),
        attemptsMade: this.attemptsMade,
        attemptsStarted: this.attemptsMade + 1,
        timestamp: 0n,
        progress: '0',
        parent: undefined,
      });
    } finally {
      current.run = null;
    }
    let outcome;
    if (result.tag === 'ok' && result.val.tag === 'completed') {
      outcome = { kind: 'completed', value: JSON.parse(result.val.val) };
    } else if (result.tag === 'ok') {
      outcome = state.moved
        ? { kind: 'moved', to: state.moved }
        : { kind: 'failed', failure: 'retry', reason: 'processor returned `moved` but no host call moved the job' };
    } else {
      const f = result.val;
      outcome =
        f.tag === 'retry-after'
          ? { kind: 'failed', failure: f.tag, reason: f.val.reason, delayMs: Number(f.val.delayMs), stack: state.stack }
          : { kind: 'failed', failure: f.tag, reason: f.val, stack: state.stack };
    }
    return { outcome, calls: state.calls, data: JSON.parse(state.data) };
  }
}
