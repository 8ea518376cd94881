//! The running attempt's tracing span (`queue`, `job`, `attempt`, `digest`;
//! JSON logs' `span`), for whatever logs inside an attempt: host calls, the
//! write-behind flush, the trigger. A leaf: it knows no worker or host type.
//!
//! The span is made the first time something in the attempt logs: most
//! attempts log nothing, and making it for every attempt cost ~3 µs of worker
//! CPU per job (tracing-subscriber formats and stores its fields).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tracing::info_span;

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
}

impl AttemptSpan {
    pub(crate) fn new(queue: Arc<str>, job: String, attempt: u32, digest: Arc<str>) -> Self {
        AttemptSpan { queue, job, attempt, digest, span: OnceLock::new() }
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
