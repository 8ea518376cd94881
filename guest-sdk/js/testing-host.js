// The job context of bullpen-guest/testing (testing.js): `#host` under Node.
// Each call is recorded under its WIT name and answered from the job that
// TestJob.run set, as `bullpen run` answers; a refused call throws what
// componentize-js throws (an Error whose `payload` is the job-error variant).

/** The current run's state (set by testing.js). */
export const current = { run: null };

function state() {
  if (!current.run) {
    throw new Error('a job-context call outside TestJob.run (bullpen-guest/testing): host calls work only in a component or a test run');
  }
  return current.run;
}

function refuse(tag, val) {
  const e = new Error(`${tag}: ${val}`);
  Object.defineProperty(e, 'payload', { value: { tag, val } });
  return e;
}

function json(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw refuse('invalid', `not valid JSON: ${e.message}`);
  }
}

function record(name, args) {
  state().calls.push({ name, args });
}

function move(to) {
  const s = state();
  if (s.moved) throw refuse('wrong-state', 'the job was already moved in this attempt');
  s.moved = to;
}

export const host = {
  updateData(data) {
    const v = json(data);
    record('update-data', [v]);
    state().data = data;
  },
  updateProgress(progress) {
    record('update-progress', [json(progress)]);
  },
  log(line) {
    record('log', [line]);
  },
  moveToDelayed(ts) {
    record('move-to-delayed', [Number(ts)]);
    move('delayed');
  },
  rateLimit(ms) {
    record('rate-limit', [Number(ms)]);
    if (ms === 0n) throw refuse('invalid', 'rate-limit delay-ms is 0; it must be at least 1');
    move('wait');
  },
  moveToWait() {
    record('move-to-wait', []);
    move('wait');
  },
  addChild(queue, name, data, opts) {
    const d = json(data);
    const o = opts === '' ? null : json(opts);
    record('add-child', [queue, name, d, o]);
    const s = state();
    s.children += 1;
    return o && typeof o.jobId === 'string' ? o.jobId : `child-${s.children}`;
  },
  waitForChildren() {
    record('wait-for-children', []);
    const s = state();
    if (s.children === 0 && !s.job.pendingChildren) return false;
    move('waiting-children');
    return true;
  },
  childrenValues() {
    record('children-values', []);
    return state().job.childrenValues.map(([k, v]) => [k, JSON.stringify(v)]);
  },
  setStacktrace(stack) {
    state().stack = stack;
  },
};

export function getVariable(name) {
  const v = state().job.variables[name];
  return v === undefined ? undefined : String(v);
}

function noHttp() {
  throw new Error('outbound HTTP is not available in bullpen-guest/testing');
}
export const sendRequest = noHttp;
export const httpErrorCode = noHttp;
export class Fields {
  constructor() {
    noHttp();
  }
}
export const OutgoingRequest = Fields;
export const OutgoingBody = Fields;
export const inComponent = false;
