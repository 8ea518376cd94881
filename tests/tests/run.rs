//! `bullpen run`: a processor runs on one job held in memory, no
//! Redis; every host call is printed in order, then the outcome; exit 0 for
//! completed/moved, 1 for failed, 2 when it could not run.

use bullpen_tests::*;
use serde_json::{json, Value};

const LANGS: [&str; 4] = ["rust", "go", "js", "python"];

/// What `bullpen run` printed and how it exited.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The `--json` events, one object per line.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}\nstdout:\n{}", self.stdout))
            })
            .collect()
    }
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
    /// The events, each `stacktrace` left out once checked: every SDK sends
    /// one just before each failure, headed `Type: <the failure's reason>`
    /// and naming where (`    at ...`). The languages name types and files
    /// differently; `a_plain_error_retries_and_prints_its_stack` and the
    /// conformance suite check the rest.
    fn events_without_stacks(&self) -> Vec<Value> {
        let events = self.events();
        for (i, e) in events.iter().enumerate() {
            if e["event"] == "failed" && e["kind"] != "trap" {
                let stack = events.get(i.wrapping_sub(1)).filter(|p| p["event"] == "stacktrace");
                let stack = stack.unwrap_or_else(|| panic!("no stacktrace before {e}:\n{}", self.stdout))["stack"]
                    .as_str()
                    .unwrap();
                let reason = e["reason"].as_str().unwrap();
                assert!(stack.lines().next().unwrap().ends_with(&format!(": {reason}")), "{stack}");
                assert!(stack.contains("\n    at "), "{stack}");
            }
        }
        events.into_iter().filter(|e| e["event"] != "stacktrace").collect()
    }
    /// The lines, each stack (`stacktrace:` and its lines, printed just
    /// before a failure) left out once checked as in `events_without_stacks`.
    fn lines_without_stacks(&self) -> Vec<&str> {
        let mut out = vec![];
        let mut lines = self.stdout.lines();
        while let Some(line) = lines.next() {
            if line != "stacktrace:" {
                out.push(line);
                continue;
            }
            let head = lines.next().unwrap();
            let failed = lines.by_ref().find(|l| l.starts_with("failed (")).expect("a failure after its stack");
            let reason = failed.split_once("): ").unwrap().1;
            assert!(head.ends_with(&format!(": {reason}")), "{}", self.stdout);
            out.push(failed);
        }
        out
    }
}

