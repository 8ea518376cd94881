//! flaky: fails on purpose, to exercise retries, unrecoverable failures and traps.
//!
//! data: `{"failTimes": n}` fails retryably while `attemptsMade < n`;
//! `{"fatal": true}` fails unrecoverably; `{"panic": true}` panics (a trap).
use bullpen_guest::{Error, Job, Outcome};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Data {
    fail_times: u32,
    fatal: bool,
    panic: bool,
}

fn process(job: &Job) -> Result<Outcome, Error> {
    let data: Data = job.data()?;
    let attempt = job.attempts_made() + 1;
    if data.panic {
        panic!("flaky: asked to panic on attempt {attempt}");
    }
    if data.fatal {
        return Err(Error::unrecoverable(format!("flaky: fatal error on attempt {attempt}")));
    }
    if job.attempts_made() < data.fail_times {
        return Err(Error::retry(format!("flaky: failing attempt {attempt} of {}", data.fail_times)));
    }
    job.log(format!("flaky: succeeded on attempt {attempt}"))?;
    Outcome::complete(&serde_json::json!({ "succeededOnAttempt": attempt }))
}

bullpen_guest::export_processor!(process);
