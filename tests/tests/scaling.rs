//! Scaling out: several worker processes on one queue share the
//! work, and no job is lost or done twice. Throughput is not asserted here
//! (timed assertions flake on shared machines); bench/run.py --workers
//! measures the curve (bench/README.md).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(300);
const WORKERS: usize = 4;
const N: u64 = 4000;

#[test]
fn four_workers_share_one_queue_each_job_once() {
    let redis = Redis::start();
    let echo = plugin("echo", "rust");
    // All workers are up before the first job exists, so none has a head start.
    let workers: Vec<Worker> = (1..=WORKERS)
        .map(|i| Worker::start(&redis, "shared", &echo, &["--concurrency", "10", "--name", &format!("w{i}")]))
        .collect();
    let added = ids(node(&["bulk", &redis.url(), "shared", &N.to_string(), "0"]));
    assert_eq!(added.len() as u64, N);
    let mut c = redis.conn();
    let started = Instant::now();
    wait_until_ok(T, POLL, "not drained", || {
        let done: u64 = redis::cmd("ZCARD").arg("bull:shared:completed").query(&mut c).unwrap();
        let failed: u64 = redis::cmd("ZCARD").arg("bull:shared:failed").query(&mut c).unwrap();
        assert_eq!(failed, 0);
        if done == N {
            Ok(())
        } else {
            Err(format!("{done} of {N}"))
        }
    });
    let secs = started.elapsed().as_secs_f64();

    let report = node(&["report", &redis.url(), "shared"]);
    assert_eq!(report["counts"]["completed"], N);
    for state in ["failed", "active", "waiting", "delayed"] {
        assert_eq!(report["counts"][state], 0, "{state}");
    }
    let jobs = report["jobs"].as_array().unwrap();
    let listed: HashSet<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        added.iter().map(String::as_str).collect::<HashSet<_>>(),
        "the jobs completed are the jobs added"
    );
    let mut per_worker: HashMap<&str, u64> = HashMap::new();
    for j in jobs {
        assert_eq!(j["state"], "completed", "{j}");
        // One attempt started and made, and the guest's log line written once.
        assert_eq!((j["attemptsStarted"].as_u64(), j["attemptsMade"].as_u64()), (Some(1), Some(1)), "{j}");
        assert_eq!(j["returnvalue"], j["data"], "{j}");
        let echo_line = Value::from(format!("echo: job {} (job)", j["id"].as_str().unwrap()));
        assert_eq!(j["logs"].as_array().unwrap().iter().filter(|l| **l == echo_line).count(), 1, "{j}");
        *per_worker.entry(j["processedBy"].as_str().expect("processedBy: the worker's --name")).or_default() += 1;
    }
    println!("scaling: {N} jobs, {WORKERS} workers, {secs:.1} s; jobs per worker: {per_worker:?}");
    // Each worker did a real share: at least a quarter of an even split.
    for i in 1..=WORKERS {
        let n = per_worker.get(format!("w{i}").as_str()).copied().unwrap_or(0);
        assert!(n >= N / WORKERS as u64 / 4, "worker w{i} did {n} of {N} jobs: {per_worker:?}");
    }
    assert_eq!(per_worker.values().sum::<u64>(), N);
    for w in workers {
        assert!(w.stop().success());
    }
}
