//! The worker's side of `bullpen cancel` (the request itself: `ops::cancel`).
//!
//! Every running attempt of a binding is registered here by job id
//! ([`Running::register`]); the attempt waits on its registration beside
//! the guest call. A listener per binding delivers requests two ways:
//! - the pub/sub notice (`<prefix>:<queue>:bullpen:cancels`), at once;
//! - a read of the requests hash every [`CHECK`] while attempts run, so a
//!   notice missed (subscription down, worker reconnecting) is found within
//!   one check, well inside BullMQ's lock renewal period (`lockDuration`/2).
//!
//! Delivery wakes the attempt's `select!`; the guest call's future is
//! dropped at the guest's next epoch yield (`sandbox::engine::EPOCH_TICK`),
//! which stops it, fresh or kept instance alike (the instance goes with it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::conn::RedisTarget;
use crate::ops::cancel::{requests_key, Request};

/// How often the requests hash is read while attempts run.
pub(crate) const CHECK: Duration = Duration::from_secs(2);

/// One attempt's mailbox.
struct Cell {
    request: OnceLock<Request>,
    notify: Notify,
}

/// The binding's running attempts, by job id (all shards).
#[derive(Default)]
pub(crate) struct Running {
    jobs: Mutex<HashMap<String, Arc<Cell>>>,
}

/// A running attempt's registration; unregistered when dropped.
pub(crate) struct Registration {
    running: Arc<Running>,
    id: String,
    cell: Arc<Cell>,
}

impl Running {
    pub(crate) fn register(self: &Arc<Self>, job_id: &str) -> Registration {
        let cell = Arc::new(Cell { request: OnceLock::new(), notify: Notify::new() });
        self.jobs.lock().unwrap().insert(job_id.to_string(), cell.clone());
        Registration { running: self.clone(), id: job_id.to_string(), cell }
    }

    fn is_empty(&self) -> bool {
        self.jobs.lock().unwrap().is_empty()
    }

    fn has(&self, id: &str) -> bool {
        self.jobs.lock().unwrap().contains_key(id)
    }

    /// Hand `request` to the attempt running `id`, if there is one here.
    fn deliver(&self, id: &str, request: Request) -> bool {
        let Some(cell) = self.jobs.lock().unwrap().get(id).cloned() else { return false };
        if cell.request.set(request).is_ok() {
            cell.notify.notify_one();
        }
        true
    }
}

impl Registration {
    /// Resolves with the request once a cancel for this attempt arrives.
    pub(crate) async fn cancelled(&self) -> Request {
        loop {
            if let Some(r) = self.cell.request.get() {
                return r.clone();
            }
            // `notify_one` stores a permit when nobody waits yet: no lost wakeup.
            self.cell.notify.notified().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut jobs = self.running.jobs.lock().unwrap();
        if jobs.get(&self.id).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            jobs.remove(&self.id);
        }
    }
}

/// Delete a request the worker has acted on (best effort: a request left
/// behind matches no later attempt once the job has finished, and the
/// next `bullpen cancel` of the job overwrites it).
pub(crate) async fn forget(mut conn: bullmq::redis_connection::AnyConnection, key: &str, id: &str) {
    let r: redis::RedisResult<()> = redis::cmd("HDEL").arg(key).arg(id).query_async(&mut conn).await;
    if let Err(e) = r {
        debug!(error = %e, job = id, "could not delete the cancel request");
    }
}

