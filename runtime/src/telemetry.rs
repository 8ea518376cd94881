//! OpenTelemetry traces (`--otlp-endpoint`): one span per attempt, child
//! spans for its Redis transitions and outbound HTTP requests, exported over
//! OTLP/HTTP (protobuf) in batches from a thread of their own. A leaf: it
//! knows no worker or host type; `span.rs` carries the attempt's [`Trace`]
//! and the host and trigger call in through it.
//!
//! Names and attributes follow Node's BullMQ telemetry (`bullmq-otel`), so a
//! trace reads the same whichever worker ran the job: the attempt is
//! `process <queue>` (kind consumer) with `bullmq.queue.name`,
//! `bullmq.job.id`, ...; the producer's context comes from the job's opts
//! `tm` (a JSON text holding `traceparent`), and a child the guest adds gets
//! its `add <queue>.<name>` span's context there the same way.
//!
//! Off (the default), nothing here runs: [`enabled`] is one atomic load and
//! no span, context or string is made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::{info, warn};

/// The exporter and tracer, once `--otlp-endpoint` started them.
struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// Whether traces are exported: checked before anything here is built.
#[inline]
pub(crate) fn enabled() -> bool {
    OTEL.get().is_some()
}

/// Where traces go (`--otlp-endpoint`, `otlp_endpoint`, or
/// `OTEL_EXPORTER_OTLP_ENDPOINT`): the collector's base URL, e.g.
/// `http://127.0.0.1:4318`; `/v1/traces` is added as OTLP/HTTP says.
pub(crate) fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint `{endpoint}` is not a URL ({e}); e.g. http://127.0.0.1:4318"))?;
    match url.scheme() {
        "http" => {}
        "https" => anyhow::bail!(
            "--otlp-endpoint `{endpoint}`: only http:// is supported (OTLP/HTTP without TLS); \
             point it at a collector on the same host or network (e.g. http://127.0.0.1:4318)"
        ),
        s => anyhow::bail!(
            "--otlp-endpoint `{endpoint}`: scheme `{s}` is not http (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
        ),
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") { base.to_string() } else { format!("{base}/v1/traces") })
}

/// Start exporting traces to `endpoint` (see [`traces_url`]). The service
/// is `OTEL_SERVICE_NAME` when set, else `bullpen`; `OTEL_BSP_*` and
/// `OTEL_TRACES_SAMPLER` apply as the OpenTelemetry SDK reads them.
pub(crate) fn start(endpoint: &str) -> anyhow::Result<()> {
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client::start()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|s| s.is_empty()) {
        resource = resource.with_service_name("bullpen");
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = provider.tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("bullpen").with_version(env!("CARGO_PKG_VERSION")).build(),
    );
    if OTEL.set(Otel { provider, tracer, propagator: TraceContextPropagator::new() }).is_err() {
        anyhow::bail!("traces were already being exported");
    }
    info!(endpoint = %url, "exporting traces (OTLP/HTTP)");
    Ok(())
}

/// Export what is pending and stop (shutdown). Blocks for at most the
/// exporter's timeout; call it off the runtimes' threads.
pub(crate) fn shutdown() {
    if let Some(o) = OTEL.get() {
        if let Err(e) = o.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            warn!(error = %e, "could not export the last traces");
        }
    }
}

/// What names an attempt in its span (Node's `process` span attributes).
pub(crate) struct AttemptInfo<'a> {
    pub(crate) queue: &'a str,
    pub(crate) job_id: &'a str,
    pub(crate) job_name: &'a str,
    /// This attempt's number (attemptsMade + 1).
    pub(crate) attempt: u32,
    pub(crate) digest: &'a str,
    /// BullMQ's worker `name` (`--name`), when set.
    pub(crate) worker_name: Option<&'a str>,
    /// The job's opts `tm`: the context it was added in.
    pub(crate) metadata: Option<&'a str>,
}

/// How an attempt ended, for its span.
pub(crate) struct AttemptEnd<'a> {
    /// bullpen's outcome label (`completed`, `failed`, `retried`, `delayed`, ...).
    pub(crate) outcome: &'static str,
    /// Attempts made once this one is counted (Node's `bullmq.job.attempts.made`).
    pub(crate) attempts_made: u32,
    /// The return value (JSON) of a completed attempt.
    pub(crate) result: Option<&'a str>,
    /// The reason of a failed or retried attempt.
    pub(crate) reason: Option<&'a str>,
}

