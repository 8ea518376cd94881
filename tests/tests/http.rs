//! Outbound HTTP and variables: the `webhook` plugin against HTTP(S)
//! servers on loopback started by each test (a small tokio server below;
//! HTTPS with a CA the test makes with openssl). Allowed and denied hosts,
//! the SSRF rule, redirects not followed, the body cap, timeouts, 100 slow
//! requests on one thread, secrets kept out of every output, and Node's
//! bullmq reading every outcome.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullpen_tests::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SECRET: &str = "s3cr3t-hunter2-do-not-print";
const T: Duration = Duration::from_secs(60);

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP(S) server on 127.0.0.1, answering by path:
/// `/hook` 200 `ok` if the signature is right (else 401), `/big` 200 with
/// 3000 bytes, `/status/N` status N (`/status/503` with `Retry-After: 2`),
/// `/redirect` 302 to `/hook`, `/slow/MS` 200 after MS ms, `/huge` 2 MiB.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            if let Ok(t) = tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await {
                                serve(t, s).await
                            }
                        }
                        None => serve(sock, s).await,
                    }
                });
            }
        });
        Server { addr, seen, _rt: rt }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let sig_ok = headers.get("x-bullpen-signature").is_some_and(|v| *v == signature(&body));
    seen.lock().unwrap().push(Seen { method, path: path.clone(), headers, body });
    let (status, extra, reply): (u16, &str, Vec<u8>) = if path == "/hook" {
        if sig_ok {
            (200, "", b"ok".to_vec())
        } else {
            (401, "", b"bad signature".to_vec())
        }
    } else if path == "/big" {
        (200, "", "0123456789".repeat(300).into_bytes())
    } else if path == "/redirect" {
        (302, "Location: /hook\r\n", Vec::new())
    } else if path == "/huge" {
        (200, "", vec![b'x'; 2 << 20])
    } else if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap();
        (code, if code == 503 { "Retry-After: 2\r\n" } else { "" }, b"status".to_vec())
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        (200, "", b"slow".to_vec())
    } else {
        (404, "", b"no such path".to_vec())
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n{extra}\r\n",
        reply.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(&reply).await;
    let _ = s.shutdown().await;
}

/// What `bullpen run` printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Ran {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let out = bullpen(&all);
    let r = Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    assert!(
        !r.stdout.contains(SECRET) && !r.stderr.contains(SECRET),
        "the secret was printed:\n{}{}",
        r.stdout,
        r.stderr
    );
    r
}

/// `bullpen run webhook-<lang>` on `url` with `payload`, the server allowed
/// and the secret granted, plus `extra` flags.
fn webhook(lang: &str, s: &Server, url: &str, extra: &[&str]) -> Ran {
    let wasm = webhook_plugin(lang);
    let data = json!({ "url": url, "payload": {"b": 1, "a": [1, 2], "s": "é \"q\""} }).to_string();
    let secret = format!("webhook_secret={SECRET}");
    let origin = s.origin();
    let mut args = vec![wasm.to_str().unwrap(), "--data", &data, "--allow-outbound", &origin, "--var", &secret];
    args.extend_from_slice(extra);
    run(&args)
}

/// `target/plugins/webhook-<lang>.wasm`, compiled into the host's artifact
/// cache before its first use. A Go webhook is about 11 MB (net/http's
/// client), tens of seconds of compiling on a busy 2-core machine: once,
/// not once per test running in parallel.
fn webhook_plugin(lang: &str) -> std::path::PathBuf {
    static WARM: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let wasm = plugin("webhook", lang);
    let mut warm = WARM.lock().unwrap();
    if !warm.iter().any(|l| l == lang) {
        // Invalid data: the attempt fails at once, after the load compiled it.
        run(&[wasm.to_str().unwrap(), "--data", "{}"]);
        warm.push(lang.to_string());
    }
    wasm
}

fn last_line(r: &Ran) -> &str {
    r.stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", r.stderr))
}

