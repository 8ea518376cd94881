//! Write-behind of `log` and `update-progress` (runtime/src/host/write_behind.rs):
//! BullMQ clients still see every line and every progress event, in order,
//! while a long attempt runs; a short attempt costs one Redis script besides
//! its finish, sent in the same round trip as the finish.

use std::time::Duration;

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// Wait until `line` is in job `id`'s log in Redis (written mid-attempt).
fn wait_for_line(c: &mut redis::Connection, queue: &str, id: &str, line: &str) {
    wait_until(T, Duration::from_millis(5), &format!("{line:?} reached Redis"), || {
        let logs: Vec<String> =
            redis::cmd("LRANGE").arg(format!("bull:{queue}:{id}:logs")).arg(0).arg(-1).query(c).unwrap();
        logs.iter().any(|l| l == line).then_some(())
    });
}

/// hog's `slow` mode: three steps of log + progress, each followed by 400 ms
/// of sleeping (step 1, a WASI call) or spinning in wasm (step 2). Each
/// step's line and progress must reach Redis while the job is still active,
/// not at its end.
#[test]
fn a_long_attempt_shows_its_log_and_progress_while_it_runs() {
    let redis = Redis::start();
    let _w = Worker::start(&redis, "wb", &plugin("hog", "rust"), &[]);
    let events = NodeEvents::listen(&redis, "wb", 1, T);
    let ids = node_add(&redis, "wb", json!([{"name": "slow", "data": {"mode": "slow"}}]));
    let id = &ids[0];
    let mut c = redis.conn();
    for step in 1..=2 {
        wait_until_ok(T, Duration::from_millis(10), &format!("step {step} never reached Redis"), || {
            let logs: Vec<String> =
                redis::cmd("LRANGE").arg(format!("bull:wb:{id}:logs")).arg(0).arg(-1).query(&mut c).unwrap();
            let progress: Option<String> =
                redis::cmd("HGET").arg(format!("bull:wb:{id}")).arg("progress").query(&mut c).unwrap();
            if logs.contains(&format!("hog: step {step}")) && progress.as_deref() == Some(&*(step * 10).to_string()) {
                Ok(())
            } else {
                Err(format!("logs {logs:?}, progress {progress:?}"))
            }
        });
        let finished: Option<f64> = redis::cmd("ZSCORE").arg("bull:wb:completed").arg(id).query(&mut c).unwrap();
        assert!(finished.is_none(), "step {step}'s log line and progress reached Redis only when the job completed");
    }
    let v = wait_finished(&redis, "wb", &ids, T);
    let j = &v["jobs"][0];
    assert_eq!(j["state"], "completed", "{j:#}");
    assert_eq!(j["progress"], 30);
    let logs: Vec<&str> = j["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(logs[0].starts_with("bullpen: plugin sha256:"), "{logs:?}");
    assert_eq!(logs[1..], ["hog: step 1", "hog: step 2", "hog: step 3"]);
    let progress: Vec<Value> =
        events.finish().into_iter().filter(|e| e["event"] == "progress").map(|e| e["data"].clone()).collect();
    assert_eq!(progress, [json!(10), json!(20), json!(30)], "QueueEvents saw every progress event, in order");
}

/// echo logs a line, sets progress and returns: with write-behind that is
/// one bullpen script (log + progress, lock-checked) and BullMQ's
/// moveToFinished (which also fetches the next job) — 2 scripts per job
/// where BullMQ's Node worker runs 3.
#[test]
fn a_short_attempt_costs_one_script_besides_its_finish() {
    let redis = Redis::start();
    let n = 50;
    let jobs: Vec<Value> = (0..n).map(|i| json!({"name": "e", "data": {"i": i}})).collect();
    let ids = node_add(&redis, "short", Value::Array(jobs));
    let mut c = redis.conn();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let _w = Worker::start(&redis, "short", &plugin("echo", "rust"), &[]);
    wait_until(T, Duration::from_millis(20), "jobs not completed", || {
        (redis::cmd("ZCARD").arg("bull:short:completed").query::<usize>(&mut c).unwrap() >= n).then_some(())
    });
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut c).unwrap();
    let calls = |cmd: &str| -> usize {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let scripts = calls("evalsha") + calls("eval") + calls("fcall");
    assert!(calls("fcall") >= n, "moveToFinished ran as a Redis Function ({} FCALLs for {n} jobs)", calls("fcall"));
    // A few more for the worker's start (first fetch, stalled check) and heartbeat.
    assert!(scripts <= 2 * n + 10, "{scripts} scripts for {n} jobs (more than 2 per job)");
    let v = inspect(&redis, "short", &ids);
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed");
        assert_eq!(j["progress"], 100, "{j:#}");
        assert_eq!(j["logs"].as_array().unwrap().len(), 2, "digest line + echo's line: {j:#}");
    }
}

