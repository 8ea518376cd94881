//! OpenTelemetry traces (`--otlp-endpoint`, README "Tracing"): a Node
//! producer with `bullmq-otel` telemetry adds jobs; bullpen workers run them
//! and export their spans over OTLP/HTTP to a receiver on loopback written
//! below (decoding the protobuf with `opentelemetry-proto`), where the Node
//! processes export theirs too. One trace from the producer's `add` through
//! bullpen's attempts (their Redis transitions, log lines, an outbound HTTP
//! request whose server gets the `traceparent`) to the children the guest
//! adds, which a Node worker with telemetry continues.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bullpen_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Sp {
    service: String,
    name: String,
    kind: SpanKind,
    trace: String,
    id: String,
    parent: String,
    attrs: HashMap<String, String>,
    events: Vec<(String, HashMap<String, String>)>,
    /// The status code (0 unset, 1 ok, 2 error) and message.
    status: (i32, String),
}

impl Sp {
    fn attr(&self, k: &str) -> &str {
        self.attrs.get(k).map(String::as_str).unwrap_or_else(|| panic!("span {} has no {k}: {self:#?}", self.name))
    }
}

/// What the loopback server received: OTLP/HTTP exports (POST /v1/traces),
/// decoded, and the headers of every other request (the webhook's).
#[derive(Default)]
struct Seen {
    spans: Vec<Sp>,
    hooks: Vec<HashMap<String, String>>,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Receiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Sp> {
        self.seen.lock().unwrap().spans.clone()
    }
}

/// A chunked body (Node's exporter sends one), trailers skipped.
fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            loop {
                let mut trailer = String::new();
                if r.read_line(&mut trailer).ok()? == 0 || trailer.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + n + 2, 0);
        r.read_exact(&mut body[start..]).ok()?;
        body.truncate(start + n);
    }
}

/// HTTP/1.1 with keep-alive, bodies by content-length (hyper) or chunked
/// (Node's exporter); every request gets 200.
fn serve(conn: TcpStream, seen: &Mutex<Seen>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let body = if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            match read_chunked(&mut r) {
                Some(b) => b,
                None => return,
            }
        } else {
            let mut body = vec![0; headers.get("content-length").map_or(0, |v| v.parse().unwrap())];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        if path == "/v1/traces" {
            assert_eq!(headers.get("content-type").map(String::as_str), Some("application/x-protobuf"), "{headers:?}");
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP protobuf export");
            seen.lock().unwrap().spans.extend(decode(req));
            let _ =
                w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        } else {
            seen.lock().unwrap().hooks.push(headers);
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok");
        }
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn decode(req: ExportTraceServiceRequest) -> Vec<Sp> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let res = attrs(&rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service = res.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Sp {
                    service: service.clone(),
                    name: s.name.clone(),
                    kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                    trace: hex::encode(&s.trace_id),
                    id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    attrs: attrs(&s.attributes),
                    events: s.events.iter().map(|e| (e.name.clone(), attrs(&e.attributes))).collect(),
                    status: s.status.map_or((0, String::new()), |st| (st.code, st.message)),
                });
            }
        }
    }
    out
}

