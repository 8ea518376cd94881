//! Issue 4 (sandbox part): a guest that loops, eats memory, floods output or
//! recurses fails only its own job, with a reason naming the limit; WASI
//! grants no files, network or environment; other jobs keep completing.

use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

/// The job's log without bullpen's own `bullpen: plugin sha256:...` lines
/// (one per attempt, recording the plugin version).
fn guest_logs(j: &Value) -> Value {
    Value::Array(j["logs"].as_array().unwrap().iter().filter(|l| !l.as_str().unwrap().starts_with("bullpen: ")).cloned().collect())
}

#[test]
fn each_abuse_fails_only_its_own_job() {
    let redis = Redis::start();
    let _w = Worker::start(
        &redis,
        "hog",
        &plugin("hog", "rust"),
        &["--concurrency", "4", "--timeout-ms", "1500", "--max-memory-mb", "32"],
    );
    let modes = ["loop", "memory", "output", "recursion", "fine", "fine", "fine", "fine"];
    let jobs: Vec<Value> = modes.iter().map(|m| json!({"name": m, "data": {"mode": m}, "opts": {"attempts": 2}})).collect();
    let ids = node_add(&redis, "hog", Value::Array(jobs));
    let v = wait_finished(&redis, "hog", &ids, T);
    let j = |i: usize| &v["jobs"][i];
    let reason = |i: usize| j(i)["failedReason"].as_str().unwrap_or("").to_string();

    assert_eq!(j(0)["state"], "failed");
    assert_eq!(reason(0), "attempt timed out: exceeded the wall-clock limit of 1500 ms (--timeout-ms)");
    assert_eq!(j(0)["attemptsMade"], 2, "retries apply to limit kills");

    assert_eq!(j(1)["state"], "failed");
    assert!(reason(1).starts_with("out of memory:") && reason(1).contains("the limit of 32 MiB (--max-memory-mb)"), "{}", reason(1));

    assert_eq!(j(2)["state"], "completed", "flooding output is not an error: {:#}", j(2));
    let logs = guest_logs(j(2));
    let logs = logs.as_array().unwrap();
    let bytes: usize = logs.iter().map(|l| l.as_str().unwrap().len()).sum();
    assert!(bytes <= 64 * 1024, "captured output is bounded, got {bytes} bytes");
    assert!(logs.last().unwrap().as_str().unwrap().starts_with("[bullpen] output truncated"), "{:?}", logs.last());

    assert_eq!(j(3)["state"], "failed");
    assert!(reason(3).starts_with("wasm trap:"), "{}", reason(3));

    for i in 4..8 {
        assert_eq!(j(i)["state"], "completed");
        assert_eq!(j(i)["returnvalue"], json!({"ok": true}));
    }
}

#[test]
fn wasi_grants_no_files_network_or_environment() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "deny", &plugin("hog", "rust"), &[]);
    let ids = node_add(&redis, "deny", json!([
        {"name": "file", "data": {"mode": "file"}},
        {"name": "net", "data": {"mode": "net"}},
        {"name": "env", "data": {"mode": "env"}},
    ]));
    let v = wait_finished(&redis, "deny", &ids, T);
    let r = |i: usize| v["jobs"][i]["returnvalue"].clone();
    assert!(r(0)["file"]["Err"].is_string(), "reading /etc/passwd must fail: {}", r(0));
    assert!(r(1)["net"]["Err"].is_string(), "connecting to Redis must fail: {}", r(1));
    assert_eq!(r(2), json!({"env": 0, "args": 0}));
}

/// Payload limits: oversized log lines, progress and data are refused with
/// a clear error the guest sees; an oversized return value fails the job.
#[test]
fn payload_limits_give_clear_errors() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "big", &plugin("hog", "rust"), &["--concurrency", "2"]);
    let ids = node_add(&redis, "big", json!([
        {"name": "biglog", "data": {"mode": "biglog"}},
        {"name": "bigprogress", "data": {"mode": "bigprogress"}},
        {"name": "bigdata", "data": {"mode": "bigdata"}},
        {"name": "bigreturn", "data": {"mode": "bigreturn"}},
    ]));
    let v = wait_finished(&redis, "big", &ids, T);
    let refused = |i: usize| v["jobs"][i]["returnvalue"]["refused"].as_str().unwrap_or("").to_string();
    assert_eq!(refused(0), "invalid argument: log line is 102400 bytes; the limit is 65536");
    assert_eq!(refused(1), "invalid argument: progress is 102402 bytes; the limit is 65536");
    assert_eq!(refused(2), "invalid argument: data is 17825803 bytes; the limit is 16777216");
    assert_eq!(v["jobs"][2]["data"], json!({"mode": "bigdata"}), "nothing was written");
    assert_eq!(v["jobs"][3]["state"], "failed");
    assert_eq!(v["jobs"][3]["failedReason"], "return value is 17825803 bytes; the limit is 16777216");
}

/// `--fuel` caps the work of an attempt: a spinning guest runs out long
/// before the wall clock, with a reason naming the limit; normal jobs fit.
#[test]
fn fuel_limit_stops_a_spinning_guest() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "fuel", &plugin("hog", "rust"), &["--fuel", "50000000", "--timeout-ms", "60000"]);
    let ids = node_add(&redis, "fuel", json!([{"name": "spin", "data": {"mode": "loop"}}, {"name": "ok", "data": {"mode": "fine"}}]));
    let started = std::time::Instant::now();
    let v = wait_finished(&redis, "fuel", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "failed");
    let reason = v["jobs"][0]["failedReason"].as_str().unwrap();
    assert!(reason.starts_with("out of fuel: the attempt used up its 50000000 units of fuel (--fuel)"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(50), "stopped by fuel, not by the 60 s wall clock");
    assert_eq!(v["jobs"][1]["state"], "completed");
}
