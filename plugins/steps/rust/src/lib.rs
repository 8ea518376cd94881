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
use bullpen_guest::{Error, Job, Outcome};
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

fn process(job: &Job) -> Result<Outcome, Error> {
    let mut data: Data = job.data()?;
    loop {
        if data.fail_at == Some(data.step) && job.attempts_made() == 0 {
            return Err(Error::retry(format!("steps: injected failure at {:?}", data.step)));
        }
        job.log(format!("steps: {:?}", data.step))?;
        match data.step {
            Step::Initial => {
                data.step = Step::Second;
                job.update_data(&data)?;
            }
            Step::Second => {
                if let Some(ms) = data.rest.remove("rateLimitMs") {
                    let ms = ms.as_u64().ok_or_else(|| Error::unrecoverable("unexpected JSON shape: rateLimitMs is not a u64"))?;
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