/// `node otel.js <args>` (tests/node/otel.js), its JSON output.
fn node_otel(args: &[&str]) -> Value {
    let out = Command::new("node").arg(root().join("tests/node/otel.js")).args(args).output().unwrap();
    assert!(out.status.success(), "node otel.js {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The trace of a job a Node producer with telemetry added, through
/// bullpen's attempts of the `steps` plugin (update-data, a delay, two
/// children added, waiting for them, finishing) and the webhook plugin (an
/// outbound POST), to the children a Node worker with telemetry processes.
#[test]
fn one_trace_from_a_node_producer_through_bullpen_to_a_node_worker() {
    let redis = Redis::start();
    let rx = Receiver::start();
    let otlp = rx.url();
    let steps = Worker::start(&redis, "otel-steps", &plugin("steps", "rust"), &["--otlp-endpoint", &otlp]);
    let hook = Worker::start(
        &redis,
        "otel-hook",
        &plugin("webhook", "rust"),
        &[
            "--otlp-endpoint",
            &otlp,
            "--allow-outbound",
            &otlp,
            "--var",
            "webhook_secret=s3cr3t",
            "--name",
            "bullpen-hook",
        ],
    );
    // The children's Node worker, with telemetry, until it has done both.
    let children = Command::new("node")
        .arg(root().join("tests/node/otel.js"))
        .args(["worker", &redis.url(), "otel-steps-children", "2", &otlp])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let added = node_otel(&["add", &redis.url(), "otel-steps", r#"[{"name":"step","data":{}}]"#, &otlp]);
    let hooked = node_otel(&[
        "add",
        &redis.url(),
        "otel-hook",
        &json!([{"name": "post", "data": {"url": format!("{otlp}/hook"), "payload": {"a": 1}}}]).to_string(),
        &otlp,
    ]);
    let (job, trace, add_span) = ids_of(&added[0]);
    let (hook_job, hook_trace, hook_add) = ids_of(&hooked[0]);
    let v = wait_finished(&redis, "otel-steps", std::slice::from_ref(&job), T);
    assert_eq!(v["jobs"][0]["state"], "completed", "{v:#}");
    let v = wait_finished(&redis, "otel-hook", std::slice::from_ref(&hook_job), T);
    assert_eq!(v["jobs"][0]["state"], "completed", "{v:#}");
    let out = children.wait_with_output().unwrap();
    assert!(out.status.success(), "node worker: {}", String::from_utf8_lossy(&out.stderr));
    // SIGTERM: each worker exports what it still holds before it exits.
    assert!(steps.stop().success());
    assert!(hook.stop().success());

    let spans = wait_until_ok(T, POLL, "the spans never all arrived", || {
        let spans = rx.spans();
        let node_children = spans.iter().filter(|s| s.name == "process otel-steps-children").count();
        let attempts = spans.iter().filter(|s| s.name == "process otel-steps" && s.service == "bullpen").count();
        if node_children >= 2 && attempts >= 3 && spans.iter().any(|s| s.name == "process otel-hook") {
            Ok(spans)
        } else {
            Err(format!("{spans:#?}"))
        }
    });
    let by_id: HashMap<&str, &Sp> = spans.iter().map(|s| (s.id.as_str(), s)).collect();

    // Every attempt of the steps job is a child of the producer's `add`
    // span, as a Node worker's `process` spans would be.
    let attempts: Vec<&Sp> = spans.iter().filter(|s| s.name == "process otel-steps").collect();
    for a in &attempts {
        assert_eq!((a.trace.as_str(), a.parent.as_str()), (trace.as_str(), add_span.as_str()), "{a:#?}");
        assert_eq!(a.service, "bullpen");
        assert_eq!(a.kind, SpanKind::Consumer);
        assert_eq!(a.attr("bullmq.queue.name"), "otel-steps");
        assert_eq!(a.attr("bullmq.queue.operation"), "process");
        assert_eq!(a.attr("bullmq.job.id"), job);
        assert_eq!(a.attr("bullmq.job.name"), "step");
        assert_eq!(a.attr("bullpen.digest").len(), 64, "{a:#?}");
        a.attr("bullpen.attempt");
        a.attr("bullmq.job.attempts.made");
    }
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.attr("bullpen.outcome")).collect();
    for o in ["delayed", "waiting_children", "completed"] {
        assert!(outcomes.contains(&o), "no {o} attempt: {outcomes:?}");
    }
    let done = attempts.iter().find(|a| a.attr("bullpen.outcome") == "completed").unwrap();
    let (_, ev) = done.events.iter().find(|(n, _)| n == "job completed").expect("a `job completed` event");
    assert!(ev["bullmq.job.result"].contains("\"step\":\"Finish\""), "{ev:?}");
    // The guest's log lines are events of its attempt's span.
    let logged: Vec<&str> = attempts
        .iter()
        .flat_map(|a| a.events.iter().filter(|(n, _)| n == "log").map(|(_, e)| e["message"].as_str()))
        .collect();
    for line in ["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"] {
        assert!(logged.contains(&line), "no log event {line:?}: {logged:?}");
    }

    // The Redis transitions are child spans of their attempt.
    let child_of_attempt = |name: &str| -> Vec<&Sp> {
        let found: Vec<&Sp> = spans.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "no {name:?} span");
        for s in &found {
            let parent = by_id.get(s.parent.as_str()).unwrap_or_else(|| panic!("{name}: parent not exported: {s:#?}"));
            assert_eq!((parent.name.as_str(), s.trace.as_str()), ("process otel-steps", trace.as_str()), "{s:#?}");
        }
        found
    };
    for name in ["updateData otel-steps", "moveToDelayed otel-steps", "moveToWaitingChildren otel-steps"] {
        for s in child_of_attempt(name) {
            assert_eq!(s.attr("bullmq.job.id"), job);
        }
    }
    // The children the guest added carry their `add` span's context, and
    // the Node worker's attempts of them continue the same trace from there.
    let adds = child_of_attempt("add otel-steps-children.child");
    assert_eq!(adds.len(), 2);
    assert!(adds.iter().all(|s| s.kind == SpanKind::Producer));
    let node_processed: Vec<&Sp> = spans.iter().filter(|s| s.name == "process otel-steps-children").collect();
    assert_eq!(node_processed.len(), 2, "{node_processed:#?}");
    for p in &node_processed {
        assert_eq!(p.service, "node-worker");
        assert_eq!(p.trace, trace, "{p:#?}");
        assert!(adds.iter().any(|a| a.id == p.parent), "a Node attempt not under bullpen's add span: {p:#?}");
    }

    // The webhook's attempt: under its producer's span, with the POST as a
    // client span whose context the server received as `traceparent`.
    let a = spans.iter().find(|s| s.name == "process otel-hook").unwrap();
    assert_eq!((a.trace.as_str(), a.parent.as_str()), (hook_trace.as_str(), hook_add.as_str()), "{a:#?}");
    assert_eq!(a.attr("bullmq.worker.name"), "bullpen-hook");
    assert_eq!(a.attr("bullpen.outcome"), "completed");
    let post = spans.iter().find(|s| s.name == "POST" && s.parent == a.id).expect("a POST span under the attempt");
    assert_eq!(post.kind, SpanKind::Client);
    assert_eq!(post.attr("http.response.status_code"), "200");
    assert_eq!(post.attr("url.full"), format!("{otlp}/hook"));
    let hooks = rx.seen.lock().unwrap().hooks.clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].get("traceparent"), Some(&format!("00-{}-{}-01", post.trace, post.id)), "{hooks:?}");
}

