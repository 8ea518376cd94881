//! Outbound HTTP for guests: `wasi:http/outgoing-handler`, deny by default.
//!
//! A binding grants origins with `--allow-outbound PATTERN` (or
//! `allowed_outbound_hosts`); every request is checked here, in the
//! `send_request` hook, before anything leaves the host:
//!
//! - scheme, host and port against the patterns (default ports implied);
//! - the SSRF rule: a host allowed by *name* whose DNS answer is a loopback,
//!   link-local (cloud metadata), private or unspecified address is refused
//!   unless a pattern names that IP literally. The connection goes to the
//!   address that was checked (no second lookup an attacker's DNS could
//!   answer differently);
//! - redirects are never followed (hyper's client does not): the guest sees
//!   the 3xx, and a request to the new URL is checked again;
//! - timeouts are clipped to the attempt's remaining wall-clock time, the
//!   response body is capped, and an attempt has at most N requests in flight.
//!
//! A refused request gets wasi:http's `HTTP-request-denied` (not in the
//! list) or `destination-IP-prohibited` (the SSRF rule); the SDKs turn both
//! into an error naming the host and the flag. The first denial per host and
//! binding is logged. Everything waits on tokio: a guest blocked on a
//! response occupies no thread, and dropping the attempt (timeout,
//! shutdown) drops its requests.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::local::Report;
use super::Grants;
use crate::error::GrantError;
use crate::metrics;

/// What a binding grants for outbound HTTP, as configured (flags, config).
#[derive(Debug, Clone)]
pub(crate) struct OutboundConfig {
    /// `--allow-outbound` patterns. Empty, the default: nothing is reachable.
    pub(crate) allow: Vec<String>,
    /// `--http-ca` PEM files, trusted besides the webpki (Mozilla) roots.
    pub(crate) ca_files: Vec<PathBuf>,
    /// `--max-http-response-mb`: 16 MiB, the same bound as a job's payload
    /// (`Limits::max_payload_bytes`): a guest reading more could not return
    /// it anyway, and 100 attempts at the cap stay under 2 GiB.
    pub(crate) max_response_bytes: u64,
    /// `--max-http-in-flight`: 16 per attempt, browsers' order of magnitude
    /// per origin; a guest fanning out wider is more likely a bug than a need.
    pub(crate) max_in_flight: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig { allow: Vec::new(), ca_files: Vec::new(), max_response_bytes: 16 << 20, max_in_flight: 16 }
    }
}

/// A binding's outbound HTTP grants, checked and ready.
pub(crate) struct Outbound {
    queue: Arc<str>,
    allow: Vec<Pattern>,
    extra_roots: Vec<CertificateDer<'static>>,
    /// Built on the first HTTPS request: parsing the webpki roots costs a
    /// millisecond no binding without HTTPS should pay.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    max_response_bytes: u64,
    max_in_flight: usize,
    /// Hosts already refused once: the worker logs the first denial per
    /// host, not one line per attempt. Capped (a guest picks the hosts).
    denied_seen: Mutex<HashSet<String>>,
    /// `bullpen run` prints each request.
    pub(crate) report: Option<Report>,
}

