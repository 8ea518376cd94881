//! The `job-context` host functions: each one acts on the current job only,
//! and each one that writes job state is checked against the job's lock
//! token first.
//!
//! BullMQ's own `updateData`, `updateProgress` and `addLog` scripts do not
//! check the token, so bullpen runs its own scripts (`lua/`): the lock check
//! followed by exactly the writes BullMQ's script makes, so Node clients see
//! no difference. Moves (`moveToDelayed`, `moveToWaitingChildren`) use
//! BullMQ's scripts through `bullmq-official`, which check the token
//! themselves.

use std::collections::HashMap;
use std::sync::Arc;

use bullmq::{JobOptions, ParentOptions, Queue, QueueKeys, QueueOptions};
use bullmq::redis_connection::AnyConnection;
use tokio::sync::Mutex;

use crate::bindings::bullpen::processor::job_context;
use crate::conn::RedisTarget;
use crate::bindings::types::{self, JobError};
use crate::sandbox::{truncate_utf8, CapturedOutput, HostState, Limits};

pub mod local;
pub mod retry;
pub mod write_behind;

pub use local::LocalJob;
pub use write_behind::WriteBehind;

const CHECK_LOCK: &str = include_str!("lua/check_lock.lua");

/// The job log line that records which plugin version ran an attempt:
/// this prefix and the component's sha256 hex. Written once per attempt,
/// with the attempt's first flush of its log (see [`write_behind`]).
pub const DIGEST_LOG_PREFIX: &str = "bullpen: plugin sha256:";

