//! The running attempt's tracing span (`queue`, `job`, `attempt`, `digest`;
//! JSON logs' `span`), for whatever logs inside an attempt: host calls, the
//! write-behind flush, the trigger; and, with `--otlp-endpoint`, its
//! OpenTelemetry [`Trace`] (`telemetry.rs`), which host calls reach through
//! [`trace`]. A leaf: it knows no worker or host type.
//!
//! The span is made the first time something in the attempt logs: most
//! attempts log nothing, and making it for every attempt cost ~3 µs of worker
//! CPU per job (tracing-subscriber formats and stores its fields).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tracing::info_span;

use crate::telemetry::{self, Trace};

tokio::task_local! {
    static ATTEMPT: Arc<AttemptSpan>;
}

/// What names an attempt in logs.
pub(crate) struct AttemptSpan {
    queue: Arc<str>,
    job: String,
    attempt: u32,
    digest: Arc<str>,
    span: OnceLock<tracing::Span>,
    /// The attempt's OpenTelemetry span; `None` when traces are off (boxed:
    /// the field costs an attempt 8 bytes then).
    otel: Option<Box<Trace>>,
}

impl AttemptSpan {
    pub(crate) fn new(queue: Arc<str>, job: String, attempt: u32, digest: Arc<str>) -> Self {
        AttemptSpan { queue, job, attempt, digest, span: OnceLock::new(), otel: None }
    }

    /// With the attempt's OpenTelemetry span (see [`Trace::attempt`]).
    pub(crate) fn with_trace(mut self, trace: Option<Trace>) -> Self {
        self.otel = trace.map(Box::new);
        self
    }

    /// The attempt's OpenTelemetry span, when traces are on.
    pub(crate) fn trace(&self) -> Option<&Trace> {
        self.otel.as_deref()
    }

    /// The job's id.
    pub(crate) fn job(&self) -> &str {
        &self.job
    }

    /// The plugin version that runs the attempt.
    pub(crate) fn digest(&self) -> &Arc<str> {
        &self.digest
    }

    pub(crate) fn get(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            info_span!("attempt", queue = %self.queue, job = %self.job, attempt = self.attempt, digest = %self.digest)
        })
    }
}

/// Run `f` with `span` as the current attempt, for [`in_attempt`].
pub(crate) async fn scope<F: Future>(span: Arc<AttemptSpan>, f: F) -> F::Output {
    ATTEMPT.scope(span, f).await
}

/// Run `log` (a tracing event) inside the running attempt's span, if it
/// runs inside an attempt. Every event an attempt logs goes through here.
pub(crate) fn in_attempt<R>(log: impl FnOnce() -> R) -> R {
    match ATTEMPT.try_with(|a| a.get().clone()) {
        Ok(span) => span.in_scope(log),
        Err(_) => log(),
    }
}

/// Call `f` with the running attempt's OpenTelemetry span, if traces are on
/// and this runs inside an attempt; `None` otherwise (one atomic load when
/// traces are off).
pub(crate) fn trace<R>(f: impl FnOnce(&Trace) -> R) -> Option<R> {
    if !telemetry::enabled() {
        return None;
    }
    ATTEMPT.try_with(|a| a.otel.as_deref().map(f)).ok().flatten()
}
