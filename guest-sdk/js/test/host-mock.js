// A stand-in for the host interface `bullpen:processor/job-context@0.1.0`,
// shaped as componentize-js 0.23 binds it: u64 as BigInt, and a refused call
// throws an Error whose `payload` is the `job-error` variant ({tag, val}).
export const calls = [];
export const replies = {};

function hostCall(name, args) {
  calls.push([name, ...args]);
  const r = replies[name];
  if (r && r.error) {
    const e = new Error(`${String(r.error)} (see error.payload)`);
    Object.defineProperty(e, 'payload', { value: r.error, enumerable: true });
    throw e;
  }
  return r ? r.value : undefined;
}

export const updateData = (data) => hostCall('updateData', [data]);
export const updateProgress = (progress) => hostCall('updateProgress', [progress]);
export const log = (line) => hostCall('log', [line]);
export const moveToDelayed = (ts) => hostCall('moveToDelayed', [ts]);
export const rateLimit = (ms) => hostCall('rateLimit', [ms]);
export const moveToWait = () => hostCall('moveToWait', []);
export const addChild = (queue, name, data, opts) => hostCall('addChild', [queue, name, data, opts]);
export const waitForChildren = () => hostCall('waitForChildren', []);
export const childrenValues = () => hostCall('childrenValues', []);
export const setStacktrace = (stack) => hostCall('setStacktrace', [stack]);
