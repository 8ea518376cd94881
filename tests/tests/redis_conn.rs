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