/// How far past the attempt's deadline a request's timeouts reach (see
/// `Outbound::send`); never reached: the attempt is dropped at its deadline.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Distinct refused hosts remembered (for the log) and labelled (metrics)
/// per binding; beyond it denials are counted under host `other`.
const MAX_DENIED_HOSTS: usize = 256;

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("allow", &self.allow.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())
            .field("extra_roots", &self.extra_roots.len())
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Outbound {
    /// Check the patterns and read the CA files: a mistake stops the worker
    /// at start, not the first request.
    pub(crate) fn new(queue: &str, c: &OutboundConfig, report: Option<Report>) -> Result<Outbound, GrantError> {
        let allow = c.allow.iter().map(|p| Pattern::parse(p)).collect::<Result<Vec<_>, _>>()?;
        let mut extra_roots = Vec::new();
        for path in &c.ca_files {
            let pem = std::fs::read(path).map_err(|cause| GrantError::CaFile { path: path.clone(), cause })?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
            if certs.is_empty() {
                return Err(GrantError::CaEmpty { path: path.clone() });
            }
            extra_roots.extend(certs);
        }
        Ok(Outbound {
            queue: queue.into(),
            allow,
            extra_roots,
            tls: OnceLock::new(),
            max_response_bytes: c.max_response_bytes,
            max_in_flight: c.max_in_flight.max(1),
            denied_seen: Mutex::new(HashSet::new()),
            report,
        })
    }

    /// Nothing granted (bindings and runs without `--allow-outbound`).
    pub(crate) fn deny_all(queue: &str) -> Outbound {
        Outbound::new(queue, &OutboundConfig::default(), None).expect("no patterns, no files")
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        for cert in &self.extra_roots {
            roots.add(cert.clone()).map_err(|e| HttpError::InternalError(Some(format!("--http-ca: {e}"))))?;
        }
        // The ring provider explicitly: no process-wide default is needed.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(self.tls.get_or_init(|| Arc::new(config)).clone())
    }

    /// Which pattern grants this target, if any; `literal_ip` when one
    /// names the target's IP itself (the SSRF rule then does not apply).
    fn grant(&self, t: &Target) -> Option<Grant> {
        let mut grant: Option<Grant> = None;
        for p in self.allow.iter().filter(|p| p.matches(t)) {
            let literal_ip = matches!(p.host, HostPattern::Ip(_));
            grant = Some(Grant { literal_ip: literal_ip || grant.is_some_and(|g| g.literal_ip) });
        }
        grant
    }

    /// Count, print (`bullpen run`) and, the first time for this host, log a
    /// refused request.
    fn refuse(&self, t: &Target, shown: &str, why: &Refusal) -> HttpError {
        let first = {
            let mut seen = self.denied_seen.lock().unwrap();
            if seen.len() < MAX_DENIED_HOSTS {
                seen.insert(t.host.clone())
            } else {
                false
            }
        };
        let host = if first || self.denied_seen.lock().unwrap().contains(&t.host) { t.host.as_str() } else { "other" };
        metrics::global().http_request(&self.queue, host, "denied");
        if let Some(r) = self.report {
            r.event(
                &format!("http {shown} -> denied ({})", why.short()),
                serde_json::json!({ "event": "http", "request": shown, "outcome": "denied", "reason": why.short() }),
            );
        }
        // `bullpen run` printed it already.
        if first && self.report.is_none() {
            warn!(queue = %self.queue, host = %t.host, port = t.port, reason = %why.short(),
                "outbound HTTP request denied (logged once per host): {}", why.hint(t));
        }
        why.code()
    }

    /// Check, resolve, connect, send: the `send_request` hook's work, on
    /// `grants.outbound` (the grants ride along to the response body).
    async fn send(
        grants: Arc<Grants>,
        mut req: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        deadline: Instant,
        permits: Arc<Semaphore>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let this = &grants.outbound;
        let started = Instant::now();
        let t = Target::of(req.uri()).ok_or(HttpError::HttpRequestUriInvalid)?;
        let shown = format!("{} {}", req.method(), t.shown);
        let Some(grant) = this.grant(&t) else {
            return Err(this.refuse(&t, &shown, &Refusal::NotAllowed));
        };
        let fail = |e: HttpError| {
            this.finished(&t, &shown, "error", started, &format!("error ({e})"));
            e
        };
        let Ok(permit) = permits.try_acquire_owned() else {
            return Err(fail(HttpError::ConnectionLimitReached));
        };
        // Every wait is bounded by what is left of the attempt; the guest's
        // own (shorter) request options win. The margin lets the attempt's
        // own timer fire first, so a request still waiting at the limit
        // ends its attempt with the reason naming --timeout-ms (the request
        // is dropped with the attempt) instead of a guest-side timeout.
        let left = deadline.saturating_duration_since(Instant::now()) + DEADLINE_MARGIN;
        let clip = |d: Option<Duration>| d.map_or(left, |d| d.min(left));
        let connect_timeout = clip(options.and_then(|o| o.connect_timeout));
        let first_byte_timeout = clip(options.and_then(|o| o.first_byte_timeout));
        let between_bytes_timeout = clip(options.and_then(|o| o.between_bytes_timeout)).max(Duration::from_nanos(1));

        let addrs = match t.ip {
            Some(ip) => vec![SocketAddr::new(ip, t.port)],
            None => match tokio::time::timeout(connect_timeout, tokio::net::lookup_host((t.host.as_str(), t.port)))
                .await
            {
                Err(_) => return Err(fail(HttpError::DnsTimeout)),
                Ok(Err(e)) => return Err(fail(HttpError::DnsError { rcode: Some(e.to_string()), info_code: None })),
                Ok(Ok(a)) => a.collect::<Vec<_>>(),
            },
        };
        if !grant.literal_ip {
            if let Some((ip, kind)) = addrs.iter().find_map(|a| forbidden(a.ip()).map(|k| (a.ip(), k))) {
                return Err(this.refuse(&t, &shown, &Refusal::Ssrf { ip, kind }));
            }
        }
        if addrs.is_empty() {
            return Err(fail(HttpError::DestinationNotFound));
        }
        let connected = tokio::time::timeout(connect_timeout, async {
            let mut last = None;
            for a in &addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("at least one address"))
        })
        .await;
        let tcp = match connected {
            Err(_) => return Err(fail(HttpError::ConnectionTimeout)),
            Ok(Err(e)) => return Err(fail(HttpError::Connect(e))),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if t.https {
            let tls = this.tls().map_err(fail)?;
            let name = match t.ip {
                Some(ip) => ServerName::from(ip),
                None => ServerName::try_from(t.host.clone()).map_err(|e| fail(HttpError::InvalidDnsNameError(e)))?,
            };
            let connector = tokio_rustls::TlsConnector::from(tls);
            match tokio::time::timeout(connect_timeout, connector.connect(name, tcp)).await {
                Err(_) => return Err(fail(HttpError::ConnectionTimeout)),
                Ok(Err(e)) => return Err(fail(HttpError::Tls(e))),
                Ok(Ok(s)) => Box::new(s),
            }
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) =
            match tokio::time::timeout(connect_timeout, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
            {
                Err(_) => return Err(fail(HttpError::ConnectionTimeout)),
                Ok(Err(e)) => return Err(fail(HttpError::Hyper(e))),
                Ok(Ok(x)) => x,
            };
        // On the wire the request line carries the path only (not a proxy
        // request); the Host header was set from the authority already.
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        *req.uri_mut() =
            http::Uri::builder().path_and_query(path).build().map_err(|_| HttpError::HttpRequestUriInvalid)?;

        // Wait for the response head while driving the connection, as
        // wasmtime-wasi-http's default sender does.
        let mut send = pin!(async {
            match tokio::time::timeout(first_byte_timeout, sender.send_request(req)).await {
                Err(_) => Err(HttpError::ConnectionReadTimeout),
                Ok(r) => {
                    r.map_err(|e| if e.is_timeout() { HttpError::HttpResponseTimeout } else { HttpError::Hyper(e) })
                }
            }
        });
        let mut conn = Some(conn);
        let res = poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                let Some(c) = conn.as_mut() else { return Poll::Pending };
                let r = ready!(Pin::new(c).poll(cx));
                conn = None;
                match r {
                    Ok(()) => send.as_mut().poll(cx),
                    Err(e) => Poll::Ready(Err(HttpError::Hyper(e))),
                }
            }
        })
        .await
        .map_err(fail)?;
        let status = res.status().as_u16();
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "1xx",
        };
        metrics::global().http_request(&this.queue, &t.host, class);
        metrics::global().http_seconds(&this.queue, started.elapsed());
        let body_meta = Finished { grants: grants.clone(), shown, status, started };
        let res = res.map(|incoming| {
            GuardedBody {
                incoming,
                between: between_bytes_timeout,
                timer: Box::pin(tokio::time::sleep(between_bytes_timeout)),
                read: 0,
                cap: this.max_response_bytes,
                failed: false,
                finished: Some(body_meta),
                _permit: permit,
            }
            .boxed_unsync()
        });
        let io: IoFuture = Box::new(async move {
            match conn {
                Some(c) => c.await.map_err(|e| if e.is_timeout() { HttpError::HttpResponseTimeout } else { e.into() }),
                None => Ok(()),
            }
        });
        Ok((res, io))
    }

    /// A request that ended without a response (or whose body ended): count
    /// failures, and print it for `bullpen run`.
    fn finished(&self, t: &Target, shown: &str, outcome: &'static str, started: Instant, text: &str) {
        if outcome == "error" {
            metrics::global().http_request(&self.queue, &t.host, "error");
            metrics::global().http_seconds(&self.queue, started.elapsed());
        }
        self.print(shown, text, outcome);
        debug!(queue = %self.queue, request = %shown, outcome = %text, "outbound HTTP request");
    }

    fn print(&self, shown: &str, text: &str, outcome: &str) {
        if let Some(r) = self.report {
            r.event(
                &format!("http {shown} -> {text}"),
                serde_json::json!({ "event": "http", "request": shown, "outcome": outcome, "result": text }),
            );
        }
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// The per-attempt side of the hook: the binding's grants, the attempt's
/// deadline and its in-flight permits.
pub(crate) struct Hooks {
    pub(crate) grants: Arc<Grants>,
    /// When the attempt's wall clock runs out (set when its call starts).
    pub(crate) deadline: Instant,
    /// Made on the first request: most attempts send none.
    in_flight: Option<Arc<Semaphore>>,
}

impl Hooks {
    pub(crate) fn new(grants: Arc<Grants>) -> Self {
        Hooks { grants, deadline: Instant::now(), in_flight: None }
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        let grants = self.grants.clone();
        let max = grants.outbound.max_in_flight;
        let permits = self.in_flight.get_or_insert_with(|| Arc::new(Semaphore::new(max))).clone();
        let deadline = self.deadline;
        let Some(span) = crate::span::trace(|t| traced_request(t, &mut request)) else {
            return Box::new(Outbound::send(grants, request, options, deadline, permits));
        };
        Box::new(async move {
            let sent = Outbound::send(grants, request, options, deadline, permits).await;
            match &sent {
                Ok((res, _)) => {
                    span.set("http.response.status_code", i64::from(res.status().as_u16()));
                    span.ok();
                }
                Err(e) => span.err(&e.to_string()),
            }
            sent
        })
    }
}

/// The request's client span, a child of the attempt's (`telemetry.rs`),
/// and its `traceparent` header, so the server continues the trace. The
/// span names the URL without its query (which may carry credentials).
fn traced_request(t: &crate::telemetry::Trace, request: &mut http::Request<WasiBody>) -> crate::telemetry::ChildSpan {
    let uri = request.uri();
    let url = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str().rsplit('@').next().unwrap_or("")),
        uri.path()
    );
    let (span, traceparent) = t.http(request.method().as_str(), &url);
    if let Some(v) = traceparent.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
        request.headers_mut().insert("traceparent", v);
    }
    span
}

