//! Production Redis setups (issue 23): TLS with a private CA and mutual
//! TLS, credentials, and connection failures told in one line within the
//! connect timeout. Certificates are made by the test (openssl); every
//! server is a local redis-server.

use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::json;

/// `<command> <redis args> <rest>`.
fn args<'a>(redis: &'a [String], command: &[&'a str]) -> Vec<&'a str> {
    let (cmd, rest) = command.split_first().unwrap();
    std::iter::once(*cmd).chain(redis.iter().map(String::as_str)).chain(rest.iter().copied()).collect()
}

/// A worker reading its TLS files from bullpen.toml (paths relative to the
/// file) serves jobs a Node producer adds over mutual TLS; `add`, `stats`,
/// `inspect` and `deploy` work over TLS with the flags.
#[test]
fn tls_worker_and_every_command_over_mutual_tls() {
    let certs = Certs::make();
    let redis = Redis::start_tls(&certs, true, &[]);
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "client.pem", "client.key"] {
        std::fs::copy(certs.path(f), dir.path().join(f)).unwrap();
    }
    let config = dir.path().join("bullpen.toml");
    std::fs::write(
        &config,
        format!(
            "redis = \"{}\"\nredis_ca = \"ca.pem\"\nredis_cert = \"client.pem\"\nredis_key = \"client.key\"\n\
             [[queues]]\nname = \"tls\"\nplugin = \"{}\"\nconcurrency = 4\n",
            redis.url(),
            plugin("echo", "rust").display()
        ),
    )
    .unwrap();
    let worker = Worker::spawn(&["--config", config.to_str().unwrap()]);

    let jobs: Vec<_> = (0..20).map(|i| json!({"name": "t", "data": {"i": i}})).collect();
    let mut ids = node_add(&redis, "tls", json!(jobs));
    let r = redis.args();
    let out = bullpen(&args(&r, &["add", "--queue", "tls", "t", r#"{"from":"bullpen"}"#]));
    assert!(out.status.success(), "add over TLS: {}", String::from_utf8_lossy(&out.stderr));
    ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let v = wait_finished(&redis, "tls", &ids, Duration::from_secs(30));
    for j in v["jobs"].as_array().unwrap() {
        assert_eq!(j["state"], "completed", "{j}");
    }

    let out = bullpen(&args(&r, &["stats", "--queue", "tls", "--json"]));
    assert!(out.status.success(), "stats over TLS: {}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["counts"]["completed"], 21, "{s}");
    let out = bullpen(&args(&r, &["inspect", "--queue", "tls", ids.last().unwrap()]));
    assert!(out.status.success(), "inspect over TLS: {}", String::from_utf8_lossy(&out.stderr));
    let p = plugin("echo", "rust");
    let out = bullpen(&args(&r, &["deploy", "--queue", "tls-deploy", p.to_str().unwrap()]));
    assert!(out.status.success(), "deploy over TLS: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(worker.stop().code(), Some(0));
}

/// A default password and an ACL user `app` with its own.
const WITH_ACL_USER: [&str; 9] =
    ["--requirepass", "default-Secret-1", "--user", "app", "on", ">app-Secret-2", "~*", "&*", "+@all"];

/// An ACL user and password in the URL, a password from a file, and one
/// from $REDIS_PASSWORD all authenticate; no log line of the worker (at
/// debug level) or of a command shows a password.
#[test]
fn auth_from_the_url_a_file_or_the_environment_and_never_logged() {
    let redis = Redis::start_with(&WITH_ACL_USER);
    let secrets = ["default-Secret-1", "app-Secret-2"];
    let port = redis.port;
    let user_url = format!("redis://app:app-Secret-2@127.0.0.1:{port}");
    let p = plugin("echo", "rust");
    let worker = Worker::spawn_env(
        &["--redis", &user_url, "--queue", "auth", "--plugin", p.to_str().unwrap()],
        &[("BULLPEN_LOG", "debug")],
    );
    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("redis-password");
    std::fs::write(&pass_file, "app-Secret-2\n").unwrap();
    let pf = pass_file.to_str().unwrap();
    let user_only = format!("redis://app@127.0.0.1:{port}");
    let out = bullpen(&["add", "--redis", &user_only, "--redis-password-file", pf, "--queue", "auth", "n", "{}"]);
    assert!(out.status.success(), "password file: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let no_pass = format!("redis://127.0.0.1:{port}");
    let out = std::process::Command::new(bullpen_bin())
        .args(["stats", "--redis", &no_pass, "--queue", "auth", "--json"])
        .env("REDIS_PASSWORD", "default-Secret-1")
        .env("BULLPEN_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "$REDIS_PASSWORD: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = bullpen(&["inspect", "--redis", &user_url, "--queue", "auth", &id]);
        assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "job never completed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut logs = String::from_utf8_lossy(&out.stderr).into_owned();
    logs += &worker.log();
    assert!(worker.log().contains("app:***@"), "the worker names its Redis masked: {}", worker.log());
    drop(worker);
    for s in secrets {
        assert!(!logs.contains(s), "a password in the logs:\n{logs}");
    }
}

/// What one command does against a broken Redis (a cell of the table).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Exit 1 within [`BOUND`]; stderr is one `error:` line naming the
    /// cause once (after the row's notice, if it has one); nothing on stdout.
    Fails,
    /// (worker) Keep running, having logged the cause once; once the outage
    /// ends, serve the queue: every job completes.
    Waits,
    /// Succeed (a read on a server that refuses only writes).
    Works,
}
use Expect::{Fails, Waits, Works};

/// The table's columns.
const COMMANDS: [&str; 5] = ["worker", "add", "stats", "deploy", "inspect"];
/// `--connect-timeout-ms` of every run.
const TIMEOUT_MS: u64 = 2000;
/// The connect timeout plus slack for starting a process on a busy machine.
const BOUND: Duration = Duration::from_secs(4);
/// In every URL that has a password: no output may show it.
const PASSWORD: &str = "Row-Secret-9";

/// A row of the table: one way Redis is unusable, and each command's cell.
struct Row {
    failure: &'static str,
    /// `--redis`; its password (if any) is [`PASSWORD`] or `not-the-Secret`.
    url: String,
    /// More connection flags (`--redis-ca ...`).
    flags: Vec<String>,
    /// In the error line (and, for a waiting worker, its warning).
    cause: &'static str,
    /// worker, add, stats, deploy, inspect.
    cells: [Expect; 5],
    /// A line a failing one-shot command writes before its error (it waited, saying so).
    notice: Option<&'static str>,
    /// A failing command takes at least this long (it waits the connect timeout out).
    at_least: Duration,
    /// The server's data (an authenticated URL) and the jobs added to it
    /// before the row: a refused `add` must have added none, and once the
    /// outage ends the waiting worker must complete them all.
    data: Option<(String, usize)>,
}

impl Row {
    fn new(failure: &'static str, url: String, cause: &'static str, cells: [Expect; 5]) -> Self {
        Row { failure, url, flags: vec![], cause, cells, notice: None, at_least: Duration::ZERO, data: None }
    }
}

/// `url` as bullpen prints it.
fn masked(url: &str) -> String {
    url.replace(PASSWORD, "***").replace("not-the-Secret", "***")
}

/// `bullpen add` one job once the outage is over; its id. (Waits up to
/// 30 s: on a busy machine the LOADING row's load outlasts the default 5.)
fn add_job(url: &str) -> String {
    let out = bullpen(&["add", "--redis", url, "--connect-timeout-ms", "30000", "--queue", "q", "n", "{}"]);
    assert!(out.status.success(), "add to {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn data_conn(url: &str) -> redis::Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

/// How many jobs queue `q` ever got (BullMQ's id counter), and how many completed.
fn jobs(url: &str) -> (usize, usize) {
    let mut c = data_conn(url);
    let added: Option<usize> = redis::cmd("GET").arg("bull:q:id").query(&mut c).unwrap();
    let completed: usize = redis::cmd("ZCARD").arg("bull:q:completed").query(&mut c).unwrap();
    (added.unwrap_or(0), completed)
}

/// A worker that waits out an outage.
struct Waiting {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Run one cell and check it: exit code, elapsed time, the one line. A
/// waiting worker is returned still running.
fn run_cell(row: &Row, cmd: &str, expect: Expect) -> Option<Waiting> {
    let p = plugin("echo", "rust").to_str().unwrap().to_string();
    let timeout = TIMEOUT_MS.to_string();
    let mut a: Vec<&str> = vec![cmd, "--redis", &row.url, "--connect-timeout-ms", &timeout];
    a.extend(row.flags.iter().map(String::as_str));
    a.extend(["--queue", "q"]);
    a.extend(match cmd {
        "worker" => vec!["--plugin", &p],
        "add" => vec!["n", "{}"],
        "deploy" => vec![p.as_str()],
        "inspect" => vec!["1"],
        _ => vec![],
    });
    let dir = tempfile::tempdir().unwrap();
    let (log, out) = (dir.path().join("stderr"), dir.path().join("stdout"));
    let t = Instant::now();
    let mut child = std::process::Command::new(bullpen_bin())
        .args(&a)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let what = format!("{} / {cmd}", row.failure);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let check_masked = |err: &str| {
        assert!(!err.contains(PASSWORD) && !err.contains("not-the-Secret"), "{what}: a password shown:\n{err}");
        assert!(err.contains(&masked(&row.url)), "{what}: the URL, masked, should be named:\n{err}");
    };
    if expect == Waits {
        while !read().contains(row.cause) {
            assert!(t.elapsed() < BOUND, "{what}: no {:?} within {BOUND:?}:\n{}", row.cause, read());
            assert!(child.try_wait().unwrap().is_none(), "{what}: exited, but should wait:\n{}", read());
            std::thread::sleep(Duration::from_millis(20));
        }
        check_masked(&read());
        eprintln!("{what}: waits, saying so in {:.1?}", t.elapsed());
        // Still waiting (several retries later), having said so once.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(child.try_wait().unwrap().is_none(), "{what}: exited, but should wait:\n{}", read());
        assert_eq!(read().matches(row.cause).count(), 1, "{what}: the outage should be logged once:\n{}", read());
        return Some(Waiting { child, log, _dir: dir });
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > BOUND + Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{what}: still running after {:?}; stderr:\n{}", t.elapsed(), read());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let err = read();
    eprintln!("{what}: exit {:?} in {elapsed:.1?}: {}", status.code(), err.lines().last().unwrap_or_default());
    assert!(elapsed < BOUND, "{what}: took {elapsed:?} (bound {BOUND:?}); stderr:\n{err}");
    if expect == Works {
        assert!(status.success(), "{what}: should work:\n{err}");
        return None;
    }
    assert_eq!(status.code(), Some(1), "{what}: exit code; stderr:\n{err}");
    assert!(elapsed >= row.at_least, "{what}: took only {elapsed:?}, should wait {:?}:\n{err}", row.at_least);
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(stdout.is_empty(), "{what}: nothing on stdout (no job id), got {stdout:?}");
    let lines: Vec<&str> = err.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(row.cause),
        "{what}: want {:?} in the last line:\n{err}",
        row.cause
    );
    assert_eq!(last.matches(row.cause).count(), 1, "{what}: cause repeated: {last}");
    assert!(!last.contains(" script: "), "{what}: the line names a script sha instead of just the cause: {last}");
    match row.notice {
        Some(n) => assert!(lines.len() == 2 && lines[0].contains(n), "{what}: {n:?}, then the error:\n{err}"),
        None => assert_eq!(lines.len(), 1, "{what}: one line:\n{err}"),
    }
    check_masked(&err);
    None
}

/// Run a row: its five commands at once, then (for a waiting worker)
/// `heal` the outage and see the worker complete every job, none lost.
fn run_row(row: Row, heal: Option<&mut dyn FnMut()>) {
    let waiting = std::thread::scope(|s| {
        let row = &row;
        let runs: Vec<_> =
            COMMANDS.iter().zip(row.cells).map(|(&cmd, e)| s.spawn(move || run_cell(row, cmd, e))).collect();
        runs.into_iter().filter_map(|h| h.join().unwrap()).next()
    });
    let Some(mut w) = waiting else { return };
    let what = row.failure;
    if let (Some(heal), Some((url, seeded))) = (heal, &row.data) {
        heal();
        add_job(url);
        // Exactly the jobs added before and this one: a refused `add`
        // (which printed no id: run_cell) added none.
        let all = seeded + 1;
        wait_until(Duration::from_secs(30), POLL, &format!("{what}: the worker never completed {all} jobs"), || {
            (jobs(url) == (all, all)).then_some(())
        });
    }
    terminate(&mut w.child);
    let log = std::fs::read_to_string(&w.log).unwrap();
    assert_eq!(w.child.wait().unwrap().code(), Some(0), "{what}: worker exit:\n{log}");
    assert_eq!(log.matches(row.cause).count(), 1, "{what}: the outage should be logged once:\n{log}");
}

/// Issue 23 item 3: every way Redis can be unusable (rows) for `worker`,
/// `add`, `stats`, `deploy` and `inspect` (columns). One-shot commands exit
/// 1 within the connect timeout in one line naming the cause, the password
/// masked, and `add` adds no job; the worker stops on a wrong setting and
/// waits out an outage, said once, then completes every job.
#[test]
fn connection_failures_table() {
    let pw = PASSWORD;
    let with_pw = |port: u16| format!("redis://:{pw}@127.0.0.1:{port}");
    let waits = [Waits, Fails, Fails, Fails, Fails];
    let every_command_fails = [Fails; 5];
    let two_s = Duration::from_millis(TIMEOUT_MS);

    // Redis killed: its port refuses; started again to heal.
    let mut down = Redis::start_with(&["--requirepass", pw]);
    let down_url = with_pw(down.port);
    down.kill();
    let mut refused = Row::new("refused", down_url.clone(), "connection refused", waits);
    refused.data = Some((down_url, 0));
    run_row(refused, Some(&mut || down.start_again()));

    run_row(
        Row::new(
            "unknown host",
            format!("redis://:{pw}@nothing.invalid:6379"),
            "unknown host `nothing.invalid`",
            waits,
        ),
        None,
    );

    // A hung server (SIGSTOP): the kernel accepts, nothing answers. A job waits in it.
    let hung = Redis::start_with(&["--requirepass", pw]);
    let hung_url = with_pw(hung.port);
    add_job(&hung_url);
    hung.stop();
    let mut timeout = Row::new("timeout", hung_url.clone(), "no answer within 2000 ms", waits);
    timeout.at_least = two_s;
    timeout.data = Some((hung_url, 1));
    run_row(timeout, Some(&mut || hung.resume()));

    let certs = Certs::make();
    let tls = Redis::start_tls(&certs, false, &[]);
    let tls_url = format!("rediss://:{pw}@127.0.0.1:{}", tls.port);
    let mut untrusted =
        Row::new("TLS: CA not trusted", tls_url.clone(), "certificate is not trusted", every_command_fails);
    untrusted.flags = vec!["--redis-ca".into(), certs.arg("other-ca.pem")];
    run_row(untrusted, None);
    run_row(
        Row::new("TLS: webpki roots, private CA", tls_url, "certificate is not trusted", every_command_fails),
        None,
    );
    let mutual = Redis::start_tls(&certs, true, &[]);
    let mut no_cert = Row::new(
        "TLS: no client certificate",
        format!("rediss://:{pw}@127.0.0.1:{}", mutual.port),
        "TLS handshake failed",
        every_command_fails,
    );
    no_cert.flags = vec!["--redis-ca".into(), certs.arg("ca.pem")];
    run_row(no_cert, None);
    let plain = Redis::start();
    run_row(
        Row::new(
            "TLS: a plaintext port",
            format!("rediss://:{pw}@127.0.0.1:{}", plain.port),
            "TLS handshake failed (no answer to it, and the port answers plaintext Redis",
            every_command_fails,
        ),
        None,
    );
    // The other way round: a TLS server just closes (as a proxy with no
    // backend would, so the worker waits).
    run_row(
        Row::new(
            "plaintext to a TLS port",
            format!("redis://:{pw}@127.0.0.1:{}", mutual.port),
            "closed the connection before answering (a TLS-only port? then use rediss://)",
            waits,
        ),
        None,
    );
    drop((tls, mutual));

    let acl = Redis::start_with(&WITH_ACL_USER);
    run_row(
        Row::new(
            "wrong password",
            format!("redis://app:not-the-Secret@127.0.0.1:{}", acl.port),
            "authentication failed: WRONGPASS",
            every_command_fails,
        ),
        None,
    );
    run_row(Row::new("no password", acl.url(), "authentication failed: NOAUTH", every_command_fails), None);
    drop(acl);

    // Loading for longer than the one-shot commands wait; the outage ends by itself.
    let loading = Redis::start_loading_with(12_000, 500, Some(pw));
    let loading_url = with_pw(loading.port);
    let mut row = Row::new("LOADING", loading_url.clone(), "still loading its dataset", waits);
    row.notice = Some("Redis is loading its dataset into memory; waiting up to 2000 ms");
    row.at_least = two_s;
    row.data = Some((loading_url, 0));
    run_row(row, Some(&mut || {}));
    drop(loading);

    // A replica holding a job of its master; promoted to heal.
    let master = Redis::start();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string(), "--requirepass", pw]);
    let replica_url = with_pw(replica.port);
    add_job(&master.url());
    wait_until(Duration::from_secs(10), POLL, "the replica never got the job", || {
        (jobs(&replica_url).0 == 1).then_some(())
    });
    let mut readonly = Row::new("READONLY", replica_url.clone(), "read-only replica of 127.0.0.1", waits);
    readonly.data = Some((replica_url.clone(), 1));
    run_row(
        readonly,
        Some(&mut || redis::cmd("REPLICAOF").arg("NO").arg("ONE").query::<()>(&mut data_conn(&replica_url)).unwrap()),
    );
    drop((master, replica));

    // maxmemory reached under noeviction, with a job waiting; room made to heal.
    let full = Redis::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction", "--requirepass", pw]);
    let full_url = with_pw(full.port);
    add_job(&full_url);
    let mut c = data_conn(&full_url);
    let chunk = "x".repeat(64 << 10);
    for i in 0.. {
        if redis::cmd("SET").arg(format!("fill{i}")).arg(&chunk).query::<()>(&mut c).is_err() {
            break;
        }
    }
    // `stats` only reads; `inspect` opens a bullmq-official Queue, which
    // writes the queue's meta hash (HSET) first, so it is refused too.
    let mut oom = Row::new("OOM", full_url.clone(), "out of memory", [Waits, Fails, Works, Fails, Fails]);
    oom.data = Some((full_url, 1));
    run_row(oom, Some(&mut || redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query::<()>(&mut c).unwrap()));
}
