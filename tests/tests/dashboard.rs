//! bull-board (the real @bull-board/api + @bull-board/express)
//! works against queues bullpen processed. bullpen's echo and flaky plugins
//! process Node-added jobs, tests/node/dashboard.js serves bull-board for the
//! two queues, and headless Chromium (Debian's `chromium`, driven through
//! puppeteer-core) reads the completed and failed views.
//!
//! The screenshot lands in target/bull-board.png; with
//! BULLPEN_UPDATE_SCREENSHOT=1 it also replaces docs/bull-board.png.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
/// Chromium's first start on a loaded machine can take a while.
const BROWSER_T: Duration = Duration::from_secs(180);

/// A process in its own process group, SIGKILLed as a group on drop (also
/// when the test panics): Chromium forks zygote, GPU and renderer processes.
struct Group(Child);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        Group(cmd.process_group(0).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).stderr(Stdio::null()).status();
        let _ = self.0.wait();
    }
}

/// `node dashboard.js serve`: bull-board for `queues` on a free port.
fn serve_board(redis: &Redis, queues: &[&str]) -> (Group, String) {
    let mut server = Group::spawn(
        Command::new("node")
            .arg(root().join("tests/node/dashboard.js"))
            .args(["serve", &redis.url(), &queues.join(",")])
            .stdout(Stdio::piped()),
    );
    // Its first stdout line is {"url": ...} once it listens.
    let stdout = server.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(T).expect("bull-board server did not start listening within 60 s");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bull-board server said {line:?}: {e}"));
    (server, v["url"].as_str().unwrap().to_string())
}

