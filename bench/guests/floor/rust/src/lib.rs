//! floor: completes every job with `null` and calls nothing. An attempt of
//! it costs what a language's SDK, runtime and instance cost and nothing
//! else (bench/guests/README.md).
use bullpen_guest::{Job, JobError, Outcome};

fn process(_job: &Job) -> Result<Outcome, JobError> {
    Ok(Outcome::complete_json("null"))
}

bullpen_guest::export_processor!(process);
