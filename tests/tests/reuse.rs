//! `--instance-reuse` (runtime/src/queue/trigger.rs `Trigger::take_warm`, `Warm`): off by
//! default, every attempt gets a fresh instance; with it, an instance whose
//! `process` returned serves the next attempts up to the quota, and a trap,
//! a timeout or the memory cap ends it. `hog`'s `count` mode returns how many
//! jobs its instance has processed (a static in the guest). The same
//! scenarios run against the `hog` plugin in each language (the `rust`, `go`,
//! `js` and `python` modules at the bottom).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

/// `target/plugins/hog-<lang>.wasm`, loaded once by `bullpen run` first (as
/// in sandbox.rs): a Go or JS component takes seconds to compile, longer
/// than `Worker::start` waits for "worker ready"; the run fills the host's
/// artifact cache. A plugin that does not run fails the test.
fn hog(lang: &str) -> PathBuf {
    static LOADED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let p = plugin("hog", lang);
    let mut loaded = LOADED.lock().unwrap();
    if !loaded.iter().any(|l| l == lang) {
        let out =
            Command::new(bullpen_bin()).arg("run").arg(&p).args(["--data", r#"{"mode":"count"}"#]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with("completed {\"processed\":1}\n"),
            "hog-{lang} does not run: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        loaded.push(lang.to_string());
    }
    p
}

fn count_jobs(n: usize) -> Value {
    Value::Array((0..n).map(|_| json!({"name": "count", "data": {"mode": "count"}})).collect())
}

/// Each job's `processed` return value, in order (0 when it did not complete).
fn processed(v: &Value) -> Vec<u64> {
    v["jobs"].as_array().unwrap().iter().map(|j| j["returnvalue"]["processed"].as_u64().unwrap_or(0)).collect()
}

fn without_the_flag_every_attempt_gets_a_fresh_instance(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "fresh", &hog(lang), &[]);
    let ids = node_add(&redis, "fresh", count_jobs(5));
    let v = wait_finished(&redis, "fresh", &ids, T);
    assert_eq!(processed(&v), vec![1; 5], "{lang}: {v:#}");
}

/// What a runtime reads when it starts and a snapshot would freeze (issue 27:
/// Go is pre-initialised at build time, JS is StarlingMonkey's snapshot):
/// each fresh instance draws its own random bytes, both from the secure
/// source (`crypto`) and the language's ordinary generator (`math`: Go's
/// runtime generator, JS's Math.random), and reads the current time.
fn fresh_instances_draw_their_own_randomness_and_read_the_time(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "entropy", &hog(lang), &[]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let jobs = Value::Array((0..4).map(|_| json!({"name": "entropy", "data": {"mode": "entropy"}})).collect());
    let ids = node_add(&redis, "entropy", jobs);
    let v = wait_finished(&redis, "entropy", &ids, T);
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let r: Vec<&Value> = v["jobs"].as_array().unwrap().iter().map(|j| &j["returnvalue"]).collect();
    for key in ["crypto", "math"] {
        let mut drawn: Vec<&str> =
            r.iter().map(|r| r[key].as_str().unwrap_or_else(|| panic!("{lang}: {v:#}"))).collect();
        drawn.sort();
        drawn.dedup();
        assert_eq!(drawn.len(), 4, "{lang}: four fresh instances drew the same `{key}` value: {v:#}");
    }
    for r in &r {
        let now = r["nowMs"].as_i64().unwrap();
        assert!(
            before - 1000 <= now && now <= after + 1000,
            "{lang}: time.Now() {now} not in [{before}, {after}]: {v:#}"
        );
    }
}

fn an_instance_serves_up_to_its_quota_and_each_job_logs_only_its_own_output(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "warm", &hog(lang), &["--instance-reuse", "3"]);
    let ids = node_add(&redis, "warm", count_jobs(7));
    let v = wait_finished(&redis, "warm", &ids, T);
    assert_eq!(processed(&v), vec![1, 2, 3, 1, 2, 3, 1], "{lang}: {v:#}");
    // The output capture is per attempt even though the WASI context is not.
    for (i, j) in v["jobs"].as_array().unwrap().iter().enumerate() {
        let guest: Vec<&str> =
            j["logs"].as_array().unwrap().iter().filter_map(|l| l.as_str()).filter(|l| l.starts_with("hog:")).collect();
        let n = processed(&v)[i];
        assert_eq!(guest, vec![format!("hog: job {n} of this instance")], "{lang}: job {i}: {j:#}");
    }
}

