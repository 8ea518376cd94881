//! steps: the step-job pattern from BullMQ's "Process step jobs" guide.
//!
//! Initial → (update-data step=Second) → Second → move-to-delayed(now+200 ms)
//! → Third → add two children to `data.childQueue` (default
//! `<queue>-children`) → wait-for-children → Finish, which returns the
//! children's return values. The step lives in the job data, so a retry, a
//! delay or a wait resumes where the job left off.
//!
//! `data.failAt = "<Step>"` injects one retryable failure on entering that
//! step (on the first attempt only), to show a retry resumes at that step.
//!
//! `data.rateLimitMs = N` makes the job, on entering Second, rate-limit its
//! queue for N ms (back to wait); `data.moveToWait = true` moves it back to
//! wait there. Each option is taken out of the data first, so it happens
//! once and the job then carries on from Second.
use bullpen_guest::{Job, JobError, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug, Default)]
enum Step {
    #[default]
    Initial,
    Second,
    Third,
    Finish,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data {
    #[serde(default)]
    step: Step,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    child_queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fail_at: Option<Step>,
    /// Whatever else the producer put in the data is kept as it is.
    #[serde(flatten)]
    rest: Map<String, Value>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn process(job: &Job) -> Result<Outcome, JobError> {
    let mut data: Data = job.data()?;
    loop {
        if data.fail_at == Some(data.step) && job.attempts_made() == 0 {
            return Err(JobError::retry(format!("steps: injected failure at {:?}", data.step)));
        }
        job.log(format!("steps: {:?}", data.step))?;
        match data.step {
            Step::Initial => {
                data.step = Step::Second;
                job.update_data(&data)?;
            }
            Step::Second => {
                if let Some(ms) = data.rest.remove("rateLimitMs") {
                    let ms = ms
                        .as_u64()
                        .ok_or_else(|| JobError::unrecoverable("unexpected JSON shape: rateLimitMs is not a u64"))?;
                    job.update_data(&data)?;
                    return job.rate_limit(ms);
                }
                if data.rest.remove("moveToWait").is_some() {
                    job.update_data(&data)?;
                    return job.move_to_wait();
                }
                data.step = Step::Third;
                job.update_data(&data)?;
                return job.delay_until(now_ms() + 200);
            }
            Step::Third => {
                let queue = data.child_queue.clone().unwrap_or_else(|| format!("{}-children", job.queue()));
                for i in 1..=2 {
                    // An id derived from the parent and the step: a retried
                    // step finds its child instead of adding a second one.
                    let id = format!("{}-child-{i}", job.id());
                    job.add_child(&queue, "child", &json!({ "child": i, "parent": job.id() }), json!({ "jobId": id }))?;
                }
                data.step = Step::Finish;
                job.update_data(&data)?;
                if let Some(moved) = job.wait_for_children()? {
                    return Ok(moved);
                }
            }
            Step::Finish => {
                let mut children: Vec<(String, Value)> = job.children_values()?;
                children.sort_by(|a, b| a.0.cmp(&b.0));
                let children: Map<String, Value> = children.into_iter().collect();
                return Outcome::complete(&json!({ "step": "Finish", "children": children }));
            }
        }
    }
}

bullpen_guest::export_processor!(process);

// `cargo test` on the build machine: each attempt of the step pattern run
// against the SDK's in-memory job context, the next one on the data the
// previous one left.
#[cfg(test)]
mod tests {
    use super::process;
    use bullpen_guest::testing::{FailureKind, Outcome, TestJob};
    use serde_json::json;

    #[test]
    fn walks_the_steps_across_attempts() {
        let first = TestJob::new(json!({"keep": 1})).id("9").run(process);
        assert_eq!(first.outcome, Outcome::Moved("delayed"));
        assert_eq!(first.logs(), ["steps: Initial", "steps: Second"]);
        let names: Vec<_> = first.calls.iter().map(|c| c.name).collect();
        assert_eq!(names, ["log", "update-data", "log", "update-data", "move-to-delayed"]);
        assert_eq!(first.data, json!({"step": "Third", "keep": 1}));

        let third = TestJob::new(first.data.clone()).id("9").run(process);
        assert_eq!(third.outcome, Outcome::Moved("waiting-children"));
        let children = third.calls_named("add-child");
        assert_eq!(children.len(), 2);
        assert_eq!(
            children[0].args,
            vec![
                json!("test-children"),
                json!("child"),
                json!({"child": 1, "parent": "9"}),
                json!({"jobId": "9-child-1"})
            ]
        );
        assert_eq!(third.data, json!({"step": "Finish", "keep": 1}));

        let values = vec![
            ("bull:test-children:9-child-2".to_string(), json!(2)),
            ("bull:test-children:9-child-1".to_string(), json!(1)),
        ];
        let last = TestJob::new(third.data.clone()).id("9").children_values(values).run(process);
        assert_eq!(
            last.outcome,
            Outcome::Completed(
                json!({"step": "Finish", "children": {"bull:test-children:9-child-1": 1, "bull:test-children:9-child-2": 2}})
            )
        );
    }

    #[test]
    fn an_injected_failure_retries_on_the_first_attempt_only() {
        let run = TestJob::new(json!({"failAt": "Second", "step": "Second"})).run(process);
        match &run.outcome {
            Outcome::Failed { kind: FailureKind::Retry, reason, stack: Some(stack), .. } => {
                assert_eq!(reason, "steps: injected failure at Second");
                assert!(stack.contains("steps/rust/src/lib.rs:"), "{stack}");
            }
            other => panic!("{other:?}"),
        }
        let again = TestJob::new(json!({"failAt": "Second", "step": "Second"})).attempts_made(1).run(process);
        assert_eq!(again.outcome, Outcome::Moved("delayed"));
    }
}
