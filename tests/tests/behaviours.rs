//! What a processor can do (the tables in README.md's "What a processor can
//! do") on a real redis-server, checked from the outside with Node's bullmq:
//! steps, delays, children, failures, traps, retry delays, backoff,
//! maxStartedAttempts, lost locks, flows.

use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

fn job(v: &Value, i: usize) -> &Value {
    &v["jobs"][i]
}

/// The `steps` plugin's step-job pattern (BullMQ's "Process step jobs"
/// guide) end to end: Initial → Second → delayed 200 ms → Third → two
/// children → waiting-children → Finish with the children's values. Moves do
/// not count as attempts.
#[test]
fn steps_run_through_delay_children_and_finish() {
    let redis = Redis::start();
    let _steps = Worker::start(&redis, "orders", &plugin("steps", "rust"), &["--concurrency", "2"]);
    let ids = node_add(&redis, "orders", json!([{"name": "order", "data": {"order": 7}}]));
    let started = Instant::now();
    // The children's worker starts once the parent waits for them: children
    // done before `wait-for-children` let Finish run in the same attempt
    // (BullMQ's moveToWaitingChildren finds nothing to wait for), and this
    // test is about the path through waiting-children.
    wait_until_ok(T, POLL, "the parent never waited for its children", || {
        let v = inspect(&redis, "orders", &ids);
        if v["jobs"][0]["state"] == "waiting-children" {
            Ok(())
        } else {
            Err(v)
        }
    });
    let _kids = Worker::start(&redis, "orders-children", &plugin("echo", "rust"), &["--concurrency", "2"]);
    let v = wait_finished(&redis, "orders", &ids, T);
    let j = job(&v, 0);
    assert_eq!(j["state"], "completed", "{j:#}");
    let id = &ids[0];
    assert_eq!(
        j["returnvalue"],
        json!({"step": "Finish", "children": {
            format!("bull:orders-children:{id}-child-1"): {"child": 1, "parent": id},
            format!("bull:orders-children:{id}-child-2"): {"child": 2, "parent": id},
        }})
    );
    assert_eq!(guest_logs(j), json!(["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"]));
    assert_eq!(j["attemptsMade"], 1, "delays and waits do not count as attempts");
    assert!(
        j["attemptsStarted"].as_u64().unwrap() >= 3,
        "started at Initial, after the delay, after the children: {j:#}"
    );
    assert_eq!(j["data"], json!({"step": "Finish", "order": 7}), "the step is stored in the job data");
    assert!(started.elapsed() >= Duration::from_millis(200), "the delay was honoured");
}

/// An injected failure at each step: the retry resumes at that step (each
/// step's log line appears once) and the failure counts as an attempt.
#[test]
fn steps_resume_at_the_stored_step_after_a_failure() {
    let redis = Redis::start();
    let _steps = Worker::start(&redis, "st", &plugin("steps", "rust"), &["--concurrency", "4"]);
    let _kids = Worker::start(&redis, "st-children", &plugin("echo", "rust"), &["--concurrency", "4"]);
    let steps = ["Initial", "Second", "Third", "Finish"];
    let jobs: Vec<Value> =
        steps.iter().map(|s| json!({"name": s, "data": {"failAt": s}, "opts": {"attempts": 2}})).collect();
    let ids = node_add(&redis, "st", Value::Array(jobs));
    let v = wait_finished(&redis, "st", &ids, T);
    for (i, s) in steps.iter().enumerate() {
        let j = job(&v, i);
        assert_eq!(j["state"], "completed", "failAt {s}: {j:#}");
        assert_eq!(j["attemptsMade"], 2, "failAt {s}: one failure + the completion");
        assert_eq!(
            guest_logs(j),
            json!(["steps: Initial", "steps: Second", "steps: Third", "steps: Finish"]),
            "failAt {s}"
        );
        assert_eq!(j["returnvalue"]["children"].as_object().unwrap().len(), 2, "failAt {s}");
    }
    let kids = node(&["counts", &redis.url(), "st-children"]);
    assert_eq!(kids["completed"], 8, "no child added twice: {kids}");
}

/// Unrecoverable failure ends the job whatever `attempts` says.
#[test]
fn unrecoverable_fails_at_once() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "u", &plugin("flaky", "rust"), &[]);
    let ids = node_add(&redis, "u", json!([{"name": "x", "data": {"fatal": true}, "opts": {"attempts": 5}}]));
    let v = wait_finished(&redis, "u", &ids, T);
    assert_eq!(job(&v, 0)["state"], "failed");
    assert_eq!(job(&v, 0)["attemptsMade"], 1);
    assert_eq!(job(&v, 0)["failedReason"], "flaky: fatal error on attempt 1");
}

