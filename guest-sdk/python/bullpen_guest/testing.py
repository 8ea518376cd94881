"""Unit-test a processor in Python: no Redis, no Wasm, any test runner
(pytest shown)::

    from bullpen_guest.testing import Call, TestJob
    from my_processor import process

    def test_sends():
        run = TestJob({"to": "ada@example.com"}, name="welcome").run(process)
        assert run.outcome.kind == "completed"
        assert run.outcome.value == {"sent": True}
        assert run.calls[0] == Call("log", {"line": "sending to ada@example.com"})

`TestJob` is a job held in memory (data, name, id, attempts made, options,
variables, children's values); `run(process)` calls `process` once, as one
attempt in a component would be called, with the host calls answered by an
in-memory job context that makes the checks a worker makes (JSON arguments,
size limits, a second move in one attempt, a rate-limit of 0 ms). It returns a
`TestRun`: the `outcome` and the host `calls`, named by their WIT function
names (`update-data`, `update-progress`, `log`, `move-to-delayed`,
`rate-limit`, `move-to-wait`, `add-child`, `wait-for-children`,
`children-values`) with their arguments (JSON arguments parsed).

What the processor raises is mapped exactly as in the component: a JobError
by its kind, anything else (a refused host call, a failed request, a
ValueError) a retryable failure with its message; either way the outcome's
`stack` is the `stacktrace` entry the component would send. MemoryError and
exceptions that are not `Exception`s propagate out of `run` (in a component
they trap).
"""

from __future__ import annotations

import contextlib
import io
import json as _json
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import HostError, Job, _dumps, _export, _host
from .http import HttpError, Response, _parse_url

__all__ = ["Call", "TestJob", "TestOutcome", "TestRun"]

# The host's limits (runtime/src/sandbox: Limits), so a test refuses what a
# worker refuses.
MAX_PAYLOAD_BYTES = 16 << 20
MAX_LOG_LINE_BYTES = 64 << 10
MAX_RATE_LIMIT_MS = (1 << 53) - 1


class Call:
    """One host call: its WIT name, its arguments by their WIT names (JSON
    arguments parsed), and what the host answered (`result`, or the
    `error` it raised)."""

    __slots__ = ("name", "args", "result", "error")

    def __init__(self, name: str, args: Optional[Dict[str, Any]] = None, result: Any = None,
                 error: Optional[HostError] = None):
        self.name = name
        self.args = dict(args or {})
        self.result = result
        self.error = error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Call):
            return NotImplemented
        same_error = (self.error is None and other.error is None) or (
            self.error is not None and other.error is not None and str(self.error) == str(other.error)
        )
        return (self.name, self.args, self.result) == (other.name, other.args, other.result) and same_error

    def __repr__(self) -> str:
        extra = ""
        if self.result is not None:
            extra += f", result={self.result!r}"
        if self.error is not None:
            extra += f", error={self.error!r}"
        return f"Call({self.name!r}, {self.args!r}{extra})"


class TestOutcome:
    """How the attempt ended.

    - `kind`: 'completed', 'failed' or 'moved'
    - completed: `json` (the return value's text) and `value` (parsed)
    - failed: `failure` ('retry', 'retry-after' or 'unrecoverable'),
      `reason` (the failedReason), `delay_ms` (retry-after), `stack` (the
      job's `stacktrace` entry the SDK sent with `set-stacktrace`: `Type:
      message`, then `    at function (file:line)` per frame, innermost
      first, the SDK's frames left out)
    - moved: `move` ('delayed', 'rate-limited', 'waiting' or 'waiting-children')
    """

    __test__ = False  # not a pytest test class

    def __init__(self, kind: str, json: Optional[str] = None, failure: Optional[str] = None,
                 reason: Optional[str] = None, delay_ms: Optional[int] = None,
                 stack: Optional[str] = None, move: Optional[str] = None):
        self.kind = kind
        self.json = json
        self.value = None if json is None else _json.loads(json)
        self.failure = failure
        self.reason = reason
        self.delay_ms = delay_ms
        self.stack = stack
        self.move = move

    def __repr__(self) -> str:
        if self.kind == "completed":
            return f"TestOutcome(completed {self.json})"
        if self.kind == "moved":
            return f"TestOutcome(moved: {self.move})"
        delay = f" after {self.delay_ms} ms" if self.delay_ms is not None else ""
        return f"TestOutcome(failed ({self.failure}{delay}): {self.reason})"


class TestRun:
    """What one `TestJob.run` did: `outcome`, `calls`, and for convenience
    `logs` (the lines logged), `data` (the job data after the attempt's
    `update-data` calls, parsed), `output` (what the processor printed,
    one string per line)."""

    __test__ = False

    def __init__(self, outcome: TestOutcome, calls: List[Call], data_json: str, output: str):
        self.outcome = outcome
        self.calls = calls
        self.data_json = data_json
        self.data = _json.loads(data_json)
        self.output = output.splitlines()

    @property
    def logs(self) -> List[str]:
        return [c.args["line"] for c in self.calls if c.name == "log" and c.error is None]

    def calls_named(self, name: str) -> List[Call]:
        """The calls of one host function, by its WIT name."""
        return [c for c in self.calls if c.name == name]

    def __repr__(self) -> str:
        return f"TestRun({self.outcome!r}, {len(self.calls)} calls)"


