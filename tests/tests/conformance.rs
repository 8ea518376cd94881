//! The conformance suite: the same job scenarios against every language's
//! build of each example plugin, asserting identical observable results in
//! Redis as Node's bullmq sees them. A language joins by one line at the
//! bottom: `conformance!(lang);` (its plugins must exist in target/plugins).

use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(120);

/// Log lines written by the guest (bullpen's own `bullpen: ...` lines removed).
fn guest_logs(job: &Value) -> Value {
    Value::Array(job["logs"].as_array().unwrap().iter().filter(|l| !l.as_str().unwrap().starts_with("bullpen: ")).cloned().collect())
}

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
        assert_eq!(guest_logs(j), json!([format!("echo: job {} ({})", ids[i], jobs[i]["name"].as_str().unwrap())]), "{lang}");
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
        assert_eq!(guest_logs(j), json!(["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"]), "{lang}: {}", j["name"]);
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

pub fn flaky(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "f", &plugin("flaky", lang), &["--concurrency", "8"]);
    let ids = node_add(&redis, "f", json!([
        {"name": "once", "data": {"failTimes": 9}},
        {"name": "recovers", "data": {"failTimes": 2}, "opts": {"attempts": 3}},
        {"name": "fatal", "data": {"fatal": true}, "opts": {"attempts": 4}},
        {"name": "panic", "data": {"panic": true}, "opts": {"attempts": 2}},
        {"name": "countdown", "data": {"failTimes": 1, "retryAfterMs": 300}, "opts": {"attempts": 2}},
        {"name": "linear", "data": {"failTimes": 1}, "opts": {"attempts": 2, "backoff": {"type": "linear"}}},
        {"name": "never", "data": {"failTimes": 1}, "opts": {"attempts": 2, "backoff": {"type": "never"}}},
        {"name": "touch", "data": {"sleepMs": 10}},
        {"name": "badtype", "data": {"failTimes": "three"}},
    ]));
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
    assert!(j(8)["failedReason"].as_str().unwrap().starts_with("invalid JSON:"), "{lang}: {}", j(8)["failedReason"]);
}

macro_rules! conformance {
    ($lang:ident) => {
        mod $lang {
            #[test]
            fn echo() {
                super::echo(stringify!($lang));
            }
            #[test]
            fn steps() {
                super::steps(stringify!($lang));
            }
            #[test]
            fn flaky() {
                super::flaky(stringify!($lang));
            }
        }
    };
}

conformance!(rust);