/// A load-time probe's hooks: every request is refused.
pub(crate) struct DenyAll;

impl WasiHttpHooks for DenyAll {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send> {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

/// The response body as the guest reads it: capped, with the between-bytes
/// timeout, holding its in-flight permit until read or dropped.
struct GuardedBody {
    incoming: hyper::body::Incoming,
    between: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    read: u64,
    cap: u64,
    failed: bool,
    finished: Option<Finished>,
    _permit: OwnedSemaphorePermit,
}

/// What is printed when a response body ends (`bullpen run`).
struct Finished {
    grants: Arc<Grants>,
    shown: String,
    status: u16,
    started: Instant,
}

impl GuardedBody {
    fn finish(&mut self, note: &str) {
        if let Some(f) = self.finished.take() {
            let ms = f.started.elapsed().as_millis();
            let text = format!("{} ({} B, {ms} ms{note})", f.status, self.read);
            f.grants.outbound.print(&f.shown, &text, "response");
            debug!(queue = %f.grants.outbound.queue, request = %f.shown, status = f.status, bytes = self.read, ms, "outbound HTTP request");
        }
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        self.finish("");
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish("");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.finish(", then an error");
                Poll::Ready(Some(Err(if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::Hyper(e)
                })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.read += d.len() as u64;
                    if this.read > this.cap {
                        this.failed = true;
                        let cap = this.cap;
                        this.finish(&format!(", over the {} MiB --max-http-response-mb", cap >> 20));
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(this.read)))));
                    }
                }
                let next = tokio::time::Instant::now() + this.between;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                this.failed = true;
                this.finish(", then the between-bytes timeout");
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// Why a request was refused before it left.
enum Refusal {
    NotAllowed,
    Ssrf { ip: IpAddr, kind: &'static str },
}

impl Refusal {
    fn short(&self) -> String {
        match self {
            Refusal::NotAllowed => "not in --allow-outbound".into(),
            Refusal::Ssrf { ip, kind } => format!("resolves to {ip}, a {kind} address"),
        }
    }

