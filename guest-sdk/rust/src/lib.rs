//! Write [bullpen](../../README.md) job processors in Rust.
//!
//! A processor is a function from a [`Job`] to `Result<Outcome, Error>`,
//! compiled to a WebAssembly component for `wasm32-wasip2`. bullpen runs it
//! once per attempt, in a fresh instance, on jobs from a BullMQ queue.
//!
//! ```no_run
//! use bullpen_guest::{Error, Job, Outcome};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Email { to: String }
//!
//! fn process(job: &Job) -> Result<Outcome, Error> {
//!     let email: Email = job.data()?;          // typed data via serde
//!     job.log(format!("sending to {}", email.to))?;
//!     job.progress(50)?;
//!     if email.to.is_empty() {
//!         return Err(Error::unrecoverable("no recipient"));  // no retries
//!     }
//!     Outcome::complete(&serde_json::json!({ "sent": true }))
//! }
//!
//! bullpen_guest::export_processor!(process);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! in `target/wasm32-wasip2/release/` is the component to give to
//! `bullpen worker --plugin`.
//!
//! Every host call is checked against the job's lock token by the host. When
//! the worker lost the lock, calls return [`HostError::LockLost`]; return the
//! error with `?` and the host abandons the attempt without writing anything.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// Raw bindings generated from `wit/processor.wit`. Prefer the safe API.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "processor",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_processor_world",
        default_bindings_module: "bullpen_guest::bindings",
        additional_derives: [PartialEq, Eq],
        // Types holding resource handles cannot compare.
        additional_derives_ignore: ["stream-error"],
        // wasi:http and wasi:config (imported by the world) from the same
        // WIT: one copy of their bindings, the versions the host links.
        generate_all,
    });
}

/// Bindings for the `processor-with-backoff` world, sharing the types above.
#[doc(hidden)]
pub mod backoff_bindings {
    wit_bindgen::generate!({
        world: "processor-with-backoff",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_processor_with_backoff_world",
        default_bindings_module: "bullpen_guest::backoff_bindings",
        with: {
            "bullpen:processor/types@0.1.0": crate::bindings::bullpen::processor::types,
            "bullpen:processor/job-context@0.1.0": crate::bindings::bullpen::processor::job_context,
            "wasi:http/types@0.2.12": crate::bindings::wasi::http::types,
            "wasi:http/outgoing-handler@0.2.12": crate::bindings::wasi::http::outgoing_handler,
            "wasi:io/error@0.2.12": crate::bindings::wasi::io::error,
            "wasi:io/poll@0.2.12": crate::bindings::wasi::io::poll,
            "wasi:io/streams@0.2.12": crate::bindings::wasi::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::wasi::clocks::monotonic_clock,
            "wasi:config/store@0.2.0-rc.1": crate::bindings::wasi::config::store,
        },
    });
}

pub mod http;

use bindings::bullpen::processor::job_context as host;
use bindings::bullpen::processor::types as wit;

pub use wit::JobError as HostError;

/// The parent of a child job in a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's job id.
    pub id: String,
    /// The parent's queue name.
    pub queue: String,
}

/// The job being processed: a snapshot taken when the attempt started, plus
/// the host calls that act on it.
#[derive(Debug, Clone)]
pub struct Job {
    inner: wit::Job,
}

/// How a successful attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job completed with this return value (JSON text).
    Completed(String),
    /// A host call already moved the job (delayed, back to wait, waiting
    /// for children).
    Moved,
}

impl Outcome {
    /// Complete the job with `value` serialised as its return value.
    pub fn complete<T: Serialize + ?Sized>(value: &T) -> Result<Outcome, Error> {
        serde_json::to_string(value)
            .map(Outcome::Completed)
            .map_err(|e| Error::unrecoverable(format!("return value is not serialisable: {e}")))
    }

    /// Complete the job with a return value that is already JSON text.
    pub fn complete_json(json: impl Into<String>) -> Outcome {
        Outcome::Completed(json.into())
    }
}

/// Why an attempt failed, or why a host call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Retry per the job's `attempts`/`backoff`; else fail with this reason.
    Retry(String),
    /// Retry after `delay_ms` (the guest's own countdown), if attempts remain.
    RetryAfter {
        /// The failedReason of this attempt.
        reason: String,
        /// Milliseconds until the job may run again.
        delay_ms: u64,
    },
    /// Fail now, whatever `attempts` says.
    Unrecoverable(String),
    /// A host call was refused. Returned from `process`, it fails the attempt
    /// retryably (and after a lost lock the host ignores it and writes nothing).
    Host(HostError),
}

impl Error {
    /// A retryable failure.
    pub fn retry(reason: impl Into<String>) -> Self {
        Error::Retry(reason.into())
    }
    /// A retryable failure that asks for its own delay before the next attempt.
    pub fn retry_after(reason: impl Into<String>, delay_ms: u64) -> Self {
        Error::RetryAfter { reason: reason.into(), delay_ms }
    }
    /// A failure that must not be retried.
    pub fn unrecoverable(reason: impl Into<String>) -> Self {
        Error::Unrecoverable(reason.into())
    }
    /// True when the worker lost the job's lock: stop and return.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, Error::Host(HostError::LockLost))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Retry(r) | Error::Unrecoverable(r) => f.write_str(r),
            Error::RetryAfter { reason, .. } => f.write_str(reason),
            Error::Host(e) => fmt::Display::fmt(&HostErrorDisplay(e), f),
        }
    }
}

