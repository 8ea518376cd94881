//! `bullpen-componentize`: turn a core WebAssembly module that speaks the
//! canonical ABI of a bullpen world (for example a Go `wasip1` reactor built
//! with `-buildmode=c-shared`) into a component that `bullpen worker
//! --plugin` accepts.
//!
//! ```text
//! bullpen-componentize <core.wasm> [--wit wit] [--world processor] [--no-preinit] -o <out.wasm>
//! ```
//!
//! - `--wit DIR` (default `wit`): the WIT package (bullpen's `wit/` folder).
//! - `--world NAME` (default `processor`): `processor` or
//!   `processor-with-backoff` (also exports `backoff`).
//! - `--no-preinit`: keep `_initialize` for every instance to run, instead of
//!   running it once here and snapshotting the result ([`preinit`]).
//!
//! When the module has no `component-type` custom section, the world's type
//! information is embedded first. The module's `wasi_snapshot_preview1`
//! imports are then adapted to WASI 0.2 with the reactor adapter that ships
//! with wasmtime (`wasi-preview1-component-adapter-provider`), as
//! `wasm-tools component new --adapt` does.
mod preinit;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER as REACTOR;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

const USAGE: &str =
    "usage: bullpen-componentize <core.wasm> [--wit DIR] [--world processor|processor-with-backoff] [--no-preinit] -o <out.wasm>";

struct Args {
    input: PathBuf,
    wit: PathBuf,
    world: String,
    output: PathBuf,
    /// Run the module's `_initialize` at build time (the default).
    preinit: bool,
}

fn parse_args() -> Result<Args> {
    let mut input = None;
    let mut output = None;
    let mut wit = PathBuf::from("wit");
    let mut world = "processor".to_string();
    let mut preinit = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-o" | "--output" => output = Some(PathBuf::from(value(&a)?)),
            "--wit" => wit = PathBuf::from(value(&a)?),
            "--world" => world = value(&a)?,
            "--no-preinit" => preinit = false,
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => {
                if input.replace(PathBuf::from(s)).is_some() {
                    bail!("more than one input module\n{USAGE}");
                }
            }
        }
    }
    Ok(Args {
        input: input.with_context(|| format!("no input module\n{USAGE}"))?,
        output: output.with_context(|| format!("no output (-o)\n{USAGE}"))?,
        wit,
        world,
        preinit,
    })
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

/// A processor is a reactor: its exports are called, its `_start` never
/// is. A command module (Go built without `-buildmode=c-shared`) would
/// componentize, then fail every job with "cannot leave component instance".
fn check_reactor(module: &[u8], input: &std::path::Path) -> Result<()> {
    let exports = exports(module)?;
    let has = |name: &str| exports.iter().any(|e| e == name);
    if has("_start") && !has("_initialize") {
        bail!(
            "{} is a command module (it exports `_start`), not a reactor: a processor's exports are called \
             per job. For Go, build with `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {} .`",
            input.display(),
            input.display()
        );
    }
    Ok(())
}

fn exports(module: &[u8]) -> Result<Vec<String>> {
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

fn run() -> Result<()> {
    let args = parse_args()?;
    let mut module = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    if module.get(0..4) != Some(b"\0asm") || module.get(4..8) != Some(&[1, 0, 0, 0]) {
        bail!("{} is not a core WebAssembly module", args.input.display());
    }
    check_reactor(&module, &args.input)?;
    if args.preinit && exports(&module)?.iter().any(|e| e == "_initialize") {
        module = preinit::preinitialize(&module)
            .with_context(|| format!("cannot pre-initialise {}", args.input.display()))?;
        if let Some(path) = std::env::var_os("BULLPEN_PREINIT_DUMP") {
            std::fs::write(path, &module)?;
        }
    }
    if !has_component_type(&module)? {
        let mut resolve = Resolve::default();
        let (pkg, _) =
            resolve.push_path(&args.wit).with_context(|| format!("cannot load WIT from {}", args.wit.display()))?;
        let world = resolve.select_world(&[pkg], Some(&args.world))?;
        wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    }
    let component = ComponentEncoder::default()
        .validate(true)
        .module(&module)?
        .adapter("wasi_snapshot_preview1", REACTOR)?
        .encode()
        .with_context(|| format!("cannot make a component of {}", args.input.display()))?;
    std::fs::write(&args.output, &component).with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bullpen-componentize: {e:#}");
            ExitCode::FAILURE
        }
    }
}
