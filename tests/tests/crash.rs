//! Crash safety: acks_late semantics. A worker killed mid-job loses
//! nothing (stalled recovery, maxStalledCount), and SIGTERM finishes or hands
//! back running attempts without counting a failure.

use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

fn wait_active(redis: &Redis, queue: &str, n: usize) {
    let mut c = redis.conn();
    wait_until(T, Duration::from_millis(20), "jobs never became active", || {
        let len: usize = redis::cmd("LLEN").arg(format!("bull:{queue}:active")).query(&mut c).unwrap();
        (len >= n).then_some(())
    })
}

/// kill -9 mid-attempt: after the lock expires the stalled check re-queues the
/// jobs and another worker completes each exactly once.
#[test]
fn kill9_mid_job_loses_nothing() {
    let redis = Redis::start();
    let flags = ["--concurrency", "3", "--lock-duration-ms", "1000", "--stalled-interval-ms", "500"];
    let events = NodeEvents::listen(&redis, "k", 3, T);
    let a = Worker::start(&redis, "k", &plugin("flaky", "rust"), &flags);
    let jobs: Vec<Value> = (0..3).map(|i| json!({"name": "slow", "data": {"sleepMs": 3000, "n": i}})).collect();
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
    let ids = node_add(&redis, "ms", json!([{"name": "slow", "data": {"sleepMs": 3000}}]));
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

/// SIGTERM on an idle worker, parked on its blocking wait for a job
/// (BullMQ's drainDelay, 5 s), ends it at once: the wait is interrupted
/// (vendored bullmq-official patch 10), not waited out. Several threads,
/// several queues: every shard's worker is parked.
#[test]
fn sigterm_on_an_idle_worker_exits_at_once() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "idle", &plugin("echo", "rust"), &["--concurrency", "4", "--threads", "2"]);
    let ids = node_add(&redis, "idle", json!([{"name": "one", "data": {}}]));
    wait_finished(&redis, "idle", &ids, T);
    // Parked on BZPOPMIN by now (the queue drained after its only job).
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = w.stop();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(1500), "an idle worker took {took:?} to stop (the blocking wait is 5 s)");
}

/// SIGTERM at any moment of start-up (loading the plugin, connecting,
/// opening the queue) exits 0, promptly, and leaves no job taken: each is
/// still waiting or was completed, none left active for the stalled check.
#[test]
fn sigterm_during_start_up_exits_cleanly() {
    let redis = Redis::start();
    let jobs: Vec<Value> = (0..20).map(|i| json!({"name": "e", "data": {"i": i}})).collect();
    let ids = node_add(&redis, "boot", json!(jobs));
    // From 30 ms: earlier, a loaded machine may not have reached main() yet.
    for delay_ms in [30, 60, 100, 200, 400] {
        let mut args = vec!["worker".to_string()];
        args.extend(redis.args());
        args.extend(["--queue", "boot", "--plugin"].map(String::from));
        args.push(plugin("echo", "js").to_str().unwrap().to_string());
        let mut child = std::process::Command::new(bullpen_bin())
            .args(&args)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let started = Instant::now();
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "SIGTERM {delay_ms} ms into start-up: {status}\n{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM {delay_ms} ms into start-up took {:?}",
            started.elapsed()
        );
        let v = inspect(&redis, "boot", &ids);
        assert_eq!(v["counts"]["active"], 0, "SIGTERM {delay_ms} ms into start-up left a job active: {v:#}");
    }
}

/// An attempt interrupted by shutdown writes what its guest queued
/// (write-behind) and printed before its job is handed back. hog's `slow`
/// mode logs step 1, prints a line, sets progress 10 and sleeps 400 ms;
/// SIGTERM with no grace period lands well within the 100 ms the queued
/// writes would otherwise wait. (On a machine so busy that it lands later,
/// the timer has written those; the printed line is only ever written at the
/// attempt's end, so that part is tested either way.)
#[test]
fn an_interrupted_attempt_writes_its_pending_lines_before_handing_back() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "gi", &plugin("hog", "rust"), &["--grace-ms", "0"]);
    let ids = node_add(&redis, "gi", json!([{"name": "slow", "data": {"mode": "slow", "print": true}}]));
    wait_active(&redis, "gi", 1);
    std::thread::sleep(Duration::from_millis(20));
    assert!(w.stop().success());
    let v = inspect(&redis, "gi", &ids);
    let j = &v["jobs"][0];
    assert_eq!(j["state"], "waiting", "handed back: {j:#}");
    assert_eq!(j["attemptsMade"], 0);
    let logs: Vec<&str> = j["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(logs.len(), 3, "the digest line, step 1's line and what step 1 printed: {logs:?}");
    assert!(logs[0].starts_with("bullpen: plugin sha256:"), "{logs:?}");
    assert_eq!(logs[1], "hog: step 1");
    assert_eq!(logs[2], "hog: printed step 1", "captured stdout is written too");
    assert_eq!(j["progress"], 10, "{j:#}");
}

