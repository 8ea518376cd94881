//! `bullpen build [DIR]`: the processor project in DIR (a `bullpen new`
//! project, or any project laid out the same way) made a component with its
//! language's toolchain, written to `DIR/dist/<name>.wasm`, whose path is the
//! last line on stdout (the toolchains' own output goes to stderr).
//!
//! - Rust (`Cargo.toml`): `cargo build --release --target wasm32-wasip2`.
//! - Go (`go.mod`): `go build -buildmode=c-shared` for `GOOS=wasip1`, then
//!   componentized in-process (the `bullpen-componentize` library; the
//!   world follows `guest.WithBackoff`).
//! - JavaScript (`package.json`): `npm install` when `node_modules` lacks
//!   the SDK, then the SDK's `bullpen-build` on the package's `main`.
//! - Python (`processor.py`): the SDK's `python -m bullpen_guest.build`,
//!   with `.venv/bin/python` when there is one.
//!
//! The same source gives the same bytes (the same digest): Go builds with
//! `-trimpath -buildvcs=false`, `bullpen-build` reuses its earlier output for
//! the same inputs, and the output file is left alone when unchanged.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;

use super::new::Lang;

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// The project folder.
    #[arg(default_value = ".")]
    pub(crate) dir: PathBuf,
}

pub(crate) fn build(a: BuildArgs) -> anyhow::Result<()> {
    let dir = &a.dir;
    let lang = detect(dir)?;
    let name = project_name(dir, lang)?;
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;
    let out = dist.join(format!("{name}.wasm"));
    match lang {
        Lang::Rust => build_rust(dir, &out)?,
        Lang::Go => build_go(dir, &name, &out)?,
        Lang::Js => build_js(dir, &out)?,
        Lang::Python => build_python(dir, &out)?,
    }
    // Relative to where the user is when DIR is the current folder.
    let shown = out.strip_prefix(".").unwrap_or(&out);
    println!("{}", shown.display());
    Ok(())
}

fn detect(dir: &Path) -> anyhow::Result<Lang> {
    let has = |f: &str| dir.join(f).is_file();
    Ok(if has("Cargo.toml") {
        Lang::Rust
    } else if has("go.mod") {
        Lang::Go
    } else if has("package.json") {
        Lang::Js
    } else if has("processor.py") {
        Lang::Python
    } else {
        bail!(
            "{} has no processor project (no Cargo.toml, go.mod, package.json or processor.py): `bullpen new \
             NAME --lang rust|go|js|python` writes one",
            dir.display()
        )
    })
}

/// The component's file name: the package's name (the folder's for Python).
fn project_name(dir: &Path, lang: Lang) -> anyhow::Result<String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("cannot read {f}"));
    let name = match lang {
        Lang::Rust => {
            let manifest: toml::Table = read("Cargo.toml")?.parse().context("Cargo.toml is not valid TOML")?;
            manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(str::to_string)
        }
        Lang::Go => read("go.mod")?
            .lines()
            .find_map(|l| l.trim().strip_prefix("module "))
            .map(|m| m.trim().trim_matches('"').rsplit('/').next().unwrap_or_default().to_string()),
        Lang::Js => {
            let package: serde_json::Value =
                serde_json::from_str(&read("package.json")?).context("package.json is not valid JSON")?;
            package["name"].as_str().map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
        }
        Lang::Python => std::fs::canonicalize(dir)?.file_name().and_then(OsStr::to_str).map(str::to_string),
    };
    match name {
        Some(n) if !n.is_empty() && !n.contains(['/', '\\']) => Ok(n),
        _ => bail!("cannot tell the project's name from {}", dir.display()),
    }
}

