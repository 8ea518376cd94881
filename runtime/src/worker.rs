//! A binding: one queue, one plugin slot, one `bullmq` Worker whose
//! processor runs each attempt in a fresh instance of the current plugin
//! (or, opted into with `--instance-reuse`, in one a previous attempt left).
//!
//! The attempt lifecycle, in order: check the job's data is JSON; take the
//! current plugin; new Store (limits, deny-by-default WASI, captured
//! stdout/stderr); instantiate from the `InstancePre`; call `process` under
//! the wall-clock limit; write captured output to the job log; map the result
//! to what bullmq-official does next (complete, retry/fail, or nothing when
//! the job was moved or the lock was lost); with reuse on, an instance whose
//! `process` returned goes back to the binding's idle list (`Warm`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bullmq::worker::CancellationToken;
use bullmq::{Worker, WorkerOptions};
use tracing::{debug, info, info_span, warn};
use wasmtime::{Engine, Store, Trap};

use crate::bindings::types::{self as wit, Failure, Outcome};
use crate::bindings::Processor;
use crate::conn::RedisTarget;
use crate::error::AttemptError;
use crate::host::retry::{attempts_remain, random_unit, Backoff};
use crate::host::{Backend, ChildQueues, JobContext, Moved, Shared};
use crate::metrics::{self, AttemptRecord, JobLabels, LimitLabels, TrapLabels};
use crate::plugin::Plugin;
use crate::registry::PluginSlot;
use crate::sandbox::{CapturedOutput, HostState, Limits};
use crate::shards::Shards;

/// The queue's BullMQ worker on one shard, with its share of the concurrency.
struct Part {
    shard: tokio::runtime::Handle,
    worker: Arc<Worker>,
}

impl Part {
    /// `Worker::close` on the part's own shard, where its connections live.
    fn close(&self, deadline_ms: u64) -> tokio::task::JoinHandle<Result<(), bullmq::Error>> {
        let w = self.worker.clone();
        self.shard.spawn(async move { w.close(deadline_ms).await })
    }
}

/// Everything that configures one queue binding. Defaults match BullMQ's
/// Node worker where one exists.
#[derive(Debug, Clone)]
pub struct BindingConfig {
    /// One Redis server or a Cluster's seed nodes.
    pub redis: RedisTarget,
    pub queue: String,
    /// BullMQ key prefix (`bull`, or a hash-tagged `{bull}` for Cluster).
    pub prefix: String,
    pub concurrency: usize,
    pub limits: Limits,
    /// BullMQ `lockDuration` (30 s) and `stalledInterval` (30 s).
    pub lock_duration_ms: u64,
    pub stalled_interval_ms: u64,
    /// BullMQ `maxStalledCount` (1).
    pub max_stalled_count: u32,
    /// BullMQ `maxStartedAttempts` (unlimited).
    pub max_started_attempts: Option<u32>,
    pub child_queues: ChildQueues,
    /// BullMQ worker `name`: stored on each job it takes (Node's
    /// `job.processedBy`) and as its Redis client name.
    pub name: Option<String>,
    /// How many attempts one instance may serve, one after another
    /// (`--instance-reuse`). 1, the default, is a fresh instance for every
    /// attempt: nothing a job does can be seen by the next. Above 1, an
    /// instance whose `process` returned within its limits runs the
    /// binding's next attempt, memory and globals as it left them — for
    /// guests whose runtime start dominates (Go, JS) and that keep no
    /// state between jobs. A trap, a timeout, the memory cap or a deploy
    /// always ends an instance.
    pub instance_reuse: u32,
    /// Run BullMQ's `moveToFinished`, and the write-behind flush sent ahead
    /// of it, as Redis Functions (FCALL) where the server allows it
    /// (`--redis-functions`, default on): the same Lua and the same changes,
    /// at ~20 µs less Redis CPU per job (bench/README.md), at the cost of a
    /// library (`bullpen_moveToFinished_<sha>`) kept on the server. Redis < 7
    /// or an ACL without FUNCTION/FCALL falls back to EVALSHA by itself.
    pub redis_functions: bool,
}

impl BindingConfig {
    pub fn new(redis: impl Into<RedisTarget>, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        BindingConfig {
            redis: redis.into(),
            child_queues: ChildQueues::default_for(&queue),
            queue,
            prefix: "bull".into(),
            concurrency: 1,
            limits: Limits::default(),
            lock_duration_ms: 30_000,
            stalled_interval_ms: 30_000,
            max_stalled_count: 1,
            max_started_attempts: None,
            name: None,
            instance_reuse: 1,
            redis_functions: true,
        }
    }
}

/// How long interrupted attempts get to hand their jobs back at shutdown.
const HANDBACK_TIME: Duration = Duration::from_secs(5);

/// A running binding.
pub struct Binding {
    /// One BullMQ worker per shard the queue runs on (`crate::shards`).
    parts: Vec<Part>,
    heartbeat: tokio::sync::Mutex<Option<crate::stats::Heartbeat>>,
    redis: bullmq::redis_connection::AnyConnection,
    pub slot: Arc<PluginSlot>,
    pub config: BindingConfig,
}