    fn hint(&self, t: &Target) -> String {
        let scheme = if t.https { "https" } else { "http" };
        match self {
            Refusal::NotAllowed => format!(
                "{scheme}://{}:{} is not in the queue's allow-list; grant it with --allow-outbound {scheme}://{} \
                 (allowed_outbound_hosts in bullpen.toml)",
                t.host, t.port, t.host
            ),
            Refusal::Ssrf { ip, kind } => format!(
                "{} resolves to {ip}, a {kind} address, which a host allowed by name may not reach; \
                 grant the address itself to reach it (--allow-outbound {scheme}://{ip}:{})",
                t.host, t.port
            ),
        }
    }

    fn code(&self) -> HttpError {
        match self {
            Refusal::NotAllowed => HttpError::HttpRequestDenied,
            Refusal::Ssrf { .. } => HttpError::DestinationIpProhibited,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    literal_ip: bool,
}

/// Where a request goes, from its URI.
#[derive(Debug)]
struct Target {
    https: bool,
    /// Lowercase host name, or the IP literal's text (no brackets).
    host: String,
    ip: Option<IpAddr>,
    port: u16,
    /// `https://host[:port]/path` (no query: it may carry a key).
    shown: String,
}

impl Target {
    fn of(uri: &http::Uri) -> Option<Target> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let raw = uri.host()?;
        let bare = raw.trim_start_matches('[').trim_end_matches(']');
        let ip = bare.parse::<IpAddr>().ok();
        let host = bare.trim_end_matches('.').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(raw);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let shown = format!("{}://{authority}{}", if https { "https" } else { "http" }, uri.path());
        Some(Target { https, host, ip, port, shown })
    }
}

/// One `--allow-outbound` pattern: `scheme://host[:port]`, where host may be
/// `*.example.com` (any subdomain, not the domain itself), `*` (any host;
/// the SSRF rule still applies) or an IP literal, and port may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    https: bool,
    host: HostPattern,
    /// `None`: any port (`:*`). Absent from the pattern: the scheme's default.
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Name(String),
    Ip(IpAddr),
    /// `*.example.com`: the suffix `.example.com`.
    Subdomains(String),
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Result<Pattern, GrantError> {
        let bad = |why: &str| GrantError::Pattern { pattern: text.to_string(), why: why.to_string() };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("it needs a scheme (https:// or http://)"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("a pattern is scheme, host and port only (no path, query or user)"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in an IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad("the port must be a number or *"))?),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(bad("a wildcard is `*.` before a domain"));
            }
            HostPattern::Subdomains(format!(".{domain}"))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Ip(ip)
        } else if host.contains('*') {
            return Err(bad("a wildcard is `*.` before a domain"));
        } else {
            HostPattern::Name(host.trim_end_matches('.').to_string())
        };
        Ok(Pattern { https, host, port, text: text.to_string() })
    }

    fn matches(&self, t: &Target) -> bool {
        if self.https != t.https || self.port.is_some_and(|p| p != t.port) {
            return false;
        }
        match (&self.host, t.ip) {
            (HostPattern::Any, _) => true,
            (HostPattern::Ip(ip), Some(tip)) => *ip == tip,
            (HostPattern::Ip(_), None) => false,
            (HostPattern::Name(n), None) => *n == t.host,
            (HostPattern::Subdomains(s), None) => t.host.ends_with(s.as_str()),
            (HostPattern::Name(_) | HostPattern::Subdomains(_), Some(_)) => false,
        }
    }
}

