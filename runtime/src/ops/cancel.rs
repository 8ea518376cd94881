//! Cancelling a job wherever it is (`bullpen cancel`, [`cancel_job`]).
//!
//! One script decides atomically by the job's state:
//! - **not there**: BullMQ's code -1, nothing written;
//! - **completed / failed**: nothing to cancel, nothing written;
//! - **waiting, paused, delayed, prioritized, waiting-children**: removed from
//!   that set and failed at once (`failedReason` `cancelled[: reason]`,
//!   `finishedOn`, the `failed` set, a `failed` event with `prev` = the state);
//! - **active**: a request is stored in `<prefix>:<queue>:bullpen:cancels`
//!   (hash: job id → JSON [`Request`]) and its id published on the channel
//!   of the same name. The worker running the attempt interrupts the guest at
//!   its next epoch tick, writes its pending log lines and fails the job
//!   (unrecoverably, or as a normal failed attempt with `retry`), then
//!   deletes the request. A worker that missed the notice (pub/sub down)
//!   finds the request in the hash at its next check (`queue::cancel`).
//!
//! The keys sit under the queue's base, in its Cluster hash slot (as the
//! plugin registry's). A Node service can request a cancel with the same
//! two writes (README, "Cancelling a job").

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::admin::{open_queue, AdminError};
use crate::conn::RedisTarget;

/// Hash of pending cancel requests, and the pub/sub channel that announces
/// each (same name: one for operators to remember).
pub(crate) fn requests_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}:{queue}:bullpen:cancels")
}

/// A cancel request for an active job, as stored in [`requests_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Request {
    /// What the job's `failedReason` becomes.
    pub(crate) failed_reason: String,
    /// A normal failed attempt (retries apply) instead of an unrecoverable failure.
    #[serde(default)]
    pub(crate) retry: bool,
}

/// The `failedReason` of a cancelled job.
pub(crate) fn failed_reason(reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("cancelled: {r}"),
        None => "cancelled".to_string(),
    }
}

/// What [`cancel_job`] is asked to do.
#[derive(Debug, Clone)]
pub struct CancelOptions {
    /// Said in `failedReason` after `cancelled: `.
    pub reason: Option<String>,
    /// An active job's attempt fails as a normal failed attempt, so its
    /// `attempts` and `backoff` apply; default: an unrecoverable failure.
    /// A job that is not running has no attempt to retry: it fails either way.
    pub retry: bool,
    /// How long to wait for an active job to leave `active`.
    pub wait: Duration,
}

impl Default for CancelOptions {
    fn default() -> Self {
        CancelOptions { reason: None, retry: false, wait: Duration::from_secs(10) }
    }
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "result")]
pub enum Cancelled {
    /// The job was not running: it was taken out of `from` (`waiting`,
    /// `paused`, `delayed`, `prioritized`, `waiting-children`) and failed.
    Removed { from: String, failed_reason: String },
    /// The attempt that was running has ended: `state` is where the job is
    /// now (`failed`; `waiting`, `delayed`, or `active` again when `retry`
    /// gave it another attempt; `completed` when it finished before the
    /// notice reached its worker).
    Stopped { state: String, failed_reason: Option<String>, waited_ms: u64 },
    /// The job is still active after [`CancelOptions::wait`]. The request
    /// stays stored: the worker acts on it at its next check, or, if the
    /// worker is gone, the job's next attempt after the stalled check.
    StillActive { waited_ms: u64 },
}

/// BullMQ's state names (`Job.getState()`) for the sets the script removes from.
/// KEYS: job, active, wait, paused, delayed, prioritized, waiting-children,
/// completed, failed, events, requests. ARGV: id, failedReason, retry (0/1), now.
const CANCEL: &str = r#"
local rcall = redis.call
local id = ARGV[1]
if rcall("EXISTS", KEYS[1]) == 0 then return {"missing"} end
if rcall("ZSCORE", KEYS[8], id) then return {"completed"} end
if rcall("ZSCORE", KEYS[9], id) then return {"failed"} end
if rcall("LPOS", KEYS[2], id) then
  local req = cjson.encode({failedReason = ARGV[2], retry = ARGV[3] == "1"})
  rcall("HSET", KEYS[11], id, req)
  rcall("PUBLISH", KEYS[11], id)
  return {"active", rcall("HGET", KEYS[1], "atm") or "0"}
end
local from
if rcall("LREM", KEYS[3], 0, id) > 0 then from = "waiting"
elseif rcall("LREM", KEYS[4], 0, id) > 0 then from = "paused"
elseif rcall("ZREM", KEYS[5], id) > 0 then from = "delayed"
elseif rcall("ZREM", KEYS[6], id) > 0 then from = "prioritized"
elseif rcall("ZREM", KEYS[7], id) > 0 then from = "waiting-children"
else return {"unknown"} end
rcall("HSET", KEYS[1], "failedReason", ARGV[2], "finishedOn", ARGV[4])
rcall("ZADD", KEYS[9], ARGV[4], id)
rcall("XADD", KEYS[10], "*", "event", "failed", "jobId", id, "failedReason", ARGV[2], "prev", from)
return {"removed", from}
"#;

