//! The `bullpen` command line. Each subcommand is a thin layer over the
//! library; the flags' defaults are BullMQ's where BullMQ has one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::conn::RedisTarget;
use crate::plugins::registry::{iso8601, Registry};
use crate::plugins::{new_linker, Plugin};
use crate::process::{QueuePlan, WorkerPlan};
use crate::queue::BindingConfig;
use crate::sandbox::engine::new_engine;
use crate::sandbox::Limits;
use config::{Settings, WorkerFile};

pub(crate) mod build;
pub(crate) mod config;
pub(crate) mod new;
pub(crate) mod run;

#[derive(Parser, Debug)]
#[command(name = "bullpen", version, about = "Run BullMQ jobs in sandboxed WebAssembly processors")]
pub struct Cli {
    /// Log format on stderr: `human` (default) or `json` (one object per
    /// line, with the attempt span's queue, job, attempt and digest).
    #[arg(long, global = true, value_enum, env = "BULLPEN_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
// Parsed once per process; boxing the worker's arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Process jobs of a BullMQ queue with a Wasm component, until SIGINT/SIGTERM.
    Worker(WorkerArgs),
    /// Add a job to a queue (as BullMQ's Queue.add does) and print its id.
    Add(AddArgs),
    /// Move a failed (or completed) job back to wait, as BullMQ's Job.retry does.
    Retry(RetryArgs),
    /// Print one job (data, state, attempts, result, logs) as JSON.
    Inspect(InspectArgs),
    /// Cancel a job wherever it is: a running attempt is stopped on the
    /// worker that runs it and the job failed (`cancelled: <reason>`); a
    /// waiting, delayed or prioritized job is removed and failed. Prints
    /// the job's resulting state. Exit status: 0 cancelled, 1 nothing to
    /// cancel (missing, completed, failed), 2 still active after --wait-ms.
    Cancel(CancelArgs),
    /// Validate a component and make it the queue's processor on every
    /// registry worker (`bullpen worker` without --plugin); prints its digest.
    Deploy(DeployArgs),
    /// Make an earlier deployed version current again (default: the one
    /// current before the current one); prints its digest.
    Rollback(RollbackArgs),
    /// List the versions deployed for a queue, with deploy times and which is current.
    Plugins(PluginsArgs),
    /// Show a queue's job counts per state, last-minute rates, and the live
    /// bullpen workers with the plugin digest each runs.
    Stats(StatsArgs),
    /// Run a processor on one job held in memory, without Redis, printing
    /// every host call and the outcome: the development loop for a plugin.
    Run(run::RunArgs),
    /// Write a ready processor project in a new folder NAME: the processor,
    /// its build file, a README and a unit test, in Rust, Go, JavaScript or Python.
    New(new::NewArgs),
    /// Build the processor project in this folder (or DIR) into a component,
    /// with its language's toolchain; prints the component's path last.
    Build(build::BuildArgs),
}