/// The lock is taken away after step 1's line reached Redis (as a stall
/// recovery would). Step 2's line and progress are queued (`ok`), and the
/// background flush finds the lock gone: nothing of them is written, step 3's
/// `log` gets `lock-lost`, and the job's next owner runs it from the start.
#[test]
fn a_lock_lost_under_pending_writes_fails_the_next_call_and_writes_nothing() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "wl", &plugin("hog", "rust"), &["--stalled-interval-ms", "1000"]);
    let ids = node_add(&redis, "wl", json!([{"name": "slow", "data": {"mode": "slow"}}]));
    let id = &ids[0];
    let mut c = redis.conn();
    wait_for_line(&mut c, "wl", id, "hog: step 1");
    let _: () = redis::cmd("DEL").arg(format!("bull:wl:{id}:lock")).query(&mut c).unwrap();
    w.wait_log("lock lost during the attempt", T);
    let v = wait_finished(&redis, "wl", &ids, T);
    let j = &v["jobs"][0];
    assert_eq!(j["state"], "completed", "{j:#}");
    assert_eq!(j["attemptsMade"], 1, "the abandoned attempt was neither completed nor failed");
    let logs: Vec<&str> = j["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .filter(|l| !l.starts_with("bullpen: "))
        .collect();
    assert_eq!(
        logs,
        ["hog: step 1", "hog: step 1", "hog: step 2", "hog: step 3"],
        "nothing the first attempt queued after the loss was written"
    );
}

