//! Production Redis setups (issue 23): TLS with a private CA and mutual
//! TLS, credentials, and connection failures told in one line within the
//! connect timeout. Certificates are made by the test (openssl); every
//! server is a local redis-server.

use std::time::{Duration, Instant};

use bullpen_tests::*;
use serde_json::json;

/// The lines of a command's stderr (the one-line error is the last).
fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().map(String::from).collect()
}

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

/// A server whose certificate no trusted CA signed is refused, in one line
/// that says so, by one-shot commands and the worker alike.
#[test]
fn tls_with_the_wrong_ca_is_refused_as_not_trusted() {
    let certs = Certs::make();
    let redis = Redis::start_tls(&certs, false, &[]);
    let url = redis.url();
    let other = certs.arg("other-ca.pem");
    let p = plugin("echo", "rust");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("stats, another CA", vec!["stats", "--redis", &url, "--redis-ca", &other, "--queue", "q"]),
        ("add, the webpki roots", vec!["add", "--redis", &url, "--queue", "q", "n", "{}"]),
        (
            "worker, another CA",
            vec!["worker", "--redis", &url, "--redis-ca", &other, "--queue", "q", "--plugin", p.to_str().unwrap()],
        ),
    ];
    for (what, a) in cases {
        let t = Instant::now();
        let out = bullpen(&a);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {lines:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{what}: took {:?}", t.elapsed());
        assert_eq!(lines.len(), 1, "{what}: one line: {lines:?}");
        assert!(lines[0].contains("certificate is not trusted") && lines[0].contains(&url), "{what}: {lines:?}");
    }
    // The right CA works (the same server, the same command).
    let ca = certs.arg("ca.pem");
    let out = bullpen(&["stats", "--redis", &url, "--redis-ca", &ca, "--queue", "q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

/// What one command should do against a broken Redis.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exit 1 within the bound, the last stderr line naming the cause.
    Fails(&'static str),
    /// (worker) Keep running, having logged the cause once.
    Waits(&'static str),
    /// Succeed (a read on a server that refuses only writes).
    Works,
}

const COMMANDS: [&str; 5] = ["worker", "add", "stats", "deploy", "inspect"];

/// Run the five commands against `redis` (bullpen's connection args) at
/// once and check each against `expect(command)`: exit code, elapsed time
/// under `bound`, and one line that names the cause. Returns the stderr of
/// each, for more checks.
fn check_commands(row: &str, redis: &[String], bound: Duration, expect: impl Fn(&str) -> Expect) -> Vec<String> {
    let p = plugin("echo", "rust");
    let p = p.to_str().unwrap().to_string();
    let runs: Vec<_> = COMMANDS
        .iter()
        .map(|&cmd| {
            let mut a: Vec<String> = vec![cmd.to_string()];
            a.extend(redis.iter().cloned());
            a.extend(["--queue".to_string(), "q".to_string()]);
            match cmd {
                "worker" => a.extend(["--plugin".to_string(), p.clone()]),
                "add" => a.extend(["n".to_string(), "{}".to_string()]),
                "deploy" => a.push(p.clone()),
                "inspect" => a.push("1".to_string()),
                _ => {}
            }
            let e = expect(cmd);
            let row = row.to_string();
            std::thread::spawn(move || run_one(&row, cmd, &a, bound, e))
        })
        .collect();
    runs.into_iter().map(|h| h.join().unwrap()).collect()
}

fn run_one(row: &str, cmd: &str, a: &[String], bound: Duration, expect: Expect) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let t = Instant::now();
    let mut child = std::process::Command::new(bullpen_bin())
        .args(a)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let what = format!("{row} / {cmd}");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    if let Expect::Waits(cause) = expect {
        let deadline = t + bound;
        while !read().contains(cause) {
            assert!(Instant::now() < deadline, "{what}: no {cause:?} within {bound:?}:\n{}", read());
            assert!(child.try_wait().unwrap().is_none(), "{what}: exited, but should wait:\n{}", read());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still waiting a while later, and the outage told once.
        std::thread::sleep(Duration::from_millis(2500));
        assert!(child.try_wait().unwrap().is_none(), "{what}: exited, but should wait:\n{}", read());
        terminate(&mut child);
        let err = read();
        assert_eq!(err.matches(cause).count(), 1, "{what}: the outage should be logged once:\n{err}");
        return err;
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > bound + Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{what}: still running after {:?}; stderr:\n{}", t.elapsed(), read());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let err = read();
    let lines: Vec<&str> = err.lines().collect();
    match expect {
        Expect::Fails(cause) => {
            assert_eq!(status.code(), Some(1), "{what}: exit code; stderr:\n{err}");
            assert!(elapsed < bound, "{what}: took {elapsed:?} (bound {bound:?}); stderr:\n{err}");
            let last = lines.last().copied().unwrap_or_default();
            assert!(
                last.starts_with("error: ") && last.contains(cause),
                "{what}: want {cause:?} in the last line:\n{err}"
            );
            assert_eq!(lines.iter().filter(|l| l.starts_with("error:")).count(), 1, "{what}: one error line:\n{err}");
            assert!(lines.len() <= 2, "{what}: at most a notice and the error:\n{err}");
            // The cause is stated once (not repeated by a source chain).
            assert_eq!(last.matches(cause).count(), 1, "{what}: cause repeated: {last}");
        }
        _ => assert!(status.success(), "{what}: should work:\n{err}"),
    }
    err
}

/// Wrong credentials: every command exits 1 within 5 s with one line that
/// names WRONGPASS or NOAUTH and shows the URL with its password masked.
#[test]
fn auth_wrong_credentials_fail_fast_in_one_line() {
    let redis = Redis::start_with(&WITH_ACL_USER);
    let port = redis.port;
    let five = Duration::from_secs(5);
    let wrong = ["--redis".to_string(), format!("redis://app:not-the-Secret@127.0.0.1:{port}")];
    for err in check_commands("wrong password", &wrong, five, |_| Expect::Fails("WRONGPASS")) {
        assert!(err.contains(&format!("redis://app:***@127.0.0.1:{port}")), "masked URL: {err}");
        assert!(!err.contains("not-the-Secret"), "a password in a log line: {err}");
    }
    let none = ["--redis".to_string(), format!("redis://127.0.0.1:{port}")];
    check_commands("no password", &none, five, |_| Expect::Fails("NOAUTH"));
}

/// Every way Redis can be unusable, for worker, add, stats, deploy and
/// inspect: one-shot commands exit 1 in one line within the connect
/// timeout; the worker stops on a wrong setting (TLS) and waits out an
/// outage, logging it once.
#[test]
fn connection_failures_are_bounded_and_told_in_one_line() {
    let five = Duration::from_secs(5);
    let fast = ["--connect-timeout-ms".to_string(), "1500".to_string()];
    let fast_bound = Duration::from_millis(2500);
    let with = |url: String, extra: &[String]| {
        let mut a = vec!["--redis".to_string(), url];
        a.extend(extra.iter().cloned());
        a
    };
    let outage = |cause: &'static str| {
        move |cmd: &str| if cmd == "worker" { Expect::Waits(cause) } else { Expect::Fails(cause) }
    };

    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    check_commands(
        "refused",
        &with(format!("redis://127.0.0.1:{closed_port}"), &[]),
        five,
        outage("connection refused"),
    );

    check_commands(
        "unknown host",
        &with("redis://nothing.invalid:6379".into(), &[]),
        five,
        outage("unknown host `nothing.invalid`"),
    );

    // Accepted by the kernel, never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}", silent.local_addr().unwrap().port());
    check_commands("timeout", &with(url, &fast), fast_bound, outage("no answer within 1500 ms"));

    // A server that requires a client certificate, reached without one.
    let certs = Certs::make();
    let mutual = Redis::start_tls(&certs, true, &[]);
    let ca = certs.arg("ca.pem");
    let no_cert = with(mutual.url(), &["--redis-ca".to_string(), ca]);
    check_commands("TLS handshake", &no_cert, five, |_| Expect::Fails("TLS handshake failed"));
    drop(mutual);

    let plain = Redis::start();

    let loading = Redis::start_loading(40_000, 500);
    check_commands("LOADING", &with(loading.url(), &fast), fast_bound, outage("still loading its dataset"));
    drop(loading);

    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &plain.port.to_string()]);
    check_commands("READONLY", &with(replica.url(), &[]), five, outage("read-only replica of 127.0.0.1"));

    let full = Redis::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let out = bullpen(&["add", "--redis", &full.url(), "--queue", "q", "n", "{}"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = full.conn();
    let chunk = "x".repeat(64 << 10);
    for i in 0.. {
        if redis::cmd("SET").arg(format!("fill{i}")).arg(&chunk).query::<()>(&mut c).is_err() {
            break;
        }
    }
    // `stats` only reads. `inspect` opens a bullmq-official Queue, which
    // writes the queue's meta hash (HSET) first, so it is refused too.
    check_commands("OOM", &with(full.url(), &[]), five, |cmd| match cmd {
        "stats" => Expect::Works,
        "worker" => Expect::Waits("out of memory"),
        _ => Expect::Fails("out of memory"),
    });
}