/// Ends the process with this exit status; what went wrong was printed
/// already (`bullpen run`: 1 = the job failed, 2 = could not run).
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// The tracing filter for `BULLPEN_LOG`: as given, except that a bare level
/// more verbose than `info` (`debug`, `trace`) applies to bullpen only;
/// for every crate it would print wasmtime's compiler's tens of thousands of
/// lines. `info,cranelift=debug` still asks for anything explicitly.
pub fn log_filter(spec: &str) -> String {
    spec.split(',')
        .map(|d| match d.trim() {
            "debug" | "trace" | "DEBUG" | "TRACE" => format!("info,bullpen={}", d.trim().to_lowercase()),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `e` and its causes on one line, each said once: a cause whose text is
/// already in the line is skipped (redis's errors, for one, print their I/O
/// source and also return it as their `source()`).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The per-attempt limits, the same for `worker` and `run`.
#[derive(Args, Debug, Clone)]
pub(crate) struct LimitArgs {
    /// Wall-clock limit per attempt, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub(crate) timeout_ms: u64,
    /// Linear memory limit per instance, in MiB.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_memory_mb: usize,
    /// Fuel per attempt (roughly, wasm instructions); past it the attempt
    /// fails naming the limit. Unmetered when absent (metering costs speed).
    #[arg(long)]
    pub(crate) fuel: Option<u64>,
}

impl LimitArgs {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            max_memory_bytes: self.max_memory_mb << 20,
            fuel: self.fuel,
            ..Limits::default()
        }
    }
}

/// How to reach Redis besides its URL: TLS files, a password kept out of
/// the URL, the connect timeout. The same flags for every command; for
/// `bullpen worker` they override the config file's keys of the same name.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ConnArgs {
    /// CA certificate (PEM) that signed the Redis server's certificate, for
    /// a private CA (default: the webpki roots). Implies TLS: a redis:// URL
    /// is used as rediss://.
    #[arg(long, value_name = "FILE")]
    pub(crate) redis_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --redis-key.
    #[arg(long, value_name = "FILE", requires = "redis_key")]
    pub(crate) redis_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-cert.
    #[arg(long, value_name = "FILE", requires = "redis_cert")]
    pub(crate) redis_key: Option<PathBuf>,
    /// File whose content (one trailing newline dropped) is the Redis
    /// password, used where the URL has none; else $REDIS_PASSWORD. The
    /// user, if any, goes in the URL (redis://USER@host).
    #[arg(long, value_name = "FILE")]
    pub(crate) redis_password_file: Option<PathBuf>,
    /// How long to wait for Redis to connect and answer, in ms; a command
    /// that cannot reach Redis fails within it [default: 5000].
    #[arg(long, value_name = "MS")]
    pub(crate) connect_timeout_ms: Option<u64>,
    /// A Sentinel to ask for the master (repeatable; HOST:PORT, or
    /// redis[s]://[USER:PASSWORD@]HOST:PORT when the sentinels need their
    /// own TLS or password). With it, --redis gives only the master's
    /// scheme, user, password and database; its host and port are ignored.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) sentinel: Vec<String>,
    /// The master's name in the sentinels' configuration (with --sentinel).
    #[arg(long, value_name = "NAME")]
    pub(crate) sentinel_master: Option<String>,
    /// File whose content (one trailing newline dropped) is the sentinels'
    /// password, for --sentinel addresses without one (the master's is
    /// --redis-password-file's).
    #[arg(long, value_name = "FILE")]
    pub(crate) sentinel_password_file: Option<PathBuf>,
}

impl ConnArgs {
    /// `self` where set, else `lower`.
    fn over(&self, lower: &ConnArgs) -> ConnArgs {
        let (redis_cert, redis_key) = match (&self.redis_cert, &self.redis_key) {
            (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
            _ => (lower.redis_cert.clone(), lower.redis_key.clone()),
        };
        ConnArgs {
            redis_ca: self.redis_ca.clone().or_else(|| lower.redis_ca.clone()),
            redis_cert,
            redis_key,
            redis_password_file: self.redis_password_file.clone().or_else(|| lower.redis_password_file.clone()),
            connect_timeout_ms: self.connect_timeout_ms.or(lower.connect_timeout_ms),
            sentinel: if self.sentinel.is_empty() { lower.sentinel.clone() } else { self.sentinel.clone() },
            sentinel_master: self.sentinel_master.clone().or_else(|| lower.sentinel_master.clone()),
            sentinel_password_file: self
                .sentinel_password_file
                .clone()
                .or_else(|| lower.sentinel_password_file.clone()),
        }
    }

    /// The target with these settings: the files read now, so a missing
    /// one is reported before anything connects.
    fn apply(&self, mut t: RedisTarget) -> anyhow::Result<RedisTarget> {
        let read =
            |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()));
        // Before the TLS files: they apply to the sentinels too.
        match (self.sentinel.is_empty(), &self.sentinel_master) {
            (true, None) => {}
            (true, Some(_)) => bail!("--sentinel-master needs at least one --sentinel HOST:PORT"),
            (false, master) => {
                let password = self
                    .sentinel_password_file
                    .as_ref()
                    .map(|p| password_file("--sentinel-password-file", p))
                    .transpose()?;
                let s = crate::conn::Sentinels::new(
                    &self.sentinel,
                    master.as_deref().unwrap_or_default(),
                    password.as_deref(),
                )?;
                t = t.with_sentinels(s)?;
            }
        }
        let ca = self.redis_ca.as_ref().map(|p| read("--redis-ca", p)).transpose()?;
        let client = match (&self.redis_cert, &self.redis_key) {
            (Some(c), Some(k)) => Some((read("--redis-cert", c)?, read("--redis-key", k)?)),
            (None, None) => None,
            _ => bail!("--redis-cert and --redis-key go together (mutual TLS needs both)"),
        };
        t = t.with_tls(crate::conn::TlsFiles { ca, client });
        let password = match &self.redis_password_file {
            Some(p) => Some(password_file("--redis-password-file", p)?),
            None => std::env::var("REDIS_PASSWORD").ok().filter(|p| !p.is_empty()),
        };
        if let Some(p) = password {
            t = t.with_password(&p);
        }
        if let Some(ms) = self.connect_timeout_ms {
            if ms == 0 {
                bail!("--connect-timeout-ms must be at least 1");
            }
            t = t.with_connect_timeout(Duration::from_millis(ms));
        }
        Ok(t)
    }
}