/// Follow the queue's cancel requests for as long as the binding runs.
pub(crate) fn spawn_listener(redis: RedisTarget, prefix: &str, queue: &str, running: Arc<Running>) -> JoinHandle<()> {
    let key = requests_key(prefix, queue);
    tokio::spawn(async move {
        let mut pubsub = subscribe(&redis, &key).await;
        let mut conn = None;
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let notice = tokio::select! {
                n = next_notice(&mut pubsub) => n,
                _ = tick.tick() => None,
            };
            match notice {
                Some(Some(id)) if running.has(&id) => {
                    if let Some(c) = connected(&redis, &mut conn).await {
                        read_one(c, &key, &id, &running).await;
                    }
                }
                Some(Some(_)) => {}
                Some(None) => {
                    warn!(channel = %key, "cancel notices lost (connection closed); reading requests every {}s and resubscribing", CHECK.as_secs());
                    pubsub = None;
                }
                None => {
                    if pubsub.is_none() {
                        pubsub = subscribe(&redis, &key).await;
                        if pubsub.is_some() {
                            info!(channel = %key, "resubscribed to cancel notices");
                        }
                    }
                    if !running.is_empty() {
                        if let Some(c) = connected(&redis, &mut conn).await {
                            read_all(c, &key, &running).await;
                        }
                    }
                }
            }
        }
    })
}

async fn subscribe(redis: &RedisTarget, channel: &str) -> Option<redis::aio::PubSub> {
    let mut ps = match redis.pubsub().await {
        Ok(ps) => ps,
        Err(e) => {
            debug!(error = %e, "cannot subscribe to cancel notices yet");
            return None;
        }
    };
    match ps.subscribe(channel).await {
        Ok(()) => Some(ps),
        Err(e) => {
            debug!(error = %e, "cannot subscribe to cancel notices yet");
            None
        }
    }
}

/// The next notice's job id; `Some(None)` once when the subscription ends;
/// never resolves without a subscription.
async fn next_notice(pubsub: &mut Option<redis::aio::PubSub>) -> Option<Option<String>> {
    let Some(ps) = pubsub.as_mut() else {
        return std::future::pending().await;
    };
    match ps.on_message().next().await {
        Some(msg) => Some(Some(String::from_utf8_lossy(msg.get_payload_bytes()).into_owned())),
        None => Some(None),
    }
}

async fn connected<'a>(
    redis: &RedisTarget,
    conn: &'a mut Option<bullmq::redis_connection::AnyConnection>,
) -> Option<&'a mut bullmq::redis_connection::AnyConnection> {
    if conn.is_none() {
        match redis.connect().await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                debug!(error = %e, "cannot read cancel requests yet");
                return None;
            }
        }
    }
    conn.as_mut()
}

async fn read_one(conn: &mut bullmq::redis_connection::AnyConnection, key: &str, id: &str, running: &Running) {
    let raw: redis::RedisResult<Option<String>> = redis::cmd("HGET").arg(key).arg(id).query_async(conn).await;
    match raw {
        Ok(Some(json)) => deliver(running, id, &json),
        Ok(None) => {}
        Err(e) => debug!(error = %e, job = id, "cannot read the cancel request"),
    }
}

async fn read_all(conn: &mut bullmq::redis_connection::AnyConnection, key: &str, running: &Running) {
    let all: redis::RedisResult<HashMap<String, String>> = redis::cmd("HGETALL").arg(key).query_async(conn).await;
    match all {
        Ok(all) => {
            for (id, json) in all {
                if running.has(&id) {
                    deliver(running, &id, &json);
                }
            }
        }
        Err(e) => debug!(error = %e, "cannot read cancel requests"),
    }
}

fn deliver(running: &Running, id: &str, json: &str) {
    match serde_json::from_str::<Request>(json) {
        Ok(r) => {
            running.deliver(id, r);
        }
        Err(e) => {
            warn!(job = id, error = %e, "ignoring a cancel request that is not {{\"failedReason\": string, \"retry\"?: bool}}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_reaches_only_its_attempt_even_before_it_waits() {
        let running = Arc::new(Running::default());
        let a = running.register("a");
        let b = running.register("b");
        let r = Request { failed_reason: "cancelled".into(), retry: false };
        assert!(running.deliver("a", r.clone()), "delivered before anyone waits");
        assert!(!running.deliver("zz", r.clone()));
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), a.cancelled()).await.unwrap(), r);
        assert!(tokio::time::timeout(Duration::from_millis(20), b.cancelled()).await.is_err());
        drop(a);
        assert!(!running.has("a") && running.has("b"));
    }
}