class _Record:
    """What `Job` reads: the WIT `job` record's fields."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


class _ParentRecord:
    def __init__(self, id: str, queue: str):
        self.id = id
        self.queue = queue


class TestJob:
    """A job held in memory, for `run(process)`.

    `data` is the job data as a Python value, or give `data_json` (its JSON
    text) instead. `opts` are BullMQ job options (a dict). `variables` are the
    queue's variables (`variable(name)`). `children_values` maps child keys
    (`bull:queue:id`) to their return values (`children_values()`).
    `host_errors` maps a WIT function name to the HostError it raises, to
    test what the processor does with a refusal (`{"update-data":
    HostError("lock-lost")}`). `http` answers outbound requests: a function
    `(method, url, headers, body) -> (status, headers, body)`; without it a
    request is refused as a queue with no `--allow-outbound` refuses it.
    """

    __test__ = False

    def __init__(
        self,
        data: Any = None,
        *,
        data_json: Optional[str] = None,
        name: str = "test",
        id: str = "1",
        queue: str = "test",
        attempts_made: int = 0,
        attempts_started: Optional[int] = None,
        opts: Optional[Mapping[str, Any]] = None,
        timestamp: Optional[int] = None,
        progress: Any = 0,
        parent: Optional[Tuple[str, str]] = None,
        variables: Optional[Mapping[str, str]] = None,
        children_values: Optional[Mapping[str, Any]] = None,
        host_errors: Optional[Mapping[str, HostError]] = None,
        http: Optional[Callable[[str, str, List[Tuple[str, bytes]], bytes], Tuple[int, Any, bytes]]] = None,
    ):
        if data_json is None:
            data_json = _dumps(data)
        else:
            _json.loads(data_json)  # a test's own typo should fail loudly here
        self.data_json = data_json
        self.name = name
        self.id = id
        self.queue = queue
        self.attempts_made = attempts_made
        self.attempts_started = attempts_made + 1 if attempts_started is None else attempts_started
        self.opts_json = _dumps(dict(opts or {}))
        self.timestamp = int(time.time() * 1000) if timestamp is None else timestamp
        self.progress_json = _dumps(progress)
        self.parent = parent
        self.variables = dict(variables or {})
        self.children_values = [(k, _dumps(v)) for k, v in (children_values or {}).items()]
        self.host_errors = dict(host_errors or {})
        self.http = http

    def record(self) -> Any:
        parent = None if self.parent is None else _ParentRecord(*self.parent)
        return _Record(
            id=self.id, name=self.name, queue=self.queue, data=self.data_json, opts=self.opts_json,
            attempts_made=self.attempts_made, attempts_started=self.attempts_started,
            timestamp=self.timestamp, progress=self.progress_json, parent=parent,
        )

    def run(self, process: Callable[[Job], Any]) -> TestRun:
        """Run one attempt of `process` on this job."""
        host = _MemoryHost(self)
        out = io.StringIO()
        previous = _host._test_host
        _host._test_host = host
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                ended = _export.run_process(process, Job(self.record()))
        finally:
            _host._test_host = previous
        if ended.kind == "completed":
            outcome = TestOutcome("completed", json=ended.json)
            try:
                _json.loads(ended.json)
            except ValueError as e:
                outcome = TestOutcome("failed", failure="unrecoverable", reason=f"return value is not valid JSON: {e}")
        elif ended.kind == "moved":
            if host.moved is None:
                outcome = TestOutcome(
                    "failed", failure="retry",
                    reason="processor returned `moved` but no host call moved the job "
                           "(call move-to-delayed or wait-for-children first)",
                )
            else:
                outcome = TestOutcome("moved", move=host.moved)
        else:
            kind, reason, delay_ms = ended.failure
            outcome = TestOutcome("failed", failure=kind, reason=reason, delay_ms=delay_ms, stack=host.stack)
        return TestRun(outcome, host.calls, host.data, out.getvalue())


class _MemoryHost:
    """The job context of one test attempt: the checks `bullpen run` makes
    (runtime/src/host/local.rs), every call recorded."""

    def __init__(self, job: TestJob):
        self.job = job
        self.calls: List[Call] = []
        self.data = job.data_json
        self.children: List[str] = []
        self.moved: Optional[str] = None
        # What `set-stacktrace` sent last (not a recorded call, as in the
        # other SDKs' harnesses: it is the failed outcome's `stack`).
        self.stack: Optional[str] = None

    def _call(self, name: str, args: Dict[str, Any], check: Callable[[], Any]) -> Any:
        injected = self.job.host_errors.get(name)
        try:
            if injected is not None:
                raise injected
            result = check()
        except HostError as e:
            self.calls.append(Call(name, args, error=e))
            raise
        self.calls.append(Call(name, args, result))
        return result

    @staticmethod
    def _json_arg(what: str, text: str, limit: int) -> Any:
        if len(text.encode("utf-8")) > limit:
            raise HostError("invalid", f"{what} is {len(text.encode('utf-8'))} bytes; the limit is {limit}")
        try:
            return _json.loads(text)
        except ValueError as e:
            raise HostError("invalid", f"{what} is not valid JSON: {e}") from None

    def _not_moved(self) -> None:
        if self.moved is not None:
            raise HostError("wrong-state", "the job was already moved in this attempt")

    def _move(self, how: str) -> None:
        self._not_moved()
        self.moved = how

    def update_data(self, data: str) -> None:
        def check() -> None:
            self._json_arg("data", data, MAX_PAYLOAD_BYTES)
            self.data = data
        self._call("update-data", {"data": _parsed(data)}, check)

    def update_progress(self, progress: str) -> None:
        def check() -> None:
            self._json_arg("progress", progress, MAX_LOG_LINE_BYTES)
        self._call("update-progress", {"progress": _parsed(progress)}, check)

    def log(self, line: str) -> None:
        def check() -> None:
            n = len(line.encode("utf-8"))
            if n > MAX_LOG_LINE_BYTES:
                raise HostError("invalid", f"log line is {n} bytes; the limit is {MAX_LOG_LINE_BYTES}")
        self._call("log", {"line": line}, check)

    def move_to_delayed(self, timestamp_ms: int) -> None:
        self._call("move-to-delayed", {"timestamp-ms": timestamp_ms}, lambda: self._move("delayed"))

    def rate_limit(self, delay_ms: int) -> None:
        def check() -> None:
            if delay_ms == 0 or delay_ms > MAX_RATE_LIMIT_MS:
                raise HostError(
                    "invalid",
                    f"rate-limit delay-ms is {delay_ms}; it must be at least 1 and at most {MAX_RATE_LIMIT_MS}",
                )
            self._move("rate-limited")
        self._call("rate-limit", {"delay-ms": delay_ms}, check)

    def move_to_wait(self) -> None:
        self._call("move-to-wait", {}, lambda: self._move("waiting"))

    def add_child(self, queue: str, name: str, data: str, opts: str) -> str:
        def check() -> str:
            self._json_arg("child data", data, MAX_PAYLOAD_BYTES)
            o = {} if not opts.strip() else self._json_arg("child opts", opts, MAX_PAYLOAD_BYTES)
            if not isinstance(o, dict):
                raise HostError("invalid", "child opts are not valid job options: not a JSON object")
            # A custom jobId is kept (a re-added one is the same child, as in
            # BullMQ); otherwise ids count up.
            child_id = o.get("jobId") or f"child-{len(self.children) + 1}"
            if child_id not in self.children:
                self.children.append(str(child_id))
            return str(child_id)
        args = {"queue": queue, "name": name, "data": _parsed(data), "opts": _parsed(opts) if opts.strip() else {}}
        return self._call("add-child", args, check)

    def wait_for_children(self) -> bool:
        # Children added in this attempt are pending: nothing runs them here.
        def check() -> bool:
            self._not_moved()
            if self.children:
                self.moved = "waiting-children"
                return True
            return False
        return self._call("wait-for-children", {}, check)

    def children_values(self) -> list:
        return self._call("children-values", {}, lambda: list(self.job.children_values))

    def set_stacktrace(self, stack: str) -> None:
        self.stack = stack

    def variable(self, name: str) -> Tuple[str, Any]:
        return ("ok", self.job.variables.get(name))

    def http(self, method: str, url: str, headers: List[Tuple[str, bytes]], body: bytes,
             timeout: Optional[float]) -> Response:
        scheme, authority, _ = _parse_url(url)
        origin = f"{scheme}://{authority}"
        if self.job.http is None:
            raise HttpError(
                f"request to {origin} denied: not in this queue's allow-list "
                f"(grant it with --allow-outbound {origin}, or allowed_outbound_hosts in bullpen.toml)",
                origin, True, "HTTP-request-denied",
            )
        status, resp_headers, resp_body = self.job.http(method, url, headers, body)
        pairs = list(resp_headers.items()) if isinstance(resp_headers, Mapping) else list(resp_headers or [])
        pairs = [(str(k).lower(), str(v)) for k, v in pairs]
        if isinstance(resp_body, str):
            resp_body = resp_body.encode("utf-8")
        return Response(int(status), pairs, bytes(resp_body or b""), url)


def _parsed(text: str) -> Any:
    try:
        return _json.loads(text)
    except ValueError:
        return text
