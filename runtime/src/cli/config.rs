//! `bullpen worker --config bullpen.toml`: one worker process serving
//! several queues, each with its own plugin source, concurrency, limits and
//! allowed child queues. The commented reference is `docs/bullpen.toml`
//! (parsed by a test below, so it cannot drift from this code).
//!
//! Precedence for every per-queue setting, highest first: a command-line
//! flag (applies to every queue), the queue's `[[queues]]` entry, the
//! file's `[defaults]`, bullpen's built-in default (BullMQ's where BullMQ
//! has one; see `BindingConfig::new` and `Limits::default`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::conn::RedisTarget;
use crate::host::config::{parse_var, parse_var_env, VarSource, Variables};
use crate::host::http::{Outbound, OutboundConfig};
use crate::host::{ChildQueues, Grants, Report};
use crate::process::QueuePlan;
use crate::queue::BindingConfig;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerFile {
    /// Redis URL, or a list of Cluster seed nodes (default `$REDIS_URL`,
    /// else redis://127.0.0.1:6379).
    pub(crate) redis: Option<RedisUrls>,
    /// The `redis` URLs are nodes of a Redis Cluster (default false).
    pub(crate) cluster: Option<bool>,
    /// CA certificate (PEM) of the Redis server's certificate (`--redis-ca`).
    pub(crate) redis_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS (`--redis-cert`, `--redis-key`).
    pub(crate) redis_cert: Option<PathBuf>,
    pub(crate) redis_key: Option<PathBuf>,
    /// File holding the Redis password (`--redis-password-file`).
    pub(crate) redis_password_file: Option<PathBuf>,
    /// Connect timeout, ms (`--connect-timeout-ms`; default 5000).
    pub(crate) connect_timeout_ms: Option<u64>,
    /// Sentinels to ask for the master (`--sentinel`, each `host:port` or a URL).
    #[serde(default)]
    pub(crate) sentinel: Vec<String>,
    /// The master's name in the sentinels' configuration (`--sentinel-master`).
    pub(crate) sentinel_master: Option<String>,
    /// File holding the sentinels' password (`--sentinel-password-file`).
    pub(crate) sentinel_password_file: Option<PathBuf>,
    /// BullMQ key prefix for every queue (default `bull`).
    pub(crate) prefix: Option<String>,
    /// Serve Prometheus metrics here (`host:port`); off when absent.
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Export traces to this OTLP/HTTP collector (`--otlp-endpoint`); off when absent.
    pub(crate) otlp_endpoint: Option<String>,
    /// Shutdown grace period for running attempts, ms (default 10000).
    pub(crate) grace_ms: Option<u64>,
    /// Seconds between each queue's summary line (default 60; 0: never).
    pub(crate) summary_secs: Option<u64>,
    /// Threads that run attempts and Redis I/O, shared by every queue
    /// (default: one per CPU core, at most the queues' total concurrency;
    /// `--threads`).
    pub(crate) threads: Option<u16>,
    /// Settings every queue gets unless its entry says otherwise.
    #[serde(default)]
    pub(crate) defaults: Settings,
    /// The queues this process serves.
    #[serde(default)]
    pub(crate) queues: Vec<QueueEntry>,
}

/// `redis = "url"` or `redis = ["seed1", "seed2"]`.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum RedisUrls {
    One(String),
    Many(Vec<String>),
}

impl RedisUrls {
    pub(crate) fn into_urls(self) -> Vec<String> {
        match self {
            RedisUrls::One(u) => vec![u],
            RedisUrls::Many(v) => v,
        }
    }
}

