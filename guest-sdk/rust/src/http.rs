//! Outbound HTTP(S) from a processor, over `wasi:http/outgoing-handler`.
//!
//! A thin, blocking client: `process` is synchronous, so a request is a
//! call that returns the whole response. While it waits the host runs other
//! attempts (the wait is the host's, not a spinning guest). Redirects are
//! not followed: a 3xx is a response like any other.
//!
//! The host sends only to origins the queue's binding grants
//! (`--allow-outbound`); a refused request is an [`HttpError`] whose text
//! names the host and the flag. `?` on it in `process` retries the job.
//!
//! ```no_run
//! # use bullpen_guest::{http, JobError, Outcome};
//! # fn f() -> Result<Outcome, JobError> {
//! let res = http::post("https://api.example.com/v1/charges")
//!     .header("authorization", format!("Bearer {}", bullpen_guest::variable("api_key")?))
//!     .json(&serde_json::json!({ "amount": 100 }))?
//!     .send()?;
//! if res.status >= 500 { return Err(JobError::retry(format!("HTTP {}", res.status))); }
//! # Outcome::complete(&res.text())
//! # }
//! ```
//!
//! Why not `wstd`: it is an async runtime, and a processor is one synchronous
//! call; this client is a few hundred lines over the bindings of the
//! contract's own WIT (no second copy of wasi:http's bindings, no executor).
//! Guests that want async can still use `wstd` (the host links wasi:http for
//! every component).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::JobError;

/// A request being built. Send it with [`Request::send`].
#[derive(Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

/// A response, body read whole (the host caps it: `--max-http-response-mb`).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body's bytes.
    pub body: Vec<u8>,
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// The request's `scheme://host[:port]` (never its path or query).
    pub origin: String,
    /// The host refused it before it left: not in `--allow-outbound`, or the
    /// SSRF rule (a name resolving to a private address).
    pub denied: bool,
    message: String,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// `GET url`.
pub fn get(url: impl Into<String>) -> Request {
    Request::new("GET", url)
}

/// `POST url`.
pub fn post(url: impl Into<String>) -> Request {
    Request::new("POST", url)
}

/// `PUT url`.
pub fn put(url: impl Into<String>) -> Request {
    Request::new("PUT", url)
}

/// `DELETE url`.
pub fn delete(url: impl Into<String>) -> Request {
    Request::new("DELETE", url)
}