struct Attempts {
    engine: Engine,
    slot: Arc<PluginSlot>,
    shared: Arc<Shared>,
    queue: String,
    histograms: metrics::QueueHistograms,
    /// `BindingConfig::instance_reuse`.
    reuse: u32,
    /// Instances waiting for their next attempt (at most one per slot of
    /// concurrency: an instance is here only between two attempts).
    idle: std::sync::Mutex<Vec<Warm>>,
}

/// An instance of the binding's plugin kept for more attempts
/// (`--instance-reuse`).
struct Warm {
    plugin: Arc<Plugin>,
    kept: Kept,
    /// Attempts it has served.
    uses: u32,
}

/// An instance whose `process` returned, with the store it lives in and the
/// output capture its WASI context writes to.
pub(crate) struct Kept {
    pub store: Store<HostState>,
    pub instance: Processor,
    pub out: CapturedOutput,
}

/// What one attempt runs in: `kept`'s store (its job context replaced, its
/// output capture emptied, the memory cap's record cleared) and instance,
/// or a new store and no instance yet (`call_in` makes one). `job` builds
/// the attempt's job context around its output capture.
pub(crate) fn prepare(
    engine: &Engine,
    limits: &Limits,
    kept: Option<Kept>,
    job: impl FnOnce(&CapturedOutput) -> Backend,
) -> (Store<HostState>, Option<Processor>, CapturedOutput) {
    match kept {
        Some(Kept { mut store, instance, out }) => {
            let out = out.reset(limits.max_output_bytes);
            let state = store.data_mut();
            state.job = job(&out);
            state.memory.hit = None;
            (store, Some(instance), out)
        }
        None => {
            let out = CapturedOutput::new(limits.max_output_bytes);
            let state = HostState::new(job(&out), limits, &out);
            (new_store(engine, state), None, out)
        }
    }
}

impl Attempts {
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
}

impl Binding {
    /// Connect to Redis and start processing `config.queue` with the plugin
    /// in `slot`, on the runtime this is called on.
    pub async fn start(engine: Engine, slot: Arc<PluginSlot>, config: BindingConfig) -> anyhow::Result<Binding> {
        Binding::start_on(engine, slot, config, &Shards::current()).await
    }

    /// The same, with `config.concurrency` split over `shards`: a BullMQ
    /// worker on each (see `crate::shards` for why).
    pub async fn start_on(engine: Engine, slot: Arc<PluginSlot>, config: BindingConfig, shards: &Shards) -> anyhow::Result<Binding> {
        config.redis.check_prefix(&config.prefix)?;
        let redis = config.redis.connect().await?;
        let mut parts: Vec<Part> = Vec::new();
        for (shard, concurrency) in shards.place(config.concurrency) {
            let started = shard.spawn(start_part(engine.clone(), slot.clone(), config.clone(), concurrency));
            match started.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(worker) => parts.push(Part { shard, worker }),
                Err(e) => {
                    // Nothing fetched by the parts already started is lost:
                    // they close like a shutdown with no grace.
                    for p in &parts {
                        let _ = p.close(HANDBACK_TIME.as_millis() as u64).await;
                    }
                    return Err(e);
                }
            }
        }
        let heartbeat = crate::stats::Heartbeat::spawn(redis.clone(), &config.prefix, &config.queue, slot.clone(), config.concurrency);
        Ok(Binding { parts, heartbeat: tokio::sync::Mutex::new(Some(heartbeat)), redis, slot, config })
    }

    /// Stop fetching; give running attempts `grace` to finish; then
    /// interrupt the rest and hand their jobs back to wait without counting
    /// an attempt.
    pub async fn close(&self, grace: Duration) -> anyhow::Result<()> {
        // Leave `bullpen stats`'s live list first: this worker takes no new jobs.
        if let Some(h) = self.heartbeat.lock().await.take() {
            h.stop(&mut self.redis.clone()).await;
        }
        // bullmq's close() aborts whatever still runs at its deadline, which
        // would leave jobs active until a stalled check; give interrupted
        // attempts time past the grace period to hand their jobs back.
        let deadline = (grace + HANDBACK_TIME).as_millis() as u64;
        let closing = futures_util::future::join_all(self.parts.iter().map(|p| p.close(deadline)));
        tokio::pin!(closing);
        let closed = tokio::select! {
            r = &mut closing => Some(r),
            _ = tokio::time::sleep(grace) => None,
        };
        let closed = match closed {
            Some(r) => r,
            None => {
                warn!(queue = %self.config.queue, "grace period over: interrupting running attempts");
                for p in &self.parts {
                    let w = p.worker.clone();
                    let _ = p.shard.spawn(async move { w.cancel_all_jobs().await }).await;
                }
                closing.await
            }
        };
        for r in closed {
            r??;
        }
        Ok(())
    }
}

