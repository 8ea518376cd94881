// `node --test` on the build machine: each attempt of the step pattern run
// against bullpen-guest/testing's in-memory job context, the next one on the
// data the previous one left.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestJob } from 'bullpen-guest/testing';
import { process } from './steps.js';

test('walks the steps across attempts', async () => {
  const first = await new TestJob({ keep: 1 }, { id: '9' }).run(process);
  assert.deepEqual(first.outcome, { kind: 'moved', to: 'delayed' });
  assert.deepEqual(
    first.calls.filter((c) => c.name === 'log').map((c) => c.args[0]),
    ['steps: Initial', 'steps: Second'],
  );
  assert.deepEqual(
    first.calls.map((c) => c.name),
    ['log', 'update-data', 'log', 'update-data', 'move-to-delayed'],
  );
  assert.deepEqual(first.data, { step: 'Third', keep: 1 });

  const third = await new TestJob(first.data, { id: '9' }).run(process);
  assert.deepEqual(third.outcome, { kind: 'moved', to: 'waiting-children' });
  const children = third.calls.filter((c) => c.name === 'add-child');
  assert.equal(children.length, 2);
  assert.deepEqual(children[0].args, ['test-children', 'child', { child: 1, parent: '9' }, { jobId: '9-child-1' }]);

  const values = [
    ['bull:test-children:9-child-2', 2],
    ['bull:test-children:9-child-1', 1],
  ];
  const last = await new TestJob(third.data, { id: '9', childrenValues: values }).run(process);
  assert.deepEqual(last.outcome, {
    kind: 'completed',
    value: { step: 'Finish', children: { 'bull:test-children:9-child-1': 1, 'bull:test-children:9-child-2': 2 } },
  });
});

test('an injected failure retries on the first attempt only', async () => {
  const run = await new TestJob({ failAt: 'Second', step: 'Second' }).run(process);
  assert.equal(run.outcome.kind, 'failed');
  assert.equal(run.outcome.failure, 'retry');
  assert.equal(run.outcome.reason, 'steps: injected failure at Second');
  assert.match(run.outcome.stack, /steps\.js:\d+:\d+/);
  const again = await new TestJob({ failAt: 'Second', step: 'Second' }, { attemptsMade: 1 }).run(process);
  assert.deepEqual(again.outcome, { kind: 'moved', to: 'delayed' });
});