/// A panic is a trap: the failedReason names it and carries the panic
/// message; retries apply; the worker goes on with other jobs.
#[test]
fn trap_fails_the_attempt_with_a_named_reason_and_retries() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "p", &plugin("flaky", "rust"), &[]);
    let ids = node_add(
        &redis,
        "p",
        json!([
            {"name": "boom", "data": {"panic": true}, "opts": {"attempts": 2}},
            {"name": "fine", "data": {}},
        ]),
    );
    let v = wait_finished(&redis, "p", &ids, T);
    let j = job(&v, 0);
    assert_eq!(j["state"], "failed");
    assert_eq!(j["attemptsMade"], 2);
    let reason = j["failedReason"].as_str().unwrap();
    assert!(reason.starts_with("wasm trap: unreachable"), "{reason}");
    assert!(reason.contains("flaky: asked to panic on attempt 2"), "{reason}");
    assert!(
        j["logs"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("panicked at")),
        "stderr goes to the log"
    );
    assert_eq!(job(&v, 1)["state"], "completed");
}

/// The `delayed` events of a job in the queue's event stream, as
/// (when it was emitted, ms it asked to wait). Robust under load: no need to
/// catch the job while it sits in `delayed`.
fn delayed_events(redis: &Redis, queue: &str, id: &str) -> Vec<(i64, i64)> {
    let mut c = redis.conn();
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(format!("bull:{queue}:events")).arg("-").arg("+").query(&mut c).unwrap();
    entries
        .into_iter()
        .filter_map(|(sid, f)| {
            let get = |k: &str| f.chunks(2).find(|p| p[0] == k).map(|p| p[1].clone());
            (get("event").as_deref() == Some("delayed") && get("jobId").as_deref() == Some(id)).then(|| {
                let at: i64 = sid.split('-').next().unwrap().parse().unwrap();
                (at, get("delay").unwrap().parse::<i64>().unwrap() - at)
            })
        })
        .collect()
}

/// `retry-after`: the guest's own delay; it counts as an attempt, and the
/// job goes through `delayed` with the failedReason, as after a Node backoff retry.
#[test]
fn retry_after_uses_the_guests_delay() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "ra", &plugin("flaky", "rust"), &[]);
    let ids = node_add(
        &redis,
        "ra",
        json!([{"name": "x", "data": {"failTimes": 1, "retryAfterMs": 1500}, "opts": {"attempts": 2}}]),
    );
    let v = wait_finished(&redis, "ra", &ids, T);
    let j = job(&v, 0);
    assert_eq!(j["state"], "completed");
    assert_eq!(j["attemptsMade"], 2, "the retry-after failure counted as an attempt");
    assert_eq!(j["failedReason"], "flaky: failing attempt 1 of 1", "the failure was recorded");
    let delays = delayed_events(&redis, "ra", &ids[0]);
    assert_eq!(delays.len(), 1, "{delays:?}");
    // The due time is the worker's clock at the move + 1500; the event's
    // stream id is Redis's clock when the script ran, up to a round trip
    // later on a busy machine (1485 seen on 2 cores). A backoff computed
    // anywhere else (opts has none; BullMQ's default is 0) would be far off.
    assert!((1400..=1600).contains(&delays[0].1), "asked for 1500 ms: {delays:?}");
    assert!(j["processedOn"].as_i64().unwrap() >= delays[0].0 + 1400, "the second attempt waited");
}

