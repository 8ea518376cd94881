//! The conformance suite: the same job scenarios against every language's
//! build of each example plugin, asserting identical observable results in
//! Redis as Node's bullmq sees them. A language joins by one line at the
//! bottom: `conformance!(lang);` (its plugins must exist in target/plugins).

use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(120);

pub fn echo(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "e", &plugin("echo", lang), &["--concurrency", "3"]);
    let jobs = json!([
        {"name": "unicode", "data": {"text": "héllo ✓ 日本語 🚀", "z": 1, "a": 2}},
        {"name": "nested", "data": {"a": {"b": [1, 2.5, -3, true, null, {"d": "e"}]}}},
        {"name": "scalar", "data": "just a string"},
    ]);
    let ids = node_add(&redis, "e", jobs.clone());
    let v = wait_finished(&redis, "e", &ids, T);
    for (i, j) in v["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(j["state"], "completed", "{lang}: {j:#}");
        assert_eq!(j["returnvalue"], jobs[i]["data"], "{lang}");
        assert_eq!(j["progress"], 100, "{lang}");
        assert_eq!(j["attemptsMade"], 1, "{lang}");
        assert_eq!(
            guest_logs(j),
            json!([format!("echo: job {} ({})", ids[i], jobs[i]["name"].as_str().unwrap())]),
            "{lang}"
        );
    }
    // Key order of the return value is the producer's, byte for byte.
    let mut c = redis.conn();
    let raw: String = redis::cmd("HGET").arg(format!("bull:e:{}", ids[0])).arg("returnvalue").query(&mut c).unwrap();
    assert_eq!(raw, r#"{"text":"héllo ✓ 日本語 🚀","z":1,"a":2}"#, "{lang}");
}

pub fn steps(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "s", &plugin("steps", lang), &["--concurrency", "5"]);
    let _k = Worker::start(&redis, "s-children", &plugin("echo", "rust"), &["--concurrency", "4"]);
    let mut jobs = vec![json!({"name": "plain", "data": {"order": 1}})];
    for s in ["Initial", "Second", "Third", "Finish"] {
        jobs.push(json!({"name": s, "data": {"failAt": s}, "opts": {"attempts": 2}}));
    }
    let ids = node_add(&redis, "s", Value::Array(jobs));
    let v = wait_finished(&redis, "s", &ids, T);
    for (i, j) in v["jobs"].as_array().unwrap().iter().enumerate() {
        let id = &ids[i];
        assert_eq!(j["state"], "completed", "{lang}: {j:#}");
        assert_eq!(j["attemptsMade"], if i == 0 { 1 } else { 2 }, "{lang}: {}", j["name"]);
        assert_eq!(
            guest_logs(j),
            json!(["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"]),
            "{lang}: {}",
            j["name"]
        );
        assert_eq!(
            j["returnvalue"],
            json!({"step": "Finish", "children": {
                format!("bull:s-children:{id}-child-1"): {"child": 1, "parent": id},
                format!("bull:s-children:{id}-child-2"): {"child": 2, "parent": id},
            }}),
            "{lang}"
        );
        assert_eq!(j["data"]["step"], "Finish", "{lang}: update-data stored the step");
    }
    assert_eq!(v["jobs"][0]["data"], json!({"step": "Finish", "order": 1}), "{lang}: other data fields are kept");
}

