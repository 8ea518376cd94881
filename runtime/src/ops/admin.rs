//! Operator commands on single jobs: retry a finished job, inspect a job,
//! cancel a job wherever it is ([`cancel_job`], in `super::cancel`).
//!
//! [`retry_job`] is BullMQ's `Job.retry(state, opts)`: the crate's
//! [`bullmq::Job::retry`], which runs BullMQ's own `reprocessJob` script. It
//! removes the job from the `failed` (or `completed`) set, deletes
//! `finishedOn`, `processedOn` and `failedReason` (or `returnvalue`), and
//! `atm`/`ats` when asked to reset them, pushes the job to `wait` (or
//! `prioritized`) with the same `LPUSH`/`RPUSH` choice as Node (`opts.lifo`),
//! puts a flow child back into its parent's dependencies, and emits
//! `waiting` with `prev` = the state it came from. Other fields (`stacktrace`,
//! `progress`, logs, the other of `returnvalue`/`failedReason`) stay, as in
//! Node.
//!
//! [`inspect_job`] reads the raw job hash, its state and its log list, and
//! returns them the way Node's `Job` presents them ([`JobView`]).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

pub use bullmq::RetryOptions;

pub use super::cancel::{cancel_job, CancelOptions, Cancelled};

use crate::conn::RedisTarget;

/// The finished state a job is retried from (`Job.retry`'s `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FinishedState {
    /// a job that failed (in `<prefix>:<queue>:failed`)
    #[default]
    Failed,
    /// a job that completed (in `<prefix>:<queue>:completed`)
    Completed,
}

impl FinishedState {
    /// BullMQ's name for the state, also its key suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishedState::Failed => "failed",
            FinishedState::Completed => "completed",
        }
    }
}

impl std::fmt::Display for FinishedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator command on one job failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The queue could not be opened: Redis is unreachable at that URL, or
    /// the queue name or prefix is not one BullMQ accepts (a queue name may
    /// not contain `:`).
    #[error("cannot open queue `{queue}` on {redis}: {source}")]
    Open {
        queue: String,
        redis: String,
        #[source]
        source: bullmq::Error,
    },
    /// There is no job hash `<prefix>:<queue>:<id>`: the id, queue or prefix
    /// is wrong, or the job was removed (`removeOnComplete`/`removeOnFail`,
    /// `clean`, `obliterate`). BullMQ's `JobNotExist`, script code -1.
    #[error("job {id} not found in queue {queue} (BullMQ code -1)")]
    JobNotFound { queue: String, id: String },
    /// `reprocessJob` found the job but not in the set of the state it was
    /// asked to retry from: the job is still waiting, active or delayed, or
    /// it finished in the other state (use `--state completed`). BullMQ's
    /// `JobNotInState`, script code -3. `actual` is the state the job was in
    /// when looked up right after.
    #[error("job {id} is not in the {expected} state (BullMQ code -3); it is {actual}")]
    NotInState { id: String, expected: FinishedState, actual: String },
    /// `bullpen cancel` found the job already completed or failed: there is
    /// nothing to cancel, and nothing was written.
    #[error("job {id} is already {state}; nothing to cancel")]
    AlreadyFinished { id: String, state: String },
    /// The job hash exists but the job is in none of BullMQ's state sets
    /// (a job being added or removed at that moment, or a hand-made key).
    #[error("job {id} exists but is in no BullMQ state (not waiting, active, delayed, prioritized, waiting-children, completed or failed); nothing was written")]
    UnknownState { id: String },
    /// `reprocessJob` returned a code it is not documented to return.
    #[error("reprocessJob returned BullMQ code {code} for job {id}")]
    UnexpectedCode { id: String, code: i64 },
    /// A Redis command failed (connection lost, timeout, a key holding the
    /// wrong type).
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// A BullMQ call failed for another reason (a script error, a reply the
    /// crate did not expect).
    #[error("bullmq error: {0}")]
    Bullmq(#[from] bullmq::Error),
}

pub(crate) async fn open_queue(redis: &RedisTarget, prefix: &str, queue: &str) -> Result<bullmq::Queue, AdminError> {
    let opts =
        bullmq::QueueOptions { connection: redis.bullmq_options(), prefix: prefix.to_string(), ..Default::default() };
    bullmq::Queue::with_options(queue, opts).await.map_err(|source| AdminError::Open {
        queue: queue.to_string(),
        redis: redis.to_string(),
        source,
    })
}

