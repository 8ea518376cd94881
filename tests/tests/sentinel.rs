//! Redis Sentinel: bullpen finds the master through the sentinels, follows
//! a failover (the master killed with SIGKILL mid-run) and says in one line
//! why a wrong master name or unreachable sentinels cannot be used.
//!
//! The failover test counts what a failover costs with asynchronous
//! replication: jobs whose add Redis acknowledged but which the new master
//! never had (lost), and jobs whose webhook was called more than once (ran
//! twice: a completion or a fetch the new master never saw). Its count of
//! jobs is `BULLPEN_SENTINEL_JOBS` (default 5,000, the issue's number).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullpen_tests::*;

const SECRET: &str = "sentinel-test-secret";

/// An HTTP server that counts the webhook calls per job (`{"i": N}`
/// payloads): what ran, recorded outside Redis, so a failover cannot lose it.
struct Hooks {
    port: u16,
    calls: Arc<Mutex<HashMap<u64, u32>>>,
}

impl Hooks {
    fn start() -> Hooks {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream);
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Some(i) =
                        serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["i"].as_u64())
                    {
                        *c.lock().unwrap().entry(i).or_default() += 1;
                    }
                    let _ =
                        r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                });
            }
        });
        Hooks { port, calls }
    }

    fn total(&self) -> u64 {
        self.calls.lock().unwrap().values().map(|&n| u64::from(n)).sum()
    }
}

