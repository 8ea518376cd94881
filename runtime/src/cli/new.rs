//! `bullpen new NAME --lang rust|go|js|python`: a ready processor project in
//! a new folder, from the templates in `runtime/templates/` (compiled in):
//! the processor (it completes on any JSON data), its build file, a README
//! and a unit test that uses the SDK's test harness. `bullpen build` in the
//! folder makes the component.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct NewArgs {
    /// The project's name: also its folder (created here), its package and
    /// its component's file name. Letters, digits, '-' and '_', starting with a letter.
    pub(crate) name: String,
    /// The processor's language.
    #[arg(long, value_enum)]
    pub(crate) lang: Lang,
    /// Take the SDK from this folder (a bullpen checkout's `guest-sdk/`)
    /// instead of its registry (crates.io, npm, the Go module proxy, PyPI),
    /// e.g. while the SDKs are not published.
    #[arg(long, value_name = "DIR")]
    pub(crate) sdk: Option<PathBuf>,
}

/// A guest language `bullpen new` and `bullpen build` know.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Rust,
    Go,
    Js,
    Python,
}

impl Lang {
    fn language(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Go => "Go",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }
}

type Files = &'static [(&'static str, &'static str)];

const RUST: Files = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs.tmpl")),
    (".gitignore", include_str!("../../templates/rust/gitignore.tmpl")),
];
const GO: Files = &[
    ("go.mod", include_str!("../../templates/go/go.mod.tmpl")),
    ("main.go", include_str!("../../templates/go/main.go.tmpl")),
    ("main_test.go", include_str!("../../templates/go/main_test.go.tmpl")),
    (".gitignore", include_str!("../../templates/go/gitignore.tmpl")),
];
const JS: Files = &[
    ("package.json", include_str!("../../templates/js/package.json.tmpl")),
    ("src/processor.js", include_str!("../../templates/js/src/processor.js.tmpl")),
    ("test/processor.test.js", include_str!("../../templates/js/test/processor.test.js.tmpl")),
    (".gitignore", include_str!("../../templates/js/gitignore.tmpl")),
];
const PYTHON: Files = &[
    ("processor.py", include_str!("../../templates/python/processor.py.tmpl")),
    ("test_processor.py", include_str!("../../templates/python/test_processor.py.tmpl")),
    ("requirements.txt", include_str!("../../templates/python/requirements.txt.tmpl")),
    (".gitignore", include_str!("../../templates/python/gitignore.tmpl")),
];
const README: &str = include_str!("../../templates/README.md.tmpl");

/// The README's language-specific lines: what is where, set-up, the test.
fn readme_parts(lang: Lang) -> (&'static str, &'static str, &'static str) {
    match lang {
        Lang::Rust => (
            "`src/lib.rs` is the processor and its unit test; `Cargo.toml` its build file. Needs the \
             `wasm32-wasip2` target (`rustup target add wasm32-wasip2`).",
            "",
            "cargo test                                      # the unit test: no Redis, no Wasm",
        ),
        Lang::Go => (
            "`main.go` is the processor, `main_test.go` its unit test, `go.mod` its build file. Needs Go \
             1.24 or newer (`GOOS=wasip1`); `bullpen build` runs `go build -buildmode=c-shared` and makes \
             the component.",
            "",
            "go test ./...                                   # the unit test: no Redis, no Wasm",
        ),
        Lang::Js => (
            "`src/processor.js` is the processor (package.json's `main`), `test/processor.test.js` its \
             unit test, `package.json` its build file. `bullpen build` runs `npm install` the first time, \
             then the SDK's `bullpen-build` (esbuild + componentize-js).",
            "",
            "npm test                                        # the unit test (node --test): no Redis, no Wasm",
        ),
        Lang::Python => (
            "`processor.py` is the processor, `test_processor.py` its unit test, `requirements.txt` \
             what it needs (the SDK, which brings componentize-py, and pytest).",
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n",
            ".venv/bin/python -m pytest                      # the unit test: no Redis, no Wasm",
        ),
    }
}

/// A name every toolchain accepts as a package and file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!(
            "{name:?} cannot name a project: use letters, digits, '-' and '_', starting with a letter (e.g. \
             send-welcome)"
        );
    }
    Ok(())
}

