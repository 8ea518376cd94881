//! Issue 4 (crash safety): acks_late semantics. A worker killed mid-job loses
//! nothing (stalled recovery, maxStalledCount), and SIGTERM finishes or hands
//! back running attempts without counting a failure.

use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

fn wait_active(redis: &Redis, queue: &str, n: usize) {
    let mut c = redis.conn();
    let deadline = Instant::now() + T;
    loop {
        let len: usize = redis::cmd("LLEN").arg(format!("bull:{queue}:active")).query(&mut c).unwrap();
        if len >= n {
            return;
        }
        assert!(Instant::now() < deadline, "jobs never became active");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill -9 mid-attempt: after the lock expires the stalled check re-queues the
/// jobs and another worker completes each exactly once.
#[test]
fn kill9_mid_job_loses_nothing() {
    let redis = Redis::start();
    let flags = ["--concurrency", "3", "--lock-duration-ms", "1000", "--stalled-interval-ms", "500"];
    let events = NodeEvents::listen(&redis, "k", 3, T);
    let a = Worker::start(&redis, "k", &plugin("flaky", "rust"), &flags);
    let jobs: Vec<Value> = (0..3).map(|i| json!({"name": "slow", "data": {"sleepMs": 1500, "n": i}})).collect();
    let ids = node_add(&redis, "k", Value::Array(jobs));
    wait_active(&redis, "k", 3);
    a.kill9();
    let _b = Worker::start(&redis, "k", &plugin("flaky", "rust"), &flags);
    let v = wait_finished(&redis, "k", &ids, T);
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed", "{j:#}");
        assert_eq!(j["attemptsMade"], 1, "a worker's death is not a failed attempt");
        assert_eq!(j["data"]["touchedOnAttempt"], 1);
    }
    let completed = events.finish().iter().filter(|e| e["event"] == "completed").count();
    assert_eq!(completed, 3, "each job completed exactly once");
}

/// maxStalledCount is honoured: with 0, a job whose worker died fails with
/// BullMQ's stalled reason instead of running again.
#[test]
fn max_stalled_count_is_honoured() {
    let redis = Redis::start();
    let flags = ["--lock-duration-ms", "1000", "--stalled-interval-ms", "500", "--max-stalled-count", "0"];
    let a = Worker::start(&redis, "ms", &plugin("flaky", "rust"), &flags);
    let ids = node_add(&redis, "ms", json!([{"name": "slow", "data": {"sleepMs": 1500}}]));
    wait_active(&redis, "ms", 1);
    a.kill9();
    let _b = Worker::start(&redis, "ms", &plugin("flaky", "rust"), &flags);
    let v = wait_finished(&redis, "ms", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "failed");
    assert_eq!(v["jobs"][0]["failedReason"], "job stalled more than allowable limit");
}

/// SIGTERM: a short attempt finishes within the grace period; a runaway one
/// is interrupted after it and its job handed back to wait, attemptsMade
/// unchanged; the worker exits 0.
#[test]
fn sigterm_finishes_or_hands_back_running_attempts() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "g", &plugin("hog", "rust"), &["--concurrency", "2", "--grace-ms", "800"]);
    let ids = node_add(&redis, "g", json!([{"name": "spin", "data": {"mode": "loop"}, "opts": {"attempts": 3}}]));
    wait_active(&redis, "g", 1);
    let started = Instant::now();
    let status = w.stop();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(800), "the grace period was given");
    let v = inspect(&redis, "g", &ids);
    let j = &v["jobs"][0];
    assert_eq!(j["state"], "waiting", "handed back, not failed: {j:#}");
    assert_eq!(j["attemptsMade"], 0);
    assert!(j["failedReason"].is_null());
    let mut c = redis.conn();
    let lock: bool = redis::cmd("EXISTS").arg(format!("bull:g:{}:lock", ids[0])).query(&mut c).unwrap();
    assert!(!lock, "the lock was released");

    // A short job in flight at SIGTERM completes within the grace period.
    let w = Worker::start(&redis, "g2", &plugin("flaky", "rust"), &["--grace-ms", "5000"]);
    let ids = node_add(&redis, "g2", json!([{"name": "short", "data": {"sleepMs": 700}}]));
    wait_active(&redis, "g2", 1);
    assert!(w.stop().success());
    let v = inspect(&redis, "g2", &ids);
    assert_eq!(v["jobs"][0]["state"], "completed");
}
