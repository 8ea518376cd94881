//! The chaos test: jobs in flight through everything that goes wrong in
//! production at once, observed from Node's side (QueueEvents and
//! `Job.fromId`). Workers killed with SIGKILL on a timer, Redis stopped
//! (SIGSTOP) for less and for more than the lock, Redis killed and restarted
//! with AOF, a deploy mid-run. BullMQ's contract is at-least-once; what must
//! hold:
//! - no job lost: every job completed, none failed;
//! - none completed twice: one `completed` event per job;
//! - no write of one attempt applied twice: within an attempt's stretch of
//!   the job log (from its `bullpen: plugin` line) no line repeats, and a job
//!   has no more `progress` events than step lines in its log;
//! - and it reports how many jobs ran more than once (`attemptsStarted`).
//!
//! A short run is part of the suite; the long one is a command of its own:
//!
//!     BULLPEN_CHAOS_JOBS=5000 BULLPEN_CHAOS_ROUNDS=4 cargo test --release -p bullpen-tests --test chaos -- --nocapture

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const Q: &str = "chaos";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn start_worker(redis: &Redis) -> Worker {
    let mut args = redis.args();
    args.extend(
        [
            "--queue",
            Q,
            "--concurrency",
            "10",
            "--lock-duration-ms",
            "3000",
            "--stalled-interval-ms",
            "1000",
            // Stalls are the point here: a job may stall several times and
            // must still complete, not fail for stalling too often.
            "--max-stalled-count",
            "50",
        ]
        .map(String::from),
    );
    Worker::spawn(&args)
}

/// The job log split into attempts: each attempt's first write starts
/// with its `bullpen: plugin sha256:` line (an attempt killed before its
/// first write left nothing).
fn attempts(logs: &[Value]) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for line in logs.iter().map(|l| l.as_str().unwrap()) {
        if line.starts_with("bullpen: plugin sha256:") || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(line);
    }
    out
}

#[test]
fn chaos_loses_nothing_and_writes_nothing_twice() {
    let n = env_or("BULLPEN_CHAOS_JOBS", 300);
    let rounds = env_or("BULLPEN_CHAOS_ROUNDS", 1);
    let mut redis = Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin("hog", "rust")).unwrap();
    let versions: Vec<_> = (0..=rounds)
        .map(|v| {
            let path = dir.path().join(format!("hog-v{v}.wasm"));
            std::fs::write(&path, with_custom_section(&bytes, &format!("v{v}"))).unwrap();
            path
        })
        .collect();
    let deploy = |redis: &Redis, file: &std::path::Path| {
        let mut args = vec!["deploy".to_string()];
        args.extend(redis.args());
        args.extend(["--queue".into(), Q.into(), file.to_str().unwrap().into()]);
        let out = bullpen(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "deploy: {}", String::from_utf8_lossy(&out.stderr));
    };
    deploy(&redis, &versions[0]);
    // Each job: three steps of log line + progress, 400 ms each.
    let jobs: Vec<Value> = (0..n).map(|i| json!({"name": "slow", "data": {"mode": "slow", "i": i}})).collect();
    let ids = node_add(&redis, Q, Value::Array(jobs));
    let events = NodeEvents::listen(&redis, Q, n, Duration::from_secs(300));
    let mut workers: Vec<Option<Worker>> = (0..3).map(|_| Some(start_worker(&redis))).collect();
    let started = Instant::now();
    let at = |s: f64| {
        let until = Duration::from_secs_f64(s);
        if let Some(left) = until.checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
    };
    for round in 0..rounds {
        let t = round as f64 * 20.0;
        at(t + 2.0);
        workers[0].take().unwrap().kill9();
        workers[0] = Some(start_worker(&redis));
        at(t + 4.0);
        // Shorter than the lock: attempts go on, their writes wait.
        redis.pause(Duration::from_millis(1500));
        at(t + 7.0);
        workers[1].take().unwrap().kill9();
        workers[1] = Some(start_worker(&redis));
        at(t + 9.0);
        // Longer than the lock: every lock expires; the stalled check hands
        // the jobs to whoever asks next, and the old attempts' writes are refused.
        redis.pause(Duration::from_millis(4000));
        at(t + 15.0);
        redis.restart(Duration::from_millis(1000));
        at(t + 18.0);
        deploy(&redis, &versions[round + 1]);
    }
    wait_until(Duration::from_secs(300), Duration::from_millis(500), "every job finished", || {
        let counts = node(&["counts", &redis.url(), Q]);
        let done = counts["completed"].as_u64().unwrap() + counts["failed"].as_u64().unwrap();
        (done as usize >= n).then_some(())
    });
    let events = events.finish();
    let report = inspect(&redis, Q, &ids);
    let jobs = report["jobs"].as_array().unwrap();

    // Nothing lost, nothing failed.
    assert_eq!(report["counts"]["completed"], n, "{:#}", report["counts"]);
    assert_eq!(report["counts"]["failed"], 0, "{:#}", report["counts"]);
    // Nothing completed twice (the listener stops at n completions: a
    // duplicate would leave some other job without its event).
    let mut completed: HashMap<&str, usize> = HashMap::new();
    let mut progress: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        let id = e["jobId"].as_str().unwrap();
        match e["event"].as_str().unwrap() {
            "completed" => *completed.entry(id).or_default() += 1,
            "progress" => *progress.entry(id).or_default() += 1,
            other => panic!("unexpected event {other}: {e}"),
        }
    }
    let twice: Vec<_> = completed.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "completed twice: {twice:?}");
    assert_eq!(completed.len(), n, "every job's completed event, once");

    // No write of one attempt applied twice.
    let mut ran_again = 0;
    let mut attempts_total = 0;
    for j in jobs {
        let id = j["id"].as_str().unwrap();
        assert_eq!(j["returnvalue"], json!({"steps": 3}), "{j:#}");
        let runs = attempts(j["logs"].as_array().unwrap());
        for run in &runs {
            let mut seen = std::collections::HashSet::new();
            for line in run {
                assert!(seen.insert(line), "job {id}: {line:?} written twice in one attempt: {run:?}");
            }
        }
        let steps = runs.iter().flatten().filter(|l| l.starts_with("hog: step")).count();
        let p = progress.get(id).copied().unwrap_or(0);
        assert!(p <= steps, "job {id}: {p} progress events for {steps} step lines: {runs:?}");
        let started = j["attemptsStarted"].as_u64().unwrap();
        attempts_total += started;
        if started > 1 {
            ran_again += 1;
        }
    }
    println!(
        "chaos: {n} jobs, {rounds} round(s) of 2 SIGKILLed workers, SIGSTOP 1.5 s and 4 s (lock 3 s), a Redis \
         SIGKILL + AOF restart and a deploy; {:.1} s; completed {n}, failed 0, completed twice 0, a write \
         applied twice 0; {ran_again} jobs ran more than once ({attempts_total} attempts started in all)",
        started.elapsed().as_secs_f64()
    );
}