/// A password file's content, one trailing newline dropped.
fn password_file(flag: &str, p: &PathBuf) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {flag} {}", p.display()))?;
    let pass = text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text);
    if pass.is_empty() {
        bail!("{flag} {} is empty", p.display());
    }
    Ok(pass.to_string())
}

/// Where the queue lives.
#[derive(Args, Debug, Clone)]
pub(crate) struct QueueArgs {
    /// Redis URL; with --cluster, a seed node of the Cluster (repeatable:
    /// the first reachable one is used to discover the rest).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS)]
    pub(crate) redis: Vec<String>,
    /// The --redis URLs are nodes of a Redis Cluster (needs a hash-tagged --prefix).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Queue name.
    #[arg(long)]
    pub(crate) queue: String,
    /// BullMQ key prefix (with --cluster it must have a hash tag, such as '{bull}').
    #[arg(long, default_value = "bull")]
    pub(crate) prefix: String,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

impl QueueArgs {
    /// The Redis target, checked (see [`RedisTarget::from_args`]).
    pub(crate) fn target(&self) -> anyhow::Result<RedisTarget> {
        self.conn.apply(RedisTarget::from_args(self.redis.clone(), self.cluster, &self.prefix)?)
    }
}

/// `bullpen worker`. Per-queue settings are `Option`s so a config file can
/// supply them; defaults are applied in `config::Settings::apply`.
#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Redis URL; with --cluster, a seed node (repeatable). Default: the
    /// config's `redis`, else $REDIS_URL, else redis://127.0.0.1:6379.
    #[arg(long)]
    pub(crate) redis: Vec<String>,
    /// The --redis URLs are nodes of a Redis Cluster (needs a hash-tagged --prefix).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Queue name. With --config: serve only this queue of the file.
    #[arg(long, required_unless_present = "config")]
    pub(crate) queue: Option<String>,
    /// BullMQ key prefix (default `bull`; use a hash tag such as '{bull}'
    /// with Redis Cluster).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Serve the queues of this file (see docs/bullpen.toml); the flags
    /// below override its settings for every queue.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The processor: a WebAssembly component of the bullpen:processor
    /// world. The file is watched: when it changes to another valid
    /// component the worker switches to it (a broken file is refused and
    /// the loaded version keeps running). Without --plugin the worker runs
    /// what `bullpen deploy` made current for the queue and follows deploys
    /// and rollbacks.
    #[arg(long)]
    pub(crate) plugin: Option<PathBuf>,
    /// Load plugin files once, do not watch them.
    #[arg(long)]
    pub(crate) no_watch: bool,
    #[command(flatten)]
    pub(crate) settings: Settings,
    /// On SIGTERM, how long running attempts may finish before they are
    /// interrupted and their jobs handed back to wait, in ms [default: 10000].
    #[arg(long)]
    pub(crate) grace_ms: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464;
    /// port 0 picks a free port, logged at start). Off when absent.
    #[arg(long)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Export OpenTelemetry traces over OTLP/HTTP (protobuf) to this
    /// collector, e.g. http://127.0.0.1:4318 (`/v1/traces` is added): a span
    /// per attempt continuing the producer's trace (README "Tracing"). Off
    /// when absent; else $OTEL_EXPORTER_OTLP_ENDPOINT, if set, turns it on.
    #[arg(long, value_name = "URL")]
    pub(crate) otlp_endpoint: Option<String>,
    /// Log one line per queue every N seconds saying how many attempts
    /// completed, failed, were retried or moved (nothing when idle); 0: never
    /// [default: 60].
    #[arg(long)]
    pub(crate) summary_secs: Option<u64>,
    /// BullMQ worker `name`: recorded on every job this worker takes
    /// (Node's `job.processedBy`), so a fleet's work can be told apart.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Threads that run attempts and their Redis I/O [default: one per CPU
    /// core, at most the queues' total concurrency]. Each is a BullMQ worker
    /// of its own with a share of each queue's concurrency (100 on 2 threads:
    /// 50 each). Fewer threads than attempts at once cap how many guests
    /// compute in parallel; fewer than cores leave the rest to other
    /// processes (a redis-server on the same machine).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,
}

