//! `bullpen stats`: what a queue holds, how fast it moves, and which plugin
//! version each live worker runs.
//!
//! Counts and rates come from BullMQ's own keys, so they include jobs any
//! BullMQ worker processed. Which workers are alive, and on which digest, is
//! bullpen's own: every worker process writes a heartbeat per queue it
//! serves (every [`HEARTBEAT`]) under the queue's `bullpen:` keys, next to
//! the plugin registry (same hash slot on Redis Cluster).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::now_ms;
use crate::plugins::registry::{PluginSlot, RegistryKeys};

/// How often a worker refreshes its heartbeat. A worker is shown as live
/// while its last beat is younger than [`LIVE_FOR`] (three missed beats).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
pub(crate) const LIVE_FOR: Duration = Duration::from_secs(15);
/// Entries older than this are deleted by the next heartbeat of any worker
/// (a worker killed with -9 leaves its entry behind).
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// One worker process serving a queue, as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkerInfo {
    /// `<host>:<pid>:<random>`; unique per process and queue.
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// sha256 of the plugin the worker starts new attempts with.
    pub(crate) digest: String,
    pub(crate) concurrency: usize,
    pub(crate) started_at: u64,
    /// Last heartbeat (ms since the epoch); filled in when read.
    #[serde(default)]
    pub(crate) seen_at: u64,
    pub(crate) version: String,
}

/// Job counts per BullMQ state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Counts {
    pub(crate) waiting: u64,
    pub(crate) active: u64,
    pub(crate) delayed: u64,
    pub(crate) prioritized: u64,
    pub(crate) waiting_children: u64,
    pub(crate) paused: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
}

/// What `bullpen stats` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueueStats {
    pub(crate) queue: String,
    pub(crate) prefix: String,
    pub(crate) counts: Counts,
    /// Jobs that finished in the last minute (by `finishedOn`; jobs removed
    /// on completion are not counted), and the same per second.
    pub(crate) completed_last_minute: u64,
    pub(crate) failed_last_minute: u64,
    pub(crate) completed_per_sec: f64,
    pub(crate) failed_per_sec: f64,
    pub(crate) workers: Vec<WorkerInfo>,
    pub(crate) at: u64,
}

/// Keep `info` (with the slot's current digest) fresh in Redis until the
/// returned guard is dropped or [`Heartbeat::stop`] removes it.
pub(crate) struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    keys: RegistryKeys,
    id: String,
}