/// Fixed and exponential backoff from job opts, as Node computes them.
#[test]
fn backoff_fixed_and_exponential_from_job_opts() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "b", &plugin("flaky", "rust"), &["--concurrency", "2"]);
    let ids = node_add(
        &redis,
        "b",
        json!([
            {"name": "fixed", "data": {"failTimes": 2}, "opts": {"attempts": 3, "backoff": {"type": "fixed", "delay": 400}}},
            {"name": "exp", "data": {"failTimes": 2}, "opts": {"attempts": 3, "backoff": {"type": "exponential", "delay": 300}}},
        ]),
    );
    let v = wait_finished(&redis, "b", &ids, T);
    for i in 0..2 {
        let j = job(&v, i);
        assert_eq!(j["state"], "completed", "{j:#}");
        assert_eq!(j["attemptsMade"], 3);
    }
    // Timestamps from Node: finishedOn - timestamp covers both delays.
    let raw = |id: &str, f: &str| -> u64 {
        let mut c = redis.conn();
        let s: String = redis::cmd("HGET").arg(format!("bull:b:{id}")).arg(f).query(&mut c).unwrap();
        s.parse().unwrap()
    };
    assert!(raw(&ids[0], "finishedOn") - raw(&ids[0], "timestamp") >= 800, "fixed: 400 + 400");
    assert!(raw(&ids[1], "finishedOn") - raw(&ids[1], "timestamp") >= 900, "exponential: 300 + 600");
}

/// Jitter (which bullmq-official's port ignores) is applied as BullMQ's
/// backoffs.ts does: uniform in [delay·(1−j), delay).
#[test]
fn backoff_jitter_is_applied() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "j", &plugin("flaky", "rust"), &["--concurrency", "6"]);
    let jobs: Vec<Value> = (0..6)
        .map(|_| json!({"name": "j", "data": {"failTimes": 5}, "opts": {"attempts": 5, "backoff": {"type": "exponential", "delay": 20000, "jitter": 0.5}}}))
        .collect();
    let ids = node_add(&redis, "j", Value::Array(jobs));
    let mut c = redis.conn();
    let mut delays = vec![];
    // One by one, in order, within T for all of them.
    wait_until_ok(T, POLL, "not every job reached the delayed set", || {
        for id in &ids[delays.len()..] {
            let score: Option<f64> = redis::cmd("ZSCORE").arg("bull:j:delayed").arg(id).query(&mut c).unwrap();
            let Some(score) = score else { return Err(format!("job {id} not delayed yet; delays so far {delays:?}")) };
            let fin: String = redis::cmd("HGET").arg(format!("bull:j:{id}")).arg("processedOn").query(&mut c).unwrap();
            delays.push((score / 4096.0) as i64 - fin.parse::<i64>().unwrap());
        }
        Ok(())
    });
    for d in &delays {
        assert!((9_900..20_100).contains(d), "first retry delay {d} outside [10000, 20000): {delays:?}");
    }
    let spread = delays.iter().max().unwrap() - delays.iter().min().unwrap();
    assert!(spread > 100, "jitter should spread the delays: {delays:?}");
}

/// maxStartedAttempts as a worker option: the job fails with BullMQ's reason
/// once it has started more often than allowed.
#[test]
fn max_started_attempts_fails_the_job() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "m", &plugin("flaky", "rust"), &["--max-started-attempts", "1"]);
    let ids = node_add(&redis, "m", json!([{"name": "x", "data": {"failTimes": 9}, "opts": {"attempts": 5}}]));
    let v = wait_finished(&redis, "m", &ids, T);
    assert_eq!(job(&v, 0)["state"], "failed");
    assert_eq!(job(&v, 0)["failedReason"], "job started more than allowable limit");
    assert_eq!(job(&v, 0)["attemptsStarted"], 2);
}

/// The lock is taken away while the guest runs (as a stall recovery would):
/// the guest's next write gets lock-lost, nothing is written, the attempt
/// neither completes nor fails the job, and the job's next owner finishes it.
#[test]
fn lost_lock_means_nothing_is_written_and_the_new_owner_finishes() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "l", &plugin("flaky", "rust"), &["--stalled-interval-ms", "1000"]);
    let ids = node_add(&redis, "l", json!([{"name": "x", "data": {"sleepMs": 3000}}]));
    let mut c = redis.conn();
    let lock = format!("bull:l:{}:lock", ids[0]);
    wait_until(T, Duration::from_millis(10), "the job's lock never appeared", || {
        redis::cmd("EXISTS").arg(&lock).query::<bool>(&mut c).unwrap().then_some(())
    });
    let _: () = redis::cmd("DEL").arg(&lock).query(&mut c).unwrap();
    w.wait_log("lock lost during the attempt", T);
    let v = inspect(&redis, "l", &ids);
    assert_eq!(job(&v, 0)["data"], json!({"sleepMs": 3000}), "the guest's write after the loss was refused");
    assert_eq!(job(&v, 0)["attemptsMade"], 0, "the abandoned attempt was neither completed nor failed");
    assert!(job(&v, 0)["failedReason"].is_null());
    // The stalled check re-queues it and the next attempt (its new owner) completes it.
    let v = wait_finished(&redis, "l", &ids, T);
    let j = job(&v, 0);
    assert_eq!(j["state"], "completed", "{j:#}");
    assert_eq!(j["attemptsMade"], 1);
    assert_eq!(j["data"]["touchedOnAttempt"], 1);
}

