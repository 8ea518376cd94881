//! A processor component, loaded, validated against the WIT world and
//! pre-linked (`InstancePre`), so an attempt only pays for instantiation.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::bullpen::processor::job_context;
use crate::bindings::ProcessorPre;
use crate::error::PluginError;
use crate::host::http::DenyAll;
use crate::host::HostState;

/// One version of a processor: its digest and its ready-to-instantiate form.
pub(crate) struct Plugin {
    /// sha256 of the component bytes, lowercase hex: the version's identity.
    pub(crate) digest: Arc<str>,
    /// Where it came from (file path or registry), for messages.
    pub(crate) source: String,
    pub(crate) pre: ProcessorPre<HostState>,
    /// The component also exports `backoff` (world `processor-with-backoff`).
    pub(crate) has_backoff: bool,
    /// Time to make it ready (compile or cache load, probe, pre-link), ms.
    pub(crate) load_ms: f64,
    /// Whether the precompiled-artifact cache served the compile.
    pub(crate) from_cache: bool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("digest", &self.digest).field("source", &self.source).finish()
    }
}

/// The linker every plugin is checked against: WASI p2 (deny-by-default
/// context, see `sandbox`), wasi:http's outgoing-handler (deny by default:
/// the binding's allow-list, `host::http`), wasi:config/store (the
/// binding's variables) and bullpen's `job-context`. Components that import
/// neither wasi:http nor wasi:config link as before.
pub(crate) fn new_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, crate::host::wasi_config)?;
    // Not `Processor::add_to_linker`: that would add the wasi imports of
    // the world a second time, with host traits of bindgen's own.
    job_context::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// sha256 hex of component bytes.
pub(crate) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Plugin {
    /// Load, validate and pre-link the component at `path`.
    pub(crate) fn from_file(
        engine: &Engine,
        linker: &Linker<HostState>,
        path: &Path,
    ) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|cause| PluginError::Read { path: path.to_path_buf(), cause })?;
        Self::from_bytes(engine, linker, &bytes, &path.display().to_string())
    }

    /// Validate and pre-link component bytes; `source` names them in errors.
    ///
    /// Order: header check, compile (or load the precompiled artifact cached
    /// for this digest), a probe instantiation that refuses components that
    /// trap while instantiating, then the world check (`InstancePre`).
    pub(crate) fn from_bytes(
        engine: &Engine,
        linker: &Linker<HostState>,
        bytes: &[u8],
        source: &str,
    ) -> Result<Arc<Plugin>, PluginError> {
        check_header(bytes, source)?;
        let digest = digest(bytes);
        let started = Instant::now();
        let (component, cached) = compile_cached(engine, bytes, &digest)
            .map_err(|e| PluginError::Compile { what: source.to_string(), reason: format!("{e:#}") })?;
        let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
        probe_instantiation(engine, &component)
            .map_err(|e| PluginError::InstantiationTrap { what: source.to_string(), reason: format!("{e:#}") })?;
        let mismatch =
            |e: wasmtime::Error| PluginError::WorldMismatch { what: source.to_string(), reason: format!("{e:#}") };
        let pre = linker.instantiate_pre(&component).map_err(mismatch)?;
        let pre = ProcessorPre::new(pre).map_err(mismatch)?;
        let has_backoff = component.component_type().exports(engine).any(|(name, _)| name == "backoff");
        debug!(%digest, cached, compile_ms, total_ms = started.elapsed().as_secs_f64() * 1000.0, "plugin ready");
        Ok(Arc::new(Plugin {
            digest: digest.into(),
            source: source.to_string(),
            pre,
            has_backoff,
            load_ms: started.elapsed().as_secs_f64() * 1000.0,
            from_cache: cached,
        }))
    }
}