/// `rate-limit` and `move-to-wait` (steps with `rateLimitMs` / `moveToWait`):
/// the job goes back to wait once on entering Second, without counting an
/// attempt, then carries on and completes; a rate-limit leaves the queue's
/// limiter key with a TTL of about its delay, as Node's `getRateLimitTtl` reads it.
pub fn moves(lang: &str) {
    const LIMIT_MS: u64 = 30_000;
    let redis = Redis::start();
    let _w = Worker::start(&redis, "m", &plugin("steps", lang), &["--concurrency", "2"]);
    let _k = Worker::start(&redis, "m-children", &plugin("echo", "rust"), &["--concurrency", "4"]);
    let ttl = || node(&["ratelimit-ttl", &redis.url(), "m"])["ttl"].as_i64().unwrap();
    assert!(ttl() <= 0, "{lang}: no rate limit before the job runs");
    let started = std::time::Instant::now();
    let jobs = json!([
        {"name": "rate-limit", "data": {"rateLimitMs": LIMIT_MS, "keep": 1}},
        {"name": "move-to-wait", "data": {"moveToWait": true, "keep": 2}},
        {"name": "neither", "data": {"keep": 3}},
    ]);
    let ids = node_add(&redis, "m", jobs);
    let v = wait_finished(&redis, "m", &ids, T);
    let ttl = ttl();
    let elapsed = started.elapsed().as_millis() as i64;
    assert!(
        ttl > LIMIT_MS as i64 - elapsed && ttl <= LIMIT_MS as i64,
        "{lang}: the limiter key's TTL is {ttl} ms, {elapsed} ms after the job was added with rateLimitMs {LIMIT_MS}"
    );
    for (i, j) in v["jobs"].as_array().unwrap().iter().enumerate() {
        let name = j["name"].as_str().unwrap();
        assert_eq!(j["state"], "completed", "{lang}: {j:#}");
        assert_eq!(j["attemptsMade"], 1, "{lang}: {name}: a move back to wait is not an attempt");
        // Started: once more than without the move (Third and Finish share
        // an attempt when the children finished before wait-for-children).
        let (started, logs) = if i == 2 {
            (2, json!(["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"]))
        } else {
            (3, json!(["steps: Initial", "steps: Second", "steps: Second", "steps: Third", "steps: Finish"]))
        };
        let ats = j["attemptsStarted"].as_u64().unwrap();
        assert!(ats == started || ats == started + 1, "{lang}: {name}: attemptsStarted {ats}");
        assert_eq!(guest_logs(j), logs, "{lang}: {name}");
        assert_eq!(j["data"], json!({"step": "Finish", "keep": i + 1}), "{lang}: {name}: the option was used once");
        assert_eq!(j["returnvalue"]["step"], "Finish", "{lang}: {name}");
    }
}

pub fn flaky(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "f", &plugin("flaky", lang), &["--concurrency", "8"]);
    let ids = node_add(
        &redis,
        "f",
        json!([
            {"name": "once", "data": {"failTimes": 9}},
            {"name": "recovers", "data": {"failTimes": 2}, "opts": {"attempts": 3}},
            {"name": "fatal", "data": {"fatal": true}, "opts": {"attempts": 4}},
            {"name": "panic", "data": {"panic": true}, "opts": {"attempts": 2}},
            {"name": "countdown", "data": {"failTimes": 1, "retryAfterMs": 300}, "opts": {"attempts": 2}},
            {"name": "linear", "data": {"failTimes": 1}, "opts": {"attempts": 2, "backoff": {"type": "linear"}}},
            {"name": "never", "data": {"failTimes": 1}, "opts": {"attempts": 2, "backoff": {"type": "never"}}},
            {"name": "touch", "data": {"sleepMs": 10}},
            {"name": "badtype", "data": {"failTimes": "three"}},
        ]),
    );
    let v = wait_finished(&redis, "f", &ids, T);
    let j = |i: usize| &v["jobs"][i];
    let expect = |i: usize, state: &str, atm: u64| {
        assert_eq!(j(i)["state"], state, "{lang}: {:#}", j(i));
        assert_eq!(j(i)["attemptsMade"], atm, "{lang}: {}", j(i)["name"]);
    };
    expect(0, "failed", 1);
    assert_eq!(j(0)["failedReason"], "flaky: failing attempt 1 of 9", "{lang}");
    expect(1, "completed", 3);
    assert_eq!(j(1)["returnvalue"], json!({"succeededOnAttempt": 3}), "{lang}");
    assert_eq!(guest_logs(j(1)), json!(["flaky: succeeded on attempt 3"]), "{lang}");
    expect(2, "failed", 1);
    assert_eq!(j(2)["failedReason"], "flaky: fatal error on attempt 1", "{lang}");
    expect(3, "failed", 2);
    assert!(j(3)["failedReason"].as_str().unwrap().starts_with("wasm trap:"), "{lang}: {}", j(3)["failedReason"]);
    expect(4, "completed", 2);
    expect(5, "completed", 2);
    expect(6, "failed", 1);
    assert_eq!(j(6)["failedReason"], "flaky: failing attempt 1 of 1", "{lang}");
    expect(7, "completed", 1);
    assert_eq!(j(7)["data"], json!({"sleepMs": 10, "touchedOnAttempt": 1}), "{lang}");
    expect(8, "failed", 1);
    assert!(
        j(8)["failedReason"].as_str().unwrap().starts_with("unexpected JSON shape:"),
        "{lang}: {}",
        j(8)["failedReason"]
    );
}

