//! The BullMQ trigger: bullmq-official hands each fetched job (with its lock
//! token) to [`Trigger::run`], which runs one attempt through the execution
//! core (`attempt::exec`), takes its [`Verdict`], and maps that to what
//! bullmq-official does next: complete, retry or fail, or nothing (the job
//! was moved, its lock lost, or it was handed back at shutdown).
//!
//! The attempt, in order: check the job's input; take the current plugin
//! (once: a deploy landing meanwhile does not change it); a store (fresh, or
//! a kept instance's with `--instance-reuse`); `process` under the limits;
//! the verdict; the guest's output and pending writes to the job log (for a
//! completed job, in the same round trip as its `moveToFinished`); the
//! transition; metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::worker::CancellationToken;
use tracing::{debug, info, warn};
use wasmtime::Engine;

use crate::attempt::exec::{self, CallError, Called, Kept};
use crate::attempt::input::{self, to_wit_job};
use crate::attempt::verdict::{verdict, Ended};
use crate::attempt::{LimitKind, TrapKind, Verdict};
use crate::bindings::types::{self as wit, JobError};
use crate::host::redis_job::traced;
use crate::host::retry::{attempts_remain, random_unit, Backoff, RetryPlan};
use crate::host::{Backend, HostState, JobContext, Moved, Shared};
use crate::metrics::{self, JobLabels, LimitLabels, TrapLabels};
use crate::plugins::{Plugin, PluginSlot};
use crate::sandbox::CapturedOutput;
use crate::span::{self, in_attempt, AttemptSpan};
use crate::telemetry;

use super::cancel::{self, Running};

/// How long an attempt interrupted by shutdown may take to write its
/// pending log lines and progress (Redis may be what is going away).
const INTERRUPT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// What bullmq-official does next: `Ok` completes; `Err(Delayed)` tells it
/// the job was already moved (or must be left alone); `Err(RateLimited)`
/// hands the job back to wait; other errors fail or retry it.
type BullResult = Result<bullmq::ReturnValue, bullmq::Error>;

/// One binding's attempts on one shard.
pub(crate) struct Trigger {
    pub(crate) engine: Engine,
    pub(crate) slot: Arc<PluginSlot>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<str>,
    pub(crate) histograms: metrics::QueueHistograms,
    /// `BindingConfig::instance_reuse`.
    pub(crate) reuse: u32,
    /// Instances waiting for their next attempt (at most one per slot of
    /// concurrency: an instance is here only between two attempts).
    pub(crate) idle: Mutex<Vec<Warm>>,
    /// The binding's attempts by outcome since the last summary line.
    pub(crate) tally: Arc<Tally>,
    /// The binding's running attempts, for `bullpen cancel` (`super::cancel`).
    pub(crate) running: Arc<Running>,
    /// `ops::cancel::requests_key` of the queue.
    pub(crate) cancel_key: Arc<str>,
    /// BullMQ worker `name` (`--name`), for the attempt's trace span.
    pub(crate) worker_name: Option<Arc<str>>,
    /// With traces on: attempts whose transition bullmq-official is
    /// writing, by job id, with that transition's span ([`Trigger::finished`]).
    pub(crate) finishing: Mutex<HashMap<String, Finishing>>,
}

/// An attempt whose transition bullmq-official is writing: its span, and
/// the transition's (none for a job the guest or bullpen moved).
type Finishing = (Arc<AttemptSpan>, Option<telemetry::ChildSpan>);

/// Attempts by outcome, for the worker's periodic summary line (one line
/// per queue per interval, instead of a line per job).
#[derive(Default)]
pub(crate) struct Tally {
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    /// Moved (delayed, waiting for children, back to wait), lock lost, handed back.
    other: AtomicU64,
}

/// What [`Tally::take`] returns: completed, failed, retried, other.
pub(crate) type Counts = [u64; 4];

