//! A queue's variables and secrets, read by guests through
//! `wasi:config/store` (wasmtime-wasi-config): `[queues.variables]` in
//! bullpen.toml, `--var KEY=VALUE`, `--var-env KEY=ENVNAME`. A guest sees
//! only its own binding's. Values never reach a log line, an error text, a
//! metric or `bullpen run`'s output: they are held in [`Secret`], whose
//! `Debug` prints nothing, and every error names the key, never the value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use wasmtime_wasi_config::WasiConfigVariables;

use crate::error::GrantError;

/// A value that must not be printed.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn new(s: impl Into<Arc<str>>) -> Self {
        Secret(s.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a variable's value comes from.
#[derive(Debug, Clone)]
pub(crate) enum VarSource {
    /// `key = "value"` / `--var KEY=VALUE`.
    Literal(Secret),
    /// `key = { env = "NAME" }` / `--var-env KEY=NAME`: read at start.
    Env(String),
    /// `key = { file = "path" }`: read at start and on SIGHUP (a rotated
    /// secret needs no restart); one trailing newline is dropped (`echo
    /// secret > file` writes one).
    File(PathBuf),
}

impl<'de> Deserialize<'de> for VarSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            env: Option<String>,
            file: Option<PathBuf>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Literal(String),
            From(Table),
        }
        // The literal is never echoed back in an error.
        match Raw::deserialize(d)
            .map_err(|_| D::Error::custom("a variable is a string, { env = \"NAME\" } or { file = \"path\" }"))?
        {
            Raw::Literal(s) => Ok(VarSource::Literal(Secret::new(s))),
            Raw::From(Table { env: Some(e), file: None }) => Ok(VarSource::Env(e)),
            Raw::From(Table { env: None, file: Some(f) }) => Ok(VarSource::File(f)),
            Raw::From(_) => Err(D::Error::custom("a variable table has exactly one of `env` or `file`")),
        }
    }
}

/// `--var KEY=VALUE`: a key and its literal value.
pub(crate) fn parse_var(arg: &str) -> Result<(String, VarSource), String> {
    // The argument may be a secret: the error names only what is wrong.
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), VarSource::Literal(Secret::new(v)))),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// `--var-env KEY=ENVNAME`: a key read from an environment variable.
pub(crate) fn parse_var_env(arg: &str) -> Result<(String, VarSource), String> {
    match arg.split_once('=') {
        Some((k, e)) if !k.is_empty() && !e.is_empty() => Ok((k.to_string(), VarSource::Env(e.to_string()))),
        _ => Err(format!("expected KEY=ENVNAME, got {arg:?}")),
    }
}

/// A binding's variables, resolved, in the form wasmtime-wasi-config serves.
#[derive(Default)]
pub(crate) struct Variables {
    /// Swapped whole by [`reload`](Self::reload); an attempt keeps the
    /// snapshot it first read.
    values: std::sync::RwLock<Arc<WasiConfigVariables>>,
    specs: BTreeMap<String, VarSource>,
    names: Vec<String>,
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variables").field("names", &self.names).finish_non_exhaustive()
    }
}

impl Variables {
    /// Read every source now (environment, files); a missing one stops the
    /// worker at start, naming the key and where it looked.
    pub(crate) fn resolve(specs: &BTreeMap<String, VarSource>) -> Result<Variables, GrantError> {
        Ok(Variables {
            values: std::sync::RwLock::new(Arc::new(Self::read(specs)?)),
            specs: specs.clone(),
            names: specs.keys().cloned().collect(),
        })
    }

    /// The values now, for one attempt.
    pub(crate) fn snapshot(&self) -> Arc<WasiConfigVariables> {
        self.values.read().unwrap().clone()
    }

    /// Read every source again (SIGHUP). A source that cannot be read
    /// keeps all the previous values and says which key.
    pub(crate) fn reload(&self) -> Result<(), GrantError> {
        let fresh = Self::read(&self.specs)?;
        *self.values.write().unwrap() = Arc::new(fresh);
        Ok(())
    }

    /// The number of variables.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn read(specs: &BTreeMap<String, VarSource>) -> Result<WasiConfigVariables, GrantError> {
        let mut values = WasiConfigVariables::new();
        for (key, source) in specs {
            let value: String = match source {
                VarSource::Literal(s) => s.0.to_string(),
                VarSource::Env(name) => {
                    std::env::var(name).map_err(|_| GrantError::VarEnv { key: key.clone(), env: name.clone() })?
                }
                VarSource::File(path) => {
                    let mut v = std::fs::read_to_string(path).map_err(|e| GrantError::VarFile {
                        key: key.clone(),
                        path: path.clone(),
                        // The kind only: an io::Error's text can quote content.
                        cause: e.kind().to_string(),
                    })?;
                    if v.ends_with('\n') {
                        v.pop();
                        if v.ends_with('\r') {
                            v.pop();
                        }
                    }
                    v
                }
            };
            values.insert(key.clone(), value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_show_in_debug_or_errors() {
        let specs: BTreeMap<String, VarSource> =
            toml::from_str("a = \"hunter2\"\nb = { env = \"BULLPEN_TEST_NO_SUCH_VAR\" }\n").unwrap();
        assert!(!format!("{specs:?}").contains("hunter2"));
        let e = Variables::resolve(&specs).unwrap_err();
        assert!(e.to_string().contains("BULLPEN_TEST_NO_SUCH_VAR"), "{e}");
        let only_a: BTreeMap<_, _> = specs.into_iter().filter(|(k, _)| k == "a").collect();
        let v = Variables::resolve(&only_a).unwrap();
        assert!(!format!("{v:?}").contains("hunter2"));
        assert!(parse_var("hunter2").unwrap_err().find("hunter2").is_none());
        let bad: Result<BTreeMap<String, VarSource>, _> = toml::from_str("a = 5\n");
        assert!(bad.is_err());
        let bad: Result<BTreeMap<String, VarSource>, _> = toml::from_str("a = { env = \"X\", file = \"y\" }\n");
        assert!(bad.is_err());
    }

    #[test]
    fn reload_reads_files_again_and_keeps_old_values_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "one\n").unwrap();
        let specs = BTreeMap::from([("s".to_string(), VarSource::File(file.clone()))]);
        let v = Variables::resolve(&specs).unwrap();
        let before = v.snapshot();
        std::fs::write(&file, "two\n").unwrap();
        v.reload().unwrap();
        let after = v.snapshot();
        assert!(!Arc::ptr_eq(&before, &after), "read again");
        std::fs::remove_file(&file).unwrap();
        let e = v.reload().unwrap_err().to_string();
        assert!(e.contains("variable `s`") && !e.contains("two"), "{e}");
        assert!(Arc::ptr_eq(&after, &v.snapshot()), "a failed reload keeps the previous values");
    }
}
