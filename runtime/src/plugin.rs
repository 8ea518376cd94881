//! A processor component, loaded, validated against the WIT world and
//! pre-linked (`InstancePre`), so an attempt only pays for instantiation.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

use crate::bindings::{Processor, ProcessorPre};
use crate::error::PluginError;
use crate::sandbox::HostState;

/// One version of a processor: its digest and its ready-to-instantiate form.
pub struct Plugin {
    /// sha256 of the component bytes, lowercase hex: the version's identity.
    pub digest: String,
    /// Where it came from (file path or registry), for messages.
    pub source: String,
    pub(crate) pre: ProcessorPre<HostState>,
    /// The component also exports `backoff` (world `processor-with-backoff`).
    pub has_backoff: bool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("digest", &self.digest).field("source", &self.source).finish()
    }
}

/// The linker every plugin is checked against: WASI p2 (deny-by-default
/// context, see `sandbox`) plus bullpen's `job-context`.
pub fn new_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Processor::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// sha256 hex of component bytes.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Plugin {
    /// Load, validate and pre-link the component at `path`.
    pub fn from_file(engine: &Engine, linker: &Linker<HostState>, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_path_buf(), source })?;
        Self::from_bytes(engine, linker, &bytes, &path.display().to_string())
    }

    /// Validate and pre-link component bytes; `source` names them in errors.
    pub fn from_bytes(
        engine: &Engine,
        linker: &Linker<HostState>,
        bytes: &[u8],
        source: &str,
    ) -> Result<Arc<Plugin>, PluginError> {
        check_header(bytes, source)?;
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Compile {
            what: source.to_string(),
            reason: format!("{e:#}"),
        })?;
        let mismatch = |e: wasmtime::Error| PluginError::WorldMismatch { what: source.to_string(), reason: format!("{e:#}") };
        let pre = linker.instantiate_pre(&component).map_err(mismatch)?;
        let pre = ProcessorPre::new(pre).map_err(mismatch)?;
        let has_backoff = component.component_type().exports(engine).any(|(name, _)| name == "backoff");
        Ok(Arc::new(Plugin { digest: digest(bytes), source: source.to_string(), pre, has_backoff }))
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
