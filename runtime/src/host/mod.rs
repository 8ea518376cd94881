//! The `job-context` host functions and the store data they run on.
//!
//! Each function acts on the current job only, and each one that writes
//! job state is checked against the job's lock token first
//! ([`redis_job`]); `bullpen run` answers the same calls from a job held in
//! memory ([`local`]). Both pass the same argument checks (below), so a
//! guest that passes `bullpen run` passes a worker's checks too.
//!
//! This layer never imports the worker: what an attempt's outcome means for
//! BullMQ is decided above it (`attempt`, `queue`).

use std::sync::Arc;

use bullmq::JobOptions;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::bullpen::processor::job_context;
use crate::bindings::types::{self, JobError};
use crate::sandbox::{wasi_ctx, CapturedOutput, Limits, MemoryLimiter};

pub(crate) mod codes;
pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod local;
pub(crate) mod redis_job;
pub(crate) mod retry;
pub(crate) mod write_behind;

pub(crate) use local::{LocalJob, Report};
pub(crate) use redis_job::{JobContext, Shared};

/// The job log line that records which plugin version ran an attempt:
/// this prefix and the component's sha256 hex. Written once per attempt,
/// with the attempt's first flush of its log (see [`write_behind`]).
pub(crate) const DIGEST_LOG_PREFIX: &str = "bullpen: plugin sha256:";

/// What a binding grants its guests beyond the deny-by-default sandbox:
/// the hosts they may call over HTTP, and the queue's variables.
#[derive(Debug)]
pub(crate) struct Grants {
    pub(crate) outbound: http::Outbound,
    pub(crate) variables: config::Variables,
}

impl Grants {
    /// Nothing: no outbound HTTP, no variables.
    pub(crate) fn none(queue: &str) -> Self {
        Grants { outbound: http::Outbound::deny_all(queue), variables: config::Variables::default() }
    }
}

/// Store data for one attempt: the job its host calls act on, its WASI
/// context, its memory cap, its outbound HTTP hooks.
pub(crate) struct HostState {
    /// Built the first time the guest calls a WASI function: a guest that
    /// never does (an echo in Rust) skips building it, ~0.7 µs of the
    /// worker's CPU per job.
    wasi: Option<WasiCtx>,
    out: CapturedOutput,
    /// Shared by WASI and wasi:http: their streams and pollables are the
    /// same resources.
    table: ResourceTable,
    http_ctx: WasiHttpCtx,
    /// The binding's grants, the attempt's deadline and in-flight permits.
    pub(crate) http: http::Hooks,
    pub(crate) memory: MemoryLimiter,
    pub(crate) job: Backend,
    /// The binding's variables as this attempt first read them (a SIGHUP
    /// reload does not change them under a running attempt).
    pub(crate) variables: Option<Arc<WasiConfigVariables>>,
    /// The guest's stack for the failure it is returning (`set-stacktrace`),
    /// cut to [`HostState::max_stack_bytes`]; the worker appends it to the
    /// job's BullMQ `stacktrace` when the attempt fails.
    pub(crate) stacktrace: Option<String>,
    /// The log-line limit: a stack is one entry, read like a log line.
    max_stack_bytes: usize,
}

impl HostState {
    /// stdout/stderr go to `out`, which ends up in the job's log (or, for
    /// `bullpen run`, on stdout). WASI: see [`crate::sandbox::wasi_ctx`].
    pub(crate) fn new(job: impl Into<Backend>, limits: &Limits, out: &CapturedOutput) -> Self {
        let job = job.into();
        HostState {
            wasi: None,
            out: out.clone(),
            table: ResourceTable::new(),
            http_ctx: WasiHttpCtx::new(),
            http: http::Hooks::new(job.grants().clone()),
            memory: MemoryLimiter::new(limits),
            job,
            variables: None,
            stacktrace: None,
            max_stack_bytes: limits.max_log_line_bytes,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}

/// `wasi:config/store` answers from the binding's variables only.
pub(crate) fn wasi_config(state: &mut HostState) -> WasiConfig<'_> {
    let grants = &state.http.grants;
    WasiConfig::new(state.variables.get_or_insert_with(|| grants.variables.snapshot()))
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let out = &self.out;
        let ctx = self.wasi.get_or_insert_with(|| wasi_ctx(out));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// Where an attempt's host calls go: a job in Redis (a worker's attempts),
/// or a job in memory (`bullpen run`). Same HostState, limits and argument
/// checks either way.
// One per Store, made once per attempt and never moved after: boxing the
// larger variant would add an allocation per attempt for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Redis(JobContext),
    Local(LocalJob),
}

impl Backend {
    /// The binding's grants (the worker's `Shared`, or `bullpen run`'s flags).
    pub(crate) fn grants(&self) -> &Arc<Grants> {
        match self {
            Backend::Redis(j) => &j.shared.grants,
            Backend::Local(l) => &l.grants,
        }
    }
}

impl From<JobContext> for Backend {
    fn from(j: JobContext) -> Self {
        Backend::Redis(j)
    }
}

impl From<LocalJob> for Backend {
    fn from(j: LocalJob) -> Self {
        Backend::Local(j)
    }
}

/// How a host call ended the attempt early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// `move-to-delayed` succeeded.
    Delayed,
    /// `wait-for-children` returned true.
    WaitingChildren,
    /// `rate-limit` succeeded: the queue is rate-limited, the job waits.
    RateLimited,
    /// `move-to-wait` succeeded.
    Waiting,
}