/// The project's files, with `{{name}}` and the README's parts filled in.
fn render(lang: Lang, name: &str) -> Vec<(&'static str, String)> {
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Go => GO,
        Lang::Js => JS,
        Lang::Python => PYTHON,
    };
    let mut out: Vec<(&'static str, String)> =
        files.iter().map(|(path, text)| (*path, text.replace("{{name}}", name))).collect();
    let (files_line, setup, test) = readme_parts(lang);
    let readme = README
        .replace("{{name}}", name)
        .replace("{{language}}", lang.language())
        .replace("{{files}}", files_line)
        .replace("{{setup}}", setup)
        .replace("{{test}}", test);
    out.push(("README.md", readme));
    out
}

pub(crate) fn new(a: NewArgs) -> anyhow::Result<()> {
    check_name(&a.name)?;
    let dir = PathBuf::from(&a.name);
    if dir.exists() {
        bail!("{} exists already: bullpen new writes a new folder; choose another name", dir.display());
    }
    let mut files = render(a.lang, &a.name);
    if let Some(sdk) = &a.sdk {
        use_local_sdk(&mut files, a.lang, sdk)?;
    }
    write_project(&dir, &files)?;
    eprintln!(
        "created {} ({} processor). Next:\n  cd {}\n  bullpen build\n  bullpen run dist/{}.wasm --data '{{\"to\":\"ada\"}}'",
        dir.display(),
        a.lang.language(),
        a.name,
        a.name
    );
    Ok(())
}

/// Point the project's build file at the SDK in `sdk` (`<sdk>/<language>`).
fn use_local_sdk(files: &mut [(&'static str, String)], lang: Lang, sdk: &Path) -> anyhow::Result<()> {
    let sub = match lang {
        Lang::Rust => "rust",
        Lang::Go => "go",
        Lang::Js => "js",
        Lang::Python => "python",
    };
    let dir = std::path::absolute(sdk.join(sub))?;
    if !dir.is_dir() {
        bail!("--sdk {}: no {sub}/ folder in it; give a bullpen checkout's guest-sdk folder", sdk.display());
    }
    let d = dir.display();
    let file = match lang {
        Lang::Rust => "Cargo.toml",
        Lang::Go => "go.mod",
        Lang::Js => "package.json",
        Lang::Python => "requirements.txt",
    };
    for (_, text) in files.iter_mut().filter(|(path, _)| *path == file) {
        *text = match lang {
            Lang::Rust => format!("{text}\n[patch.crates-io]\nbullpen-guest = {{ path = {:?} }}\n", d.to_string()),
            Lang::Go => format!("{text}\nreplace bullpen.dev/guest => {d}\n"),
            Lang::Js => {
                text.replace("\"bullpen-guest\": \"^0.1.0\"", &format!("\"bullpen-guest\": {:?}", format!("file:{d}")))
            }
            Lang::Python => text.replace("bullpen-guest==0.1.0", &format!("bullpen-guest @ file://{d}")),
        };
    }
    Ok(())
}

fn write_project(dir: &Path, files: &[(&'static str, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["welcome", "send-welcome", "a_1"] {
            check_name(good).unwrap();
        }
        for bad in ["", "1st", "-x", "a b", "a/b", "ünï", "a.b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Go, Lang::Js, Lang::Python] {
            for (path, text) in render(lang, "send-welcome") {
                assert!(!text.contains("{{"), "{lang:?} {path}: {text}");
            }
        }
    }

    #[test]
    fn sdk_points_the_build_file_at_a_local_sdk() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        for (lang, file, needle) in [
            (Lang::Rust, "Cargo.toml", "[patch.crates-io]"),
            (Lang::Go, "go.mod", "replace bullpen.dev/guest => "),
            (Lang::Js, "package.json", "\"bullpen-guest\": \"file:/"),
        ] {
            let mut files = render(lang, "x");
            use_local_sdk(&mut files, lang, &sdk).unwrap();
            let text = &files.iter().find(|(p, _)| *p == file).unwrap().1;
            assert!(text.contains(needle), "{lang:?}: {text}");
        }
        assert!(use_local_sdk(&mut render(Lang::Go, "x"), Lang::Go, Path::new("/nonexistent")).is_err());
    }
}
