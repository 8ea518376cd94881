//! The `job-context` calls of a worker's attempt, on the job in Redis.
//!
//! BullMQ's own `updateData`, `updateProgress` and `addLog` scripts do not
//! check the lock token, so bullpen runs its own scripts (`lua/`): the lock
//! check followed by exactly the writes BullMQ's script makes, so Node
//! clients see no difference. Moves (`moveToDelayed`,
//! `moveToWaitingChildren`, `moveJobFromActiveToWait`) use BullMQ's scripts through `bullmq-official`,
//! which check the token themselves.

use std::collections::HashMap;
use std::sync::Arc;

use bullmq::redis_connection::AnyConnection;
use bullmq::{JobOptions, ParentOptions, Queue, QueueKeys, QueueOptions};
use tokio::sync::Mutex;

use super::codes::{self, JOB_MISSING, NOT_IN_STATE};
use super::write_behind::WriteBehind;
use super::{ChildQueues, Grants, Moved, DIGEST_LOG_PREFIX};
use crate::bindings::types::JobError;
use crate::conn::RedisTarget;
use crate::sandbox::{CapturedOutput, Limits};
use crate::span::in_attempt;

const CHECK_LOCK: &str = include_str!("lua/check_lock.lua");

/// bullpen's scripts, compiled (hashed) once per binding.
pub(crate) struct Scripts {
    update_data: redis::Script,
    /// A failed attempt's stack appended to the job's `stacktrace`.
    save_stacktrace: redis::Script,
    /// Pending log lines and progress values (see [`super::write_behind`]).
    pub(crate) flush: redis::Script,
    /// `flush`'s source and SHA1, for the flush sent ahead of a finish.
    pub(crate) flush_source: Arc<str>,
    pub(crate) flush_sha: Arc<str>,
    check_lock: redis::Script,
    /// BullMQ's own `moveToDelayed`, for retries with a delay bullmq-official
    /// cannot compute (`super::retry`).
    pub(crate) move_to_delayed: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let src = |body: &str| format!("{CHECK_LOCK}\n{body}");
        let s = |body: &str| redis::Script::new(&src(body));
        let flush_source: Arc<str> = src(include_str!("lua/flush.lua")).into();
        let flush = redis::Script::new(&flush_source);
        Scripts {
            update_data: s(include_str!("lua/update_data.lua")),
            save_stacktrace: s(include_str!("lua/save_stacktrace.lua")),
            flush_sha: flush.get_hash().into(),
            flush_source,
            flush,
            check_lock: s(include_str!("lua/check_only.lua")),
            move_to_delayed: redis::Script::new(include_str!("lua/bullmq/moveToDelayed-11.lua")),
        }
    }
}

/// What a binding shares with all its attempts' host calls.
pub(crate) struct Shared {
    pub(crate) redis: AnyConnection,
    target: RedisTarget,
    prefix: String,
    pub(crate) keys: QueueKeys,
    /// `keys.events()` and `keys.meta()`, formatted once: every attempt's
    /// flush names them.
    pub(crate) events_key: String,
    pub(crate) meta_key: String,
    pub(crate) scripts: Scripts,
    pub(crate) limits: Limits,
    /// BullMQ `lockDuration`, passed to BullMQ's move scripts.
    pub(crate) lock_duration_ms: u64,
    /// Queues this binding's guests may add children to.
    pub(crate) child_queues: ChildQueues,
    /// Outbound HTTP and variables granted to this binding's guests.
    pub(crate) grants: Arc<Grants>,
    /// One `Queue` handle per child queue, created on first use.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

/// Everything [`Shared`] is made from.
pub(crate) struct SharedConfig {
    pub(crate) target: RedisTarget,
    pub(crate) prefix: String,
    pub(crate) queue: String,
    pub(crate) limits: Limits,
    pub(crate) lock_duration_ms: u64,
    pub(crate) child_queues: ChildQueues,
    pub(crate) grants: Arc<Grants>,
}

impl Shared {
    pub(crate) fn new(redis: AnyConnection, c: SharedConfig) -> Self {
        let keys = QueueKeys::new(&c.queue, Some(&c.prefix));
        Shared {
            redis,
            target: c.target,
            events_key: keys.events(),
            meta_key: keys.meta(),
            keys,
            prefix: c.prefix,
            scripts: Scripts::new(),
            limits: c.limits,
            lock_duration_ms: c.lock_duration_ms,
            child_queues: c.child_queues,
            grants: c.grants,
            queues: Mutex::new(HashMap::new()),
        }
    }