fn run(args: &[&str]) -> Ran {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let out = bullpen(&all);
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn run_json(wasm: &std::path::Path, args: &[&str]) -> Ran {
    let mut all = vec![wasm.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    run(&all)
}

/// The events without their `delayMs` (it depends on the clock).
fn without_delay(mut events: Vec<Value>) -> Vec<Value> {
    for e in &mut events {
        if let Some(o) = e.as_object_mut() {
            if o.get("event") == Some(&json!("move-to-delayed")) {
                let d = o.remove("delayMs").unwrap().as_u64().unwrap();
                assert!(d <= 200, "delay is now+200 ms: {d}");
                o.remove("timestamp").unwrap();
            }
        }
    }
    events
}

#[test]
fn echo_prints_its_host_calls_and_completes() {
    for lang in LANGS {
        let r = run_json(
            &plugin("echo", lang),
            &["--data", r#"{"to":"ada","n":[1,2.5]}"#, "--name", "welcome", "--id", "order-7"],
        );
        assert_eq!(r.code, Some(0), "{lang}: {}", r.stderr);
        assert_eq!(
            r.events(),
            vec![
                json!({"event": "log", "line": "echo: job order-7 (welcome)"}),
                json!({"event": "update-progress", "progress": 100}),
                json!({"event": "completed", "returnvalue": {"to": "ada", "n": [1, 2.5]}}),
            ],
            "{lang}"
        );
    }
    // The readable form, one line per event.
    let r = run(&[plugin("echo", "rust").to_str().unwrap(), "--data", r#"{"to":"ada"}"#]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.lines(), vec![r#"log "echo: job 1 (job)""#, "update-progress 100", r#"completed {"to":"ada"}"#]);
}

#[test]
fn rate_limit_and_move_to_wait_print_the_call_and_the_move_then_run_on() {
    for lang in LANGS {
        let wasm = plugin("steps", lang);
        for (data, call, moved) in [
            (
                r#"{"rateLimitMs":1500}"#,
                json!({"event": "rate-limit", "delayMs": 1500}),
                json!({"event": "moved", "to": "wait", "rateLimited": true}),
            ),
            (r#"{"moveToWait":true}"#, json!({"event": "move-to-wait"}), json!({"event": "moved", "to": "wait"})),
        ] {
            let r = run_json(&wasm, &["--data", data, "--until-done"]);
            assert_eq!(r.code, Some(0), "{lang} {data}: {}", r.stderr);
            let events = without_delay(r.events());
            assert_eq!(
                events[..8],
                vec![
                    json!({"event": "log", "line": "steps: Initial"}),
                    json!({"event": "update-data", "data": serde_json::from_str::<Value>(&data.replace('{', r#"{"step":"Second","#)).unwrap()}),
                    json!({"event": "log", "line": "steps: Second"}),
                    json!({"event": "update-data", "data": {"step": "Second"}}),
                    call,
                    moved,
                    json!({"event": "next-attempt", "attemptsMade": 0, "attemptsStarted": 2}),
                    json!({"event": "log", "line": "steps: Second"}),
                ],
                "{lang} {data}"
            );
            assert_eq!(events.last().unwrap()["event"], "completed", "{lang} {data}");
        }
        // A rate limit of 0 ms is refused as invalid, like Redis's PX 0.
        let r = run_json(&wasm, &["--data", r#"{"rateLimitMs":0}"#]);
        assert_eq!(r.code, Some(1), "{lang}");
        let refused = r.events().into_iter().find(|e| e["event"] == "rate-limit").unwrap();
        assert_eq!(refused["error"]["kind"], "invalid", "{lang}: {refused}");
    }
}

#[test]
fn steps_moves_and_runs_until_done_with_the_updated_data() {
    for lang in LANGS {
        let wasm = plugin("steps", lang);
        // One attempt: two steps, then the job moves to delayed.
        let r = run_json(&wasm, &["--data", r#"{"order":9}"#]);
        assert_eq!(r.code, Some(0), "{lang}: moved is not a failure; {}", r.stderr);
        assert_eq!(
            without_delay(r.events()),
            vec![
                json!({"event": "log", "line": "steps: Initial"}),
                json!({"event": "update-data", "data": {"step": "Second", "order": 9}}),
                json!({"event": "log", "line": "steps: Second"}),
                json!({"event": "update-data", "data": {"step": "Third", "order": 9}}),
                json!({"event": "move-to-delayed"}),
                json!({"event": "moved", "to": "delayed"}),
            ],
            "{lang}"
        );

        // Until done: each attempt sees the data the last one wrote; the
        // children added are pending, then finished after the wait.
        let children = r#"{"bull:local-children:1-child-1":"one","bull:local-children:1-child-2":2}"#;
        let r = run_json(&wasm, &["--data", r#"{"order":9}"#, "--until-done", "--children-values", children]);
        assert_eq!(r.code, Some(0), "{lang}: {}", r.stderr);
        let child = |i: u32| {
            json!({"event": "add-child", "queue": "local-children", "name": "child",
                   "data": {"child": i, "parent": "1"}, "opts": {"jobId": format!("1-child-{i}")}, "result": format!("1-child-{i}")})
        };
        let events = without_delay(r.events());
        assert_eq!(
            events[4..],
            vec![
                json!({"event": "move-to-delayed"}),
                json!({"event": "moved", "to": "delayed"}),
                json!({"event": "next-attempt", "attemptsMade": 0, "attemptsStarted": 2}),
                json!({"event": "log", "line": "steps: Third"}),
                child(1),
                child(2),
                json!({"event": "update-data", "data": {"step": "Finish", "order": 9}}),
                json!({"event": "wait-for-children", "result": true}),
                json!({"event": "moved", "to": "waiting-children"}),
                json!({"event": "next-attempt", "attemptsMade": 0, "attemptsStarted": 3}),
                json!({"event": "log", "line": "steps: Finish"}),
                json!({"event": "children-values", "result": {"bull:local-children:1-child-1": "one", "bull:local-children:1-child-2": 2}}),
                json!({"event": "completed", "returnvalue": {"step": "Finish", "children": {"bull:local-children:1-child-1": "one", "bull:local-children:1-child-2": 2}}}),
            ][..],
            "{lang}: {}",
            r.stdout
        );
    }
}

#[test]
fn flaky_failures_exit_non_zero_and_retry_until_done() {
    for lang in LANGS {
        let wasm = plugin("flaky", lang);
        let r = run_json(&wasm, &["--data", r#"{"failTimes":2}"#]);
        assert_eq!(r.code, Some(1), "{lang}: a failed attempt exits 1; {}", r.stderr);
        assert_eq!(
            r.events_without_stacks(),
            vec![json!({"event": "failed", "kind": "retry", "reason": "flaky: failing attempt 1 of 2"})],
            "{lang}"
        );

        // --attempts-made feeds the job: the third attempt succeeds.
        let r = run_json(&wasm, &["--data", r#"{"failTimes":2}"#, "--attempts-made", "2"]);
        assert_eq!(r.code, Some(0), "{lang}: {}", r.stderr);
        assert_eq!(
            r.events_without_stacks(),
            vec![
                json!({"event": "log", "line": "flaky: succeeded on attempt 3"}),
                json!({"event": "completed", "returnvalue": {"succeededOnAttempt": 3}}),
            ],
            "{lang}"
        );

        let r = run_json(&wasm, &["--data", r#"{"failTimes":1,"retryAfterMs":5000}"#]);
        assert_eq!(r.code, Some(1), "{lang}");
        assert_eq!(
            r.events_without_stacks(),
            vec![
                json!({"event": "failed", "kind": "retry-after", "reason": "flaky: failing attempt 1 of 1", "delayMs": 5000})
            ],
            "{lang}"
        );
        // Unrecoverable: no retry, whatever `attempts` says.
        let r = run_json(&wasm, &["--data", r#"{"fatal":true}"#, "--opts", r#"{"attempts":3}"#, "--until-done"]);
        assert_eq!(r.code, Some(1), "{lang}");
        assert_eq!(
            r.events_without_stacks(),
            vec![json!({"event": "failed", "kind": "unrecoverable", "reason": "flaky: fatal error on attempt 1"})],
            "{lang}"
        );
    }

    // Until done: retried while `attempts` allow, then completed ...
    let r = run(&[
        plugin("flaky", "rust").to_str().unwrap(),
        "--data",
        r#"{"failTimes":2}"#,
        "--opts",
        r#"{"attempts":3}"#,
        "--until-done",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.lines_without_stacks(),
        vec![
            "failed (retry): flaky: failing attempt 1 of 2",
            "next attempt: attemptsMade=1 attemptsStarted=2 (retry 2 of 3, not waiting for backoff)",
            "failed (retry): flaky: failing attempt 2 of 2",
            "next attempt: attemptsMade=2 attemptsStarted=3 (retry 3 of 3, not waiting for backoff)",
            r#"log "flaky: succeeded on attempt 3""#,
            r#"completed {"succeededOnAttempt":3}"#,
        ]
    );
    // ... or failed for good when they run out.
    let r = run(&[
        plugin("flaky", "rust").to_str().unwrap(),
        "--data",
        r#"{"failTimes":5}"#,
        "--opts",
        r#"{"attempts":2}"#,
        "--until-done",
    ]);
    assert_eq!(r.code, Some(1));
    let lines = r.lines_without_stacks();
    assert_eq!(lines.last(), Some(&"failed (retry): flaky: failing attempt 2 of 5"), "{}", r.stdout);
    assert_eq!(lines.len(), 3, "{}", r.stdout);
}

/// A plain error is a retry with its message; `bullpen run` prints the
/// stack a worker would append to the job's `stacktrace`, just before.
#[test]
fn a_plain_error_retries_and_prints_its_stack() {
    let r = run_json(&plugin("flaky", "rust"), &["--data", r#"{"plainError":true}"#]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let events = r.events();
    let [.., stack, failed] = &events[..] else { panic!("{events:?}") };
    assert_eq!(failed["event"], "failed");
    assert_eq!(failed["kind"], "retry");
    assert_eq!(failed["reason"], "flaky: plain error on attempt 1");
    assert_eq!(stack["event"], "stacktrace");
    let stack = stack["stack"].as_str().unwrap();
    assert!(
        stack.starts_with("std::io::error::Error: flaky: plain error on attempt 1\n    at flaky/rust/src/lib.rs:"),
        "{stack}"
    );
}

#[test]
fn traps_and_limits_fail_with_their_named_reason() {
    // A Rust panic: the trap, with the panic message and the guest's stderr.
    let r = run_json(&plugin("flaky", "rust"), &["--data", r#"{"panic":true}"#]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let events = r.events();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "failed");
    assert_eq!(last["kind"], "trap");
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("wasm trap: ") && reason.contains("guest panicked: flaky: asked to panic on attempt 1"),
        "{reason}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "output" && e["line"].as_str().unwrap().contains("panicked at")),
        "{events:?}"
    );

    let hog = plugin("hog", "rust");
    let r = run(&[hog.to_str().unwrap(), "--data", r#"{"mode":"loop"}"#, "--timeout-ms", "500"]);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.lines(),
        vec!["failed (timeout): attempt timed out: exceeded the wall-clock limit of 500 ms (--timeout-ms)"]
    );

    let r = run(&[hog.to_str().unwrap(), "--data", r#"{"mode":"memory"}"#, "--max-memory-mb", "32"]);
    assert_eq!(r.code, Some(1));
    let line = r.lines().last().unwrap().to_string();
    assert!(
        line.starts_with("failed (trap): out of memory:") && line.contains("the limit of 32 MiB (--max-memory-mb)"),
        "{line}"
    );

    let r = run(&[hog.to_str().unwrap(), "--data", r#"{"mode":"loop"}"#, "--fuel", "1000000"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.lines()
            .last()
            .unwrap()
            .starts_with("failed (trap): out of fuel: the attempt used up its 1000000 units of fuel (--fuel)"),
        "{}",
        r.stdout
    );
}

#[test]
fn host_calls_get_the_workers_argument_checks() {
    // A 100 KiB log line is refused (the guest sees `invalid`), as in a worker.
    let r = run(&[plugin("hog", "rust").to_str().unwrap(), "--data", r#"{"mode":"biglog"}"#]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines = r.lines();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(
        lines[0].starts_with(r#"log "xxxx"#)
            && lines[0]
                .ends_with("… (102400 bytes)\" -> refused (invalid): log line is 102400 bytes; the limit is 65536"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(r#"completed {"refused":"#) && lines[1].contains("log line is 102400 bytes"),
        "{}",
        lines[1]
    );

    // Children go only to the queues `--child-queue` allows (default: the
    // queue and `<queue>-children`).
    let data = r#"{"step":"Third","childQueue":"elsewhere"}"#;
    let r = run_json(&plugin("steps", "rust"), &["--data", data]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    let events = r.events();
    assert_eq!(events[1]["event"], "add-child");
    assert_eq!(events[1]["error"]["kind"], "invalid");
    assert!(
        events[1]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("queue `elsewhere` is not one this binding may add children to"),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap()["event"], "failed");
    let r = run_json(&plugin("steps", "rust"), &["--data", data, "--child-queue", "elsewhere"]);
    assert_eq!(r.code, Some(0), "{}", r.stdout);
    assert_eq!(r.events().last().unwrap(), &json!({"event": "moved", "to": "waiting-children"}));

    // Guest output is printed in order, bounded as the job log is.
    let r = run_json(&plugin("hog", "rust"), &["--data", r#"{"mode":"output"}"#]);
    assert_eq!(r.code, Some(0));
    let events = r.events();
    let n = events.len();
    assert_eq!(events[0], json!({"event": "output", "line": format!("0 {}", "hog: flooding stdout ".repeat(4))}));
    assert!(events[n - 2]["line"].as_str().unwrap().starts_with("[bullpen] output truncated"), "{:?}", events[n - 2]);
    assert_eq!(events[n - 1], json!({"event": "completed", "returnvalue": {"printed": 100000}}));
}

#[test]
fn bad_arguments_and_bad_files_are_clear_errors() {
    let echo = plugin("echo", "rust");
    let r = run(&[echo.to_str().unwrap(), "--data", "{not json"]);
    assert_eq!(r.code, Some(2), "could not run: exit 2");
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("error: --data is not valid JSON: \"{not json\""), "{}", r.stderr);

    let r = run(&[echo.to_str().unwrap(), "--opts", r#"{"attempts":"many"}"#]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("error: --opts is not valid BullMQ job options"), "{}", r.stderr);

    let r = run(&[echo.to_str().unwrap(), "--children-values", "[1]"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--children-values must be a JSON object"), "{}", r.stderr);

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "hello").unwrap();
    let r = run(&[text.to_str().unwrap()]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains(&format!("error: {} is not a WebAssembly file", text.display())), "{}", r.stderr);

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let r = run(&[core.to_str().unwrap()]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("is a core WebAssembly module, not a component"), "{}", r.stderr);

    let r = run(&[dir.path().join("missing.wasm").to_str().unwrap()]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("cannot read plugin"), "{}", r.stderr);
}
