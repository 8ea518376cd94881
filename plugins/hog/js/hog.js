// @ts-check
// hog: abuses the sandbox on purpose; `data.mode` picks the abuse. The
// JavaScript twin of plugins/hog/rust: the same modes, return values and log
// lines, except where JavaScript in this sandbox has no API for the abuse
// (noted below).
//
// - `loop`: spins forever (stopped by the wall-clock limit)
// - `memory`: grows memory without bound (stopped by the memory cap)
// - `output`: writes ~8 MiB to stdout, then completes (the log keeps a bounded part)
// - `recursion`: recurses without bound; SpiderMonkey throws
//   `InternalError: too much recursion`, which hog turns into a panic (the
//   SDK's `panic`: a trap naming the message), as the stack running out is
//   a trap in Rust and Go
// - `file` / `net` / `env`: JavaScript here has no API for a file, a socket,
//   the environment or the arguments (StarlingMonkey has none), so each
//   completes with a value saying so, in the Rust plugin's shape of a failed
//   Result: `{"file": {"Err": "..."}}`, `{"args": {"Err": "..."}, "env":
//   {"Err": "..."}}`. `net` also calls the global `fetch` (the SDK's, over
//   wasi:http: refused unless the queue grants the origin with
//   --allow-outbound) and reports its error too:
//   `{"net": {"Err": "..."}, "fetch": {"Err": "<its message>"}}`
// - `biglog` / `bigprogress` / `bigdata`: a 100 KiB log line, a 100 KiB
//   progress value, 17 MiB of data; completes with the host's answers
// - `bigreturn`: returns 17 MiB (over the host's return-value limit)
//   (`bigdata` and `bigreturn` need a memory cap of about 160 MiB: under the
//   default 128 MiB, JSON.stringify of 17 MiB runs the engine out of memory
//   before the host sees the value, `{"refused": "invalid JSON: out of
//   memory"}` and `return value is not serialisable: out of memory`)
// - `slow`: three steps of log line + progress (10, 20, 30), each followed
//   by 400 ms of waiting: sleeping (setTimeout, a WASI poll) in steps 1 and 3,
//   spinning in wasm in step 2; shows pending writes reaching Redis mid-attempt
// - `count`: prints and returns how many jobs this instance has processed
//   (always 1 with a fresh instance per attempt; counts up with
//   `--instance-reuse`)
// - `entropy`: returns what a fresh instance must draw anew (the engine is
//   snapshotted at build time): `crypto` (16 bytes of
//   crypto.getRandomValues, hex), `math` (Math.random()), `nowMs` (Date.now())
// - anything else: completes with `{"ok": true}`
//
// Data without a string `mode` fails unrecoverably with serde's words
// ("unexpected JSON shape: missing field `mode`", without serde's line and column).
import { JobError, exportProcessor, HostError, Outcome, panic, serdejson } from 'bullpen-guest';

const NO_API = 'JavaScript in the bullpen sandbox (StarlingMonkey) has no';

/** Keeps the engine from dropping work whose result is unused (Rust's black_box). */
let sink;

/** Jobs this instance has processed: state that outlives a job only when the host reuses the instance. */
let processed = 0;

/** @param {import('bullpen-guest').Job} job */
async function handle(job) {
  const n = ++processed;
  const mode = parseMode(job.data());
  switch (mode) {
    case 'loop': {
      let x = 0;
      for (;;) {
        x = (x + 1) | 0;
        sink = x;
      }
    }
    case 'memory': {
      const hoard = [];
      for (;;) {
        hoard.push(new Uint8Array(1 << 20).fill(1));
        sink = hoard;
      }
    }
    case 'output': {
      const line = 'hog: flooding stdout '.repeat(4);
      for (let i = 0; i < 100_000; i++) {
        console.log(`${i} ${line}`);
      }
      return Outcome.complete({ printed: 100_000 });
    }
    case 'recursion':
      try {
        return Outcome.complete({ depth: recurse(0, []) });
      } catch (e) {
        return panic(e instanceof Error ? e.message : String(e));
      }
    case 'file':
      return Outcome.complete({ file: { Err: `${NO_API} file system API: cannot read /etc/passwd` } });
    case 'net': {
      let fetched;
      try {
        const res = await fetch('http://127.0.0.1:6379/');
        fetched = { Ok: `status ${res.status}` };
      } catch (e) {
        fetched = { Err: e instanceof Error ? e.message : String(e) };
      }
      return Outcome.complete({ net: { Err: `${NO_API} socket API: cannot connect to 127.0.0.1:6379` }, fetch: fetched });
    }
    case 'env':
      return Outcome.complete({
        args: { Err: `${NO_API} API for program arguments` },
        env: { Err: `${NO_API} API for environment variables` },
      });
    case 'biglog':
    case 'bigprogress':
    case 'bigdata': {
      let refused = null;
      try {
        if (mode === 'biglog') job.log('x'.repeat(100 << 10));
        else if (mode === 'bigprogress') job.progress('x'.repeat(100 << 10));
        else job.updateData({ blob: 'x'.repeat(17 << 20) });
      } catch (e) {
        if (!(e instanceof HostError || e instanceof JobError)) throw e;
        refused = e.message;
      }
      return Outcome.complete({ refused });
    }
    case 'bigreturn':
      return Outcome.complete({ blob: 'x'.repeat(17 << 20) });
    case 'slow': {
      for (let step = 1; step <= 3; step++) {
        job.log(`hog: step ${step}`);
        job.progress(step * 10);
        const wait = 400;
        if (step === 2) {
          const t = performance.now();
          while (performance.now() - t < wait) {
            sink = step;
          }
        } else {
          await new Promise((resolve) => setTimeout(resolve, wait));
        }
      }
      return Outcome.complete({ steps: 3 });
    }
    case 'count':
      console.log(`hog: job ${n} of this instance`);
      return Outcome.complete({ processed: n });
    case 'entropy': {
      const b = crypto.getRandomValues(new Uint8Array(16));
      const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
      return Outcome.complete({ crypto: hex, math: String(Math.random()), nowMs: Date.now() });
    }
    default:
      return Outcome.complete({ ok: true });
  }
}

export const { process } = exportProcessor(handle);

/**
 * @param {number} n
 * @param {number[]} pad
 * @returns {number}
 */
function recurse(n, pad) {
  sink = pad;
  return 1 + recurse(n + 1, new Array(16).fill(n));
}

/**
 * The Rust plugin's `struct Data { mode: String }` as serde reads it: from an
 * object (other keys ignored) or a one-element array.
 * @param {any} raw the parsed data
 * @returns {string}
 */
function parseMode(raw) {
  let mode;
  if (Array.isArray(raw)) {
    if (raw.length !== 1) throw invalid(`invalid length ${raw.length}, expected struct Data with 1 element`);
    mode = raw[0];
  } else if (raw !== null && typeof raw === 'object') {
    if (!('mode' in raw)) throw invalid('missing field `mode`');
    mode = raw.mode;
  } else {
    throw invalid(`invalid type: ${serdejson.describe(raw)}, expected struct Data`);
  }
  if (typeof mode !== 'string') throw invalid(`invalid type: ${serdejson.describe(mode)}, expected a string`);
  return mode;
}

/** @param {string} msg */
function invalid(msg) {
  return JobError.unrecoverable(`unexpected JSON shape: ${msg}`);
}