impl WorkerArgs {
    /// The per-queue settings given on the command line.
    fn settings(&self) -> Settings {
        Settings { watch: self.no_watch.then_some(false), ..self.settings.clone() }
    }
}

#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Job name.
    #[arg(required_unless_present = "file")]
    pub(crate) name: Option<String>,
    /// Job data, as JSON.
    #[arg(required_unless_present = "file")]
    pub(crate) data: Option<String>,
    /// BullMQ job options, as JSON (e.g. '{"attempts":3,"jobId":"a1"}').
    /// With --file: the default for lines without their own `opts`.
    #[arg(long)]
    pub(crate) opts: Option<String>,
    /// Add many jobs: a file with one JSON object per line,
    /// `{"name": ..., "data": ..., "opts": {...}}` (`opts` optional; `-` = stdin).
    /// Every line is checked before anything is added; prints the ids.
    #[arg(long, conflicts_with_all = ["name", "data"])]
    pub(crate) file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct RetryArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Job id.
    pub(crate) job_id: String,
    /// The state the job is retried from.
    #[arg(long, value_enum, default_value_t = crate::ops::admin::FinishedState::Failed)]
    pub(crate) state: crate::ops::admin::FinishedState,
    /// Reset attemptsMade to 0 (BullMQ `resetAttemptsMade`): the job gets its
    /// full `attempts` again.
    #[arg(long)]
    pub(crate) reset_attempts_made: bool,
    /// Reset attemptsStarted to 0 (BullMQ `resetAttemptsStarted`).
    #[arg(long)]
    pub(crate) reset_attempts_started: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CancelArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Job id.
    pub(crate) job_id: String,
    /// Said in the job's failedReason: `cancelled: <reason>`.
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// A running attempt fails as a normal failed attempt, so the job's
    /// `attempts` and `backoff` apply (default: an unrecoverable failure).
    #[arg(long)]
    pub(crate) retry: bool,
    /// How long to wait for a running job to leave `active`.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) wait_ms: u64,
    /// Print the result as JSON instead of the state alone.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Job id.
    pub(crate) job_id: String,
}

#[derive(Args, Debug)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// The component to deploy (validated first: a refused component changes nothing).
    pub(crate) file: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// The version to make current: a digest or a unique prefix of one
    /// (see `bullpen plugins`). Default: the version current before the
    /// current one (repeat to go further back).
    #[arg(long)]
    pub(crate) to: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct PluginsArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Print JSON (`[{"digest","deployedAt","size","current"}]`) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    pub(crate) q: QueueArgs,
    /// Refresh until interrupted (in place on a terminal).
    #[arg(long)]
    pub(crate) watch: bool,
    /// With --watch: refresh interval, in ms.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) interval_ms: u64,
    /// Print JSON instead of text (with --watch: one object per line).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Run one command. `bullpen worker` is a process of its own
