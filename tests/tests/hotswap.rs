//! Hot swap: `bullpen deploy` / `rollback` / `plugins`, registry
//! workers that follow deploys, file-watch swaps, and the plugin digest each
//! job records in its BullMQ log. Real redis-server; jobs added and counted
//! through Node's bullmq.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(120);
const DIGEST_LINE: &str = "bullpen: plugin sha256:";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn sha256_of(out: &Output) -> String {
    assert!(out.status.success(), "bullpen failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let d = String::from_utf8(out.stdout.clone()).unwrap().trim().to_string();
    assert_eq!(d.len(), 64, "a sha256 hex digest on stdout: {d:?}");
    d
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn deploy(redis: &Redis, queue: &str, file: &Path) -> Output {
    bullpen(&["deploy", "--redis", &redis.url(), "--queue", queue, file.to_str().unwrap()])
}

fn plugins_json(redis: &Redis, queue: &str) -> Value {
    let out = bullpen(&["plugins", "--redis", &redis.url(), "--queue", queue, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// v1 = echo-rust.wasm, v2 = the same plus a custom section (another digest),
/// both as files in `dir`.
fn versions(dir: &Path) -> (PathBuf, PathBuf) {
    let bytes = std::fs::read(plugin("echo", "rust")).unwrap();
    let (v1, v2) = (dir.join("echo-v1.wasm"), dir.join("echo-v2.wasm"));
    std::fs::write(&v1, &bytes).unwrap();
    std::fs::write(&v2, with_custom_section(&bytes, "v2")).unwrap();
    (v1, v2)
}

/// `bullpen worker` without --plugin: runs what is deployed for the queue.
struct RegistryWorker {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RegistryWorker {
    /// Start; with `own_cache` the worker compiles for itself (an empty
    /// artifact cache), as a worker on another machine would.
    fn start(redis: &Redis, queue: &str, extra: &[&str], own_cache: bool) -> RegistryWorker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let mut cmd = Command::new(bullpen_bin());
        cmd.args(["worker", "--redis", &redis.url(), "--queue", queue]).args(extra).env("NO_COLOR", "1");
        if own_cache {
            cmd.env("BULLPEN_CACHE_DIR", dir.path().join("cache"));
        }
        let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        RegistryWorker { child, log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_until_ok(timeout, Duration::from_millis(20), &format!("worker log never said {needle:?}"), || {
            let log = self.log();
            log.lines().find(|l| l.contains(needle)).map(str::to_string).ok_or(log)
        })
    }
}

impl Drop for RegistryWorker {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// `key=value` or `key="value"` from a tracing log line, unquoted.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(quoted[..quoted.find('"')?].to_string());
    }
    Some(rest[..rest.find(' ').unwrap_or(rest.len())].to_string())
}

/// One job as the digest checks need it, read from Redis in one pipeline.
struct Row {
    id: String,
    processed_on: u64,
    finished_on: u64,
    attempts_made: u64,
    attempts_started: u64,
    logs: Vec<String>,
}

fn rows(redis: &Redis, queue: &str, ids: &[String]) -> Vec<Row> {
    let mut c = redis.conn();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(2000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(format!("bull:{queue}:{id}")).arg(&["processedOn", "finishedOn", "atm", "ats"]);
            pipe.cmd("LRANGE").arg(format!("bull:{queue}:{id}:logs")).arg(0).arg(-1);
        }
        let replies: Vec<redis::Value> = pipe.query(&mut c).unwrap();
        for (i, id) in chunk.iter().enumerate() {
            let h: Vec<Option<u64>> = redis::from_redis_value_ref(&replies[2 * i]).unwrap();
            let logs: Vec<String> = redis::from_redis_value_ref(&replies[2 * i + 1]).unwrap();
            out.push(Row {
                id: id.clone(),
                processed_on: h[0].unwrap_or(0),
                finished_on: h[1].unwrap_or(0),
                attempts_made: h[2].unwrap_or(0),
                attempts_started: h[3].unwrap_or(0),
                logs,
            });
        }
    }
    out
}

fn digest_of(logs: &[String]) -> Vec<&str> {
    logs.iter().filter_map(|l| l.strip_prefix(DIGEST_LINE)).collect()
}

fn zcard(redis: &Redis, key: &str) -> u64 {
    redis::cmd("ZCARD").arg(key).query(&mut redis.conn()).unwrap()
}

/// The acceptance test: 20,000 jobs from Node while two registry workers
/// run v1; deploy v2, then roll back to v1, under load. Zero failures, each
/// job processed once, each job's digest consistent with the switch times,
/// and every worker on v2 within 1 s of the deploy.
#[test]
fn deploy_and_rollback_under_load() {
    const N: usize = 20_000;
    let redis = Redis::start();
    let q = "hot";
    let dir = tempfile::tempdir().unwrap();
    let (v1_file, v2_file) = versions(dir.path());
    let v1 = sha256_of(&deploy(&redis, q, &v1_file));

    // Each worker has its own artifact cache: it compiles v2 itself, as a
    // worker on another machine would.
    let flags = ["--concurrency", "8"];
    let workers = [RegistryWorker::start(&redis, q, &flags, true), RegistryWorker::start(&redis, q, &flags, true)];
    for w in &workers {
        let ready = w.wait_log("worker ready", T);
        assert_eq!(field(&ready, "digest").as_deref(), Some(v1.as_str()), "{ready}");
    }

    // Continuous load: Node adds the jobs one by one while the workers run.
    let url = redis.url();
    let producer = std::thread::spawn(move || {
        let jobs: Vec<Value> = (0..N).map(|i| json!({"name": "load", "data": {"n": i}})).collect();
        let mut cmd = Command::new("node");
        cmd.arg(root().join("tests/node/driver.js")).args(["add", &url, "hot", "-"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(Value::Array(jobs).to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "node add: {}", String::from_utf8_lossy(&out.stderr));
        ids(serde_json::from_slice(&out.stdout).unwrap())
    });
    let completed_key = format!("bull:{q}:completed");
    wait_until(T, Duration::from_millis(20), "load never got going", || {
        (zcard(&redis, &completed_key) >= 1500).then_some(())
    });

    // Deploy v2 under load.
    let deploy_start = now_ms();
    let v2 = sha256_of(&deploy(&redis, q, &v2_file));
    let deploy_end = now_ms();
    assert_ne!(v1, v2);
    let deployed_at = plugins_json(&redis, q).as_array().unwrap().iter().find(|v| v["digest"] == v2.as_str()).unwrap()
        ["deployedAt"]
        .as_u64()
        .unwrap();
    let mut latencies = vec![];
    for w in &workers {
        let line = w.wait_log(&format!("plugin switched digest={v2}"), Duration::from_secs(10));
        let latency: i64 = field(&line, "latency_ms").unwrap().parse().unwrap();
        let switched_at: u64 = field(&line, "switched_at").unwrap().parse().unwrap();
        println!(
            "worker switched to v2: {latency} ms after the deploy was published ({} ms after `bullpen deploy` started; fetch+compile+pre-link {} ms, from_cache={})",
            switched_at - deploy_start,
            field(&line, "took_ms").unwrap(),
            field(&line, "from_cache").unwrap()
        );
        assert!((0..=1000).contains(&latency), "switch latency {latency} ms: {line}");
        assert!(switched_at - deployed_at <= 1000, "{line}");
        latencies.push(latency);
    }
    let in_flight = zcard(&redis, &completed_key);
    assert!(in_flight < N as u64, "the load ended before the deploy was observed; nothing was tested under load");

    // Let v2 run under load for a while, then roll back to v1.
    std::thread::sleep(Duration::from_millis(2000));
    let rollback_start = now_ms();
    let out = bullpen(&["rollback", "--redis", &redis.url(), "--queue", q]);
    let rollback_end = now_ms();
    assert_eq!(sha256_of(&out), v1, "rollback goes back to the previous version");
    for w in &workers {
        let line = w.wait_log(&format!("plugin switched digest={v1}"), Duration::from_secs(10));
        let latency: i64 = field(&line, "latency_ms").unwrap().parse().unwrap();
        println!(
            "worker switched back to v1: {latency} ms after the rollback (v1 kept compiled in memory: took {} ms)",
            field(&line, "took_ms").unwrap()
        );
        assert!((0..=1000).contains(&latency), "{line}");
    }
    let at_rollback = zcard(&redis, &completed_key);

    let ids = producer.join().unwrap();
    assert_eq!(ids.len(), N);
    let counts = wait_until_ok(T, Duration::from_millis(200), "jobs not finished", || {
        let counts = node(&["counts", &redis.url(), q]);
        let done = counts["completed"].as_u64().unwrap() + counts["failed"].as_u64().unwrap();
        if done >= N as u64 {
            Ok(counts)
        } else {
            Err(counts)
        }
    });
    assert_eq!(counts["failed"], 0, "{counts}");
    assert_eq!(counts["completed"], N as u64, "{counts}");
    assert_eq!(counts["active"], 0, "{counts}");
    assert_eq!(counts["waiting"], 0, "{counts}");
    assert!(at_rollback < N as u64, "the load ended before the rollback; the rollback was not tested under load");

    // Each job: one attempt, one digest line (v1 or v2), the echo line, and
    // a digest consistent with when it started.
    let (mut n1, mut n2, mut v2_after_rollback, mut v1_during_v2) = (0, 0, 0, 0);
    let mut last_v1_start_after_deploy = 0u64;
    for r in rows(&redis, q, &ids) {
        assert_eq!((r.attempts_made, r.attempts_started), (1, 1), "job {} processed once", r.id);
        let d = digest_of(&r.logs);
        assert_eq!(d.len(), 1, "job {}: one digest line: {:?}", r.id, r.logs);
        assert_eq!(r.logs.len(), 2, "job {}: {:?}", r.id, r.logs);
        assert_eq!(r.logs[1], format!("echo: job {} (load)", r.id));
        let d = d[0];
        assert!(d == v1 || d == v2, "job {}: unknown digest {d}", r.id);
        assert!(r.finished_on >= r.processed_on);
        if d == v1 {
            n1 += 1;
            if r.processed_on >= deploy_start && r.processed_on < rollback_start {
                last_v1_start_after_deploy = last_v1_start_after_deploy.max(r.processed_on);
                v1_during_v2 += 1;
            }
        } else {
            n2 += 1;
            if r.processed_on > rollback_end {
                v2_after_rollback += 1;
            }
        }
        if r.finished_on < deploy_start {
            assert_eq!(d, v1, "job {} finished before the deploy", r.id);
        }
        if r.processed_on > deploy_end + 1000 && r.finished_on < rollback_start {
            assert_eq!(d, v2, "job {} started more than 1 s after the deploy", r.id);
        }
        if r.processed_on > rollback_end + 1000 {
            assert_eq!(d, v1, "job {} started more than 1 s after the rollback", r.id);
        }
    }
    println!(
        "{N} jobs: {n1} on v1, {n2} on v2; {v1_during_v2} v1 jobs started after the deploy began, the last {} ms after it; {v2_after_rollback} v2 jobs started after the rollback ended",
        last_v1_start_after_deploy.saturating_sub(deploy_start)
    );
    assert!(n2 > 0 && n1 > n2 / 10, "both versions ran");
    println!("switch latency to v2 per worker (ms): {latencies:?}");
}

/// Refused deploys (not wasm, a core module, a component of another world)
/// exit non-zero with a clear message and change nothing; workers go on.
#[test]
fn invalid_deploy_is_refused_and_nothing_changes() {
    let redis = Redis::start();
    let q = "inv";
    let dir = tempfile::tempdir().unwrap();
    let (v1_file, _) = versions(dir.path());
    let v1 = sha256_of(&deploy(&redis, q, &v1_file));
    let w = RegistryWorker::start(&redis, q, &[], false);
    w.wait_log("worker ready", T);
    let before = plugins_json(&redis, q);

    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage.wasm", b"definitely not wasm".to_vec(), "is not a WebAssembly file"),
        ("core.wasm", wat::parse_str("(module)").unwrap(), "is a core WebAssembly module, not a component"),
        ("empty-component.wasm", wat::parse_str("(component)").unwrap(), "does not match the bullpen:processor"),
        ("truncated.wasm", std::fs::read(&v1_file).unwrap()[..1000].to_vec(), "is not a valid component"),
    ];
    for (name, bytes, why) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let out = deploy(&redis, q, &f);
        assert!(!out.status.success(), "{name} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains("refusing to deploy") && err.contains(why) && err.contains("nothing was changed"),
            "{name}: {err}"
        );
        assert!(out.stdout.is_empty(), "{name}: no digest printed");
    }
    let missing = bullpen(&["deploy", "--redis", &redis.url(), "--queue", q, "/nonexistent/x.wasm"]);
    assert!(!missing.status.success() && stderr(&missing).contains("cannot read"), "{}", stderr(&missing));

    assert_eq!(plugins_json(&redis, q), before, "the registry is unchanged");
    let current: String = redis::cmd("GET").arg(format!("bull:{q}:bullpen:current")).query(&mut redis.conn()).unwrap();
    assert_eq!(current, v1);
    let ids = node_add(&redis, q, json!([{"name": "after", "data": {"x": 1}}]));
    let v = wait_finished(&redis, q, &ids, T);
    assert_eq!(v["jobs"][0]["state"], "completed", "the worker keeps running v1");
    assert_eq!(v["jobs"][0]["logs"][0], format!("{DIGEST_LINE}{v1}"));
    assert!(!w.log().contains("plugin switched"), "{}", w.log());

    // Rollback refusals change nothing either.
    let out = bullpen(&["rollback", "--redis", &redis.url(), "--queue", q]);
    assert!(!out.status.success() && stderr(&out).contains("no previous version"), "{}", stderr(&out));
    let out = bullpen(&["rollback", "--redis", &redis.url(), "--queue", q, "--to", "abcdef"]);
    assert!(!out.status.success() && stderr(&out).contains("no deployed version"), "{}", stderr(&out));
    let out = bullpen(&["rollback", "--redis", &redis.url(), "--queue", "nothing-here"]);
    assert!(!out.status.success() && stderr(&out).contains("nothing is deployed"), "{}", stderr(&out));
    assert_eq!(plugins_json(&redis, q), before);
}

/// `--plugin <file>`: overwriting the file with another valid component
/// swaps it; a broken file is refused and the old version keeps running.
#[test]
fn file_watch_swaps_and_refuses_broken_files() {
    let redis = Redis::start();
    let q = "fw";
    let dir = tempfile::tempdir().unwrap();
    let (v1_file, v2_file) = versions(dir.path());
    let watched = dir.path().join("processor.wasm");
    std::fs::copy(&v1_file, &watched).unwrap();
    let v1 = sha256_hex(&std::fs::read(&v1_file).unwrap());
    let v2 = sha256_hex(&std::fs::read(&v2_file).unwrap());
    let w = Worker::start(&redis, q, &watched, &[]);

    let digest_after = |name: &str| -> Value {
        let ids = node_add(&redis, q, json!([{"name": name, "data": {}}]));
        let v = wait_finished(&redis, q, &ids, T);
        assert_eq!(v["jobs"][0]["state"], "completed", "{v:#}");
        v["jobs"][0]["logs"][0].clone()
    };
    assert_eq!(digest_after("first"), format!("{DIGEST_LINE}{v1}"));

    // Overwrite in place with v2.
    std::fs::write(&watched, std::fs::read(&v2_file).unwrap()).unwrap();
    w.wait_log(&format!("plugin switched digest={v2}"), Duration::from_secs(10));
    assert_eq!(digest_after("second"), format!("{DIGEST_LINE}{v2}"));

    // Garbage: refused with a clear error, v2 keeps running.
    std::fs::write(&watched, b"this is not a component").unwrap();
    w.wait_log("plugin refused", Duration::from_secs(10));
    assert!(w.log().contains("is not a WebAssembly file"), "{}", w.log());
    assert_eq!(digest_after("third"), format!("{DIGEST_LINE}{v2}"));

    // And a valid file again is taken.
    std::fs::write(&watched, std::fs::read(&v1_file).unwrap()).unwrap();
    w.wait_log(&format!("plugin switched digest={v1}"), Duration::from_secs(10));
    assert_eq!(digest_after("fourth"), format!("{DIGEST_LINE}{v1}"));
    let inspected = bullpen(&["inspect", "--redis", &redis.url(), "--queue", q, "4"]);
    let view: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(view["pluginDigest"], v1.as_str(), "bullpen inspect shows the digest: {view:#}");
}

/// sha256 hex (what bullpen calls a plugin's digest), by `sha256sum`.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// A worker started before anything is deployed waits (saying why), starts
/// on the first deploy; a worker started after a deploy runs the current
/// version; a change nobody was notified of is caught by the periodic check.
#[test]
fn late_and_early_workers_pick_up_the_current_version() {
    let redis = Redis::start();
    let q = "late";
    let dir = tempfile::tempdir().unwrap();
    let (v1_file, v2_file) = versions(dir.path());

    let early = RegistryWorker::start(&redis, q, &[], false);
    early.wait_log("no processor deployed for queue `late` yet", T);
    assert!(!early.log().contains("worker ready"));
    let v1 = sha256_of(&deploy(&redis, q, &v1_file));
    let ready = early.wait_log("worker ready", Duration::from_secs(10));
    assert_eq!(field(&ready, "digest").as_deref(), Some(v1.as_str()));
    drop(early);

    // Deployed while no worker ran: a new worker starts on it.
    let v2 = sha256_of(&deploy(&redis, q, &v2_file));
    let late = RegistryWorker::start(&redis, q, &[], false);
    let ready = late.wait_log("worker ready", T);
    assert_eq!(field(&ready, "digest").as_deref(), Some(v2.as_str()), "{ready}");
    let ids = node_add(&redis, q, json!([{"name": "a", "data": {}}]));
    let v = wait_finished(&redis, q, &ids, T);
    assert_eq!(v["jobs"][0]["logs"][0], format!("{DIGEST_LINE}{v2}"));

    // A change without a notification (as if the message was lost).
    let _: () = redis::cmd("SET").arg(format!("bull:{q}:bullpen:current")).arg(&v1).query(&mut redis.conn()).unwrap();
    let line = late.wait_log(&format!("plugin switched digest={v1}"), Duration::from_secs(8));
    assert_eq!(field(&line, "trigger").as_deref(), Some("periodic check"), "{line}");

    // `bullpen plugins` lists both, marking the current one.
    let list = plugins_json(&redis, q);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["digest"], v1.as_str());
    assert_eq!(list[0]["current"], true);
    assert_eq!(list[1]["current"], false);
    assert!(list[1]["deployedAt"].as_u64() >= list[0]["deployedAt"].as_u64());
    let table = bullpen(&["plugins", "--redis", &redis.url(), "--queue", q]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.lines().any(|l| l.starts_with(&format!("* {v1}"))), "{table}");
    // rollback --to a prefix.
    let out = bullpen(&["rollback", "--redis", &redis.url(), "--queue", q, "--to", &format!("sha256:{}", &v2[..12])]);
    assert_eq!(sha256_of(&out), v2);
    late.wait_log(
        &format!("plugin switched digest={v2} previous={v1} trigger=\"deploy notification\""),
        Duration::from_secs(5),
    );
}