impl std::error::Error for Error {}

struct HostErrorDisplay<'a>(&'a HostError);
impl fmt::Display for HostErrorDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            HostError::LockLost => f.write_str("lock lost: this worker no longer owns the job"),
            HostError::WrongState(s) => write!(f, "job in wrong state: {s}"),
            HostError::Invalid(s) => write!(f, "invalid argument: {s}"),
            HostError::Unavailable(s) => write!(f, "host unavailable: {s}"),
        }
    }
}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        Error::Host(e)
    }
}

impl From<serde_json::Error> for Error {
    /// JSON that does not fit the expected type will not fit on a retry
    /// either, so it is unrecoverable: "unexpected JSON shape: ..." for
    /// valid JSON of another shape (a missing field, a string for a number),
    /// "invalid JSON: ..." for text that is not JSON. Every SDK says the same.
    fn from(e: serde_json::Error) -> Self {
        if e.is_data() {
            Error::Unrecoverable(format!("unexpected JSON shape: {e}"))
        } else {
            Error::Unrecoverable(format!("invalid JSON: {e}"))
        }
    }
}

impl Job {
    /// The BullMQ job id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// The job name given by the producer.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The queue the job came from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// The job data, deserialised into `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_str(&self.inner.data)?)
    }
    /// The job data as JSON text, exactly as stored in Redis.
    pub fn data_json(&self) -> &str {
        &self.inner.data
    }
    /// The job options as JSON text (BullMQ field names).
    pub fn opts_json(&self) -> &str {
        &self.inner.opts
    }
    /// Attempts that ended before this one (BullMQ `attemptsMade`).
    pub fn attempts_made(&self) -> u32 {
        self.inner.attempts_made
    }
    /// Times the job was started, this one included (`attemptsStarted`).
    pub fn attempts_started(&self) -> u32 {
        self.inner.attempts_started
    }
    /// When the job was added, ms since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        self.inner.timestamp
    }
    /// The last reported progress as JSON text.
    pub fn progress_json(&self) -> &str {
        &self.inner.progress
    }
    /// The parent job, if this job is a child in a flow.
    pub fn parent(&self) -> Option<ParentRef> {
        self.inner.parent.as_ref().map(|p| ParentRef { id: p.id.clone(), queue: p.queue.clone() })
    }

    /// Replace the job's data (seen by later attempts): the step pattern's memory.
    pub fn update_data<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), Error> {
        let json = serde_json::to_string(data)?;
        host::update_data(&json)?;
        Ok(())
    }
    /// Report progress (a number or any serialisable value).
    pub fn progress<T: Serialize>(&self, progress: T) -> Result<(), Error> {
        let json = serde_json::to_string(&progress)?;
        host::update_progress(&json)?;
        Ok(())
    }
    /// Append a line to the job's BullMQ log.
    pub fn log(&self, line: impl AsRef<str>) -> Result<(), Error> {
        host::log(line.as_ref())?;
        Ok(())
    }
    /// Delay the job until `timestamp_ms` and end the attempt: return the
    /// `Outcome::Moved` this gives. `attemptsMade` does not grow.
    pub fn delay_until(&self, timestamp_ms: u64) -> Result<Outcome, Error> {
        host::move_to_delayed(timestamp_ms)?;
        Ok(Outcome::Moved)
    }
    /// Rate-limit this job's queue for every worker for `delay_ms` (Node's
    /// `worker.rateLimit(ms)` + `Worker.RateLimitError`) and put the job back
    /// in wait; end the attempt: return the `Outcome::Moved` this gives.
    /// `attemptsMade` does not grow. `delay_ms` must be at least 1.
    pub fn rate_limit(&self, delay_ms: u64) -> Result<Outcome, Error> {
        host::rate_limit(delay_ms)?;
        Ok(Outcome::Moved)
    }
    /// Put the job back in wait, without a delay (BullMQ's
    /// `job.moveToWait(token)` + `WaitingError`), and end the attempt:
    /// return the `Outcome::Moved` this gives. `attemptsMade` does not grow.
    pub fn move_to_wait(&self) -> Result<Outcome, Error> {
        host::move_to_wait()?;
        Ok(Outcome::Moved)
    }
    /// Add a child job to `queue` whose parent is this job; returns its id.
    /// `opts` are BullMQ job options (e.g. `json!({"jobId": "..."})`).
    pub fn add_child<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        name: &str,
        data: &T,
        opts: serde_json::Value,
    ) -> Result<String, Error> {
        let data = serde_json::to_string(data)?;
        let opts = if opts.is_null() { String::new() } else { opts.to_string() };
        Ok(host::add_child(queue, name, &data, &opts)?)
    }
    /// `Some(Outcome::Moved)` when the job now waits for pending children
    /// (return it); `None` when no child is pending (carry on).
    pub fn wait_for_children(&self) -> Result<Option<Outcome>, Error> {
        Ok(if host::wait_for_children()? { Some(Outcome::Moved) } else { None })
    }
    /// The return values of completed children, keyed by child key
    /// (`prefix:queue:id`), parsed as JSON.
    pub fn children_values(&self) -> Result<Vec<(String, serde_json::Value)>, Error> {
        host::children_values()?
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str::<serde_json::Value>(&v)?)))
            .collect()
    }
}