/// Run a toolchain command with its stdout on our stderr (stdout is for
/// the component's path); `missing` is the fix when the program is absent.
fn run(cmd: &mut Command, missing: &str) -> anyhow::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd.stdout(stderr()?).status().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{program} is not installed (or not on PATH): {missing}"),
        _ => anyhow::anyhow!("cannot run {program}: {e}"),
    })?;
    if !status.success() {
        bail!("{} failed ({status}); its output is above", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn stderr() -> anyhow::Result<Stdio> {
    use std::os::fd::AsFd;
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

/// Write `bytes` unless the file holds them already (its mtime then says
/// when this version was first built, and a watching worker sees nothing).
fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn build_rust(dir: &Path, out: &Path) -> anyhow::Result<()> {
    const TARGET: &str = "wasm32-wasip2";
    // rustup is how the target gets installed; without rustup, cargo says
    // what is missing itself.
    if let Ok(o) = Command::new("rustup").args(["target", "list", "--installed"]).output() {
        if o.status.success() && !String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == TARGET) {
            bail!("the Rust target {TARGET} is not installed: rustup target add {TARGET}");
        }
    }
    // The artifact's path from cargo's own report (wherever the target
    // directory is); the diagnostics are rendered to stderr.
    let output = Command::new("cargo")
        .args(["build", "--release", "--target", TARGET, "--message-format=json-render-diagnostics"])
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("cargo is not installed: https://rustup.rs"),
            _ => anyhow::anyhow!("cannot run cargo: {e}"),
        })?;
    if !output.status.success() {
        bail!("cargo build --release --target {TARGET} failed ({}); its output is above", output.status);
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let cdylib = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if msg["reason"] == "compiler-artifact" && cdylib {
            let files = msg["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str());
            wasm = files.filter(|f| f.ends_with(".wasm")).last().map(PathBuf::from).or(wasm);
        }
    }
    let Some(wasm) = wasm else {
        bail!("cargo built no component: Cargo.toml's [lib] needs crate-type = [\"cdylib\"]");
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    write_if_changed(out, &bytes)
}

/// Go >= 1.24 (`GOOS=wasip1` with `//go:wasmexport`): on PATH, else the
/// usual install folder.
fn find_go() -> anyhow::Result<PathBuf> {
    for go in [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")] {
        let Ok(o) = Command::new(&go).args(["env", "GOVERSION"]).output() else { continue };
        let v = String::from_utf8_lossy(&o.stdout);
        let mut parts = v.trim().trim_start_matches("go").split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (1, 24) {
            return Ok(go);
        }
    }
    bail!("Go processors need Go 1.24 or newer (GOOS=wasip1 with //go:wasmexport): https://go.dev/dl")
}

fn build_go(dir: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let go = find_go()?;
    let core = out.with_file_name(format!(".{name}.core.wasm"));
    let core_abs = std::path::absolute(&core)?;
    let mut cmd = Command::new(&go);
    // c-shared: a reactor, whose exports are called per job (a command
    // module would trap on every job). -trimpath and -buildvcs=false: the
    // same source gives the same bytes, wherever it is and whatever commit.
    cmd.args(["build", "-buildmode=c-shared", "-trimpath", "-buildvcs=false"]);
    if !dir.join("vendor").is_dir() {
        // Fills in go.sum on the first build, as `go mod tidy` would.
        cmd.arg("-mod=mod");
    }
    cmd.arg("-o").arg(&core_abs).arg(".").current_dir(dir).env("GOOS", "wasip1").env("GOARCH", "wasm");
    run(&mut cmd, "https://go.dev/dl")?;
    let module = std::fs::read(&core_abs).with_context(|| format!("cannot read {}", core.display()))?;
    let _ = std::fs::remove_file(&core_abs);
    let component = bullpen_componentize::componentize(&module, name, &bullpen_componentize::Options::default())?;
    write_if_changed(out, &component.bytes)
}

fn build_js(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let package: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("package.json"))?)?;
    let Some(entry) = package["main"].as_str() else {
        bail!("package.json has no \"main\": set it to the processor's entry (e.g. \"src/main.js\")");
    };
    let sdk_build = dir.join("node_modules/bullpen-guest/bin/build.mjs");
    if !sdk_build.is_file() {
        eprintln!("bullpen build: installing the project's packages (npm install)");
        run(
            Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(dir),
            "install Node.js 18 or newer with npm",
        )?;
        if !sdk_build.is_file() {
            bail!("the project does not depend on bullpen-guest: npm install bullpen-guest");
        }
    }
    let out_abs = std::path::absolute(out)?;
    run(
        Command::new("node")
            .arg("node_modules/bullpen-guest/bin/build.mjs")
            .arg(entry)
            .arg("-o")
            .arg(&out_abs)
            .current_dir(dir),
        "install Node.js 18 or newer",
    )
}

fn build_python(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let venv = dir.join(".venv/bin/python");
    let python = if venv.is_file() { std::path::absolute(&venv)? } else { PathBuf::from("python3") };
    let sdk = Command::new(&python).args(["-c", "import bullpen_guest.build"]).current_dir(dir).output();
    match sdk {
        Err(_) => bail!("{} is not installed: install Python 3.9 or newer", python.display()),
        Ok(o) if !o.status.success() => bail!(
            "the bullpen-guest Python SDK is not installed for {}: python3 -m venv .venv && .venv/bin/pip \
             install -r requirements.txt",
            python.display()
        ),
        Ok(_) => {}
    }
    let out_abs = std::path::absolute(out)?;
    run(
        Command::new(&python).args(["-m", "bullpen_guest.build", "processor.py", "-o"]).arg(&out_abs).current_dir(dir),
        "install Python 3.9 or newer",
    )
}