fn flow(redis: &Redis, tree: Value) -> Value {
    let mut cmd = std::process::Command::new("node");
    cmd.arg(root().join("tests/node/driver.js")).args(["flow", &redis.url(), "-", &tree.to_string()]);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A flow from Node's FlowProducer (parent in one queue, children in
/// another, a grandchild) runs on bullpen workers: each parent runs after its
/// children, with their values.
#[test]
fn node_flow_producer_flow_runs_bottom_up() {
    let redis = Redis::start();
    let _p = Worker::start(&redis, "fparents", &plugin("flaky", "rust"), &[]);
    let _k = Worker::start(&redis, "fkids", &plugin("flaky", "rust"), &["--concurrency", "3"]);
    let tree = flow(
        &redis,
        json!({
            "name": "parent", "queueName": "fparents", "data": {"returnChildren": true},
            "children": [
                {"name": "kid-a", "queueName": "fkids", "data": {"returnChildren": true},
                 "children": [{"name": "grandkid", "queueName": "fkids", "data": {}}]},
                {"name": "kid-b", "queueName": "fkids", "data": {}},
            ]
        }),
    );
    let pid = tree["id"].as_str().unwrap().to_string();
    let a = tree["children"][0]["id"].as_str().unwrap();
    let b = tree["children"][1]["id"].as_str().unwrap();
    let g = tree["children"][0]["children"][0]["id"].as_str().unwrap();
    let v = wait_finished(&redis, "fparents", std::slice::from_ref(&pid), T);
    let parent = job(&v, 0);
    assert_eq!(parent["state"], "completed", "{parent:#}");
    assert_eq!(
        parent["returnvalue"]["children"],
        json!({
            format!("bull:fkids:{a}"): {"succeededOnAttempt": 1, "children": {format!("bull:fkids:{g}"): {"succeededOnAttempt": 1}}},
            format!("bull:fkids:{b}"): {"succeededOnAttempt": 1},
        })
    );
    let kids = inspect(&redis, "fkids", &[a.into(), b.into(), g.into()]);
    let done = |i: usize| kids["jobs"][i]["finishedOn"].as_u64().unwrap();
    assert!(done(2) <= done(0), "grandchild before its parent");
    assert!(parent["processedOn"].as_u64().unwrap() >= done(0).max(done(1)), "parent runs after its children");
}

/// failParentOnFailure: a failed child fails the parent (as in Node);
/// ignoreDependencyOnFailure: the parent completes without that child.
#[test]
fn flow_fail_parent_and_ignore_dependency_on_failure() {
    let redis = Redis::start();
    let _p = Worker::start(&redis, "gp", &plugin("flaky", "rust"), &["--concurrency", "2"]);
    let _k = Worker::start(&redis, "gk", &plugin("flaky", "rust"), &["--concurrency", "4"]);
    let failing = flow(
        &redis,
        json!({
            "name": "p1", "queueName": "gp", "data": {"returnChildren": true},
            "children": [
                {"name": "bad", "queueName": "gk", "data": {"fatal": true}, "opts": {"failParentOnFailure": true}},
                {"name": "good", "queueName": "gk", "data": {}},
            ]
        }),
    );
    let ignoring = flow(
        &redis,
        json!({
            "name": "p2", "queueName": "gp", "data": {"returnChildren": true},
            "children": [
                {"name": "bad", "queueName": "gk", "data": {"fatal": true}, "opts": {"ignoreDependencyOnFailure": true}},
                {"name": "good", "queueName": "gk", "data": {}},
            ]
        }),
    );
    let p1 = failing["id"].as_str().unwrap().to_string();
    let p2 = ignoring["id"].as_str().unwrap().to_string();
    let v = wait_finished(&redis, "gp", &[p1, p2], T);
    let bad1 = failing["children"][0]["id"].as_str().unwrap();
    assert_eq!(job(&v, 0)["state"], "failed", "{:#}", job(&v, 0));
    let reason = job(&v, 0)["failedReason"].as_str().unwrap();
    assert!(reason.contains(&format!("bull:gk:{bad1}")) && reason.contains("failed"), "{reason}");
    assert_eq!(job(&v, 1)["state"], "completed", "{:#}", job(&v, 1));
    let good2 = ignoring["children"][1]["id"].as_str().unwrap();
    assert_eq!(job(&v, 1)["returnvalue"]["children"], json!({format!("bull:gk:{good2}"): {"succeededOnAttempt": 1}}));
}

/// A custom backoff type is answered by the guest's `backoff` export
/// (flaky: "linear" = 300 ms × attempts made; "never" = give up), as Node's
/// `settings.backoffStrategy` would be.
#[test]
fn custom_backoff_is_computed_by_the_guest() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "cb", &plugin("flaky", "rust"), &["--concurrency", "2"]);
    let ids = node_add(
        &redis,
        "cb",
        json!([
            {"name": "linear", "data": {"failTimes": 2}, "opts": {"attempts": 3, "backoff": {"type": "linear"}}},
            {"name": "never", "data": {"failTimes": 2}, "opts": {"attempts": 3, "backoff": {"type": "never"}}},
        ]),
    );
    let v = wait_finished(&redis, "cb", &ids, T);
    let delays = delayed_events(&redis, "cb", &ids[0]);
    assert_eq!(delays.len(), 2, "{delays:?}");
    assert!(
        (290..=310).contains(&delays[0].1) && (590..=610).contains(&delays[1].1),
        "linear: 300 ms x attempts made: {delays:?}"
    );
    assert_eq!(job(&v, 0)["state"], "completed");
    assert_eq!(job(&v, 0)["attemptsMade"], 3);
    assert_eq!(job(&v, 1)["state"], "failed", "give-up stops retries");
    assert_eq!(job(&v, 1)["attemptsMade"], 1);
    assert_eq!(job(&v, 1)["failedReason"], "flaky: failing attempt 1 of 2");
}