/// (`crate::process`: its shards and main thread); the other commands do
/// little work and get tokio's default runtime (one thread per core).
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(a) => {
            crate::process::catch_early_signals();
            crate::process::run(worker_plan(a)?)
        }
        // Local file work and toolchains: no Redis, no runtime.
        Command::New(a) => new::new(a),
        Command::Build(a) => build::build(a),
        command => {
            crate::conn::one_shot();
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(one_shot(command))
        }
    }
}

/// A command that uses Redis first checks, within the connect timeout,
/// that Redis is there and usable, so a wrong URL, password or certificate
/// fails fast in one line; a Redis failure later in the command is told in
/// the same words.
async fn one_shot(command: Command) -> anyhow::Result<()> {
    let q = match &command {
        Command::Worker(_) | Command::New(_) | Command::Build(_) => unreachable!("handled in main"),
        Command::Run(_) => None,
        Command::Add(a) => Some(&a.q),
        Command::Retry(a) => Some(&a.q),
        Command::Inspect(a) => Some(&a.q),
        Command::Cancel(a) => Some(&a.q),
        Command::Deploy(a) => Some(&a.q),
        Command::Rollback(a) => Some(&a.q),
        Command::Plugins(a) => Some(&a.q),
        Command::Stats(a) => Some(&a.q),
    };
    let Some(target) = q.map(QueueArgs::target).transpose()? else {
        let Command::Run(a) = command else { unreachable!("only `run` has no queue") };
        return run::run(a).await;
    };
    target.ready().await?;
    let t = target.clone();
    let done = match command {
        Command::Worker(_) | Command::New(_) | Command::Build(_) | Command::Run(_) => unreachable!("handled above"),
        Command::Add(a) => add(a, t).await,
        Command::Retry(a) => retry(a, t).await,
        Command::Inspect(a) => inspect(a, t).await,
        Command::Cancel(a) => cancel(a, t).await,
        Command::Deploy(a) => deploy(a, t).await,
        Command::Rollback(a) => rollback(a, t).await,
        Command::Plugins(a) => plugins(a, t).await,
        Command::Stats(a) => stats(a, t).await,
    };
    done.map_err(|e| match target.explain(&e) {
        Some(cause) => cause.into(),
        None => e,
    })
}

/// The default Redis when neither a flag, the config nor $REDIS_URL says.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// What `bullpen worker` serves, from its flags over its config file.
fn worker_plan(a: WorkerArgs) -> anyhow::Result<WorkerPlan> {
    let file = a.config.as_deref().map(WorkerFile::load).transpose()?;
    let file = file.as_ref();
    let prefix = a.prefix.clone().or_else(|| file.and_then(|f| f.prefix.clone())).unwrap_or_else(|| "bull".into());
    let urls = if !a.redis.is_empty() {
        a.redis.clone()
    } else if let Some(r) = file.and_then(|f| f.redis.clone()) {
        r.into_urls()
    } else {
        vec![std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS.into())]
    };
    let cluster = a.cluster || file.and_then(|f| f.cluster).unwrap_or(false);
    let conn = a.conn.over(&file.map(WorkerFile::conn).unwrap_or_default());
    let redis = conn.apply(RedisTarget::from_args(urls, cluster, &prefix)?)?;
    let flags = a.settings();
    let mut queues = match file {
        Some(f) => f.plan(&redis, &prefix, &flags, a.queue.as_deref())?,
        None => {
            let mut binding = BindingConfig::new(redis.clone(), a.queue.clone().unwrap_or_default());
            binding.prefix = prefix.clone();
            flags.apply(&mut binding)?;
            vec![QueuePlan { binding, plugin: None, watch: flags.watch.unwrap_or(true) }]
        }
    };
    if let Some(p) = &a.plugin {
        if queues.len() != 1 {
            bail!("--plugin applies to one queue: add --queue to pick one of the config's queues");
        }
        queues[0].plugin = Some(p.clone());
    }
    for q in &mut queues {
        q.binding.name = a.name.clone();
    }
    let threads = match a.threads.or_else(|| file.and_then(|f| f.threads)) {
        Some(0) => bail!("threads must be at least 1"),
        n => n.map(usize::from),
    };
    Ok(WorkerPlan {
        queues,
        threads,
        grace: Duration::from_millis(a.grace_ms.or_else(|| file.and_then(|f| f.grace_ms)).unwrap_or(10_000)),
        metrics_addr: a.metrics_addr.or_else(|| file.and_then(|f| f.metrics_addr)),
        otlp_endpoint: a
            .otlp_endpoint
            .clone()
            .or_else(|| file.and_then(|f| f.otlp_endpoint.clone()))
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.is_empty()),
        summary: match a.summary_secs.or_else(|| file.and_then(|f| f.summary_secs)).unwrap_or(60) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
    })
}

