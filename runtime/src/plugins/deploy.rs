//! Hot swap: where a worker's plugin versions come from, and how a new one
//! replaces the old without a restart.
//!
//! Two sources:
//! - a file (`bullpen worker --plugin f.wasm`), polled every
//!   [`FILE_POLL`]; a change is taken once the file has been stable for one
//!   poll (debounce), so a half-written file is not loaded;
//! - the queue's Redis registry (`bullpen worker` without `--plugin`; see
//!   [`super::registry`]), followed through its pub/sub channel, with a check
//!   every [`REGISTRY_CHECK`] that catches a missed notification.
//!
//! A new version is compiled and pre-linked on a blocking thread
//! ([`Loader::load`]), never on the attempt path; only then is it swapped into
//! the binding's [`PluginSlot`] (one pointer swap). Attempts already running
//! keep the `Arc<Plugin>` they started with. A version that fails to load is
//! refused with an error in the log and the old one keeps running.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use wasmtime::component::Linker;
use wasmtime::Engine;

use super::plugin::{self, Plugin};
use super::registry::{self, Notice, PluginSlot, Registry, RegistryError};
use crate::conn::RedisTarget;
use crate::error::PluginError;
use crate::host::HostState;

/// How often a watched plugin file is looked at.
pub(crate) const FILE_POLL: Duration = Duration::from_millis(250);
/// How often a registry worker re-reads the current version, in case a
/// notification was missed (subscription down, worker busy reconnecting).
pub(crate) const REGISTRY_CHECK: Duration = Duration::from_secs(5);
/// How often a registry worker with nothing to run says why it waits.
pub(crate) const WAITING_LOG: Duration = Duration::from_secs(10);
/// Compiled versions kept in memory, so a rollback to a recent version
/// swaps without compiling again.
const KEEP_LOADED: usize = 8;

/// Compiles versions off the hot path and remembers the last few by digest.
pub(crate) struct Loader {
    engine: Engine,
    linker: Linker<HostState>,
    loaded: Mutex<VecDeque<Arc<Plugin>>>,
}

impl Loader {
    pub(crate) fn new(engine: Engine, linker: Linker<HostState>) -> Arc<Loader> {
        Arc::new(Loader { engine, linker, loaded: Mutex::new(VecDeque::new()) })
    }

    fn remembered(&self, digest: &str) -> Option<Arc<Plugin>> {
        self.loaded.lock().unwrap().iter().find(|p| *p.digest == *digest).cloned()
    }

    /// Validate, compile and pre-link `bytes` on a blocking thread (the
    /// runtime's threads keep running attempts meanwhile). A digest loaded
    /// before is returned at once.
    pub(crate) async fn load(&self, bytes: Vec<u8>, source: String) -> Result<Arc<Plugin>, PluginError> {
        let (engine, linker) = (self.engine.clone(), self.linker.clone());
        let remembered: Vec<Arc<Plugin>> = self.loaded.lock().unwrap().iter().cloned().collect();
        let plugin = tokio::task::spawn_blocking(move || {
            let digest = plugin::digest(&bytes);
            if let Some(p) = remembered.into_iter().find(|p| *p.digest == *digest) {
                return Ok(p);
            }
            Plugin::from_bytes(&engine, &linker, &bytes, &source)
        })
        .await
        .map_err(|e| PluginError::Compile {
            what: "plugin".into(),
            reason: format!("the loading task failed: {e}"),
        })??;
        let mut loaded = self.loaded.lock().unwrap();
        if !loaded.iter().any(|p| p.digest == plugin.digest) {
            loaded.push_back(plugin.clone());
            while loaded.len() > KEEP_LOADED {
                loaded.pop_front();
            }
        }
        Ok(plugin)
    }

    /// Load the component file at `path`.
    pub(crate) async fn load_file(&self, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        let bytes =
            tokio::fs::read(path).await.map_err(|cause| PluginError::Read { path: path.to_path_buf(), cause })?;
        self.load(bytes, path.display().to_string()).await
    }
}