impl Heartbeat {
    pub(crate) fn spawn<C>(conn: C, prefix: &str, queue: &str, slot: Arc<PluginSlot>, concurrency: usize) -> Heartbeat
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let keys = RegistryKeys::new(prefix, queue);
        let host = hostname();
        let pid = std::process::id();
        let id = format!("{host}:{pid}:{:08x}", rand::random::<u32>());
        let mut info = WorkerInfo {
            id: id.clone(),
            host,
            pid,
            digest: String::new(),
            concurrency,
            started_at: now_ms(),
            seen_at: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let k = keys.clone();
        let task = tokio::spawn(async move {
            let mut conn = conn;
            loop {
                info.digest = slot.current().digest.to_string();
                let now = now_ms();
                let r: redis::RedisResult<()> = redis::pipe()
                    .zadd(k.workers(), &info.id, now)
                    .hset(k.worker_info(), &info.id, serde_json::to_string(&info).expect("info serializes"))
                    .zrembyscore(k.workers(), 0, now.saturating_sub(FORGET_AFTER.as_millis() as u64))
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = r {
                    // Stats only; the worker itself is unaffected.
                    debug!(error = %e, "heartbeat not written");
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
        Heartbeat { task, keys, id }
    }

    /// Stop beating and remove this worker from the queue's live list.
    pub(crate) async fn stop<C: ConnectionLike>(self, conn: &mut C) {
        self.task.abort();
        let r: redis::RedisResult<()> = redis::pipe()
            .zrem(self.keys.workers(), &self.id)
            .hdel(self.keys.worker_info(), &self.id)
            .query_async(conn)
            .await;
        if let Err(e) = r {
            debug!(error = %e, "heartbeat not removed");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Read a queue's counts, last-minute rates and live workers (one round trip).
pub(crate) async fn queue_stats<C: ConnectionLike>(
    conn: &mut C,
    prefix: &str,
    queue: &str,
) -> redis::RedisResult<QueueStats> {
    let base = format!("{prefix}:{queue}");
    let keys = RegistryKeys::new(prefix, queue);
    let now = now_ms();
    let minute_ago = now.saturating_sub(60_000);
    let live_since = now.saturating_sub(LIVE_FOR.as_millis() as u64);
    let (waiting, active, delayed, prioritized, waiting_children, paused, completed, failed): (
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
    );
    let (completed_last_minute, failed_last_minute, live): (u64, u64, Vec<String>);
    (
        waiting,
        active,
        delayed,
        prioritized,
        waiting_children,
        paused,
        completed,
        failed,
        completed_last_minute,
        failed_last_minute,
        live,
    ) = redis::pipe()
        .cmd("LLEN")
        .arg(format!("{base}:wait"))
        .cmd("LLEN")
        .arg(format!("{base}:active"))
        .cmd("ZCARD")
        .arg(format!("{base}:delayed"))
        .cmd("ZCARD")
        .arg(format!("{base}:prioritized"))
        .cmd("ZCARD")
        .arg(format!("{base}:waiting-children"))
        .cmd("LLEN")
        .arg(format!("{base}:paused"))
        .cmd("ZCARD")
        .arg(format!("{base}:completed"))
        .cmd("ZCARD")
        .arg(format!("{base}:failed"))
        .cmd("ZCOUNT")
        .arg(format!("{base}:completed"))
        .arg(minute_ago)
        .arg("+inf")
        .cmd("ZCOUNT")
        .arg(format!("{base}:failed"))
        .arg(minute_ago)
        .arg("+inf")
        .cmd("ZRANGEBYSCORE")
        .arg(keys.workers())
        .arg(live_since)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    let mut workers = Vec::new();
    let pairs: Vec<(String, u64)> =
        live.chunks(2).filter_map(|c| Some((c.first()?.clone(), c.get(1)?.parse().ok()?))).collect();
    if !pairs.is_empty() {
        let ids: Vec<&String> = pairs.iter().map(|(id, _)| id).collect();
        let infos: Vec<Option<String>> =
            redis::cmd("HMGET").arg(keys.worker_info()).arg(&ids).query_async(conn).await?;
        for ((_, seen), raw) in pairs.iter().zip(infos) {
            if let Some(mut w) = raw.and_then(|r| serde_json::from_str::<WorkerInfo>(&r).ok()) {
                w.seen_at = *seen;
                workers.push(w);
            }
        }
    }
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(QueueStats {
        queue: queue.to_string(),
        prefix: prefix.to_string(),
        counts: Counts { waiting, active, delayed, prioritized, waiting_children, paused, completed, failed },
        completed_last_minute,
        failed_last_minute,
        completed_per_sec: completed_last_minute as f64 / 60.0,
        failed_per_sec: failed_last_minute as f64 / 60.0,
        workers,
        at: now,
    })
}

/// The human-readable form `bullpen stats` prints.
pub(crate) fn render(s: &QueueStats) -> String {
    use std::fmt::Write;
    let c = &s.counts;
    let mut out = String::new();
    let _ = writeln!(out, "queue {} (prefix {})  at {}", s.queue, s.prefix, crate::plugins::registry::iso8601(s.at));
    let _ = writeln!(
        out,
        "  waiting {}  active {}  delayed {}  prioritized {}  waiting-children {}  paused {}  completed {}  failed {}",
        c.waiting, c.active, c.delayed, c.prioritized, c.waiting_children, c.paused, c.completed, c.failed
    );
    let _ = writeln!(
        out,
        "  last minute: {} completed ({:.1}/s), {} failed ({:.1}/s)",
        s.completed_last_minute, s.completed_per_sec, s.failed_last_minute, s.failed_per_sec
    );
    if s.workers.is_empty() {
        let _ = writeln!(out, "  no live bullpen workers");
    } else {
        let _ = writeln!(out, "  live bullpen workers: {}", s.workers.len());
        for w in &s.workers {
            let up = s.at.saturating_sub(w.started_at) / 1000;
            let _ = writeln!(
                out,
                "    {:<32}  digest {}  concurrency {:>4}  up {}  seen {:.1}s ago",
                w.id,
                w.digest.get(..12).unwrap_or(&w.digest),
                w.concurrency,
                human_secs(up),
                s.at.saturating_sub(w.seen_at) as f64 / 1000.0
            );
        }
    }
    out
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}