impl Request {
    /// A request with any method (`"PATCH"`, ...).
    pub fn new(method: &str, url: impl Into<String>) -> Request {
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            _ => Method::Other(method.to_string()),
        };
        Request { method, url: url.into(), headers: Vec::new(), body: Vec::new(), timeout: None }
    }

    /// Add a header (repeatable for the same name).
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// The request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// `value` as a JSON body, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Request, JobError> {
        let body = serde_json::to_vec(value)?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// A limit for connecting, for the first byte and between bytes. The
    /// host also clips every wait to the attempt's remaining time.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Send it and read the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url).map_err(|why| HttpError {
            origin: String::new(),
            denied: false,
            message: format!("invalid URL {:?}: {why}", self.url),
        })?;
        let origin = format!("{}://{}", url.scheme, url.authority);
        let fail = |message: String| HttpError { origin: origin.clone(), denied: false, message };
        let failed = |code: ErrorCode| describe(&origin, code);

        let headers = Fields::new();
        for (name, value) in &self.headers {
            headers.append(name, value).map_err(|e| fail(format!("header {name:?} refused: {e:?}")))?;
        }
        // The whole body is known: say its length (else it goes chunked,
        // which some servers refuse).
        let has_length = self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !has_length && (!self.body.is_empty() || matches!(self.method, Method::Post | Method::Put | Method::Patch)) {
            let _ = headers.append("content-length", self.body.len().to_string().as_bytes());
        }
        let req = OutgoingRequest::new(headers);
        let scheme = if url.scheme == "https" { Scheme::Https } else { Scheme::Http };
        req.set_method(&self.method).map_err(|_| fail("invalid method".into()))?;
        req.set_scheme(Some(&scheme)).map_err(|_| fail("invalid scheme".into()))?;
        req.set_authority(Some(&url.authority)).map_err(|_| fail("invalid host".into()))?;
        req.set_path_with_query(Some(&url.path_and_query)).map_err(|_| fail("invalid path".into()))?;
        let options = self.timeout.map(|t| {
            let o = RequestOptions::new();
            let ns = t.as_nanos().min(u64::MAX as u128) as u64;
            let _ = o.set_connect_timeout(Some(ns));
            let _ = o.set_first_byte_timeout(Some(ns));
            let _ = o.set_between_bytes_timeout(Some(ns));
            o
        });
        let out_body = req.body().map_err(|_| fail("request body unavailable".into()))?;
        // Send first, then write the body: the host streams it as written.
        let pending = outgoing_handler::handle(req, options).map_err(failed)?;
        // A body that cannot be sent is usually a request that failed (a
        // refused connection, a denial): that error is the response's, so
        // remember the write's and report the response's first.
        let mut write_error = None;
        {
            let stream = out_body.write().map_err(|_| fail("request body unavailable".into()))?;
            for chunk in self.body.chunks(4096) {
                if let Err(e) = stream.blocking_write_and_flush(chunk) {
                    write_error = Some(match e {
                        StreamError::LastOperationFailed(e) => {
                            match crate::bindings::wasi::http::types::http_error_code(&e) {
                                Some(code) => failed(code),
                                None => fail(format!("sending the body failed: {}", e.to_debug_string())),
                            }
                        }
                        StreamError::Closed => fail("the connection closed while sending the body".into()),
                    });
                    break;
                }
            }
        }
        if write_error.is_none() {
            if let Err(code) = OutgoingBody::finish(out_body, None) {
                write_error = Some(failed(code));
            }
        }
        let response = loop {
            match pending.get() {
                Some(Ok(Ok(r))) => break r,
                Some(Ok(Err(code))) => return Err(failed(code)),
                Some(Err(())) => return Err(fail("the response was already taken".into())),
                None => pending.subscribe().block(),
            }
        };
        if let Some(e) = write_error {
            return Err(e);
        }
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|_| fail("response body unavailable".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(|_| fail("response body unavailable".into()))?;
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(match crate::bindings::wasi::http::types::http_error_code(&e) {
                            Some(code) => failed(code),
                            // wasmtime-wasi-http 48 reports body errors as
                            // its own error type, which http-error-code does
                            // not recognise: the text is all there is.
                            None => {
                                let text = e.to_debug_string();
                                let hint = if text.contains("body size exceeds limit") {
                                    " (--max-http-response-mb)"
                                } else {
                                    ""
                                };
                                fail(format!("reading the response from {origin} failed: {text}{hint}"))
                            }
                        });
                    }
                }
            }
        }
        let _ = IncomingBody::finish(incoming);
        Ok(Response { status, headers, body })
    }
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// The text for a wasi:http error code: what happened, to which origin, and
/// for a refusal, the flag that grants it.
fn describe(origin: &str, code: ErrorCode) -> HttpError {
    let (denied, message) = match &code {
        ErrorCode::HttpRequestDenied => (
            true,
            format!(
                "request to {origin} denied: not in this queue's allow-list \
                 (grant it with --allow-outbound {origin}, or allowed_outbound_hosts in bullpen.toml)"
            ),
        ),
        ErrorCode::DestinationIpProhibited => (
            true,
            format!(
                "request to {origin} refused: the host resolves to a loopback, link-local, private or \
                 unspecified address; grant that IP itself with --allow-outbound to reach it"
            ),
        ),
        ErrorCode::ConnectionRefused => (false, format!("request to {origin} failed: connection refused")),
        ErrorCode::ConnectionTimeout => (false, format!("request to {origin} failed: connect timed out")),
        ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
            (false, format!("request to {origin} failed: timed out waiting for the response"))
        }
        ErrorCode::ConnectionLimitReached => (
            false,
            format!("request to {origin} refused: too many requests in flight in this attempt (--max-http-in-flight)"),
        ),
        ErrorCode::HttpResponseBodySize(n) => (
            false,
            format!(
                "response from {origin} is too large ({} bytes read; --max-http-response-mb)",
                n.map_or("over the limit".into(), |n| n.to_string())
            ),
        ),
        ErrorCode::TlsCertificateError | ErrorCode::TlsProtocolError | ErrorCode::TlsAlertReceived(_) => {
            (false, format!("request to {origin} failed: TLS error ({code:?}); a private CA needs --http-ca"))
        }
        ErrorCode::DnsError(e) => {
            (false, format!("request to {origin} failed: DNS error ({})", e.rcode.clone().unwrap_or_default()))
        }
        ErrorCode::InternalError(Some(e)) => (false, format!("request to {origin} failed: {e}")),
        other => (false, format!("request to {origin} failed: {other:?}")),
    };
    HttpError { origin: origin.to_string(), denied, message }
}

/// The parts of an absolute `http(s)://` URL a request needs.
struct Url {
    scheme: String,
    authority: String,
    path_and_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, &'static str> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme (https:// or http://)")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err("the scheme must be http or https");
        }
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err("no host");
        }
        let path_and_query = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url { scheme, authority: authority.to_string(), path_and_query })
    }
}