/// The SSRF rule: addresses a host allowed by name may not resolve to.
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_private() => Some("private"),
        IpAddr::V4(a) if a.is_unspecified() || a.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(a) if a.segments()[0] & 0xfe00 == 0xfc00 => Some("private"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::of(&url.parse().unwrap()).unwrap()
    }

    fn allows(pattern: &str, url: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(&target(url))
    }

    #[test]
    fn patterns_check_scheme_host_and_port() {
        assert!(allows("https://api.example.com", "https://api.example.com/v1?x=1"));
        assert!(allows("https://api.example.com", "https://API.example.com:443/"));
        assert!(!allows("https://api.example.com", "http://api.example.com/"), "scheme");
        assert!(!allows("https://api.example.com", "https://api.example.com:8443/"), "default port implied");
        assert!(!allows("https://api.example.com", "https://evil.com/?api.example.com"));
        assert!(!allows("https://api.example.com", "https://api.example.com.evil.com/"));
        assert!(allows("https://*.example.com", "https://a.b.example.com/"));
        assert!(!allows("https://*.example.com", "https://example.com/"), "subdomains only");
        assert!(!allows("https://*.example.com", "https://badexample.com/"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081/x"));
        assert!(!allows("http://127.0.0.1:8080", "http://localhost:8080/x"), "a name is not its address");
        assert!(allows("http://[::1]:8080", "http://[::1]:8080/"));
        assert!(allows("http://localhost:*", "http://localhost:1234/"));
        assert!(allows("https://*", "https://anything.test/"));
        for bad in ["api.example.com", "ftp://x", "https://x/path", "https://", "https://a.*.com", "https://x:port"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ssrf_rule_names_the_kind_of_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(forbidden(ip("127.0.0.1")), Some("loopback"));
        assert_eq!(forbidden(ip("169.254.169.254")), Some("link-local"));
        assert_eq!(forbidden(ip("10.1.2.3")), Some("private"));
        assert_eq!(forbidden(ip("172.16.0.1")), Some("private"));
        assert_eq!(forbidden(ip("192.168.1.1")), Some("private"));
        assert_eq!(forbidden(ip("0.0.0.0")), Some("unspecified"));
        assert_eq!(forbidden(ip("::1")), Some("loopback"));
        assert_eq!(forbidden(ip("::ffff:127.0.0.1")), Some("loopback"));
        assert_eq!(forbidden(ip("fe80::1")), Some("link-local"));
        assert_eq!(forbidden(ip("fd00::1")), Some("private"));
        assert_eq!(forbidden(ip("93.184.216.34")), None);
        assert_eq!(forbidden(ip("2606:4700::1111")), None);
    }

    #[test]
    fn shown_urls_leave_out_the_query_and_user() {
        assert_eq!(target("https://u:p@h.example:8443/a/b?key=secret").shown, "https://h.example:8443/a/b");
    }
}
