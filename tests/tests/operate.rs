//! Operating bullpen: bulk adds from NDJSON, `bullpen stats`,
//! JSON logs with attempt spans, and the Prometheus endpoint. Observed through
//! Node's bullmq and a plain HTTP scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "bullpen failed: {}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The sha256 of a file, as bullpen names plugin versions.
fn digest_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn add_file_adds_every_line_and_a_bad_line_adds_nothing() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..1200 {
        let line = match i {
            7 => json!({"name": "custom", "data": {"i": i}, "opts": {"jobId": "order-7", "attempts": 4}}),
            _ => json!({"name": "bulk", "data": {"i": i, "text": "ünïcode"}}),
        };
        text += &format!("{line}\n");
        if i == 100 {
            text += "\n"; // blank lines are skipped
        }
    }
    let file = write_file(&dir, "jobs.ndjson", &text);
    let out =
        bullpen(&["add", "--redis", &redis.url(), "--queue", "bulk", "--file", &file, "--opts", r#"{"attempts":2}"#]);
    let stdout = ok(&out);
    let ids: Vec<&str> = stdout.lines().collect();
    assert_eq!(ids.len(), 1200, "one id per job, in file order");
    assert_eq!(ids[7], "order-7");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("added 1200 jobs to bulk"), "plain progress lines when not a TTY: {stderr}");
    assert!(stderr.contains("added 500/1200 jobs"), "{stderr}");

    let counts = node(&["counts", &redis.url(), "bulk"]);
    assert_eq!(counts["waiting"], 1200, "{counts}");
    let v = inspect(&redis, "bulk", &[ids[0].to_string(), "order-7".to_string(), ids[1199].to_string()]);
    assert_eq!(v["jobs"][0]["data"], json!({"i": 0, "text": "ünïcode"}));
    assert_eq!(v["jobs"][0]["opts"]["attempts"], 2, "--opts is the default for lines without opts");
    assert_eq!(v["jobs"][1]["name"], "custom");
    assert_eq!(v["jobs"][1]["opts"]["attempts"], 4, "a line's own opts win");
    assert_eq!(v["jobs"][2]["data"]["i"], 1199);

    // A broken line: refused with its number, and nothing is added.
    let bad = write_file(
        &dir,
        "bad.ndjson",
        "{\"name\":\"a\",\"data\":1}\n{\"name\":\"b\",\"data\":1}\n{\"name\":\"c\",\"data\":}\n",
    );
    let out = bullpen(&["add", "--redis", &redis.url(), "--queue", "bad", "--file", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("nothing was added"), "{err}");
    assert_eq!(node(&["counts", &redis.url(), "bad"])["waiting"], 0);

    // Redis not there: a clear error, exit 1.
    let out = bullpen(&["add", "--redis", "redis://127.0.0.1:1", "--queue", "bulk", "--file", &file]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to redis://127.0.0.1:1: connection refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stats_json(redis: &Redis, queue: &str) -> Value {
    serde_json::from_str(&ok(&bullpen(&["stats", "--redis", &redis.url(), "--queue", queue, "--json"]))).unwrap()
}

#[test]
fn stats_shows_counts_rates_and_the_digest_each_live_worker_runs() {
    let redis = Redis::start();
    let echo = plugin("echo", "rust");
    let flaky = plugin("flaky", "rust");
    let w1 = Worker::start(&redis, "st", &echo, &["--concurrency", "4", "--no-watch"]);
    let w2 = Worker::start(&redis, "st", &flaky, &["--concurrency", "2", "--no-watch"]);
    // flaky fails a job whose data says so; echo completes anything.
    let jobs: Vec<Value> = (0..30).map(|i| json!({"name": "s", "data": {"i": i}})).collect();
    let ids = node_add(&redis, "st", Value::Array(jobs));
    wait_finished(&redis, "st", &ids, T);

    let s = stats_json(&redis, "st");
    let total = s["counts"]["completed"].as_u64().unwrap() + s["counts"]["failed"].as_u64().unwrap();
    assert_eq!(total, 30, "{s:#}");
    assert_eq!(s["counts"]["waiting"], 0);
    assert_eq!(s["counts"]["active"], 0);
    assert_eq!(s["completedLastMinute"], s["counts"]["completed"], "all finished within the minute");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{s:#}");
    let mut digests: Vec<(&str, u64)> =
        workers.iter().map(|w| (w["digest"].as_str().unwrap(), w["concurrency"].as_u64().unwrap())).collect();
    digests.sort();
    let mut want = [(digest_of(&echo), 4), (digest_of(&flaky), 2)];
    want.sort();
    let want: Vec<(&str, u64)> = want.iter().map(|(d, c)| (d.as_str(), *c)).collect();
    assert_eq!(digests, want, "each live worker with the digest it runs");

    // The text form, and --watch refreshing (plain blocks when not a TTY).
    let text = ok(&bullpen(&["stats", "--redis", &redis.url(), "--queue", "st"]));
    assert!(text.contains("live bullpen workers: 2") && text.contains(&digest_of(&echo)[..12]), "{text}");
    let mut watch = Command::new(bullpen_bin())
        .args(["stats", "--redis", &redis.url(), "--queue", "st", "--watch", "--json", "--interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&mut watch);
    let mut lines = String::new();
    watch.stdout.take().unwrap().read_to_string(&mut lines).unwrap();
    let n = lines.lines().filter(|l| serde_json::from_str::<Value>(l).is_ok()).count();
    assert!(n >= 3, "--watch printed {n} snapshots: {lines}");

    // A stopped worker leaves the live list at once.
    assert!(w2.stop().success());
    let s = stats_json(&redis, "st");
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{s:#}");
    assert_eq!(workers[0]["digest"], digest_of(&echo));
    drop(w1);
}

#[test]
fn json_logs_carry_the_attempt_span() {
    let redis = Redis::start();
    let hog = plugin("hog", "rust");
    let w = Worker::start(&redis, "logs", &hog, &["--log-format", "json"]);
    let ids = node_add(&redis, "logs", json!([{"name": "r", "data": {"mode": "recursion"}}]));
    wait_finished(&redis, "logs", &ids, T);
    w.wait_log("attempt failed", T);
    let log = w.log();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let failed = lines.iter().find(|l| l["fields"]["message"] == "attempt failed").unwrap();
    assert_eq!(failed["level"], "INFO");
    assert_eq!(failed["fields"]["outcome"], "failed");
    // A Rust guest's stack lives in linear memory: deep recursion runs it out of bounds.
    assert!(failed["fields"]["reason"].as_str().unwrap().starts_with("wasm trap: out-of-bounds"), "{failed}");
    let span = &failed["span"];
    assert_eq!(span["name"], "attempt");
    assert_eq!(span["queue"], "logs");
    assert_eq!(span["job"], ids[0].as_str());
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["digest"], digest_of(&hog));
    // A line logged inside a running attempt carries the same span, though
    // the span is made only when something logs (runtime/src/span.rs):
    // here the debug line of a successful attempt.
    let echo = plugin("echo", "rust");
    let url = redis.url();
    let args =
        ["--redis", url.as_str(), "--queue", "logs2", "--plugin", echo.to_str().unwrap(), "--log-format", "json"];
    let w2 = Worker::spawn_env(&args, &[("BULLPEN_LOG", "info,bullpen::queue::trigger=debug")]);
    let ids2 = node_add(&redis, "logs2", json!([{"name": "e", "data": {"n": 1}}]));
    wait_finished(&redis, "logs2", &ids2, T);
    w2.wait_log("attempt returned", T);
    let log = w2.log();
    let returned = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["fields"]["message"] == "attempt returned")
        .unwrap();
    let span = &returned["span"];
    assert_eq!(span["name"], "attempt", "{returned}");
    assert_eq!(span["queue"], "logs2");
    assert_eq!(span["job"], ids2[0].as_str());
    assert_eq!(span["attempt"], 1);
    assert_eq!(span["digest"], digest_of(&echo));
}

/// GET `path` from 127.0.0.1:`port`; (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample whose line starts with `series` (name + labels).
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
}

#[test]
fn metrics_count_outcomes_traps_limits_and_attempt_costs() {
    let redis = Redis::start();
    let hog = plugin("hog", "rust");
    let w = Worker::start(
        &redis,
        "met",
        &hog,
        &["--concurrency", "4", "--timeout-ms", "1000", "--max-memory-mb", "32", "--metrics-addr", "127.0.0.1:0"],
    );
    let port = w.metrics_port();
    let jobs = json!([
        {"name": "a", "data": {"mode": "fine"}},
        {"name": "b", "data": {"mode": "fine"}},
        {"name": "c", "data": {"mode": "fine"}},
        {"name": "loop", "data": {"mode": "loop"}, "opts": {"attempts": 2}},
        {"name": "mem", "data": {"mode": "memory"}},
        {"name": "rec", "data": {"mode": "recursion"}},
    ]);
    let ids = node_add(&redis, "met", jobs);
    wait_finished(&redis, "met", &ids, T);
    // The last attempt's metrics are recorded right after its result is
    // written; give the scrape a moment to see it.
    let d = digest_of(&hog);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = http_get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let done = body.contains(&format!("bullpen_jobs_total{{queue=\"met\",digest=\"{d}\",outcome=\"failed\"}} 3"));
        if done || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let jobs = |outcome: &str| {
        sample(&body, &format!("bullpen_jobs_total{{queue=\"met\",digest=\"{d}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(jobs("completed"), 3.0, "{body}");
    assert_eq!(jobs("failed"), 3.0, "loop (after its retry), memory and recursion");
    assert_eq!(jobs("retried"), 1.0, "loop's first attempt");
    assert_eq!(sample(&body, "bullpen_limit_kills_total{queue=\"met\",limit=\"timeout\"}"), 2.0);
    assert_eq!(sample(&body, "bullpen_limit_kills_total{queue=\"met\",limit=\"memory\"}"), 1.0);
    assert_eq!(sample(&body, "bullpen_traps_total{queue=\"met\",kind=\"out_of_bounds\"}"), 1.0, "recursion");
    assert_eq!(sample(&body, "bullpen_attempt_duration_seconds_count{queue=\"met\"}"), 7.0);
    assert_eq!(sample(&body, "bullpen_instantiation_duration_seconds_count{queue=\"met\"}"), 7.0);
    assert_eq!(sample(&body, "bullpen_attempt_memory_peak_bytes_count{queue=\"met\"}"), 7.0);
    // The memory hog reached its 32 MiB cap; nothing went past it.
    assert!(body.contains("bullpen_attempt_memory_peak_bytes_bucket{le=\"33554432.0\",queue=\"met\"} 7"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text");

    let (status, _) = http_get(port, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_taken_metrics_port_stops_the_worker_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let redis = Redis::start();
    let out = bullpen(&[
        "worker",
        "--redis",
        &redis.url(),
        "--queue",
        "x",
        "--plugin",
        plugin("echo", "rust").to_str().unwrap(),
        "--metrics-addr",
        &addr,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on --metrics-addr {addr}")), "{err}");
}

#[test]
fn worker_threads_default_to_one_per_core_capped_by_concurrency() {
    let redis = Redis::start();
    let cores = std::thread::available_parallelism().unwrap().get();
    let echo = plugin("echo", "rust");
    let w = Worker::start(&redis, "t1", &echo, &[]);
    assert!(w.log().contains("threads=1"), "concurrency 1 (the default) needs one thread: {}", w.log());
    drop(w);
    let w = Worker::start(&redis, "t5", &echo, &["--concurrency", "5"]);
    assert!(w.log().contains(&format!("threads={}", cores.min(5))), "{cores} cores: {}", w.log());
    let ids = node_add(&redis, "t5", json!([{"name": "e", "data": {"n": 1}}, {"name": "e", "data": {"n": 2}}]));
    let v = wait_finished(&redis, "t5", &ids, T);
    assert_eq!(v["jobs"][1]["returnvalue"], json!({"n": 2}));
}

/// CPU time (utime + stime, in clock ticks) of each of `pid`'s threads, by thread name.
fn thread_cpu_ticks(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut ticks = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ... field 14 utime, 15 stime; comm may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        let t = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
        *ticks.entry(stat[open + 1..close].to_string()).or_insert(0) += t;
    }
    ticks
}

/// A queue's concurrency is split over the shard threads (runtime/src/queue/shards.rs):
/// two spinning guests at concurrency 2 on two threads compute one on each,
/// and both are stopped at their limit.
#[test]
fn attempts_of_one_queue_run_on_every_shard_thread() {
    let redis = Redis::start();
    let w = Worker::start(
        &redis,
        "spread",
        &plugin("hog", "rust"),
        &["--concurrency", "2", "--threads", "2", "--timeout-ms", "1500"],
    );
    assert!(w.log().contains("threads=2"), "{}", w.log());
    let before = thread_cpu_ticks(w.child.id());
    let ids = node_add(
        &redis,
        "spread",
        json!([{"name": "loop", "data": {"mode": "loop"}}, {"name": "loop", "data": {"mode": "loop"}}]),
    );
    let v = wait_finished(&redis, "spread", &ids, T);
    for j in v["jobs"].as_array().unwrap() {
        assert!(j["failedReason"].as_str().unwrap().contains("limit of 1500 ms"), "{v:#}");
    }
    let after = thread_cpu_ticks(w.child.id());
    for shard in ["bullpen-shard-0", "bullpen-shard-1"] {
        let spent = after.get(shard).copied().unwrap_or(0) - before.get(shard).copied().unwrap_or(0);
        // A guest spinning for 1.5 s gets at least a fifth of a core even on
        // a busy 2-core machine; a shard that ran no guest spends ~0.
        assert!(
            spent >= 30,
            "{shard} spent {spent} ticks: each thread should have run one spinning guest; threads: {after:?}"
        );
    }
}

#[test]
fn one_process_serves_the_queues_of_a_config_file_and_flags_override_it() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let hog = plugin("hog", "rust");
    let config = format!(
        r#"
redis = "{url}"
threads = 2
[defaults]
timeout_ms = 800

[[queues]]
name = "mails"
plugin = "{echo}"
concurrency = 3

[[queues]]
name = "hogs"
plugin = "{hog}"

[[queues]]
name = "slowhogs"
plugin = "{hog}"
timeout_ms = 1500
"#,
        url = redis.url(),
        echo = plugin("echo", "rust").display(),
        hog = hog.display(),
    );
    let file = write_file(&dir, "bullpen.toml", &config);
    let w = Worker::spawn(&["--config", &file]);
    assert!(w.log().contains("queues=mails,hogs,slowhogs"), "{}", w.log());
    assert!(w.log().contains("threads=2"), "the file's `threads`: {}", w.log());

    let mails =
        node_add(&redis, "mails", json!([{"name": "m", "data": {"to": "ada"}}, {"name": "m", "data": {"to": "bob"}}]));
    let hogs = node_add(&redis, "hogs", json!([{"name": "loop", "data": {"mode": "loop"}}]));
    let slow = node_add(&redis, "slowhogs", json!([{"name": "loop", "data": {"mode": "loop"}}]));
    let v = wait_finished(&redis, "mails", &mails, T);
    assert_eq!(v["jobs"][1]["returnvalue"], json!({"to": "bob"}));
    let v = wait_finished(&redis, "hogs", &hogs, T);
    assert!(v["jobs"][0]["failedReason"].as_str().unwrap().contains("limit of 800 ms"), "[defaults] timeout: {v:#}");
    let v = wait_finished(&redis, "slowhogs", &slow, T);
    assert!(
        v["jobs"][0]["failedReason"].as_str().unwrap().contains("limit of 1500 ms"),
        "the entry's own timeout: {v:#}"
    );
    assert_eq!(stats_json(&redis, "mails")["workers"][0]["concurrency"], 3);
    drop(w);

    // Flags win over the file, and --queue serves just one of its queues.
    // On one thread, two looping guests at once are still both stopped at
    // their limit (each yields to the others at every epoch tick).
    let w = Worker::spawn(&[
        "--config",
        &file,
        "--queue",
        "slowhogs",
        "--timeout-ms",
        "600",
        "--threads",
        "1",
        "--concurrency",
        "2",
    ]);
    assert!(w.log().contains("queues=slowhogs"), "{}", w.log());
    assert!(w.log().contains("threads=1"), "--threads overrides: {}", w.log());
    let slow = node_add(
        &redis,
        "slowhogs",
        json!([{"name": "loop", "data": {"mode": "loop"}}, {"name": "loop", "data": {"mode": "loop"}}]),
    );
    let v = wait_finished(&redis, "slowhogs", &slow, T);
    for j in v["jobs"].as_array().unwrap() {
        assert!(j["failedReason"].as_str().unwrap().contains("limit of 600 ms"), "--timeout-ms overrides: {v:#}");
    }
    assert_eq!(stats_json(&redis, "mails")["workers"], json!([]), "mails is not served by this process");
    drop(w);

    // A typo in the file is named, and nothing starts.
    let bad = write_file(&dir, "bad.toml", "[[queues]]\nname = \"a\"\nconcurency = 2\n");
    let out = bullpen(&["worker", "--config", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml is not valid") && err.contains("concurency"), "{err}");
    let out = bullpen(&["worker", "--config", &file, "--threads", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads") && err.contains("0"), "{err}");
}

/// Jobs finish too fast for a log line each: every `--summary-secs` the
/// worker logs one line per queue that ran attempts (completed, failed,
/// retried, other), and none while idle.
#[test]
fn the_worker_logs_a_summary_line_per_interval() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "sum", &plugin("flaky", "rust"), &["--summary-secs", "1"]);
    let jobs = json!([
        {"name": "ok", "data": {}},
        {"name": "ok", "data": {}},
        {"name": "ok", "data": {}},
        {"name": "bad", "data": {"fatal": true}},
    ]);
    let ids = node_add(&redis, "sum", jobs);
    wait_finished(&redis, "sum", &ids, Duration::from_secs(60));
    w.wait_log("jobs in the last 1 s", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2500));
    let log = w.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("jobs in the last 1 s")).collect();
    let total = |field: &str| -> u64 {
        lines
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!((total("completed"), total("failed")), (3, 1), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("queue=sum")), "{lines:#?}");
    assert!(lines.len() <= 2, "no line while idle: {lines:#?}");
}