fn a_trap_a_timeout_or_the_memory_cap_ends_the_instance(lang: &str) {
    let redis = Redis::start();
    let _w = Worker::start(
        &redis,
        "ends",
        &hog(lang),
        &["--instance-reuse", "100", "--timeout-ms", "1000", "--max-memory-mb", "32"],
    );
    let mode = |m: &str| json!({"name": m, "data": {"mode": m}});
    let jobs = json!([
        mode("count"),
        mode("count"),
        mode("recursion"),
        mode("count"),
        mode("count"),
        mode("loop"),
        mode("count"),
        mode("memory"),
        mode("count"),
        mode("count"),
    ]);
    let ids = node_add(&redis, "ends", jobs);
    let v = wait_finished(&redis, "ends", &ids, T);
    let states: Vec<&str> = v["jobs"].as_array().unwrap().iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        [
            "completed",
            "completed",
            "failed",
            "completed",
            "completed",
            "failed",
            "completed",
            "failed",
            "completed",
            "completed"
        ],
        "{lang}: {v:#}"
    );
    // Python: CPython stops the recursion itself (a RecursionError, which
    // `process` returns as a retryable failure, not a trap), so that
    // instance is kept and counts on (3 was the recursing job).
    let expected = match lang {
        "python" => vec![1, 2, 0, 4, 5, 0, 1, 0, 1, 2],
        _ => vec![1, 2, 0, 1, 2, 0, 1, 0, 1, 2],
    };
    assert_eq!(processed(&v), expected, "{lang}: each trap or limit starts a fresh instance: {v:#}");
}

/// The tests above, once per guest language (as conformance.rs does).
macro_rules! per_language {
    ($lang:ident) => {
        mod $lang {
            #[test]
            fn without_the_flag_every_attempt_gets_a_fresh_instance() {
                super::without_the_flag_every_attempt_gets_a_fresh_instance(stringify!($lang));
            }
            #[test]
            fn fresh_instances_draw_their_own_randomness_and_read_the_time() {
                super::fresh_instances_draw_their_own_randomness_and_read_the_time(stringify!($lang));
            }
            #[test]
            fn an_instance_serves_up_to_its_quota_and_each_job_logs_only_its_own_output() {
                super::an_instance_serves_up_to_its_quota_and_each_job_logs_only_its_own_output(stringify!($lang));
            }
            #[test]
            fn a_trap_a_timeout_or_the_memory_cap_ends_the_instance() {
                super::a_trap_a_timeout_or_the_memory_cap_ends_the_instance(stringify!($lang));
            }
        }
    };
}

per_language!(rust);
per_language!(go);
per_language!(js);
per_language!(python);

/// A swapped plugin (here: the watched file) never runs in an instance of
/// the version before it: the first job after the swap starts a fresh count.
#[test]
fn a_swap_ends_the_old_versions_instances() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin("hog", "rust")).unwrap();
    let watched = dir.path().join("hog.wasm");
    std::fs::write(&watched, &bytes).unwrap();
    let w = Worker::start(&redis, "swap", &watched, &["--instance-reuse", "100"]);
    let run = |n: usize| processed(&wait_finished(&redis, "swap", &node_add(&redis, "swap", count_jobs(n)), T));
    assert_eq!(run(2), vec![1, 2]);
    std::fs::write(&watched, with_custom_section(&bytes, "v2")).unwrap();
    w.wait_log("plugin switched", Duration::from_secs(10));
    assert_eq!(run(2), vec![1, 2], "the new version starts in a fresh instance");
}