impl Moved {
    /// Where the job went, as `bullpen run` prints it (BullMQ's states).
    pub(crate) fn to(self) -> &'static str {
        match self {
            Moved::Delayed => "delayed",
            Moved::WaitingChildren => "waiting-children",
            Moved::RateLimited | Moved::Waiting => "wait",
        }
    }
}

/// Which queues a guest may add children to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChildQueues {
    /// Any queue under the binding's prefix (`--child-queue '*'`).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl ChildQueues {
    /// The default: the binding's own queue and `<queue>-children`.
    pub(crate) fn default_for(queue: &str) -> Self {
        ChildQueues::Only(vec![queue.to_string(), format!("{queue}-children")])
    }

    /// From `--child-queue` flags: '*' for any queue; none for the default.
    pub(crate) fn from_flags(queue: &str, flags: &[String]) -> Self {
        if flags.iter().any(|q| q == "*") {
            ChildQueues::Any
        } else if flags.is_empty() {
            ChildQueues::default_for(queue)
        } else {
            ChildQueues::Only(flags.to_vec())
        }
    }

    fn allows(&self, q: &str) -> bool {
        match self {
            ChildQueues::Any => true,
            ChildQueues::Only(list) => list.iter().any(|x| x == q),
        }
    }
}

/// The Redis job of this attempt, or else return the in-memory job's answer.
macro_rules! redis_or_local {
    ($state:expr, $local:ident => $answer:expr) => {
        match &mut $state.job {
            Backend::Redis(job) => job,
            Backend::Local($local) => return $answer,
        }
    };
}

impl types::Host for HostState {}

impl job_context::Host for HostState {
    async fn update_data(&mut self, data: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.update_data(data));
        check_json_arg("data", &data, job.shared.limits.max_payload_bytes)?;
        job.update_data(&data).await
    }

    // `update-progress` and `log` are written behind (see `write_behind`):
    // checked here, written with the attempt's next flush.
    async fn update_progress(&mut self, progress: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.update_progress(progress));
        check_json_arg("progress", &progress, job.shared.limits.max_log_line_bytes)?;
        job.update_progress(progress).await
    }

    async fn log(&mut self, line: String) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.log(line));
        check_log_line(&line, &job.shared.limits)?;
        crate::span::trace(|t| t.log(&line));
        job.log(line).await
    }

    async fn move_to_delayed(&mut self, timestamp_ms: u64) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.move_to_delayed(timestamp_ms));
        job.move_to_delayed(timestamp_ms).await
    }

    async fn rate_limit(&mut self, delay_ms: u64) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.rate_limit(delay_ms));
        check_rate_limit(delay_ms)?;
        job.rate_limit(delay_ms).await
    }

    async fn move_to_wait(&mut self) -> Result<(), JobError> {
        let job = redis_or_local!(self, l => l.move_to_wait());
        job.move_to_wait().await
    }

    async fn add_child(&mut self, queue: String, name: String, data: String, opts: String) -> Result<String, JobError> {
        let job = redis_or_local!(self, l => l.add_child(queue, name, data, opts));
        let (data, opts) = check_child(&job.shared.child_queues, &job.shared.limits, &queue, &data, &opts)?;
        job.add_child(&queue, &name, data, opts).await
    }

    async fn wait_for_children(&mut self) -> Result<bool, JobError> {
        let job = redis_or_local!(self, l => l.wait_for_children());
        job.wait_for_children().await
    }

    async fn children_values(&mut self) -> Result<Vec<(String, String)>, JobError> {
        let job = redis_or_local!(self, l => l.children_values());
        job.children_values().await
    }

    // Kept in the store, not sent: only a failed attempt writes it, with its
    // failure (`queue::trigger`), and only the last call counts.
    async fn set_stacktrace(&mut self, stack: String) {
        let max = self.max_stack_bytes;
        let stack = if stack.len() > max { crate::sandbox::truncate_utf8(&stack, max).to_string() } else { stack };
        self.stacktrace = Some(stack);
    }
}