/// The most of a return value or failure reason a span carries.
const MAX_TEXT: usize = 1024;

/// One attempt's span, as the context its children hang from.
pub(crate) struct Trace {
    cx: Context,
    queue: String,
    job_id: String,
    job_name: String,
    ended: AtomicBool,
}

impl Trace {
    /// The attempt's span, the child of the context in `metadata` (a new
    /// trace without one); `None` when traces are off.
    pub(crate) fn attempt(a: AttemptInfo<'_>) -> Option<Trace> {
        let o = OTEL.get()?;
        let parent = a.metadata.map_or_else(Context::new, |m| o.extract(m));
        let mut attrs = vec![
            KeyValue::new("bullmq.queue.name", a.queue.to_string()),
            KeyValue::new("bullmq.queue.operation", "process"),
            KeyValue::new("bullmq.job.id", a.job_id.to_string()),
            KeyValue::new("bullmq.job.name", a.job_name.to_string()),
            KeyValue::new("bullpen.attempt", i64::from(a.attempt)),
            KeyValue::new("bullpen.digest", a.digest.to_string()),
            KeyValue::new("bullmq.job.processed.timestamp", now_ms()),
        ];
        if let Some(n) = a.worker_name {
            attrs.push(KeyValue::new("bullmq.worker.name", n.to_string()));
        }
        let span = o
            .tracer
            .span_builder(format!("process {}", a.queue))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attrs)
            .start_with_context(&o.tracer, &parent);
        Some(Trace {
            cx: parent.with_span(span),
            queue: a.queue.to_string(),
            job_id: a.job_id.to_string(),
            job_name: a.job_name.to_string(),
            ended: AtomicBool::new(false),
        })
    }

    /// A line the guest logged, as an event of the attempt's span.
    pub(crate) fn log(&self, line: &str) {
        self.cx.span().add_event("log", vec![KeyValue::new("message", line.to_string())]);
    }

    /// A child span for one of the attempt's Redis transitions, named as
    /// Node's BullMQ names its own (`<operation> <queue>`).
    pub(crate) fn redis(&self, operation: &'static str) -> ChildSpan {
        self.child(
            format!("{operation} {}", self.queue),
            SpanKind::Internal,
            vec![
                KeyValue::new("bullmq.queue.name", self.queue.clone()),
                KeyValue::new("bullmq.queue.operation", operation),
                KeyValue::new("bullmq.job.id", self.job_id.clone()),
                KeyValue::new("bullmq.job.name", self.job_name.clone()),
            ],
        )
    }

    /// The producer span of a child the guest adds (Node's `add
    /// <queue>.<name>`), and the `tm` the child carries: that span's context.
    pub(crate) fn add_child(&self, queue: &str, name: &str) -> (ChildSpan, String) {
        let span = self.child(
            format!("add {queue}.{name}"),
            SpanKind::Producer,
            vec![
                KeyValue::new("bullmq.queue.name", queue.to_string()),
                KeyValue::new("bullmq.queue.operation", "add"),
                KeyValue::new("bullmq.job.name", name.to_string()),
            ],
        );
        let metadata = span.metadata();
        (span, metadata)
    }

    /// A client span for an outbound HTTP request, and the `traceparent`
    /// header value that continues the trace at the server.
    pub(crate) fn http(&self, method: &str, url: &str) -> (ChildSpan, Option<String>) {
        let span = self.child(
            method.to_string(),
            SpanKind::Client,
            vec![KeyValue::new("http.request.method", method.to_string()), KeyValue::new("url.full", url.to_string())],
        );
        let header = span.headers().remove("traceparent");
        (span, header)
    }

    fn child(&self, name: String, kind: SpanKind, attrs: Vec<KeyValue>) -> ChildSpan {
        let o = OTEL.get().expect("a Trace exists only when traces are on");
        let span =
            o.tracer.span_builder(name).with_kind(kind).with_attributes(attrs).start_with_context(&o.tracer, &self.cx);
        ChildSpan { cx: self.cx.with_span(span) }
    }

    /// Record how the attempt ended (Node's `job completed` / `job failed`
    /// events); the span ends with [`Trace::close`], once BullMQ's
    /// transition is written.
    pub(crate) fn outcome(&self, e: AttemptEnd<'_>) {
        let span = self.cx.span();
        if let Some(r) = e.result {
            span.add_event("job completed", vec![KeyValue::new("bullmq.job.result", clip(r))]);
        }
        if let Some(r) = e.reason {
            span.add_event("job failed", vec![KeyValue::new("bullmq.job.failed.reason", clip(r))]);
            span.set_status(Status::error(clip(r)));
        }
        span.set_attribute(KeyValue::new("bullmq.job.attempts.made", i64::from(e.attempts_made)));
        span.set_attribute(KeyValue::new("bullmq.job.attempt_finished_timestamp", now_ms()));
        span.set_attribute(KeyValue::new("bullpen.outcome", e.outcome));
    }

    /// End the attempt's span (once; later calls do nothing).
    pub(crate) fn close(&self) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.cx.span().end();
        }
    }
}

