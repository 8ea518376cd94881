//! The `bullpen` command line. Each subcommand is a thin layer over the
//! library; the flags' defaults are BullMQ's where BullMQ has one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::conn::RedisTarget;
use crate::deploy::{watch_file, Loader, RegistryFollower};
use crate::engine::new_engine;
use crate::host::ChildQueues;
use crate::plugin::{new_linker, Plugin};
use crate::registry::{iso8601, PluginSlot, Registry};
use crate::sandbox::Limits;
use crate::worker::{Binding, BindingConfig};

#[derive(Parser, Debug)]
#[command(name = "bullpen", version, about = "Run BullMQ jobs in sandboxed WebAssembly processors")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Process jobs of a BullMQ queue with a Wasm component, until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Add a job to a queue (as BullMQ's Queue.add does) and print its id.
    Add(AddArgs),
    /// Move a failed (or completed) job back to wait, as BullMQ's Job.retry does.
    Retry(RetryArgs),
    /// Print one job (data, state, attempts, result, logs) as JSON.
    Inspect(InspectArgs),
    /// Validate a component and make it the queue's processor on every
    /// registry worker (`bullpen worker` without --plugin); prints its digest.
    Deploy(DeployArgs),
    /// Make an earlier deployed version current again (default: the one
    /// current before the current one); prints its digest.
    Rollback(RollbackArgs),
    /// List the versions deployed for a queue, with deploy times and which is current.
    Plugins(PluginsArgs),
}

/// Where the queue lives.
#[derive(Args, Debug, Clone)]
pub struct QueueArgs {
    /// Redis URL; with --cluster, a seed node of the Cluster (repeatable:
    /// the first reachable one is used to discover the rest).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis: Vec<String>,
    /// The --redis URLs are nodes of a Redis Cluster (needs a hash-tagged --prefix).
    #[arg(long)]
    pub cluster: bool,
    /// Queue name.
    #[arg(long)]
    pub queue: String,
    /// BullMQ key prefix (with --cluster it must have a hash tag, such as '{bull}').
    #[arg(long, default_value = "bull")]
    pub prefix: String,
}

impl QueueArgs {
    /// The Redis target, checked (see [`RedisTarget::from_args`]).
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        RedisTarget::from_args(self.redis.clone(), self.cluster, &self.prefix)
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// The processor: a WebAssembly component of the bullpen:processor
    /// world. The file is watched: when it changes to another valid
    /// component the worker switches to it (a broken file is refused and
    /// the loaded version keeps running). Without --plugin the worker runs
    /// what `bullpen deploy` made current for the queue and follows deploys
    /// and rollbacks.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// With --plugin: load the file once, do not watch it.
    #[arg(long, requires = "plugin")]
    pub no_watch: bool,
    /// Attempts run at once (BullMQ `concurrency`).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Wall-clock limit per attempt, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Linear memory limit per instance, in MiB.
    #[arg(long, default_value_t = 128)]
    pub max_memory_mb: usize,
    /// Fuel per attempt (roughly, wasm instructions); past it the attempt
    /// fails naming the limit. Unmetered when absent (metering costs speed).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// BullMQ `lockDuration`, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub lock_duration_ms: u64,
    /// BullMQ `stalledInterval`, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub stalled_interval_ms: u64,
    /// BullMQ `maxStalledCount`.
    #[arg(long, default_value_t = 1)]
    pub max_stalled_count: u32,
    /// BullMQ `maxStartedAttempts` (unlimited when absent).
    #[arg(long)]
    pub max_started_attempts: Option<u32>,
    /// On SIGTERM, how long running attempts may finish before they are
    /// interrupted and their jobs handed back to wait, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub grace_ms: u64,
    /// A queue guests may add children to (repeatable; '*' for any).
    /// Default: the worker's queue and '<queue>-children'.
    #[arg(long = "child-queue")]
    pub child_queues: Vec<String>,
    /// BullMQ worker `name`: recorded on every job this worker takes
    /// (Node's `job.processedBy`), so a fleet's work can be told apart.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// Job name.
    pub name: String,
    /// Job data, as JSON.
    pub data: String,
    /// BullMQ job options, as JSON (e.g. '{"attempts":3,"jobId":"a1"}').
    #[arg(long)]
    pub opts: Option<String>,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// Job id.
    pub job_id: String,
    /// The state the job is retried from.
    #[arg(long, value_enum, default_value_t = crate::admin::FinishedState::Failed)]
    pub state: crate::admin::FinishedState,
    /// Reset attemptsMade to 0 (BullMQ `resetAttemptsMade`): the job gets its
    /// full `attempts` again.
    #[arg(long)]
    pub reset_attempts_made: bool,
    /// Reset attemptsStarted to 0 (BullMQ `resetAttemptsStarted`).
    #[arg(long)]
    pub reset_attempts_started: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// Job id.
    pub job_id: String,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// The component to deploy (validated first: a refused component changes nothing).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// The version to make current: a digest or a unique prefix of one
    /// (see `bullpen plugins`). Default: the version current before the
    /// current one (repeat to go further back).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args, Debug)]
pub struct PluginsArgs {
    #[command(flatten)]
    pub q: QueueArgs,
    /// Print JSON (`[{"digest","deployedAt","size","current"}]`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(a) => worker(a).await,
        Command::Add(a) => add(a).await,
        Command::Retry(a) => retry(a).await,
        Command::Inspect(a) => inspect(a).await,
        Command::Deploy(a) => deploy(a).await,
        Command::Rollback(a) => rollback(a).await,
        Command::Plugins(a) => plugins(a).await,
    }
}

async fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let redis = a.q.target()?;
    let engine = crate::engine::new_engine_with(crate::engine::EngineOptions { fuel: a.fuel.is_some() })?;
    let linker = new_linker(&engine)?;
    let loader = Loader::new(engine.clone(), linker);
    let shutdown = wait_for_shutdown_signal();
    tokio::pin!(shutdown);
    // The plugin source: a (watched) file, or the queue's registry.
    let mut follower = None;
    let plugin = match &a.plugin {
        Some(path) => loader.load_file(path).await?,
        None => {
            let mut f = RegistryFollower::connect(loader.clone(), &redis, &a.q.prefix, &a.q.queue)
                .await
                .with_context(|| format!("cannot read the plugin registry of queue `{}` on {redis}", a.q.queue))?;
            let first = tokio::select! {
                p = f.first() => p,
                r = &mut shutdown => { r?; info!("stopped before anything was deployed"); return Ok(()); }
            };
            follower = Some(f);
            first
        }
    };
    info!(plugin = %plugin.source, digest = %plugin.digest, load_ms = format!("{:.1}", plugin.load_ms), from_cache = plugin.from_cache, "plugin loaded");
    let mut config = BindingConfig::new(redis.clone(), a.q.queue.clone());
    config.prefix = a.q.prefix.clone();
    config.concurrency = a.concurrency;
    config.limits = Limits {
        timeout: Duration::from_millis(a.timeout_ms),
        max_memory_bytes: a.max_memory_mb << 20,
        fuel: a.fuel,
        ..Limits::default()
    };
    config.lock_duration_ms = a.lock_duration_ms;
    config.stalled_interval_ms = a.stalled_interval_ms;
    config.max_stalled_count = a.max_stalled_count;
    config.max_started_attempts = a.max_started_attempts;
    config.name = a.name.clone();
    if a.child_queues.iter().any(|q| q == "*") {
        config.child_queues = ChildQueues::Any;
    } else if !a.child_queues.is_empty() {
        config.child_queues = ChildQueues::Only(a.child_queues.clone());
    }
    let slot = Arc::new(PluginSlot::new(plugin));
    let binding = Binding::start(engine, slot.clone(), config)
        .await
        .with_context(|| format!("cannot start a worker for queue `{}` on {redis}", a.q.queue))?;
    let swapper = match (follower, &a.plugin) {
        (Some(f), _) => Some(f.spawn(slot.clone())),
        (None, Some(path)) if !a.no_watch => Some(watch_file(loader.clone(), path.clone(), slot.clone())),
        _ => None,
    };
    info!(queue = %a.q.queue, concurrency = a.concurrency, digest = %slot.current().digest, "worker ready");
    shutdown.await?;
    if let Some(s) = swapper {
        s.abort();
    }
    info!(grace_ms = a.grace_ms, "shutting down: no new jobs; waiting for running attempts");
    binding.close(Duration::from_millis(a.grace_ms)).await?;
    info!("worker stopped");
    Ok(())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn add(a: AddArgs) -> anyhow::Result<()> {
    let data: serde_json::Value =
        serde_json::from_str(&a.data).with_context(|| format!("job data is not valid JSON: {:?}", a.data))?;
    let opts: bullmq::JobOptions = match &a.opts {
        Some(o) => serde_json::from_str(o).with_context(|| format!("--opts is not valid BullMQ job options: {o:?}"))?,
        None => bullmq::JobOptions::default(),
    };
    let redis = a.q.target()?;
    let mut qopts = bullmq::QueueOptions::default();
    qopts.connection = redis.bullmq_options();
    qopts.prefix = a.q.prefix.clone();
    let queue = bullmq::Queue::with_options(&a.q.queue, qopts)
        .await
        .with_context(|| format!("cannot open queue `{}` on {redis}", a.q.queue))?;
    let job = queue.add(&a.name, data).options(opts).await.context("adding the job failed")?;
    println!("{}", job.id());
    Ok(())
}