impl Tally {
    fn record(&self, outcome: JobOutcome) {
        let c = match outcome {
            JobOutcome::Completed => &self.completed,
            JobOutcome::Failed | JobOutcome::Cancelled => &self.failed,
            JobOutcome::Retried => &self.retried,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call, reset.
    pub(crate) fn take(&self) -> Counts {
        [&self.completed, &self.failed, &self.retried, &self.other].map(|c| c.swap(0, Ordering::Relaxed))
    }
}

/// An instance of the binding's plugin kept for more attempts
/// (`--instance-reuse`).
pub(crate) struct Warm {
    plugin: Arc<Plugin>,
    kept: Kept,
    /// Attempts it has served.
    uses: u32,
}

/// What an attempt became in BullMQ's terms (`bullpen_jobs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobOutcome {
    Completed,
    /// Failed for good.
    Failed,
    /// Failed; another attempt follows.
    Retried,
    /// The guest moved it to delayed.
    Delayed,
    WaitingChildren,
    /// The guest rate-limited the queue; the job went back to wait.
    RateLimited,
    /// The guest moved it back to wait.
    Waiting,
    LockLost,
    /// Shutdown handed it back to wait.
    HandedBack,
    /// `bullpen cancel` stopped it (failed, or retried with `--retry`).
    Cancelled,
}

impl JobOutcome {
    fn label(self) -> &'static str {
        match self {
            JobOutcome::Completed => "completed",
            JobOutcome::Failed => "failed",
            JobOutcome::Retried => "retried",
            JobOutcome::Delayed => "delayed",
            JobOutcome::WaitingChildren => "waiting_children",
            JobOutcome::RateLimited => "rate_limited",
            JobOutcome::Waiting => "waiting",
            JobOutcome::LockLost => "lock_lost",
            JobOutcome::HandedBack => "handed_back",
            JobOutcome::Cancelled => "cancelled",
        }
    }
}

/// A finished attempt: what goes to bullmq-official, and what metrics record.
struct Finished {
    result: BullResult,
    outcome: JobOutcome,
    trap: Option<TrapKind>,
    limit: Option<LimitKind>,
    instantiated: Option<Duration>,
    memory_peak: usize,
}

impl Finished {
    /// An attempt that ended before its guest returned.
    fn early((result, outcome): (BullResult, JobOutcome)) -> Finished {
        Finished { result, outcome, trap: None, limit: None, instantiated: None, memory_peak: 0 }
    }
}

/// The job context of a worker's attempt (a worker's stores hold nothing else).
fn redis_ctx(job: &mut Backend) -> &mut JobContext {
    match job {
        Backend::Redis(ctx) => ctx,
        Backend::Local(_) => unreachable!("a worker's attempts run against Redis"),
    }
}

/// BullMQ's own retry rule applies (attempts, plain backoff).
fn bullmq_retries(reason: String, will_retry: bool) -> (BullResult, JobOutcome) {
    (Err(bullmq::Error::ProcessingError(reason)), if will_retry { JobOutcome::Retried } else { JobOutcome::Failed })
}

/// The transition of a verdict that needs nothing more from Redis or the
/// guest (everything but a completion and the guest's own retries).
fn settle(verdict: Verdict, will_retry: bool) -> (BullResult, JobOutcome) {
    match verdict {
        Verdict::Moved(Moved::Delayed) => (Err(bullmq::Error::Delayed), JobOutcome::Delayed),
        Verdict::Moved(Moved::WaitingChildren) => (Err(bullmq::Error::WaitingChildren), JobOutcome::WaitingChildren),
        // Already back in wait (`moveJobFromActiveToWait` ran in the host
        // call): bullmq-official must write nothing more.
        Verdict::Moved(Moved::RateLimited) => (Err(bullmq::Error::Delayed), JobOutcome::RateLimited),
        Verdict::Moved(Moved::Waiting) => (Err(bullmq::Error::Delayed), JobOutcome::Waiting),
        Verdict::Unrecoverable(reason) => (Err(bullmq::Error::Unrecoverable(reason)), JobOutcome::Failed),
        Verdict::Error(reason) | Verdict::Trap { reason, .. } | Verdict::Limit { reason, .. } => {
            bullmq_retries(reason, will_retry)
        }
        // Moved (or no longer ours): bullmq-official must write nothing more.
        Verdict::LockLost => (Err(bullmq::Error::Delayed), JobOutcome::LockLost),
        // moveJobFromActiveToWait: attemptsMade unchanged.
        Verdict::Interrupted => (Err(bullmq::Error::RateLimited { delay_ms: 0 }), JobOutcome::HandedBack),
        Verdict::Completed(_) | Verdict::Retry(_) | Verdict::RetryAfter { .. } => {
            unreachable!("completions and guest retries go through Trigger::apply")
        }
    }
}

