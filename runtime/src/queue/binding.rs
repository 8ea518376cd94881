//! A binding: one queue, one plugin slot, and on each shard a `bullmq`
//! Worker with a share of the queue's concurrency, whose processor is the
//! binding's [`Trigger`]: each attempt runs in a fresh instance of the
//! current plugin (or, opted into with `--instance-reuse`, in one a previous
//! attempt left).

use std::sync::Arc;
use std::time::Duration;

use bullmq::worker::CancellationToken;
use bullmq::{Worker, WorkerOptions};
use tracing::{debug, warn};
use wasmtime::Engine;

use super::cancel::{self, Running};
use super::shards::Shards;
use super::trigger::{Tally, Trigger};
use crate::conn::RedisTarget;
use crate::host::redis_job::SharedConfig;
use crate::host::{ChildQueues, Grants, Shared};
use crate::metrics;
use crate::plugins::PluginSlot;
use crate::sandbox::Limits;

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
pub(crate) struct BindingConfig {
    /// One Redis server or a Cluster's seed nodes.
    pub(crate) redis: RedisTarget,
    pub(crate) queue: String,
    /// BullMQ key prefix (`bull`, or a hash-tagged `{bull}` for Cluster).
    pub(crate) prefix: String,
    pub(crate) concurrency: usize,
    pub(crate) limits: Limits,
    /// BullMQ `lockDuration` (30 s) and `stalledInterval` (30 s).
    pub(crate) lock_duration_ms: u64,
    pub(crate) stalled_interval_ms: u64,
    /// BullMQ `maxStalledCount` (1).
    pub(crate) max_stalled_count: u32,
    /// BullMQ `maxStartedAttempts` (unlimited).
    pub(crate) max_started_attempts: Option<u32>,
    /// BullMQ worker `limiter`: (max jobs, per duration in ms), queue-wide.
    pub(crate) limiter: Option<(u64, u64)>,
    pub(crate) child_queues: ChildQueues,
    /// BullMQ worker `name`: stored on each job it takes (Node's
    /// `job.processedBy`) and as its Redis client name.
    pub(crate) name: Option<String>,
    /// How many attempts one instance may serve, one after another
    /// (`--instance-reuse`). 1, the default, is a fresh instance for every
    /// attempt: nothing a job does can be seen by the next. Above 1, an
    /// instance whose `process` returned within its limits runs the
    /// binding's next attempt, memory and globals as it left them — for
    /// guests whose runtime start dominates (Go, JS) and that keep no
    /// state between jobs. A trap, a timeout, the memory cap or a deploy
    /// always ends an instance.
    pub(crate) instance_reuse: u32,
    /// Run BullMQ's `moveToFinished`, and the write-behind flush sent ahead
    /// of it, as Redis Functions (FCALL) where the server allows it
    /// (`--redis-functions`, default on): the same Lua and the same changes,
    /// at ~20 µs less Redis CPU per job (bench/README.md), at the cost of a
    /// library (`bullpen_moveToFinished_<sha>`) kept on the server. Redis < 7
    /// or an ACL without FUNCTION/FCALL falls back to EVALSHA by itself.
    pub(crate) redis_functions: bool,
    /// Outbound HTTP hosts and variables granted to the guests. Default:
    /// none (deny by default, as the rest of the sandbox).
    pub(crate) grants: Arc<Grants>,
}

impl BindingConfig {
    pub(crate) fn new(redis: RedisTarget, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        let grants = Arc::new(Grants::none(&queue));
        BindingConfig {
            redis,
            child_queues: ChildQueues::default_for(&queue),
            queue,
            prefix: "bull".into(),
            concurrency: 1,
            limits: Limits::default(),
            lock_duration_ms: 30_000,
            stalled_interval_ms: 30_000,
            max_stalled_count: 1,
            limiter: None,
            max_started_attempts: None,
            name: None,
            instance_reuse: 1,
            redis_functions: true,
            grants,
        }
    }
}

/// How long interrupted attempts get to hand their jobs back at shutdown.
const HANDBACK_TIME: Duration = Duration::from_secs(5);

/// A running binding.
pub(crate) struct Binding {
    /// One BullMQ worker per shard the queue runs on (`super::shards`).
    parts: Vec<Part>,
    heartbeat: tokio::sync::Mutex<Option<crate::ops::stats::Heartbeat>>,
    redis: bullmq::redis_connection::AnyConnection,
    pub(crate) slot: Arc<PluginSlot>,
    pub(crate) config: BindingConfig,
    /// Attempts by outcome, shared by the parts' triggers.
    pub(crate) tally: Arc<Tally>,
    /// Delivers `bullpen cancel` requests to the parts' running attempts.
    cancels: tokio::task::JoinHandle<()>,
}

