// `node --test` on the build machine: bullpen-guest/testing's in-memory job context.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestJob } from 'bullpen-guest/testing';
import { process } from './echo.js';

test('returns its data after a log line and progress 100', async () => {
  const data = { to: 'a@b.c', n: [1, 2] };
  const run = await new TestJob(data, { id: '7', name: 'welcome' }).run(process);
  assert.deepEqual(run.outcome, { kind: 'completed', value: data });
  assert.deepEqual(run.calls, [
    { name: 'log', args: ['echo: job 7 (welcome)'] },
    { name: 'update-progress', args: [100] },
  ]);
});
