//! `bullpen-componentize`: make a bullpen processor component of a core
//! WebAssembly module, e.g. a Go `wasip1` reactor (`-buildmode=c-shared`).
//! `bullpen build` does this (and the Go build before it) in a project
//! folder; this is the step on its own. The work is the
//! `bullpen-componentize` library's (componentize/).
//!
//! ```text
//! bullpen-componentize <core.wasm> [--world processor|processor-with-backoff] [--wit DIR] [--no-preinit] -o <out.wasm>
//! ```
//!
//! - `--world NAME`: default chosen from the module (`processor-with-backoff`
//!   when a Go processor calls `guest.WithBackoff`); a world that would drop
//!   the module's backoff strategy is refused.
//! - `--wit DIR`: a WIT folder instead of the one compiled in.
//! - `--no-preinit`: keep `_initialize` for every instance to run, instead of
//!   running it once at build time and snapshotting the result (the
//!   library's `preinit` module).
// Installed with `cargo install --path runtime` beside `bullpen`, so one
// command puts both on PATH.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bullpen_componentize::{componentize, Options, World};

const USAGE: &str =
    "usage: bullpen-componentize <core.wasm> [--world processor|processor-with-backoff] [--wit DIR] [--no-preinit] -o <out.wasm>";

struct Args {
    input: PathBuf,
    output: PathBuf,
    opts: Options,
}

fn parse_args() -> Result<Args> {
    let mut input = None;
    let mut output = None;
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-o" | "--output" => output = Some(PathBuf::from(value(&a)?)),
            "--wit" => opts.wit = Some(PathBuf::from(value(&a)?)),
            "--world" => opts.world = Some(World::parse(&value(&a)?)?),
            "--no-preinit" => opts.no_preinit = true,
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
        opts,
    })
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let module = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let component = componentize(&module, &args.input.display().to_string(), &args.opts)?;
    std::fs::write(&args.output, &component.bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
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