/// Move a failed (or completed) job back to wait, exactly as Node's
/// `Job.retry(state, { resetAttemptsMade, resetAttemptsStarted })` does.
///
/// Fails with [`AdminError::JobNotFound`] (code -1) when the job does not
/// exist and [`AdminError::NotInState`] (code -3) when it is not in `state`;
/// in both cases nothing is written.
pub async fn retry_job(
    redis: &RedisTarget,
    prefix: &str,
    queue: &str,
    job_id: &str,
    state: FinishedState,
    opts: RetryOptions,
) -> Result<(), AdminError> {
    let q = open_queue(redis, prefix, queue).await?;
    let result = retry_on(&q, job_id, state, opts).await;
    q.close().await;
    result
}

async fn retry_on(q: &bullmq::Queue, job_id: &str, state: FinishedState, opts: RetryOptions) -> Result<(), AdminError> {
    let not_found = || AdminError::JobNotFound { queue: q.name().to_string(), id: job_id.to_string() };
    // `get_job` gives the job its script context, which `Job::retry` needs.
    let Some(mut job) = q.get_job(job_id).await? else {
        return Err(not_found());
    };
    match job.retry(state.as_str(), Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) => match reprocess_code(&e) {
            Some(bullmq::error::error_code::JOB_NOT_EXIST) => Err(not_found()),
            Some(bullmq::error::error_code::JOB_NOT_IN_STATE) => {
                let actual = match q.get_job_state(job_id).await {
                    Ok(s) => state_name(s).to_string(),
                    Err(_) => "in an unknown state".to_string(),
                };
                Err(AdminError::NotInState { id: job_id.to_string(), expected: state, actual })
            }
            Some(code) => Err(AdminError::UnexpectedCode { id: job_id.to_string(), code }),
            None => Err(e.into()),
        },
    }
}

/// The BullMQ code in an error from [`bullmq::Job::retry`]. bullmq-official
/// 1.4.4 (pinned) reports a script code as
/// `InvalidConfig("reprocessJob failed with code <n>")`; `Script { code }` is
/// accepted too.
fn reprocess_code(e: &bullmq::Error) -> Option<i64> {
    match e {
        bullmq::Error::Script { code, .. } => Some(*code),
        bullmq::Error::InvalidConfig(msg) => msg.strip_prefix("reprocessJob failed with code ")?.trim().parse().ok(),
        _ => None,
    }
}

/// Node's name for a state (`Job.getState()`): `waiting`, not the key suffix `wait`.
pub(crate) fn state_name(s: bullmq::JobState) -> &'static str {
    match s {
        bullmq::JobState::Waiting => "waiting",
        other => other.as_str(),
    }
}

/// One job as `bullpen inspect` prints it (field names as Node's `Job` has
/// them). JSON fields are parsed; a field that is not valid JSON is given as
/// its raw string (for `data` and `returnvalue`, `dataNotJson` /
/// `returnvalueNotJson` then hold the parse error).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub name: String,
    /// `completed`, `failed`, `delayed`, `active`, `waiting`, `prioritized`,
    /// `waiting-children` or `unknown` (Node's `Job.getState()`).
    pub state: String,
    pub data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_not_json: Option<String>,
    pub opts: Value,
    pub attempts_made: u64,
    pub attempts_started: u64,
    pub progress: Value,
    /// Null when the job has no `returnvalue` field.
    pub returnvalue: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returnvalue_not_json: Option<String>,
    /// Null when the job has no `failedReason` field.
    pub failed_reason: Option<String>,
    pub timestamp: Option<u64>,
    pub processed_on: Option<u64>,
    pub finished_on: Option<u64>,
    /// The `parent` field (`{"id", "queueKey", ...}`) of a flow child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Value>,
    /// The job's BullMQ log lines (`<prefix>:<queue>:<id>:logs`), oldest first.
    pub logs: Vec<String>,
    /// The sha256 of the plugin version that ran the job's latest attempt,
    /// from its `bullpen: plugin sha256:<hex>` log line (null when no
    /// attempt ran, or the line was trimmed by `keepLogs`).
    pub plugin_digest: Option<String>,
}

/// Read one job: its hash (HGETALL), its state (BullMQ's `getState`
/// script) and its log lines. [`AdminError::JobNotFound`] when there is no
/// such job.
pub async fn inspect_job(redis: &RedisTarget, prefix: &str, queue: &str, job_id: &str) -> Result<JobView, AdminError> {
    let q = open_queue(redis, prefix, queue).await?;
    let result = inspect_on(&q, job_id).await;
    q.close().await;
    result
}