/// Per-queue settings, all optional so layers can be merged. The same
/// struct is the config's `[defaults]`, each `[[queues]]` entry's settings,
/// and `bullpen worker`'s flags (each doc line is the flag's help).
#[derive(Debug, Deserialize, Default, Clone, clap::Args)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Attempts run at once (BullMQ `concurrency`) [default: 1].
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Wall-clock limit per attempt, in ms [default: 30000].
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    /// Linear memory limit per instance, in MiB [default: 128].
    #[arg(long)]
    pub(crate) max_memory_mb: Option<usize>,
    /// Fuel per attempt (roughly, wasm instructions); past it the attempt
    /// fails naming the limit. Unmetered when absent (metering costs speed).
    #[arg(long)]
    pub(crate) fuel: Option<u64>,
    /// BullMQ `lockDuration`, in ms [default: 30000].
    #[arg(long)]
    pub(crate) lock_duration_ms: Option<u64>,
    /// BullMQ `stalledInterval`, in ms [default: 30000].
    #[arg(long)]
    pub(crate) stalled_interval_ms: Option<u64>,
    /// BullMQ `maxStalledCount` [default: 1].
    #[arg(long)]
    pub(crate) max_stalled_count: Option<u32>,
    /// BullMQ `maxStartedAttempts` (unlimited when absent).
    #[arg(long)]
    pub(crate) max_started_attempts: Option<u32>,
    /// BullMQ worker `limiter.max`: at most this many jobs of the queue
    /// start per `--limiter-duration-ms`, counted in Redis for every worker
    /// of the queue (Node's included) [default: no limit].
    #[arg(long, requires = "limiter_duration_ms")]
    pub(crate) limiter_max: Option<u64>,
    /// BullMQ worker `limiter.duration`, in ms: the window of `--limiter-max`.
    #[arg(long, requires = "limiter_max")]
    pub(crate) limiter_duration_ms: Option<u64>,
    /// A queue guests may add children to (repeatable; '*' for any).
    /// Default: the worker's queue and '<queue>-children'.
    #[arg(long = "child-queue")]
    pub(crate) child_queues: Option<Vec<String>>,
    /// Attempts one instance may serve, one after another [default: 1, a
    /// fresh instance per attempt]. Above 1, an instance whose `process`
    /// returned within its limits runs the next attempt with its memory as
    /// it was left: for stateless Go/JS guests, whose runtime start costs
    /// most of an attempt. A trap, timeout, memory cap or deploy ends it.
    #[arg(long)]
    pub(crate) instance_reuse: Option<u32>,
    /// Run BullMQ's `moveToFinished` (and the log/progress writes sent ahead
    /// of it) as Redis Functions (FCALL) where the server allows it
    /// [default: true]: the same Lua, ~20 µs less Redis CPU per job; keeps a
    /// `bullpen_moveToFinished_<sha>` library on the server. `false`:
    /// EVALSHA only, as BullMQ's own workers.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub(crate) redis_functions: Option<bool>,
    /// An origin guests may call over HTTP(S) (repeatable): scheme, host and
    /// port, e.g. https://api.example.com, https://*.example.com (any
    /// subdomain), http://127.0.0.1:8080 (default ports implied; ':*' any
    /// port). Default: none, every request is refused. A host allowed by
    /// name that resolves to a loopback, link-local, private or unspecified
    /// address is refused unless a pattern names that IP. (bullpen.toml:
    /// `allowed_outbound_hosts`.)
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub(crate) allowed_outbound_hosts: Option<Vec<String>>,
    /// A PEM file of CA certificates trusted for guests' HTTPS besides the
    /// public (webpki) roots (repeatable). (bullpen.toml: `http_ca`.)
    #[arg(long = "http-ca", value_name = "FILE")]
    pub(crate) http_ca: Option<Vec<PathBuf>>,
    /// Largest HTTP response body a guest may read, in MiB [default: 16];
    /// reading past it fails the read.
    #[arg(long)]
    pub(crate) max_http_response_mb: Option<u64>,
    /// Outbound HTTP requests one attempt may have in flight [default: 16];
    /// one more fails with connection-limit-reached.
    #[arg(long)]
    pub(crate) max_http_in_flight: Option<usize>,
    /// The queue's variables (bullpen.toml `[queues.variables]` /
    /// `[defaults.variables]`): `key = "value"`, `key = { env = "NAME" }`
    /// or `key = { file = "path" }`, read at start.
    #[arg(skip)]
    pub(crate) variables: Option<BTreeMap<String, VarSource>>,
    /// A variable guests read with `variable("KEY")` (repeatable). Visible
    /// in `ps`: prefer --var-env for secrets.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    #[serde(skip)]
    pub(crate) var: Option<Vec<(String, VarSource)>>,
    /// A variable read from an environment variable at start (repeatable).
    #[arg(long = "var-env", value_name = "KEY=ENVNAME", value_parser = parse_var_env)]
    #[serde(skip)]
    pub(crate) var_env: Option<Vec<(String, VarSource)>>,
    /// Watch `plugin` and swap on change (default true; the flag is `--no-watch`).
    #[arg(skip)]
    pub(crate) watch: Option<bool>,
}