/// bullpen's lock-checked scripts, compiled (hashed) once per binding.
pub struct Scripts {
    update_data: redis::Script,
    /// Pending log lines and progress values (see [`write_behind`]).
    pub(crate) flush: redis::Script,
    /// `flush`'s source and SHA1, for the flush sent ahead of a finish.
    pub(crate) flush_source: Arc<str>,
    pub(crate) flush_sha: Arc<str>,
    check_lock: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let src = |body: &str| format!("{CHECK_LOCK}\n{body}");
        let s = |body: &str| redis::Script::new(&src(body));
        let flush_source: Arc<str> = src(include_str!("lua/flush.lua")).into();
        let flush = redis::Script::new(&flush_source);
        Scripts {
            update_data: s(include_str!("lua/update_data.lua")),
            flush_sha: flush.get_hash().into(),
            flush_source,
            flush,
            check_lock: s(include_str!("lua/check_only.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// What a binding shares with all its attempts' host calls.
pub struct Shared {
    pub redis: AnyConnection,
    pub target: RedisTarget,
    pub prefix: String,
    pub keys: QueueKeys,
    /// `keys.events()` and `keys.meta()`, formatted once: every attempt's
    /// flush names them.
    pub(crate) events_key: String,
    pub(crate) meta_key: String,
    pub scripts: Scripts,
    pub limits: Limits,
    /// BullMQ `lockDuration`, passed to BullMQ's move scripts.
    pub lock_duration_ms: u64,
    /// Queues this binding's guests may add children to.
    pub child_queues: ChildQueues,
    /// One `Queue` handle per child queue, created on first use.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// A completed attempt's last pending writes, by job id, for the worker
    /// to send in the same round trip as the job's `moveToFinished`
    /// (`WriteBehind::finish_prelude`; taken by `take_finish_prelude`).
    finish_preludes: std::sync::Mutex<HashMap<String, bullmq::FinishPrelude>>,
}

/// Which queues a guest may add children to.
#[derive(Debug, Clone)]
pub enum ChildQueues {
    /// Any queue under the binding's prefix (`--child-queue '*'`).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl ChildQueues {
    /// The default: the binding's own queue and `<queue>-children`.
    pub fn default_for(queue: &str) -> Self {
        ChildQueues::Only(vec![queue.to_string(), format!("{queue}-children")])
    }
    fn allows(&self, q: &str) -> bool {
        match self {
            ChildQueues::Any => true,
            ChildQueues::Only(list) => list.iter().any(|x| x == q),
        }
    }
}

impl Shared {
    pub fn new(
        redis: AnyConnection,
        target: RedisTarget,
        prefix: String,
        queue: &str,
        limits: Limits,
        lock_duration_ms: u64,
        child_queues: ChildQueues,
    ) -> Self {
        let keys = QueueKeys::new(queue, Some(&prefix));
        Shared {
            redis,
            target,
            events_key: keys.events(),
            meta_key: keys.meta(),
            keys,
            prefix,
            scripts: Scripts::new(),
            limits,
            lock_duration_ms,
            child_queues,
            queues: Mutex::new(HashMap::new()),
            finish_preludes: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Keep `cmd` to go ahead of job `id`'s `moveToFinished`.
    pub(crate) fn set_finish_prelude(&self, id: &str, cmd: bullmq::FinishPrelude) {
        self.finish_preludes.lock().unwrap().insert(id.to_string(), cmd);
    }

    /// What bullmq-official sends ahead of job `id`'s `moveToFinished`
    /// (its `WorkerOptions::finish_prelude`, a bullpen patch).
    pub(crate) fn take_finish_prelude(&self, id: &str) -> Option<bullmq::FinishPrelude> {
        self.finish_preludes.lock().unwrap().remove(id)
    }

    async fn queue(&self, name: &str) -> Result<Arc<Queue>, bullmq::Error> {
        let mut qs = self.queues.lock().await;
        if let Some(q) = qs.get(name) {
            return Ok(q.clone());
        }
        let opts = QueueOptions { connection: self.target.bullmq_options(), prefix: self.prefix.clone(), ..Default::default() };
        let q = Arc::new(Queue::with_options(name, opts).await?);
        qs.insert(name.to_string(), q.clone());
        Ok(q)
    }
}

/// How a host call ended the attempt early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// `move-to-delayed` succeeded.
    Delayed,
    /// `wait-for-children` returned true.
    WaitingChildren,
}

/// The current job as the host functions see it.
pub struct JobContext {
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

/// Where an attempt's host calls go: a job in Redis (a worker's attempts),
/// or a job in memory (`bullpen run`). Same HostState, limits and argument
/// checks either way.
// One per Store, made once per attempt and never moved after: boxing the
// larger variant would add an allocation per attempt for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Redis(JobContext),
    Local(LocalJob),
}

impl From<JobContext> for Backend {
    fn from(j: JobContext) -> Self {
        Backend::Redis(j)
    }
}

impl From<LocalJob> for Backend {
    fn from(j: LocalJob) -> Self {
        Backend::Local(j)
    }
}

/// The Redis job of this attempt, or else return the in-memory job's answer.
macro_rules! redis_or_local {
    ($state:expr, $local:ident => $answer:expr) => {
        match &mut $state.job {
            Backend::Redis(job) => job,
            Backend::Local($local) => return $answer,
        }
    };
}

impl JobContext {
    pub fn new(shared: Arc<Shared>, job: bullmq::Job, token: String, output: CapturedOutput) -> Self {
        let id = job.id().to_string();
        let job_key = shared.keys.job_key(&id);
        let keep_logs = match job.opts().keep_logs {
            Some(n) if n > 0 => n.to_string(),
            _ => String::new(),
        };
        let pending = Arc::new(WriteBehind::new(shared.clone(), &job_key, &id, &token, keep_logs));
        JobContext {
            job_key,
            id,
            token,
            job,
            shared,
            moved: None,
            lock_lost: false,
            output,
            pending,
        }
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
    /// output), in one lock-checked script (see [`write_behind`]).
    pub(crate) async fn flush(&mut self, extra: Vec<String>) -> Result<(), JobError> {
        self.lock_held()?;
        let code = self.pending.flush(extra).await?;
        self.code_to_result(code).map(|_| ())
    }

    /// Like [`flush`](Self::flush), for an attempt that completed: the
    /// writes go to the worker, which sends them in the same round trip as,
    /// and just before, the job's `moveToFinished` (one round trip for a
    /// short job instead of two). The script is the same lock-checked one;
    /// a lock lost by then fails both it and the finish.
    pub(crate) fn flush_with_finish(&mut self, extra: Vec<String>) -> Result<(), JobError> {
        self.lock_held()?;
        if let Some(cmd) = self.pending.finish_prelude(extra) {
            self.shared.set_finish_prelude(&self.id, cmd);
        }
        Ok(())
    }

    /// Run one of bullpen's lock-checked scripts with KEYS = [job, lock, extra...]
    /// and ARGV = [token, args...].
    async fn run_checked(
        &mut self,
        script: fn(&Scripts) -> &redis::Script,
        extra_keys: &[&str],
        args: &[&str],
    ) -> Result<i64, JobError> {
        self.lock_held()?;
        let shared = self.shared.clone();
        let mut inv = script(&shared.scripts).prepare_invoke();
        let (job_key, lock_key) = self.pending.checked_keys();
        inv.key(job_key).key(lock_key);
        for k in extra_keys {
            inv.key(*k);
        }
        inv.arg(&self.token);
        for a in args {
            inv.arg(*a);
        }
        let code: i64 = with_reconnect(|| {
            let mut conn = shared.redis.clone();
            let inv = &inv;
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
        .map_err(|e| JobError::Unavailable(format!("redis: {e}")))?;
        self.code_to_result(code)
    }

    pub(crate) fn code_to_result(&mut self, code: i64) -> Result<i64, JobError> {
        match code {
            -2 | -6 => {
                self.lock_lost = true;
                Err(JobError::LockLost)
            }
            -1 => {
                // The job was removed while we ran: treat like a lost lock,
                // since there is nothing left this attempt may write.
                self.lock_lost = true;
                Err(JobError::WrongState(format!("job {} no longer exists", self.id)))
            }
            c => Ok(c),
        }
    }

    fn bullmq_error(&mut self, e: bullmq::Error) -> JobError {
        use bullmq::Error as B;
        match e {
            B::JobLockNotExist(_) => {
                self.lock_lost = true;
                JobError::LockLost
            }
            B::Script { code, message } if code == -2 || code == -6 => {
                let _ = message;
                self.lock_lost = true;
                JobError::LockLost
            }
            B::JobNotFound(_) | B::Script { code: -1, .. } => {
                self.lock_lost = true;
                JobError::WrongState(format!("job {} no longer exists", self.id))
            }
            B::JobNotInState(_, s) => JobError::WrongState(format!("job {} is not {s}", self.id)),
            B::Script { code: -3, message } => JobError::WrongState(message),
            B::Unrecoverable(m) => JobError::WrongState(m),
            B::Redis(e) => JobError::Unavailable(format!("redis: {e}")),
            other => JobError::Unavailable(other.to_string()),
        }
    }

    fn check_json(&self, what: &str, json: &str, max: usize) -> Result<(), JobError> {
        check_json_arg(what, json, max)
    }

    /// Write what the guest printed so far to the job log, with anything
    /// pending. Called before a move (which releases the lock).
    pub(crate) async fn flush_output(&mut self) -> Result<(), JobError> {
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
        self.run_checked(|s| &s.check_lock, &[], &[]).await.map(|_| ())
    }

    /// `log`/`update-progress` after a move or a lost lock get what a
    /// lock-checked write would have: the lock is gone.
    fn writable(&mut self) -> Result<(), JobError> {
        if self.moved.is_some() {
            return Err(JobError::LockLost);
        }
        self.lock_held()
    }
}

impl types::Host for HostState {}

impl job_context::Host for HostState {
    async fn update_data(&mut self, data: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.update_data(data));
        job.check_json("data", &data, job.shared.limits.max_payload_bytes)?;
        job.flush_pending().await?;
        job.run_checked(|s| &s.update_data, &[], &[&data]).await.map(|_| ())
    }

    // `update-progress` and `log` are written behind (see `write_behind`):
    // checked here, written with the attempt's next flush.
    async fn update_progress(&mut self, progress: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.update_progress(progress));
        job.check_json("progress", &progress, job.shared.limits.max_log_line_bytes)?;
        job.writable()?;
        if job.pending.progress(progress) {
            job.flush(Vec::new()).await?;
        }
        Ok(())
    }

    async fn log(&mut self, line: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.log(line));
        check_log_line(&line, &job.shared.limits)?;
        job.writable()?;
        if job.pending.log(line) {
            job.flush(Vec::new()).await?;
        }
        Ok(())
    }

    async fn move_to_delayed(&mut self, timestamp_ms: u64) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.move_to_delayed(timestamp_ms));
        if job.lock_lost {
            return Err(JobError::LockLost);
        }
        if job.moved.is_some() {
            return Err(JobError::WrongState("the job was already moved in this attempt".into()));
        }
        job.flush_output().await?;
        match job.job.move_to_delayed(timestamp_ms).await {
            Ok(()) => {
                job.moved = Some(Moved::Delayed);
                Ok(())
            }
            Err(e) => Err(job.bullmq_error(e)),
        }
    }

    async fn add_child(&mut self, queue: String, name: String, data: String, opts: String) -> Result<String, JobError> {
        let job = redis_or_local!(self, l => l.add_child(queue, name, data, opts));
        let (data_value, mut child_opts) = check_child(&job.shared.child_queues, &job.shared.limits, &queue, &data, &opts)?;
        child_opts.parent = Some(ParentOptions {
            queue: job.shared.keys.base(),
            id: job.id.clone(),
            wait_children: None,
        });
        // The lock is checked just before adding; a retried step re-adding
        // a child with the same custom jobId gets the existing child back.
        job.check_lock().await?;
        let q = match job.shared.queue(&queue).await {
            Ok(q) => q,
            Err(e) => return Err(job.bullmq_error(e)),
        };
        match q.add(&name, data_value).options(child_opts).await {
            Ok(child) => Ok(child.id().to_string()),
            Err(bullmq::Error::InvalidConfig(m)) => Err(JobError::Invalid(m)),
            Err(e) => Err(job.bullmq_error(e)),
        }
    }

    async fn wait_for_children(&mut self) -> Result<bool, JobError> {
        let job = redis_or_local!(self, l => l.wait_for_children());
        if job.lock_lost {
            return Err(JobError::LockLost);
        }
        if job.moved.is_some() {
            return Err(JobError::WrongState("the job was already moved in this attempt".into()));
        }
        job.flush_output().await?;
        match job.job.move_to_waiting_children(None).await {
            Ok(true) => {
                job.moved = Some(Moved::WaitingChildren);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(job.bullmq_error(e)),
        }
    }

    async fn children_values(&mut self) -> Result<Vec<(String, String)>, JobError> {
        let job = redis_or_local!(self, l => l.children_values());
        let key = format!("{}:processed", job.job_key);
        let mut conn = job.shared.redis.clone();
        let map: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| JobError::Unavailable(format!("redis: {e}")))?;
        Ok(map)
    }
}

/// The check every JSON argument of a host call passes: at most `max`
/// bytes, and valid JSON. Checked before anything touches Redis.
pub fn check_json_arg(what: &str, json: &str, max: usize) -> Result<(), JobError> {
    if json.len() > max {
        return Err(JobError::Invalid(format!("{what} is {} bytes; the limit is {max}", json.len())));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map(|_| ())
        .map_err(|e| JobError::Invalid(format!("{what} is not valid JSON: {e}")))
}

/// The check of a `log` line: at most `max_log_line_bytes`.
pub(crate) fn check_log_line(line: &str, limits: &Limits) -> Result<(), JobError> {
    let max = limits.max_log_line_bytes;
    if line.len() > max {
        return Err(JobError::Invalid(format!("log line is {} bytes; the limit is {max}", line.len())));
    }
    Ok(())
}

/// The checks `add-child` makes before touching Redis: a queue the binding
/// may add children to, JSON data within the payload limit, valid BullMQ
/// job options. Returns the parsed data and options.
pub(crate) fn check_child(
    child_queues: &ChildQueues,
    limits: &Limits,
    queue: &str,
    data: &str,
    opts: &str,
) -> Result<(serde_json::Value, JobOptions), JobError> {
    if !child_queues.allows(queue) {
        return Err(JobError::Invalid(format!(
            "queue `{queue}` is not one this binding may add children to (allowed: {child_queues:?}; see --child-queue)"
        )));
    }
    check_json_arg("child data", data, limits.max_payload_bytes)?;
    let data_value: serde_json::Value = serde_json::from_str(data).expect("checked above");
    let child_opts: JobOptions = if opts.trim().is_empty() {
        JobOptions::default()
    } else {
        serde_json::from_str(opts).map_err(|e| JobError::Invalid(format!("child opts are not valid job options: {e}")))?
    };
    Ok((data_value, child_opts))
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
            Err(e) if tries < 7 && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()) => {
                tries += 1;
                crate::worker::in_attempt(|| tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying"));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// A log line cut to the limit (used for stdout lines and host notes).
pub fn clip(line: &str, limits: &Limits) -> String {
    truncate_utf8(line, limits.max_log_line_bytes).to_string()
}