/// Redis restarted under a running worker (AOF on): the worker logs the
/// outage, reconnects and goes on; no job is lost.
#[test]
fn redis_restart_under_a_running_worker_loses_nothing() {
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let w = Worker::start(&redis, "rr", &plugin("echo", "rust"), &["--concurrency", "4"]);
    let first: Vec<Value> = (0..50).map(|i| json!({"name": "before", "data": {"i": i}})).collect();
    let mut ids = node_add(&redis, "rr", Value::Array(first));
    wait_finished(&redis, "rr", &ids, T);
    let queued: Vec<Value> =
        (0..50).map(|i| json!({"name": "during", "data": {"i": i}, "opts": {"delay": 1500}})).collect();
    ids.extend(node_add(&redis, "rr", Value::Array(queued)));
    redis.restart(Duration::from_millis(1500));
    let after: Vec<Value> = (0..50).map(|i| json!({"name": "after", "data": {"i": i}})).collect();
    ids.extend(node_add(&redis, "rr", Value::Array(after)));
    let v = wait_finished(&redis, "rr", &ids, T);
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed", "{j:#}");
    }
    assert_eq!(v["counts"]["completed"], 150);
    let log = w.log();
    assert!(log.to_lowercase().contains("error") || log.contains("WARN"), "the outage is logged:\n{log}");
}

/// Redis away for 3 s under an idle worker: the failed fetches back off
/// (100 ms doubling, not a flat 15 s), the outage is one warning and its
/// end one info line, and a job added once Redis is back is taken within
/// seconds.
#[test]
fn an_outage_is_said_once_and_fetching_resumes_promptly() {
    let mut redis = Redis::start_with(&["--appendonly", "yes"]);
    let w = Worker::start(&redis, "out", &plugin("echo", "rust"), &[]);
    std::thread::sleep(Duration::from_millis(300));
    redis.restart(Duration::from_secs(3));
    let back = Instant::now();
    let ids = node_add(&redis, "out", json!([{"name": "after", "data": {}}]));
    let v = wait_finished(&redis, "out", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "completed");
    let took = back.elapsed();
    assert!(took < Duration::from_secs(8), "the first job after the outage took {took:?}");
    let log = w.log();
    let warned = log.matches("cannot fetch jobs; retrying").count();
    assert!(warned <= 1, "the outage was said {warned} times:\n{log}");
    assert!(!log.contains("failed to fetch job, retrying") && !log.contains("blocking wait failed"), "{log}");
}

/// Lock renewal keeps attempts longer than the lock duration alive, even
/// when the guest spins without yielding: no stall, no second run.
#[test]
fn lock_renewal_outlives_long_and_spinning_attempts() {
    let redis = Redis::start();
    let flags =
        ["--concurrency", "2", "--lock-duration-ms", "1000", "--stalled-interval-ms", "500", "--timeout-ms", "3000"];
    let w = Worker::start(&redis, "lr", &plugin("flaky", "rust"), &flags);
    let h = Worker::start(&redis, "lr-hog", &plugin("hog", "rust"), &flags);
    let ids = node_add(&redis, "lr", json!([{"name": "long", "data": {"sleepMs": 2500}}]));
    let hog = node_add(&redis, "lr-hog", json!([{"name": "spin", "data": {"mode": "loop"}}]));
    let v = wait_finished(&redis, "lr", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "completed");
    assert_eq!(v["jobs"][0]["attemptsMade"], 1);
    assert_eq!(v["jobs"][0]["attemptsStarted"], 1, "never re-run by a stalled check");
    let hv = wait_finished(&redis, "lr-hog", &hog, T);
    assert_eq!(
        hv["jobs"][0]["failedReason"],
        "attempt timed out: exceeded the wall-clock limit of 3000 ms (--timeout-ms)"
    );
    assert_eq!(hv["jobs"][0]["attemptsStarted"], 1, "the spinning guest did not starve lock renewal");
    let mut c = redis.conn();
    for q in ["lr", "lr-hog"] {
        let stalled: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(format!("bull:{q}:events"))
            .arg("-")
            .arg("+")
            .query::<Vec<(String, Vec<String>)>>(&mut c)
            .unwrap();
        assert!(
            !stalled.iter().any(|(_, f)| f.get(1).map(String::as_str) == Some("stalled")),
            "{q}: a stalled event was emitted"
        );
    }
    drop((w, h));
}
