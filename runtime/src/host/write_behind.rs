//! Write-behind for `log` and `update-progress`: an attempt's log lines and
//! progress values are kept in the host and written in one lock-checked
//! script (`lua/flush.lua`) instead of one script per call.
//!
//! Why: a short job (log a line, set progress, return) cost BullMQ three
//! Redis scripts besides its finish, and Redis CPU per script is what caps a
//! worker's jobs/s (bench/README.md). With write-behind the same job costs
//! one script plus the finish, and Redis receives exactly the writes BullMQ's
//! `addLog` and `updateProgress` scripts make, in call order (plus the
//! attempt's write sequence number, which makes a retried flush apply once:
//! [`WriteBehind::next_seq`]).
//!
//! When pending writes reach Redis, whichever comes first:
//! - before any other host call that writes or moves the job (`update-data`,
//!   `add-child`, `move-to-delayed`, `wait-for-children`), so order holds;
//! - at the end of the attempt, with the captured stdout/stderr, before the
//!   job is finished (a client that sees `completed` sees the lines). For a
//!   completed attempt that write goes in the same round trip as, and just
//!   before, the job's `moveToFinished` ([`WriteBehind::finish_prelude`]);
//! - [`WRITE_BEHIND`] after the oldest pending write, even while the guest
//!   computes or sleeps (`attempt::exec::call` runs the flush with the guest paused);
//! - when [`MAX_PENDING_BYTES`] are pending;
//! - when shutdown interrupts the attempt, before its job is handed back
//!   (`queue::trigger`).
//!
//! What a guest sees: `log` and `update-progress` return `ok` once their
//! argument passes its checks. A lock lost in the meantime (BullMQ's own
//! `addLog`/`updateProgress` never check the lock) is found by the flush:
//! the attempt's next host call gets `lock-lost`, and the worker leaves the
//! job to its new owner, as it does for a write-through call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use super::redis_job::{unavailable, with_reconnect, Shared};
use crate::bindings::types::JobError;

/// The longest a log line or progress value waits before it is written.
/// Short enough that a dashboard watching a long attempt sees its progress
/// live; long enough that short attempts write everything in one script.
pub(crate) const WRITE_BEHIND: Duration = Duration::from_millis(100);

/// Pending bytes that make the next `log`/`update-progress` write at once:
/// bounds the host memory a chatty guest can hold.
pub(crate) const MAX_PENDING_BYTES: usize = 256 * 1024;

/// One attempt's pending writes and what the flush needs to write them.
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
    /// KEYS: job, lock, logs, events, meta.
    keys: [String; 5],
    token: String,
    id: String,
    keep_logs: String,
    pending: Mutex<Pending>,
    /// The last write sequence number handed out (see [`next_seq`](Self::next_seq)).
    seq: AtomicU64,
    /// Wakes `attempt::exec::call` when the first write of a batch is queued, so it
    /// can arm the [`WRITE_BEHIND`] timer.
    pub(crate) queued: Notify,
}

#[derive(Default)]
struct Pending {
    logs: Vec<String>,
    progress: Vec<String>,
    bytes: usize,
    /// When the oldest pending write was queued.
    since: Option<Instant>,
    /// The plugin-digest line, until it has been written.
    digest_line: Option<String>,
    /// What a timer flush found about the lock (a script code), for the next host call.
    found: Option<i64>,
}

impl WriteBehind {
    pub(crate) fn new(shared: Arc<Shared>, job_key: &str, id: &str, token: &str, keep_logs: String) -> Self {
        let keys = [
            job_key.to_string(),
            [job_key, ":lock"].concat(),
            [job_key, ":logs"].concat(),
            shared.events_key.clone(),
            shared.meta_key.clone(),
        ];
        WriteBehind {
            shared,
            keys,
            token: token.to_string(),
            id: id.to_string(),
            keep_logs,
            pending: Mutex::new(Pending::default()),
            seq: AtomicU64::new(0),
            queued: Notify::new(),
        }
    }

    /// The job key and its lock key: KEYS[1] and KEYS[2] of every
    /// lock-checked script of this attempt.
    pub(crate) fn checked_keys(&self) -> (&str, &str) {
        (&self.keys[0], &self.keys[1])
    }