/// One shard's share of a binding: its own Redis connection for host calls,
/// its own bullmq-official worker with `concurrency` slots. Runs on the shard.
async fn start_part(engine: Engine, slot: Arc<PluginSlot>, config: BindingConfig, concurrency: usize) -> anyhow::Result<Arc<Worker>> {
    let redis = config.redis.connect().await?;
    let shared = Arc::new(Shared::new(
        redis,
        config.redis.clone(),
        config.prefix.clone(),
        &config.queue,
        config.limits.clone(),
        config.lock_duration_ms,
        config.child_queues.clone(),
    ));
    let preludes = shared.clone();
    let histograms = metrics::global().queue_histograms(&config.queue);
    let attempts = Arc::new(Attempts {
        engine,
        slot,
        shared,
        queue: config.queue.clone(),
        histograms,
        reuse: config.instance_reuse,
        idle: Default::default(),
    });
    let processor = move |job: bullmq::Job, cancel: CancellationToken| {
        let attempts = attempts.clone();
        async move { attempts.run(job, cancel).await }
    };
    let opts = WorkerOptions {
        connection: config.redis.bullmq_options(),
        prefix: config.prefix.clone(),
        concurrency,
        lock_duration: config.lock_duration_ms,
        stalled_interval: config.stalled_interval_ms,
        max_stalled_count: config.max_stalled_count,
        max_started_attempts: config.max_started_attempts,
        name: config.name.clone(),
        finish_prelude_script: Some(preludes.scripts.flush_source.clone()),
        finish_prelude: Some(Arc::new(move |id: &str| preludes.take_finish_prelude(id))),
        // Per-job events (active/completed/failed, each with a clone of
        // its result) would be read only to be dropped; `metrics` and
        // the attempt log already say what each attempt did.
        job_events: false,
        // moveToFinished (and the write-behind flush sent ahead of it, in
        // the same library) as Redis Functions: the same Lua, less Redis
        // CPU per job (vendor/bullmq-official/PATCHES.md, patch 4).
        redis_functions: config.redis_functions,
        ..Default::default()
    };
    let worker = Arc::new(Worker::with_options(&config.queue, processor, opts).await?);
    drain_worker_events(worker.clone(), config.queue.clone());
    Ok(worker)
}

/// bullmq-official queues its worker events on an unbounded channel;
/// unread, it would grow. Read it: log errors and stalled jobs, drop the
/// rest (per-job events are off, `WorkerOptions::job_events`).
fn drain_worker_events(worker: Arc<Worker>, queue: String) {
    use bullmq::worker::WorkerEvent;
    tokio::spawn(async move {
        while let Some(event) = worker.next_event().await {
            match event {
                WorkerEvent::Error(e) => warn!(queue = %queue, error = %e, "worker error"),
                WorkerEvent::Stalled { job_id } => warn!(queue = %queue, job = %job_id, "stalled job recovered"),
                WorkerEvent::Closed => break,
                _ => {}
            }
        }
    });
}

/// How long an attempt interrupted by shutdown may take to write its
/// pending log lines and progress (Redis may be what is going away).
const INTERRUPT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// What the attempt produced, in bullmq-official's terms: `Ok` completes;
/// `Err(Delayed)` tells it the job was already moved (or must be left alone);
/// `Err(RateLimited)` hands the job back to wait; other errors fail/retry.
type BullResult = Result<bullmq::ReturnValue, bullmq::Error>;

tokio::task_local! {
    /// The running attempt's span, for whatever logs inside it ([`in_attempt`]).
    static ATTEMPT: Arc<AttemptSpan>;
}

/// An attempt's tracing span (`queue`, `job`, `attempt`, `digest`; JSON
/// logs' `span`), made the first time something in the attempt logs.
/// Made for every attempt, it cost ~3 µs of worker CPU per job
/// (tracing-subscriber formats and stores its fields; bench/README.md,
/// session 9), and most attempts log nothing.
pub(crate) struct AttemptSpan {
    attempts: Arc<Attempts>,
    job: String,
    attempt: u32,
    plugin: Arc<Plugin>,
    span: OnceLock<tracing::Span>,
}

impl AttemptSpan {
    fn get(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            info_span!("attempt", queue = %self.attempts.queue, job = %self.job, attempt = self.attempt, digest = %self.plugin.digest)
        })
    }
}

/// Run `log` (a tracing event) inside the running attempt's span, if it
/// runs inside an attempt. Every event an attempt logs goes through here.
pub(crate) fn in_attempt<R>(log: impl FnOnce() -> R) -> R {
    match ATTEMPT.try_with(|a| a.get().clone()) {
        Ok(span) => span.in_scope(log),
        Err(_) => log(),
    }
}