/// Headless Chromium with a DevTools endpoint on a free port; returns it and
/// the browser's WebSocket URL.
fn start_chromium(dir: &Path) -> (Group, String) {
    let bin = std::env::var("BULLPEN_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = dir.join("profile");
    let log = dir.join("chromium.log");
    let mut chromium = Group::spawn(
        Command::new(&bin)
            // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    // Chromium writes the port it picked and the browser's path here.
    let port_file = profile.join("DevToolsActivePort");
    let ws = wait_until_ok(BROWSER_T, Duration::from_millis(100), &format!("{bin} opened no DevTools port"), || {
        if let Ok(s) = std::fs::read_to_string(&port_file) {
            let mut lines = s.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return Ok(format!("ws://127.0.0.1:{port}{path}"));
            }
        }
        if let Ok(Some(status)) = chromium.0.try_wait() {
            panic!("{bin} exited ({status}) before opening DevTools (scripts/setup.sh installs Debian's chromium); log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Err(format!("log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
    });
    (chromium, ws)
}

/// `node dashboard.js browse`: open `url` in Chromium, wait for `wait_for`,
/// open `tabs` of every job card; returns the job cards keyed by id.
fn browse(ws: &str, url: &str, wait_for: &str, screenshot: Option<&Path>, tabs: &[&str]) -> Value {
    let shot = screenshot.map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut node = Group::spawn(
        Command::new("node")
            .arg(root().join("tests/node/dashboard.js"))
            .args(["browse", ws, url, wait_for, &shot])
            .args(tabs)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let status = wait_until(BROWSER_T, Duration::from_millis(100), &format!("browsing {url} never ended"), || {
        node.0.try_wait().unwrap()
    });
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "browsing {url} (waiting for {wait_for:?}) failed: {status}\n{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    let mut cards = serde_json::Map::new();
    for job in v["jobs"].as_array().unwrap() {
        cards.insert(job["id"].as_str().unwrap_or("?").to_string(), job.clone());
    }
    Value::Object(cards)
}

/// A job card's text with one tab open.
fn tab<'a>(cards: &'a Value, id: &str, tab: &str) -> &'a str {
    cards[id]["tabs"][tab].as_str().unwrap_or_else(|| panic!("no {tab:?} tab on job card {id}: {cards:#}"))
}

/// The part of a Data tab after `returnValue:` (echo returns its data, so
/// the data alone must not satisfy the check).
fn return_value(data_tab: &str) -> &str {
    data_tab.split_once("returnValue:").unwrap_or_else(|| panic!("no returnValue shown: {data_tab}")).1
}

#[test]
fn bull_board_shows_jobs_bullpen_processed() {
    let started = Instant::now();
    let redis = Redis::start();
    let emails = node_add(
        &redis,
        "emails",
        json!([
            {"name": "welcome", "data": {"to": "ada@example.com", "template": "welcome"}},
            {"name": "digest", "data": {"to": "grace@example.com", "items": 3}},
        ]),
    );
    let payments = node_add(
        &redis,
        "payments",
        json!([
            {"name": "charge", "data": {"failTimes": 1}, "opts": {"attempts": 2}},
            {"name": "refund", "data": {"fatal": true}, "opts": {"attempts": 3}},
            {"name": "capture", "data": {"failTimes": 5}, "opts": {"attempts": 2}},
        ]),
    );
    let w1 = Worker::start(&redis, "emails", &plugin("echo", "rust"), &[]);
    let w2 = Worker::start(&redis, "payments", &plugin("flaky", "rust"), &[]);
    let e = wait_finished(&redis, "emails", &emails, T);
    let p = wait_finished(&redis, "payments", &payments, T);
    let states: Vec<&Value> = p["jobs"].as_array().unwrap().iter().map(|j| &j["state"]).collect();
    assert_eq!(states, [&json!("completed"), &json!("failed"), &json!("failed")], "{p:#}");
    assert!(e["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "completed"), "{e:#}");

    let (_server, board) = serve_board(&redis, &["emails", "payments"]);
    let dir = tempfile::tempdir().unwrap();
    let (_chromium, ws) = start_chromium(dir.path());
    let shot = root().join("target/bull-board.png");
    let _ = std::fs::remove_file(&shot);

    // Completed echo jobs: return value, log lines, progress 100.
    let cards =
        browse(&ws, &format!("{board}/queue/emails?status=completed"), "welcome", Some(&shot), &["Logs", "Data"]);
    assert_eq!(cards.as_object().unwrap().len(), 2, "{cards:#}");
    for (id, (name, to)) in emails.iter().zip([("welcome", "ada@example.com"), ("digest", "grace@example.com")]) {
        let data = tab(&cards, id, "Data");
        assert!(data.contains(name), "card {id} does not name {name}: {data}");
        assert!(return_value(data).contains(&format!("to:\"{to}\"")), "card {id}'s return value lacks {to}: {data}");
        let logs = tab(&cards, id, "Logs");
        assert!(logs.contains(&format!("echo: job {id} ({name})")), "card {id}'s logs: {logs}");
        assert!(logs.contains("bullpen: plugin sha256:"), "card {id}'s logs: {logs}");
        assert!(data.contains("100%"), "card {id} shows no 100% progress: {data}");
    }

    // The flaky job that succeeded on its second attempt.
    let cards = browse(&ws, &format!("{board}/queue/payments?status=completed"), "charge", None, &["Logs", "Data"]);
    let id = &payments[0];
    assert!(return_value(tab(&cards, id, "Data")).contains("succeededOnAttempt:2"), "{cards:#}");
    assert!(tab(&cards, id, "Logs").contains("flaky: succeeded on attempt 2"), "{cards:#}");
    assert!(!tab(&cards, id, "Data").contains("100%"), "flaky reports no progress, the card shows some: {cards:#}");

    // Failed jobs: the failed reason (unrecoverable, and retries exhausted) and the logs.
    let cards = browse(&ws, &format!("{board}/queue/payments?status=failed"), "refund", None, &["Error", "Logs"]);
    assert_eq!(cards.as_object().unwrap().len(), 2, "{cards:#}");
    for (id, reason) in
        [(&payments[1], "flaky: fatal error on attempt 1"), (&payments[2], "flaky: failing attempt 2 of 5")]
    {
        let error = tab(&cards, id, "Error");
        assert!(error.contains(reason), "card {id} lacks failed reason {reason:?}: {error}");
        assert!(tab(&cards, id, "Logs").contains("bullpen: plugin sha256:"), "{cards:#}");
    }

    let png = std::fs::read(&shot).expect("no screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} is not a screenshot", shot.display());
    if std::env::var_os("BULLPEN_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, root().join("docs/bull-board.png")).unwrap();
    }
    // The workers stayed up so the board lists them; they stop cleanly.
    assert!(w1.stop().success() && w2.stop().success());
    eprintln!("bull-board test took {:?}", started.elapsed());
}
