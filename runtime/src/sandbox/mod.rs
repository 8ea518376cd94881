//! What a guest may use during one attempt: time, memory, output, and a
//! WASI context that grants nothing but clocks and randomness. The engine
//! they run on is [`engine`]. Nothing here knows about jobs.

pub(crate) mod engine;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Per-binding limits for every attempt. Defaults are written next to why.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Wall-clock time for one attempt. 30 s: BullMQ's default lock
    /// duration, so a stuck guest is stopped about when a Node worker's job
    /// would be considered stalled.
    pub(crate) timeout: Duration,
    /// Linear memory per instance. 128 MiB is ample for JSON jobs (a JS
    /// guest uses ~20 MiB) and keeps 100 concurrent attempts under ~13 GiB.
    pub(crate) max_memory_bytes: usize,
    /// Captured stdout+stderr per attempt. 64 KiB keeps a chatty guest
    /// from filling Redis; the excess is dropped and counted in the log.
    pub(crate) max_output_bytes: usize,
    /// Longest line the guest may log, and longest progress JSON (bytes).
    pub(crate) max_log_line_bytes: usize,
    /// Fuel per attempt (`--fuel`); `None` = not metered. Needs an engine
    /// built with `EngineOptions { fuel: true }`.
    pub(crate) fuel: Option<u64>,
    /// Largest `update-data` / `add-child` data / return value (bytes).
    /// 16 MiB: far above BullMQ's practical sizes, far below Redis's 512 MiB.
    pub(crate) max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_memory_bytes: 128 << 20,
            max_output_bytes: 64 << 10,
            max_log_line_bytes: 64 << 10,
            fuel: None,
            max_payload_bytes: 16 << 20,
        }
    }
}

/// A WASI context with nothing granted: no preopens, no env, no args, no
/// network (sockets deny every address; name lookup off). Clocks and random
/// are allowed. stdout/stderr go to `out`.
pub(crate) fn wasi_ctx(out: &CapturedOutput) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(out.clone())
        .stderr(out.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Caps linear memory and remembers that the cap was hit, so the
/// failedReason can name the limit instead of a bare allocation trap.
pub(crate) struct MemoryLimiter {
    max: usize,
    /// The size the guest asked for when it was refused: the attempt ends
    /// naming this limit.
    pub(crate) hit: Option<usize>,
    /// The largest size granted to any of the instance's memories (metrics).
    pub(crate) peak: usize,
}

impl MemoryLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        MemoryLimiter { max: limits.max_memory_bytes, hit: None, peak: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = Some(desired);
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; 1M entries is far above any real guest.
        Ok(desired <= 1_000_000)
    }
}

/// stdout/stderr of one attempt, bounded. Writes never fail (a guest whose
/// `println!` failed would panic), they are dropped past the cap instead.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    buf: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl CapturedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        CapturedOutput { inner: Arc::new(Mutex::new(Captured { cap, ..Default::default() })) }
    }

    /// The same capture, emptied for a new attempt with a fresh `cap`
    /// (a reused instance's WASI context keeps writing here).
    pub(crate) fn reset(&self, cap: usize) -> Self {
        *self.inner.lock().unwrap() = Captured { cap, ..Default::default() };
        self.clone()
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap();
        let room = c.cap.saturating_sub(c.buf.len());
        let mut n = room.min(bytes.len());
        if n < bytes.len() {
            // Cut on a character boundary, so the kept text stays within the cap.
            if let Err(e) = std::str::from_utf8(&bytes[..n]) {
                if e.error_len().is_none() {
                    n = e.valid_up_to();
                }
            }
        }
        c.buf.extend_from_slice(&bytes[..n]);
        c.dropped += bytes.len() - n;
    }

    /// Take the complete lines captured so far, each cut to `max_line`
    /// bytes, plus one line saying how much was dropped, if anything was.
    /// The cap applies to the whole attempt, not to each take.
    pub(crate) fn take_lines(&self, max_line: usize) -> Vec<String> {
        let mut c = self.inner.lock().unwrap();
        let buf = std::mem::take(&mut c.buf);
        let text = String::from_utf8_lossy(&buf);
        let mut lines: Vec<String> =
            text.lines().filter(|l| !l.is_empty()).map(|l| truncate_utf8(l, max_line).to_string()).collect();
        c.cap = c.cap.saturating_sub(buf.len());
        if c.dropped > 0 {
            lines.push(format!("[bullpen] output truncated: {} bytes over the per-attempt limit dropped", c.dropped));
            c.dropped = 0;
        }
        lines
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
