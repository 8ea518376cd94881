//! `bullpen retry` and `bullpen inspect`, checked against what Node's bullmq
//! sees. Each test starts its own redis-server.

use std::process::Output;
use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `bullpen retry --redis <url> --queue <q> <id> <extra..>`.
fn retry(redis: &Redis, queue: &str, id: &str, extra: &[&str]) -> Output {
    let url = redis.url();
    let mut args = vec!["retry", "--redis", &url, "--queue", queue, id];
    args.extend_from_slice(extra);
    bullpen(&args)
}

fn retry_ok(redis: &Redis, queue: &str, id: &str, extra: &[&str]) {
    let out = retry(redis, queue, id, extra);
    assert!(out.status.success(), "bullpen retry {id} {extra:?} failed: {}", stderr(&out));
}

/// `bullpen inspect`, raw output.
fn inspect_cli(redis: &Redis, queue: &str, id: &str, extra: &[&str]) -> Output {
    let url = redis.url();
    let mut args = vec!["inspect", "--redis", &url, "--queue", queue, id];
    args.extend_from_slice(extra);
    bullpen(&args)
}

/// `bullpen inspect`, parsed.
fn inspect_json(redis: &Redis, queue: &str, id: &str) -> Value {
    let out = inspect_cli(redis, queue, id, &[]);
    assert!(out.status.success(), "bullpen inspect {id} failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("inspect printed bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Node's view of one job.
fn node_job(redis: &Redis, queue: &str, id: &str) -> Value {
    inspect(redis, queue, &[id.to_string()])["jobs"][0].clone()
}

/// Poll Node's view of one job until `done` holds.
fn wait_job(redis: &Redis, queue: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until_ok(T, Duration::from_millis(100), &format!("job {id} never became {what}"), || {
        let j = node_job(redis, queue, id);
        if done(&j) {
            Ok(j)
        } else {
            Err(j)
        }
    })
}

/// The newest entry of the queue's event stream, as a field map.
fn last_event(redis: &Redis, queue: &str) -> Value {
    let mut c = redis.conn();
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(format!("bull:{queue}:events"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let (_, fields) = v.into_iter().next().expect("no events");
    Value::Object(fields.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn events_len(redis: &Redis, queue: &str) -> u64 {
    redis::cmd("XLEN").arg(format!("bull:{queue}:events")).query(&mut redis.conn()).unwrap()
}

/// A job that failed its only attempt, retried: it is back in wait with
/// failedReason/processedOn/finishedOn cleared and a `waiting` event (prev
/// failed); the next worker runs it again and Node sees it completed.
#[test]
fn retry_failed_job_runs_again_and_completes() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "r", &plugin("flaky", "rust"), &[]);
    let ids = node_add(&redis, "r", json!([{"name": "once", "data": {"failTimes": 1}}]));
    let id = &ids[0];
    let j = &wait_finished(&redis, "r", &ids, T)["jobs"][0];
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["attemptsMade"], 1);
    assert_eq!(j["failedReason"], "flaky: failing attempt 1 of 1");
    assert!(w.stop().success());

    retry_ok(&redis, "r", id, &[]);
    let j = node_job(&redis, "r", id);
    assert_eq!(j["state"], "waiting", "{j:#}");
    assert_eq!(j["failedReason"], Value::Null);
    assert_eq!(j["processedOn"], Value::Null);
    assert_eq!(j["finishedOn"], Value::Null);
    assert_eq!(j["attemptsMade"], 1, "attemptsMade is kept without --reset-attempts-made");
    assert_eq!(j["attemptsStarted"], 1);
    assert_eq!(last_event(&redis, "r"), json!({"event": "waiting", "jobId": id, "prev": "failed"}));
    let counts = node(&["counts", &redis.url(), "r"]);
    assert_eq!((counts["waiting"].as_u64(), counts["failed"].as_u64()), (Some(1), Some(0)), "{counts}");

    let _w = Worker::start(&redis, "r", &plugin("flaky", "rust"), &[]);
    let j = &wait_finished(&redis, "r", &ids, T)["jobs"][0];
    assert_eq!(j["state"], "completed", "{j:#}");
    assert_eq!(j["returnvalue"], json!({"succeededOnAttempt": 2}));
    assert_eq!(j["failedReason"], Value::Null);
    assert_eq!(j["attemptsMade"], 2);
    assert_eq!(j["attemptsStarted"], 2);
    assert_eq!(guest_logs(j), json!(["flaky: succeeded on attempt 2"]));
}

/// With a worker running all along: `--reset-attempts-made` makes the job
/// start from attemptsMade 0, so flaky (`failTimes: 1`) fails it again, as
/// BullMQ's semantics imply; `--reset-attempts-started` resets
/// attemptsStarted too; a plain retry then lets it succeed on attempt 2.
#[test]
fn reset_attempts_made_and_started() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "z", &plugin("flaky", "rust"), &[]);
    let ids = node_add(&redis, "z", json!([{"name": "again", "data": {"failTimes": 1}}]));
    let id = &ids[0];
    let j = &wait_finished(&redis, "z", &ids, T)["jobs"][0];
    assert_eq!(
        (j["state"].as_str(), j["attemptsMade"].as_u64(), j["attemptsStarted"].as_u64()),
        (Some("failed"), Some(1), Some(1)),
        "{j:#}"
    );

    retry_ok(&redis, "z", id, &["--reset-attempts-made"]);
    let j = wait_job(&redis, "z", id, "failed a second time", |j| j["state"] == "failed" && j["attemptsStarted"] == 2);
    // The attempt ran with attemptsMade 0: flaky names it attempt 1 and fails.
    assert_eq!(j["failedReason"], "flaky: failing attempt 1 of 1", "{j:#}");
    assert_eq!(j["attemptsMade"], 1);
    assert_eq!(j["returnvalue"], Value::Null);

    retry_ok(&redis, "z", id, &["--reset-attempts-made", "--reset-attempts-started"]);
    let j = wait_job(&redis, "z", id, "failed with attemptsStarted reset", |j| {
        j["state"] == "failed" && j["attemptsStarted"] == 1
    });
    assert_eq!(j["failedReason"], "flaky: failing attempt 1 of 1", "{j:#}");
    assert_eq!(j["attemptsMade"], 1);

    retry_ok(&redis, "z", id, &[]);
    let j = wait_job(&redis, "z", id, "completed", |j| j["state"] == "completed");
    assert_eq!(j["returnvalue"], json!({"succeededOnAttempt": 2}), "{j:#}");
    assert_eq!(j["attemptsMade"], 2);
    assert_eq!(j["attemptsStarted"], 2);
    assert_eq!(j["failedReason"], Value::Null);
}

/// A missing job is BullMQ code -1, a job not in the asked-for state is -3;
/// both exit non-zero and change nothing (no event, same state, same
/// return value).
#[test]
fn retry_refuses_missing_and_wrong_state_jobs() {
    let redis = Redis::start();
    let out = retry(&redis, "w", "nope", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("job nope not found in queue w") && err.contains("-1"), "{err}");

    let ids = node_add(&redis, "w", json!([{"name": "pending", "data": {"n": 1}}]));
    let id = &ids[0];
    let before = events_len(&redis, "w");
    let out = retry(&redis, "w", id, &["--state", "failed"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("job {id} is not in the failed state")) && err.contains("-3"), "{err}");
    assert!(err.contains("it is waiting"), "{err}");
    let out = retry(&redis, "w", id, &["--state", "completed"]);
    assert!(!out.status.success() && stderr(&out).contains("-3"), "{}", stderr(&out));
    assert_eq!(events_len(&redis, "w"), before, "a refused retry must not emit events");
    assert_eq!(node_job(&redis, "w", id)["state"], "waiting");

    let _w = Worker::start(&redis, "w", &plugin("echo", "rust"), &[]);
    wait_finished(&redis, "w", &ids, T);
    let out = retry(&redis, "w", id, &[]);
    assert!(!out.status.success(), "a completed job is not in the (default) failed state");
    let err = stderr(&out);
    assert!(err.contains("not in the failed state") && err.contains("-3") && err.contains("it is completed"), "{err}");
    let j = node_job(&redis, "w", id);
    assert_eq!(j["state"], "completed");
    assert_eq!(j["returnvalue"], json!({"n": 1}));
    assert_eq!(j["attemptsMade"], 1);
}

/// `--state completed` re-runs a completed job: returnvalue and finishedOn
/// are cleared, `waiting` (prev completed) is emitted, and it runs again.
#[test]
fn retry_completed_job() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "c", &plugin("echo", "rust"), &[]);
    let ids = node_add(&redis, "c", json!([{"name": "twice", "data": {"k": "v"}}]));
    let id = &ids[0];
    let first = wait_finished(&redis, "c", &ids, T)["jobs"][0].clone();
    assert_eq!(first["state"], "completed");
    assert!(w.stop().success());

    retry_ok(&redis, "c", id, &["--state", "completed"]);
    let j = node_job(&redis, "c", id);
    assert_eq!(j["state"], "waiting", "{j:#}");
    assert_eq!(j["returnvalue"], Value::Null);
    assert_eq!(j["finishedOn"], Value::Null);
    assert_eq!(j["processedOn"], Value::Null);
    assert_eq!(last_event(&redis, "c"), json!({"event": "waiting", "jobId": id, "prev": "completed"}));

    let _w = Worker::start(&redis, "c", &plugin("echo", "rust"), &[]);
    let j = &wait_finished(&redis, "c", &ids, T)["jobs"][0];
    assert_eq!(j["state"], "completed", "{j:#}");
    assert_eq!(j["returnvalue"], json!({"k": "v"}));
    assert_eq!(j["attemptsMade"], 2);
    assert!(j["finishedOn"].as_u64().unwrap() >= first["finishedOn"].as_u64().unwrap());
}