/// One `[[queues]]` entry: `name`, `plugin` and the [`Settings`] keys.
#[derive(Debug, Clone)]
pub(crate) struct QueueEntry {
    pub(crate) name: String,
    /// The component file, relative to the config file's directory. Absent:
    /// the queue runs what `bullpen deploy` made current and follows deploys.
    pub(crate) plugin: Option<PathBuf>,
    pub(crate) settings: Settings,
}

impl<'de> Deserialize<'de> for QueueEntry {
    // By hand: serde cannot flatten `Settings` into an entry and still
    // refuse unknown keys, and a typo must not fall back to a default.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut t = toml::Table::deserialize(d)?;
        let name = match t.remove("name") {
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("`name` must be a string")),
            None => return Err(D::Error::missing_field("name")),
        };
        let plugin = match t.remove("plugin") {
            Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
            Some(_) => return Err(D::Error::custom(format!("queue `{name}`: `plugin` must be a path string"))),
            None => None,
        };
        let settings = toml::Value::Table(t)
            .try_into::<Settings>()
            .map_err(|e| D::Error::custom(format!("queue `{name}`: {e}")))?;
        Ok(QueueEntry { name, plugin, settings })
    }
}

impl Settings {
    /// `self` where set, else `lower`.
    pub(crate) fn over(&self, lower: &Settings) -> Settings {
        Settings {
            concurrency: self.concurrency.or(lower.concurrency),
            timeout_ms: self.timeout_ms.or(lower.timeout_ms),
            max_memory_mb: self.max_memory_mb.or(lower.max_memory_mb),
            fuel: self.fuel.or(lower.fuel),
            lock_duration_ms: self.lock_duration_ms.or(lower.lock_duration_ms),
            stalled_interval_ms: self.stalled_interval_ms.or(lower.stalled_interval_ms),
            max_stalled_count: self.max_stalled_count.or(lower.max_stalled_count),
            max_started_attempts: self.max_started_attempts.or(lower.max_started_attempts),
            limiter_max: self.limiter_max.or(lower.limiter_max),
            limiter_duration_ms: self.limiter_duration_ms.or(lower.limiter_duration_ms),
            child_queues: self.child_queues.clone().or_else(|| lower.child_queues.clone()),
            instance_reuse: self.instance_reuse.or(lower.instance_reuse),
            redis_functions: self.redis_functions.or(lower.redis_functions),
            allowed_outbound_hosts: self
                .allowed_outbound_hosts
                .clone()
                .or_else(|| lower.allowed_outbound_hosts.clone()),
            http_ca: self.http_ca.clone().or_else(|| lower.http_ca.clone()),
            max_http_response_mb: self.max_http_response_mb.or(lower.max_http_response_mb),
            max_http_in_flight: self.max_http_in_flight.or(lower.max_http_in_flight),
            // Variables merge key by key: a queue adds to [defaults.variables]
            // and overrides the keys it names.
            variables: match (&lower.variables, &self.variables) {
                (None, None) => None,
                (l, s) => Some(l.iter().chain(s.iter()).flat_map(|m| m.clone()).collect()),
            },
            var: self.var.clone().or_else(|| lower.var.clone()),
            var_env: self.var_env.clone().or_else(|| lower.var_env.clone()),
            watch: self.watch.or(lower.watch),
        }
    }

