"""steps: the step-job pattern from BullMQ's "Process step jobs" guide.
The Python twin of plugins/steps/rust: same log lines, data writes,
children and return value.

Initial → (update_data step=Second) → Second → delay_until(now+200 ms)
→ Third → add two children to `data.childQueue` (default
`<queue>-children`) → wait_for_children → Finish, which returns the
children's return values. The step lives in the job data, so a retry, a
delay or a wait resumes where the job left off.

`data.failAt = "<Step>"` injects one retryable failure on entering that
step (on the first attempt only), to show a retry resumes at that step.

`data.rateLimitMs = N` makes the job, on entering Second, rate-limit its
queue for N ms (back to wait); `data.moveToWait = true` moves it back to
wait there. Each option is taken out of the data first, so it happens
once and the job then carries on from Second.
"""

import time

from bullpen_guest import Job, JobError, Outcome, export_processor
from bullpen_guest.serdejson import describe, sort_keys

STEPS = ("Initial", "Second", "Third", "Finish")


def process(job: Job) -> Outcome:
    data = parse_data(job.data())
    while True:
        if data["failAt"] == data["step"] and job.attempts_made == 0:
            raise JobError.retry(f"steps: injected failure at {data['step']}")
        job.log(f"steps: {data['step']}")
        step = data["step"]
        if step == "Initial":
            data["step"] = "Second"
            job.update_data(to_json(data))
        elif step == "Second":
            rest = data["rest"]
            if "rateLimitMs" in rest:
                ms = rest.pop("rateLimitMs")
                if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms < 1 << 64:
                    raise invalid("rateLimitMs is not a u64")
                job.update_data(to_json(data))
                return job.rate_limit(ms)
            if "moveToWait" in rest:
                del rest["moveToWait"]
                job.update_data(to_json(data))
                return job.move_to_wait()
            data["step"] = "Third"
            job.update_data(to_json(data))
            return job.delay_until(int(time.time() * 1000) + 200)
        elif step == "Third":
            queue = data["childQueue"] if data["childQueue"] is not None else f"{job.queue}-children"
            for i in (1, 2):
                # An id derived from the parent and the step: a retried step
                # finds its child instead of adding a second one.
                job.add_child(queue, "child", {"child": i, "parent": job.id}, {"jobId": f"{job.id}-child-{i}"})
            data["step"] = "Finish"
            job.update_data(to_json(data))
            moved = job.wait_for_children()
            if moved:
                return moved
        else:  # Finish
            children = dict(job.children_values())
            # sort_keys: the children in serde_json's key order too.
            return Outcome.complete({"step": "Finish", "children": sort_keys(children)})


export_processor(process)


# --- the Rust plugin's `Data` (serde), field for field ----------------------


def parse_data(raw):
    """`step` (default Initial), `childQueue` and `failAt` (None = absent), and
    whatever else the producer put in the data, kept as it is. Refuses what
    serde refuses, with serde's words."""
    if not isinstance(raw, dict):
        raise invalid(f"invalid type: {describe(raw)}, expected struct Data")
    rest = dict(raw)
    step = rest.pop("step", "Initial")
    child_queue = rest.pop("childQueue", None)
    fail_at = rest.pop("failAt", None)
    if child_queue is not None and not isinstance(child_queue, str):
        raise invalid(f"invalid type: {describe(child_queue)}, expected a string")
    return {
        "step": parse_step(step),
        "childQueue": child_queue,
        "failAt": None if fail_at is None else parse_step(fail_at),
        "rest": rest,
    }


def parse_step(v):
    if not isinstance(v, str):
        raise invalid(f"invalid type: {describe(v)}, expected enum Step")
    if v not in STEPS:
        raise invalid(f"unknown variant `{v}`, expected one of {', '.join(f'`{s}`' for s in STEPS)}")
    return v


def to_json(d):
    """What serde writes for `Data`: step, childQueue and failAt when set, then
    the other fields in serde_json's (sorted) key order."""
    out = {"step": d["step"]}
    if d["childQueue"] is not None:
        out["childQueue"] = d["childQueue"]
    if d["failAt"] is not None:
        out["failAt"] = d["failAt"]
    out.update(sort_keys(d["rest"]))
    return out


def invalid(msg):
    return JobError.unrecoverable(f"unexpected JSON shape: {msg}")