/// What the attempt became, on its trace span (Node's `job completed` /
/// `job failed` events and attempts made).
fn outcome_on_trace(t: &telemetry::Trace, f: &Finished, attempt: u32) {
    let (result, reason) = match &f.result {
        Ok(v) => (Some(v.json()), None),
        Err(bullmq::Error::ProcessingError(r) | bullmq::Error::Unrecoverable(r)) => (None, Some(r.as_str())),
        Err(_) => (None, None),
    };
    // attemptsMade as BullMQ counts it once the transition is written: a
    // move, a lost lock or a hand-back does not count the attempt; a
    // cancelled one fails (or retries) like any failed attempt.
    let counted =
        matches!(f.outcome, JobOutcome::Completed | JobOutcome::Failed | JobOutcome::Retried | JobOutcome::Cancelled);
    t.outcome(telemetry::AttemptEnd {
        outcome: f.outcome.label(),
        attempts_made: if counted { attempt } else { attempt - 1 },
        result: result.as_deref(),
        reason,
    });
}

impl Trigger {
    /// One attempt of `job`: bullmq-official's processor.
    pub(crate) async fn run(self: Arc<Self>, job: bullmq::Job, cancel: CancellationToken) -> BullResult {
        let plugin = self.slot.current();
        let attempt = job.attempts_made() + 1;
        let trace = if telemetry::enabled() { self.trace(&job, attempt, &plugin.digest) } else { None };
        let span = Arc::new(
            AttemptSpan::new(self.queue.clone(), job.id().to_string(), attempt, plugin.digest.clone())
                .with_trace(trace),
        );
        let started = Instant::now();
        // Boxed: the attempt's future is large, and the task-local scope and
        // bullmq-official's driver would otherwise move it.
        let finished = span::scope(span.clone(), Box::pin(self.attempt(plugin, job, cancel))).await;
        self.record(&span, started.elapsed(), &finished);
        if span.trace().is_some() {
            self.finishing(span, &finished, attempt);
        }
        finished.result
    }

    /// With traces on: the attempt's outcome on its span, and a child span
    /// for the transition bullmq-official writes next; both end in
    /// [`Trigger::finished`], once it is written.
    #[cold]
    fn finishing(&self, span: Arc<AttemptSpan>, f: &Finished, attempt: u32) {
        let Some(t) = span.trace() else { return };
        outcome_on_trace(t, f, attempt);
        // What bullmq-official writes for the result, named as Node's BullMQ
        // names its spans; nothing for a job the guest or bullpen moved.
        let op = match (&f.result, f.outcome) {
            (Ok(_), _) => Some("complete"),
            (Err(bullmq::Error::ProcessingError(_)), JobOutcome::Retried) => Some("retry"),
            (Err(bullmq::Error::ProcessingError(_) | bullmq::Error::Unrecoverable(_)), _) => Some("fail"),
            (Err(bullmq::Error::RateLimited { .. }), _) => Some("moveToWait"),
            _ => None,
        };
        let transition = op.map(|op| t.redis(op));
        let id = span.job().to_string();
        self.finishing.lock().unwrap().insert(id, (span, transition));
    }

    /// bullmq-official wrote job `id`'s transition (`WorkerOptions::on_finished`):
    /// its span and its attempt's end.
    pub(crate) fn finished(&self, id: &str) {
        let Some((span, transition)) = self.finishing.lock().unwrap().remove(id) else { return };
        drop(transition);
        if let Some(t) = span.trace() {
            t.close();
        }
    }

    /// The attempt's OpenTelemetry span, continuing the trace the job was
    /// added in (its opts `tm`, as Node's BullMQ telemetry writes it).
    #[cold]
    fn trace(&self, job: &bullmq::Job, attempt: u32, digest: &str) -> Option<telemetry::Trace> {
        telemetry::Trace::attempt(telemetry::AttemptInfo {
            queue: &self.queue,
            job_id: job.id(),
            job_name: job.name(),
            attempt,
            digest,
            worker_name: self.worker_name.as_deref(),
            metadata: job.opts().telemetry_metadata.as_deref(),
        })
    }

