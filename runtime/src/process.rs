//! `bullpen worker` as a process: its composition root. From a resolved
//! [`WorkerPlan`] (the CLI builds it from flags and `bullpen.toml`) it makes
//! the one engine and plugin loader, the shards attempts run on, a binding
//! per queue with its plugin source (file watch or registry follower), the
//! metrics endpoint, and waits for SIGTERM/SIGINT to shut down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::plugins::deploy::{watch_file, Loader, RegistryFollower};
use crate::plugins::{new_linker, PluginSlot};
use crate::queue::{Binding, BindingConfig, Shards};
use crate::sandbox::engine::{new_engine_with, EngineOptions};

/// One queue as the process will serve it.
#[derive(Debug, Clone)]
pub(crate) struct QueuePlan {
    pub(crate) binding: BindingConfig,
    /// `Some`: this file (watched unless `watch` is false); `None`: the registry.
    pub(crate) plugin: Option<PathBuf>,
    pub(crate) watch: bool,
}

/// Everything `bullpen worker` serves, resolved before anything runs.
pub(crate) struct WorkerPlan {
    pub(crate) queues: Vec<QueuePlan>,
    /// Threads that run attempts (`--threads`); `None`: [`default_threads`].
    pub(crate) threads: Option<usize>,
    /// How long running attempts may finish at shutdown (`--grace-ms`).
    pub(crate) grace: Duration,
    /// Serve Prometheus metrics here (`--metrics-addr`).
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Export traces to this OTLP/HTTP collector (`--otlp-endpoint`).
    pub(crate) otlp_endpoint: Option<String>,
    /// How often each queue's summary line is logged (`--summary-secs`);
    /// `None`: never.
    pub(crate) summary: Option<Duration>,
}

/// One thread per core, but no more than the attempts the queues may run
/// at once (the sum of their concurrency): a thread beyond those has no
/// guest to run and costs cross-thread wakeups (at concurrency 1 one thread
/// used 15-30% less CPU per job at the same jobs/s; bench/README.md).
fn default_threads(queues: &[QueuePlan]) -> usize {
    let attempts: usize = queues.iter().map(|p| p.binding.concurrency).sum();
    attempts.clamp(1, std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Run the worker until a shutdown signal. Attempts run on the shards; the
/// calling thread gets a current-thread runtime for signals, deploys,
/// heartbeats and metrics.
pub(crate) fn run(plan: WorkerPlan) -> anyhow::Result<()> {
    let threads = plan.threads.unwrap_or_else(|| default_threads(&plan.queues));
    if let Some(endpoint) = &plan.otlp_endpoint {
        crate::telemetry::start(endpoint)?;
    }
    let shards = Shards::start(threads)?;
    let served = tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve(plan, shards));
    // The attempts' spans are ended by now: export what is still batched.
    crate::telemetry::shutdown();
    served
}

async fn serve(plan: WorkerPlan, shards: Shards) -> anyhow::Result<()> {
    // Handlers first: a signal while the plugins load stops the worker
    // cleanly (exit 0), not by the default action.
    let shutdown = shutdown_signal()?;
    tokio::pin!(shutdown);
    // Also before start-up work: a SIGHUP then is kept for the loop below.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    if let Some(addr) = plan.metrics_addr {
        crate::metrics::serve(addr).await?;
    }
    // One engine for every queue; fuel metering is engine-wide.
    let fuel = plan.queues.iter().any(|p| p.binding.limits.fuel.is_some());
    let engine = new_engine_with(EngineOptions { fuel })?;
    let loader = Loader::new(engine.clone(), new_linker(&engine)?);
    let redis = plan.queues.first().map(|q| q.binding.redis.clone());
    // Queues start concurrently: one waiting for its first deploy does not
    // hold the others back.
    let starting = async {
        if let Some(redis) = &redis {
            redis_ready(redis).await?;
        }
        futures_util::future::try_join_all(
            plan.queues.into_iter().map(|queue| start_queue(engine.clone(), loader.clone(), queue, &shards)),
        )
        .await
    };
    let running = tokio::select! {
        r = starting => r?,
        () = &mut shutdown => { info!("stopped before every queue had a plugin"); return Ok(()); }
    };
    let names: Vec<&str> = running.iter().map(|r| r.binding.config.queue.as_str()).collect();
    let digests: Vec<String> = running.iter().map(|r| r.binding.slot.current().digest.to_string()).collect();
    let redis = redis.map(|r| r.to_string()).unwrap_or_default();
    info!(queues = %names.join(","), digest = %digests.join(","), threads = shards.len(), redis = %redis, "worker ready");
    // Jobs finish too fast for a line each; one line per queue per
    // interval says what the worker did (nothing when it did nothing).
    let mut summary = plan.summary.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => reload_variables(&running),
            _ = async { summary.as_mut().unwrap().tick().await }, if summary.is_some() => summarize(&running, plan.summary.unwrap()),
        }
    }
    let grace = plan.grace;
    info!(grace_ms = grace.as_millis() as u64, "shutting down: no new jobs; waiting for running attempts");
    futures_util::future::try_join_all(running.iter().map(|r| {
        if let Some(s) = &r.swapper {
            s.abort();
        }
        r.binding.close(grace)
    }))
    .await?;
    info!("worker stopped");
    Ok(())
}

