//! The soak test: 100,000 jobs from Node, two bullpen workers.
//! Long, so it is its own command (results are recorded in README.md):
//!
//!     cargo test --release -p bullpen-tests --test soak -- --ignored --nocapture
//!
//! Afterwards completed + failed == added, every returnvalue is right, and
//! each worker's RSS stays flat (printed: the first and last samples).

use std::process::Command;
use std::time::{Duration, Instant};

use bullpen_tests::*;

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[test]
#[ignore = "long: run with --ignored (see the module doc)"]
fn soak_100k_jobs_two_workers() {
    const N: usize = 100_000;
    let redis = Redis::start();
    let add = Command::new("node")
        .arg(root().join("bench/node/add.js"))
        .args([&redis.url(), "soak", &N.to_string()])
        .status()
        .unwrap();
    assert!(add.success());
    let w1 = Worker::start(&redis, "soak", &plugin("echo", "rust"), &["--concurrency", "50"]);
    let w2 = Worker::start(&redis, "soak", &plugin("echo", "rust"), &["--concurrency", "50"]);
    let mut c = redis.conn();
    let started = Instant::now();
    let mut samples: Vec<(usize, f64, f64)> = vec![];
    loop {
        let done: usize = redis::cmd("ZCARD").arg("bull:soak:completed").query(&mut c).unwrap();
        let failed: usize = redis::cmd("ZCARD").arg("bull:soak:failed").query(&mut c).unwrap();
        samples.push((done + failed, rss_mb(w1.child.id()), rss_mb(w2.child.id())));
        if done + failed >= N {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1200), "not drained: {done}+{failed} of {N}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let secs = started.elapsed().as_secs_f64();
    let failed: usize = redis::cmd("ZCARD").arg("bull:soak:failed").query(&mut c).unwrap();
    assert_eq!(failed, 0);
    let mut pipe = redis::pipe();
    for id in 1..=N {
        pipe.cmd("HGET").arg(format!("bull:soak:{id}")).arg("returnvalue");
    }
    let values: Vec<String> = pipe.query(&mut c).unwrap();
    for (i, v) in values.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(v).unwrap();
        assert_eq!(v, serde_json::json!({"i": i, "msg": "hello", "ok": true}), "job {}", i + 1);
    }
    let first = samples.iter().find(|s| s.0 >= N / 10).unwrap();
    let last = samples.last().unwrap();
    println!(
        "soak: {N} jobs in {secs:.1} s ({:.0} jobs/s), 0 failed; worker RSS at 10%: {:.1} / {:.1} MB, at 100%: {:.1} / {:.1} MB",
        N as f64 / secs, first.1, first.2, last.1, last.2
    );
    for (w, a, b) in [(1, first.1, last.1), (2, first.2, last.2)] {
        assert!(b < a * 1.5 + 20.0, "worker {w} memory grew from {a:.1} to {b:.1} MB");
    }
}
