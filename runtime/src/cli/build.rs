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
//! `-trimpath -buildvcs=false`; the JS SDK's `bullpen-build` and, for
//! Python, this module reuse the component made before from the same inputs
//! (componentize-js and componentize-py snapshot an initialised engine,
//! which differs from run to run); the output file is left alone when
//! unchanged.

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
            let mut files = msg["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str());
            wasm = files.rfind(|f| f.ends_with(".wasm")).map(PathBuf::from).or(wasm);
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
    // componentize-py does not give the same bytes twice (its snapshot of
    // the initialised interpreter differs: 13 of 19 MB measured, with
    // PYTHONHASHSEED=0 too), so the same inputs reuse the component made
    // from them before, as the JS SDK's bullpen-build does.
    let key = python_inputs_key(dir, &python)?;
    let cached = build_cache_dir("py-builds").map(|d| d.join(format!("{key}.wasm")));
    if let Some(bytes) = cached.as_ref().and_then(|c| std::fs::read(c).ok()) {
        eprintln!("bullpen build: the component built before from the same inputs (same digest)");
        return write_if_changed(out, &bytes);
    }
    let out_abs = std::path::absolute(out)?;
    run(
        Command::new(&python).args(["-m", "bullpen_guest.build", "processor.py", "-o"]).arg(&out_abs).current_dir(dir),
        "install Python 3.9 or newer",
    )?;
    if let Some(cached) = cached {
        remember(&cached, &std::fs::read(&out_abs)?);
    }
    Ok(())
}

/// `$BULLPEN_BUILD_CACHE` (`off`: none), else `~/.cache/bullpen/<what>`.
fn build_cache_dir(what: &str) -> Option<PathBuf> {
    match std::env::var_os("BULLPEN_BUILD_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("bullpen").join(what)),
    }
}

/// Keep a build under its inputs' key; beyond 8 builds (~20 MB each), the
/// least recently made go. A failure only costs the next build its reuse.
fn remember(path: &Path, bytes: &[u8]) {
    let keep = || -> std::io::Result<()> {
        let dir = path.parent().expect("a file in a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        let mut builds: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        builds.sort_by_key(|b| std::cmp::Reverse(b.0));
        for (_, old) in builds.into_iter().skip(8) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    };
    if let Err(e) = keep() {
        eprintln!("bullpen build: cannot keep the build in {} ({e}); the next build makes it again", path.display());
    }
}

/// sha256 of what a Python component is made from: the project's files
/// (not .venv, dist, caches) and the installed packages it can import (the
/// SDK, componentize-py, the user's), by path, size and mtime.
fn python_inputs_key(dir: &Path, python: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(concat!("bullpen ", env!("CARGO_PKG_VERSION"), "\0"));
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or_default();
            if name.starts_with('.') || name == "dist" || name == "__pycache__" {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f)?;
        h.update(format!("{}\0{}\0", f.strip_prefix(dir).unwrap_or(&f).display(), bytes.len()));
        h.update(&bytes);
    }
    const PACKAGES: &str = "import hashlib, os, site, sys\n\
        h = hashlib.sha256(sys.version.encode())\n\
        for top in sorted(set(site.getsitepackages() + [site.getusersitepackages()])):\n\
        \x20   for root, dirs, files in os.walk(top):\n\
        \x20       dirs.sort()\n\
        \x20       for f in sorted(files):\n\
        \x20           if f.endswith('.pyc'): continue\n\
        \x20           st = os.stat(os.path.join(root, f))\n\
        \x20           h.update(f'{root}/{f} {st.st_size} {st.st_mtime_ns}\\n'.encode())\n\
        print(h.hexdigest())";
    let o = Command::new(python).args(["-c", PACKAGES]).current_dir(dir).output()?;
    if !o.status.success() {
        bail!("cannot list {}'s packages: {}", python.display(), String::from_utf8_lossy(&o.stderr));
    }
    h.update(&o.stdout);
    Ok(hex::encode(h.finalize()))
}
