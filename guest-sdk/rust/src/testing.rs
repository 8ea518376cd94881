//! Unit-test a processor with plain `cargo test` on the build machine: no
//! Redis, no WebAssembly. A [`TestJob`] is a job built from JSON data (and,
//! optionally, its name, id, attempts made, options, variables and
//! children's values); [`TestJob::run`] runs `process` once against an
//! in-memory job context and returns a [`TestRun`]: the [`outcome`] and the
//! host calls `process` made, named by their WIT functions (`update-data`,
//! `update-progress`, `log`, `move-to-delayed`, `rate-limit`,
//! `move-to-wait`, `add-child`, `wait-for-children`, `children-values`).
//!
//! ```
//! use bullpen_guest::testing::{Outcome, TestJob};
//! use bullpen_guest::{Job, JobError};
//!
//! fn process(job: &Job) -> Result<bullpen_guest::Outcome, JobError> {
//!     job.log("hello")?;
//!     bullpen_guest::Outcome::complete(&serde_json::json!({ "ok": true }))
//! }
//!
//! let run = TestJob::new(serde_json::json!({ "to": "a@b.c" })).run(process);
//! assert_eq!(run.outcome, Outcome::Completed(serde_json::json!({ "ok": true })));
//! assert_eq!(run.calls[0].name, "log");
//! assert_eq!(run.calls[0].args, vec![serde_json::json!("hello")]);
//! ```
//!
//! The in-memory job answers as `bullpen run` does: `update-data` changes
//! what [`TestRun::data`] shows, a move ends the attempt (a second one is
//! refused with `wrong-state`), `wait-for-children` is true when children
//! were added in this run or [`TestJob::pending_children`] says so. Only
//! in the harness: outbound HTTP (`bullpen_guest::http`) is not available.
//!
//! [`outcome`]: TestRun::outcome

use std::cell::RefCell;

use serde_json::Value;

use crate::bindings::bullpen::processor::types as wit;
use crate::{HostError, Job, JobError};

/// A job to run a processor on.
#[derive(Debug, Clone)]
pub struct TestJob {
    job: wit::Job,
    variables: Vec<(String, String)>,
    children_values: Vec<(String, String)>,
    pending_children: bool,
}

impl TestJob {
    /// A job with this data, named `test`, id `1`, queue `test`, first attempt.
    pub fn new(data: Value) -> Self {
        Self::from_json(data.to_string())
    }

    /// A job whose data is this JSON text, as it is stored in Redis.
    pub fn from_json(data: impl Into<String>) -> Self {
        TestJob {
            job: wit::Job {
                id: "1".into(),
                name: "test".into(),
                queue: "test".into(),
                data: data.into(),
                opts: "{}".into(),
                attempts_made: 0,
                attempts_started: 1,
                timestamp: 0,
                progress: "0".into(),
                parent: None,
            },
            variables: Vec::new(),
            children_values: Vec::new(),
            pending_children: false,
        }
    }

    /// The job name.
    pub fn name(mut self, name: &str) -> Self {
        self.job.name = name.into();
        self
    }
    /// The job id.
    pub fn id(mut self, id: &str) -> Self {
        self.job.id = id.into();
        self
    }
    /// Attempts that ended before this one (`attemptsMade`); attemptsStarted follows.
    pub fn attempts_made(mut self, n: u32) -> Self {
        self.job.attempts_made = n;
        self.job.attempts_started = n + 1;
        self
    }
    /// The job options (BullMQ field names).
    pub fn opts(mut self, opts: Value) -> Self {
        self.job.opts = opts.to_string();
        self
    }
    /// A queue variable ([`crate::variable`]).
    pub fn variable(mut self, name: &str, value: &str) -> Self {
        self.variables.push((name.into(), value.into()));
        self
    }
    /// What `children-values` returns: (child key, return value) pairs.
    pub fn children_values(mut self, values: Vec<(String, Value)>) -> Self {
        self.children_values = values.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        self
    }
    /// Children added by an earlier attempt are still pending:
    /// `wait-for-children` answers true.
    pub fn pending_children(mut self, pending: bool) -> Self {
        self.pending_children = pending;
        self
    }