impl Drop for Trace {
    /// An attempt dropped before its span was closed still ends it.
    fn drop(&mut self) {
        self.close();
    }
}

/// A child span of an attempt; ended by [`ChildSpan::ok`] / [`ChildSpan::err`]
/// or when dropped.
pub(crate) struct ChildSpan {
    cx: Context,
}

impl ChildSpan {
    /// This span's context as W3C trace-context headers.
    fn headers(&self) -> HashMap<String, String> {
        let mut h = HashMap::new();
        if let Some(o) = OTEL.get() {
            o.propagator.inject_context(&self.cx, &mut h);
        }
        h
    }

    /// This span's context as BullMQ's `tm`: the headers as a JSON object, in text.
    fn metadata(&self) -> String {
        serde_json::to_string(&self.headers()).unwrap_or_default()
    }

    pub(crate) fn set(&self, key: &'static str, value: i64) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    pub(crate) fn ok(self) {
        self.cx.span().end();
    }

    pub(crate) fn err(self, reason: &str) {
        self.cx.span().set_status(Status::error(clip(reason)));
        self.cx.span().end();
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        // Ending twice is a no-op in the SDK.
        self.cx.span().end();
    }
}

impl Otel {
    /// The context in a job's `tm`; an unreadable one starts a new trace.
    fn extract(&self, metadata: &str) -> Context {
        match serde_json::from_str::<HashMap<String, serde_json::Value>>(metadata) {
            Ok(m) => {
                let text: HashMap<String, String> =
                    m.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string()))).collect();
                self.propagator.extract(&text)
            }
            Err(_) => Context::new(),
        }
    }
}

fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The OTLP exporter's HTTP client: hyper (bullpen's HTTP stack already) on
/// a runtime of its own, so the SDK's export thread never runs on the
/// attempts' threads and the flush at shutdown cannot wait on itself.
#[derive(Debug)]
struct Client {
    inner: opentelemetry_http::hyper::HyperClient,
    rt: tokio::runtime::Handle,
    /// Whether the last export failed: failures are logged when they start
    /// and when they end, not per batch.
    failing: AtomicBool,
}

impl Client {
    fn start() -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("bullpen-otlp".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        let inner = opentelemetry_http::hyper::HyperClient::with_default_connector(Duration::from_secs(10), None);
        Ok(Client { inner, rt: handle, failing: AtomicBool::new(false) })
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        let url = request.uri().to_string();
        let sent = self.rt.spawn(async move { inner.send_bytes(request).await }).await?;
        let failure = match &sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("status {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            Some(f) if !self.failing.swap(true, Ordering::Relaxed) => {
                warn!(endpoint = %url, error = %f, "cannot export traces (said again when it can)")
            }
            None if self.failing.swap(false, Ordering::Relaxed) => info!(endpoint = %url, "exporting traces again"),
            _ => {}
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_base_url_or_the_traces_url() {
        assert_eq!(traces_url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces").unwrap(), "http://c:4318/v1/traces");
        assert!(traces_url("https://c:4318").unwrap_err().to_string().contains("only http://"));
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("not a url").unwrap_err().to_string().contains("not a URL"));
    }

    #[test]
    fn a_producers_tm_is_read_as_bullmq_otel_writes_it() {
        let o = Otel {
            provider: SdkTracerProvider::builder().build(),
            tracer: SdkTracerProvider::builder().build().tracer("t"),
            propagator: TraceContextPropagator::new(),
        };
        let tm = r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let cx = o.extract(tm);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote() && sc.is_sampled());
        for bad in ["", "{", "[1]", r#"{"traceparent":1}"#, r#"{"traceparent":"junk"}"#] {
            assert!(!o.extract(bad).span().span_context().is_valid(), "{bad}");
        }
    }
}