    async fn queue(&self, name: &str) -> Result<Arc<Queue>, bullmq::Error> {
        let mut qs = self.queues.lock().await;
        if let Some(q) = qs.get(name) {
            return Ok(q.clone());
        }
        let opts = QueueOptions {
            connection: self.target.bullmq_options(),
            prefix: self.prefix.clone(),
            ..Default::default()
        };
        let q = Arc::new(Queue::with_options(name, opts).await?);
        qs.insert(name.to_string(), q.clone());
        Ok(q)
    }

    /// One field of job `id`'s hash as stored (bullmq-official parses `data`
    /// and `opts`, losing what it does not model).
    pub(crate) async fn raw_field(&self, id: &str, field: &str) -> redis::RedisResult<Option<String>> {
        let key = self.keys.job_key(id);
        with_reconnect(|| {
            let mut conn = self.redis.clone();
            let key = &key;
            async move { redis::cmd("HGET").arg(key).arg(field).query_async(&mut conn).await }
        })
        .await
    }
}

/// The current job as the host functions see it.
pub(crate) struct JobContext {
    pub(crate) shared: Arc<Shared>,
    /// The bullmq job, carrying the lock token for BullMQ's move scripts.
    pub(crate) job: bullmq::Job,
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) job_key: String,
    /// Set when a move succeeded: the attempt must end without finishing.
    pub(crate) moved: Option<Moved>,
    /// Set when the lock was found missing or taken: nothing more is
    /// written for this job by this attempt.
    pub(crate) lock_lost: bool,
    /// The guest's stdout/stderr, flushed to the log before each move.
    output: CapturedOutput,
    /// Log lines and progress values not written yet.
    pub(crate) pending: Arc<WriteBehind>,
}

impl JobContext {
    /// The job context of one attempt of `job` (which carries its lock token).
    pub(crate) fn new(shared: Arc<Shared>, job: bullmq::Job, output: CapturedOutput) -> Self {
        let id = job.id().to_string();
        let token = job.token().unwrap_or_default().to_string();
        let job_key = shared.keys.job_key(&id);
        let keep_logs = match job.opts().keep_logs {
            Some(n) if n > 0 => n.to_string(),
            _ => String::new(),
        };
        let pending = Arc::new(WriteBehind::new(shared.clone(), &job_key, &id, &token, keep_logs));
        JobContext { job_key, id, token, job, shared, moved: None, lock_lost: false, output, pending }
    }

    /// Record `digest` (the attempt's plugin version) in the job log with
    /// the attempt's first flush, at no extra Redis call.
    pub(crate) fn with_plugin_digest(self, digest: &str) -> Self {
        self.pending.set_digest_line([DIGEST_LOG_PREFIX, digest].concat());
        self
    }

    /// Whether this attempt may still write: not after a lost lock, whether
    /// a call found it or a background flush did.
    fn lock_held(&mut self) -> Result<(), JobError> {
        if self.lock_lost {
            return Err(JobError::LockLost);
        }
        self.check_found()
    }

