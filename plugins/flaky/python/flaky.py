"""flaky: misbehaves on purpose, to exercise retries, unrecoverable
failures, traps, retry delays and lost locks. The Python twin of
plugins/flaky/rust: same reasons, log lines, data writes and return values.
Fields of `data`:

- `failTimes: n` — fail retryably while `attemptsMade < n`
- `retryAfterMs: ms` — those failures ask for their own delay (Celery's countdown)
- `fatal: true` — fail unrecoverably
- `panic: true` — abort (a trap, as a Rust panic): Python has no panic, and
  any exception raised from `process` is a retryable failure, so this
  plugin prints its message and calls `os.abort()`
- `plainError: true` — raise a plain `Exception`: a retryable failure whose
  failedReason is its message and whose stacktrace names this file's line
- `sleepMs: ms` — sleep first, then write `touchedOnAttempt` into the data
  (a host call that fails with lock-lost if the lock was taken meanwhile)
- `returnChildren: true` — include the children's return values (flows)

It also exports a custom backoff: job opts `backoff: {type: "linear"}`
retry after 300 ms × attempts made; `{type: "never"}` gives up.
"""

import os
import sys
import time

from bullpen_guest import Backoff, Job, JobError, Outcome, export_processor
from bullpen_guest.serdejson import describe, sort_keys


def process(job: Job) -> Outcome:
    data = parse_data(job.data())
    attempt = job.attempts_made + 1
    if data["sleepMs"] > 0:
        time.sleep(data["sleepMs"] / 1000)
        raw = job.data()
        raw["touchedOnAttempt"] = attempt
        job.update_data(sort_keys(raw))
    if data["panic"]:
        print(f"flaky: asked to panic on attempt {attempt}", file=sys.stderr, flush=True)
        os.abort()
    if data["plainError"]:
        raise Exception(f"flaky: plain error on attempt {attempt}")
    if data["fatal"]:
        raise JobError.unrecoverable(f"flaky: fatal error on attempt {attempt}")
    if job.attempts_made < data["failTimes"]:
        reason = f"flaky: failing attempt {attempt} of {data['failTimes']}"
        if data["retryAfterMs"] is None:
            raise JobError.retry(reason)
        raise JobError.retry_after(reason, data["retryAfterMs"])
    job.log(f"flaky: succeeded on attempt {attempt}")
    out = {"succeededOnAttempt": attempt}
    if data["returnChildren"]:
        out["children"] = dict(job.children_values())
    return Outcome.complete(sort_keys(out))


def backoff(strategy: str, attempts_made: int, reason: str, job: Job) -> Backoff:
    if strategy == "linear":
        return Backoff.delay_ms(300 * attempts_made)
    if strategy == "never":
        return Backoff.give_up
    return Backoff.delay_ms(0)


export_processor(process, backoff=backoff)


# --- the Rust plugin's `Data` (serde, every field defaulted) ----------------

FIELDS = {
    "failTimes": ("u32", 0),
    "retryAfterMs": ("option u64", None),
    "fatal": ("bool", False),
    "panic": ("bool", False),
    "plainError": ("bool", False),
    "sleepMs": ("u64", 0),
    "returnChildren": ("bool", False),
}


def parse_data(raw):
    """The fields above with their defaults; other fields are ignored. Refuses
    what serde refuses (a failTimes of "three", a negative sleepMs, ...), with
    serde's words, as an unrecoverable "unexpected JSON shape: ..." failure."""
    if not isinstance(raw, dict):
        raise invalid(f"invalid type: {describe(raw)}, expected struct Data")
    data = {}
    for key, (kind, default) in FIELDS.items():
        v = raw.get(key)
        if key not in raw or (v is None and kind == "option u64"):
            data[key] = default
        elif kind == "bool":
            if not isinstance(v, bool):
                raise invalid(f"invalid type: {describe(v)}, expected a boolean")
            data[key] = v
        else:
            want = "u32" if kind == "u32" else "u64"
            if isinstance(v, bool) or not isinstance(v, int):
                raise invalid(f"invalid type: {describe(v)}, expected {want}")
            if v < 0 or v >= (1 << (32 if want == "u32" else 64)):
                raise invalid(f"invalid value: integer `{v}`, expected {want}")
            data[key] = v
    return data


def invalid(msg):
    return JobError.unrecoverable(f"unexpected JSON shape: {msg}")