impl Attempts {
    async fn run(self: Arc<Self>, job: bullmq::Job, cancel: CancellationToken) -> BullResult {
        // The plugin is taken once, here, so the span names the version
        // that runs the whole attempt even if a deploy lands meanwhile.
        let plugin = self.slot.current();
        let span = Arc::new(AttemptSpan { attempts: self.clone(), job: job.id().to_string(), attempt: job.attempts_made() + 1, plugin: plugin.clone(), span: OnceLock::new() });
        let will_retry = attempts_remain(&job);
        let started = Instant::now();
        let mut rec = AttemptRecord::default();
        let mut pending = None;
        let ran = async {
            let r = tokio::select! {
                r = Box::pin(self.attempt(plugin, job, &mut rec, &mut pending)) => Some(r),
                _ = cancel.cancelled() => None,
            };
            if r.is_none() {
                // The lock is still ours: what the guest queued in its last
                // ≤100 ms, and what it printed, is written before the job is
                // handed back.
                if let Some((p, out)) = pending.take() {
                    let printed = out.take_lines(self.shared.limits.max_log_line_bytes);
                    match tokio::time::timeout(INTERRUPT_FLUSH_LIMIT, Box::pin(p.flush(printed))).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => in_attempt(|| warn!(error = ?e, "could not write the interrupted attempt's pending log lines/progress")),
                        Err(_) => in_attempt(|| warn!("gave up writing the interrupted attempt's pending log lines/progress")),
                    }
                }
            }
            r
        };
        let ran = ATTEMPT.scope(span.clone(), ran).await;
        let result = ran.unwrap_or_else(|| {
            // Shutdown past its grace period: the job goes back to wait
            // (moveJobFromActiveToWait), attemptsMade unchanged.
            span.get().in_scope(|| warn!("attempt interrupted by shutdown; job handed back to wait"));
            rec.outcome = Some("handed_back");
            Err(bullmq::Error::RateLimited { delay_ms: 0 })
        });
        self.record(&span, started.elapsed(), will_retry, &rec, &result);
        result
    }

    /// Prometheus metrics for one finished attempt (see `metrics`), by the
    /// plugin version that ran it (`span.plugin`). `span` is entered only for
    /// the line a failure logs, not around all of this: ~1 µs less worker
    /// CPU per job (bench/README.md, session 9).
    fn record(&self, span: &AttemptSpan, took: Duration, will_retry: bool, rec: &AttemptRecord, result: &BullResult) {
        let m = metrics::global();
        let h = &self.histograms;
        h.attempt_seconds.observe(took.as_secs_f64());
        if let Some(d) = rec.instantiate {
            h.instantiate_seconds.observe(d.as_secs_f64());
        }
        if rec.memory_peak > 0 {
            h.memory_peak_bytes.observe(rec.memory_peak as f64);
        }
        if let Some(kind) = rec.trap {
            m.traps.get_or_create(&TrapLabels { queue: self.queue.clone(), kind }).inc();
        }
        if let Some(limit) = rec.limit {
            m.limit_kills.get_or_create(&LimitLabels { queue: self.queue.clone(), limit }).inc();
        }
        let outcome = rec.outcome.unwrap_or(match result {
            Ok(_) => "completed",
            Err(bullmq::Error::Delayed) => "delayed",
            Err(bullmq::Error::WaitingChildren) => "waiting_children",
            Err(bullmq::Error::RateLimited { .. }) => "handed_back",
            Err(bullmq::Error::Unrecoverable(_)) => "failed",
            Err(_) if will_retry => "retried",
            Err(_) => "failed",
        });
        m.jobs.get_or_create(&JobLabels { queue: self.queue.clone(), digest: span.plugin.digest.clone(), outcome }).inc();
        // Operators see why attempts fail without opening each job.
        if let (Err(e), "failed" | "retried") = (result, outcome) {
            let reason = match e {
                bullmq::Error::ProcessingError(r) | bullmq::Error::Unrecoverable(r) => r.clone(),
                other => other.to_string(),
            };
            span.get().in_scope(|| info!(outcome, reason = %crate::sandbox::truncate_utf8(&reason, 300), "attempt failed"));
        }
    }

    /// One attempt. `pending` gets the attempt's write-behind queue and
    /// output capture, for `run` to flush if shutdown interrupts it.
    async fn attempt(
        &self,
        plugin: Arc<Plugin>,
        job: bullmq::Job,
        rec: &mut AttemptRecord,
        pending: &mut Option<(Arc<crate::host::write_behind::WriteBehind>, CapturedOutput)>,
    ) -> BullResult {
        if let Err(e) = self.check_data(&job).await {
            return Err(bullmq::Error::Unrecoverable(e.to_string()));
        }
        let limits = &self.shared.limits;
        let token = job.token().unwrap_or_default().to_string();
        let wit_job = to_wit_job(&job, &self.queue);
        if wit_job.data.len() > limits.max_payload_bytes {
            let e = AttemptError::DataTooLarge { bytes: wit_job.data.len(), limit: limits.max_payload_bytes };
            return Err(bullmq::Error::Unrecoverable(e.to_string()));
        }
        let warm = self.take_warm(&plugin);
        let uses = warm.as_ref().map_or(0, |w| w.uses);
        let (mut store, instance, out) = prepare(&self.engine, limits, warm.map(|w| w.kept), |out| {
            // The job log records the version that ran this attempt.
            Backend::Redis(JobContext::new(self.shared.clone(), job, token, out.clone()).with_plugin_digest(&plugin.digest))
        });
        let Backend::Redis(ctx) = &store.data().job else { unreachable!("a worker's attempts run against Redis") };
        *pending = Some((ctx.pending.clone(), out.clone()));
        let (called, instance, instantiated) = Box::pin(call_in(&mut store, instance, &plugin, limits, &wit_job)).await;
        // `--instance-reuse`: an instance whose `process` returned, within
        // its limits, serves the binding's next attempt (until its quota).
        let keep = instance.filter(|_| uses + 1 < self.reuse && store.data().memory.hit.is_none());
        let result = self.conclude(&plugin, &mut store, called, instantiated, rec, &wit_job, &out).await;
        if let Some(instance) = keep {
            self.idle.lock().unwrap().push(Warm { plugin, kept: Kept { store, instance, out }, uses: uses + 1 });
        }
        result
    }

    /// What an attempt's `process` call leads to: its output and pending
    /// writes go to Redis, and its outcome becomes bullmq-official's result.
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        plugin: &Plugin,
        store: &mut Store<HostState>,
        called: Result<Result<Outcome, Failure>, AttemptError>,
        instantiated: Option<Duration>,
        rec: &mut AttemptRecord,
        wit_job: &wit::Job,
        out: &CapturedOutput,
    ) -> BullResult {
        let limits = &self.shared.limits;
        rec.instantiate = instantiated;
        let state = store.data_mut();
        rec.memory_peak = state.memory.peak;
        let lines = out.take_lines(limits.max_log_line_bytes);
        let Backend::Redis(ctx) = &mut state.job else { unreachable!("a worker's attempts run against Redis") };
        if tracing::enabled!(tracing::Level::DEBUG) {
            in_attempt(|| debug!(digest = %plugin.digest, "attempt returned"));
        }

        // The return value, checked before anything is written: only an
        // attempt that will reach moveToFinished(completed) leaves its writes
        // to go in one round trip with it (a prelude nobody takes is lost).
        let completed = match &called {
            Ok(Ok(Outcome::Completed(json))) => Some(check_return_value(json, limits)),
            _ => None,
        };
        // Output goes to the log before the job is finished, so a Node
        // client that sees `completed` also sees the lines (and the plugin
        // digest line, when nothing was logged yet). After a move the
        // lock is gone, so late output is dropped rather than written unchecked.
        if !ctx.lock_lost && ctx.moved.is_none() {
            let flushed = match &completed {
                Some(Ok(_)) => ctx.flush_with_finish(lines.clone()),
                _ => ctx.flush(lines.clone()).await,
            };
            match flushed {
                Ok(()) | Err(wit::JobError::LockLost) => {}
                Err(e) => in_attempt(|| warn!(error = ?e, "could not write the attempt's log lines and progress")),
            }
        }
        if ctx.lock_lost {
            in_attempt(|| warn!("lock lost during the attempt: leaving the job to its new owner"));
            rec.outcome = Some("lock_lost");
            return Err(bullmq::Error::Delayed);
        }

        let result = match called {
            Err(AttemptError::Trap(t)) => {
                rec.trap = Some(trap_kind(&t));
                rec.limit = match state.memory.hit {
                    Some(_) => Some("memory"),
                    None if t.contains("fuel") => Some("fuel"),
                    None => None,
                };
                return Err(bullmq::Error::ProcessingError(trap_reason(t, state.memory.hit, limits, &lines)));
            }
            Err(e) => {
                if matches!(e, AttemptError::Timeout { .. }) {
                    rec.limit = Some("timeout");
                }
                return Err(retryable(e));
            }
            Ok(r) => r,
        };
        let moved = ctx.moved;
        match result {
            Ok(Outcome::Completed(json)) => completed.expect("checked above").map(|()| bullmq::ReturnValue::Json(json)),
            Ok(Outcome::Moved) => match moved {
                Some(Moved::Delayed) => Err(bullmq::Error::Delayed),
                Some(Moved::WaitingChildren) => Err(bullmq::Error::WaitingChildren),
                None => Err(bullmq::Error::ProcessingError(
                    "processor returned `moved` but no host call moved the job (call move-to-delayed or wait-for-children first)".into(),
                )),
            },
            Err(failure) => {
                let r = match failure {
                    Failure::Retry(reason) => self.retry(plugin, ctx, wit_job, reason).await,
                    Failure::Unrecoverable(reason) => Err(bullmq::Error::Unrecoverable(reason)),
                    Failure::RetryAfter(r) => Self::retry_after(ctx, r.reason, r.delay_ms).await,
                };
                // `Delayed` here is bullpen's own delayed retry (or a lock
                // lost while making it), not a guest move.
                if matches!(r, Err(bullmq::Error::Delayed)) {
                    rec.outcome = Some(if ctx.lock_lost { "lock_lost" } else { "retried" });
                }
                r
            }
        }
    }

    /// `failure::retry-after`: the guest's own delay, counted as an attempt.
    async fn retry_after(ctx: &mut JobContext, reason: String, delay_ms: u64) -> BullResult {
        if !attempts_remain(&ctx.job) {
            // No attempts left: bullmq-official fails it, as Node would.
            return Err(bullmq::Error::ProcessingError(reason));
        }
        Self::delayed_retry(ctx, delay_ms, reason).await
    }

    async fn delayed_retry(ctx: &mut JobContext, delay_ms: u64, reason: String) -> BullResult {
        match ctx.retry_later(delay_ms, &reason).await {
            // Moved (or no longer ours): bullmq-official must write nothing more.
            Ok(()) | Err(wit::JobError::LockLost) => Err(bullmq::Error::Delayed),
            Err(e) => {
                in_attempt(|| warn!(error = ?e, "delayed retry failed; falling back to BullMQ's retry"));
                Err(bullmq::Error::ProcessingError(reason))
            }
        }
    }

    /// `failure::retry`. bullmq-official applies `attempts` and plain
    /// fixed/exponential backoff itself; bullpen steps in only for what it
    /// cannot compute: `jitter`, and custom types (the guest's `backoff`).
    async fn retry(&self, plugin: &Plugin, ctx: &mut JobContext, wit_job: &wit::Job, reason: String) -> BullResult {
        let bullmq_does_it = Err(bullmq::Error::ProcessingError(reason.clone()));
        if !attempts_remain(&ctx.job) || ctx.job.opts().backoff.is_none() {
            return bullmq_does_it;
        }
        let Some(backoff) = Backoff::from_opts(&ctx.raw_opts().await.unwrap_or_default()) else {
            return bullmq_does_it;
        };
        let n = ctx.job.attempts_made() + 1;
        let delay = if backoff.is_builtin() {
            if backoff.jitter == 0.0 {
                return bullmq_does_it;
            }
            backoff.builtin_delay(n, random_unit())
        } else {
            match self.guest_backoff(plugin, ctx, wit_job, &backoff.kind, n, &reason).await {
                Some(wit::BackoffDecision::DelayMs(d)) => d,
                Some(wit::BackoffDecision::GiveUp) => return Err(bullmq::Error::Unrecoverable(reason)),
                // As bullmq-official with no strategy: retry at once.
                None => 0,
            }
        };
        if delay == 0 {
            return bullmq_does_it;
        }
        Self::delayed_retry(ctx, delay, reason).await
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
            in_attempt(|| warn!(backoff = kind, "custom backoff type but the plugin exports no `backoff`: retrying at once"));
            return None;
        }
        let limits = &self.shared.limits;
        let out = CapturedOutput::new(limits.max_output_bytes);
        let bctx = JobContext::new(self.shared.clone(), ctx.job.clone(), ctx.token.clone(), out.clone());
        let mut store = new_store(&self.engine, HostState::new(bctx, limits, &out));
        if let Some(fuel) = limits.fuel {
            let _ = store.set_fuel(fuel);
        }
        yield_at_epoch_ticks(&mut store);
        let call = async {
            let instance = plugin.pre.instance_pre().instantiate_async(&mut store).await?;
            let f = instance.get_typed_func::<(String, u32, String, wit::Job), (wit::BackoffDecision,)>(&mut store, "backoff")?;
            let (d,) = f.call_async(&mut store, (kind.to_string(), n, reason.to_string(), wit_job.clone())).await?;
            Ok::<_, wasmtime::Error>(d)
        };
        match tokio::time::timeout(limits.timeout, call).await {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => {
                in_attempt(|| warn!(error = %format!("{e:#}"), "guest backoff failed: retrying at once"));
                None
            }
            Err(_) => {
                in_attempt(|| warn!("guest backoff timed out: retrying at once"));
                None
            }
        }
    }

    /// bullmq-official turns data that is not JSON into `null`; look at the
    /// raw field whenever data is `null` so such a job fails with a reason
    /// instead of running on made-up input.
    async fn check_data(&self, job: &bullmq::Job) -> Result<(), AttemptError> {
        if !job.data().is_null() {
            return Ok(());
        }
        let mut conn = self.shared.redis.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(self.shared.keys.job_key(job.id()))
            .arg("data")
            .query_async(&mut conn)
            .await
            .map_err(|e| AttemptError::BadData(format!("cannot read it: {e}")))?;
        match raw {
            None => Err(AttemptError::MissingData),
            Some(raw) => serde_json::from_str::<serde::de::IgnoredAny>(&raw)
                .map(|_| ())
                .map_err(|e| AttemptError::BadData(format!("{e} (data starts with {:?})", crate::sandbox::truncate_utf8(&raw, 40)))),
        }
    }
}

