//! The layering ARCHITECTURE.md describes, checked: a module imports only
//! from its own layer or the layers below it, so there are no import
//! circles and `host/` never sees the worker.

use std::path::Path;

/// Each top-level module of the crate and its layer, bottom up. Leaves
/// (layer 0) import nothing of the crate but other leaves.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("conn", 0),
    ("metrics", 0),
    ("span", 0),
    ("telemetry", 0),
    ("bindings", 0),
    ("now_ms", 0),
    ("json", 0),
    ("sandbox", 1),
    ("host", 2),
    ("plugins", 3),
    ("ops", 4),
    ("attempt", 5),
    ("queue", 6),
    ("process", 7),
    ("cli", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `crate::<module>` a source file names outside comments.
fn crate_refs(text: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            refs.push(name);
        }
    }
    refs
}

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_their_layer_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs");
        let Some(own) = layer(top) else { continue }; // lib.rs, main.rs, test-only files
        for name in crate_refs(&std::fs::read_to_string(&file).unwrap()) {
            match layer(&name) {
                Some(l) if l <= own => {}
                Some(_) => wrong.push(format!("{} (layer {own}) imports crate::{name}", rel.display())),
                None => wrong.push(format!("{}: crate::{name} is in no layer (add it to LAYERS)", rel.display())),
            }
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} files checked: is the source tree where this test looks?");
    assert!(wrong.is_empty(), "imports against the layering (ARCHITECTURE.md):\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_a_reference_and_skips_comments() {
    assert_eq!(crate_refs("use crate::queue::Binding; // crate::cli"), vec!["queue"]);
    assert_eq!(crate_refs("/// see [`crate::host`]"), Vec::<String>::new());
    assert_eq!(crate_refs("let x = crate::now_ms() + crate::span::x;"), vec!["now_ms", "span"]);
}