/// One info line per queue that ran attempts since the last one.
fn summarize(running: &[Running], every: Duration) {
    for r in running {
        let [completed, failed, retried, other] = r.binding.tally.take();
        if completed + failed + retried + other > 0 {
            info!(
                queue = %r.binding.config.queue,
                completed, failed, retried, other,
                "jobs in the last {} s", every.as_secs()
            );
        }
    }
}

/// SIGHUP: every queue's variables read again from their sources (a
/// rotated secret file needs no restart). Attempts already running keep
/// what they read; a source that cannot be read keeps that queue's old values.
fn reload_variables(running: &[Running]) {
    for r in running {
        let queue = &r.binding.config.queue;
        let variables = &r.binding.config.grants.variables;
        if variables.is_empty() {
            continue;
        }
        match variables.reload() {
            Ok(()) => info!(queue = %queue, variables = variables.len(), "variables read again (SIGHUP)"),
            Err(e) => warn!(queue = %queue, "{e}; keeping the previous values"),
        }
    }
}

/// Wait until Redis is usable. A wrong setting (credentials, TLS, URL)
/// ends the worker; an outage (refused, no answer, loading, a replica) is
/// waited out with backoff, each cause logged once.
async fn redis_ready(redis: &crate::conn::RedisTarget) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut said: Option<String> = None;
    loop {
        match redis.check_once().await {
            Ok(()) => {
                if said.is_some() {
                    info!(redis = %redis, "Redis is usable again");
                }
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                let line = e.to_string();
                if said.as_deref() != Some(line.as_str()) {
                    warn!("{line}; retrying until it is");
                    said = Some(line);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A queue being served, and what swaps its plugin.
struct Running {
    binding: Binding,
    swapper: Option<tokio::task::JoinHandle<()>>,
}

/// Load the queue's plugin (its file, or what is deployed: waiting, with a
/// log line every 10 s, until something is) and start its binding.
async fn start_queue(
    engine: wasmtime::Engine,
    loader: Arc<Loader>,
    plan: QueuePlan,
    shards: &Shards,
) -> anyhow::Result<Running> {
    let c = &plan.binding;
    let mut follower = None;
    let plugin = match &plan.plugin {
        Some(path) => loader.load_file(path).await.with_context(|| format!("queue `{}`", c.queue))?,
        None => {
            let mut f = RegistryFollower::connect(loader.clone(), &c.redis, &c.prefix, &c.queue)
                .await
                .with_context(|| format!("cannot read the plugin registry of queue `{}` on {}", c.queue, c.redis))?;
            let first = f.first().await;
            follower = Some(f);
            first
        }
    };
    info!(
        queue = %c.queue,
        plugin = %plugin.source,
        digest = %plugin.digest,
        load_ms = format!("{:.1}", plugin.load_ms),
        from_cache = plugin.from_cache,
        "plugin loaded"
    );
    let slot = Arc::new(PluginSlot::new(plugin));
    let (queue, concurrency, redis_url) = (c.queue.clone(), c.concurrency, c.redis.to_string());
    let binding = Binding::start(engine, slot.clone(), plan.binding, shards)
        .await
        .with_context(|| format!("cannot start a worker for queue `{queue}` on {redis_url}"))?;
    let swapper = match (follower, &plan.plugin) {
        (Some(f), _) => Some(f.spawn(slot.clone())),
        (None, Some(path)) if plan.watch => Some(watch_file(loader.clone(), path.clone(), slot.clone())),
        _ => None,
    };
    info!(queue = %queue, concurrency, digest = %slot.current().digest, "queue ready");
    Ok(Running { binding, swapper })
}

/// Set by a SIGTERM/SIGINT that came before tokio's handlers existed.
static EARLY_SIGNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From here on, SIGTERM/SIGINT no longer kill `bullpen worker` by the
/// default action (exit 143): the signal is recorded, and the worker stops
/// cleanly once its runtime is up. Called first thing for `worker`; the
/// other commands keep the default action.
pub(crate) fn catch_early_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the action only stores to an atomic (async-signal-safe).
        let _ = unsafe {
            signal_hook_registry::register(signal, || EARLY_SIGNAL.store(true, std::sync::atomic::Ordering::SeqCst))
        };
    }
}

/// SIGTERM or SIGINT, whichever comes first (or came before this was
/// called); the handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let early = EARLY_SIGNAL.load(std::sync::atomic::Ordering::SeqCst);
    Ok(async move {
        if early {
            return;
        }
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
