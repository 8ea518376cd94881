"""The example plugins through bullpen_guest.testing: what they do on one
attempt, call by call (the same behaviour the conformance suite checks
against a real worker, tests/tests/conformance.rs)."""

import hashlib
import hmac
import json

import echo
import flaky
import steps
import webhook

from bullpen_guest import HostError
from bullpen_guest.testing import Call, TestJob


def test_echo_returns_the_data_after_a_log_line_and_progress():
    run = TestJob({"text": "héllo ✓", "z": 1, "a": 2}, name="welcome", id="7").run(echo.process)
    assert run.outcome.kind == "completed"
    # Byte for byte: the producer's key order and characters.
    assert run.outcome.json == '{"text":"héllo ✓","z":1,"a":2}'
    assert run.calls == [
        Call("log", {"line": "echo: job 7 (welcome)"}),
        Call("update-progress", {"progress": 100}),
    ]


def test_echo_scalar_data():
    run = TestJob("just a string").run(echo.process)
    assert run.outcome.value == "just a string"


def test_steps_first_attempt_goes_to_second_then_delays():
    run = TestJob({"order": 1}, id="p").run(steps.process)
    assert run.outcome.kind == "moved" and run.outcome.move == "delayed"
    assert [c.name for c in run.calls] == ["log", "update-data", "log", "update-data", "move-to-delayed"]
    assert run.logs == ["steps: Initial", "steps: Second"]
    assert run.calls_named("update-data")[-1].args == {"data": {"step": "Third", "order": 1}}
    assert run.data == {"step": "Third", "order": 1}


def test_steps_third_adds_two_children_and_waits():
    run = TestJob({"step": "Third"}, id="p", queue="s").run(steps.process)
    assert run.outcome.move == "waiting-children"
    assert run.calls_named("add-child") == [
        Call("add-child", {"queue": "s-children", "name": "child", "data": {"child": i, "parent": "p"},
                           "opts": {"jobId": f"p-child-{i}"}}, result=f"p-child-{i}")
        for i in (1, 2)
    ]
    assert run.calls_named("wait-for-children") == [Call("wait-for-children", {}, result=True)]
    assert run.data == {"step": "Finish"}


def test_steps_finish_returns_the_children_values_in_key_order():
    children = {"bull:s-children:p-child-2": {"child": 2}, "bull:s-children:p-child-1": {"child": 1}}
    run = TestJob({"step": "Finish"}, children_values=children).run(steps.process)
    assert run.outcome.kind == "completed"
    assert run.outcome.json == (
        '{"step":"Finish","children":{"bull:s-children:p-child-1":{"child":1},"bull:s-children:p-child-2":{"child":2}}}'
    )


def test_steps_injected_failure_only_on_the_first_attempt():
    first = TestJob({"failAt": "Second"}).run(steps.process)
    assert (first.outcome.kind, first.outcome.failure, first.outcome.reason) == (
        "failed", "retry", "steps: injected failure at Second")
    # The retry resumes at the step the first attempt stored.
    again = TestJob(first.data, attempts_made=1).run(steps.process)
    assert again.outcome.move == "delayed"
    assert again.logs == ["steps: Second"]


def test_steps_rate_limit_and_move_to_wait_happen_once():
    run = TestJob({"step": "Second", "rateLimitMs": 500, "keep": 1}).run(steps.process)
    assert run.outcome.move == "rate-limited"
    assert run.calls[-1] == Call("rate-limit", {"delay-ms": 500})
    assert run.data == {"step": "Second", "keep": 1}
    run = TestJob({"step": "Second", "moveToWait": True}).run(steps.process)
    assert run.outcome.move == "waiting"
    assert run.data == {"step": "Second"}


def test_steps_data_of_the_wrong_shape_is_unrecoverable():
    run = TestJob({"step": "Fifth"}).run(steps.process)
    assert run.outcome.failure == "unrecoverable"
    assert run.outcome.reason == (
        "unexpected JSON shape: unknown variant `Fifth`, expected one of `Initial`, `Second`, `Third`, `Finish`")


def test_steps_a_lost_lock_fails_the_attempt_with_the_hosts_text():
    run = TestJob({}, host_errors={"update-data": HostError("lock-lost")}).run(steps.process)
    assert (run.outcome.failure, run.outcome.reason) == ("retry", "lock lost: this worker no longer owns the job")
    assert run.calls[-1].error.is_lock_lost()


def test_flaky_failure_kinds():
    r = TestJob({"failTimes": 2, "retryAfterMs": 300}).run(flaky.process).outcome
    assert (r.failure, r.reason, r.delay_ms) == ("retry-after", "flaky: failing attempt 1 of 2", 300)
    r = TestJob({"fatal": True}).run(flaky.process).outcome
    assert (r.failure, r.reason) == ("unrecoverable", "flaky: fatal error on attempt 1")
    r = TestJob({"failTimes": "three"}).run(flaky.process).outcome
    assert r.reason == 'unexpected JSON shape: invalid type: string "three", expected u32'
    run = TestJob({"failTimes": 2}, attempts_made=2).run(flaky.process)
    assert run.outcome.value == {"succeededOnAttempt": 3}
    assert run.logs == ["flaky: succeeded on attempt 3"]