    /// What a background flush found: a lost lock or a removed job ends
    /// this attempt's writes, as if the current call had found it.
    fn check_found(&mut self) -> Result<(), JobError> {
        match self.pending.take_found() {
            Some(code) => self.code_to_result(code).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Write pending log lines and progress, then `extra` (captured
    /// output), in one lock-checked script (see [`super::write_behind`]).
    pub(crate) async fn flush(&mut self, extra: Vec<String>) -> Result<(), JobError> {
        self.lock_held()?;
        let code = self.pending.flush(extra).await?;
        self.code_to_result(code).map(|_| ())
    }

    /// Like [`flush`](Self::flush), for an attempt that completed: the
    /// writes are returned, for the worker to send in the same round trip
    /// as, and just before, the job's `moveToFinished` (one round trip for a
    /// short job instead of two). The script is the same lock-checked one;
    /// a lock lost by then fails both it and the finish.
    pub(crate) fn flush_with_finish(&mut self, extra: Vec<String>) -> Result<Option<bullmq::FinishPrelude>, JobError> {
        self.lock_held()?;
        Ok(self.pending.finish_prelude(extra))
    }

    /// Run one of bullpen's lock-checked scripts with KEYS = [job, lock]
    /// and ARGV = [token, write sequence number (0: writes nothing), args...].
    async fn run_checked(
        &mut self,
        script: fn(&Scripts) -> &redis::Script,
        kind: Checked,
        args: &[&str],
    ) -> Result<i64, JobError> {
        self.lock_held()?;
        let shared = self.shared.clone();
        let mut inv = script(&shared.scripts).prepare_invoke();
        let (job_key, lock_key) = self.pending.checked_keys();
        inv.key(job_key).key(lock_key);
        inv.arg(&self.token);
        match kind {
            Checked::Write => inv.arg(self.pending.next_seq()),
            Checked::ReadOnly => inv.arg("0"),
        };
        for a in args {
            inv.arg(*a);
        }
        let code: i64 = with_reconnect(|| {
            let mut conn = shared.redis.clone();
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
        .map_err(unavailable)?;
        self.code_to_result(code)
    }

    /// A script's reply code as the guest's result; a code that means the
    /// job is no longer this attempt's ends its writes.
    pub(crate) fn code_to_result(&mut self, code: i64) -> Result<i64, JobError> {
        if codes::lock_lost(code) {
            self.lock_lost = true;
            return Err(JobError::LockLost);
        }
        if code == JOB_MISSING {
            // Removed while we ran: nothing is left this attempt may write.
            self.lock_lost = true;
            return Err(JobError::WrongState(format!("job {} no longer exists", self.id)));
        }
        Ok(code)
    }

    fn bullmq_error(&mut self, e: bullmq::Error) -> JobError {
        use bullmq::Error as B;
        match e {
            B::JobLockNotExist(_) => {
                self.lock_lost = true;
                JobError::LockLost
            }
            B::Script { code, .. } if codes::lock_lost(code) => {
                self.lock_lost = true;
                JobError::LockLost
            }
            B::JobNotFound(_) | B::Script { code: JOB_MISSING, .. } => {
                self.lock_lost = true;
                JobError::WrongState(format!("job {} no longer exists", self.id))
            }
            B::JobNotInState(_, s) => JobError::WrongState(format!("job {} is not {s}", self.id)),
            B::Script { code: NOT_IN_STATE, message } => JobError::WrongState(message),
            B::Unrecoverable(m) => JobError::WrongState(m),
            B::Redis(e) => unavailable(e),
            other => JobError::Unavailable(other.to_string()),
        }
    }

    /// Write what the guest printed so far to the job log, with anything
    /// pending. Called before a move (which releases the lock).
    async fn flush_output(&mut self) -> Result<(), JobError> {
        let lines = self.output.take_lines(self.shared.limits.max_log_line_bytes);
        self.flush(lines).await
    }

    /// Write pending log lines and progress before a write that must come
    /// after them (nothing to do, no Redis call, when nothing is pending).
    async fn flush_pending(&mut self) -> Result<(), JobError> {
        if self.pending.is_empty() {
            return self.check_found();
        }
        self.flush(Vec::new()).await
    }

    /// Is this worker still holding the lock? (Used before adding a child.)
    /// A flush of pending writes checks it too, in the same script.
    async fn check_lock(&mut self) -> Result<(), JobError> {
        if !self.pending.is_empty() {
            return self.flush(Vec::new()).await;
        }
        self.run_checked(|s| &s.check_lock, Checked::ReadOnly, &[]).await.map(|_| ())
    }

    /// `log`/`update-progress` after a move or a lost lock get what a
    /// lock-checked write would have: the lock is gone.
    fn writable(&mut self) -> Result<(), JobError> {
        if self.moved.is_some() {
            return Err(JobError::LockLost);
        }
        self.lock_held()
    }

    /// A move ends the attempt: only one, and not after the lock is gone.
    fn movable(&self) -> Result<(), JobError> {
        if self.lock_lost {
            return Err(JobError::LockLost);
        }
        if self.moved.is_some() {
            return Err(JobError::WrongState("the job was already moved in this attempt".into()));
        }
        Ok(())
    }

    // The `job-context` calls, after the argument checks in `super`.

    pub(crate) async fn update_data(&mut self, data: &str) -> Result<(), JobError> {
        traced("updateData", async {
            self.flush_pending().await?;
            self.run_checked(|s| &s.update_data, Checked::Write, &[data]).await.map(|_| ())
        })
        .await
    }

    /// Append a failed attempt's stack to the job's `stacktrace` (what
    /// Node's `moveToFailed` writes with the failure), lock-checked, before
    /// the failure itself is written. `limit` is the job's
    /// `opts.stackTraceLimit`.
    pub(crate) async fn save_stacktrace(&mut self, stack: &str, limit: Option<u32>) -> Result<(), JobError> {
        let limit = limit.map(|n| n.to_string()).unwrap_or_default();
        self.run_checked(|s| &s.save_stacktrace, Checked::Write, &[stack, &limit]).await.map(|_| ())
    }

    pub(crate) async fn update_progress(&mut self, progress: String) -> Result<(), JobError> {
        self.writable()?;
        if self.pending.progress(progress) {
            self.flush(Vec::new()).await?;
        }
        Ok(())
    }

    pub(crate) async fn log(&mut self, line: String) -> Result<(), JobError> {
        self.writable()?;
        if self.pending.log(line) {
            self.flush(Vec::new()).await?;
        }
        Ok(())
    }

    pub(crate) async fn move_to_delayed(&mut self, timestamp_ms: u64) -> Result<(), JobError> {
        self.movable()?;
        traced("moveToDelayed", async {
            self.flush_output().await?;
            match self.job.move_to_delayed(timestamp_ms).await {
                Ok(()) => {
                    self.moved = Some(Moved::Delayed);
                    Ok(())
                }
                Err(e) => Err(self.bullmq_error(e)),
            }
        })
        .await
    }

    /// Node's `worker.rateLimit(ms)` then `Worker.RateLimitError`: the
    /// queue's limiter key as BullMQ sets it (`SET <limiter>
    /// 9007199254740991 PX ms`), then the job back to wait.
    pub(crate) async fn rate_limit(&mut self, delay_ms: u64) -> Result<(), JobError> {
        self.movable()?;
        traced("rateLimit", self.rate_limit_now(delay_ms)).await
    }

    async fn rate_limit_now(&mut self, delay_ms: u64) -> Result<(), JobError> {
        self.flush_output().await?;
        let key = self.shared.keys.limiter();
        with_reconnect(|| {
            let mut conn = self.shared.redis.clone();
            let key = &key;
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(super::MAX_RATE_LIMIT_MS)
                    .arg("PX")
                    .arg(delay_ms)
                    .query_async::<()>(&mut conn)
                    .await
            }
        })
        .await
        .map_err(unavailable)?;
        self.back_to_wait(Moved::RateLimited).await
    }

    /// BullMQ's `job.moveToWait(token)`.
    pub(crate) async fn move_to_wait(&mut self) -> Result<(), JobError> {
        self.movable()?;
        traced("moveToWait", async {
            self.flush_output().await?;
            self.back_to_wait(Moved::Waiting).await
        })
        .await
    }

    /// BullMQ's `moveJobFromActiveToWait` (lock-checked by the script):
    /// back to the front of wait (or prioritized), attemptsMade unchanged.
    async fn back_to_wait(&mut self, how: Moved) -> Result<(), JobError> {
        match self.job.move_to_wait(None).await {
            Ok(_limiter_ttl) => {
                self.moved = Some(how);
                Ok(())
            }
            Err(e) => Err(self.bullmq_error(e)),
        }
    }

    pub(crate) async fn add_child(
        &mut self,
        queue: &str,
        name: &str,
        data: serde_json::Value,
        mut opts: JobOptions,
    ) -> Result<String, JobError> {
        opts.parent = Some(ParentOptions { queue: self.shared.keys.base(), id: self.id.clone(), wait_children: None });
        // With traces on, the child carries the context of its `add` span
        // (opts `tm`), as Node's BullMQ does: its worker continues the trace.
        let Some((span, tm)) = crate::span::trace(|t| t.add_child(queue, name)) else {
            return self.add_child_now(queue, name, data, opts).await;
        };
        opts.telemetry_metadata = Some(tm);
        let added = self.add_child_now(queue, name, data, opts).await;
        match &added {
            Ok(_) => span.ok(),
            Err(e) => span.err(&format!("{e:?}")),
        }
        added
    }

    async fn add_child_now(
        &mut self,
        queue: &str,
        name: &str,
        data: serde_json::Value,
        opts: JobOptions,
    ) -> Result<String, JobError> {
        // The lock is checked just before adding; a retried step re-adding
        // a child with the same custom jobId gets the existing child back.
        self.check_lock().await?;
        let q = match self.shared.queue(queue).await {
            Ok(q) => q,
            Err(e) => return Err(self.bullmq_error(e)),
        };
        match q.add(name, data).options(opts).await {
            Ok(child) => Ok(child.id().to_string()),
            Err(bullmq::Error::InvalidConfig(m)) => Err(JobError::Invalid(m)),
            Err(e) => Err(self.bullmq_error(e)),
        }
    }

    pub(crate) async fn wait_for_children(&mut self) -> Result<bool, JobError> {
        self.movable()?;
        traced("moveToWaitingChildren", async {
            self.flush_output().await?;
            match self.job.move_to_waiting_children(None).await {
                Ok(true) => {
                    self.moved = Some(Moved::WaitingChildren);
                    Ok(true)
                }
                Ok(false) => Ok(false),
                Err(e) => Err(self.bullmq_error(e)),
            }
        })
        .await
    }

    pub(crate) async fn children_values(&mut self) -> Result<Vec<(String, String)>, JobError> {
        let key = format!("{}:processed", self.job_key);
        with_reconnect(|| {
            let mut conn = self.shared.redis.clone();
            let key = &key;
            async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
        })
        .await
        .map_err(unavailable)
    }
}

/// What a lock-checked script does, for its write sequence number.
#[derive(Clone, Copy)]
enum Checked {
    /// Writes job state: numbered, applied at most once.
    Write,
    /// Only checks the lock.
    ReadOnly,
}

/// Run one of the attempt's Redis transitions inside a child span of its
/// trace named `operation` (`telemetry.rs`); just `call` when traces are off.
pub(crate) async fn traced<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    let Some(span) = crate::span::trace(|t| t.redis(operation)) else {
        return call.await;
    };
    let r = call.await;
    match &r {
        Ok(_) => span.ok(),
        Err(e) => span.err(&format!("{e:?}")),
    }
    r
}

/// Redis trouble as the guest sees it: the attempt may be retried.
pub(crate) fn unavailable(e: redis::RedisError) -> JobError {
    JobError::Unavailable(format!("redis: {e}"))
}

/// Run a Redis call, retrying connection failures for up to ~3 s. The
/// connection manager reconnects in the background, but the first call after
/// an outage still fails with the dead connection's error; without this a
/// Redis restart would fail the attempts that were running.
pub(crate) async fn with_reconnect<T, F, Fut>(mut call: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut delay = std::time::Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match call().await {
            Err(e)
                if tries < 7
                    && (e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal()
                        || e.is_timeout()) =>
            {
                tries += 1;
                // Said once per call: every running attempt retries at
                // once in an outage, seven times each.
                if tries == 1 {
                    in_attempt(|| tracing::warn!(error = %e, "redis unavailable; retrying for up to ~3 s"));
                } else {
                    in_attempt(
                        || tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying"),
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            r => return r,
        }
    }
}