/// Swap `plugin` in and log it (the line tests and operators look for):
/// `latency_ms` is the time since the version was published (registry; a
/// file swap has none, and the field is left out), `took_ms` the time this worker spent fetching and loading
/// it, `load_ms` the compile/pre-link time when it was first loaded.
fn switch(slot: &PluginSlot, plugin: Arc<Plugin>, trigger: &str, latency_ms: Option<u64>, took_ms: u64) {
    let previous = slot.swap(plugin.clone());
    if previous.digest == plugin.digest {
        return;
    }
    info!(
        digest = %plugin.digest,
        previous = %previous.digest,
        trigger,
        latency_ms,
        took_ms,
        load_ms = format!("{:.1}", plugin.load_ms),
        from_cache = plugin.from_cache,
        switched_at = crate::now_ms(),
        "plugin switched"
    );
}

// ---------------------------------------------------------------- file --

/// What identifies a version of the file cheaply.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watch `path` and swap the slot's plugin when the file changes to a
/// different valid component. A file that is missing, unreadable or not a
/// valid component is refused (logged once per content) and the current
/// version keeps running.
pub(crate) fn watch_file(loader: Arc<Loader>, path: PathBuf, slot: Arc<PluginSlot>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = stamp(&path);
        let mut changed = false;
        let mut refused: Option<String> = None;
        let mut missing_logged = false;
        loop {
            tokio::time::sleep(FILE_POLL).await;
            let now = stamp(&path);
            if now != seen {
                // Changed since the last look: wait until it stays the same
                // for one poll, so a file being written is not read half-way.
                seen = now;
                changed = true;
                continue;
            }
            if !changed {
                continue;
            }
            changed = false;
            if now.is_none() {
                if !missing_logged {
                    warn!(path = %path.display(), digest = %slot.current().digest, "plugin file is gone; keeping the loaded version");
                    missing_logged = true;
                }
                continue;
            }
            missing_logged = false;
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    error!(path = %path.display(), error = %e, "cannot read the changed plugin file; keeping the loaded version");
                    continue;
                }
            };
            let digest = plugin::digest(&bytes);
            if *digest == *slot.current().digest || refused.as_deref() == Some(&digest) {
                continue;
            }
            let started = Instant::now();
            match loader.load(bytes, path.display().to_string()).await {
                Ok(p) => {
                    refused = None;
                    switch(&slot, p, "file change", None, started.elapsed().as_millis() as u64);
                }
                Err(e) => {
                    error!(
                        path = %path.display(),
                        refused_digest = %digest,
                        keeping = %slot.current().digest,
                        "plugin refused: {e}; the loaded version keeps running"
                    );
                    refused = Some(digest);
                }
            }
        }
    })
}

// ------------------------------------------------------------ registry --

/// Follows the queue's registry: the current version at start, then every
/// deploy and rollback.
pub(crate) struct RegistryFollower {
    loader: Arc<Loader>,
    registry: Registry,
    redis: RedisTarget,
    pubsub: Option<redis::aio::PubSub>,
    /// Digests that failed to load here (logged once; retried only when
    /// the registry moves on to another version and back).
    refused: HashSet<String>,
    /// Deploy times seen in notices, for the latency in "plugin switched".
    notices: HashMap<String, u64>,
}

enum Trigger {
    Notice(Option<Notice>),
    Periodic,
}

impl RegistryFollower {
    /// Connect to the registry and subscribe to its channel (subscribing
    /// before the first read, so no deploy falls between the two).
    pub(crate) async fn connect(
        loader: Arc<Loader>,
        redis: &RedisTarget,
        prefix: &str,
        queue: &str,
    ) -> Result<Self, RegistryError> {
        let registry = Registry::connect(redis, prefix, queue).await?;
        let pubsub = Some(registry::subscribe(redis, &registry.keys).await?);
        Ok(RegistryFollower {
            loader,
            registry,
            redis: redis.clone(),
            pubsub,
            refused: HashSet::new(),
            notices: HashMap::new(),
        })
    }