    async fn attempt(&self, plugin: Arc<Plugin>, job: bullmq::Job, cancel: CancellationToken) -> Finished {
        let will_retry = attempts_remain(&job);
        let wit_job = to_wit_job(&job, &self.queue);
        if let Err(v) = self.check_input(&wit_job) {
            return Finished::early(settle(v, will_retry));
        }
        if job.data().is_null() {
            // Rare, and kept out of this future: its Redis read would make
            // every attempt's future (moved per job) larger.
            if let Err(v) = Box::pin(self.check_raw_data(&job)).await {
                return Finished::early(settle(v, will_retry));
            }
        }
        let limits = &self.shared.limits;
        let warm = self.take_warm(&plugin);
        let uses = warm.as_ref().map_or(0, |w| w.uses);
        let mut prepared = exec::prepare(&self.engine, limits, warm.map(|w| w.kept), |out| {
            Backend::Redis(JobContext::new(self.shared.clone(), job, out.clone()).with_plugin_digest(&plugin.digest))
        });
        let pending = redis_ctx(&mut prepared.store.data_mut().job).pending.clone();
        let instance = prepared.instance.take();
        let registration = self.running.register(&wit_job.id);
        let called = tokio::select! {
            c = Box::pin(exec::call(&mut prepared.store, instance, &plugin, limits, &wit_job)) => Ok(c),
            _ = cancel.cancelled() => Err(None),
            r = registration.cancelled() => Err(Some(r)),
        };
        drop(registration);
        let Called { result, instance, instantiated } = match called {
            Ok(c) => c,
            Err(stop) => {
                // The guest call is dropped (stopped at its epoch yield, its
                // instance with it). The lock is still ours: what the guest
                // queued in its last ≤100 ms, and what it printed, is written
                // before the job moves on.
                let printed = prepared.out.take_lines(limits.max_log_line_bytes);
                let flush = Box::pin(tokio::time::timeout(INTERRUPT_FLUSH_LIMIT, pending.flush(printed)));
                match flush.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => in_attempt(
                        || warn!(error = ?e, "could not write the interrupted attempt's pending log lines/progress"),
                    ),
                    Err(_) => {
                        in_attempt(|| warn!("gave up writing the interrupted attempt's pending log lines/progress"))
                    }
                }
                let Some(request) = stop else {
                    // Shutdown past its grace period: back to wait, attemptsMade unchanged.
                    in_attempt(|| warn!("attempt interrupted by shutdown; job handed back to wait"));
                    return Finished::early(settle(Verdict::Interrupted, will_retry));
                };
                in_attempt(|| info!(reason = %request.failed_reason, retry = request.retry, "attempt cancelled"));
                cancel::forget(self.shared.redis.clone(), &self.cancel_key, &wit_job.id).await;
                let (result, _) = if request.retry {
                    bullmq_retries(request.failed_reason, will_retry)
                } else {
                    settle(Verdict::Unrecoverable(request.failed_reason), will_retry)
                };
                return Finished::early((result, JobOutcome::Cancelled));
            }
        };