/// A guest may add children only to the queues its binding allows
/// (`--child-queue`); anything else is refused with `invalid` before Redis.
#[test]
fn add_child_is_limited_to_allowed_queues() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "ac", &plugin("steps", "rust"), &["--child-queue", "ac-kids"]);
    let _k = Worker::start(&redis, "ac-kids", &plugin("echo", "rust"), &[]);
    let ids = node_add(
        &redis,
        "ac",
        json!([
            {"name": "allowed", "data": {"childQueue": "ac-kids"}},
            {"name": "forbidden", "data": {"childQueue": "payments"}},
        ]),
    );
    let v = wait_finished(&redis, "ac", &ids, T);
    assert_eq!(job(&v, 0)["state"], "completed");
    assert_eq!(job(&v, 1)["state"], "failed");
    let reason = job(&v, 1)["failedReason"].as_str().unwrap();
    assert!(
        reason.starts_with("invalid argument: queue `payments` is not one this binding may add children to"),
        "{reason}"
    );
    assert_eq!(node(&["counts", &redis.url(), "payments"])["waiting"], 0, "nothing was added");
}

/// A job scheduler made by Node (`upsertJobScheduler`, every 300 ms): each
/// iteration a bullpen worker completes schedules the next one, with the
/// template's name and data (bullmq-official's `updateJobScheduler` after
/// the finish, fed with the job's data).
#[test]
fn job_scheduler_iterations_run_with_the_template_data() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "sched", &plugin("echo", "rust"), &[]);
    node(&["scheduler", &redis.url(), "sched", "tick", "300", r#"{"name":"tick","data":{"n":7,"s":"x"}}"#]);
    let done = wait_until_ok(T, Duration::from_millis(300), "fewer than 3 iterations completed", || {
        let r = node(&["report", &redis.url(), "sched"]);
        let done: Vec<Value> =
            r["jobs"].as_array().unwrap().iter().filter(|j| j["state"] == "completed").cloned().collect();
        if done.len() >= 3 {
            Ok(done)
        } else {
            Err(r)
        }
    });
    for j in &done {
        assert_eq!(j["data"], json!({"n": 7, "s": "x"}), "{j:#}");
        assert_eq!(j["returnvalue"], j["data"], "echo returns the data: {j:#}");
        assert!(j["id"].as_str().unwrap().starts_with("repeat:tick:"), "{j:#}");
    }
}

/// BullMQ's worker rate limiter (`limiter: { max, duration }`):
/// `--limiter-max 4 --limiter-duration-ms 1000` on a bullpen worker and the
/// same limiter on a Node worker of one queue (concurrency 10 each): at most
/// 4 jobs start per second between them — the limit is counted in BullMQ's
/// own `limiter` key.
#[test]
fn the_rate_limiter_is_queue_wide() {
    use std::io::BufRead;
    let redis = Redis::start();
    let mut node_worker = std::process::Command::new("node")
        .arg(root().join("tests/node/driver.js"))
        .args(["worker", &redis.url(), "rl", "6000", r#"{"concurrency": 10, "limiter": {"max": 4, "duration": 1000}}"#])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(node_worker.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let flags = ["--concurrency", "10", "--limiter-max", "4", "--limiter-duration-ms", "1000"];
    let _w = Worker::start(&redis, "rl", &plugin("echo", "rust"), &flags);
    let jobs: Vec<Value> = (0..12).map(|i| json!({"name": "e", "data": {"i": i}})).collect();
    let ids = node_add(&redis, "rl", Value::Array(jobs));
    let v = wait_finished(&redis, "rl", &ids, T);
    let mut started: Vec<u64> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["state"], "completed", "{j:#}");
            j["processedOn"].as_u64().unwrap()
        })
        .collect();
    started.sort();
    // Any 5 consecutive starts span a full window or more.
    for w in started.windows(5) {
        assert!(w[4] - w[0] >= 950, "5 jobs started within {} ms: {started:?}", w[4] - w[0]);
    }
    let by_node = v["jobs"].as_array().unwrap().iter().filter(|j| j["returnvalue"] == json!({"node": true})).count();
    let out = node_worker.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(by_node > 0 && by_node < 12, "both workers took jobs: Node {by_node} of 12");
    let out = bullpen(&["worker", "--redis", &redis.url(), "--queue", "rl", "--limiter-max", "4"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limiter-duration-ms"), "names the missing flag");
}

/// `rate-limit` holds back the whole queue on a queue with a rate limit
/// (here the global one Node sets with `setGlobalRateLimit`): the
/// rate-limited job and a job added after it start again only once the
/// limiter key set by the guest has expired, and the guest's attempt is not
/// counted.
#[test]
fn rate_limit_holds_back_every_job_of_a_rate_limited_queue() {
    const LIMIT_MS: u128 = 15_000;
    let redis = Redis::start();
    node(&["global-rate-limit", &redis.url(), "rl", "1000", "1000"]);
    let _w = Worker::start(&redis, "rl", &plugin("steps", "rust"), &["--concurrency", "2"]);
    let _k = Worker::start(&redis, "rl-children", &plugin("echo", "rust"), &["--concurrency", "2"]);
    let started = Instant::now();
    let first = node_add(&redis, "rl", json!([{"name": "limits", "data": {"rateLimitMs": LIMIT_MS as u64}}]));
    // The key is set as Node's `worker.rateLimit` sets it; Node reads its TTL.
    wait_until_ok(T, POLL, "the guest never rate-limited the queue", || {
        let ttl = node(&["ratelimit-ttl", &redis.url(), "rl"])["ttl"].as_i64().unwrap();
        if ttl > 0 {
            Ok(ttl)
        } else {
            Err(ttl)
        }
    });
    let second = node_add(&redis, "rl", json!([{"name": "after", "data": {}}]));
    let ids = [first[0].clone(), second[0].clone()];
    // While the key lives, neither job starts: both wait.
    std::thread::sleep(Duration::from_millis(500));
    let held = node(&["inspect", &redis.url(), "rl", &json!(ids).to_string()]);
    assert!(started.elapsed().as_millis() < LIMIT_MS, "too slow to observe the limit; {:?}", started.elapsed());
    for j in held["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "waiting", "held back while rate-limited: {j:#}");
        assert_eq!(j["attemptsMade"], 0, "{j:#}");
    }
    let v = wait_finished(&redis, "rl", &ids, T);
    for i in 0..2 {
        let j = job(&v, i);
        assert_eq!(j["state"], "completed", "{j:#}");
        assert_eq!(j["attemptsMade"], 1, "{j:#}");
    }
    // Both jobs finished through Third/Finish after the key expired: the
    // whole run took at least the limit.
    assert!(started.elapsed().as_millis() >= LIMIT_MS, "finished after {:?}", started.elapsed());
    let logs = guest_logs(job(&v, 0));
    assert_eq!(logs, json!(["steps: Initial", "steps: Second", "steps: Second", "steps: Third", "steps: Finish"]));
}
