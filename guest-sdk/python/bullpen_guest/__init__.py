"""Write bullpen job processors in Python.

A processor is a function from a `Job` to an `Outcome` (or a plain value,
the job's return value), built into a WebAssembly component with
componentize-py (`python -m bullpen_guest.build processor.py -o
processor.wasm`). bullpen runs it once per attempt, in a fresh instance, on
jobs from a BullMQ queue::

    from bullpen_guest import Job, JobError, Outcome, export_processor

    def process(job: Job) -> Outcome:
        email = job.data()                     # parsed JSON
        job.log(f"sending to {email['to']}")
        job.progress(50)
        if not email.get("to"):
            raise JobError.unrecoverable("no recipient")   # no retries
        return Outcome.complete({"sent": True})

    export_processor(process)

The API is the Rust SDK's (guest-sdk/rust) in snake_case, with the same
semantics. Failing an attempt: raise `JobError.retry(reason)`,
`JobError.retry_after(reason, delay_ms)` or `JobError.unrecoverable(reason)`;
any other exception (`raise ValueError("x")`, a refused host call, a failed
HTTP request) fails the attempt retryably with its message as the job's
failedReason, as a thrown Error does in a Node processor. Either way its
stack (Node's format, your frames only) is the job's BullMQ `stacktrace`
entry for the attempt.

Every host call is checked against the job's lock token by the host: after
the worker lost the lock, calls raise a `HostError` whose `is_lock_lost()`
is true; let it escape and the host abandons the attempt without writing
anything.
"""

from __future__ import annotations

import json as _json
from typing import Any, Callable, List, Optional, Tuple

from . import _host
from ._host import HostError

__all__ = [
    "Backoff",
    "HostError",
    "HttpError",
    "Job",
    "JobError",
    "Outcome",
    "ParentRef",
    "export_processor",
    "variable",
]

#: The WIT package this SDK speaks (`wit/processor.wit`); the SDK's version follows it.
WIT_PACKAGE = "bullpen:processor@0.1.0"