        let mut store = prepared.store;
        let state = store.data_mut();
        let (memory_hit, memory_peak) = (state.memory.hit, state.memory.peak);
        let lines = prepared.out.take_lines(limits.max_log_line_bytes);
        // `--instance-reuse`: an instance whose `process` returned, within
        // its limits, serves the binding's next attempt (until its quota).
        let keep = instance.filter(|_| uses + 1 < self.reuse && memory_hit.is_none());
        let stacktrace = state.stacktrace.take();
        let ctx = redis_ctx(&mut state.job);
        let mut verdict = verdict(Ended {
            called: result,
            memory_hit,
            moved: ctx.moved,
            lock_lost: ctx.lock_lost,
            output: &lines,
            limits,
        });
        if tracing::enabled!(tracing::Level::DEBUG) {
            in_attempt(|| debug!(digest = %plugin.digest, verdict = verdict.label(), "attempt returned"));
        }
        // Output goes to the log before the job is finished, so a Node
        // client that sees `completed` also sees the lines (and the plugin
        // digest line, when nothing was logged yet). After a move the lock
        // is gone, so late output is dropped rather than written unchecked.
        let mut prelude = None;
        if !ctx.lock_lost && ctx.moved.is_none() {
            let flushed = match &verdict {
                Verdict::Completed(_) => ctx.flush_with_finish(lines).map(|p| prelude = p),
                _ => Box::pin(ctx.flush(lines)).await,
            };
            match flushed {
                Ok(()) | Err(JobError::LockLost) => {}
                Err(e) => in_attempt(|| warn!(error = ?e, "could not write the attempt's log lines and progress")),
            }
        }
        // The guest's stack goes with its failure, as Node writes err.stack
        // with it (before the failure, so a client that sees `failed` sees it).
        if let (false, Some(stack), Verdict::Retry(_) | Verdict::RetryAfter { .. } | Verdict::Unrecoverable(_)) =
            (ctx.lock_lost, &stacktrace, &verdict)
        {
            let limit = ctx.job.opts().stack_trace_limit;
            match Box::pin(ctx.save_stacktrace(stack, limit)).await {
                Ok(()) | Err(JobError::LockLost) => {}
                Err(e) => in_attempt(|| warn!(error = ?e, "could not write the attempt's stacktrace")),
            }
        }
        if ctx.lock_lost {
            in_attempt(|| warn!("lock lost during the attempt: leaving the job to its new owner"));
            verdict = Verdict::LockLost;
        }
        let (trap, limit) = match &verdict {
            Verdict::Trap { kind, .. } => (Some(*kind), None),
            Verdict::Limit { which, trap, .. } => (*trap, Some(*which)),
            _ => (None, None),
        };
        let (result, outcome) = self.apply(verdict, ctx, &plugin, &wit_job, prelude, will_retry).await;
        if let Some(instance) = keep {
            self.idle.lock().unwrap().push(Warm {
                plugin,
                kept: Kept { store, instance, out: prepared.out },
                uses: uses + 1,
            });
        }
        Finished { result, outcome, trap, limit, instantiated, memory_peak }
    }

    /// A job that cannot be given to a guest fails before any instance is
    /// made: `Unrecoverable` when no attempt could do better.
    fn check_input(&self, wit_job: &wit::Job) -> Result<(), Verdict> {
        input::check_size(wit_job, &self.shared.limits).map_err(|e| Verdict::Unrecoverable(e.to_string()))
    }

    /// bullmq-official gives data that is not JSON as `null`: the stored
    /// field says whether the job's data is really `null`.
    async fn check_raw_data(&self, job: &bullmq::Job) -> Result<(), Verdict> {
        let raw = self
            .shared
            .raw_field(job.id(), "data")
            .await
            .map_err(|e| Verdict::Error(format!("cannot read the job's data: {e}")))?;
        input::check_raw_data(raw.as_deref()).map_err(|e| Verdict::Unrecoverable(e.to_string()))
    }

    /// The verdict as bullmq-official's result.
    async fn apply(
        &self,
        verdict: Verdict,
        ctx: &mut JobContext,
        plugin: &Plugin,
        wit_job: &wit::Job,
        prelude: Option<bullmq::FinishPrelude>,
        will_retry: bool,
    ) -> (BullResult, JobOutcome) {
        match verdict {
            // The pending writes go in the same round trip as, and just
            // before, the job's moveToFinished.
            Verdict::Completed(json) => {
                let value = match prelude {
                    Some(prelude) => bullmq::ReturnValue::JsonWithPrelude { json, prelude },
                    None => bullmq::ReturnValue::Json(json),
                };
                (Ok(value), JobOutcome::Completed)
            }
            Verdict::Retry(reason) => Box::pin(self.retry(plugin, ctx, wit_job, reason, will_retry)).await,
            Verdict::RetryAfter { reason, delay_ms } => {
                if !attempts_remain(&ctx.job) {
                    // No attempts left: bullmq-official fails it, as Node would.
                    return bullmq_retries(reason, false);
                }
                Box::pin(Self::delayed_retry(ctx, delay_ms, reason, will_retry)).await
            }
            other => settle(other, will_retry),
        }
    }

    /// bullpen's own delayed retry (BullMQ's `moveToDelayed`, counted as an attempt).
    async fn delayed_retry(
        ctx: &mut JobContext,
        delay_ms: u64,
        reason: String,
        will_retry: bool,
    ) -> (BullResult, JobOutcome) {
        match traced("delay", ctx.retry_later(delay_ms, &reason)).await {
            Ok(()) | Err(JobError::LockLost) => {
                (Err(bullmq::Error::Delayed), if ctx.lock_lost { JobOutcome::LockLost } else { JobOutcome::Retried })
            }
            Err(e) => {
                in_attempt(|| warn!(error = ?e, "delayed retry failed; falling back to BullMQ's retry"));
                bullmq_retries(reason, will_retry)
            }
        }
    }

    /// `failure::retry`, per the job's backoff (`host::retry` decides).
    async fn retry(
        &self,
        plugin: &Plugin,
        ctx: &mut JobContext,
        wit_job: &wit::Job,
        reason: String,
        will_retry: bool,
    ) -> (BullResult, JobOutcome) {
        if !attempts_remain(&ctx.job) || ctx.job.opts().backoff.is_none() {
            return bullmq_retries(reason, will_retry);
        }
        let Some(backoff) = Backoff::from_opts(&ctx.raw_opts().await.unwrap_or_default()) else {
            return bullmq_retries(reason, will_retry);
        };
        let delay = match backoff.plan(ctx.job.attempts_made() + 1, random_unit()) {
            RetryPlan::BullmqDoesIt => 0,
            RetryPlan::After(d) => d,
            RetryPlan::AskGuest { kind, n } => {
                match self.guest_backoff(plugin, ctx, wit_job, &kind, n, &reason).await {
                    Some(wit::BackoffDecision::DelayMs(d)) => d,
                    Some(wit::BackoffDecision::GiveUp) => {
                        return (Err(bullmq::Error::Unrecoverable(reason)), JobOutcome::Failed)
                    }
                    // As bullmq-official with no strategy: retry at once.
                    None => 0,
                }
            }
        };
        if delay == 0 {
            return bullmq_retries(reason, will_retry);
        }
        Self::delayed_retry(ctx, delay, reason, will_retry).await
    }

    /// Ask the guest's optional `backoff` export for the delay, in a fresh
    /// instance under the same limits.
    async fn guest_backoff(
        &self,
        plugin: &Plugin,
        ctx: &JobContext,
        wit_job: &wit::Job,
        kind: &str,
        n: u32,
        reason: &str,
    ) -> Option<wit::BackoffDecision> {
        if !plugin.has_backoff {
            in_attempt(|| {
                warn!(backoff = kind, "custom backoff type but the plugin exports no `backoff`: retrying at once")
            });
            return None;
        }
        let limits = &self.shared.limits;
        let out = CapturedOutput::new(limits.max_output_bytes);
        let state = HostState::new(JobContext::new(self.shared.clone(), ctx.job.clone(), out.clone()), limits, &out);
        let args = (kind.to_string(), n, reason.to_string(), wit_job.clone());
        match exec::call_backoff(&self.engine, plugin, state, limits, args).await {
            Ok(d) => Some(d),
            Err(CallError::Timeout) => {
                in_attempt(|| warn!("guest backoff timed out: retrying at once"));
                None
            }
            Err(e) => {
                in_attempt(|| warn!(error = %e, "guest backoff failed: retrying at once"));
                None
            }
        }
    }

    /// An idle instance of `plugin`, if reuse is on and one is waiting.
    /// Instances of a plugin that a deploy has since replaced are dropped.
    fn take_warm(&self, plugin: &Arc<Plugin>) -> Option<Warm> {
        if self.reuse <= 1 {
            return None;
        }
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap();
            loop {
                match idle.pop() {
                    Some(w) if Arc::ptr_eq(&w.plugin, plugin) => break Some(w),
                    Some(w) => stale.push(w),
                    None => break None,
                }
            }
        };
        drop(stale); // outside the lock: dropping a store resets its memory
        found
    }

    /// Prometheus metrics for one finished attempt (see `metrics`), by the
    /// plugin version that ran it. `span` is entered only for the line a
    /// failure logs, not around all of this (~1 µs of worker CPU per job).
    fn record(&self, span: &AttemptSpan, took: Duration, f: &Finished) {
        let m = metrics::global();
        let h = &self.histograms;
        h.attempt_seconds.observe(took.as_secs_f64());
        if let Some(d) = f.instantiated {
            h.instantiate_seconds.observe(d.as_secs_f64());
        }
        if f.memory_peak > 0 {
            h.memory_peak_bytes.observe(f.memory_peak as f64);
        }
        if let Some(kind) = f.trap {
            m.traps.get_or_create(&TrapLabels { queue: self.queue.to_string(), kind: kind.label() }).inc();
        }
        if let Some(limit) = f.limit {
            m.limit_kills.get_or_create(&LimitLabels { queue: self.queue.to_string(), limit: limit.label() }).inc();
        }
        self.tally.record(f.outcome);
        let outcome = f.outcome.label();
        m.jobs
            .get_or_create(&JobLabels { queue: self.queue.to_string(), digest: span.digest().to_string(), outcome })
            .inc();
        // Operators see why attempts fail without opening each job.
        if let (Err(e), JobOutcome::Failed | JobOutcome::Retried) = (&f.result, f.outcome) {
            let reason = match e {
                bullmq::Error::ProcessingError(r) | bullmq::Error::Unrecoverable(r) => r.clone(),
                other => other.to_string(),
            };
            span.get()
                .in_scope(|| info!(outcome, reason = %crate::sandbox::truncate_utf8(&reason, 300), "attempt failed"));
        }
    }
}