async fn retry(a: RetryArgs) -> anyhow::Result<()> {
    let opts = crate::admin::RetryOptions {
        reset_attempts_made: a.reset_attempts_made,
        reset_attempts_started: a.reset_attempts_started,
    };
    crate::admin::retry_job(&a.q.target()?, &a.q.prefix, &a.q.queue, &a.job_id, a.state, opts).await?;
    info!(job = %a.job_id, queue = %a.q.queue, from = %a.state, "job moved back to wait");
    Ok(())
}

/// Validate (as a worker would load it), store, make current, notify.
async fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("refusing to deploy: cannot read {}", a.file.display()))?;
    let engine = new_engine()?;
    let linker = new_linker(&engine)?;
    let source = a.file.display().to_string();
    let checked = bytes.clone();
    let plugin = tokio::task::spawn_blocking(move || Plugin::from_bytes(&engine, &linker, &checked, &source))
        .await?
        .map_err(|e| anyhow::anyhow!("refusing to deploy: {e}; nothing was changed"))?;
    let registry = open_registry(&a.q).await?;
    let done = registry.deploy(&plugin.digest, &bytes).await?;
    info!(
        queue = %a.q.queue,
        digest = %done.current,
        previous = done.previous.as_deref().unwrap_or("none"),
        notified = done.notified,
        size = bytes.len(),
        "deployed"
    );
    println!("{}", done.current);
    Ok(())
}

async fn open_registry(q: &QueueArgs) -> anyhow::Result<Registry> {
    let redis = q.target()?;
    Registry::connect(&redis, &q.prefix, &q.queue)
        .await
        .with_context(|| format!("cannot reach the plugin registry of queue `{}` on {redis}", q.queue))
}

async fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let registry = open_registry(&a.q).await?;
    let done = registry.rollback(a.to.as_deref()).await?;
    if done.previous.as_deref() == Some(done.current.as_str()) {
        info!(queue = %a.q.queue, digest = %done.current, "already current; nothing changed");
    } else {
        info!(queue = %a.q.queue, digest = %done.current, previous = done.previous.as_deref().unwrap_or("none"), notified = done.notified, "rolled back");
    }
    println!("{}", done.current);
    Ok(())
}

async fn plugins(a: PluginsArgs) -> anyhow::Result<()> {
    let registry = open_registry(&a.q).await?;
    let versions = registry.versions().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
    } else if versions.is_empty() {
        println!("nothing deployed for queue {}", a.q.queue);
    } else {
        println!("  {:<64}  {:<24}  {:>10}", "digest (sha256)", "deployed (UTC)", "bytes");
        for v in versions.iter().rev() {
            let mark = if v.current { "*" } else { " " };
            println!("{mark} {:<64}  {:<24}  {:>10}", v.digest, iso8601(v.deployed_at), v.size);
        }
    }
    Ok(())
}

async fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let view = crate::admin::inspect_job(&a.q.target()?, &a.q.prefix, &a.q.queue, &a.job_id).await?;
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}