/// A plain error — JS `throw new Error(..)`, Go `return fmt.Errorf(..)`,
/// Rust `?` on an `io::Error` — is what a thrown Error is in a Node worker:
/// a retryable failure (per `attempts`) whose failedReason is its message,
/// and whose stack is the job's BullMQ `stacktrace` entry for the attempt
/// (trimmed to `stackTraceLimit`, as Node does), in the plugin's own source
/// terms. And nothing SDK-internal lands in the job log.
pub fn plain_error(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "pe", &plugin("flaky", lang), &["--concurrency", "2"]);
    let ids = node_add(
        &redis,
        "pe",
        json!([
            {"name": "plain", "data": {"plainError": true}, "opts": {"attempts": 2}},
            {"name": "limited", "data": {"plainError": true}, "opts": {"attempts": 3, "stackTraceLimit": 1}},
        ]),
    );
    let v = wait_finished(&redis, "pe", &ids, T);
    let (file, line) = plain_error_site(lang);
    let at = format!("{file}:{line}");
    for (i, attempts) in [(0, 2), (1, 3)] {
        let j = &v["jobs"][i];
        assert_eq!(j["state"], "failed", "{lang}: {j:#}");
        assert_eq!(j["attemptsMade"], attempts, "{lang}: retried per attempts");
        assert_eq!(j["failedReason"], format!("flaky: plain error on attempt {attempts}"), "{lang}");
        assert_eq!(guest_logs(j), json!([]), "{lang}: no SDK-internal lines in the job log");
        let stacks: Vec<&str> = j["stacktrace"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let first = if i == 0 { 1 } else { attempts };
        assert_eq!(stacks.len(), (attempts - first + 1) as usize, "{lang}: {stacks:#?}");
        for (k, stack) in stacks.iter().enumerate() {
            let attempt = first + k as u64;
            let head = stack.lines().next().unwrap();
            assert!(head.ends_with(&format!(": flaky: plain error on attempt {attempt}")), "{lang}: {stack}");
            assert!(stack.contains(&at), "{lang}: the stack names {at}:\n{stack}");
        }
    }
}

/// Where flaky's plain error is made, as the language's stack names it:
/// the source file and the line (Go: the processor function's, as Go
/// errors do not record where they were made).
fn plain_error_site(lang: &str) -> (&'static str, usize) {
    let (path, file, marker) = match lang {
        "rust" => ("plugins/flaky/rust/src/lib.rs", "flaky/rust/src/lib.rs", "plain error on attempt"),
        "go" => ("plugins/flaky/go/main.go", "flaky/main.go", "func process("),
        "js" => ("plugins/flaky/js/flaky.js", "flaky.js", "plain error on attempt"),
        // Relative to the module's folder on the component's Python path.
        "python" => ("plugins/flaky/python/flaky.py", "flaky.py", "plain error on attempt"),
        other => panic!("no plain-error site for {other}: add its flaky source file (and how its stacks name it) here"),
    };
    let src = std::fs::read_to_string(root().join(path)).unwrap();
    let line = src.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("{marker} not in {path}")) + 1;
    (file, line)
}

/// Nothing to prepare: the default for a language.
pub fn no_preload(_lang: &str) {}

/// A Go component is about 3.5 MB, so compiling one takes seconds on a busy
/// 2-core machine (Rust's take milliseconds). Before the first Go test, load
/// each Go plugin once, one after the other, so the host's artifact cache
/// serves every later worker at once. Never skips.
pub fn go_preload(lang: &str) {
    use std::sync::OnceLock;
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let redis = Redis::start();
        for name in ["echo", "steps", "flaky"] {
            let _loaded = Worker::start(&redis, "preload", &plugin(name, lang), &[]);
        }
    });
}

