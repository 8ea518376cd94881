//! Turn a core WebAssembly module that speaks the canonical ABI of a bullpen
//! world (a Go `wasip1` reactor built with `-buildmode=c-shared` and the Go
//! SDK) into a component that `bullpen worker --plugin` accepts. Used by
//! `bullpen build` and by the `bullpen-componentize` binary.
//!
//! When the module has no `component-type` custom section, the world's type
//! information (from the WIT embedded in this crate, or a given folder) is
//! embedded first. The module's `wasi_snapshot_preview1` imports are then
//! adapted to WASI 0.2 with the reactor adapter that ships with wasmtime
//! (`wasi-preview1-component-adapter-provider`), as `wasm-tools component
//! new --adapt` does. Before that, a module with `_initialize` is
//! pre-initialised (`preinit`: the Go runtime started once, at build time;
//! `Options::no_preinit` opts out).
//!
//! Mistakes that would build a component that fails later are refused here,
//! each with its fix: a command module (Go without `-buildmode=c-shared`:
//! every job would trap with "cannot leave component instance"), and a Go
//! module whose `guest.WithBackoff` strategy the chosen world would drop.
mod preinit;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER as REACTOR;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{Resolve, SourceMap};

/// The repository's `wit/`, compiled in, so the tool needs no checkout.
/// `embedded_wit_is_the_repositorys` checks the list against the folder.
const WIT: &[(&str, &str)] = &[
    ("processor.wit", include_str!("../../wit/processor.wit")),
    ("deps/cli/cli.wit", include_str!("../../wit/deps/cli/cli.wit")),
    ("deps/clocks/clocks.wit", include_str!("../../wit/deps/clocks/clocks.wit")),
    ("deps/config/store.wit", include_str!("../../wit/deps/config/store.wit")),
    ("deps/config/world.wit", include_str!("../../wit/deps/config/world.wit")),
    ("deps/filesystem/filesystem.wit", include_str!("../../wit/deps/filesystem/filesystem.wit")),
    ("deps/http/http.wit", include_str!("../../wit/deps/http/http.wit")),
    ("deps/io/io.wit", include_str!("../../wit/deps/io/io.wit")),
    ("deps/random/random.wit", include_str!("../../wit/deps/random/random.wit")),
    ("deps/sockets/sockets.wit", include_str!("../../wit/deps/sockets/sockets.wit")),
];

/// The two worlds of `wit/processor.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Processor,
    ProcessorWithBackoff,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Processor => "processor",
            World::ProcessorWithBackoff => "processor-with-backoff",
        }
    }

    pub fn parse(name: &str) -> Result<World> {
        match name {
            "processor" => Ok(World::Processor),
            "processor-with-backoff" => Ok(World::ProcessorWithBackoff),
            other => bail!("unknown world {other:?}: the worlds are processor and processor-with-backoff"),
        }
    }
}

/// What to make of the module.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The world; `None` chooses it from the module (a Go module that calls
    /// `guest.WithBackoff` gets `processor-with-backoff`).
    pub world: Option<World>,
    /// A WIT folder to use instead of the embedded one.
    pub wit: Option<PathBuf>,
    /// Keep `_initialize` for every instance to run, instead of running it
    /// once here and snapshotting the result ([`preinit`]; `--no-preinit`).
    pub no_preinit: bool,
}

/// A component, and the world it was made for.
pub struct Component {
    pub bytes: Vec<u8>,
    pub world: World,
}

/// Make a component of `module`; `name` names it in errors.
pub fn componentize(module: &[u8], name: &str, opts: &Options) -> Result<Component> {
    if module.get(0..4) != Some(b"\0asm") {
        bail!("{name} is not a WebAssembly file (no `\\0asm` header)");
    }
    if module.get(4..8) != Some(&[1, 0, 0, 0]) {
        bail!(
            "{name} is already a component (or not a core module): give it to `bullpen run` or `bullpen worker \
             --plugin` as it is"
        );
    }
    let exports = core_exports(module)?;
    check_reactor(&exports, name)?;
    let world = choose_world(module, name, opts.world)?;
    let mut module = module.to_vec();
    if !opts.no_preinit && exports.iter().any(|e| e == "_initialize") {
        module = preinit::preinitialize(&module).with_context(|| format!("cannot pre-initialise {name}"))?;
        if let Some(path) = std::env::var_os("BULLPEN_PREINIT_DUMP") {
            std::fs::write(path, &module)?;
        }
    }
    if !has_component_type(&module)? {
        let mut resolve = Resolve::default();
        let pkg = match &opts.wit {
            Some(dir) => resolve.push_path(dir).with_context(|| format!("cannot load WIT from {}", dir.display()))?.0,
            None => push_embedded_wit(&mut resolve)?,
        };
        let w = resolve.select_world(&[pkg], Some(world.name()))?;
        wit_component::embed_component_metadata(&mut module, &resolve, w, StringEncoding::UTF8)?;
    }
    let bytes = ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter("wasi_snapshot_preview1", REACTOR)?
        .encode()
        .with_context(|| format!("cannot make a component of {name}"))?;
    Ok(Component { bytes, world })
}