/// A JSON argument by bullpen's rule (`json::check`), its error naming it.
fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).map_err(|e| match crate::json::JsonProblem::from(e) {
        crate::json::JsonProblem::Invalid(e) => {
            anyhow::Error::new(e).context(format!("{what} is not valid JSON: {text:?}"))
        }
        too_deep => anyhow::anyhow!("{what} {too_deep}"),
    })
}

async fn add(a: AddArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let opts: bullmq::JobOptions = match &a.opts {
        Some(o) => serde_json::from_str(o).with_context(|| format!("--opts is not valid BullMQ job options: {o:?}"))?,
        None => bullmq::JobOptions::default(),
    };
    if let Some(file) = &a.file {
        return crate::ops::bulk::add_file(&redis, &a.q.prefix, &a.q.queue, file, &opts).await;
    }
    let (name, data) = (a.name.unwrap_or_default(), a.data.unwrap_or_default());
    let data: serde_json::Value = parse_json("job data", &data)?;
    let qopts =
        bullmq::QueueOptions { connection: redis.bullmq_options(), prefix: a.q.prefix.clone(), ..Default::default() };
    let queue = bullmq::Queue::with_options(&a.q.queue, qopts)
        .await
        .with_context(|| format!("cannot open queue `{}` on {redis}", a.q.queue))?;
    let job = queue.add(&name, data).options(opts).await.context("adding the job failed")?;
    println!("{}", job.id());
    Ok(())
}

async fn retry(a: RetryArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let opts = crate::ops::admin::RetryOptions {
        reset_attempts_made: a.reset_attempts_made,
        reset_attempts_started: a.reset_attempts_started,
    };
    crate::ops::admin::retry_job(&redis, &a.q.prefix, &a.q.queue, &a.job_id, a.state, opts).await?;
    info!(job = %a.job_id, queue = %a.q.queue, from = %a.state, "job moved back to wait");
    Ok(())
}

