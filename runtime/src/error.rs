//! Errors, one enum per boundary, each variant documented by its cause.
//! Each states its cause once: a variant that wraps a source error either
//! shows it in its text or returns it from `source()`, never both.

use std::path::PathBuf;

/// Loading a processor component failed. The message is shown to operators
/// (at `bullpen worker` start, or when a hot swap is refused), so each
/// variant says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read (missing, permissions, a directory).
    #[error("cannot read plugin {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    /// The bytes do not start with the Wasm magic number (or are truncated
    /// before the header ends).
    #[error("{0} is not a WebAssembly file (no `\\0asm` header)")]
    NotWasm(String),
    /// A core Wasm module, not a component.
    #[error(
        "{0} is a core WebAssembly module, not a component: `bullpen build` in the processor's folder makes \
         the component in every language (Rust for wasm32-wasip2, JavaScript with bullpen-build, Go with \
         -buildmode=c-shared, then componentized); for a Go module built already: \
         `bullpen-componentize {0} -o <out>.wasm`"
    )]
    CoreModule(String),
    /// wasmtime refused to compile the component (truncated, corrupt, or
    /// uses features the engine does not enable).
    #[error("{what} is not a valid component: {reason}")]
    Compile { what: String, reason: String },
    /// Instantiating the component trapped (its start code hit `unreachable`,
    /// ran out of bounds, or ran for more than a second), so every attempt
    /// would fail.
    #[error("{what} traps when instantiated: {reason}")]
    InstantiationTrap { what: String, reason: String },
    /// The component compiled but does not fit the `bullpen:processor`
    /// world: it imports something the host does not provide, or does not
    /// export `process` with the right type.
    #[error("{what} does not match the bullpen:processor@0.1.0 world: {reason}")]
    WorldMismatch { what: String, reason: String },
}

/// A job that cannot be given to a guest at all: it fails for good before
/// any instance is made (no attempt could do better). Its Display is the
/// job's failedReason.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The job's `data` field is not valid JSON (written by something other
    /// than a BullMQ producer); `start` is its first 40 bytes.
    #[error("job data is not valid JSON: {cause} (data starts with {start:?})")]
    BadData { cause: serde_json::Error, start: String },
    /// The job's data is valid JSON nested deeper than bullpen reads
    /// (`json::MAX_DEPTH`); a Node producer adds such data without complaint.
    #[error("job data {}", crate::json::JsonProblem::TooDeep)]
    TooDeep,
    /// The job hash has no `data` field at all.
    #[error("job data is missing: the job hash has no `data` field")]
    MissingData,
    /// The job's data is larger than the binding's payload limit.
    #[error("job data is {bytes} bytes; the limit is {limit}")]
    DataTooLarge { bytes: usize, limit: usize },
}

/// A binding's grants (outbound HTTP, variables) cannot be set up: the
/// worker stops at start, naming the flag or key. No variant carries a
/// variable's value.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// An `--allow-outbound` / `allowed_outbound_hosts` pattern that does not parse.
    #[error(
        "--allow-outbound {pattern:?} is not a valid pattern: {why} \
         (examples: https://api.example.com, https://*.example.com, http://127.0.0.1:8080)"
    )]
    Pattern { pattern: String, why: String },
    /// An `--http-ca` file that cannot be read.
    #[error("cannot read --http-ca {path}: {cause}")]
    CaFile { path: PathBuf, cause: std::io::Error },
    /// An `--http-ca` file with no PEM certificate in it.
    #[error("--http-ca {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    CaEmpty { path: PathBuf },
    /// A variable read from an environment variable that is not set.
    #[error("variable `{key}`: the environment variable {env} is not set")]
    VarEnv { key: String, env: String },
    /// A variable read from a file that cannot be read (`cause`: the I/O
    /// error's kind only, never text that could quote the file).
    #[error("variable `{key}`: cannot read {path}: {cause}")]
    VarFile { key: String, path: PathBuf, cause: String },
}
