//! echo: returns the job's data unchanged, after one log line and progress 100.
use bullpen_guest::{Error, Job, Outcome};

fn process(job: &Job) -> Result<Outcome, Error> {
    job.log(format!("echo: job {} ({})", job.id(), job.name()))?;
    job.progress(100)?;
    Ok(Outcome::complete_json(job.data_json()))
}

bullpen_guest::export_processor!(process);