    /// Wait until a version is deployed and loads; return it. Logs why it
    /// waits every [`WAITING_LOG`].
    pub(crate) async fn first(&mut self) -> Arc<Plugin> {
        let mut last_log: Option<Instant> = None;
        loop {
            let why = match self.registry.current().await {
                Ok(Some(digest)) => match self.fetch(&digest).await {
                    Ok(p) => {
                        info!(digest = %p.digest, queue = %self.registry.queue, load_ms = format!("{:.1}", p.load_ms), from_cache = p.from_cache, "deployed plugin loaded");
                        return p;
                    }
                    Err(e) => format!("the current version {digest} cannot be loaded: {e}"),
                },
                Ok(None) => format!(
                    "no processor deployed for queue `{}` yet (no key {}); waiting for `bullpen deploy --queue {}`",
                    self.registry.queue,
                    self.registry.keys.current(),
                    self.registry.queue
                ),
                Err(e) => format!("cannot read the plugin registry: {e}"),
            };
            if last_log.is_none_or(|t| t.elapsed() >= WAITING_LOG) {
                warn!("{why}");
                last_log = Some(Instant::now());
            }
            // A notice wakes us at once; otherwise look again in a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.next_trigger()).await;
        }
    }

    /// Follow deploys and rollbacks for as long as the binding runs.
    pub(crate) fn spawn(mut self, slot: Arc<PluginSlot>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REGISTRY_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trigger = tokio::select! {
                    t = self.next_trigger() => t,
                    _ = tick.tick() => Trigger::Periodic,
                };
                if matches!(trigger, Trigger::Periodic) && self.pubsub.is_none() {
                    self.resubscribe().await;
                }
                self.sync(&slot, trigger).await;
            }
        })
    }

    /// The next notice, or `Trigger::Notice(None)` once when the
    /// subscription ends (the periodic check resubscribes).
    async fn next_trigger(&mut self) -> Trigger {
        let Some(ps) = self.pubsub.as_mut() else {
            return std::future::pending().await;
        };
        let msg = ps.on_message().next().await;
        match msg {
            Some(msg) => {
                let notice = serde_json::from_slice::<Notice>(msg.get_payload_bytes()).ok();
                if let Some(n) = &notice {
                    self.notices.insert(n.digest.clone(), n.at);
                }
                Trigger::Notice(notice)
            }
            None => {
                warn!(channel = %self.registry.keys.channel(), "deploy notifications lost (connection closed); checking every {}s and resubscribing", REGISTRY_CHECK.as_secs());
                self.pubsub = None;
                Trigger::Notice(None)
            }
        }
    }

    async fn resubscribe(&mut self) {
        match registry::subscribe(&self.redis, &self.registry.keys).await {
            Ok(ps) => {
                info!(channel = %self.registry.keys.channel(), "resubscribed to deploy notifications");
                self.pubsub = Some(ps);
            }
            Err(e) => warn!(error = %e, "cannot resubscribe to deploy notifications yet"),
        }
    }

    /// Make the slot run the registry's current version.
    async fn sync(&mut self, slot: &PluginSlot, trigger: Trigger) {
        let current = match self.registry.current().await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot read the current plugin version; keeping {}", slot.current().digest);
                return;
            }
        };
        if *current == *slot.current().digest || self.refused.contains(&current) {
            return;
        }
        let trigger = match trigger {
            Trigger::Notice(Some(_)) => "deploy notification",
            Trigger::Notice(None) => "reconnect",
            Trigger::Periodic => "periodic check",
        };
        let started = Instant::now();
        match self.fetch(&current).await {
            Ok(p) => {
                let latency = self.notices.get(&current).map(|at| crate::now_ms().saturating_sub(*at));
                self.refused.clear();
                switch(slot, p, trigger, latency, started.elapsed().as_millis() as u64);
            }
            Err(e) => {
                error!(digest = %current, keeping = %slot.current().digest, "deployed plugin refused: {e}; the loaded version keeps running");
                self.refused.insert(current);
            }
        }
    }

    /// Fetch and load one stored version, checking its digest.
    async fn fetch(&self, digest: &str) -> Result<Arc<Plugin>, String> {
        if let Some(p) = self.loader.remembered(digest) {
            return Ok(p);
        }
        let bytes = self
            .registry
            .bytes(digest)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} has no entry {digest}", self.registry.keys.plugins()))?;
        let source = format!("{}[{digest}]", self.registry.keys.plugins());
        let p = self.loader.load(bytes, source).await.map_err(|e| e.to_string())?;
        if *p.digest != *digest {
            return Err(format!(
                "the stored bytes have digest {}, not {digest}: the registry entry is corrupt",
                p.digest
            ));
        }
        Ok(p)
    }
}