async fn cancel(a: CancelArgs, redis: RedisTarget) -> anyhow::Result<()> {
    use crate::ops::admin::{cancel_job, CancelOptions, Cancelled};
    let opts = CancelOptions { reason: a.reason.clone(), retry: a.retry, wait: Duration::from_millis(a.wait_ms) };
    let done = cancel_job(&redis, &a.q.prefix, &a.q.queue, &a.job_id, opts).await?;
    let (state, status) = match &done {
        Cancelled::Removed { from, failed_reason } => {
            info!(job = %a.job_id, queue = %a.q.queue, from = %from, failed_reason = %failed_reason, "job was not running: removed and failed");
            ("failed", 0)
        }
        Cancelled::Stopped { state, failed_reason, waited_ms } if state == "completed" => {
            tracing::warn!(job = %a.job_id, queue = %a.q.queue, waited_ms, failed_reason = failed_reason.as_deref().unwrap_or(""), "the job completed before its worker acted on the cancel");
            (state.as_str(), 1)
        }
        Cancelled::Stopped { state, failed_reason, waited_ms } => {
            info!(job = %a.job_id, queue = %a.q.queue, state = %state, waited_ms, failed_reason = failed_reason.as_deref().unwrap_or(""), "attempt stopped");
            (state.as_str(), 0)
        }
        Cancelled::StillActive { waited_ms } => {
            tracing::warn!(job = %a.job_id, queue = %a.q.queue, waited_ms, "still active: the request stays pending; its worker acts on it at its next check (every {}s), or the job's next attempt if that worker is gone", crate::queue::cancel::CHECK.as_secs());
            ("active", 2)
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!("{state}");
    }
    match status {
        0 => Ok(()),
        code => Err(ExitStatus(code).into()),
    }
}

/// Validate (as a worker would load it), store, make current, notify.
async fn deploy(a: DeployArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("refusing to deploy: cannot read {}", a.file.display()))?;
    let engine = new_engine()?;
    let linker = new_linker(&engine)?;
    let source = a.file.display().to_string();
    let checked = bytes.clone();
    let plugin = tokio::task::spawn_blocking(move || Plugin::from_bytes(&engine, &linker, &checked, &source))
        .await?
        .map_err(|e| anyhow::anyhow!("refusing to deploy: {e}; nothing was changed"))?;
    let registry = open_registry(&a.q, &redis).await?;
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

async fn open_registry(q: &QueueArgs, redis: &RedisTarget) -> anyhow::Result<Registry> {
    Registry::connect(redis, &q.prefix, &q.queue)
        .await
        .with_context(|| format!("cannot reach the plugin registry of queue `{}` on {redis}", q.queue))
}

async fn rollback(a: RollbackArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let registry = open_registry(&a.q, &redis).await?;
    let done = registry.rollback(a.to.as_deref()).await?;
    if done.previous.as_deref() == Some(done.current.as_str()) {
        info!(queue = %a.q.queue, digest = %done.current, "already current; nothing changed");
    } else {
        info!(queue = %a.q.queue, digest = %done.current, previous = done.previous.as_deref().unwrap_or("none"), notified = done.notified, "rolled back");
    }
    println!("{}", done.current);
    Ok(())
}

async fn plugins(a: PluginsArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let registry = open_registry(&a.q, &redis).await?;
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

async fn inspect(a: InspectArgs, redis: RedisTarget) -> anyhow::Result<()> {
    let view = crate::ops::admin::inspect_job(&redis, &a.q.prefix, &a.q.queue, &a.job_id).await?;
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}

async fn stats(a: StatsArgs, target: RedisTarget) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let mut conn = target.connect().await.with_context(|| format!("cannot connect to {target}"))?;
    let in_place = a.watch && !a.json && std::io::stdout().is_terminal();
    loop {
        let s = crate::ops::stats::queue_stats(&mut conn, &a.q.prefix, &a.q.queue)
            .await
            .with_context(|| format!("cannot read queue `{}` on {target}", a.q.queue))?;
        let text = if a.json { serde_json::to_string(&s)? + "\n" } else { crate::ops::stats::render(&s) };
        let mut out = std::io::stdout().lock();
        if in_place {
            // Home + clear: redraw in place.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if a.watch && !a.json {
            writeln!(out)?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !a.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(a.interval_ms.max(100))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn a_bare_verbose_level_is_bullpen_only() {
        use super::log_filter;
        assert_eq!(log_filter("debug"), "info,bullpen=debug");
        assert_eq!(log_filter("warn"), "warn");
        assert_eq!(log_filter("info,bullpen::queue::trigger=debug"), "info,bullpen::queue::trigger=debug");
        assert_eq!(log_filter("trace,cranelift=warn"), "info,bullpen=trace,cranelift=warn");
    }

    #[test]
    fn an_error_line_states_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let redis = redis::RedisError::from(io);
        let e = anyhow::Error::new(redis).context("cannot connect to redis://127.0.0.1:1");
        let line = error_line(&e);
        assert_eq!(line.matches("Connection refused (os error 111)").count(), 1, "{line}");
        assert!(line.starts_with("cannot connect to redis://127.0.0.1:1: "), "{line}");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&plain), "outer: inner");
    }
}