/// Like Node, a retried job goes to the far end of wait (LPUSH: processed
/// after the jobs already waiting) unless its opts say `lifo` (RPUSH: next).
#[test]
fn retry_honours_lifo_like_node() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "l", &plugin("flaky", "rust"), &[]);
    let failed = node_add(
        &redis,
        "l",
        json!([{"name": "fifo", "data": {"failTimes": 1}}, {"name": "lifo", "data": {"failTimes": 1}, "opts": {"lifo": true}}]),
    );
    wait_finished(&redis, "l", &failed, T);
    assert!(w.stop().success());
    let waiting = node_add(&redis, "l", json!([{"name": "waiting", "data": {}}]));
    retry_ok(&redis, "l", &failed[0], &[]);
    retry_ok(&redis, "l", &failed[1], &[]);
    // Workers take from the right end of the list.
    let wait: Vec<String> = redis::cmd("LRANGE").arg("bull:l:wait").arg(0).arg(-1).query(&mut redis.conn()).unwrap();
    assert_eq!(wait, vec![failed[0].clone(), waiting[0].clone(), failed[1].clone()]);
}

/// A flow child that failed with `ignoreDependencyOnFailure` left its
/// parent's dependencies for the parent's `:failed` hash; retrying it puts it
/// back (reprocessJob's moveChildBackToParentDependencies), and when it then
/// completes the parent records its value.
#[test]
fn retry_puts_a_child_back_into_its_parents_dependencies() {
    let redis = Redis::start();
    node_add(&redis, "parents", json!([{"name": "parent", "data": {}, "opts": {"jobId": "p1"}}]));
    let ids = node_add(
        &redis,
        "kids",
        json!([{"name": "kid", "data": {"failTimes": 1},
                "opts": {"parent": {"id": "p1", "queue": "bull:parents"}, "ignoreDependencyOnFailure": true}}]),
    );
    let child_key = format!("bull:kids:{}", ids[0]);
    let mut c = redis.conn();
    let in_deps = |c: &mut redis::Connection| -> bool {
        redis::cmd("SISMEMBER").arg("bull:parents:p1:dependencies").arg(&child_key).query(c).unwrap()
    };
    let in_failed = |c: &mut redis::Connection| -> bool {
        redis::cmd("HEXISTS").arg("bull:parents:p1:failed").arg(&child_key).query(c).unwrap()
    };
    assert!(in_deps(&mut c));

    let w = Worker::start(&redis, "kids", &plugin("flaky", "rust"), &[]);
    assert_eq!(wait_finished(&redis, "kids", &ids, T)["jobs"][0]["state"], "failed");
    assert!(w.stop().success());
    assert!(!in_deps(&mut c) && in_failed(&mut c), "the failed child should have moved to the parent's :failed");

    retry_ok(&redis, "kids", &ids[0], &[]);
    assert!(in_deps(&mut c), "retry must put the child back into the parent's dependencies");
    assert!(!in_failed(&mut c), "retry must remove the child from the parent's :failed");

    let _w = Worker::start(&redis, "kids", &plugin("flaky", "rust"), &[]);
    assert_eq!(wait_finished(&redis, "kids", &ids, T)["jobs"][0]["state"], "completed");
    let processed: Option<String> =
        redis::cmd("HGET").arg("bull:parents:p1:processed").arg(&child_key).query(&mut c).unwrap();
    assert_eq!(processed.as_deref(), Some(r#"{"succeededOnAttempt":2}"#));
    assert!(!in_deps(&mut c));
}

/// `bullpen inspect` shows a completed and a failed job as Node reads them.
#[test]
fn inspect_matches_node() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "i", &plugin("flaky", "rust"), &[]);
    let ids = node_add(
        &redis,
        "i",
        json!([
            {"name": "good", "data": {"failTimes": 0, "note": "héllo ✓"}, "opts": {"jobId": "ok-1", "attempts": 2}},
            {"name": "bad", "data": {"failTimes": 5}},
        ]),
    );
    let node = wait_finished(&redis, "i", &ids, T);

    let ok = inspect_json(&redis, "i", "ok-1");
    let n = &node["jobs"][0];
    assert_eq!(ok["id"], "ok-1");
    assert_eq!(ok["name"], "good");
    assert_eq!(ok["state"], "completed");
    assert_eq!(ok["data"], json!({"failTimes": 0, "note": "héllo ✓"}));
    assert!(ok.get("dataNotJson").is_none(), "{ok:#}");
    assert_eq!(ok["opts"]["attempts"], 2);
    assert_eq!(ok["returnvalue"], json!({"succeededOnAttempt": 1}));
    assert_eq!(ok["failedReason"], Value::Null);
    assert_eq!(guest_logs(&ok), json!(["flaky: succeeded on attempt 1"]));
    assert_eq!(ok["logs"][0], format!("bullpen: plugin sha256:{}", ok["pluginDigest"].as_str().unwrap()), "{ok:#}");
    for k in [
        "state",
        "data",
        "returnvalue",
        "progress",
        "attemptsMade",
        "attemptsStarted",
        "processedOn",
        "finishedOn",
        "logs",
    ] {
        assert_eq!(ok[k], n[k], "{k}: bullpen {ok:#} vs node {n:#}");
    }
    assert!(ok["timestamp"].as_u64().unwrap() <= ok["processedOn"].as_u64().unwrap());
    assert!(ok.get("parent").is_none());

    let bad = inspect_json(&redis, "i", &ids[1]);
    assert_eq!(bad["state"], "failed", "{bad:#}");
    assert_eq!(bad["failedReason"], "flaky: failing attempt 1 of 5");
    assert_eq!(bad["returnvalue"], Value::Null);
    assert_eq!(bad["attemptsMade"], 1);
    assert_eq!(bad["finishedOn"], node["jobs"][1]["finishedOn"]);

    let out = inspect_cli(&redis, "i", "nope", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("job nope not found in queue i"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// Waiting jobs, data that is not JSON, a flow child's parent, a custom prefix.
#[test]
fn inspect_waiting_bad_data_parent_and_prefix() {
    let redis = Redis::start();
    let ids = node_add(&redis, "v", json!([{"name": "raw", "data": {"x": 1}}, {"name": "p", "data": [1]}]));
    let mut c = redis.conn();
    let _: () =
        redis::cmd("HSET").arg(format!("bull:v:{}", ids[0])).arg("data").arg("{not json").query(&mut c).unwrap();
    let j = inspect_json(&redis, "v", &ids[0]);
    assert_eq!(j["state"], "waiting");
    assert_eq!(j["data"], "{not json");
    assert!(j["dataNotJson"].as_str().unwrap().contains("not valid JSON"), "{j:#}");
    assert_eq!((j["attemptsMade"].as_u64(), j["attemptsStarted"].as_u64()), (Some(0), Some(0)));
    assert_eq!((&j["processedOn"], &j["finishedOn"], &j["returnvalue"]), (&Value::Null, &Value::Null, &Value::Null));
    assert_eq!(j["logs"], json!([]));

    let kid = node_add(
        &redis,
        "v",
        json!([{"name": "kid", "data": {}, "opts": {"parent": {"id": ids[1], "queue": "bull:v"}}}]),
    );
    let j = inspect_json(&redis, "v", &kid[0]);
    assert_eq!(j["parent"]["id"], ids[1].as_str(), "{j:#}");
    assert_eq!(j["parent"]["queueKey"], "bull:v");

    let url = redis.url();
    let out = bullpen(&[
        "add",
        "--redis",
        &url,
        "--queue",
        "v",
        "--prefix",
        "other",
        "n",
        r#"{"in":"other"}"#,
        "--opts",
        r#"{"jobId":"o1"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = inspect_cli(&redis, "v", "o1", &["--prefix", "other"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["data"].clone(), j["state"].clone()), (json!({"in": "other"}), json!("waiting")));
    assert!(!inspect_cli(&redis, "v", "o1", &[]).status.success(), "o1 lives under the prefix `other` only");
}

/// Both commands answer --help and name their flags.
#[test]
fn help_for_retry_and_inspect() {
    let text = String::from_utf8_lossy(&bullpen(&["retry", "--help"]).stdout).to_string();
    for flag in
        ["--redis", "--queue", "--prefix", "--state", "--reset-attempts-made", "--reset-attempts-started", "<JOB_ID>"]
    {
        assert!(text.contains(flag), "retry --help lacks {flag}: {text}");
    }
    let text = String::from_utf8_lossy(&bullpen(&["inspect", "--help"]).stdout).to_string();
    for flag in ["--redis", "--queue", "--prefix", "<JOB_ID>"] {
        assert!(text.contains(flag), "inspect --help lacks {flag}: {text}");
    }
    let out = bullpen(&["retry", "--queue", "q", "1", "--state", "active"]);
    assert!(!out.status.success(), "only failed|completed are accepted");
}