/// Whether a completed attempt's return value (the guest's JSON text) can
/// be stored, or why not: size, and that it parses, without building a
/// value. It is then handed to bullmq-official as it is
/// (`ReturnValue::Json`, vendored patch 8) instead of parsed into a `Value`
/// and serialised again (~2% of a worker's CPU in perf).
fn check_return_value(json: &str, limits: &Limits) -> Result<(), bullmq::Error> {
    if json.len() > limits.max_payload_bytes {
        return Err(bullmq::Error::ProcessingError(format!(
            "return value is {} bytes; the limit is {}",
            json.len(),
            limits.max_payload_bytes
        )));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(json).map(|_| ()).map_err(|e| {
        bullmq::Error::Unrecoverable(AttemptError::BadOutput(format!("return value is not valid JSON: {e}")).to_string())
    })
}

/// The `kind` label of a trap, from the reason `with_trap` wrote.
fn trap_kind(reason: &str) -> &'static str {
    if reason.contains("stack overflow") {
        "stack_overflow"
    } else if reason.contains("unreachable") {
        "unreachable"
    } else if reason.contains("out-of-bounds") {
        "out_of_bounds"
    } else if reason.contains("division by zero") {
        "division_by_zero"
    } else if reason.contains("interrupted") {
        "interrupt"
    } else {
        "other"
    }
}

