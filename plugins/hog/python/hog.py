"""hog: abuses the sandbox on purpose; `data.mode` picks the abuse. The
Python twin of plugins/hog/rust: the same modes, return values and log
lines, except where Python reaches a limit differently (noted below).

- `loop`: spins forever (stopped by the wall-clock limit)
- `memory`: grows memory without bound (stopped by the memory cap: CPython
  raises MemoryError when the host refuses to grow memory, and the SDK
  turns a MemoryError into a trap, so the reason names the limit)
- `output`: writes ~8 MiB to stdout, then completes (the log keeps a bounded part)
- `recursion`: recurses without bound; CPython stops it itself at its
  recursion limit with a RecursionError, which escapes `process`: a
  retryable failure with its message (no trap: the wasm stack never fills)
- `file` / `net` / `env`: tries to read a host file, open a socket, read the
  environment; completes with what it got (errors, not access), in the Rust
  plugin's shape of a Result: `{"file": {"Err": "..."}}`
- `biglog` / `bigprogress` / `bigdata`: a 100 KiB log line, a 100 KiB
  progress value, 17 MiB of data; completes with the host's answers
- `bigreturn`: returns 17 MiB (over the host's return-value limit)
- `slow`: three steps of log line + progress (10, 20, 30), each followed
  by 400 ms of waiting: sleeping (a WASI call) in steps 1 and 3, spinning
  in wasm in step 2; shows pending writes reaching Redis mid-attempt;
  with `"print": true` each step also prints `hog: printed step N`
- `count`: prints and returns how many jobs this instance has processed
  (always 1 with a fresh instance per attempt; counts up with
  `--instance-reuse`)
- `entropy`: returns what a fresh instance must draw anew (the interpreter
  is snapshotted at build time): `crypto` (16 bytes of os.urandom, hex),
  `math` (random.random()), `nowMs` (time.time() in ms)
- anything else: completes with `{"ok": true}`

Data without a string `mode` fails unrecoverably with serde's words
("unexpected JSON shape: missing field `mode`").
"""

import encodings.idna  # noqa: F401  (socket's host names; imported now, as every module must be)
import os
import random
import socket
import sys
import time

from bullpen_guest import HostError, Job, JobError, Outcome, export_processor
from bullpen_guest.serdejson import describe

# Jobs this instance has processed: state that outlives a job only when the
# host reuses the instance.
processed = 0


def recurse(n, pad):
    return 1 + recurse(n + 1, [n] * 16)


def result(f):
    """A Rust `Result` as serde writes it: {"Ok": value} or {"Err": text}."""
    try:
        return {"Ok": f()}
    except Exception as e:  # the error is the answer here
        return {"Err": str(e)}


def read_file():
    with open("/etc/passwd") as f:
        return str(len(f.read()))


def connect():
    socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    return "connected"


def refused(f):
    try:
        f()
    except HostError as e:
        return {"refused": str(e)}
    return {"refused": None}


def process(job: Job) -> Outcome:
    global processed
    processed += 1
    mode, printing = parse_data(job.data())
    if mode == "loop":
        x = 0
        while True:
            x = (x + 1) & 0xFFFFFFFF
    if mode == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(b"\x01" * (1 << 20)))
    if mode == "output":
        line = "hog: flooding stdout " * 4
        # The same lines as 100,000 prints, written 1,000 at a time: a print
        # costs CPython ~10 µs here, too slow for the tests' wall clock.
        for start in range(0, 100_000, 1000):
            sys.stdout.write("".join(f"{i} {line}\n" for i in range(start, start + 1000)))
        return Outcome.complete({"printed": 100_000})
    if mode == "recursion":
        return Outcome.complete({"depth": recurse(0, [0] * 16)})
    if mode == "file":
        return Outcome.complete({"file": result(read_file)})
    if mode == "net":
        return Outcome.complete({"net": result(connect)})
    if mode == "env":
        return Outcome.complete({"env": len(os.environ), "args": len(sys.argv)})
    if mode == "biglog":
        return Outcome.complete(refused(lambda: job.log("x" * (100 << 10))))
    if mode == "bigprogress":
        return Outcome.complete(refused(lambda: job.progress("x" * (100 << 10))))
    if mode == "bigdata":
        return Outcome.complete(refused(lambda: job.update_data({"blob": "x" * (17 << 20)})))
    if mode == "bigreturn":
        return Outcome.complete({"blob": "x" * (17 << 20)})
    if mode == "slow":
        for step in (1, 2, 3):
            job.log(f"hog: step {step}")
            if printing:
                print(f"hog: printed step {step}", flush=True)
            job.progress(step * 10)
            if step == 2:
                end = time.monotonic() + 0.4
                while time.monotonic() < end:
                    pass
            else:
                time.sleep(0.4)
        return Outcome.complete({"steps": 3})
    if mode == "count":
        print(f"hog: job {processed} of this instance")
        return Outcome.complete({"processed": processed})
    if mode == "entropy":
        return Outcome.complete({"crypto": os.urandom(16).hex(), "math": str(random.random()), "nowMs": int(time.time() * 1000)})
    return Outcome.complete({"ok": True})


export_processor(process)


def parse_data(raw):
    """The Rust plugin's `Data { mode: String, #[serde(default)] print: bool }`."""
    if not isinstance(raw, dict):
        raise invalid(f"invalid type: {describe(raw)}, expected struct Data")
    if "mode" not in raw:
        raise invalid("missing field `mode`")
    mode = raw["mode"]
    if not isinstance(mode, str):
        raise invalid(f"invalid type: {describe(mode)}, expected a string")
    printing = raw.get("print", False)
    if not isinstance(printing, bool):
        raise invalid(f"invalid type: {describe(printing)}, expected a boolean")
    return mode, printing


def invalid(msg):
    return JobError.unrecoverable(f"unexpected JSON shape: {msg}")