    /// The next sequence number of this attempt's lock-checked writes
    /// (flushes and `update-data`), ARGV[2] of each: the script applies a
    /// number at most once (`lua/check_lock.lua`), so a write the client
    /// sends again after a timeout cannot be applied twice, nor an old copy
    /// arriving after a newer write undo it.
    pub(crate) fn next_seq(&self) -> String {
        (self.seq.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// Write `line` ahead of the attempt's first flush (the plugin digest).
    pub(crate) fn set_digest_line(&self, line: String) {
        self.pending.lock().unwrap().digest_line = Some(line);
    }

    /// Queue a log line; true when enough is pending to write now.
    pub(crate) fn log(&self, line: String) -> bool {
        self.queue(line.len(), |p| p.logs.push(line))
    }

    /// Queue a progress value (checked JSON); true when enough is pending to write now.
    pub(crate) fn progress(&self, json: String) -> bool {
        self.queue(json.len(), |p| p.progress.push(json))
    }

    fn queue(&self, len: usize, push: impl FnOnce(&mut Pending)) -> bool {
        let mut p = self.pending.lock().unwrap();
        let first = p.since.is_none();
        push(&mut p);
        p.bytes += len;
        if first {
            p.since = Some(Instant::now());
            drop(p);
            self.queued.notify_one();
            return false;
        }
        p.bytes >= MAX_PENDING_BYTES
    }

    /// Whether a log line or progress value is waiting (the digest line alone does not count).
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.lock().unwrap().since.is_none()
    }

    /// When the oldest pending write is due, if anything is pending.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.pending.lock().unwrap().since.map(|s| s + WRITE_BEHIND)
    }

    /// The lock code a timer flush found (taken once), for the next host call.
    pub(crate) fn take_found(&self) -> Option<i64> {
        self.pending.lock().unwrap().found.take()
    }

    /// Take everything pending, then `extra`, as `flush.lua`'s ARGV: token,
    /// write sequence number, keepLogs, job id, the number of log lines, the lines (the digest line
    /// first, with the attempt's first batch), the progress values.
    fn take(&self, extra: Vec<String>) -> Option<Vec<String>> {
        let mut p = self.pending.lock().unwrap();
        if p.digest_line.is_none() && p.logs.is_empty() && p.progress.is_empty() && extra.is_empty() {
            return None;
        }
        let n = usize::from(p.digest_line.is_some()) + p.logs.len() + extra.len();
        let mut argv = Vec::with_capacity(5 + n + p.progress.len());
        argv.extend([self.token.clone(), self.next_seq(), self.keep_logs.clone(), self.id.clone(), n.to_string()]);
        // The digest line goes with the attempt's first flush, even an
        // empty one, so every attempt records the version that ran it.
        argv.extend(p.digest_line.take());
        argv.append(&mut p.logs);
        argv.extend(extra);
        argv.append(&mut p.progress);
        p.bytes = 0;
        p.since = None;
        Some(argv)
    }

    /// Write everything pending, then `extra` (captured output), in one
    /// lock-checked script. Returns the script's code (negative: lock lost
    /// or job gone, as BullMQ's codes) or Redis being unavailable.
    pub(crate) async fn flush(&self, extra: Vec<String>) -> Result<i64, JobError> {
        let Some(argv) = self.take(extra) else { return Ok(0) };
        let mut inv = self.shared.scripts.flush.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &argv {
            inv.arg(a);
        }
        with_reconnect(|| {
            let mut conn = self.shared.redis.clone();
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
        .map_err(unavailable)
    }

    /// The same write as [`flush`](Self::flush), for the worker to send in
    /// one round trip just before the job's `moveToFinished`. `None` when
    /// nothing is pending.
    pub(crate) fn finish_prelude(&self, extra: Vec<String>) -> Option<bullmq::FinishPrelude> {
        let args = self.take(extra)?;
        let scripts = &self.shared.scripts;
        Some(bullmq::FinishPrelude {
            source: scripts.flush_source.clone(),
            sha: scripts.flush_sha.clone(),
            keys: self.keys.to_vec(),
            args,
        })
    }

    /// The [`WRITE_BEHIND`] flush, run by `attempt::exec::call` while the guest is
    /// paused. A lost lock is kept for the next host call; Redis being away
    /// past the reconnect window loses these lines, as a failed `log` would.
    pub(crate) async fn flush_due(&self) {
        match self.flush(Vec::new()).await {
            Ok(code) if code < 0 => self.pending.lock().unwrap().found = Some(code),
            Ok(_) => {}
            Err(e) => crate::span::in_attempt(|| warn!(error = ?e, "could not write pending log lines/progress")),
        }
    }
}

/// Run `call` (an attempt's `process` call) to completion, writing the
/// attempt's pending log lines and progress [`WRITE_BEHIND`] after they were
/// queued. The flush runs while `call` is not polled, so the guest is paused
/// and no host call interleaves with it.
pub(crate) async fn drive<F: std::future::Future>(wb: Option<Arc<WriteBehind>>, call: F) -> F::Output {
    let Some(wb) = wb else { return call.await };
    tokio::pin!(call);
    loop {
        let due = wb.due();
        tokio::select! {
            biased;
            r = &mut call => return r,
            _ = wb.queued.notified(), if due.is_none() => {}
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => wb.flush_due().await,
        }
    }
}