fn jobs() -> usize {
    std::env::var("BULLPEN_SENTINEL_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
}

/// Counts of queue `q` on the server at `port`: (wait+active+delayed+prioritized, completed, failed).
fn counts(port: u16, q: &str) -> redis::RedisResult<(u64, u64, u64)> {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection()?;
    let k = |s: &str| format!("bull:{q}:{s}");
    let (wait, active, delayed, prio, done, failed): (u64, u64, u64, u64, u64, u64) = redis::pipe()
        .llen(k("wait"))
        .llen(k("active"))
        .zcard(k("delayed"))
        .zcard(k("prioritized"))
        .zcard(k("completed"))
        .zcard(k("failed"))
        .query(&mut c)?;
    Ok((wait + active + delayed + prio, done, failed))
}

/// `command` exits 1 within `bound` with exactly one stderr line: that
/// line, and all of stderr (for messages).
fn fails_in_one_line(what: &str, bound: Duration, command: impl FnOnce() -> std::process::Output) -> (String, String) {
    let start = Instant::now();
    let out = command();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(took < bound, "{what} took {took:?}");
    assert_eq!(lines.len(), 1, "{what}: one line: {err}");
    (lines[0].to_string(), err)
}

#[test]
fn a_worker_follows_a_failover_and_every_job_completes() {
    let n = jobs();
    let g = SentinelGroup::start("mymaster", &[]);
    let hooks = Hooks::start();
    let origin = format!("http://127.0.0.1:{}", hooks.port);
    let secret_env = "BULLPEN_TEST_SENTINEL_SECRET";
    let mut args = g.args();
    args.extend(
        [
            "--queue",
            "failover",
            "--plugin",
            plugin("webhook", "rust").to_str().unwrap(),
            "--concurrency",
            "50",
            // Short locks and stalled checks: a job whose completion the new
            // master never saw is found and run again within seconds.
            "--lock-duration-ms",
            "5000",
            "--stalled-interval-ms",
            "2000",
            "--max-stalled-count",
            "10",
            "--allow-outbound",
            &origin,
            "--var-env",
            &format!("webhook_secret={secret_env}"),
        ]
        .map(String::from),
    );
    let w = Worker::spawn_env(&args, &[(secret_env, SECRET)]);
    let old_master = g.master.port;
    assert!(w.log().contains(&format!("is at redis://127.0.0.1:{old_master}")), "{}", w.log());

    // Node adds the jobs over ~5 s through ioredis's Sentinel support.
    let per_second = (n / 5).max(100);
    let producer = Command::new("node")
        .arg(root().join("tests/node/sentinel.js"))
        .args(["add", &g.node_list(), &g.name, "failover", &n.to_string(), &per_second.to_string()])
        .arg(format!("{origin}/hook"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Mid-run: a third of the jobs ran.
    wait_until(Duration::from_secs(30), POLL, "a third of the jobs never ran", || {
        (hooks.total() >= n as u64 / 3).then_some(())
    });
    let ran_before = hooks.total();
    let _ = Command::new("kill").args(["-9", &g.master.pid().to_string()]).status();
    let killed = Instant::now();

    let new_master = wait_until(Duration::from_secs(20), Duration::from_millis(20), "no failover", || {
        g.master_port().filter(|&p| p != old_master)
    });
    let failover = killed.elapsed();
    assert_eq!(new_master, g.replica.port);
    // Recovered: jobs complete on the new master.
    let (_, done_at_failover, _) = counts(new_master, "failover").unwrap();
    wait_until(Duration::from_secs(30), Duration::from_millis(20), "no job completed on the new master", || {
        counts(new_master, "failover").ok().filter(|c| c.1 > done_at_failover).map(|_| ())
    });
    let recovered = killed.elapsed();

    let out = producer.wait_with_output().unwrap();
    assert!(out.status.success(), "node sentinel.js: {}", String::from_utf8_lossy(&out.stderr));
    let produced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acked: Vec<String> = produced["acked"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    assert_eq!(acked.len(), n, "every add was acknowledged in the end");

    let (_, completed, failed) = wait_until_ok(Duration::from_secs(40), POLL, "jobs left unfinished", || {
        let c = counts(new_master, "failover").map_err(|e| e.to_string())?;
        if c.0 == 0 {
            Ok(c)
        } else {
            Err(format!("{c:?} (pending, completed, failed)\n{}", w.log()))
        }
    });
    let all_done = killed.elapsed();

    // Which acknowledged jobs the new master has at all.
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{new_master}")).unwrap().get_connection().unwrap();
    let mut pipe = redis::pipe();
    for id in &acked {
        pipe.exists(format!("bull:failover:{id}"));
    }
    let exists: Vec<bool> = pipe.query(&mut c).unwrap();
    let lost: Vec<&String> = acked.iter().zip(&exists).filter(|(_, e)| !**e).map(|(id, _)| id).collect();
    let calls = hooks.calls.lock().unwrap().clone();
    let twice = calls.values().filter(|&&k| k > 1).count();
    let never: Vec<&String> = acked
        .iter()
        .zip(&exists)
        .filter(|(id, e)| **e && !calls.contains_key(&id[1..].parse::<u64>().unwrap()))
        .map(|(id, _)| id)
        .collect();
    eprintln!(
        "sentinel failover: {n} jobs acknowledged; {ran_before} had run when the master was killed; \
         failover {} ms; first completion on the new master {} ms after the kill; all done {} ms after it; \
         completed {completed}, failed {failed}; lost (acknowledged, never on the new master) {}; \
         ran twice {twice}; the slowest add batch {} ms",
        failover.as_millis(),
        recovered.as_millis(),
        all_done.as_millis(),
        lost.len(),
        produced["slowestMs"],
    );
    assert_eq!(failed, 0, "no job failed:\n{}", w.log());
    assert!(never.is_empty(), "jobs on the new master that never ran: {never:?}");
    assert_eq!(completed as usize + lost.len(), n, "every job the new master has is completed");
    assert!(ran_before < n as u64, "the master was killed mid-run");
    assert!(w.log().contains(&format!("is at redis://127.0.0.1:{new_master}")), "{}", w.log());
    // Loss is bounded by what was in flight at the kill (replication lag
    // on loopback is well under a batch of work).
    assert!(lost.len() <= 100 && twice <= 200, "lost {} ran twice {twice}", lost.len());
}

#[test]
fn a_wrong_master_name_or_no_sentinel_is_one_line_within_the_timeout() {
    let g = SentinelGroup::start("mymaster", &[]);
    let sentinels: Vec<String> = g.ports.iter().flat_map(|p| ["--sentinel".into(), format!("127.0.0.1:{p}")]).collect();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases: [(&str, Vec<String>, &str); 2] = [
        (
            "wrong name",
            [sentinels.clone(), vec!["--sentinel-master".into(), "nosuch".into()]].concat(),
            "no Sentinel knows a master named `nosuch`",
        ),
        (
            "no sentinel",
            vec!["--sentinel".into(), format!("127.0.0.1:{closed}"), "--sentinel-master".into(), "mymaster".into()],
            "cannot reach any Sentinel of master `mymaster`",
        ),
    ];
    for (what, conn, expected) in cases {
        for cmd in [&["add", "j", "{}"][..], &["stats"], &["inspect", "1"]] {
            let mut args: Vec<String> =
                vec![cmd[0].into(), "--queue".into(), "q".into(), "--connect-timeout-ms".into(), "2000".into()];
            args.extend(conn.iter().cloned());
            args.extend(cmd[1..].iter().map(|s| s.to_string()));
            let (line, err) = fails_in_one_line(&format!("{what} {cmd:?}"), Duration::from_millis(2500), || {
                bullpen(&args.iter().map(String::as_str).collect::<Vec<_>>())
            });
            assert!(line.contains(expected), "{what} {cmd:?}: {err}");
        }
    }
    // A worker stops on a wrong name (it will not fix itself)...
    let mut args: Vec<String> = vec!["worker".into(), "--queue".into(), "q".into()];
    args.extend(sentinels.iter().cloned());
    args.extend(["--sentinel-master".into(), "nosuch".into(), "--plugin".into()]);
    args.push(plugin("echo", "rust").to_str().unwrap().into());
    let out = bullpen(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Sentinel knows a master named `nosuch`"));
    // ... and a right one works for every command.
    let mut args: Vec<String> = vec!["add".into(), "--queue".into(), "q".into()];
    args.extend(g.args());
    args.extend(["j".into(), "{}".into()]);
    let out = bullpen(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(g.master.cli(&["LLEN", "bull:q:wait"]), "1");
}

/// The vendored hook itself (vendor/redis patch 3): a connection manager
/// whose resolver names another server after the first was demoted to a
/// replica (REPLICAOF, which keeps normal clients connected) goes there on
/// the READONLY reply, for a command and for a pipeline.
#[test]
fn a_readonly_reply_makes_the_connection_resolve_again() {
    let a = Redis::start();
    let b = Redis::start();
    let port = Arc::new(AtomicU16::new(a.port));
    let p = port.clone();
    let resolver: redis::aio::ClientResolver = Arc::new(move || {
        let url = format!("redis://127.0.0.1:{}", p.load(Ordering::SeqCst));
        Box::pin(async move { redis::Client::open(url) })
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = redis::aio::ConnectionManagerConfig::new().set_client_resolver(resolver);
        let placeholder = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let mut c = redis::aio::ConnectionManager::new_with_config(placeholder, config).await.unwrap();
        let set = |v: &str| redis::cmd("SET").arg("k").arg(v).to_owned();
        set("1").query_async::<()>(&mut c).await.unwrap();
        assert_eq!(a.cli(&["GET", "k"]), "1");
        // a becomes b's replica; the resolver now names b.
        a.cli(&["REPLICAOF", "127.0.0.1", &b.port.to_string()]);
        port.store(b.port, Ordering::SeqCst);
        let e = set("2").query_async::<()>(&mut c).await.unwrap_err();
        assert_eq!(e.code(), Some("READONLY"), "{e}");
        set("3").query_async::<()>(&mut c).await.unwrap();
        assert_eq!(b.cli(&["GET", "k"]), "3");
        // A pipeline's READONLY (an error among its replies) too: b demoted.
        b.cli(&["REPLICAOF", "127.0.0.1", &a.port.to_string()]);
        a.cli(&["REPLICAOF", "NO", "ONE"]);
        port.store(a.port, Ordering::SeqCst);
        let r: redis::RedisResult<()> =
            redis::pipe().cmd("PING").cmd("SET").arg("k").arg("4").query_async(&mut c).await;
        assert_eq!(r.unwrap_err().code(), Some("READONLY"));
        redis::pipe().cmd("SET").arg("k").arg("5").query_async::<()>(&mut c).await.unwrap();
        assert_eq!(a.cli(&["GET", "k"]), "5");
    });
}

const MASTER_PW: &str = "master-secret";
const SENTINEL_PW: &str = "sentinel-secret";

/// Issue 23 item 4, "TLS/auth apply to sentinels and master": every server
/// and sentinel TLS-only with the test's CA, master and replica behind one
/// password, the sentinels behind another. Node (ioredis: `sentinelTLS`,
/// `sentinelPassword`, `tls`, `password`) adds jobs, a worker runs them, and
/// `add` and `stats` work with the sentinels' password from a file or in
/// their URLs; a wrong or missing password is one line; after the master is
/// killed the worker goes on with the promoted replica, over TLS.
#[test]
fn tls_and_passwords_apply_to_sentinels_and_master() {
    let certs = Arc::new(Certs::make());
    let secure = Secure {
        certs: Some(certs.clone()),
        password: Some(MASTER_PW.into()),
        sentinel_password: Some(SENTINEL_PW.into()),
    };
    let g = SentinelGroup::start_secure("securemaster", &[], secure);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.to_str().unwrap().to_string()
    };
    let ca = certs.arg("ca.pem");
    // HOST:PORT sentinels, their password from a file, the master's in the
    // --redis URL; --redis-ca makes both TLS.
    let host_port = |sentinel_pw_file: Option<&str>, master_url: &str| -> Vec<String> {
        let mut a: Vec<String> = g.ports.iter().flat_map(|p| ["--sentinel".into(), format!("127.0.0.1:{p}")]).collect();
        if let Some(f) = sentinel_pw_file {
            a.extend(["--sentinel-password-file".into(), f.into()]);
        }
        a.extend(["--sentinel-master", &g.name, "--redis", master_url, "--redis-ca", &ca].map(String::from));
        a
    };
    let sentinel_pw_file = file("sentinel-pw", &format!("{SENTINEL_PW}\n"));
    let master_url = format!("rediss://:{MASTER_PW}@ignored");
    let by_file = host_port(Some(&sentinel_pw_file), &master_url);
    // rediss:// sentinel URLs with their own password; the master's from
    // --redis-password-file.
    let mut by_url: Vec<String> =
        g.ports.iter().flat_map(|p| ["--sentinel".into(), format!("rediss://:{SENTINEL_PW}@127.0.0.1:{p}")]).collect();
    by_url.extend(
        ["--sentinel-master", &g.name, "--redis", "rediss://ignored", "--redis-ca", &ca, "--redis-password-file"]
            .map(String::from),
    );
    by_url.push(file("master-pw", MASTER_PW));
    let run = |cmd: &str, conn: &[String], rest: &[&str]| {
        let mut args: Vec<String> = vec![cmd.into(), "--queue".into(), "secure".into()];
        args.extend(conn.iter().cloned());
        args.extend(rest.iter().map(|s| s.to_string()));
        bullpen(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let completed = || -> u64 {
        let out = run("stats", &by_file, &["--json"]);
        assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        s["counts"]["completed"].as_u64().unwrap()
    };

    let mut args = by_file.clone();
    args.extend(["--queue", "secure", "--plugin", plugin("echo", "rust").to_str().unwrap()].map(String::from));
    let w = Worker::spawn(&args);
    let old_master = g.master.port;
    assert!(w.log().contains(&format!("is at rediss://:***@127.0.0.1:{old_master}")), "{}", w.log());

    // Node adds 20 jobs through the TLS, password-protected sentinels.
    let out = Command::new("node")
        .arg(root().join("tests/node/sentinel.js"))
        .args(["add", &g.node_list(), &g.name, "secure", "20", "1000", "http://unused"])
        .envs(g.node_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "node sentinel.js: {}", String::from_utf8_lossy(&out.stderr));
    // And bullpen one, the sentinels' password in their URLs.
    let out = run("add", &by_url, &["bp", r#"{"i":20}"#]);
    assert!(out.status.success(), "add: {}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(20), Duration::from_millis(200), "jobs not completed over TLS", || {
        (completed() == 21).then_some(())
    });
    // What the master itself has (redis-cli over TLS, with its password).
    assert_eq!(g.master.cli(&["ZCARD", "bull:secure:completed"]), "21");

    // Wrong credentials: one line, exit 1, at once, no password in it.
    let wrong = file("wrong-pw", "not-the-password\n");
    let cases = [
        (
            "wrong sentinel password",
            host_port(Some(&wrong), &master_url),
            &["Sentinel rediss://:***@127.0.0.1", "WRONGPASS", "--sentinel-password-file"][..],
        ),
        (
            "no sentinel password",
            host_port(None, &master_url),
            &["Sentinel rediss://127.0.0.1", "NOAUTH", "--sentinel-password-file"],
        ),
        ("wrong master password", host_port(Some(&sentinel_pw_file), "rediss://:not-the-password@x"), &["WRONGPASS"]),
    ];
    for (what, conn, says) in cases {
        let (line, err) = fails_in_one_line(what, Duration::from_secs(5), || run("stats", &conn, &[]));
        assert!(line.contains("authentication failed") && says.iter().all(|s| line.contains(s)), "{what}: {err}");
        for secret in [MASTER_PW, SENTINEL_PW, "not-the-password"] {
            assert!(!err.contains(secret), "{what}: a password printed: {err}");
        }
        eprintln!("{what}: {line}");
    }

    // Failover under TLS: the master killed, the replica promoted; a job
    // added then runs on it.
    let _ = Command::new("kill").args(["-9", &g.master.pid().to_string()]).status();
    let new_master = wait_until(Duration::from_secs(20), Duration::from_millis(50), "no failover", || {
        g.master_port().filter(|&p| p != old_master)
    });
    assert_eq!(new_master, g.replica.port);
    let out = run("add", &by_url, &["after", r#"{"i":21}"#]);
    assert!(out.status.success(), "add after the failover: {}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(20), Duration::from_millis(200), "no job completed after the failover", || {
        (completed() == 22).then_some(())
    });
    assert_eq!(g.replica.cli(&["ZCARD", "bull:secure:completed"]), "22");
    let log = w.log();
    assert!(log.contains(&format!("is at rediss://:***@127.0.0.1:{new_master}")), "{log}");
    assert!(!log.contains(MASTER_PW) && !log.contains(SENTINEL_PW), "a password in the log: {log}");
}