    /// Run `process` once on this job.
    pub fn run(&self, process: fn(&Job) -> Result<crate::Outcome, JobError>) -> TestRun {
        let state = State {
            data: self.job.data.clone(),
            variables: self.variables.clone(),
            children_values: self.children_values.clone(),
            pending_children: self.pending_children,
            ..State::default()
        };
        let previous = STATE.with(|s| s.replace(Some(state)));
        let result = crate::__run(self.job.clone(), process);
        let state = STATE.with(|s| s.replace(previous)).expect("set above");
        let outcome = match result {
            Ok(wit::Outcome::Completed(json)) => {
                Outcome::Completed(serde_json::from_str(&json).unwrap_or(Value::String(json)))
            }
            Ok(wit::Outcome::Moved) => match state.moved {
                Some(to) => Outcome::Moved(to),
                None => Outcome::Failed {
                    kind: FailureKind::Retry,
                    reason: "processor returned `moved` but no host call moved the job".into(),
                    delay_ms: None,
                    stack: None,
                },
            },
            Err(f) => {
                let (kind, reason, delay_ms) = match f {
                    wit::Failure::Retry(r) => (FailureKind::Retry, r, None),
                    wit::Failure::RetryAfter(r) => (FailureKind::RetryAfter, r.reason, Some(r.delay_ms)),
                    wit::Failure::Unrecoverable(r) => (FailureKind::Unrecoverable, r, None),
                };
                Outcome::Failed { kind, reason, delay_ms, stack: state.stack.clone() }
            }
        };
        TestRun { outcome, calls: state.calls, data: serde_json::from_str(&state.data).unwrap_or(Value::Null) }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRun {
    /// How the attempt ended.
    pub outcome: Outcome,
    /// The host calls, in order.
    pub calls: Vec<HostCall>,
    /// The job data at the end (as `update-data` left it).
    pub data: Value,
}

impl TestRun {
    /// The calls named `name` (a WIT function name), in order.
    pub fn calls_named(&self, name: &str) -> Vec<&HostCall> {
        self.calls.iter().filter(|c| c.name == name).collect()
    }
    /// The lines `process` logged.
    pub fn logs(&self) -> Vec<String> {
        self.calls_named("log").iter().filter_map(|c| c.args[0].as_str().map(String::from)).collect()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completed with this return value.
    Completed(Value),
    /// Failed: how, why (the failedReason), the delay asked for
    /// (`retry-after`), and the stacktrace entry the SDK sent.
    Failed { kind: FailureKind, reason: String, delay_ms: Option<u64>, stack: Option<String> },
    /// A host call moved the job: `move-to-delayed`, `rate-limit`,
    /// `move-to-wait` or `wait-for-children`.
    Moved(&'static str),
}

/// The WIT `failure` case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `retry`
    Retry,
    /// `retry-after`
    RetryAfter,
    /// `unrecoverable`
    Unrecoverable,
}

/// One host call: its WIT function name and its arguments (JSON-text
/// arguments parsed: `update-data`'s data, `add-child`'s data and opts).
#[derive(Debug, Clone, PartialEq)]
pub struct HostCall {
    /// `update-data`, `log`, `add-child`, ...
    pub name: &'static str,
    /// The arguments in WIT order.
    pub args: Vec<Value>,
}

#[derive(Default)]
struct State {
    data: String,
    variables: Vec<(String, String)>,
    children_values: Vec<(String, String)>,
    pending_children: bool,
    calls: Vec<HostCall>,
    moved: Option<&'static str>,
    children: u32,
    stack: Option<String>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The job-context calls on the in-memory job (the SDK's `host` outside
/// a component).
#[doc(hidden)]
pub mod host {
    use super::*;

    fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            let state = s.as_mut().expect(
                "a job-context call outside bullpen_guest::testing::TestJob::run (a processor's host calls \
                 work only inside a component or a test run)",
            );
            f(state)
        })
    }

    fn json(text: &str) -> Result<Value, HostError> {
        serde_json::from_str(text).map_err(|e| HostError::Invalid(format!("not valid JSON: {e}")))
    }

    fn record(name: &'static str, args: Vec<Value>) -> Result<(), HostError> {
        with(|s| {
            s.calls.push(HostCall { name, args });
            Ok(())
        })
    }

    fn movable(to: &'static str) -> Result<(), HostError> {
        with(|s| match s.moved {
            Some(_) => Err(HostError::WrongState("the job was already moved in this attempt".into())),
            None => {
                s.moved = Some(to);
                Ok(())
            }
        })
    }

    pub fn update_data(data: &str) -> Result<(), HostError> {
        let v = json(data)?;
        record("update-data", vec![v])?;
        with(|s| s.data = data.to_string());
        Ok(())
    }
    pub fn update_progress(progress: &str) -> Result<(), HostError> {
        record("update-progress", vec![json(progress)?])
    }
    pub fn log(line: &str) -> Result<(), HostError> {
        record("log", vec![Value::from(line)])
    }
    pub fn move_to_delayed(timestamp_ms: u64) -> Result<(), HostError> {
        record("move-to-delayed", vec![Value::from(timestamp_ms)])?;
        movable("delayed")
    }
    pub fn rate_limit(delay_ms: u64) -> Result<(), HostError> {
        record("rate-limit", vec![Value::from(delay_ms)])?;
        if delay_ms == 0 {
            return Err(HostError::Invalid("rate-limit delay-ms is 0; it must be at least 1".into()));
        }
        movable("wait")
    }
    pub fn move_to_wait() -> Result<(), HostError> {
        record("move-to-wait", vec![])?;
        movable("wait")
    }
    pub fn add_child(queue: &str, name: &str, data: &str, opts: &str) -> Result<String, HostError> {
        let opts_value = if opts.trim().is_empty() { Value::Null } else { json(opts)? };
        record("add-child", vec![Value::from(queue), Value::from(name), json(data)?, opts_value.clone()])?;
        with(|s| {
            s.children += 1;
            Ok(opts_value
                .get("jobId")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or_else(|| format!("child-{}", s.children)))
        })
    }
    pub fn wait_for_children() -> Result<bool, HostError> {
        record("wait-for-children", vec![])?;
        let waits = with(|s| s.children > 0 || s.pending_children);
        if waits {
            movable("waiting-children")?;
        }
        Ok(waits)
    }
    pub fn children_values() -> Result<Vec<(String, String)>, HostError> {
        record("children-values", vec![])?;
        Ok(with(|s| s.children_values.clone()))
    }
    pub fn set_stacktrace(stack: &str) {
        with(|s| s.stack = Some(stack.to_string()));
    }
    pub fn variable(name: &str) -> Result<Option<String>, crate::bindings::wasi::config::store::Error> {
        Ok(with(|s| s.variables.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())))
    }
}
