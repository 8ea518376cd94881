//! Write [bullpen](../../README.md) job processors in Rust.
//!
//! A processor is a function from a [`Job`] to `Result<Outcome, JobError>`,
//! compiled to a WebAssembly component for `wasm32-wasip2`. bullpen runs it
//! once per attempt, in a fresh instance, on jobs from a BullMQ queue.
//!
//! ```no_run
//! use bullpen_guest::{JobError, Job, Outcome};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Email { to: String }
//!
//! fn process(job: &Job) -> Result<Outcome, JobError> {
//!     let email: Email = job.data()?;          // typed data via serde
//!     job.log(format!("sending to {}", email.to))?;
//!     job.progress(50)?;
//!     if email.to.is_empty() {
//!         return Err(JobError::unrecoverable("no recipient"));  // no retries
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
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

// The job-context calls: the component's imports in a component, the
// in-memory job of [`testing`] on the build machine (`cargo test`).
#[cfg(target_arch = "wasm32")]
use bindings::bullpen::processor::job_context as host;
use bindings::bullpen::processor::types as wit;
#[cfg(not(target_arch = "wasm32"))]
use testing::host;

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
    pub fn complete<T: Serialize + ?Sized>(value: &T) -> Result<Outcome, JobError> {
        serde_json::to_string(value)
            .map(Outcome::Completed)
            .map_err(|e| JobError::unrecoverable(format!("return value is not serialisable: {e}")))
    }

    /// Complete the job with a return value that is already JSON text.
    pub fn complete_json(json: impl Into<String>) -> Outcome {
        Outcome::Completed(json.into())
    }
}

/// Why an attempt failed: return it from `process`.
///
/// As in a Node BullMQ worker, any error is a failure: `?` on any
/// `std::error::Error` (an `io::Error`, a `serde_json::Error`, an
/// [`http::HttpError`], your own) turns it into a retryable `JobError`
/// whose failedReason is the error's text, and whose stack (the job's
/// BullMQ `stacktrace` entry) names the file and line of the `?` and the
/// error's `source()` chain. [`JobError::retry_after`] and
/// [`JobError::unrecoverable`] say otherwise. (Like `anyhow::Error`, a
/// `JobError` is not itself a `std::error::Error`, so that `?` takes any
/// error.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    kind: JobErrorKind,
    stack: String,
}

/// What a [`JobError`] does to the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobErrorKind {
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

impl JobError {
    /// A retryable failure.
    #[track_caller]
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::at(JobErrorKind::Retry(reason.into()), "JobError")
    }
    /// A retryable failure that asks for its own delay before the next attempt.
    #[track_caller]
    pub fn retry_after(reason: impl Into<String>, delay_ms: u64) -> Self {
        Self::at(JobErrorKind::RetryAfter { reason: reason.into(), delay_ms }, "JobError")
    }
    /// A failure that must not be retried.
    #[track_caller]
    pub fn unrecoverable(reason: impl Into<String>) -> Self {
        Self::at(JobErrorKind::Unrecoverable(reason.into()), "JobError")
    }
    /// What the failure does to the attempt.
    pub fn kind(&self) -> &JobErrorKind {
        &self.kind
    }
    /// The failedReason this failure records.
    pub fn reason(&self) -> String {
        self.to_string()
    }
    /// The job's `stacktrace` entry for it: `Type: reason`, `    at file:line:col`
    /// (where it was made, or where `?` converted it), then `Caused by:` lines.
    pub fn stack(&self) -> &str {
        &self.stack
    }
    /// True when the worker lost the job's lock: stop and return.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self.kind, JobErrorKind::Host(HostError::LockLost))
    }

    #[track_caller]
    fn at(kind: JobErrorKind, type_name: &str) -> Self {
        let reason = kind_text(&kind);
        let here = std::panic::Location::caller();
        let stack = format!("{type_name}: {reason}\n    at {}:{}:{}", here.file(), here.line(), here.column());
        JobError { kind, stack }
    }
}

fn kind_text(kind: &JobErrorKind) -> String {
    match kind {
        JobErrorKind::Retry(r) | JobErrorKind::Unrecoverable(r) => r.clone(),
        JobErrorKind::RetryAfter { reason, .. } => reason.clone(),
        JobErrorKind::Host(e) => HostErrorDisplay(e).to_string(),
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&kind_text(&self.kind))
    }
}

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