/// Where precompiled components are kept: `$BULLPEN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/bullpen`, else `~/.cache/bullpen`. `BULLPEN_CACHE_DIR=off`
/// disables the cache. JS components take seconds to compile; loading their
/// artifact takes about a millisecond. The cache is kept under
/// [`cache_max_bytes`], least recently used artifacts evicted first.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("BULLPEN_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("bullpen")),
    }
}

/// Compile, or deserialize the artifact cached under this digest and this
/// engine's compatibility hash (so a different wasmtime or different
/// settings never load a stale artifact). Returns whether the cache served it.
fn compile_cached(engine: &Engine, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, bool)> {
    let (Some(dir), Some(path)) = (cache_dir(), artifact_path(engine, digest)) else {
        return Ok((Component::new(engine, bytes)?, false));
    };
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of this
        // engine configuration (the name carries its compatibility hash) for
        // exactly these bytes (the name carries their sha256).
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => {
                // Its mtime is its last use: what eviction goes by.
                let _ =
                    std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                return Ok((c, true));
            }
            Err(e) => warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unreadable cached artifact"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = write_artifact(&component, &dir, &path) {
        warn!(dir = %dir.display(), error = %e, "cannot cache the compiled plugin; it will be compiled again next start");
    }
    match prune_cache(&dir, &path, cache_max_bytes()) {
        Ok(0) => {}
        Ok(n) => debug!(dir = %dir.display(), evicted = n, "artifact cache pruned"),
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot prune the artifact cache"),
    }
    Ok((component, false))
}

/// Where the artifact for this digest and this engine's settings is
/// cached (`None`: the cache is off).
fn artifact_path(engine: &Engine, digest: &str) -> Option<PathBuf> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    Some(cache_dir()?.join(format!("{digest}-{:016x}.cwasm", h.finish())))
}

/// Whether loading these component bytes compiles them (seconds for a JS
/// component) rather than loading the cached artifact: `bullpen run` says so
/// first.
pub(crate) fn will_compile(engine: &Engine, bytes: &[u8]) -> bool {
    check_header(bytes, "").is_ok() && artifact_path(engine, &digest(bytes)).is_none_or(|p| !p.exists())
}

/// The artifact cache's size limit: `BULLPEN_CACHE_MAX_MB` (default 2048).
/// Every deploy of a new version adds an artifact (a JS one is ~40 MB, a Rust
/// one ~1 MB) and artifacts of an older wasmtime are never read again, so an
/// unbounded cache only grows. 2 GiB holds ~50 JS versions.
pub(crate) fn cache_max_bytes() -> u64 {
    std::env::var("BULLPEN_CACHE_MAX_MB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(2048) << 20
}

/// Delete the least recently used artifacts (by mtime, which a cache hit
/// refreshes) until the cache holds at most `max_bytes`; never `keep`, the
/// artifact just written. Also removes temporary files a crashed write left
/// (older than an hour). Another process that has an evicted artifact
/// mapped keeps it (Linux keeps an unlinked file until unmapped); one about
/// to open it compiles instead. Returns how many files were removed.
fn prune_cache(dir: &Path, keep: &Path, max_bytes: u64) -> std::io::Result<usize> {
    let mut artifacts = Vec::new();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        // Another process may be pruning too: a file gone meanwhile is skipped.
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(modified) = meta.modified() else { continue };
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.contains(".tmp") {
            if modified.elapsed().is_ok_and(|age| age > Duration::from_secs(3600))
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        } else if name.ends_with(".cwasm") && meta.is_file() {
            artifacts.push((modified, meta.len(), path));
        }
    }
    // Newest first; what no longer fits under the limit goes.
    artifacts.sort_by_key(|a| std::cmp::Reverse(a.0));
    let mut total = 0u64;
    for (_, len, path) in artifacts {
        total += len;
        if total > max_bytes && path != keep && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn write_artifact(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Store data for the probe: WASI, wasi:http and wasi:config, nothing granted.
struct ProbeState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    deny: DenyAll,
    vars: WasiConfigVariables,
}

impl WasiView for ProbeState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for ProbeState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.deny }
    }
}