/// The queue's variable `name` (`--var`, `[queues.variables]` in
/// bullpen.toml): configuration and secrets. A guest reads only its own
/// queue's. Missing, it is an unrecoverable error naming the variable and
/// how to set it (retrying would not make it appear).
pub fn variable(name: &str) -> Result<String, Error> {
    use bindings::wasi::config::store;
    match store::get(name) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(Error::Unrecoverable(format!(
            "variable `{name}` is not set for this queue (set it with --var {name}=... / --var-env {name}=ENVNAME, \
             or in [queues.variables] of bullpen.toml)"
        ))),
        Err(store::Error::Upstream(e)) | Err(store::Error::Io(e)) => {
            Err(Error::Retry(format!("variable `{name}` could not be read: {e}")))
        }
    }
}

/// What a custom backoff strategy decides after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Retry after this many milliseconds (0 = at once).
    DelayMs(u64),
    /// Do not retry: fail the job now (BullMQ's custom backoff `-1`).
    GiveUp,
}

/// Runs a user backoff function as the component's `backoff` export. Used by
/// [`export_processor!`]; not part of the API.
#[doc(hidden)]
pub fn __backoff(
    strategy: String,
    attempts_made: u32,
    reason: String,
    job: wit::Job,
    f: fn(&str, u32, &str, &Job) -> Backoff,
) -> wit::BackoffDecision {
    match f(&strategy, attempts_made, &reason, &Job { inner: job }) {
        Backoff::DelayMs(ms) => wit::BackoffDecision::DelayMs(ms),
        Backoff::GiveUp => wit::BackoffDecision::GiveUp,
    }
}

/// Runs a user function as the component's `process` export. Used by
/// [`export_processor!`]; not part of the API.
#[doc(hidden)]
pub fn __run(job: wit::Job, f: fn(&Job) -> Result<Outcome, Error>) -> Result<wit::Outcome, wit::Failure> {
    let job = Job { inner: job };
    match f(&job) {
        Ok(Outcome::Completed(v)) => Ok(wit::Outcome::Completed(v)),
        Ok(Outcome::Moved) => Ok(wit::Outcome::Moved),
        Err(Error::Retry(r)) => Err(wit::Failure::Retry(r)),
        Err(Error::RetryAfter { reason, delay_ms }) => {
            Err(wit::Failure::RetryAfter(wit::RetryAfter { reason, delay_ms }))
        }
        Err(Error::Unrecoverable(r)) => Err(wit::Failure::Unrecoverable(r)),
        Err(e @ Error::Host(_)) => Err(wit::Failure::Retry(e.to_string())),
    }
}

/// The `process` export both worlds share. Used by [`export_processor!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __process_export {
    ($f:path) => {
        fn process(
            job: $crate::bindings::bullpen::processor::types::Job,
        ) -> ::core::result::Result<
            $crate::bindings::bullpen::processor::types::Outcome,
            $crate::bindings::bullpen::processor::types::Failure,
        > {
            $crate::__run(job, $f)
        }
    };
}

/// Export `fn(&Job) -> Result<Outcome, Error>` as this component's processor.
///
/// With `backoff = f`, also export a custom backoff strategy
/// `fn(strategy: &str, attempts_made: u32, reason: &str, job: &Job) -> Backoff`,
/// called when a job whose `opts.backoff.type` is not `fixed`/`exponential`
/// fails retryably (`attempts_made` counts the failed attempt).
#[macro_export]
macro_rules! export_processor {
    ($f:path, backoff = $b:path) => {
        struct __BullpenProcessor;
        impl $crate::backoff_bindings::Guest for __BullpenProcessor {
            $crate::__process_export!($f);
            fn backoff(
                strategy: ::std::string::String,
                attempts_made: u32,
                reason: ::std::string::String,
                job: $crate::bindings::bullpen::processor::types::Job,
            ) -> $crate::bindings::bullpen::processor::types::BackoffDecision {
                $crate::__backoff(strategy, attempts_made, reason, job, $b)
            }
        }
        $crate::backoff_bindings::__export_processor_with_backoff_world!(__BullpenProcessor with_types_in $crate::backoff_bindings);
    };
    ($f:path) => {
        struct __BullpenProcessor;
        impl $crate::bindings::Guest for __BullpenProcessor {
            $crate::__process_export!($f);
        }
        $crate::bindings::__export_processor_world!(__BullpenProcessor with_types_in $crate::bindings);
    };
}