class JobError(Exception):
    """Why an attempt failed: raise one from `process`. Every failure counts
    as an attempt. Make one with `retry`, `retry_after` or `unrecoverable`."""

    #: How the failure ends the attempt (the WIT `failure` cases).
    KINDS = ("retry", "retry-after", "unrecoverable")

    def __init__(self, kind: str, reason: str, delay_ms: Optional[int] = None):
        if kind not in self.KINDS:
            raise ValueError(f"JobError kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        #: The failedReason recorded for the attempt (also the message).
        self.reason = str(reason)
        #: For 'retry-after': milliseconds until the job may run again.
        self.delay_ms = delay_ms
        super().__init__(self.reason)

    @classmethod
    def retry(cls, reason: str) -> "JobError":
        """Retry per the job's `attempts`/`backoff`; else fail with this reason."""
        return cls("retry", reason)

    @classmethod
    def retry_after(cls, reason: str, delay_ms: int) -> "JobError":
        """Retry after `delay_ms` (the guest's own countdown), if attempts
        remain; else fail with this reason."""
        return cls("retry-after", reason, _u64(delay_ms, "retry_after delay_ms"))

    @classmethod
    def unrecoverable(cls, reason: str) -> "JobError":
        """Fail now, whatever `attempts` says (BullMQ's UnrecoverableError)."""
        return cls("unrecoverable", reason)

    def is_lock_lost(self) -> bool:
        """Always False (a lost lock is a HostError)."""
        return False

    def __repr__(self) -> str:
        if self.kind == "retry-after":
            return f"JobError.retry_after({self.reason!r}, {self.delay_ms})"
        return f"JobError.{self.kind}({self.reason!r})"


class Outcome:
    """How a successful attempt ended: `Outcome.complete(value)`,
    `Outcome.complete_json(text)`, or `Outcome.moved` (what `delay_until`,
    `rate_limit`, `move_to_wait` and `wait_for_children` give)."""

    __slots__ = ("kind", "json")

    #: A host call already moved the job: return this. (Set below.)
    moved: "Outcome"

    def __init__(self, kind: str, json: Optional[str] = None):
        #: 'completed' or 'moved'.
        self.kind = kind
        #: For 'completed': the return value as JSON text.
        self.json = json

    @classmethod
    def complete(cls, value: Any) -> "Outcome":
        """Complete the job with `value` as its return value (JSON). A value
        that cannot be serialised raises an unrecoverable JobError."""
        try:
            text = _dumps(value)
        except (TypeError, ValueError, RecursionError) as e:
            raise JobError.unrecoverable(f"return value is not serialisable: {e}") from None
        return cls("completed", text)

    @classmethod
    def complete_json(cls, text: str) -> "Outcome":
        """Complete the job with a return value that is already JSON text."""
        return cls("completed", str(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Outcome) and (self.kind, self.json) == (other.kind, other.json)

    def __hash__(self) -> int:
        return hash((self.kind, self.json))

    def __repr__(self) -> str:
        return "Outcome.moved" if self.kind == "moved" else f"Outcome.complete_json({self.json!r})"


Outcome.moved = Outcome("moved")


class Backoff:
    """What a custom backoff strategy decides after a retryable failure:
    `Backoff.delay_ms(ms)` or `Backoff.give_up`."""

    __slots__ = ("kind", "ms")

    #: Do not retry: fail the job now (BullMQ's custom backoff `-1`). (Set below.)
    give_up: "Backoff"

    def __init__(self, kind: str, ms: Optional[int] = None):
        #: 'delay-ms' or 'give-up'.
        self.kind = kind
        self.ms = ms

    @classmethod
    def delay_ms(cls, ms: int) -> "Backoff":
        """Retry after `ms` milliseconds (0 = at once)."""
        return cls("delay-ms", _u64(ms, "Backoff.delay_ms"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backoff) and (self.kind, self.ms) == (other.kind, other.ms)

    def __hash__(self) -> int:
        return hash((self.kind, self.ms))

    def __repr__(self) -> str:
        return "Backoff.give_up" if self.kind == "give-up" else f"Backoff.delay_ms({self.ms})"


Backoff.give_up = Backoff("give-up")


class ParentRef:
    """The parent of a child job in a flow."""

    __slots__ = ("id", "queue")

    def __init__(self, id: str, queue: str):
        #: The parent's job id.
        self.id = id
        #: The parent's queue name (without the key prefix).
        self.queue = queue

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParentRef) and (self.id, self.queue) == (other.id, other.queue)

    def __repr__(self) -> str:
        return f"ParentRef(id={self.id!r}, queue={self.queue!r})"


class Job:
    """The job being processed: a snapshot taken when the attempt started,
    plus the host calls that act on it. Host calls raise `HostError` when
    refused; JSON that cannot be read or written raises an unrecoverable
    `JobError` ("invalid JSON: ...")."""

    __slots__ = (
        "id",
        "name",
        "queue",
        "data_json",
        "opts_json",
        "attempts_made",
        "attempts_started",
        "timestamp",
        "progress_json",
        "_parent",
    )

    def __init__(self, record: Any):
        # `record`: the WIT `job` record (componentize-py's dataclass), or
        # anything with the same attributes (bullpen_guest.testing).
        #: The BullMQ job id.
        self.id: str = record.id
        #: The job name given by the producer.
        self.name: str = record.name
        #: The queue the job came from.
        self.queue: str = record.queue
        #: The job data as JSON text, exactly as stored in Redis.
        self.data_json: str = record.data
        #: The job options as JSON text (BullMQ field names).
        self.opts_json: str = record.opts
        #: Attempts that ended before this one (BullMQ `attemptsMade`); 0 on the first.
        self.attempts_made: int = record.attempts_made
        #: Times the job was started, this one included (`attemptsStarted`).
        self.attempts_started: int = record.attempts_started
        #: When the job was added, ms since the Unix epoch.
        self.timestamp: int = record.timestamp
        #: The last reported progress as JSON text (`0` if none).
        self.progress_json: str = record.progress
        p = record.parent
        self._parent = None if p is None else ParentRef(p.id, p.queue)

    def data(self) -> Any:
        """The job data, parsed (a fresh copy on every call)."""
        return _loads(self.data_json)

    def parent(self) -> Optional[ParentRef]:
        """The parent job, or None when this job is not a child in a flow."""
        return self._parent

    def update_data(self, value: Any) -> None:
        """Replace the job's data (seen by later attempts): the step pattern's memory."""
        _host.host().update_data(_to_json(value))

    def progress(self, value: Any) -> None:
        """Report progress: a number or any JSON value. Emits BullMQ's `progress` event."""
        _host.host().update_progress(_to_json(value))

    def log(self, line: str) -> None:
        """Append a line to the job's BullMQ log."""
        _host.host().log(str(line))

    def delay_until(self, timestamp_ms: int) -> Outcome:
        """Delay the job until `timestamp_ms` (ms since the Unix epoch) and end
        the attempt: return the `Outcome.moved` this gives. `attempts_made`
        does not grow."""
        _host.host().move_to_delayed(_u64(timestamp_ms, "delay_until timestamp_ms"))
        return Outcome.moved

    def rate_limit(self, delay_ms: int) -> Outcome:
        """Rate-limit this job's queue for every worker for `delay_ms` (Node's
        `worker.rateLimit(ms)` + `Worker.RateLimitError`), put the job back in
        wait and end the attempt: return the `Outcome.moved` this gives.
        `attempts_made` does not grow. `delay_ms` must be at least 1."""
        _host.host().rate_limit(_u64(delay_ms, "rate_limit delay_ms"))
        return Outcome.moved

    def move_to_wait(self) -> Outcome:
        """Put the job back in wait, without a delay (BullMQ's
        `job.moveToWait(token)` + `WaitingError`), and end the attempt: return
        the `Outcome.moved` this gives. `attempts_made` does not grow."""
        _host.host().move_to_wait()
        return Outcome.moved

    def add_child(self, queue: str, name: str, data: Any, opts: Optional[dict] = None) -> str:
        """Add a child job to `queue` whose parent is this job; returns its id.
        `opts` are BullMQ job options (e.g. `{"jobId": "parent-step-1"}`)."""
        opts_json = "" if opts is None else _to_json(opts)
        return _host.host().add_child(str(queue), str(name), _to_json(data), opts_json)

    def wait_for_children(self) -> Optional[Outcome]:
        """`Outcome.moved` when the job now waits for pending children (return
        it); None when no child is pending (carry on)."""
        return Outcome.moved if _host.host().wait_for_children() else None

    def children_values(self) -> List[Tuple[str, Any]]:
        """The return values of completed children as `(child_key, value)`
        pairs (key `prefix:queue:id`)."""
        return [(k, _loads(v)) for (k, v) in _host.host().children_values()]

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, name={self.name!r}, queue={self.queue!r})"


def variable(name: str) -> str:
    """The queue's variable `name` (`--var`, `--var-env`, `[queues.variables]`
    in bullpen.toml): configuration and secrets; a guest reads only its own
    queue's. Missing, it raises an unrecoverable JobError naming the variable
    and how to set it; a store that cannot be read, a retryable one. Never
    log the value of a secret."""
    status, value = _host.host().variable(name)
    if status == "error":
        raise JobError.retry(f"variable `{name}` could not be read: {value}")
    if value is None:
        raise JobError.unrecoverable(
            f"variable `{name}` is not set for this queue (set it with --var {name}=... / "
            f"--var-env {name}=ENVNAME, or in [queues.variables] of bullpen.toml)"
        )
    return value


ProcessFn = Callable[[Job], Any]
BackoffFn = Callable[[str, int, str, Job], Backoff]


def export_processor(process: ProcessFn, backoff: Optional[BackoffFn] = None) -> None:
    """Make `process` this component's processor. Call it once, at the top
    level of the module you build:

        export_processor(process)
        export_processor(process, backoff=strategy)   # world processor-with-backoff

    `process(job)` returns an `Outcome`, or any other value, which completes
    the job with that value as its return value (None becomes null).
    `backoff(strategy, attempts_made, reason, job)` is called when a job whose
    `opts.backoff.type` is not `fixed`/`exponential` fails retryably
    (`attempts_made` counts the failed attempt); it returns
    `Backoff.delay_ms(ms)` or `Backoff.give_up`.
    """
    from . import _export

    _export.register(process, backoff)


from .http import HttpError  # noqa: E402  (http imports the names above)


# --- JSON ------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # Compact, UTF-8 as is, no NaN (not JSON): what JSON.stringify and
    # serde_json write.
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _to_json(value: Any) -> str:
    try:
        return _dumps(value)
    except (TypeError, ValueError, RecursionError) as e:
        raise JobError.unrecoverable(f"invalid JSON: {e}") from None


def _loads(text: str) -> Any:
    try:
        return _json.loads(text)
    except ValueError as e:
        raise JobError.unrecoverable(f"invalid JSON: {e}") from None


def _u64(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"{what} must be a number of milliseconds, got {type(n).__name__}")
    if isinstance(n, float):
        if n != n or n in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be a finite number of milliseconds, got {n}")
        n = int(n)
    if n < 0 or n >= 1 << 64:
        raise ValueError(f"{what} must be a non-negative number of milliseconds below 2^64, got {n}")
    return n