impl Binding {
    /// Connect to Redis and start processing `config.queue` with the plugin
    /// in `slot`, `config.concurrency` split over `shards`: a BullMQ worker
    /// on each (see `super::shards` for why).
    pub(crate) async fn start(
        engine: Engine,
        slot: Arc<PluginSlot>,
        config: BindingConfig,
        shards: &Shards,
    ) -> anyhow::Result<Binding> {
        config.redis.check_prefix(&config.prefix)?;
        let redis = config.redis.connect().await?;
        let mut parts: Vec<Part> = Vec::new();
        let tally = Arc::new(Tally::default());
        let running = Arc::new(Running::default());
        for (shard, concurrency) in shards.place(config.concurrency) {
            let part = PartConfig { concurrency, tally: tally.clone(), running: running.clone() };
            let started = shard.spawn(start_part(engine.clone(), slot.clone(), config.clone(), part));
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
        let heartbeat = crate::ops::stats::Heartbeat::spawn(
            redis.clone(),
            &config.prefix,
            &config.queue,
            slot.clone(),
            config.concurrency,
        );
        let cancels = cancel::spawn_listener(config.redis.clone(), &config.prefix, &config.queue, running);
        Ok(Binding { parts, heartbeat: tokio::sync::Mutex::new(Some(heartbeat)), redis, slot, config, tally, cancels })
    }

    /// Stop fetching; give running attempts `grace` to finish; then
    /// interrupt the rest and hand their jobs back to wait without counting
    /// an attempt.
    pub(crate) async fn close(&self, grace: Duration) -> anyhow::Result<()> {
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
        self.cancels.abort();
        for r in closed {
            r??;
        }
        Ok(())
    }
}

/// What one shard's part shares with the binding.
struct PartConfig {
    /// The part's share of the binding's concurrency.
    concurrency: usize,
    tally: Arc<Tally>,
    running: Arc<Running>,
}

/// One shard's share of a binding: its own Redis connection for host calls,
/// its own bullmq-official worker with `concurrency` slots. Runs on the shard.
async fn start_part(
    engine: Engine,
    slot: Arc<PluginSlot>,
    config: BindingConfig,
    part: PartConfig,
) -> anyhow::Result<Arc<Worker>> {
    let PartConfig { concurrency, tally, running } = part;
    let redis = config.redis.connect().await?;
    let shared = Arc::new(Shared::new(
        redis,
        SharedConfig {
            target: config.redis.clone(),
            prefix: config.prefix.clone(),
            queue: config.queue.clone(),
            limits: config.limits.clone(),
            lock_duration_ms: config.lock_duration_ms,
            child_queues: config.child_queues.clone(),
            grants: config.grants.clone(),
        },
    ));
    let trigger = Arc::new(Trigger {
        engine,
        slot,
        shared,
        queue: config.queue.as_str().into(),
        histograms: metrics::global().queue_histograms(&config.queue),
        reuse: config.instance_reuse,
        idle: Default::default(),
        tally,
        running,
        cancel_key: crate::ops::cancel::requests_key(&config.prefix, &config.queue).into(),
        worker_name: config.name.as_deref().map(Arc::from),
        finishing: Default::default(),
    });
    // With traces on, an attempt's span ends once its transition is written.
    let on_finished = crate::telemetry::enabled().then(|| {
        let trigger = trigger.clone();
        Arc::new(move |id: &str| trigger.finished(id)) as bullmq::options::OnFinishedFn
    });
    let flush_source = trigger.shared.scripts.flush_source.clone();
    let processor = move |job: bullmq::Job, cancel: CancellationToken| {
        let trigger = trigger.clone();
        async move { trigger.run(job, cancel).await }
    };
    let opts = WorkerOptions {
        connection: config.redis.bullmq_options(),
        prefix: config.prefix.clone(),
        concurrency,
        lock_duration: config.lock_duration_ms,
        stalled_interval: config.stalled_interval_ms,
        max_stalled_count: config.max_stalled_count,
        max_started_attempts: config.max_started_attempts,
        limiter: config
            .limiter
            .map(|(max, ms)| bullmq::options::RateLimiterOptions::new(max, std::time::Duration::from_millis(ms))),
        name: config.name.clone(),
        // The write-behind flush a completed attempt returns with its value
        // becomes a function of the same library as moveToFinished.
        finish_prelude_script: Some(flush_source),
        // Per-job events (active/completed/failed, each with a clone of
        // its result) would be read only to be dropped; `metrics` and
        // the attempt log already say what each attempt did.
        job_events: false,
        // moveToFinished (and the write-behind flush sent ahead of it, in
        // the same library) as Redis Functions: the same Lua, less Redis
        // CPU per job (vendor/bullmq-official/PATCHES.md, patch 4).
        redis_functions: config.redis_functions,
        on_finished,
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
                // bullmq-official logged it already (once per outage for
                // fetches): a second line would state the cause twice.
                WorkerEvent::Error(e) => debug!(queue = %queue, error = %e, "worker error"),
                WorkerEvent::Stalled { job_id } => warn!(queue = %queue, job = %job_id, "stalled job recovered"),
                WorkerEvent::Closed => break,
                _ => {}
            }
        }
    });
}