/// How often the state of a job being cancelled is read while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Cancel job `job_id` of `queue` wherever it is (see the module docs), and
/// for an active job wait up to `opts.wait` for it to leave `active`.
///
/// Errors: [`AdminError::JobNotFound`] (BullMQ's -1) and
/// [`AdminError::AlreadyFinished`] (completed or failed) write nothing.
pub async fn cancel_job(
    redis: &RedisTarget,
    prefix: &str,
    queue: &str,
    job_id: &str,
    opts: CancelOptions,
) -> Result<Cancelled, AdminError> {
    let q = open_queue(redis, prefix, queue).await?;
    let result = cancel_on(&q, prefix, job_id, &opts).await;
    q.close().await;
    result
}

async fn cancel_on(
    q: &bullmq::Queue,
    prefix: &str,
    job_id: &str,
    opts: &CancelOptions,
) -> Result<Cancelled, AdminError> {
    let k = q.keys();
    let requests = requests_key(prefix, q.name());
    let reason = failed_reason(opts.reason.as_deref());
    let mut conn = q.connection().connection();
    let reply: Vec<String> = redis::Script::new(CANCEL)
        .key(k.job_key(job_id))
        .key(k.active())
        .key(k.wait())
        .key(k.paused())
        .key(k.delayed())
        .key(k.prioritized())
        .key(k.waiting_children())
        .key(k.completed())
        .key(k.failed())
        .key(k.events())
        .key(&requests)
        .arg(job_id)
        .arg(&reason)
        .arg(if opts.retry { "1" } else { "0" })
        .arg(crate::now_ms())
        .invoke_async(&mut conn)
        .await?;
    let id = job_id.to_string();
    match reply.first().map(String::as_str) {
        Some("missing") => Err(AdminError::JobNotFound { queue: q.name().to_string(), id }),
        Some(state @ ("completed" | "failed")) => Err(AdminError::AlreadyFinished { id, state: state.to_string() }),
        Some("removed") => {
            Ok(Cancelled::Removed { from: reply.get(1).cloned().unwrap_or_default(), failed_reason: reason })
        }
        Some("active") => {
            let attempts_made = reply.get(1).cloned().unwrap_or_default();
            wait_until_stopped(q, &mut conn, &requests, job_id, &attempts_made, opts.wait).await
        }
        _ => Err(AdminError::UnknownState { id }),
    }
}

/// Poll the job until the attempt that was running has ended (the job is
/// not `active`, or its `attemptsMade` moved on from `attempts_made`: with
/// `retry` its next attempt may already run) or `wait` passes. The request
/// is then deleted (the worker deleted it already when it acted on it), so
/// one that arrived too late cannot cancel a later attempt.
async fn wait_until_stopped(
    q: &bullmq::Queue,
    conn: &mut bullmq::redis_connection::AnyConnection,
    requests: &str,
    job_id: &str,
    attempts_made: &str,
    wait: Duration,
) -> Result<Cancelled, AdminError> {
    let started = Instant::now();
    let job_key = q.keys().job_key(job_id);
    loop {
        let state = q.get_job_state(job_id).await?;
        let atm: Option<String> = redis::cmd("HGET").arg(&job_key).arg("atm").query_async(conn).await?;
        let waited_ms = started.elapsed().as_millis() as u64;
        if state != bullmq::JobState::Active || atm.as_deref().unwrap_or("0") != attempts_made {
            let _: () = redis::cmd("HDEL").arg(requests).arg(job_id).query_async(conn).await?;
            let failed_reason: Option<String> =
                redis::cmd("HGET").arg(&job_key).arg("failedReason").query_async(conn).await?;
            let state = super::admin::state_name(state).to_string();
            return Ok(Cancelled::Stopped { state, failed_reason, waited_ms });
        }
        if started.elapsed() >= wait {
            return Ok(Cancelled::StillActive { waited_ms });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_follows_cancelled() {
        assert_eq!(failed_reason(None), "cancelled");
        assert_eq!(failed_reason(Some("  ")), "cancelled");
        assert_eq!(failed_reason(Some("too slow")), "cancelled: too slow");
    }

    #[test]
    fn a_request_reads_what_node_writes() {
        let r: Request = serde_json::from_str(r#"{"failedReason":"cancelled: x"}"#).unwrap();
        assert_eq!(r, Request { failed_reason: "cancelled: x".into(), retry: false });
        let r: Request = serde_json::from_str(r#"{"failedReason":"cancelled","retry":true}"#).unwrap();
        assert!(r.retry);
    }
}
