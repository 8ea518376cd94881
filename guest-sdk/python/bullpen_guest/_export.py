"""The component's exports: `process` (and `backoff`) over the user's
functions, and how what they raise becomes the WIT `failure`.

`python -m bullpen_guest.build` makes the module componentize-py builds: it
imports the user's module (whose `export_processor(...)` call lands in
`register`) and sets `WitWorld = world_class(<world>)`. componentize-py runs
that import at build time, so a missing or mismatched registration fails the
build, with the fix in the message.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, Optional, Tuple

from . import Backoff, HostError, Job, JobError, Outcome, _host
from .http import HttpError

_registered: Optional[Tuple[Callable, Optional[Callable]]] = None

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))


def register(process: Callable, backoff: Optional[Callable]) -> None:
    global _registered
    if not callable(process):
        raise TypeError(f"export_processor: process must be a function, got {type(process).__name__}")
    if backoff is not None and not callable(backoff):
        raise TypeError(f"export_processor: backoff must be a function, got {type(backoff).__name__}")
    _registered = (process, backoff)


def registered() -> Optional[Tuple[Callable, Optional[Callable]]]:
    return _registered


# --- what `process` ended with ---------------------------------------------


class Ended:
    """What one call of the user's `process` came to, before any WIT type:
    ('completed', json) | ('moved', None) | ('failed', (kind, reason,
    delay_ms)). Shared by the component and bullpen_guest.testing."""

    __slots__ = ("kind", "json", "failure")

    def __init__(self, kind: str, json: Optional[str] = None, failure: Any = None):
        self.kind = kind
        self.json = json
        self.failure = failure


def run_process(process: Callable, job: Job) -> Ended:
    """Call `process(job)`: its Outcome, its value, or what it raised. A
    failure's stack goes to the host first (`set-stacktrace`), as Node's
    worker writes `err.stack` with the failure. MemoryError and exceptions
    that are not `Exception`s (SystemExit, KeyboardInterrupt) propagate: the
    attempt traps (out of memory names the limit; a trap stays a trap)."""
    try:
        out = process(job)
        if not isinstance(out, Outcome):
            out = Outcome.complete(out)
    except MemoryError:
        raise
    except JobError as e:
        _host.host().set_stacktrace(node_stack(e))
        return Ended("failed", failure=(e.kind, e.reason, e.delay_ms))
    except Exception as e:
        # A plain exception (and a refused host call, a failed request) is a
        # retryable failure with its message, as a thrown Error in Node.
        _host.host().set_stacktrace(node_stack(e))
        return Ended("failed", failure=("retry", reason_of(e), None))
    if out.kind == "moved":
        return Ended("moved")
    return Ended("completed", json=out.json)


def reason_of(e: BaseException) -> str:
    """The failedReason of an exception: its message (HostError and
    HttpError already say what happened), else its type's name."""
    if isinstance(e, (HostError, HttpError)):
        return str(e)
    text = str(e)
    return text if text else type(e).__name__


def node_stack(e: BaseException) -> str:
    """The job's `stacktrace` entry for `e`, in the format Node's `err.stack`
    has (what BullMQ stores, and the Rust, Go and JS SDKs send): `Type:
    message`, then `    at function (file:line)` per frame, innermost first,
    then `Caused by: Type: message` for each exception it was raised from
    (`raise ... from`, or during the handling of). The SDK's own frames are
    left out; a file is named relative to the folder on the Python path it
    was imported from (your entry module's folder for your modules: the same
    name in a component and under bullpen_guest.testing)."""
    lines = [_head(e)]
    roots = _path_roots()
    frames = []
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        file = code.co_filename
        if not file.startswith("<"):  # `<string>`, `<frozen ...>`: no file
            file = os.path.abspath(file)
        if not file.startswith(_SDK_DIR + os.sep):
            # The function's name, as Python's tracebacks and Node's stacks give it.
            frames.append(f"    at {code.co_name} ({_relative(file, roots)}:{tb.tb_lineno})")
        tb = tb.tb_next
    lines += reversed(frames)
    seen = {id(e)}
    cause = _cause_of(e)
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        lines.append(f"Caused by: {_head(cause)}")
        cause = _cause_of(cause)
    return "\n".join(lines)