/// A completed attempt's pending writes go to Redis in the same round trip
/// as its finish: on bullmq-official's connection, as the command just
/// before the job's moveToFinished (a `FinishPrelude`: patch 2 in
/// vendor/bullmq-official/PATCHES.md). Seen with MONITOR: for every job, the
/// flush that writes its log is immediately followed, from the same client,
/// by the moveToFinished that completes it — both as FCALLs of one function
/// library. Then the script cache is emptied (a restart that kept functions),
/// then functions too (one that kept nothing), and the next jobs still
/// complete with every line: the library is loaded again before the flush.
#[test]
fn a_completed_attempt_sends_its_writes_with_its_finish() {
    let redis = Redis::start();
    let n = 20;
    let monitor_out = tempfile::NamedTempFile::new().unwrap();
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(monitor_out.reopen().unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _w = Worker::start(&redis, "one", &plugin("echo", "rust"), &[]);
    let jobs: Vec<Value> = (0..n).map(|i| json!({"name": "e", "data": {"i": i}})).collect();
    let ids = node_add(&redis, "one", Value::Array(jobs));
    wait_finished(&redis, "one", &ids, T);
    terminate(&mut monitor);
    let log = std::fs::read_to_string(monitor_out.path()).unwrap();
    // `<time> [<db> <client>] "<command>" "<arg>" ...`
    let lines: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split_once(" [")?.1;
            let (who, cmd) = rest.split_once("] ")?;
            Some((who.split(' ').nth(1)?, cmd))
        })
        .collect();
    for id in &ids {
        let logs_key = format!("\"bull:one:{id}:logs\"");
        let flush = lines
            .iter()
            .position(|(_, c)| c.starts_with("\"FCALL\"") && c.contains("_prelude\"") && c.contains(&logs_key))
            .unwrap_or_else(|| panic!("no script wrote job {id}'s log"));
        let (client, _) = lines[flush];
        let next = lines[flush + 1..].iter().find(|(who, _)| *who == client).expect("nothing after the flush");
        assert!(
            next.1.starts_with("\"FCALL\"")
                && next.1.contains(&format!("\"bull:one:{id}\""))
                && next.1.contains("\"completed\""),
            "job {id}: the command after its flush, from the same client, is not its moveToFinished: {}",
            &next.1[..next.1.len().min(200)]
        );
    }
    let v = inspect(&redis, "one", &ids);
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed", "{j:#}");
        assert_eq!(j["logs"].as_array().unwrap().len(), 2, "digest line + echo's line: {j:#}");
    }

    let mut c = redis.conn();
    assert_eq!(function_libraries(&mut c).len(), 1, "moveToFinished's library (with the flush) is loaded");
    // A restart of a Redis that persists functions (RDB/AOF) but not its
    // script cache; then one without persistence: both gone.
    for (what, flush) in
        [("SCRIPT FLUSH", &["SCRIPT"][..]), ("SCRIPT FLUSH + FUNCTION FLUSH", &["SCRIPT", "FUNCTION"][..])]
    {
        for cmd in flush {
            let _: () = redis::cmd(cmd).arg("FLUSH").query(&mut c).unwrap();
        }
        let jobs: Vec<Value> = (0..n).map(|i| json!({"name": "e", "data": {"i": i}})).collect();
        let ids = node_add(&redis, "one", Value::Array(jobs));
        let v = wait_finished(&redis, "one", &ids, T);
        for j in v["jobs"].as_array().unwrap() {
            assert_eq!(j["state"], "completed", "{j:#}");
            assert_eq!(j["progress"], 100, "{j:#}");
            assert_eq!(j["logs"].as_array().unwrap().len(), 2, "after {what}: {j:#}");
        }
        assert_eq!(function_libraries(&mut c).len(), 1, "after {what}: the library is there");
    }
}

/// Names of the Redis Function libraries on the server.
fn function_libraries(c: &mut redis::Connection) -> Vec<String> {
    let list: Vec<Vec<redis::Value>> = redis::cmd("FUNCTION").arg("LIST").query(c).unwrap();
    list.iter()
        .filter_map(|lib| match &lib[..] {
            [redis::Value::BulkString(k), redis::Value::BulkString(name), ..] if k == b"library_name" => {
                Some(String::from_utf8_lossy(name).into_owned())
            }
            _ => None,
        })
        .collect()
}

