//! The foundation: a Wasm processor on real BullMQ queues, observed from
//! Node's and Python's bullmq. Each test starts its own redis-server.

use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// Node adds varied jobs; bullpen's echo processes them; Node sees exactly
/// what a Node worker would have written, and QueueEvents reports them.
#[test]
fn node_jobs_processed_and_observed_from_node() {
    let redis = Redis::start();
    let big = "x".repeat(256 * 1024);
    let jobs = json!([
        {"name": "unicode", "data": {"text": "héllo wörld ✓ 日本語 🚀", "emoji": "👍🏽"}},
        {"name": "nested", "data": {"a": {"b": {"c": [1, 2.5, -3, true, null, {"d": "e"}]}}, "z": 1, "m": 2}},
        {"name": "big", "data": {"blob": big}},
        {"name": "custom", "data": {"n": 1}, "opts": {"jobId": "order-42"}},
        {"name": "custom2", "data": [1, 2, 3], "opts": {"jobId": "with-dash_and.dot"}},
        {"name": "scalar", "data": "just a string"},
    ]);
    let events = NodeEvents::listen(&redis, "emails", 6, T);
    let ids = node_add(&redis, "emails", jobs.clone());
    assert_eq!(ids[3], "order-42");
    let worker = Worker::start(&redis, "emails", &plugin("echo", "rust"), &["--concurrency", "4"]);
    let v = wait_finished(&redis, "emails", &ids, T);
    let events = events.finish();
    for (i, job) in v["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["state"], "completed", "{job:#}");
        assert_eq!(job["returnvalue"], jobs[i]["data"], "returnvalue of {}", job["name"]);
        assert_eq!(job["progress"], 100);
        assert_eq!(job["attemptsMade"], 1);
        assert!(job["finishedOn"].as_u64().unwrap() >= job["processedOn"].as_u64().unwrap());
        assert_eq!(guest_logs(job), json!([format!("echo: job {} ({})", ids[i], jobs[i]["name"].as_str().unwrap())]));
    }
    assert_eq!(v["counts"]["completed"], 6);
    assert_eq!(v["counts"]["waiting"], 0);
    assert_eq!(v["counts"]["failed"], 0);
    let completed: Vec<&Value> = events.iter().filter(|e| e["event"] == "completed").collect();
    assert_eq!(completed.len(), 6, "{events:#?}");
    let order = completed.iter().find(|e| e["jobId"] == "order-42").unwrap();
    assert_eq!(order["returnvalue"], json!({"n": 1}));
    assert!(events.iter().any(|e| e["event"] == "progress" && e["data"] == 100));
    // Key order survives the trip (JSON text, not re-sorted).
    let mut c = redis.conn();
    let raw: String = redis::cmd("HGET").arg("bull:emails:2").arg("returnvalue").query(&mut c).unwrap();
    assert!(raw.starts_with(r#"{"a":"#) && raw.ends_with(r#""z":1,"m":2}"#), "{raw}");
    assert!(worker.stop().success());
}

/// `bullpen add` prints the id; Node reads the processed job.
#[test]
fn bullpen_add_then_node_reads() {
    let redis = Redis::start();
    let out = bullpen(&[
        "add",
        "--redis",
        &redis.url(),
        "--queue",
        "q",
        "greet",
        r#"{"who":"Ada"}"#,
        "--opts",
        r#"{"jobId":"g1","attempts":2}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "g1");
    let out = bullpen(&["add", "--redis", &redis.url(), "--queue", "q", "plain", "[1,2]"]);
    let id2 = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id2.parse::<u64>().is_ok(), "a generated id is numeric: {id2:?}");
    let _w = Worker::start(&redis, "q", &plugin("echo", "rust"), &[]);
    let v = wait_finished(&redis, "q", &["g1".into(), id2], T);
    assert_eq!(v["jobs"][0]["returnvalue"], json!({"who": "Ada"}));
    assert_eq!(v["jobs"][0]["name"], "greet");
    assert_eq!(v["jobs"][1]["returnvalue"], json!([1, 2]));
}

/// Python's bullmq as producer.
#[test]
fn python_producer_interop() {
    let redis = Redis::start();
    let jobs = json!([
        {"name": "py", "data": {"lang": "python", "text": "naïve café"}},
        {"name": "py2", "data": {"list": [1, {"x": null}]}, "opts": {"jobId": "py-custom"}},
    ]);
    let ids = ids(python(&["add", &redis.url(), "pyq", &jobs.to_string()]));
    let _w = Worker::start(&redis, "pyq", &plugin("echo", "rust"), &[]);
    let v = wait_finished(&redis, "pyq", &ids, T);
    assert_eq!(ids[1], "py-custom");
    for (i, job) in v["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(job["state"], "completed");
        assert_eq!(job["returnvalue"], jobs[i]["data"]);
    }
}

/// A guest error: failed with that failedReason; with attempts 3 it is retried
/// and Node sees attemptsMade 3; a later success shows retries work.
#[test]
fn guest_error_fails_and_retries_like_node() {
    let redis = Redis::start();
    let events = NodeEvents::listen(&redis, "f", 3, T);
    let ids = node_add(
        &redis,
        "f",
        json!([
            {"name": "once", "data": {"failTimes": 9}},
            {"name": "thrice", "data": {"failTimes": 9}, "opts": {"attempts": 3}},
            {"name": "recovers", "data": {"failTimes": 2}, "opts": {"attempts": 3}},
        ]),
    );
    let _w = Worker::start(&redis, "f", &plugin("flaky", "rust"), &["--concurrency", "3"]);
    let v = wait_finished(&redis, "f", &ids, T);
    let j = &v["jobs"];
    assert_eq!(j[0]["state"], "failed");
    assert_eq!(j[0]["failedReason"], "flaky: failing attempt 1 of 9");
    assert_eq!(j[0]["attemptsMade"], 1);
    assert_eq!(j[1]["state"], "failed");
    assert_eq!(j[1]["attemptsMade"], 3);
    assert_eq!(j[1]["failedReason"], "flaky: failing attempt 3 of 9");
    assert_eq!(j[2]["state"], "completed");
    assert_eq!(j[2]["attemptsMade"], 3);
    assert_eq!(j[2]["returnvalue"], json!({"succeededOnAttempt": 3}));
    let events = events.finish();
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    // QueueEvents `failed` is emitted for final failures only (moveToFinished).
    assert_eq!(failed.len(), 2, "{events:#?}");
}

/// Job data that is not JSON fails that job with a clear reason; the worker
/// goes on with the next job.
#[test]
fn job_data_not_json_fails_clearly_and_worker_goes_on() {
    let redis = Redis::start();
    let ids = node_add(&redis, "bad", json!([{"name": "broken", "data": {"ok": true}}]));
    let mut c = redis.conn();
    let _: () =
        redis::cmd("HSET").arg(format!("bull:bad:{}", ids[0])).arg("data").arg("{not json").query(&mut c).unwrap();
    let more = node_add(&redis, "bad", json!([{"name": "fine", "data": {"ok": 1}}]));
    let _w = Worker::start(&redis, "bad", &plugin("echo", "rust"), &[]);
    // Node's own Job.fromId throws on such data, so read the broken job raw.
    let v = wait_finished(&redis, "bad", &more, T);
    assert_eq!(v["jobs"][0]["state"], "completed");
    assert_eq!(v["jobs"][0]["returnvalue"], json!({"ok": 1}));
    let failed: Vec<String> = redis::cmd("ZRANGE").arg("bull:bad:failed").arg(0).arg(-1).query(&mut c).unwrap();
    assert_eq!(failed, vec![ids[0].clone()]);
    let reason: String =
        redis::cmd("HGET").arg(format!("bull:bad:{}", ids[0])).arg("failedReason").query(&mut c).unwrap();
    assert!(reason.starts_with("job data is not valid JSON"), "{reason}");
    let atm: String = redis::cmd("HGET").arg(format!("bull:bad:{}", ids[0])).arg("atm").query(&mut c).unwrap();
    assert_eq!(atm, "1");
}

/// JSON depth, one rule (README "What a processor can do"): data nested 127 levels reaches
/// every SDK's guest and comes back as the return value; 128 levels, which
/// Node adds without complaint, fails that job for good with a reason
/// saying so (not `null`), and `bullpen add` / `bullpen run` refuse it alike.
#[test]
fn json_deeper_than_the_rule_fails_clearly_everywhere() {
    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |v, _| json!([v]))
    }
    const TOO_DEEP: &str = "nested more than 127 levels deep (bullpen's limit for JSON)";
    let redis = Redis::start();
    for lang in ["rust", "go", "js"] {
        let q = format!("deep-{lang}");
        let ids = node_add(
            &redis,
            &q,
            json!([{"name": "deepest", "data": nested(127)}, {"name": "deeper", "data": nested(128)}]),
        );
        let _w = Worker::start(&redis, &q, &plugin("echo", lang), &[]);
        // Read raw: the harness's own JSON parser has serde_json's limit too.
        let mut c = redis.conn();
        let field = |c: &mut redis::Connection, id: &str, f: &str| -> Option<String> {
            redis::cmd("HGET").arg(format!("bull:{q}:{id}")).arg(f).query(c).unwrap()
        };
        wait_until(T, Duration::from_millis(50), "both jobs finished", || {
            field(&mut c, &ids[1], "finishedOn").and(field(&mut c, &ids[0], "finishedOn"))
        });
        assert_eq!(field(&mut c, &ids[0], "returnvalue"), Some(nested(127).to_string()), "{lang}");
        assert_eq!(field(&mut c, &ids[1], "failedReason"), Some(format!("job data is {TOO_DEEP}")), "{lang}");
        assert_eq!(field(&mut c, &ids[1], "atm").as_deref(), Some("1"), "{lang}");
        let failed: Vec<String> =
            redis::cmd("ZRANGE").arg(format!("bull:{q}:failed")).arg(0).arg(-1).query(&mut c).unwrap();
        assert_eq!(failed, vec![ids[1].clone()], "{lang}");
    }
    let deep = nested(128).to_string();
    let out = bullpen(&["add", "--redis", &redis.url(), "--queue", "q", "n", &deep]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error: job data is {TOO_DEEP}")));
    assert_eq!(node(&["counts", &redis.url(), "q"])["waiting"], 0);
    let out = bullpen(&["run", plugin("echo", "rust").to_str().unwrap(), "--data", &deep]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error: --data is {TOO_DEEP}")));
}

/// Job hashes corrupted by something other than BullMQ: BullMQ's scripts
/// stop half-way on them (`atm` not an integer: moveToFinished fails after
/// taking the job out of active; a job key that is a string: moveToActive
/// fails after moving its id to active). Node's worker leaves such a job in
/// no state at all; bullpen fails it with a reason a BullMQ client reads,
/// and goes on with the next job.
#[test]
fn corrupt_job_hashes_end_failed_with_a_reason() {
    let redis = Redis::start();
    let ids = node_add(
        &redis,
        "corrupt",
        json!([{"name": "atm", "data": {"a": 1}}, {"name": "string", "data": {"a": 2}}, {"name": "fine", "data": {"a": 3}}]),
    );
    let mut c = redis.conn();
    let key = |id: &str| format!("bull:corrupt:{id}");
    let _: () = redis::cmd("HSET").arg(key(&ids[0])).arg("atm").arg("99999999999999999999").query(&mut c).unwrap();
    let _: () = redis::cmd("DEL").arg(key(&ids[1])).query(&mut c).unwrap();
    let _: () = redis::cmd("SET").arg(key(&ids[1])).arg("junk").query(&mut c).unwrap();
    let w = Worker::start(&redis, "corrupt", &plugin("echo", "rust"), &[]);
    let counts = wait_until(T, Duration::from_millis(50), "all three jobs finished", || {
        let counts = node(&["counts", &redis.url(), "corrupt"]);
        (counts["completed"].as_u64().unwrap() + counts["failed"].as_u64().unwrap() == 3).then_some(counts)
    });
    assert_eq!(
        (counts["completed"].as_u64(), counts["failed"].as_u64(), counts["active"].as_u64()),
        (Some(1), Some(2), Some(0))
    );
    let v = inspect(&redis, "corrupt", &[ids[0].clone(), ids[2].clone()]);
    assert_eq!(v["jobs"][0]["state"], "failed", "{v:#}");
    let reason = v["jobs"][0]["failedReason"].as_str().unwrap();
    assert!(
        reason.starts_with("the job could not be finished:") && reason.contains("hash value is not an integer"),
        "{reason}"
    );
    assert_eq!(v["jobs"][1]["state"], "completed");
    // Node's Job cannot read a job with no name or data: read it raw.
    let reason: String = redis::cmd("HGET").arg(key(&ids[1])).arg("failedReason").query(&mut c).unwrap();
    assert!(
        reason.contains("WRONGTYPE")
            && reason
                .ends_with(&format!("(the job key held a string, not a hash; it is kept as {}:corrupt)", key(&ids[1]))),
        "{reason}"
    );
    let kept: String = redis::cmd("GET").arg(format!("{}:corrupt", key(&ids[1]))).query(&mut c).unwrap();
    assert_eq!(kept, "junk");
    let failed: Vec<String> = redis::cmd("ZRANGE").arg("bull:corrupt:failed").arg(0).arg(-1).query(&mut c).unwrap();
    assert_eq!(failed.len(), 2);
    assert!(!w.log().contains("ERROR"), "{}", w.log());
}

/// Job data that is missing, or larger than the payload limit (16 MiB),
/// fails that job with a reason saying so; nothing reaches the guest.
#[test]
fn missing_or_huge_job_data_fails_clearly() {
    let redis = Redis::start();
    let huge = "x".repeat(17 << 20);
    let ids = node_add(
        &redis,
        "hd",
        json!([{"name": "huge", "data": {"blob": huge}}, {"name": "nodata", "data": {}}, {"name": "fine", "data": 5}]),
    );
    let mut c = redis.conn();
    let _: () = redis::cmd("HDEL").arg(format!("bull:hd:{}", ids[1])).arg("data").query(&mut c).unwrap();
    let _w = Worker::start(&redis, "hd", &plugin("echo", "rust"), &[]);
    let v = wait_finished(&redis, "hd", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "failed");
    assert_eq!(v["jobs"][0]["failedReason"], "job data is 17825803 bytes; the limit is 16777216");
    assert_eq!(v["jobs"][1]["state"], "failed");
    assert_eq!(v["jobs"][1]["failedReason"], "job data is missing: the job hash has no `data` field");
    assert_eq!(v["jobs"][2]["state"], "completed");
}

fn worker_refuses(redis: &Redis, plugin: &std::path::Path) -> String {
    let out = bullpen(&["worker", "--redis", &redis.url(), "--queue", "x", "--plugin", plugin.to_str().unwrap()]);
    assert!(!out.status.success(), "worker should refuse {}", plugin.display());
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Bad plugins are refused at start with a message that says what is wrong,
/// and no job is touched.
#[test]
fn bad_plugins_are_refused_and_no_job_is_lost() {
    let redis = Redis::start();
    let ids = node_add(&redis, "x", json!([{"name": "keep", "data": {}}]));
    let dir = tempfile::tempdir().unwrap();

    let err = worker_refuses(&redis, &dir.path().join("missing.wasm"));
    assert!(err.contains("cannot read plugin") && err.contains("missing.wasm"), "{err}");

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    let err = worker_refuses(&redis, &text);
    assert!(err.contains("is not a WebAssembly file"), "{err}");

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module (func (export \"process\")))").unwrap()).unwrap();
    let err = worker_refuses(&redis, &core);
    assert!(err.contains("core WebAssembly module, not a component"), "{err}");

    let truncated = dir.path().join("truncated.wasm");
    let echo = std::fs::read(plugin("echo", "rust")).unwrap();
    std::fs::write(&truncated, &echo[..echo.len() / 2]).unwrap();
    let err = worker_refuses(&redis, &truncated);
    assert!(err.contains("is not a valid component"), "{err}");

    let other = dir.path().join("other-world.wasm");
    let wat = r#"(component
        (core module $m (func (export "run") (result i32) i32.const 7))
        (core instance $i (instantiate $m))
        (func $run (result u32) (canon lift (core func $i "run")))
        (export "run" (func $run)))"#;
    std::fs::write(&other, wat::parse_str(wat).unwrap()).unwrap();
    let err = worker_refuses(&redis, &other);
    assert!(err.contains("does not match the bullpen:processor@0.1.0 world"), "{err}");
    assert!(err.contains("process"), "should name the missing export: {err}");

    let importer = dir.path().join("importer.wasm");
    std::fs::write(
        &importer,
        wat::parse_str(r#"(component (import "evil:net/socket" (instance (export "connect" (func)))))"#).unwrap(),
    )
    .unwrap();
    let err = worker_refuses(&redis, &importer);
    assert!(err.contains("does not match") && err.contains("evil:net/socket"), "{err}");

    let trapper = dir.path().join("trapper.wasm");
    let wat =
        r#"(component (core module $m (func $start unreachable) (start $start)) (core instance (instantiate $m)))"#;
    std::fs::write(&trapper, wat::parse_str(wat).unwrap()).unwrap();
    let err = worker_refuses(&redis, &trapper);
    assert!(err.contains("traps when instantiated") && err.contains("unreachable"), "{err}");

    let v = inspect(&redis, "x", &ids);
    assert_eq!(v["jobs"][0]["state"], "waiting", "refused workers must not touch jobs");
}

/// Every command answers --help.
#[test]
fn help_on_every_command() {
    for args in [&["--help"][..], &["worker", "--help"], &["add", "--help"]] {
        let out = bullpen(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: bullpen"), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&bullpen(&["worker", "--help"]).stdout).to_string();
    for flag in ["--redis", "--queue", "--plugin", "--concurrency", "--prefix"] {
        assert!(text.contains(flag), "worker --help lacks {flag}");
    }
}

/// `bullpen add` with data that is not JSON exits non-zero and adds nothing.
#[test]
fn add_refuses_bad_json() {
    let redis = Redis::start();
    let out = bullpen(&["add", "--redis", &redis.url(), "--queue", "q", "n", "{oops"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("job data is not valid JSON"));
    let counts = node(&["counts", &redis.url(), "q"]);
    assert_eq!(counts["waiting"], 0);
}

/// SIGTERM stops the worker cleanly (exit 0) and a finished job stays finished.
#[test]
fn sigterm_stops_cleanly() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "s", &plugin("echo", "rust"), &[]);
    let ids = node_add(&redis, "s", json!([{"name": "a", "data": 1}]));
    wait_finished(&redis, "s", &ids, T);
    let status = w.stop();
    assert!(status.success(), "{status}");
}

/// The compiled component is cached by digest: a second start loads the
/// artifact instead of compiling (what makes JS workers start fast).
#[test]
fn second_start_loads_the_precompiled_artifact() {
    let redis = Redis::start();
    let cache = tempfile::tempdir().unwrap();
    let start = |n: usize| {
        let log = cache.path().join(format!("worker{n}.log"));
        let child = std::process::Command::new(bullpen_bin())
            .args([
                "worker",
                "--redis",
                &redis.url(),
                "--queue",
                "c",
                "--plugin",
                plugin("echo", "rust").to_str().unwrap(),
            ])
            .env("BULLPEN_CACHE_DIR", cache.path().join("artifacts"))
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until(T, POLL, &format!("start {n} never got ready"), || {
            std::fs::read_to_string(&log).unwrap().contains("worker ready").then_some(())
        });
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait_with_output();
        std::fs::read_to_string(&log).unwrap()
    };
    assert!(start(1).contains("from_cache=false"));
    assert_eq!(std::fs::read_dir(cache.path().join("artifacts")).unwrap().count(), 1, "one artifact written");
    assert!(start(2).contains("from_cache=true"));
}

/// Build-time refusals say how to fix the build: bullpen-componentize
/// refuses a command module (Go built without `-buildmode=c-shared`, which
/// would fail every job at run time), and a core module given to bullpen
/// names the project's own tool.
#[test]
fn componentize_refuses_a_command_module_and_says_how_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let command = dir.path().join("cmd.core.wasm");
    std::fs::write(&command, wat::parse_str(r#"(module (func (export "_start")) (func (export "process")))"#).unwrap())
        .unwrap();
    let tool = bullpen_bin().with_file_name("bullpen-componentize");
    let out = std::process::Command::new(&tool)
        .arg(&command)
        .args(["--wit", root().join("wit").to_str().unwrap(), "-o"])
        .arg(dir.path().join("out.wasm"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is a command module (it exports `_start`)") && err.contains("-buildmode=c-shared"), "{err}");
    assert!(!dir.path().join("out.wasm").exists());

    let out = bullpen(&["run", command.to_str().unwrap(), "--data", "{}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bullpen-componentize") && err.contains("wasm32-wasip2"), "{err}");
}