fn probe_config(s: &mut ProbeState) -> WasiConfig<'_> {
    WasiConfig::new(&s.vars)
}

/// The functions of `job-context`; the probe defines each as a trap.
const JOB_CONTEXT_FUNCS: [&str; 9] = [
    "update-data",
    "update-progress",
    "log",
    "move-to-delayed",
    "rate-limit",
    "move-to-wait",
    "add-child",
    "wait-for-children",
    "children-values",
];

/// Instantiate once, with WASI, wasi:http and wasi:config (nothing
/// granted: every request refused, no variables) and every `job-context`
/// function trapping, under a 1 s epoch deadline, so a component whose start
/// code traps (or spins) is refused at load instead of failing every job.
/// Start code may use WASI (Go's runtime reads the clock and randomness).
/// Only a trap refuses: an import the probe cannot satisfy is left to the
/// world check that follows, which names it.
fn probe_instantiation(engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    let mut linker: Linker<ProbeState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, probe_config)?;
    linker.instance("bullpen:processor/types@0.1.0")?;
    let mut job_context = linker.instance("bullpen:processor/job-context@0.1.0")?;
    for name in JOB_CONTEXT_FUNCS {
        job_context
            .func_new(name, |_, _, _, _| Err(wasmtime::Error::msg("job-context called during the load-time probe")))?;
    }
    let state = ProbeState {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        http: WasiHttpCtx::new(),
        deny: DenyAll,
        vars: WasiConfigVariables::new(),
    };
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline((1000 / crate::sandbox::engine::EPOCH_TICK.as_millis()) as u64);
    store.epoch_deadline_trap();
    // Engines built with fuel metering need fuel in every store (errors when off).
    let _ = store.set_fuel(u64::MAX);
    match linker.instantiate(&mut store, component) {
        Err(e) if e.downcast_ref::<wasmtime::Trap>().is_some() => Err(e),
        _ => Ok(()),
    }
}

/// Wasm files start with `\0asm` and a 4-byte version/layer: `01 00 00 00`
/// is a core module, `0d 00 01 00` (layer 1) a component.
fn check_header(bytes: &[u8], source: &str) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(PluginError::NotWasm(source.to_string()));
    }
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::CoreModule(source.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod cache_tests {
    use super::prune_cache;
    use std::time::{Duration, SystemTime};

    fn artifact(dir: &std::path::Path, name: &str, len: usize, age_s: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        p
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_limit_but_never_the_new_one() {
        let d = tempfile::tempdir().unwrap();
        let fresh = artifact(d.path(), "a-1.cwasm", 400, 0);
        let recent = artifact(d.path(), "b-1.cwasm", 400, 10);
        let old = artifact(d.path(), "c-1.cwasm", 400, 100);
        let older = artifact(d.path(), "d-1.cwasm", 400, 1000);
        let stale_tmp = artifact(d.path(), "e-1.tmp123", 10, 7200);
        let live_tmp = artifact(d.path(), "f-1.tmp456", 10, 5);
        let other = artifact(d.path(), "notes.txt", 5000, 5000);
        // The artifact just written is kept even if it is the oldest.
        let just_written = artifact(d.path(), "g-1.cwasm", 400, 5000);
        assert_eq!(prune_cache(d.path(), &just_written, 1000).unwrap(), 3, "old, older and the stale temp file");
        for (p, kept) in [
            (&fresh, true),
            (&recent, true),
            (&old, false),
            (&older, false),
            (&just_written, true),
            (&stale_tmp, false),
            (&live_tmp, true),
            (&other, true),
        ] {
            assert_eq!(p.exists(), kept, "{}", p.display());
        }
        // Under the limit nothing goes.
        assert_eq!(prune_cache(d.path(), &just_written, 1 << 30).unwrap(), 0);
    }
}
