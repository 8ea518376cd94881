//! The sandbox: a guest that loops, eats memory, floods output or
//! recurses fails only its own job, with a reason naming the limit; WASI
//! grants no files, network or environment; other jobs keep completing.
//! The same scenarios run against the `hog` plugin in each language (the
//! `rust`, `go`, `js` and `python` modules at the bottom); where a language reaches a
//! limit differently, the expected reason says how.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

/// `target/plugins/hog-<lang>.wasm`, loaded once by `bullpen run` first: a
/// Go component takes seconds to compile and a JS one 5–30 s on a busy
/// 2-core machine, longer than `Worker::start` waits for "worker ready";
/// the run fills the host's artifact cache, so the tests' workers start at
/// once. An engine that meters fuel compiles differently (its own cache
/// entry): `fuel` says the worker will run with `--fuel`. A plugin that does
/// not run fails the test.
fn hog(lang: &str, fuel: bool) -> PathBuf {
    static LOADED: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    let p = plugin("hog", lang);
    let mut loaded = LOADED.lock().unwrap();
    if !loaded.iter().any(|(l, f)| l == lang && *f == fuel) {
        let mut cmd = Command::new(bullpen_bin());
        cmd.arg("run").arg(&p).args(["--data", r#"{"mode":"fine"}"#]);
        if fuel {
            cmd.args(["--fuel", "1000000000"]);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with("completed {\"ok\":true}\n"),
            "hog-{lang} does not run: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        loaded.push((lang.to_string(), fuel));
    }
    p
}

/// Loop, memory, output flood and recursion, each alone in its job, next to
/// well-behaved jobs, with retries; then one more job on the same worker.
fn each_abuse_fails_only_its_own_job(lang: &str) {
    let redis = Redis::start();
    // 48 MiB: above what a JS guest reaches at SpiderMonkey's recursion
    // limit (~33 MiB since the world carries the wasi:http and wasi:config
    // imports), so `recursion` and `memory` each hit their own limit.
    let mut w = Worker::start(
        &redis,
        "hog",
        &hog(lang, false),
        // 4 s: the output flood (100,000 prints) must finish within the
        // wall clock even on a loaded 2-core machine (at 1.5 s it did not).
        &["--concurrency", "4", "--timeout-ms", "4000", "--max-memory-mb", "48"],
    );
    let modes = ["loop", "memory", "output", "recursion", "fine", "fine", "fine", "fine"];
    let jobs: Vec<Value> =
        modes.iter().map(|m| json!({"name": m, "data": {"mode": m}, "opts": {"attempts": 2}})).collect();
    let ids = node_add(&redis, "hog", Value::Array(jobs));
    let v = wait_finished(&redis, "hog", &ids, T);
    let j = |i: usize| &v["jobs"][i];
    let reason = |i: usize| j(i)["failedReason"].as_str().unwrap_or("").to_string();

    assert_eq!(j(0)["state"], "failed", "{lang}: {:#}", j(0));
    assert_eq!(reason(0), "attempt timed out: exceeded the wall-clock limit of 4000 ms (--timeout-ms)", "{lang}");
    assert_eq!(j(0)["attemptsMade"], 2, "{lang}: retries apply to limit kills");

    assert_eq!(j(1)["state"], "failed", "{lang}: {:#}", j(1));
    assert!(
        reason(1).starts_with("out of memory:") && reason(1).contains("the limit of 48 MiB (--max-memory-mb)"),
        "{lang}: {}",
        reason(1)
    );
    assert_eq!(j(1)["attemptsMade"], 2, "{lang}");

    assert_eq!(j(2)["state"], "completed", "{lang}: flooding output is not an error: {:#}", j(2));
    assert_eq!(j(2)["returnvalue"], json!({"printed": 100000}), "{lang}");
    let logs = guest_logs(j(2));
    let logs = logs.as_array().unwrap();
    assert_eq!(logs[0], format!("0 {}", "hog: flooding stdout ".repeat(4)), "{lang}");
    let bytes: usize = logs.iter().map(|l| l.as_str().unwrap().len()).sum();
    assert!(bytes <= 64 * 1024, "{lang}: captured output is bounded, got {bytes} bytes");
    assert!(
        logs.last().unwrap().as_str().unwrap().starts_with("[bullpen] output truncated"),
        "{lang}: {:?}",
        logs.last()
    );

    assert_eq!(j(3)["state"], "failed", "{lang}: {:#}", j(3));
    assert_eq!(j(3)["attemptsMade"], 2, "{lang}");
    let r = reason(3);
    match lang {
        // A Rust guest's frames live on its shadow stack in linear memory:
        // running off its end is an out-of-bounds access, before the wasm
        // stack overflows; the reason names that possibility.
        "rust" => assert_eq!(r, "wasm trap: out-of-bounds memory access (a guest bug, or a stack kept in linear memory, as Rust's, overflowing)"),
        // Every Go call is a wasm call: the 1 MiB wasm stack runs out first.
        "go" => assert_eq!(r, "wasm trap: stack overflow (the guest recursed past its 1 MiB wasm stack)"),
        // SpiderMonkey's own limit: an InternalError, which hog turns into
        // a panic (a trap with the message, as a Rust panic's).
        "js" => assert!(
            r.starts_with("wasm trap: unreachable instruction executed (guest panicked: too much recursion; JavaScript panicked at hog.js:"),
            "{r}"
        ),
        // CPython's own recursion limit: a RecursionError escapes `process`,
        // a plain exception, so a retryable failure with its message.
        "python" => assert_eq!(r, "maximum recursion depth exceeded"),
        _ => unreachable!(),
    }

    for i in 4..8 {
        assert_eq!(j(i)["state"], "completed", "{lang}: {:#}", j(i));
        assert_eq!(j(i)["returnvalue"], json!({"ok": true}), "{lang}");
    }

    // The worker that ran all that is still up and takes the next job.
    assert!(w.child.try_wait().unwrap().is_none(), "{lang}: the worker exited:\n{}", w.log());
    let next = node_add(&redis, "hog", json!([{"name": "next", "data": {"mode": "fine"}}]));
    let v = wait_finished(&redis, "hog", &next, T);
    assert_eq!(v["jobs"][0]["state"], "completed", "{lang}: {:#}", v["jobs"][0]);
    assert_eq!(v["jobs"][0]["returnvalue"], json!({"ok": true}), "{lang}");
}

/// WASI grants nothing: the guest's own attempts to read a file, connect
/// to Redis and read its environment come back as errors (or nothing).
fn wasi_grants_no_files_network_or_environment(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "deny", &hog(lang, false), &[]);
    let ids = node_add(
        &redis,
        "deny",
        json!([
            {"name": "file", "data": {"mode": "file"}},
            {"name": "net", "data": {"mode": "net"}},
            {"name": "env", "data": {"mode": "env"}},
        ]),
    );
    let v = wait_finished(&redis, "deny", &ids, T);
    let r = |i: usize| v["jobs"][i]["returnvalue"].clone();
    match lang {
        // Python's `open` and `socket` raise OSError, the plugin reports it.
        "rust" | "go" | "python" => {
            assert!(r(0)["file"]["Err"].is_string(), "{lang}: reading /etc/passwd must fail: {}", r(0));
            assert!(r(1)["net"]["Err"].is_string(), "{lang}: connecting to Redis must fail: {}", r(1));
            assert_eq!(r(2), json!({"env": 0, "args": 0}), "{lang}");
        }
        // JavaScript here has no file, socket, environment or argument API
        // at all; the plugin says so instead of trying. Its global `fetch`
        // (the SDK's, over wasi:http) is refused by the allow-list, which
        // grants nothing here: hog.js calls it and reports the error.
        "js" => {
            let no = "JavaScript in the bullpen sandbox (StarlingMonkey) has no";
            assert_eq!(r(0), json!({"file": {"Err": format!("{no} file system API: cannot read /etc/passwd")}}));
            assert_eq!(
                r(1),
                json!({
                    "net": {"Err": format!("{no} socket API: cannot connect to 127.0.0.1:6379")},
                    "fetch": {"Err": "request to http://127.0.0.1:6379 denied: not in this queue's allow-list \
                        (grant it with --allow-outbound http://127.0.0.1:6379, or allowed_outbound_hosts in bullpen.toml)"},
                })
            );
            assert_eq!(
                r(2),
                json!({"args": {"Err": format!("{no} API for program arguments")}, "env": {"Err": format!("{no} API for environment variables")}})
            );
        }
        _ => unreachable!(),
    }
}

/// Payload limits: oversized log lines, progress and data are refused with
/// a clear error the guest sees; an oversized return value fails the job;
/// large data within the limit reaches the guest (the host lowers it through
/// the guest's `cabi_realloc`, where a Go SDK once started a GC and trapped).
/// `extra`: worker flags (a JS guest needs more than the default 128 MiB of
/// memory to build 17 MiB of JSON at all; hog.js).
fn payload_limits_give_clear_errors(lang: &str, extra: &[&str]) {
    let redis = Redis::start();
    let mut flags = vec!["--concurrency", "2"];
    flags.extend(extra);
    let _w = Worker::start(&redis, "big", &hog(lang, false), &flags);
    let ids = node_add(
        &redis,
        "big",
        json!([
            {"name": "biglog", "data": {"mode": "biglog"}},
            {"name": "bigprogress", "data": {"mode": "bigprogress"}},
            {"name": "bigdata", "data": {"mode": "bigdata"}},
            {"name": "bigreturn", "data": {"mode": "bigreturn"}},
            {"name": "largejob", "data": {"mode": "fine", "blob": "x".repeat(4 << 20)}},
        ]),
    );
    let v = wait_finished(&redis, "big", &ids, T);
    let refused = |i: usize| v["jobs"][i]["returnvalue"]["refused"].as_str().unwrap_or("").to_string();
    for i in 0..3 {
        assert_eq!(v["jobs"][i]["state"], "completed", "{lang}: {:#}", v["jobs"][i]);
    }
    assert_eq!(refused(0), "invalid argument: log line is 102400 bytes; the limit is 65536", "{lang}");
    assert_eq!(refused(1), "invalid argument: progress is 102402 bytes; the limit is 65536", "{lang}");
    assert_eq!(refused(2), "invalid argument: data is 17825803 bytes; the limit is 16777216", "{lang}");
    assert_eq!(v["jobs"][2]["data"], json!({"mode": "bigdata"}), "{lang}: nothing was written");
    assert_eq!(v["jobs"][3]["state"], "failed", "{lang}");
    assert_eq!(v["jobs"][3]["failedReason"], "return value is 17825803 bytes; the limit is 16777216", "{lang}");
    assert_eq!(v["jobs"][4]["state"], "completed", "{lang}: {}", v["jobs"][4]["failedReason"]);
    assert_eq!(v["jobs"][4]["returnvalue"], json!({"ok": true}), "{lang}");
}

/// `--fuel` caps the work of an attempt: a spinning guest runs out long
/// before the wall clock, with a reason naming the limit; normal jobs fit.
fn fuel_limit_stops_a_spinning_guest(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "fuel", &hog(lang, true), &["--fuel", "50000000", "--timeout-ms", "60000"]);
    let ids = node_add(
        &redis,
        "fuel",
        json!([{"name": "spin", "data": {"mode": "loop"}}, {"name": "ok", "data": {"mode": "fine"}}]),
    );
    let started = std::time::Instant::now();
    let v = wait_finished(&redis, "fuel", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "failed", "{lang}");
    let reason = v["jobs"][0]["failedReason"].as_str().unwrap();
    assert!(
        reason.starts_with("out of fuel: the attempt used up its 50000000 units of fuel (--fuel)"),
        "{lang}: {reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(50), "{lang}: stopped by fuel, not by the 60 s wall clock");
    assert_eq!(v["jobs"][1]["state"], "completed", "{lang}");
}

/// The tests above, once per guest language (as conformance.rs does);
/// `payload` is the worker flags for `payload_limits_give_clear_errors`.
macro_rules! per_language {
    ($lang:ident, payload = $payload:expr) => {
        mod $lang {
            #[test]
            fn each_abuse_fails_only_its_own_job() {
                super::each_abuse_fails_only_its_own_job(stringify!($lang));
            }
            #[test]
            fn wasi_grants_no_files_network_or_environment() {
                super::wasi_grants_no_files_network_or_environment(stringify!($lang));
            }
            #[test]
            fn payload_limits_give_clear_errors() {
                super::payload_limits_give_clear_errors(stringify!($lang), $payload);
            }
            #[test]
            fn fuel_limit_stops_a_spinning_guest() {
                super::fuel_limit_stops_a_spinning_guest(stringify!($lang));
            }
        }
    };
}

per_language!(rust, payload = &[]);
// Go: the host lowers its refusals (and every string it returns) through
// the Go SDK's `cabi_realloc`, where a GC cycle's WASI calls would trap
// (`cannot leave component instance`); the SDK hands out memory there
// without the Go heap, or with the collector stopped (abi_wasip1.go).
per_language!(go, payload = &[]);
// JS: at the default 128 MiB cap the engine runs out of memory building the
// 17 MiB JSON before the host sees it (`invalid JSON: out of memory`);
// 160 MiB is enough, 256 leaves room.
per_language!(js, payload = &["--max-memory-mb", "256"]);
per_language!(python, payload = &[]);