/// The contract of `webhook` (README "Calling other services"), checked
/// against the server: body, headers, signature, and each outcome.
fn webhook_contract(lang: &str) {
    let s = Server::start(None);
    let o = s.origin();

    let r = webhook(lang, &s, &s.url("/hook"), &[]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(last_line(&r), r#"completed {"status":200,"body":"ok"}"#);
    assert!(r.stdout.contains(&format!("http POST {o}/hook -> 200 (2 B, ")), "{}", r.stdout);
    let got = s.seen().pop().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(
        String::from_utf8(got.body.clone()).unwrap(),
        r#"{"b":1,"a":[1,2],"s":"é \"q\""}"#,
        "JSON.stringify(payload)"
    );
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(got.headers["x-bullpen-signature"], signature(&got.body));

    let r = webhook(lang, &s, &s.url("/big"), &[]);
    let v: Value = serde_json::from_str(last_line(&r).strip_prefix("completed ").unwrap()).unwrap();
    assert_eq!(v["body"].as_str().unwrap().len(), 1024, "the first 1024 bytes");

    let r = webhook(lang, &s, &s.url("/status/503"), &[]);
    assert_eq!(last_line(&r), "failed (retry-after 2000 ms): HTTP 503");
    let r = webhook(lang, &s, &s.url("/status/500"), &[]);
    assert_eq!(last_line(&r), "failed (retry-after 1000 ms): HTTP 500");
    let r = webhook(lang, &s, &s.url("/status/429"), &[]);
    assert_eq!(last_line(&r), "failed (retry-after 1000 ms): HTTP 429");
    let r = webhook(lang, &s, &s.url("/status/404"), &[]);
    assert_eq!(last_line(&r), "failed (unrecoverable): HTTP 404");

    // A redirect is the guest's to follow: the host sends one request.
    let before = s.seen().len();
    let r = webhook(lang, &s, &s.url("/redirect"), &[]);
    assert_eq!(last_line(&r), "failed (unrecoverable): HTTP 302");
    assert_eq!(s.seen().len(), before + 1, "only /redirect was requested");
    assert_eq!(s.seen().last().unwrap().path, "/redirect");

    // No secret: unrecoverable, saying so; nothing sent.
    let wasm = webhook_plugin(lang);
    let data = json!({ "url": s.url("/hook"), "payload": 1 }).to_string();
    let r = run(&[wasm.to_str().unwrap(), "--data", &data, "--allow-outbound", &o]);
    assert!(
        last_line(&r).starts_with("failed (unrecoverable): ") && last_line(&r).contains("webhook_secret"),
        "{}",
        r.stdout
    );
    assert_eq!(s.seen().len(), before + 1);
}

#[test]
fn webhook_rust_follows_the_contract() {
    webhook_contract("rust");
}

#[test]
fn webhook_js_follows_the_contract() {
    webhook_contract("js");
}

#[test]
fn webhook_go_follows_the_contract() {
    webhook_contract("go");
}

#[test]
fn webhook_python_follows_the_contract() {
    webhook_contract("python");
}

#[test]
fn requests_outside_the_allow_list_never_leave_the_host() {
    allow_list("rust");
}

#[test]
fn requests_outside_the_allow_list_never_leave_the_host_go() {
    allow_list("go");
}

#[test]
fn requests_outside_the_allow_list_never_leave_the_host_js() {
    allow_list("js");
}

#[test]
fn requests_outside_the_allow_list_never_leave_the_host_python() {
    allow_list("python");
}

/// Denials, the SSRF rule, a network error and the body cap, as `lang`'s
/// SDK reports them: each text names the origin and what to do.
fn allow_list(lang: &str) {
    let s = Server::start(None);
    let other = Server::start(None);
    let wasm = webhook_plugin(lang);
    // Another port of the same host is another origin.
    let r = webhook(lang, &s, &other.url("/hook"), &[]);
    let o = other.origin();
    assert!(r.stdout.contains(&format!("http POST {o}/hook -> denied (not in --allow-outbound)")), "{}", r.stdout);
    let last = last_line(&r);
    // The SDKs' one text for a denial.
    assert_eq!(
        last,
        format!(
            "failed (retry): request to {o} denied: not in this queue's allow-list \
             (grant it with --allow-outbound {o}, or allowed_outbound_hosts in bullpen.toml)"
        )
    );
    assert!(other.seen().is_empty());

    // The SSRF rule: a name that resolves to loopback is refused unless the
    // pattern names the IP itself.
    let port = s.addr.port();
    let by_name = format!("http://localhost:{port}");
    let data = json!({ "url": format!("{by_name}/hook"), "payload": 1 }).to_string();
    let secret = format!("webhook_secret={SECRET}");
    let r = run(&[wasm.to_str().unwrap(), "--data", &data, "--allow-outbound", &by_name, "--var", &secret]);
    assert!(
        r.stdout.contains("-> denied (resolves to 127.0.0.1, a loopback address)")
            || r.stdout.contains("-> denied (resolves to ::1, a loopback address)"),
        "{}",
        r.stdout
    );
    assert!(
        last_line(&r).starts_with("failed (retry): ") && last_line(&r).contains("resolves to a loopback"),
        "{}",
        r.stdout
    );
    assert!(s.seen().is_empty(), "nothing reached the server");

    // Nothing listening: a network error, retried, naming it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let data = json!({ "url": format!("{dead}/hook"), "payload": 1 }).to_string();
    let r = run(&[wasm.to_str().unwrap(), "--data", &data, "--allow-outbound", &dead, "--var", &secret]);
    assert!(
        last_line(&r).starts_with("failed (retry): ") && last_line(&r).contains("connection refused"),
        "{}",
        r.stdout
    );

    // The body cap fails the read, naming the flag.
    let r = webhook(lang, &s, &s.url("/huge"), &["--max-http-response-mb", "1"]);
    assert!(
        last_line(&r).starts_with("failed (retry): ") && last_line(&r).contains("--max-http-response-mb"),
        "{}",
        r.stdout
    );

    // A bad pattern stops before anything runs.
    let r = run(&[wasm.to_str().unwrap(), "--allow-outbound", "api.example.com"]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not a valid pattern"), "{}", r.stderr);
}

/// A TLS server config with the harness's certificate for 127.0.0.1,
/// signed by its test CA (`certs.path("ca.pem")`).
fn server_tls(certs: &Certs) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.path("server.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

#[test]
fn https_with_the_tests_ca_and_refused_without_it() {
    https("rust");
}

#[test]
fn https_with_the_tests_ca_and_refused_without_it_go() {
    https("go");
}

#[test]
fn https_with_the_tests_ca_and_refused_without_it_js() {
    https("js");
}

#[test]
fn https_with_the_tests_ca_and_refused_without_it_python() {
    https("python");
}

fn https(lang: &str) {
    let certs = Certs::make();
    let s = Server::start(Some(server_tls(&certs)));
    let origin = format!("https://{}", s.addr);
    let wasm = webhook_plugin(lang);
    let data = json!({ "url": format!("{origin}/hook"), "payload": {"x": 1} }).to_string();
    let secret = format!("webhook_secret={SECRET}");
    let ca = certs.path("ca.pem");
    let base = [wasm.to_str().unwrap(), "--data", &data, "--allow-outbound", &origin, "--var", &secret];
    let r = run(&[&base[..], &["--http-ca", ca.to_str().unwrap()]].concat());
    assert_eq!(last_line(&r), r#"completed {"status":200,"body":"ok"}"#, "{}", r.stdout);
    let r = run(&base);
    assert!(last_line(&r).starts_with("failed (retry): ") && last_line(&r).contains("TLS"), "{}", r.stdout);
    assert_eq!(s.seen().len(), 1, "the refused handshake sent no request");
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// A worker with the webhook: every outcome as Node's bullmq reads it, a
/// slow server against --timeout-ms (other jobs complete), the first denial
/// logged once, metrics, and the secret nowhere.
#[test]
fn a_worker_posts_webhooks_and_node_reads_every_outcome() {
    worker_outcomes("rust");
}

#[test]
fn a_worker_posts_webhooks_and_node_reads_every_outcome_go() {
    worker_outcomes("go");
}

#[test]
fn a_worker_posts_webhooks_and_node_reads_every_outcome_js() {
    worker_outcomes("js");
}

#[test]
fn a_worker_posts_webhooks_and_node_reads_every_outcome_python() {
    worker_outcomes("python");
}

fn worker_outcomes(lang: &str) {
    let wasm = webhook_plugin(lang);
    let redis = Redis::start();
    let s = Server::start(None);
    let other = Server::start(None);
    let secret_env = "BULLPEN_TEST_WEBHOOK_SECRET";
    let w = Worker::spawn_env(
        &[
            "--redis",
            &redis.url(),
            "--queue",
            "hooks",
            "--plugin",
            wasm.to_str().unwrap(),
            "--concurrency",
            "8",
            "--timeout-ms",
            "1500",
            "--allow-outbound",
            &s.origin(),
            "--var-env",
            &format!("webhook_secret={secret_env}"),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[(secret_env, SECRET)],
    );
    let port = w.metrics_port();
    let job = |path: &str| json!({"name": "hook", "data": {"url": s.url(path), "payload": {"path": path}}});
    let denied = json!({"name": "hook", "data": {"url": other.url("/hook"), "payload": 1}});
    let ids = node_add(
        &redis,
        "hooks",
        json!([
            job("/hook"),
            job("/status/404"),
            job("/status/503"),
            job("/slow/5000"),
            denied,
            denied.clone(),
            job("/hook")
        ]),
    );
    let v = wait_finished(&redis, "hooks", &ids, T);
    let jobs = v["jobs"].as_array().unwrap();
    let reason = |i: usize| jobs[i]["failedReason"].as_str().unwrap_or("").to_string();
    assert_eq!(jobs[0]["state"], "completed");
    assert_eq!(jobs[0]["returnvalue"], json!({"status": 200, "body": "ok"}));
    assert_eq!((jobs[1]["state"].as_str(), reason(1).as_str()), (Some("failed"), "HTTP 404"));
    assert_eq!((jobs[2]["state"].as_str(), reason(2).as_str()), (Some("failed"), "HTTP 503"));
    assert_eq!(jobs[3]["state"], "failed");
    assert!(reason(3).contains("1500"), "the slow request ends with its attempt, naming the limit: {}", reason(3));
    assert!(reason(4).contains("denied") && reason(4).contains("--allow-outbound"), "{}", reason(4));
    assert_eq!(jobs[6]["state"], "completed", "other jobs complete");
    assert!(other.seen().is_empty());

    let log = w.log();
    assert_eq!(log.matches("outbound HTTP request denied").count(), 1, "logged once per host:\n{log}");
    let metrics = scrape(port);
    assert!(
        metrics.contains(r#"bullpen_http_requests_total{queue="hooks",host="127.0.0.1",outcome="2xx"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"bullpen_http_requests_total{queue="hooks",host="127.0.0.1",outcome="denied"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("bullpen_http_request_duration_seconds_count{queue=\"hooks\"}"), "{metrics}");
    drop(w);
    let everything = format!("{log}{metrics}{v}");
    assert!(!everything.contains(SECRET), "the secret leaked");
}

/// Waiting on the network occupies no thread: 100 attempts, each waiting
/// 1 s on a slow server, on a worker with one thread, finish in about a
/// second, not a hundred.
#[test]
fn a_hundred_slow_requests_share_one_thread() {
    slow_requests_on_one_thread("rust");
}

/// Go's Transport waits in the host (pollable.block), not in the guest.
#[test]
fn a_hundred_slow_requests_share_one_thread_go() {
    slow_requests_on_one_thread("go");
}

fn slow_requests_on_one_thread(lang: &str) {
    let wasm = webhook_plugin(lang);
    let redis = Redis::start();
    let s = Server::start(None);
    let _w = Worker::spawn(&[
        "--redis",
        &redis.url(),
        "--queue",
        "slow",
        "--plugin",
        wasm.to_str().unwrap(),
        "--concurrency",
        "100",
        "--threads",
        "1",
        "--allow-outbound",
        &s.origin(),
        "--var",
        &format!("webhook_secret={SECRET}"),
    ]);
    let jobs: Vec<Value> =
        (0..100).map(|i| json!({"name": "slow", "data": {"url": s.url("/slow/1000"), "payload": i}})).collect();
    let started = Instant::now();
    let ids = node_add(&redis, "slow", Value::Array(jobs));
    let v = wait_finished(&redis, "slow", &ids, T);
    let took = started.elapsed();
    assert!(v["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "completed"), "{v}");
    assert!(took < Duration::from_secs(15), "{lang}: 100 × 1 s took {took:?}: the waits did not overlap");
}

/// A secret read from a file (`{ file = "..." }` in bullpen.toml) is read
/// again on SIGHUP: rotated, the next job signs with the new value (the
/// test server, which knows only the old one, answers 401 → the webhook
/// fails the job `HTTP 401`); a file that cannot be read keeps the values.
#[test]
fn sighup_reads_a_rotated_secret_file_again() {
    let wasm = webhook_plugin("rust");
    let redis = Redis::start();
    let s = Server::start(None);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook_secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("bullpen.toml");
    std::fs::write(
        &config,
        format!(
            "redis = \"{}\"\n\n[[queues]]\nname = \"rot\"\nplugin = \"{}\"\nallowed_outbound_hosts = [\"{}\"]\n\n\
             [queues.variables]\nwebhook_secret = {{ file = \"{}\" }}\n",
            redis.url(),
            wasm.display(),
            s.origin(),
            secret.display()
        ),
    )
    .unwrap();
    let w = Worker::spawn(&["--config", config.to_str().unwrap()]);
    let hook = json!([{"name": "hook", "data": {"url": s.url("/hook"), "payload": 1}}]);
    let first = node_add(&redis, "rot", hook.clone());
    assert_eq!(wait_finished(&redis, "rot", &first, T)["jobs"][0]["state"], "completed");

    std::fs::write(&secret, "rotated\n").unwrap();
    w.signal("-HUP");
    w.wait_log("variables read again (SIGHUP)", T);
    let second = node_add(&redis, "rot", hook.clone());
    let v = wait_finished(&redis, "rot", &second, T);
    assert_eq!(
        (v["jobs"][0]["state"].as_str(), v["jobs"][0]["failedReason"].as_str()),
        (Some("failed"), Some("HTTP 401"))
    );

    std::fs::remove_file(&secret).unwrap();
    w.signal("-HUP");
    w.wait_log("keeping the previous values", T);
    assert!(!w.log().contains("rotated") && !w.log().contains(SECRET), "no value in the log:\n{}", w.log());
}