def _head(e: BaseException) -> str:
    """`Type: message` (`Type` alone for an empty message), the type named
    as Python's own tracebacks name it (`ValueError`, `bullpen_guest.JobError`)."""
    t = type(e)
    name = t.__qualname__ if t.__module__ in ("builtins", "__main__") else f"{t.__module__}.{t.__qualname__}"
    text = str(e)
    return f"{name}: {text}" if text else name


def _cause_of(e: BaseException) -> Optional[BaseException]:
    if e.__cause__ is not None:
        return e.__cause__
    return None if e.__suppress_context__ else e.__context__


def _path_roots() -> list:
    """The Python path's folders, longest first (a package's folder before
    the folder it sits in)."""
    roots = {os.path.abspath(p) for p in sys.path if isinstance(p, str)}
    return sorted(roots, key=len, reverse=True)


def _relative(file: str, roots: list) -> str:
    for root in roots:
        if file.startswith(root.rstrip(os.sep) + os.sep):
            return file[len(root.rstrip(os.sep)) + 1:].replace(os.sep, "/")
    return file


def user_traceback(e: BaseException) -> str:
    """The traceback in the user's file terms: the SDK's own frames left out."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(_SDK_DIR)]
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(e), e)
    return "".join(lines).rstrip("\n")


def run_backoff(backoff: Callable, strategy: str, attempts_made: int, reason: str, job: Job) -> Backoff:
    decision = backoff(strategy, attempts_made, reason, job)
    if not isinstance(decision, Backoff):
        raise TypeError(f"backoff must return Backoff.delay_ms(ms) or Backoff.give_up, got {decision!r}")
    return decision


# --- the component ----------------------------------------------------------


def world_class(world: str) -> type:
    """The `WitWorld` class componentize-py exports for `world`."""
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports import bullpen_processor_types as t

    if _registered is None:
        raise RuntimeError(
            "bullpen_guest: the module built calls no export_processor(process): "
            "add `export_processor(process)` at its top level"
        )
    process, backoff = _registered
    if backoff is not None and world != "processor-with-backoff":
        raise RuntimeError(
            "bullpen_guest: export_processor(..., backoff=...) needs the world processor-with-backoff: "
            "build with `python -m bullpen_guest.build ... --world processor-with-backoff`"
        )
    if backoff is None and world == "processor-with-backoff":
        raise RuntimeError(
            "bullpen_guest: world processor-with-backoff but export_processor(process) has no backoff=: "
            "pass backoff=your_strategy, or build with --world processor"
        )

    # componentize-py keeps what is imported now in the component; a module
    # first imported during an attempt would be read from files the sandbox
    # does not have.
    from wit_world.imports import error, outgoing_handler, poll, store, streams, wasi_http_types  # noqa: F401

    _host.host()

    def _process(self: Any, job: Any) -> Any:
        try:
            ended = run_process(process, Job(job))
        except MemoryError:
            _trap(None)
        except BaseException as e:  # SystemExit, KeyboardInterrupt: not failures
            _trap(e)
        finally:
            # Output is buffered: what the attempt printed goes to its job log now.
            _flush()
        if ended.kind == "completed":
            return t.Outcome_Completed(ended.json)
        if ended.kind == "moved":
            return t.Outcome_Moved()
        # Its stack went to the host already (run_process: set-stacktrace).
        kind, reason, delay_ms = ended.failure
        if kind == "retry-after":
            raise Err(t.Failure_RetryAfter(t.RetryAfter(reason, delay_ms)))
        if kind == "unrecoverable":
            raise Err(t.Failure_Unrecoverable(reason))
        raise Err(t.Failure_Retry(reason))

    def _backoff(self: Any, strategy: str, attempts_made: int, reason: str, job: Any) -> Any:
        try:
            d = run_backoff(backoff, strategy, attempts_made, reason, Job(job))
        except BaseException as e:  # the host retries at once, as with a trapping backoff in Rust
            _trap(e)
        finally:
            _flush()
        return t.BackoffDecision_GiveUp() if d.kind == "give-up" else t.BackoffDecision_DelayMs(d.ms)

    members = {"process": _process}
    if world == "processor-with-backoff":
        members["backoff"] = _backoff
    return type("WitWorld", (wit_world.WitWorld,), members)


def _flush() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


def _trap(e: Optional[BaseException]) -> None:
    """End the attempt with a trap, as a Rust panic does. A MemoryError is the
    memory cap refusing a grow (the host's reason names the limit); printing
    its traceback could need memory there is none of."""
    if e is not None:
        print(user_traceback(e), file=sys.stderr)
    _flush()
    os.abort()