async fn inspect_on(q: &bullmq::Queue, job_id: &str) -> Result<JobView, AdminError> {
    let job_key = q.keys().job_key(job_id);
    let mut conn = q.connection().connection();
    let raw: HashMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(&job_key).query_async(&mut conn).await?;
    if raw.is_empty() {
        return Err(AdminError::JobNotFound { queue: q.name().to_string(), id: job_id.to_string() });
    }
    let state = state_name(q.get_job_state(job_id).await?).to_string();
    let logs: Vec<String> =
        redis::cmd("LRANGE").arg(format!("{job_key}:logs")).arg(0).arg(-1).query_async(&mut conn).await?;
    Ok(view_from_hash(job_id, state, &raw, logs))
}

fn view_from_hash(id: &str, state: String, raw: &HashMap<String, Vec<u8>>, logs: Vec<String>) -> JobView {
    let text = |k: &str| raw.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    let number = |k: &str| text(k).and_then(|s| s.trim().parse::<u64>().ok());
    let (data, data_not_json) = match text("data") {
        Some(s) => parse_or_string(s),
        None => (Value::Null, None),
    };
    let (returnvalue, returnvalue_not_json) = match text("returnvalue") {
        Some(s) => parse_or_string(s),
        None => (Value::Null, None),
    };
    JobView {
        id: id.to_string(),
        name: text("name").unwrap_or_default(),
        state,
        data,
        data_not_json,
        opts: text("opts").map(|s| parse_or_string(s).0).unwrap_or_else(|| Value::Object(Default::default())),
        attempts_made: number("atm").unwrap_or(0),
        attempts_started: number("ats").unwrap_or(0),
        progress: text("progress").map(|s| parse_or_string(s).0).unwrap_or(Value::from(0)),
        returnvalue,
        returnvalue_not_json,
        failed_reason: text("failedReason"),
        timestamp: number("timestamp"),
        processed_on: number("processedOn"),
        finished_on: number("finishedOn"),
        parent: text("parent").map(|s| parse_or_string(s).0),
        plugin_digest: logs
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(crate::host::DIGEST_LOG_PREFIX))
            .map(str::to_string),
        logs,
    }
}

/// The parsed JSON, or the raw string and why it is not JSON.
fn parse_or_string(s: String) -> (Value, Option<String>) {
    match serde_json::from_str(&s) {
        Ok(v) => (v, None),
        Err(e) => (Value::String(s), Some(format!("stored value is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_the_crates_retry_errors() {
        let e = bullmq::Error::InvalidConfig("reprocessJob failed with code -3".into());
        assert_eq!(reprocess_code(&e), Some(-3));
        assert_eq!(reprocess_code(&bullmq::Error::from_script_code(-1)), Some(-1));
        assert_eq!(reprocess_code(&bullmq::Error::InvalidConfig("reprocessJob script not found".into())), None);
    }

    #[test]
    fn view_parses_json_fields_and_keeps_bad_data_as_text() {
        let raw: HashMap<String, Vec<u8>> = [
            ("name", "n"),
            ("data", "{not json"),
            ("opts", r#"{"attempts":2}"#),
            ("atm", "1"),
            ("returnvalue", r#"{"z":1,"a":2}"#),
            ("timestamp", "1700000000000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let v = serde_json::to_value(view_from_hash("7", "completed".into(), &raw, vec!["l".into()])).unwrap();
        assert_eq!(v["data"], "{not json");
        assert!(v["dataNotJson"].as_str().unwrap().contains("not valid JSON"));
        assert_eq!(v["opts"]["attempts"], 2);
        assert_eq!(v["attemptsMade"], 1);
        assert_eq!(v["attemptsStarted"], 0);
        assert_eq!(v["progress"], 0);
        assert_eq!(serde_json::to_string(&v["returnvalue"]).unwrap(), r#"{"z":1,"a":2}"#);
        assert!(v.get("returnvalueNotJson").is_none() && v.get("parent").is_none());
        assert_eq!(v["failedReason"], Value::Null);
        assert_eq!(v["finishedOn"], Value::Null);
        assert_eq!(v["logs"][0], "l");
        assert_eq!(v["pluginDigest"], Value::Null);
        let logs = vec!["bullpen: plugin sha256:aa".into(), "x".into(), "bullpen: plugin sha256:bb".into()];
        let v = serde_json::to_value(view_from_hash("7", "completed".into(), &raw, logs)).unwrap();
        assert_eq!(v["pluginDigest"], "bb", "the latest attempt's version");
    }
}
