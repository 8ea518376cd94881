//! Prometheus metrics (`bullpen worker --metrics-addr 127.0.0.1:9464`).
//!
//! One process-wide registry: every binding records into the same families,
//! labelled by queue (and plugin digest where it tells versions apart), so a
//! scrape of one worker process covers all the queues it serves. Recording
//! is a few atomic adds per attempt; nothing is recorded into Redis.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `bullpen_jobs_total` | queue, digest, outcome | attempts by how they ended: `completed`, `failed` (final), `retried` (another attempt follows), `delayed` (guest moved it), `waiting_children`, `rate_limited` (the guest rate-limited the queue; the job went back to wait), `waiting` (the guest moved it back to wait), `lock_lost`, `handed_back` (shutdown) |
//! | `bullpen_attempt_duration_seconds` | queue | wall-clock time of an attempt, job fetched to result |
//! | `bullpen_instantiation_duration_seconds` | queue | fresh instance creation per attempt |
//! | `bullpen_traps_total` | queue, kind | guest traps: `unreachable` (incl. panics), `stack_overflow`, `out_of_bounds`, `division_by_zero`, `interrupt`, `other` |
//! | `bullpen_limit_kills_total` | queue, limit | attempts stopped by a limit: `timeout`, `memory`, `fuel` |
//! | `bullpen_attempt_memory_peak_bytes` | queue | largest linear memory an attempt's instance reached |
//! | `bullpen_http_requests_total` | queue, host, outcome | guests' outbound HTTP requests: `2xx` .. `5xx` (response status class), `denied` (allow-list or SSRF rule), `error` (DNS, connect, TLS, timeout, in-flight limit) |
//! | `bullpen_http_request_duration_seconds` | queue | request sent to response head (or to the error) |

use std::net::SocketAddr;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabels {
    pub(crate) queue: String,
    pub(crate) digest: String,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    pub(crate) queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TrapLabels {
    pub(crate) queue: String,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    pub(crate) queue: String,
    pub(crate) limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub(crate) queue: String,
    pub(crate) host: String,
    pub(crate) outcome: &'static str,
}

type HistogramFamily = Family<QueueLabels, Histogram, fn() -> Histogram>;

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) jobs: Family<JobLabels, Counter>,
    pub(crate) attempt_seconds: HistogramFamily,
    pub(crate) instantiate_seconds: HistogramFamily,
    pub(crate) traps: Family<TrapLabels, Counter>,
    pub(crate) limit_kills: Family<LimitLabels, Counter>,
    pub(crate) memory_peak_bytes: HistogramFamily,
    pub(crate) http_requests: Family<HttpLabels, Counter>,
    pub(crate) http_seconds: HistogramFamily,
}

// Buckets: attempts from 50 µs to ~50 s; instantiation from 5 µs to ~5 ms
// (a Rust echo instantiates in tens of µs, a JS guest in ms); memory from
// 64 KiB (one wasm page) to 1 GiB.
fn attempt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 4.0, 11))
}
fn instantiate_buckets() -> Histogram {
    Histogram::new(exponential_buckets(5e-6, 2.0, 14))
}
fn memory_buckets() -> Histogram {
    Histogram::new(exponential_buckets(65_536.0, 2.0, 15))
}
// HTTP requests: 1 ms (loopback) to ~65 s (past the default attempt timeout).
fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-3, 2.0, 17))
}

/// One queue's per-attempt histograms, looked up once per binding: an
/// attempt then records without hashing labels or cloning the queue name.
/// (A `Histogram` clone shares its counts with the family's entry.)
#[derive(Clone)]
pub(crate) struct QueueHistograms {
    pub(crate) attempt_seconds: Histogram,
    pub(crate) instantiate_seconds: Histogram,
    pub(crate) memory_peak_bytes: Histogram,
}

impl Metrics {
    /// `queue`'s histograms (created in the registry if new).
    pub(crate) fn queue_histograms(&self, queue: &str) -> QueueHistograms {
        let l = QueueLabels { queue: queue.to_string() };
        QueueHistograms {
            attempt_seconds: self.attempt_seconds.get_or_create(&l).clone(),
            instantiate_seconds: self.instantiate_seconds.get_or_create(&l).clone(),
            memory_peak_bytes: self.memory_peak_bytes.get_or_create(&l).clone(),
        }
    }

    /// One outbound HTTP request of a guest, by how it ended.
    pub(crate) fn http_request(&self, queue: &str, host: &str, outcome: &'static str) {
        self.http_requests.get_or_create(&HttpLabels { queue: queue.into(), host: host.into(), outcome }).inc();
    }

    pub(crate) fn http_seconds(&self, queue: &str, took: std::time::Duration) {
        self.http_seconds.get_or_create(&QueueLabels { queue: queue.into() }).observe(took.as_secs_f64());
    }

    fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let attempt_seconds: HistogramFamily = Family::new_with_constructor(attempt_buckets);
        let instantiate_seconds: HistogramFamily = Family::new_with_constructor(instantiate_buckets);
        let traps = Family::<TrapLabels, Counter>::default();
        let limit_kills = Family::<LimitLabels, Counter>::default();
        let memory_peak_bytes: HistogramFamily = Family::new_with_constructor(memory_buckets);
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_seconds: HistogramFamily = Family::new_with_constructor(http_buckets);
        registry.register("bullpen_jobs", "Attempts by queue, plugin digest and how they ended", jobs.clone());
        registry.register(
            "bullpen_attempt_duration_seconds",
            "Wall-clock time of one attempt",
            attempt_seconds.clone(),
        );
        registry.register(
            "bullpen_instantiation_duration_seconds",
            "Time to create the fresh Wasm instance of an attempt",
            instantiate_seconds.clone(),
        );
        registry.register("bullpen_traps", "Guest traps by kind", traps.clone());
        registry.register("bullpen_limit_kills", "Attempts stopped by a sandbox limit", limit_kills.clone());
        registry.register(
            "bullpen_attempt_memory_peak_bytes",
            "Largest linear memory an attempt's instance reached",
            memory_peak_bytes.clone(),
        );
        registry.register(
            "bullpen_http_requests",
            "Guests' outbound HTTP requests by queue, host and outcome",
            http_requests.clone(),
        );
        registry.register(
            "bullpen_http_request_duration_seconds",
            "Outbound HTTP request sent to response head",
            http_seconds.clone(),
        );
        Metrics {
            registry,
            jobs,
            attempt_seconds,
            instantiate_seconds,
            traps,
            limit_kills,
            memory_peak_bytes,
            http_requests,
            http_seconds,
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub(crate) fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Serve `GET /metrics` on `addr` until the process ends. Binding errors
/// are returned (a taken port should stop the worker at start, loudly).
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on --metrics-addr {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, peer)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                // A scrape is one small GET; read the head (bounded) and answer.
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) =
                    if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                        ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", global().encode())
                    } else {
                        ("404 Not Found", "text/plain; charset=utf-8", "bullpen serves GET /metrics only\n".to_string())
                    };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = sock.write_all(reply.as_bytes()).await {
                    debug!(%peer, error = %e, "metrics reply not sent");
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(bound)
}