impl<E: std::error::Error + 'static> From<E> for JobError {
    /// Any error, as a thrown Error in a Node processor: retryable, its text
    /// the failedReason. Except JSON that does not fit the expected type: it
    /// will not fit on a retry either, so it is unrecoverable: "unexpected
    /// JSON shape: ..." for valid JSON of another shape (a missing field, a
    /// string for a number), "invalid JSON: ..." for text that is not JSON.
    /// Every SDK says the same.
    #[track_caller]
    fn from(e: E) -> Self {
        let any = &e as &dyn std::any::Any;
        if let Some(h) = any.downcast_ref::<HostError>() {
            // A refused host call: retryable, or nothing at all after a lost lock.
            return JobError::at(JobErrorKind::Host(h.clone()), "HostError");
        }
        let kind = match any.downcast_ref::<serde_json::Error>() {
            Some(j) if j.is_data() => JobErrorKind::Unrecoverable(format!("unexpected JSON shape: {e}")),
            Some(_) => JobErrorKind::Unrecoverable(format!("invalid JSON: {e}")),
            None => JobErrorKind::Retry(e.to_string()),
        };
        let mut err = JobError::at(kind, std::any::type_name::<E>());
        let mut cause = e.source();
        while let Some(c) = cause {
            err.stack.push_str(&format!("\nCaused by: {c}"));
            cause = c.source();
        }
        err
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
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, JobError> {
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
    pub fn update_data<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), JobError> {
        let json = serde_json::to_string(data)?;
        host::update_data(&json)?;
        Ok(())
    }
    /// Report progress (a number or any serialisable value).
    pub fn progress<T: Serialize>(&self, progress: T) -> Result<(), JobError> {
        let json = serde_json::to_string(&progress)?;
        host::update_progress(&json)?;
        Ok(())
    }
    /// Append a line to the job's BullMQ log.
    pub fn log(&self, line: impl AsRef<str>) -> Result<(), JobError> {
        host::log(line.as_ref())?;
        Ok(())
    }
    /// Delay the job until `timestamp_ms` and end the attempt: return the
    /// `Outcome::Moved` this gives. `attemptsMade` does not grow.
    pub fn delay_until(&self, timestamp_ms: u64) -> Result<Outcome, JobError> {
        host::move_to_delayed(timestamp_ms)?;
        Ok(Outcome::Moved)
    }
    /// Rate-limit this job's queue for every worker for `delay_ms` (Node's
    /// `worker.rateLimit(ms)` + `Worker.RateLimitError`) and put the job back
    /// in wait; end the attempt: return the `Outcome::Moved` this gives.
    /// `attemptsMade` does not grow. `delay_ms` must be at least 1.
    pub fn rate_limit(&self, delay_ms: u64) -> Result<Outcome, JobError> {
        host::rate_limit(delay_ms)?;
        Ok(Outcome::Moved)
    }
    /// Put the job back in wait, without a delay (BullMQ's
    /// `job.moveToWait(token)` + `WaitingError`), and end the attempt:
    /// return the `Outcome::Moved` this gives. `attemptsMade` does not grow.
    pub fn move_to_wait(&self) -> Result<Outcome, JobError> {
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
    ) -> Result<String, JobError> {
        let data = serde_json::to_string(data)?;
        let opts = if opts.is_null() { String::new() } else { opts.to_string() };
        Ok(host::add_child(queue, name, &data, &opts)?)
    }
    /// `Some(Outcome::Moved)` when the job now waits for pending children
    /// (return it); `None` when no child is pending (carry on).
    pub fn wait_for_children(&self) -> Result<Option<Outcome>, JobError> {
        Ok(if host::wait_for_children()? { Some(Outcome::Moved) } else { None })
    }
    /// The return values of completed children, keyed by child key
    /// (`prefix:queue:id`), parsed as JSON.
    pub fn children_values(&self) -> Result<Vec<(String, serde_json::Value)>, JobError> {
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
pub fn variable(name: &str) -> Result<String, JobError> {
    use bindings::wasi::config::store;
    #[cfg(target_arch = "wasm32")]
    let got = store::get(name);
    #[cfg(not(target_arch = "wasm32"))]
    let got = testing::host::variable(name);
    match got {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(JobError::unrecoverable(format!(
            "variable `{name}` is not set for this queue (set it with --var {name}=... / --var-env {name}=ENVNAME, \
             or in [queues.variables] of bullpen.toml)"
        ))),
        Err(store::Error::Upstream(e)) | Err(store::Error::Io(e)) => {
            Err(JobError::retry(format!("variable `{name}` could not be read: {e}")))
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
pub fn __run(job: wit::Job, f: fn(&Job) -> Result<Outcome, JobError>) -> Result<wit::Outcome, wit::Failure> {
    let job = Job { inner: job };
    match f(&job) {
        Ok(Outcome::Completed(v)) => Ok(wit::Outcome::Completed(v)),
        Ok(Outcome::Moved) => Ok(wit::Outcome::Moved),
        Err(e) => {
            host::set_stacktrace(&e.stack);
            Err(to_failure(e))
        }
    }
}

/// A `JobError` as the WIT failure.
fn to_failure(e: JobError) -> wit::Failure {
    match e.kind {
        JobErrorKind::Retry(r) => wit::Failure::Retry(r),
        JobErrorKind::RetryAfter { reason, delay_ms } => wit::Failure::RetryAfter(wit::RetryAfter { reason, delay_ms }),
        JobErrorKind::Unrecoverable(r) => wit::Failure::Unrecoverable(r),
        JobErrorKind::Host(h) => wit::Failure::Retry(HostErrorDisplay(&h).to_string()),
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

/// Export `fn(&Job) -> Result<Outcome, JobError>` as this component's processor.
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