/// moveToFinished runs as a Redis Function by default; where the server
/// refuses functions (here an ACL; likewise Redis < 7) the worker warns once
/// and runs it as a script, and `--redis-functions false` never tries.
#[test]
fn finishing_falls_back_to_scripts_where_functions_are_refused() {
    let redis = Redis::start();
    let mut c = redis.conn();
    let completed = |c: &mut redis::Connection, q: &str| {
        redis::cmd("ZCARD").arg(format!("bull:{q}:completed")).query::<usize>(c).unwrap()
    };
    let calls = |c: &mut redis::Connection, cmd: &str| -> usize {
        let stats: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let n = 20;
    let jobs: Value = (0..n).map(|i| json!({"name": "e", "data": {"i": i}})).collect();

    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-fcall").arg("-function").query(&mut c).unwrap();
    let w = Worker::start(&redis, "refused", &plugin("echo", "rust"), &[]);
    node_add(&redis, "refused", jobs.clone());
    wait_until_ok(T, Duration::from_millis(20), "jobs not completed with functions refused", || {
        if completed(&mut c, "refused") >= n {
            Ok(())
        } else {
            Err(w.log())
        }
    });
    w.wait_log("Redis Functions unavailable", T);
    drop(w);
    let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("+@all").query(&mut c).unwrap();
    assert!(function_libraries(&mut c).is_empty(), "no library was loaded");

    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let _w = Worker::start(&redis, "off", &plugin("echo", "rust"), &["--redis-functions", "false"]);
    node_add(&redis, "off", jobs);
    wait_until(T, Duration::from_millis(20), "jobs not completed with --redis-functions false", || {
        (completed(&mut c, "off") >= n).then_some(())
    });
    assert_eq!(calls(&mut c, "fcall"), 0, "--redis-functions false: no FCALL");
    assert!(calls(&mut c, "evalsha") >= n, "moveToFinished ran as a script");
    assert!(function_libraries(&mut c).is_empty(), "--redis-functions false: no library");
}

/// flush.lua pushes log lines in batches of 1000 (one RPUSH each, not one
/// per line): a flush of more lines than a batch keeps every line, in order,
/// and `keepLogs` trims to the newest, as BullMQ's addLog does.
#[test]
fn a_flush_of_more_lines_than_a_batch_keeps_them_all_in_order() {
    let redis = Redis::start();
    let lua = |f: &str| std::fs::read_to_string(root().join("runtime/src/host/lua").join(f)).unwrap();
    let script = redis::Script::new(&format!("{}\n{}", lua("check_lock.lua"), lua("flush.lua")));
    let mut c = redis.conn();
    let lines: Vec<String> = (0..2_500).map(|i| format!("line {i}")).collect();
    for (queue, keep_logs, kept) in [("all", "", 2_500), ("kept", "1500", 1_500)] {
        let job = format!("bull:{queue}:1");
        let _: () = redis::cmd("HSET").arg(&job).arg("data").arg("{}").query(&mut c).unwrap();
        let _: () = redis::cmd("SET").arg(format!("{job}:lock")).arg("tok").query(&mut c).unwrap();
        let mut inv = script.prepare_invoke();
        for k in [
            job.clone(),
            format!("{job}:lock"),
            format!("{job}:logs"),
            format!("bull:{queue}:events"),
            format!("bull:{queue}:meta"),
        ] {
            inv.key(k);
        }
        inv.arg("tok").arg("1").arg(keep_logs).arg("1").arg(lines.len()).arg(&lines).arg("100");
        let count: i64 = inv.invoke(&mut c).unwrap();
        assert_eq!(count, kept as i64, "{queue}: the script's log count");
        let logs: Vec<String> = redis::cmd("LRANGE").arg(format!("{job}:logs")).arg(0).arg(-1).query(&mut c).unwrap();
        assert_eq!(logs, lines[lines.len() - kept..], "{queue}: every line kept, in order");
        let progress: String = redis::cmd("HGET").arg(&job).arg("progress").query(&mut c).unwrap();
        assert_eq!(progress, "100", "{queue}: the progress after the lines");
    }
}

/// Redis stopped (SIGSTOP) for longer than the client's response timeout
/// while a flush is on its way: the client sends the flush again, and when
/// Redis wakes up it runs every copy. Each line and progress event must
/// still be written once (the flush carries the attempt's write sequence
/// number, applied at most once: `host/lua/check_lock.lua`).
#[test]
fn a_flush_retried_while_redis_is_stopped_is_written_once() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "stall", &plugin("hog", "rust"), &[]);
    let events = NodeEvents::listen(&redis, "stall", 1, T);
    let ids = node_add(&redis, "stall", json!([{"name": "slow", "data": {"mode": "slow"}}]));
    let id = &ids[0];
    let mut c = redis.conn();
    wait_for_line(&mut c, "stall", id, "hog: step 1");
    // Step 2's line is queued ~400 ms after step 1's and flushed 100 ms
    // later; stopped for 1.5 s, Redis misses that flush and its retries.
    redis.pause(Duration::from_millis(1500));
    let v = wait_finished(&redis, "stall", &ids, T);
    let j = &v["jobs"][0];
    assert_eq!(j["state"], "completed", "{j:#}");
    assert!(w.log().contains("retrying"), "the flush was not retried; the test proves nothing:\n{}", w.log());
    let logs: Vec<&str> = j["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(logs[1..], ["hog: step 1", "hog: step 2", "hog: step 3"], "{logs:?}");
    let progress: Vec<Value> =
        events.finish().into_iter().filter(|e| e["event"] == "progress").map(|e| e["data"].clone()).collect();
    assert_eq!(progress, [json!(10), json!(20), json!(30)], "each progress event once, in order");
}