    /// The outbound HTTP grants and variables these settings give `queue`
    /// (flags' `--var`/`--var-env` over the file's variables).
    pub(crate) fn grants(&self, queue: &str, report: Option<Report>) -> anyhow::Result<Grants> {
        let mut outbound = OutboundConfig::default();
        if let Some(a) = &self.allowed_outbound_hosts {
            outbound.allow = a.clone();
        }
        if let Some(c) = &self.http_ca {
            outbound.ca_files = c.clone();
        }
        if let Some(mb) = self.max_http_response_mb {
            outbound.max_response_bytes = mb << 20;
        }
        if let Some(n) = self.max_http_in_flight {
            if n == 0 {
                bail!("queue `{queue}`: max_http_in_flight must be at least 1");
            }
            outbound.max_in_flight = n;
        }
        let mut specs = self.variables.clone().unwrap_or_default();
        specs.extend(self.var.iter().flatten().chain(self.var_env.iter().flatten()).cloned());
        let grants = Grants {
            outbound: Outbound::new(queue, &outbound, report).with_context(|| format!("queue `{queue}`"))?,
            variables: Variables::resolve(&specs).with_context(|| format!("queue `{queue}`"))?,
        };
        Ok(grants)
    }

    /// Apply the set fields to a binding config that holds the built-in defaults.
    pub(crate) fn apply(&self, c: &mut BindingConfig) -> anyhow::Result<()> {
        if let Some(n) = self.concurrency {
            if n == 0 {
                bail!("queue `{}`: concurrency must be at least 1", c.queue);
            }
            c.concurrency = n;
        }
        if let Some(ms) = self.timeout_ms {
            c.limits.timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(mb) = self.max_memory_mb {
            c.limits.max_memory_bytes = mb << 20;
        }
        if self.fuel.is_some() {
            c.limits.fuel = self.fuel;
        }
        if let Some(v) = self.lock_duration_ms {
            c.lock_duration_ms = v;
        }
        if let Some(v) = self.stalled_interval_ms {
            c.stalled_interval_ms = v;
        }
        if let Some(v) = self.max_stalled_count {
            c.max_stalled_count = v;
        }
        if self.max_started_attempts.is_some() {
            c.max_started_attempts = self.max_started_attempts;
        }
        match (self.limiter_max, self.limiter_duration_ms) {
            (None, None) => {}
            (Some(max), Some(ms)) if max > 0 && ms > 0 => c.limiter = Some((max, ms)),
            _ => bail!(
                "queue `{}`: the rate limiter needs both limiter_max and limiter_duration_ms, each above 0",
                c.queue
            ),
        }
        if let Some(n) = self.instance_reuse {
            if n == 0 {
                bail!("queue `{}`: instance_reuse must be at least 1 (1 = a fresh instance per attempt)", c.queue);
            }
            c.instance_reuse = n;
        }
        if let Some(on) = self.redis_functions {
            c.redis_functions = on;
        }
        if let Some(qs) = &self.child_queues {
            c.child_queues = ChildQueues::from_flags(&c.queue, qs);
        }
        c.grants = std::sync::Arc::new(self.grants(&c.queue, None)?);
        Ok(())
    }
}

impl WorkerFile {
    pub(crate) fn parse(text: &str) -> anyhow::Result<WorkerFile> {
        let f: WorkerFile = toml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for q in &f.queues {
            if q.name.is_empty() {
                bail!("a [[queues]] entry has an empty name");
            }
            if !seen.insert(q.name.as_str()) {
                bail!("queue `{}` appears twice", q.name);
            }
        }
        Ok(f)
    }

    pub(crate) fn load(path: &Path) -> anyhow::Result<WorkerFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut f = Self::parse(&text).with_context(|| format!("config {} is not valid", path.display()))?;
        // Plugin, certificate, CA and variable file paths are relative to
        // the file, not to where bullpen runs.
        let dir = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        [
            &mut f.redis_ca,
            &mut f.redis_cert,
            &mut f.redis_key,
            &mut f.redis_password_file,
            &mut f.sentinel_password_file,
        ]
        .into_iter()
        .flatten()
        .for_each(rel);
        for q in &mut f.queues {
            if let Some(p) = &mut q.plugin {
                rel(p);
            }
        }
        for s in std::iter::once(&mut f.defaults).chain(f.queues.iter_mut().map(|q| &mut q.settings)) {
            s.http_ca.iter_mut().flatten().for_each(rel);
            for v in s.variables.iter_mut().flat_map(|m| m.values_mut()) {
                if let VarSource::File(p) = v {
                    rel(p);
                }
            }
        }
        Ok(f)
    }