def test_flaky_backoff():
    from bullpen_guest import Backoff

    job = None
    assert flaky.backoff("linear", 2, "x", job) == Backoff.delay_ms(600)
    assert flaky.backoff("never", 1, "x", job) is Backoff.give_up


def test_a_plain_exception_is_a_retryable_failure_with_its_message_and_stack():
    def process(job):
        job.log("about to fail")
        helper()

    def helper():
        raise ValueError("SMTP server said 550")

    run = TestJob({}).run(process)
    assert (run.outcome.kind, run.outcome.failure, run.outcome.reason) == ("failed", "retry", "SMTP server said 550")
    # Node's err.stack: innermost frame first, down to `process` (the SDK's
    # own frames left out), files relative to the Python path's folder they
    # came from (this file's folder is on it: pytest's rootdir import).
    line = helper.__code__.co_firstlineno + 1
    assert run.outcome.stack == (
        "ValueError: SMTP server said 550\n"
        f"    at helper (test_plugins.py:{line})\n"
        f"    at process (test_plugins.py:{process.__code__.co_firstlineno + 2})"
    )
    assert [c.name for c in run.calls] == ["log"], "set-stacktrace is the outcome's stack, not a call"


def test_flaky_plain_error_names_its_line():
    run = TestJob({"plainError": True}, attempts_made=1).run(flaky.process)
    assert (run.outcome.failure, run.outcome.reason) == ("retry", "flaky: plain error on attempt 2")
    with open(flaky.__file__, encoding="utf-8") as f:
        line = next(i for i, text in enumerate(f, 1) if "plain error on attempt" in text)
    # The line of the `raise`, as the Rust, Go and JS flaky plugins' stacks
    # name theirs (tests/tests/conformance.rs checks the component's).
    assert run.outcome.stack == f"Exception: flaky: plain error on attempt 2\n    at process (flaky.py:{line})"


def test_a_job_error_and_a_host_error_send_their_stack_and_causes():
    r = TestJob({"fatal": True}).run(flaky.process).outcome
    assert r.stack.startswith("bullpen_guest.JobError: flaky: fatal error on attempt 1\n    at process (flaky.py:")

    def process(job):
        try:
            job.update_data({})
        except HostError as e:
            raise RuntimeError("could not save") from e

    r = TestJob({}, host_errors={"update-data": HostError("lock-lost")}).run(process).outcome
    lines = r.stack.split("\n")
    assert lines[0] == "RuntimeError: could not save"
    assert lines[1].startswith("    at process (test_plugins.py:") and len(lines) == 3
    assert lines[2] == "Caused by: bullpen_guest.HostError: lock lost: this worker no longer owns the job"
    assert "bullpen_guest/" not in r.stack, "the SDK's own frames are left out"


def test_a_stack_names_code_without_a_file_as_python_does():
    scope = {}
    exec("def process(job):\n    raise KeyError('to')\n", scope)
    assert TestJob({}).run(scope["process"]).outcome.stack == "KeyError: 'to'\n    at process (<string>:2)"


def test_webhook_signs_and_posts():
    seen = {}

    def server(method, url, headers, body):
        seen.update(method=method, url=url, headers=dict(headers), body=body)
        return 200, {"content-type": "text/plain"}, b"thanks"

    job = TestJob({"url": "https://hooks.example.com/x", "payload": {"b": 1, "a": [1, "é"]}},
                  variables={"webhook_secret": "s3cret"}, http=server)
    run = job.run(webhook.process)
    assert run.outcome.value == {"status": 200, "body": "thanks"}
    body = '{"b":1,"a":[1,"é"]}'.encode()
    assert seen["body"] == body and seen["method"] == "POST"
    mac = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert seen["headers"]["x-bullpen-signature"] == f"sha256={mac}".encode()


def test_webhook_statuses_and_refusals():
    def answer(status, headers=None):
        return lambda *a: (status, headers or {}, b"")

    data = {"url": "https://hooks.example.com/x", "payload": 1}
    v = {"webhook_secret": "k"}
    r = TestJob(data, variables=v, http=answer(503, {"Retry-After": "7"})).run(webhook.process).outcome
    assert (r.failure, r.reason, r.delay_ms) == ("retry-after", "HTTP 503", 7000)
    r = TestJob(data, variables=v, http=answer(404)).run(webhook.process).outcome
    assert (r.failure, r.reason) == ("unrecoverable", "HTTP 404")
    r = TestJob(data, variables=v).run(webhook.process).outcome
    assert (r.failure, r.reason) == ("retry", "request to https://hooks.example.com denied: not in this queue's "
                                     "allow-list (grant it with --allow-outbound https://hooks.example.com, or "
                                     "allowed_outbound_hosts in bullpen.toml)")
    r = TestJob(data).run(webhook.process).outcome
    assert r.failure == "unrecoverable" and r.reason.startswith("variable `webhook_secret` is not set")
    assert json.loads(TestJob(data, variables=v, http=answer(200)).run(webhook.process).outcome.json) == {
        "status": 200, "body": ""}