/// The flush script applies each write sequence number of an attempt at
/// most once: a second copy, or an older write arriving after a newer one,
/// changes nothing; the next attempt (a new lock token) starts again at 1.
#[test]
fn a_write_sequence_number_is_applied_at_most_once() {
    let redis = Redis::start();
    let lua = |f: &str| std::fs::read_to_string(root().join("runtime/src/host/lua").join(f)).unwrap();
    let script = redis::Script::new(&format!("{}\n{}", lua("check_lock.lua"), lua("flush.lua")));
    let mut c = redis.conn();
    let job = "bull:seq:1";
    let _: () = redis::cmd("HSET").arg(job).arg("data").arg("{}").query(&mut c).unwrap();
    let flush = |c: &mut redis::Connection, token: &str, seq: u64, line: &str| -> i64 {
        let _: () = redis::cmd("SET").arg(format!("{job}:lock")).arg(token).query(c).unwrap();
        let mut inv = script.prepare_invoke();
        for k in
            [job.into(), format!("{job}:lock"), format!("{job}:logs"), "bull:seq:events".into(), "bull:seq:meta".into()]
        {
            inv.key(k);
        }
        inv.arg(token).arg(seq).arg("").arg("1").arg(1).arg(line).arg(seq);
        inv.invoke(c).unwrap()
    };
    assert_eq!(flush(&mut c, "a", 1, "a1"), 1);
    assert_eq!(flush(&mut c, "a", 1, "a1"), 0, "a second copy is not applied");
    assert_eq!(flush(&mut c, "a", 2, "a2"), 2);
    assert_eq!(flush(&mut c, "a", 1, "a1"), 0, "an older write arriving late is not applied");
    assert_eq!(flush(&mut c, "b", 1, "b1"), 3, "a new attempt's first write is");
    let logs: Vec<String> = redis::cmd("LRANGE").arg(format!("{job}:logs")).arg(0).arg(-1).query(&mut c).unwrap();
    assert_eq!(logs, ["a1", "a2", "b1"]);
    let progress: Vec<Vec<(String, Vec<String>)>> =
        redis::cmd("XRANGE").arg("bull:seq:events").arg("-").arg("+").query(&mut c).unwrap();
    assert_eq!(progress.len(), 3, "one progress event per applied write");
}

/// The lock is lost after the guest's last host call (step 3's line is in
/// Redis; the guest then sleeps and returns): the finish is refused with
/// BullMQ's lock error. That is an expected race after a stall, so the
/// worker says so at info, in words, with no ERROR line; the stalled check
/// hands the job back and it completes once.
#[test]
fn a_finish_refused_for_a_lost_lock_is_not_an_error() {
    let redis = Redis::start();
    let w = Worker::start(&redis, "wf", &plugin("hog", "rust"), &["--stalled-interval-ms", "1000"]);
    let ids = node_add(&redis, "wf", json!([{"name": "slow", "data": {"mode": "slow"}}]));
    let id = &ids[0];
    let mut c = redis.conn();
    wait_for_line(&mut c, "wf", id, "hog: step 3");
    let _: () = redis::cmd("DEL").arg(format!("bull:wf:{id}:lock")).query(&mut c).unwrap();
    w.wait_log("this worker lost the job's lock", T);
    let v = wait_finished(&redis, "wf", &ids, T);
    assert_eq!(v["jobs"][0]["state"], "completed", "{v:#}");
    assert_eq!(v["jobs"][0]["attemptsMade"], 1);
    assert!(!w.log().contains("ERROR"), "{}", w.log());
}