    /// The file's connection keys, as the flags of the same name.
    pub(crate) fn conn(&self) -> super::ConnArgs {
        super::ConnArgs {
            redis_ca: self.redis_ca.clone(),
            redis_cert: self.redis_cert.clone(),
            redis_key: self.redis_key.clone(),
            redis_password_file: self.redis_password_file.clone(),
            connect_timeout_ms: self.connect_timeout_ms,
            sentinel: self.sentinel.clone(),
            sentinel_master: self.sentinel_master.clone(),
            sentinel_password_file: self.sentinel_password_file.clone(),
        }
    }

    /// The queues to serve, with `flags` (command-line settings) on top.
    /// `only`: serve just this queue of the file.
    pub(crate) fn plan(
        &self,
        redis: &RedisTarget,
        prefix: &str,
        flags: &Settings,
        only: Option<&str>,
    ) -> anyhow::Result<Vec<QueuePlan>> {
        if self.queues.is_empty() {
            bail!("the config has no [[queues]] entry: nothing to serve");
        }
        let mut plans = Vec::new();
        for q in &self.queues {
            if only.is_some_and(|o| o != q.name) {
                continue;
            }
            let s = flags.over(&q.settings.over(&self.defaults));
            let mut binding = BindingConfig::new(redis.clone(), q.name.clone());
            binding.prefix = prefix.to_string();
            s.apply(&mut binding)?;
            plans.push(QueuePlan { binding, plugin: q.plugin.clone(), watch: s.watch.unwrap_or(true) });
        }
        if let (Some(o), true) = (only, plans.is_empty()) {
            bail!(
                "queue `{o}` is not in the config (it has: {})",
                self.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        Ok(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> RedisTarget {
        RedisTarget::single("redis://r")
    }

    const REFERENCE: &str = include_str!("../../../docs/bullpen.toml");

    #[test]
    fn the_reference_file_parses_and_means_what_it_says() {
        let f = WorkerFile::parse(REFERENCE).unwrap();
        assert_eq!(f.redis, Some(RedisUrls::One("redis://127.0.0.1:6379".into())));
        assert_eq!(f.prefix.as_deref(), Some("bull"));
        assert_eq!(f.connect_timeout_ms, Some(5000));
        assert!(f.redis_ca.is_none() && f.redis_password_file.is_none(), "examples only, commented out");
        let plans = f.plan(&r(), "bull", &Settings::default(), None).unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.binding.queue.as_str()).collect();
        assert_eq!(names, ["emails", "thumbnails", "reports"]);
        let (emails, thumbs, reports) = (&plans[0], &plans[1], &plans[2]);
        assert_eq!(emails.binding.concurrency, 8);
        let grants = format!("{:?}", emails.binding.grants);
        assert!(grants.contains("https://api.sendgrid.com") && grants.contains("\"sender\""), "{grants}");
        assert!(!grants.contains("noreply@example.com"), "values are not printed: {grants}");
        assert!(!format!("{:?}", thumbs.binding.grants).contains("sendgrid"), "grants are per queue");
        assert_eq!(emails.binding.limits.timeout, std::time::Duration::from_millis(10_000), "from [defaults]");
        assert!(emails.plugin.is_some() && emails.watch);
        assert_eq!(thumbs.binding.limits.max_memory_bytes, 512 << 20);
        assert_eq!(thumbs.binding.limits.fuel, Some(5_000_000_000));
        assert!(matches!(&thumbs.binding.child_queues, ChildQueues::Only(q) if q == &["thumbnails-done"]));
        assert!(!thumbs.watch);
        assert!(reports.plugin.is_none(), "no plugin: the deploy registry");
        assert_eq!(reports.binding.concurrency, 2, "from [defaults]");
        assert_eq!(reports.binding.max_started_attempts, Some(5));
    }

    #[test]
    fn flags_beat_entries_beat_defaults() {
        let f = WorkerFile::parse(
            "[defaults]\nconcurrency = 3\ntimeout_ms = 5\n[[queues]]\nname = \"a\"\nconcurrency = 7\n[[queues]]\nname = \"b\"\n",
        )
        .unwrap();
        let p = f.plan(&r(), "bull", &Settings::default(), None).unwrap();
        assert_eq!((p[0].binding.concurrency, p[1].binding.concurrency), (7, 3));
        let flags = Settings { concurrency: Some(1), ..Settings::default() };
        let p = f.plan(&r(), "bull", &flags, Some("b")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].binding.concurrency, 1);
        assert_eq!(p[0].binding.limits.timeout.as_millis(), 5);
    }

    #[test]
    fn redis_is_a_url_or_a_list_of_cluster_seeds() {
        let f = WorkerFile::parse(
            "redis = [\"redis://a:7000\", \"redis://b:7000\"]\ncluster = true\nprefix = \"{bull}\"\n",
        )
        .unwrap();
        assert_eq!(f.redis.clone().unwrap().into_urls(), ["redis://a:7000", "redis://b:7000"]);
        assert_eq!(f.cluster, Some(true));
        let f = WorkerFile::parse("redis = \"redis://a:6379\"\n").unwrap();
        assert_eq!(f.redis.unwrap().into_urls(), ["redis://a:6379"]);
        assert!(WorkerFile::parse("redis = 5\n").is_err());
    }

    #[test]
    fn sentinel_keys_are_read_and_flags_win() {
        let f = WorkerFile::parse(
            "sentinel = [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]\nsentinel_master = \"main\"\nsentinel_password_file = \"spw\"\n",
        )
        .unwrap();
        let file = f.conn();
        assert_eq!(file.sentinel, ["10.0.0.1:26379", "10.0.0.2:26379"]);
        assert_eq!(file.sentinel_password_file.as_deref(), Some(Path::new("spw")));
        let flags = super::super::ConnArgs { sentinel: vec!["h:1".into()], ..Default::default() };
        let merged = flags.over(&file);
        assert_eq!((merged.sentinel, merged.sentinel_master.as_deref()), (vec!["h:1".to_string()], Some("main")));
        let t = super::super::ConnArgs { sentinel_master: Some("main".into()), ..Default::default() }
            .apply(RedisTarget::single("redis://r"));
        assert!(t.unwrap_err().to_string().contains("--sentinel HOST:PORT"));
    }

    #[test]
    fn connection_keys_are_read_and_flags_win() {
        let f = WorkerFile::parse(
            "redis_ca = \"ca.pem\"\nredis_cert = \"c.pem\"\nredis_key = \"c.key\"\nredis_password_file = \"pw\"\nconnect_timeout_ms = 900\n",
        )
        .unwrap();
        let file = f.conn();
        assert_eq!(file.redis_ca.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(file.connect_timeout_ms, Some(900));
        let flags = super::super::ConnArgs { connect_timeout_ms: Some(100), ..Default::default() };
        let merged = flags.over(&file);
        assert_eq!(merged.connect_timeout_ms, Some(100));
        assert_eq!(merged.redis_key.as_deref(), Some(Path::new("c.key")), "unset flags fall back to the file");
    }

    /// What `bullpen worker` sizes its runtime by (cli.rs, `WorkerSetup::threads`).
    #[test]
    fn total_concurrency_of_the_plans() {
        let total = |f: &WorkerFile, flags: &Settings, only: Option<&str>| -> usize {
            f.plan(&r(), "bull", flags, only).unwrap().iter().map(|p| p.binding.concurrency).sum()
        };
        let f = WorkerFile::parse("[defaults]\nconcurrency = 4\n[[queues]]\nname = \"a\"\n[[queues]]\nname = \"b\"\nconcurrency = 2\n[[queues]]\nname = \"c\"\n").unwrap();
        assert_eq!(total(&f, &Settings::default(), None), 4 + 2 + 4);
        assert_eq!(total(&f, &Settings::default(), Some("b")), 2);
        let flags = Settings { concurrency: Some(1), ..Settings::default() };
        assert_eq!(total(&f, &flags, None), 3, "a flag applies to every queue");
        let f = WorkerFile::parse("[[queues]]\nname = \"a\"\n").unwrap();
        assert_eq!(total(&f, &Settings::default(), None), 1, "BullMQ's default concurrency");
    }

    #[test]
    fn variables_merge_key_by_key_and_flags_win() {
        let f = WorkerFile::parse(
            "[defaults]\nallowed_outbound_hosts = [\"https://a.example\"]\n[defaults.variables]\nx = \"1\"\ny = \"2\"\n\
             [[queues]]\nname = \"a\"\n[queues.variables]\ny = \"3\"\n[[queues]]\nname = \"b\"\n\
             allowed_outbound_hosts = []\n",
        )
        .unwrap();
        let flags =
            Settings { var: Some(vec![parse_var("z=4").unwrap(), parse_var("x=5").unwrap()]), ..Settings::default() };
        let p = f.plan(&r(), "bull", &flags, None).unwrap();
        let get = |i: usize| format!("{:?}", p[i].binding.grants.variables);
        assert!(get(0).contains("[\"x\", \"y\", \"z\"]"), "{}", get(0));
        assert!(format!("{:?}", p[0].binding.grants.outbound).contains("https://a.example"));
        assert!(!format!("{:?}", p[1].binding.grants.outbound).contains("https://a.example"), "the entry wins");
        let bad = WorkerFile::parse("[[queues]]\nname = \"a\"\nallowed_outbound_hosts = [\"a.example\"]\n").unwrap();
        let e = format!("{:#}", bad.plan(&r(), "bull", &Settings::default(), None).unwrap_err());
        assert!(e.contains("queue `a`") && e.contains("not a valid pattern"), "{e}");
        let missing = WorkerFile::parse(
            "[[queues]]\nname = \"a\"\n[queues.variables]\nk = { env = \"BULLPEN_TEST_UNSET_VAR\" }\n",
        )
        .unwrap();
        let e = format!("{:#}", missing.plan(&r(), "bull", &Settings::default(), None).unwrap_err());
        assert!(e.contains("BULLPEN_TEST_UNSET_VAR") && e.contains("`k`"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let e = WorkerFile::parse("[[queues]]\nname = \"a\"\nconcurency = 2\n").unwrap_err();
        assert!(format!("{e:#}").contains("concurency"), "{e:#}");
        let e = WorkerFile::parse("[[queues]]\nname = \"a\"\n[[queues]]\nname = \"a\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("twice"), "{e:#}");
        let f = WorkerFile::parse("[[queues]]\nname = \"a\"\nconcurrency = 0\n").unwrap();
        assert!(f.plan(&r(), "bull", &Settings::default(), None).is_err());
        let f = WorkerFile::parse("[[queues]]\nname = \"a\"\ninstance_reuse = 0\n").unwrap();
        assert!(
            format!("{:#}", f.plan(&r(), "bull", &Settings::default(), None).unwrap_err()).contains("instance_reuse")
        );
        let f = WorkerFile::parse("[defaults]\ninstance_reuse = 50\n[[queues]]\nname = \"a\"\n").unwrap();
        assert_eq!(f.plan(&r(), "bull", &Settings::default(), None).unwrap()[0].binding.instance_reuse, 50);
        let f = WorkerFile::parse("[defaults]\nredis_functions = false\n[[queues]]\nname = \"a\"\n[[queues]]\nname = \"b\"\nredis_functions = true\n").unwrap();
        let plan = f.plan(&r(), "bull", &Settings::default(), None).unwrap();
        assert_eq!(
            plan.iter().map(|p| p.binding.redis_functions).collect::<Vec<_>>(),
            [false, true],
            "[defaults], then the entry"
        );
        let f = WorkerFile::parse("[[queues]]\nname = \"a\"\n").unwrap();
        assert!(f.plan(&r(), "bull", &Settings::default(), None).unwrap()[0].binding.redis_functions, "on by default");
        let f = WorkerFile::parse("").unwrap();
        assert!(
            format!("{:#}", f.plan(&r(), "bull", &Settings::default(), None).unwrap_err()).contains("no [[queues]]")
        );
        let f = WorkerFile::parse("[[queues]]\nname = \"a\"\n").unwrap();
        assert!(format!("{:#}", f.plan(&r(), "bull", &Settings::default(), Some("zz")).unwrap_err())
            .contains("not in the config"));
    }
}
