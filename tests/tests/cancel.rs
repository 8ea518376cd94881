//! `bullpen cancel` (runtime/src/ops/cancel.rs: the request and the script
//! that decides by state; runtime/src/queue/cancel.rs: the worker's
//! listener; `Trigger::attempt`'s `select!`: the stop). Observed through
//! Node's bullmq. A `hog` job in `loop` mode spins forever in wasm, so only
//! the cancel (or the 10-minute timeout the workers are given) can end it.

use std::process::Output;
use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// Spinning jobs must end by cancel, not by the wall clock.
const LONG: [&str; 2] = ["--timeout-ms", "600000"];

fn one(v: &Value) -> &Value {
    &v["jobs"][0]
}

fn add(redis: &Redis, queue: &str, name: &str, data: Value, opts: Value) -> String {
    node_add(redis, queue, json!([{"name": name, "data": data, "opts": opts}])).remove(0)
}

/// Wait until Node sees the job active.
fn wait_active(redis: &Redis, queue: &str, id: &str) {
    wait_until_ok(T, POLL, "job never became active", || {
        let v = inspect(redis, queue, &[id.to_string()]);
        if one(&v)["state"] == "active" {
            Ok(())
        } else {
            Err(v)
        }
    });
}

fn cancel(redis: &Redis, queue: &str, id: &str, extra: &[&str]) -> Output {
    let mut args = vec!["cancel".to_string(), "--queue".into(), queue.into(), id.into(), "--json".into()];
    args.extend(redis.args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bullpen(&args)
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bullpen cancel printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Three workers of one queue; one runs a spinning job among ordinary
/// ones. The cancel stops it within one epoch tick plus Redis round trips
/// (the latency is printed), fails it unrecoverably with the reason (its
/// `attempts: 3` notwithstanding), with the attempt's log written; every
/// other job completes.
#[test]
fn cancel_stops_a_spinning_job_on_one_of_three_workers() {
    let redis = Redis::start();
    let hog = plugin("hog", "rust");
    let workers: Vec<Worker> = (0..3).map(|_| Worker::start(&redis, "c", &hog, &LONG)).collect();
    let id = add(&redis, "c", "spin", json!({"mode": "loop"}), json!({"attempts": 3}));
    wait_active(&redis, "c", &id);
    let others = node_add(
        &redis,
        "c",
        Value::Array((0..6).map(|i| json!({"name": "ok", "data": {"mode": "ok", "i": i}})).collect()),
    );
    let asked = Instant::now();
    let out = cancel(&redis, "c", &id, &["--reason", "operator said stop"]);
    let took = asked.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json_out(&out);
    assert_eq!(r["result"], "stopped", "{r}");
    assert_eq!(r["state"], "failed", "{r}");
    assert_eq!(r["failedReason"], "cancelled: operator said stop", "{r}");
    eprintln!("cancel latency: {} ms until the job left active (command total {took:?})", r["waitedMs"]);
    let v = inspect(&redis, "c", std::slice::from_ref(&id));
    let j = one(&v);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["failedReason"], "cancelled: operator said stop", "{j:#}");
    assert_eq!(j["attemptsMade"], 1, "unrecoverable: no retry despite attempts 3: {j:#}");
    let logs = j["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l.as_str().unwrap().starts_with("bullpen: plugin sha256:")),
        "the interrupted attempt's pending log was written: {j:#}"
    );
    let v = wait_finished(&redis, "c", &others, T);
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed", "{j:#}");
    }
    let owners: Vec<&Worker> = workers.iter().filter(|w| w.log().contains("attempt cancelled")).collect();
    assert_eq!(owners.len(), 1, "exactly the owning worker stopped an attempt");
    // The request is gone once acted on.
    let left: i64 = redis::cmd("HLEN").arg("bull:c:bullpen:cancels").query(&mut redis.conn()).unwrap();
    assert_eq!(left, 0);
}

/// `--retry`: the cancelled attempt is a normal failed attempt, so the job
/// (attempts 2) goes back for its second attempt; cancelling that one
/// without `--retry` fails it for good. With `--instance-reuse` the
/// cancelled instance is discarded: a later job gets a fresh one.
#[test]
fn cancel_with_retry_gives_the_job_its_next_attempt_and_discards_a_kept_instance() {
    let redis = Redis::start();
    let flags = [LONG[0], LONG[1], "--instance-reuse", "50"];
    let _w = Worker::start(&redis, "r", &plugin("hog", "rust"), &flags);
    let warmup = add(&redis, "r", "count", json!({"mode": "count"}), json!({}));
    let v = wait_finished(&redis, "r", &[warmup], T);
    assert_eq!(one(&v)["returnvalue"]["processed"], 1, "{v:#}");
    let id = add(&redis, "r", "spin", json!({"mode": "loop"}), json!({"attempts": 2}));
    wait_active(&redis, "r", &id);
    let out = cancel(&redis, "r", &id, &["--retry", "--reason", "try again"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json_out(&out);
    assert_eq!(r["result"], "stopped", "{r}");
    assert_ne!(r["state"], "failed", "the job got its second attempt: {r}");
    // Its second attempt (picked up at once) spins again.
    wait_until_ok(T, POLL, "no second attempt", || {
        let v = inspect(&redis, "r", std::slice::from_ref(&id));
        if one(&v)["state"] == "active" && one(&v)["attemptsMade"] == 1 {
            Ok(())
        } else {
            Err(v)
        }
    });
    let out = cancel(&redis, "r", &id, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = inspect(&redis, "r", std::slice::from_ref(&id));
    let j = one(&v);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["failedReason"], "cancelled", "{j:#}");
    assert_eq!(j["attemptsMade"], 2, "{j:#}");
    let after = add(&redis, "r", "count", json!({"mode": "count"}), json!({}));
    let v = wait_finished(&redis, "r", &[after], T);
    assert_eq!(one(&v)["returnvalue"]["processed"], 1, "a fresh instance after the cancelled one: {v:#}");
}

/// Jobs that are not running: waiting, delayed and prioritized jobs are
/// removed from their set and failed; completed, failed and missing jobs
/// exit 1 naming their state, writing nothing.
#[test]
fn cancel_of_jobs_that_are_not_running() {
    let redis = Redis::start();
    let waiting = add(&redis, "n", "w", json!({}), json!({}));
    let delayed = add(&redis, "n", "d", json!({}), json!({"delay": 600000}));
    let prioritized = add(&redis, "n", "p", json!({}), json!({"priority": 5}));
    for (id, from) in [(&waiting, "waiting"), (&delayed, "delayed"), (&prioritized, "prioritized")] {
        let out = cancel(&redis, "n", id, &["--reason", "not needed"]);
        assert!(out.status.success(), "{from}: {}", String::from_utf8_lossy(&out.stderr));
        let r = json_out(&out);
        assert_eq!(r, json!({"result": "removed", "from": from, "failedReason": "cancelled: not needed"}));
        let v = inspect(&redis, "n", std::slice::from_ref(id));
        assert_eq!(one(&v)["state"], "failed", "{v:#}");
        assert_eq!(one(&v)["failedReason"], "cancelled: not needed", "{v:#}");
    }
    let counts = node(&["counts", &redis.url(), "n"]);
    assert_eq!(
        (counts["waiting"].as_u64(), counts["delayed"].as_u64(), counts["prioritized"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{counts}"
    );
    assert_eq!(counts["failed"], 3, "{counts}");
    // Already failed (by the cancel above), completed, missing.
    let out = cancel(&redis, "n", &waiting, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("job {waiting} is already failed")), "{out:?}");
    let _w = Worker::start(&redis, "n", &plugin("echo", "rust"), &[]);
    let done = add(&redis, "n", "e", json!({"x": 1}), json!({}));
    wait_finished(&redis, "n", std::slice::from_ref(&done), T);
    let out = cancel(&redis, "n", &done, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is already completed; nothing to cancel"), "{out:?}");
    let out = cancel(&redis, "n", "no-such-job", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("job no-such-job not found in queue n (BullMQ code -1)"),
        "{out:?}"
    );
}

/// A worker whose pub/sub connection was dropped (CLIENT KILL) misses the
/// notice; it finds the stored request at its next check of the hash.
#[test]
fn a_cancel_sent_while_the_worker_was_off_pub_sub_still_arrives() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "p", &plugin("hog", "rust"), &LONG);
    let id = add(&redis, "p", "spin", json!({"mode": "loop"}), json!({}));
    wait_active(&redis, "p", &id);
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut redis.conn()).unwrap();
    assert!(killed >= 1, "the worker's subscription was there to kill");
    let out = cancel(&redis, "p", &id, &["--reason", "missed notice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json_out(&out)["state"], "failed");
    w.wait_log("cancel notices lost", T);
    let v = inspect(&redis, "p", &[id]);
    assert_eq!(one(&v)["failedReason"], "cancelled: missed notice", "{v:#}");
}

/// README's recipe for a Node service (tests/node/driver.js `cancel-request`
/// runs it verbatim): two writes, and the bullpen worker stops the job; the
/// worker's metrics count the attempt as `cancelled`.
#[test]
fn a_node_service_cancels_with_the_readme_recipe() {
    use std::io::{Read, Write};
    let redis = Redis::start();
    let w = Worker::start(&redis, "node", &plugin("hog", "rust"), &[LONG[0], LONG[1], "--metrics-addr", "127.0.0.1:0"]);
    let port = w.metrics_port();
    let id = add(&redis, "node", "spin", json!({"mode": "loop"}), json!({}));
    wait_active(&redis, "node", &id);
    node(&["cancel-request", &redis.url(), "node", &id, "from node"]);
    let v = wait_finished(&redis, "node", &[id], T);
    assert_eq!(one(&v)["state"], "failed", "{v:#}");
    assert_eq!(one(&v)["failedReason"], "cancelled: from node", "{v:#}");
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    wait_until_ok(T, Duration::from_millis(100), "no cancelled outcome in the metrics", || {
        let body = scrape();
        if body
            .lines()
            .any(|l| l.starts_with("bullpen_jobs_total{queue=\"node\"") && l.contains("outcome=\"cancelled\"} 1"))
        {
            Ok(())
        } else {
            Err(body)
        }
    });
}