/// One `process` call in a fresh store under the attempt's limits (memory,
/// fuel, wall clock): what `bullpen run` runs. Returns the store too, for
/// what the host calls recorded, and how long instantiation took (metrics).
pub(crate) async fn call_process(
    engine: &Engine,
    plugin: &Plugin,
    state: HostState,
    limits: &Limits,
    wit_job: &wit::Job,
) -> (Store<HostState>, Result<Result<Outcome, Failure>, AttemptError>, Option<Duration>) {
    let mut store = new_store(engine, state);
    let (called, _, instantiated) = call_in(&mut store, None, plugin, limits, wit_job).await;
    (store, called, instantiated)
}

/// At every epoch tick the guest yields to tokio through `yield_now`, which
/// wakes the task only after the runtime has polled its I/O driver.
/// wasmtime's plain `Yield` wakes it at once: on a worker with one thread a
/// spinning guest then held up Redis replies (its own write-behind flush,
/// other attempts' moves) for ~60 ticks, tokio's `event_interval`.
/// (tests/tests/write_behind.rs, step 2, caught it.)
pub(crate) fn yield_at_epoch_ticks(store: &mut Store<HostState>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))));
}

/// A store for attempts of one plugin, with the memory cap installed.
pub(crate) fn new_store(engine: &Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store
}