/// The world for this module: the asked one, unless it would silently drop
/// the module's backoff strategy (or add an empty one); else chosen from it.
fn choose_world(module: &[u8], name: &str, asked: Option<World>) -> Result<World> {
    let go_sdk = contains(module, b"bullpen.dev/guest.");
    // Go keeps the names of reachable functions (inlined ones too) in its
    // function table, even with -ldflags=-s: the name is in the module
    // exactly when the processor calls (or refers to) WithBackoff. The
    // `backoff` export itself is always there, so it tells nothing.
    let with_backoff = go_sdk && contains(module, b"bullpen.dev/guest.WithBackoff");
    match asked {
        Some(World::Processor) if with_backoff => bail!(
            "{name} calls guest.WithBackoff, but the `processor` world has no `backoff` export: the strategy \
             would never run and jobs with a custom backoff type would retry at once. Build it for the \
             `processor-with-backoff` world (`--world processor-with-backoff`, or leave --world out: it is \
             chosen from the module; `bullpen build` does that)"
        ),
        Some(World::ProcessorWithBackoff) if go_sdk && !with_backoff => bail!(
            "{name} is built for the `processor-with-backoff` world but never calls guest.WithBackoff: its \
             `backoff` export would retry every custom backoff type at once. Pass the strategy \
             (`guest.ExportProcessor(process, guest.WithBackoff(f))`) or build for `--world processor`"
        ),
        Some(w) => Ok(w),
        None if with_backoff => Ok(World::ProcessorWithBackoff),
        None => Ok(World::Processor),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The embedded WIT as one package with its dependencies.
fn push_embedded_wit(resolve: &mut Resolve) -> Result<wit_parser::PackageId> {
    let mut packages: Vec<(String, SourceMap)> = Vec::new();
    for (path, text) in WIT {
        let dir = Path::new(path).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let at = match packages.iter().position(|(d, _)| *d == dir) {
            Some(i) => i,
            None => {
                packages.push((dir, SourceMap::new()));
                packages.len() - 1
            }
        };
        packages[at].1.push_str(path, *text);
    }
    let mut groups = Vec::new();
    for (dir, map) in packages {
        let group = map.parse().map_err(|(_, e)| anyhow::anyhow!("embedded WIT ({dir}): {e}"))?;
        groups.push((dir, group));
    }
    let main = groups.iter().position(|(d, _)| d.is_empty()).context("embedded WIT has no processor.wit")?;
    let (_, main) = groups.remove(main);
    Ok(resolve.push_groups(main, groups.into_iter().map(|(_, g)| g).collect())?)
}

fn has_component_type(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::CustomSection(s) = payload? {
            if s.name().starts_with("component-type") {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn core_exports(module: &[u8]) -> Result<Vec<String>> {
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ExportSection(s) = payload? {
            for e in s {
                exports.push(e?.name.to_string());
            }
        }
    }
    Ok(exports)
}

/// A processor is a reactor: its exports are called, its `_start` never
/// is. A command module (Go built without `-buildmode=c-shared`) would
/// componentize, then fail every job with "cannot leave component instance".
fn check_reactor(exports: &[String], name: &str) -> Result<()> {
    let has = |n: &str| exports.iter().any(|e| e == n);
    if has("_start") && !has("_initialize") {
        bail!(
            "{name} is a command module (it exports `_start`), not a reactor: a processor's exports are called \
             per job. For Go, build with `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {name} .` \
             (`bullpen build` does that)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_wit_is_the_repositorys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    on_disk.push(p.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = WIT.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add the new wit/ file to WIT in componentize/src/lib.rs");
        let mut resolve = Resolve::default();
        let pkg = push_embedded_wit(&mut resolve).unwrap();
        for w in ["processor", "processor-with-backoff"] {
            resolve.select_world(&[pkg], Some(w)).unwrap();
        }
    }

    #[test]
    fn world_follows_with_backoff() {
        let plain = b"\0asm....bullpen.dev/guest.ExportProcessor";
        let backoff = b"\0asm....bullpen.dev/guest.ExportProcessor bullpen.dev/guest.WithBackoff";
        assert_eq!(choose_world(plain, "m", None).unwrap(), World::Processor);
        assert_eq!(choose_world(backoff, "m", None).unwrap(), World::ProcessorWithBackoff);
        let e = choose_world(backoff, "m", Some(World::Processor)).unwrap_err().to_string();
        assert!(e.contains("calls guest.WithBackoff") && e.contains("--world processor-with-backoff"), "{e}");
        let e = choose_world(plain, "m", Some(World::ProcessorWithBackoff)).unwrap_err().to_string();
        assert!(e.contains("never calls guest.WithBackoff"), "{e}");
        // Not a Go SDK module (C, hand-written): the asked world stands.
        assert_eq!(
            choose_world(b"\0asm", "m", Some(World::ProcessorWithBackoff)).unwrap(),
            World::ProcessorWithBackoff
        );
    }
}