/// The standard variables turn traces on and name the service; a failed
/// attempt's span says why; a job added without telemetry starts a trace of
/// its own; a worker without an endpoint exports nothing.
#[test]
fn failures_are_recorded_and_untraced_jobs_start_their_own_trace() {
    let redis = Redis::start();
    let rx = Receiver::start();
    let mut args = redis.args();
    args.extend(["--queue", "otel-flaky", "--plugin", plugin("steps", "rust").to_str().unwrap()].map(String::from));
    let url = rx.url();
    let traced = Worker::spawn_env(&args, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &url), ("OTEL_SERVICE_NAME", "billing")]);
    // Node's plain driver: no telemetry, no `tm`.
    let ids = node_add(
        &redis,
        "otel-flaky",
        json!([{"name": "x", "data": {"failAt": "Initial", "step": "Initial"}, "opts": {"attempts": 1}}]),
    );
    let v = wait_finished(&redis, "otel-flaky", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "failed", "{v:#}");
    // Off: a worker without the flag sends nothing to the same receiver.
    let untraced = Worker::start(&redis, "otel-off", &plugin("echo", "rust"), &[]);
    let off = node_add(&redis, "otel-off", json!([{"name": "x", "data": {"a": 1}}]));
    wait_finished(&redis, "otel-off", &off, T);
    assert!(traced.stop().success());
    assert!(untraced.stop().success());

    let spans = wait_until_ok(T, POLL, "the failed attempt's span never arrived", || {
        let spans = rx.spans();
        if spans.iter().any(|s| s.name == "process otel-flaky") {
            Ok(spans)
        } else {
            Err(format!("{spans:#?}"))
        }
    });
    let a = spans.iter().find(|s| s.name == "process otel-flaky").unwrap();
    assert!(a.parent.is_empty(), "a job without `tm` starts a new trace: {a:#?}");
    assert_eq!(a.service, "billing");
    assert_eq!(a.attr("bullpen.outcome"), "failed");
    assert_eq!(a.status.0, 2, "error status: {a:#?}");
    let (_, ev) = a.events.iter().find(|(n, _)| n == "job failed").expect("a `job failed` event");
    assert!(ev["bullmq.job.failed.reason"].contains("injected failure"), "{ev:?}");
    assert!(spans.iter().all(|s| !s.name.contains("otel-off")), "spans from the worker without --otlp-endpoint");
}

fn ids_of(v: &Value) -> (String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_string();
    (s("id"), s("traceId"), s("spanId"))
}
