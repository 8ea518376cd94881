//! flaky: misbehaves on purpose, to exercise retries, unrecoverable
//! failures, traps, retry delays and lost locks. Fields of `data`:
//!
//! - `failTimes: n` — fail retryably while `attemptsMade < n`
//! - `retryAfterMs: ms` — those failures ask for their own delay (Celery's countdown)
//! - `fatal: true` — fail unrecoverably
//! - `panic: true` — panic (a trap)
//! - `plainError: true` — return a plain `std::io::Error` with `?`: a
//!   retryable failure whose failedReason is its message and whose
//!   stacktrace names this file's line
//! - `sleepMs: ms` — sleep first, then write `touchedOnAttempt` into the data
//!   (a host call that fails with lock-lost if the lock was taken meanwhile)
//! - `returnChildren: true` — include the children's return values (flows)
//!
//! It also exports a custom backoff: job opts `backoff: {type: "linear"}`
//! retry after 300 ms × attempts made; `{type: "never"}` gives up.
use bullpen_guest::{Backoff, Job, JobError, Outcome};
use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Data {
    fail_times: u32,
    retry_after_ms: Option<u64>,
    fatal: bool,
    panic: bool,
    plain_error: bool,
    sleep_ms: u64,
    return_children: bool,
}

fn process(job: &Job) -> Result<Outcome, JobError> {
    let data: Data = job.data()?;
    let attempt = job.attempts_made() + 1;
    if data.sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(data.sleep_ms));
        let mut raw: Map<String, Value> = job.data()?;
        raw.insert("touchedOnAttempt".into(), json!(attempt));
        job.update_data(&raw)?;
    }
    if data.panic {
        panic!("flaky: asked to panic on attempt {attempt}");
    }
    if data.plain_error {
        Err(std::io::Error::other(format!("flaky: plain error on attempt {attempt}")))?;
    }
    if data.fatal {
        return Err(JobError::unrecoverable(format!("flaky: fatal error on attempt {attempt}")));
    }
    if job.attempts_made() < data.fail_times {
        let reason = format!("flaky: failing attempt {attempt} of {}", data.fail_times);
        return Err(match data.retry_after_ms {
            Some(ms) => JobError::retry_after(reason, ms),
            None => JobError::retry(reason),
        });
    }
    job.log(format!("flaky: succeeded on attempt {attempt}"))?;
    let mut out = json!({ "succeededOnAttempt": attempt });
    if data.return_children {
        let mut children = job.children_values()?;
        children.sort_by(|a, b| a.0.cmp(&b.0));
        out["children"] = Value::Object(children.into_iter().collect());
    }
    Outcome::complete(&out)
}

fn backoff(strategy: &str, attempts_made: u32, _reason: &str, _job: &Job) -> Backoff {
    match strategy {
        "linear" => Backoff::DelayMs(300 * attempts_made as u64),
        "never" => Backoff::GiveUp,
        _ => Backoff::DelayMs(0),
    }
}

bullpen_guest::export_processor!(process, backoff = backoff);
