//! echo: returns the job's data unchanged, after one log line and progress 100.
use bullpen_guest::{Job, JobError, Outcome};

fn process(job: &Job) -> Result<Outcome, JobError> {
    job.log(format!("echo: job {} ({})", job.id(), job.name()))?;
    job.progress(100)?;
    Ok(Outcome::complete_json(job.data_json()))
}

bullpen_guest::export_processor!(process);

// `cargo test` on the build machine: the SDK's in-memory job context.
#[cfg(test)]
mod tests {
    use super::process;
    use bullpen_guest::testing::{Outcome, TestJob};
    use serde_json::json;

    #[test]
    fn returns_its_data_after_a_log_line_and_progress_100() {
        let data = json!({"to": "a@b.c", "n": [1, 2]});
        let run = TestJob::new(data.clone()).id("7").name("welcome").run(process);
        assert_eq!(run.outcome, Outcome::Completed(data));
        let calls: Vec<_> = run.calls.iter().map(|c| (c.name, c.args.clone())).collect();
        assert_eq!(calls, [("log", vec![json!("echo: job 7 (welcome)")]), ("update-progress", vec![json!(100)])]);
    }
}