/// The check every JSON argument of a host call passes: at most `max`
/// bytes, and JSON by bullpen's rule (`json::check`). Checked before
/// anything touches Redis.
pub(crate) fn check_json_arg(what: &str, json: &str, max: usize) -> Result<(), JobError> {
    if json.len() > max {
        return Err(JobError::Invalid(format!("{what} is {} bytes; the limit is {max}", json.len())));
    }
    crate::json::check(json).map_err(|problem| JobError::Invalid(format!("{what} {problem}")))
}

/// The largest `rate-limit` delay: JavaScript's `Number.MAX_SAFE_INTEGER`,
/// the value BullMQ writes into the limiter key (a Node worker reads the
/// key's TTL as a JS number).
pub(crate) const MAX_RATE_LIMIT_MS: u64 = (1 << 53) - 1;

/// The check of a `rate-limit` delay: Redis refuses `PX 0`, and a queue
/// limited for 0 ms is no limit at all.
pub(crate) fn check_rate_limit(delay_ms: u64) -> Result<(), JobError> {
    if delay_ms == 0 || delay_ms > MAX_RATE_LIMIT_MS {
        return Err(JobError::Invalid(format!(
            "rate-limit delay-ms is {delay_ms}; it must be at least 1 and at most {MAX_RATE_LIMIT_MS}"
        )));
    }
    Ok(())
}

/// The check of a `log` line: at most `max_log_line_bytes`.
pub(crate) fn check_log_line(line: &str, limits: &Limits) -> Result<(), JobError> {
    let max = limits.max_log_line_bytes;
    if line.len() > max {
        return Err(JobError::Invalid(format!("log line is {} bytes; the limit is {max}", line.len())));
    }
    Ok(())
}

/// The checks `add-child` makes before touching Redis: a queue the binding
/// may add children to, JSON data within the payload limit, valid BullMQ
/// job options. Returns the parsed data and options.
pub(crate) fn check_child(
    child_queues: &ChildQueues,
    limits: &Limits,
    queue: &str,
    data: &str,
    opts: &str,
) -> Result<(serde_json::Value, JobOptions), JobError> {
    if !child_queues.allows(queue) {
        return Err(JobError::Invalid(format!(
            "queue `{queue}` is not one this binding may add children to (allowed: {child_queues:?}; see --child-queue)"
        )));
    }
    check_json_arg("child data", data, limits.max_payload_bytes)?;
    let data_value: serde_json::Value = serde_json::from_str(data).expect("checked above");
    let child_opts: JobOptions = if opts.trim().is_empty() {
        JobOptions::default()
    } else {
        serde_json::from_str(opts)
            .map_err(|e| JobError::Invalid(format!("child opts are not valid job options: {e}")))?
    };
    Ok((data_value, child_opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_delays_between_1_ms_and_max_safe_integer_pass() {
        for ok in [1, 1000, MAX_RATE_LIMIT_MS] {
            assert!(check_rate_limit(ok).is_ok(), "{ok}");
        }
        for bad in [0, MAX_RATE_LIMIT_MS + 1, u64::MAX] {
            match check_rate_limit(bad) {
                Err(JobError::Invalid(m)) => assert!(m.contains(&bad.to_string()), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn moves_name_where_the_job_went() {
        let all = [Moved::Delayed, Moved::WaitingChildren, Moved::RateLimited, Moved::Waiting];
        let names: Vec<_> = all.iter().map(|m| m.to()).collect();
        assert_eq!(names, ["delayed", "waiting-children", "wait", "wait"]);
    }
}