/// Go's example plugins write the very JSON text the Rust ones write (key
/// order, number forms, escapes) into the job data and the return values.
#[test]
fn go_writes_the_same_json_text_as_rust() {
    go_preload("go");
    let run = |lang: &str| -> Vec<(String, Option<String>, Option<String>, Value)> {
        let redis = Redis::start();
        let _s = Worker::start(&redis, "s", &plugin("steps", lang), &["--concurrency", "2"]);
        let _k = Worker::start(&redis, "s-children", &plugin("echo", "rust"), &["--concurrency", "2"]);
        let _f = Worker::start(&redis, "f", &plugin("flaky", lang), &["--concurrency", "2"]);
        let odd = json!({"z": {"b": 1.50, "a": [1e3, -0.0, 2.5e-7, 1e21, 12345678901234567890u64, "x<y>&\u{2028}\u{1}"]}, "m": null});
        let mut steps_data = odd.clone();
        steps_data["failAt"] = json!("Third");
        let mut flaky_data = odd.clone();
        flaky_data["sleepMs"] = json!(5);
        let s = node_add(&redis, "s", json!([{"name": "s", "data": steps_data, "opts": {"attempts": 2}}]));
        let f = node_add(&redis, "f", json!([{"name": "f", "data": flaky_data}]));
        // A flow: a flaky parent returns its flaky children's values.
        let mut cmd = std::process::Command::new("node");
        let tree = json!({"name": "p", "queueName": "f", "data": {"returnChildren": true}, "opts": {"jobId": "p"}, "children": [
            {"name": "k1", "queueName": "f", "data": {"returnChildren": true, "b": 2, "a": 1}, "opts": {"jobId": "k1"}},
            {"name": "k2", "queueName": "f", "data": {}, "opts": {"jobId": "k2"}},
        ]});
        cmd.arg(root().join("tests/node/driver.js")).args(["flow", &redis.url(), "-", &tree.to_string()]);
        let flow: Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
        let p = flow["id"].as_str().unwrap().to_string();
        wait_finished(&redis, "s", &s, T);
        wait_finished(&redis, "f", &[f[0].clone(), p.clone()], T);
        let mut c = redis.conn();
        let mut out = vec![];
        for (q, id) in [("s", &s[0]), ("f", &f[0]), ("f", &p)] {
            let key = format!("bull:{q}:{id}");
            let data: Option<String> = redis::cmd("HGET").arg(&key).arg("data").query(&mut c).unwrap();
            let rv: Option<String> = redis::cmd("HGET").arg(&key).arg("returnvalue").query(&mut c).unwrap();
            let logs: Vec<String> =
                redis::cmd("LRANGE").arg(format!("{key}:logs")).arg(0).arg(-1).query(&mut c).unwrap();
            let logs: Vec<String> = logs.into_iter().filter(|l| !l.starts_with("bullpen: ")).collect();
            out.push((key, data, rv, json!(logs)));
        }
        out
    };
    let (rust, go) = (run("rust"), run("go"));
    assert_eq!(go, rust);
}

macro_rules! conformance {
    ($lang:ident) => {
        conformance!($lang, before = super::no_preload);
    };
    ($lang:ident, before = $prepare:path) => {
        mod $lang {
            #[test]
            fn echo() {
                $prepare(stringify!($lang));
                super::echo(stringify!($lang));
            }
            #[test]
            fn steps() {
                $prepare(stringify!($lang));
                super::steps(stringify!($lang));
            }
            #[test]
            fn moves() {
                $prepare(stringify!($lang));
                super::moves(stringify!($lang));
            }
            #[test]
            fn flaky() {
                $prepare(stringify!($lang));
                super::flaky(stringify!($lang));
            }
            #[test]
            fn plain_error() {
                $prepare(stringify!($lang));
                super::plain_error(stringify!($lang));
            }
        }
    };
}

conformance!(rust);
conformance!(go, before = super::go_preload);

/// JavaScript and Python components take seconds to compile (~5 s idle, 20–30 s on a
/// busy 2-core machine), more than `Worker::start` waits for "worker ready".
/// So before the first test of the language, load each of its plugins once, which fills the
/// host's artifact cache; the tests' workers then start in milliseconds.
/// A plugin the host refuses fails the tests (nothing is skipped).
pub fn slow_compile_preload(lang: &str) {
    use std::sync::Mutex;
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap();
    if done.iter().any(|l| l == lang) {
        return;
    }
    let redis = Redis::start();
    for name in ["echo", "steps", "flaky"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let mut child = std::process::Command::new(bullpen_bin())
            .args(["worker", "--redis", &redis.url(), "--queue", "load-check", "--plugin"])
            .arg(plugin(name, lang))
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until_ok(Duration::from_secs(300), POLL, &format!("{name}-{lang} never loaded"), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("worker ready") {
                return Ok(());
            }
            if let Ok(Some(_)) = child.try_wait() {
                panic!("{name}-{lang} refused by the host: {text}");
            }
            Err(text)
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    done.push(lang.to_string());
}

conformance!(js, before = super::slow_compile_preload);

// Python components (~19 MB: CPython inside) also take seconds to compile:
// the same preload fills the artifact cache first.
conformance!(python, before = super::slow_compile_preload);