/// The result of [`call_in`]: what `process` returned (or why it did not),
/// the instance it ran in (for reuse; `None` if the call never returned),
/// and how long instantiation took when a fresh instance was made.
type Called = (Result<Result<Outcome, Failure>, AttemptError>, Option<Processor>, Option<Duration>);

/// One `process` call under the attempt's limits (memory, fuel, wall clock)
/// in `instance`, or in a fresh instance of `plugin` when `None`.
pub(crate) async fn call_in(
    store: &mut Store<HostState>,
    instance: Option<Processor>,
    plugin: &Plugin,
    limits: &Limits,
    wit_job: &wit::Job,
) -> Called {
    // A worker's attempt writes its pending log/progress while it runs.
    let pending = match &store.data().job {
        Backend::Redis(ctx) => Some(ctx.pending.clone()),
        Backend::Local(_) => None,
    };
    if let Some(fuel) = limits.fuel {
        if let Err(e) = store.set_fuel(fuel) {
            return (Err(AttemptError::Instantiate(format!("cannot set fuel: {e}"))), instance, None);
        }
    }
    // Yield to tokio at every epoch tick; the wall clock is enforced
    // by the timeout below, which drops (and so stops) the guest.
    yield_at_epoch_ticks(store);
    let mut instantiated = None;
    // Boxed: this future is large (instantiation and call state), and
    // every wrapper around it would otherwise copy it.
    let called = tokio::time::timeout(limits.timeout, Box::pin(async {
        let instance = match instance {
            Some(i) => i,
            None => {
                let t = Instant::now();
                let i = plugin
                    .pre
                    .instantiate_checked_once(&mut *store)
                    .await
                    .map_err(|e| AttemptError::Instantiate(format!("{e:#}")))?;
                instantiated = Some(t.elapsed());
                i
            }
        };
        let r = crate::host::write_behind::drive(pending, instance.call_process(&mut *store, wit_job)).await;
        match r {
            Ok(r) => Ok((r, instance)),
            Err(e) => Err(AttemptError::Trap(String::new()).with_trap(e)),
        }
    }))
    .await;
    match called {
        Ok(Ok((r, instance))) => (Ok(r), Some(instance), instantiated),
        Ok(Err(e)) => (Err(e), None, instantiated),
        Err(_) => (Err(AttemptError::Timeout { limit_ms: limits.timeout.as_millis() as u64 }), None, instantiated),
    }
}

/// The failedReason of a trapped attempt: the limit it hit (memory, fuel),
/// else the trap and, for a Rust panic, the panic message from `lines`.
pub(crate) fn trap_reason(t: String, memory_hit: Option<usize>, limits: &Limits, lines: &[String]) -> String {
    match memory_hit {
        None if t.contains("fuel") => {
            format!("out of fuel: the attempt used up its {} units of fuel (--fuel); {t}", limits.fuel.unwrap_or_default())
        }
        Some(wanted) => format!(
            "out of memory: the guest tried to grow its memory to {}, over the limit of {} (--max-memory-mb); trap: {t}",
            mib(wanted),
            mib(limits.max_memory_bytes)
        ),
        None => with_panic_message(t, lines),
    }
}

/// Bytes as MiB, with two decimals unless whole (a grow of 64 KiB past a
/// 32 MiB cap must not read "32 MiB, over the limit of 32 MiB").
fn mib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn retryable(e: AttemptError) -> bullmq::Error {
    bullmq::Error::ProcessingError(e.to_string())
}

impl AttemptError {
    /// Classify an error from inside the guest call as a trap with a name.
    fn with_trap(self, e: wasmtime::Error) -> AttemptError {
        let name = match e.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => "stack overflow (the guest recursed past its 1 MiB wasm stack)".to_string(),
            Some(Trap::UnreachableCodeReached) => "unreachable instruction executed".to_string(),
            // Rust and C keep their stack in linear memory: unbounded
            // recursion ends here, not in a stack-overflow trap.
            Some(Trap::MemoryOutOfBounds) => {
                "out-of-bounds memory access (a guest bug, or a stack kept in linear memory, as Rust's, overflowing)".to_string()
            }
            Some(Trap::IntegerDivisionByZero) => "integer division by zero".to_string(),
            Some(Trap::Interrupt) => "interrupted".to_string(),
            Some(t) => t.to_string(),
            None => format!("{e:#}"),
        };
        // wasmtime's own texts may already start with the prefix.
        AttemptError::Trap(format!("wasm trap: {}", name.strip_prefix("wasm trap: ").unwrap_or(&name)))
    }
}

/// A Rust guest's panic prints `... panicked at file:line:col:` and the
/// message to stderr before trapping; put them in the failedReason.
fn with_panic_message(trap: String, lines: &[String]) -> String {
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => {
            let msg = lines.get(i + 1).map(String::as_str).unwrap_or("");
            format!("{trap} (guest panicked: {msg}; {})", lines[i].trim())
        }
        None => trap,
    }
}

/// The guest's read-only view of the job. Total: never panics, whatever the hash held.
pub(crate) fn to_wit_job(job: &bullmq::Job, queue: &str) -> wit::Job {
    wit::Job {
        id: job.id().to_string(),
        name: job.name().to_string(),
        queue: queue.to_string(),
        data: serde_json::to_string(job.data()).unwrap_or_else(|_| "null".into()),
        opts: serde_json::to_string(job.opts()).unwrap_or_else(|_| "{}".into()),
        attempts_made: job.attempts_made(),
        attempts_started: job.attempts_started(),
        timestamp: job.timestamp(),
        progress: serde_json::to_string(job.progress()).unwrap_or_else(|_| "0".into()),
        parent: job.parent().map(|p| wit::ParentRef {
            id: p.id.clone(),
            queue: p.queue_key.rsplit(':').next().unwrap_or(&p.queue_key).to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's JSON text is refused when it does not parse (whole, no
    /// trailing text) or is over the payload limit, and passes otherwise.
    #[test]
    fn return_value_check() {
        let limits = Limits { max_payload_bytes: 16, ..Limits::default() };
        for ok in ["null", "1e3", " {\"a\":[1,2]} ", "\"\\u00e9\""] {
            assert!(check_return_value(ok, &limits).is_ok(), "{ok}");
        }
        for bad in ["", "{", "{\"a\":1} x", "nul", "'a'", "[1,]"] {
            match check_return_value(bad, &limits) {
                Err(bullmq::Error::Unrecoverable(m)) => assert!(m.contains("return value is not valid JSON"), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match check_return_value("[1,2,3,4,5,6,7,8,9]", &limits) {
            Err(bullmq::Error::ProcessingError(m)) => assert_eq!(m, "return value is 19 bytes; the limit is 16"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trap_reasons_say_wasm_trap_once_and_sizes_exactly() {
        let t = |e: wasmtime::Error| match AttemptError::Trap(String::new()).with_trap(e) {
            AttemptError::Trap(r) => r,
            other => panic!("{other:?}"),
        };
        // wasmtime's own text for this one starts with "wasm trap: " already.
        assert_eq!(t(wasmtime::Error::new(Trap::OutOfFuel)), "wasm trap: all fuel consumed by WebAssembly");
        assert!(t(wasmtime::Error::new(Trap::MemoryOutOfBounds)).contains("stack kept in linear memory"));
        let limits = Limits { max_memory_bytes: 32 << 20, ..Limits::default() };
        let r = trap_reason("wasm trap: unreachable".into(), Some((32 << 20) + (64 << 10)), &limits, &[]);
        assert!(r.starts_with("out of memory: the guest tried to grow its memory to 32.06 MiB, over the limit of 32 MiB"), "{r}");
        let r = trap_reason("t".into(), Some(64 << 20), &limits, &[]);
        assert!(r.contains("to 64 MiB, over"), "{r}");
    }
}
