//! Scaling out: bullpen on a Redis Cluster. A 3-master cluster on
//! loopback (started and stopped here), 10,000 jobs from Node's bullmq over
//! an ioredis Cluster connection into two queues, three registry workers,
//! a new plugin version deployed through the cluster mid-run; then every
//! job is checked to have completed exactly once, on the version it should.
//! The two queues use two hash tags, `{bull}` and `{bull-b}`, whose slots
//! are on different masters, so the run really spans nodes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bullpen_tests::*;
use serde_json::Value;

/// Each queue's hash-tagged prefix (slots 9263 and 11837: two masters).
fn prefix(queue: &str) -> &'static str {
    if queue == "orders" {
        "{bull}"
    } else {
        "{bull-b}"
    }
}
const T: Duration = Duration::from_secs(300);
const DIGEST_LINE: &str = "bullpen: plugin sha256:";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `bullpen <sub> --cluster --redis <seed>... --prefix <queue's> --queue <queue> <rest>`.
fn bp(c: &Cluster, sub: &str, queue: &str, rest: &[&str]) -> Output {
    let mut args = vec![sub.to_string()];
    args.extend(c.args());
    args.extend(["--prefix", prefix(queue), "--queue", queue].map(String::from));
    args.extend(rest.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bullpen(&args)
}

fn stdout_ok(out: &Output) -> String {
    assert!(out.status.success(), "bullpen failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap().trim().to_string()
}

/// tests/node/driver.js <cmd> <seeds> <queue> <rest> over an ioredis Cluster connection.
fn node_cluster(c: &Cluster, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(root().join("tests/node/driver.js"))
        .arg(args[0])
        .arg(c.node_url())
        .args(&args[1..])
        .env("BULLMQ_PREFIX", prefix(args[1]))
        .output()
        .unwrap();
    assert!(out.status.success(), "node driver.js {}: {}", args[0], String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `switched_at` (ms) of the worker's "plugin switched" line.
fn switched_at(log: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("plugin switched")).expect("no plugin switched line");
    let v = line.split("switched_at=").nth(1).unwrap();
    v.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn completed(conn: &mut redis::cluster::ClusterConnection, queue: &str) -> (u64, u64) {
    let p = prefix(queue);
    let done: u64 = redis::cmd("ZCARD").arg(format!("{p}:{queue}:completed")).query(conn).unwrap();
    let failed: u64 = redis::cmd("ZCARD").arg(format!("{p}:{queue}:failed")).query(conn).unwrap();
    (done, failed)
}

#[test]
fn cluster_10k_jobs_two_queues_three_workers_deploy_mid_run() {
    let cluster = Cluster::start(3);
    let seeds = cluster.urls();

    // A Cluster without a hash-tagged prefix is refused before anything is written.
    let out = bullpen(&["add", "--cluster", "--redis", &seeds[0], "--queue", "orders", "--prefix", "bull", "x", "{}"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cluster needs a hash-tagged --prefix such as '{bull}'"),
        "{out:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin("echo", "rust")).unwrap();
    let (v1, v2) = (dir.path().join("v1.wasm"), dir.path().join("v2.wasm"));
    std::fs::write(&v1, &bytes).unwrap();
    std::fs::write(&v2, with_custom_section(&bytes, "v2")).unwrap();
    let deploy = |queue: &str, file: &Path| stdout_ok(&bp(&cluster, "deploy", queue, &[file.to_str().unwrap()]));
    let d1 = deploy("orders", &v1);
    assert_eq!(deploy("emails", &v1), d1);

    // Three registry workers (no --plugin): two on orders, one on emails.
    let worker = |queue: &str, name: &str| {
        let mut args = cluster.args();
        args.extend(
            ["--prefix", prefix(queue), "--queue", queue, "--concurrency", "20", "--name", name].map(String::from),
        );
        Worker::spawn(&args)
    };
    let workers = [("w1", worker("orders", "w1")), ("w2", worker("orders", "w2")), ("w3", worker("emails", "w3"))];
    let queue_of = HashMap::from([("w1", "orders"), ("w2", "orders"), ("w3", "emails")]);

    // Phase 1: half the jobs; the deploy lands while workers are busy with them.
    let sizes = [("orders", 3000u64), ("emails", 2000u64)];
    let mut added: HashMap<&str, Vec<String>> = HashMap::new();
    for (q, n) in sizes {
        added.entry(q).or_default().extend(ids(node_cluster(&cluster, &["bulk", q, &n.to_string(), "0"])));
    }
    let mut conn = cluster.conn();
    let started = Instant::now();
    wait_until(T, Duration::from_millis(20), "workers do not make progress", || {
        (completed(&mut conn, "orders").0 + completed(&mut conn, "emails").0 >= 1000).then_some(())
    });
    let done_before = completed(&mut conn, "orders").0 + completed(&mut conn, "emails").0;
    let deploy_at = now_ms();
    let d2 = deploy("orders", &v2);
    assert_eq!(deploy("emails", &v2), d2);
    assert_ne!(d1, d2);
    for (_, w) in &workers {
        w.wait_log("plugin switched", T);
    }
    // Phase 2: added after every worker switched, so these must all run v2.
    for (q, n) in sizes {
        added.entry(q).or_default().extend(ids(node_cluster(&cluster, &["bulk", q, &n.to_string(), &n.to_string()])));
    }
    // T counts from `started`: both phases share it.
    wait_until_ok(T.saturating_sub(started.elapsed()), Duration::from_millis(100), "not drained", || {
        let (o, e) = (completed(&mut conn, "orders"), completed(&mut conn, "emails"));
        assert_eq!((o.1, e.1), (0, 0), "failed jobs");
        if o.0 == 6000 && e.0 == 4000 {
            Ok(())
        } else {
            Err(format!("orders {o:?}, emails {e:?}"))
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let switched: HashMap<&str, u64> = workers.iter().map(|(n, w)| (*n, switched_at(&w.log()))).collect();
    // Workers subscribe on the first seed node; the deploys ran on the queues'
    // masters (other nodes): the notice crossed the cluster bus.
    for (n, w) in &workers {
        let log = w.log();
        let line = log.lines().find(|l| l.contains("plugin switched")).unwrap();
        assert!(line.contains("trigger=\"deploy notification\""), "{n} switched without the notice: {line}");
        // A CROSSSLOT or routing failure would surface as a worker error.
        assert!(
            !log.contains("WARN bullmq::worker") && !log.contains("ERROR") && !log.contains("CROSSSLOT"),
            "{n}:\n{log}"
        );
        for l in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
            println!("{n}: {l}");
        }
    }

    let mut per_worker: HashMap<String, u64> = HashMap::new();
    let mut per_digest: HashMap<String, u64> = HashMap::new();
    for (q, n) in sizes {
        let report = node_cluster(&cluster, &["report", q]);
        assert_eq!(report["counts"]["completed"], 2 * n, "{q}: {}", report["counts"]);
        for state in ["failed", "active", "waiting", "delayed", "prioritized"] {
            assert_eq!(report["counts"][state], 0, "{q} {state}");
        }
        let jobs = report["jobs"].as_array().unwrap();
        assert_eq!(jobs.len() as u64, 2 * n, "{q}: every job listed once");
        let listed: HashSet<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
        let added: HashSet<&str> = added[q].iter().map(String::as_str).collect();
        assert_eq!(listed, added, "{q}: the jobs completed are the jobs added");
        let mut seen_i = HashSet::new();
        for j in jobs {
            // Exactly once: one attempt started, one made, one guest log line, one version line.
            assert_eq!(j["state"], "completed", "{j}");
            assert_eq!(j["attemptsStarted"], 1, "{j}");
            assert_eq!(j["attemptsMade"], 1, "{j}");
            assert_eq!(j["returnvalue"], j["data"], "{j}");
            assert!(seen_i.insert(j["data"]["i"].as_u64().unwrap()), "data twice: {j}");
            let logs: Vec<&str> = j["logs"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
            let echo = format!("echo: job {} (job)", j["id"].as_str().unwrap());
            assert_eq!(logs.iter().filter(|l| **l == echo).count(), 1, "{j}");
            let digests: Vec<&str> = logs.iter().filter_map(|l| l.strip_prefix(DIGEST_LINE)).collect();
            assert_eq!((digests.len(), logs.len()), (1, 2), "{j}");
            let by = j["processedBy"].as_str().unwrap();
            assert_eq!(queue_of[by], q, "{j}");
            // The version: v2 never before its deploy; always v2 once the
            // worker that took the job had switched.
            let on = j["processedOn"].as_u64().unwrap();
            if digests[0] == d2 {
                assert!(on >= deploy_at, "v2 ran before it was deployed: {j}");
            } else {
                assert_eq!(digests[0], d1, "{j}");
                assert!(on <= switched[by] + 1, "v1 ran after {by} switched at {}: {j}", switched[by]);
            }
            if j["data"]["i"].as_u64().unwrap() >= n {
                assert_eq!(digests[0], d2, "a phase-2 job ran v1: {j}");
            }
            *per_worker.entry(by.to_string()).or_default() += 1;
            *per_digest.entry(digests[0].to_string()).or_default() += 1;
        }
        assert_eq!(seen_i.len() as u64, 2 * n);
    }
    println!(
        "cluster: 10000 jobs in {secs:.1} s; per worker {per_worker:?}; v1 {} / v2 {} jobs; {done_before} done when v2 was deployed",
        per_digest.get(&d1).unwrap_or(&0),
        per_digest.get(&d2).unwrap_or(&0)
    );
    assert!(per_worker["w1"] > 0 && per_worker["w2"] > 0, "both orders workers took jobs: {per_worker:?}");
    assert!(per_digest[&d1] >= 1000 && per_digest[&d2] >= 5000, "{per_digest:?}");

    // bullpen's own keys share the queue's slot (one hash tag); the two
    // queues' keys live on two different masters.
    let mut owners = vec![];
    for q in ["orders", "emails"] {
        let p = prefix(q);
        let slot = |conn: &mut redis::cluster::ClusterConnection, k: &str| -> i64 {
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(k).query(conn).unwrap()
        };
        let s = slot(&mut conn, &format!("{p}:{q}:wait"));
        for k in ["plugins", "versions", "current", "history"] {
            let key = format!("{p}:{q}:bullpen:{k}");
            assert_eq!(slot(&mut conn, &key), s, "{key}");
            assert!(redis::cmd("EXISTS").arg(&key).query::<bool>(&mut conn).unwrap(), "{key}");
        }
        let holders: Vec<u16> = cluster
            .ports
            .iter()
            .copied()
            .filter(|port| {
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s).query::<u64>(&mut c).unwrap() > 0
            })
            .collect();
        assert_eq!(holders.len(), 1, "{q}: slot {s} on {holders:?}");
        owners.push(holders[0]);
    }
    assert_ne!(owners[0], owners[1], "the two queues are on two masters");
    assert!(
        !owners.contains(&cluster.ports[0]),
        "the seed workers subscribe on holds neither queue, so notices crossed nodes"
    );
    let current: String =
        redis::cmd("GET").arg(format!("{}:orders:bullpen:current", prefix("orders"))).query(&mut conn).unwrap();
    assert_eq!(current, d2);
    // The other commands work through the cluster too.
    let plugins: Value = serde_json::from_str(&stdout_ok(&bp(&cluster, "plugins", "orders", &["--json"]))).unwrap();
    assert_eq!(plugins.as_array().unwrap().len(), 2);
    let first = &added["orders"][0];
    let view: Value = serde_json::from_str(&stdout_ok(&bp(&cluster, "inspect", "orders", &[first]))).unwrap();
    assert_eq!(
        (view["state"].as_str(), view["pluginDigest"].as_str()),
        (Some("completed"), Some(d1.as_str())),
        "{view}"
    );
    let id = stdout_ok(&bp(&cluster, "add", "emails", &["late", r#"{"late":true}"#]));
    wait_until(T, POLL, &format!("job {id} added by `bullpen add --cluster` never completed"), || {
        (completed(&mut conn, "emails").0 >= 4001).then_some(())
    });

    for (name, w) in workers {
        assert!(w.stop().success(), "worker {name} did not stop cleanly");
    }
}

/// TLS with `--cluster`: a 3-master Cluster whose nodes speak only TLS
/// (clients, the cluster bus and replication) and require a client
/// certificate. A registry worker given the `rediss://` seeds, `cluster`,
/// `redis_ca`, `redis_cert` and `redis_key` in bullpen.toml serves jobs
/// Node's bullmq adds over an ioredis TLS Cluster connection; `deploy` (its
/// notice reaching the worker over a TLS pub/sub connection), `add` (given
/// one seed only: the others are found through the cluster, at their TLS
/// ports), `stats` and `inspect` work with `--cluster --redis rediss://...
/// --redis-ca --redis-cert --redis-key`; a CA that did not sign the nodes'
/// certificate is refused in one line.
#[test]
fn tls_cluster_worker_and_every_command_over_mutual_tls() {
    let certs = Certs::make();
    let cluster = Cluster::start_tls(3, &certs, true);
    let q = "orders";
    let bin = |sub: &str, cluster_args: &[String], rest: &[&str]| {
        let mut args = vec![sub.to_string()];
        args.extend(cluster_args.iter().cloned());
        args.extend(["--prefix", prefix(q), "--queue", q].map(String::from));
        args.extend(rest.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bullpen(&args)
    };
    let all = cluster.args();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(plugin("echo", "rust")).unwrap();
    let (v1, v2) = (dir.path().join("v1.wasm"), dir.path().join("v2.wasm"));
    std::fs::write(&v1, &bytes).unwrap();
    std::fs::write(&v2, with_custom_section(&bytes, "v2")).unwrap();
    let d1 = stdout_ok(&bin("deploy", &all, &[v1.to_str().unwrap()]));

    // The worker reads the same from bullpen.toml.
    let config = dir.path().join("bullpen.toml");
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "redis = [{}]\ncluster = true\nprefix = \"{}\"\nredis_ca = {:?}\nredis_cert = {:?}\nredis_key = {:?}\n\
             [[queues]]\nname = \"{q}\"\nconcurrency = 4\n",
            seeds.join(", "),
            prefix(q),
            certs.arg("ca.pem"),
            certs.arg("client.pem"),
            certs.arg("client.key"),
        ),
    )
    .unwrap();
    let worker = Worker::spawn(&["--config", config.to_str().unwrap()]);

    let node = |args: &[&str]| {
        let out = Command::new("node")
            .arg(root().join("tests/node/driver.js"))
            .arg(args[0])
            .arg(cluster.node_url())
            .args(&args[1..])
            .env("BULLMQ_PREFIX", prefix(q))
            .envs(cluster.node_env())
            .output()
            .unwrap();
        assert!(out.status.success(), "node driver.js {}: {}", args[0], String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let mut added = ids(node(&["bulk", q, "20", "0"]));
    // One seed node: the client learns the others (TLS ports) from it.
    let mut one_seed = vec!["--cluster".to_string(), "--redis".to_string(), cluster.urls()[0].clone()];
    one_seed.extend(all.iter().skip(1 + 2 * cluster.ports.len()).cloned());
    let id = stdout_ok(&bin("add", &one_seed, &["late", r#"{"i":20}"#]));
    added.push(id.clone());

    let stats = || -> Value { serde_json::from_str(&stdout_ok(&bin("stats", &all, &["--json"]))).unwrap() };
    wait_until_ok(Duration::from_secs(30), Duration::from_millis(200), "jobs not completed over TLS", || {
        let s = stats();
        if s["counts"]["completed"] == 21 {
            Ok(())
        } else {
            Err(s)
        }
    });
    let report = node(&["report", q]);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 21, "{report}");
    for j in jobs {
        assert_eq!((j["state"].as_str(), j["attemptsMade"].as_u64()), (Some("completed"), Some(1)), "{j}");
        assert_eq!(j["returnvalue"], j["data"], "{j}");
        assert!(added.contains(&j["id"].as_str().unwrap().to_string()), "{j}");
    }
    let view: Value = serde_json::from_str(&stdout_ok(&bin("inspect", &all, &[&id]))).unwrap();
    assert_eq!(
        (view["state"].as_str(), view["pluginDigest"].as_str()),
        (Some("completed"), Some(d1.as_str())),
        "{view}"
    );

    // A deploy's notice reaches the worker over its TLS pub/sub connection.
    let d2 = stdout_ok(&bin("deploy", &one_seed, &[v2.to_str().unwrap()]));
    assert_ne!(d1, d2);
    worker.wait_log("plugin switched", Duration::from_secs(20));
    let log = worker.log();
    let line = log.lines().find(|l| l.contains("plugin switched")).unwrap();
    assert!(line.contains("trigger=\"deploy notification\""), "{line}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");

    // A CA that did not sign the nodes' certificate: one line, exit 1.
    let mut wrong_ca = all.clone();
    let ca = wrong_ca.iter().position(|a| a == "--redis-ca").unwrap() + 1;
    wrong_ca[ca] = certs.arg("other-ca.pem");
    let started = Instant::now();
    let out = bin("stats", &wrong_ca, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("certificate is not trusted") && err.contains("rediss://127.0.0.1:"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    println!("wrong CA: {}", err.trim());

    assert!(worker.stop().success(), "worker did not stop cleanly");
}

/// `bullpen cancel` on a Cluster: the request and its notice live in the
/// queue's hash slot (`{bull-b}`), the two workers' subscriptions sit on
/// whichever nodes they reached; the worker running the spinning job stops
/// it, the other keeps completing jobs.
#[test]
fn cluster_cancel_reaches_the_worker_running_the_job() {
    let cluster = Cluster::start(3);
    let q = "emails";
    let worker = || {
        let mut args = cluster.args();
        args.extend(["--prefix", prefix(q), "--queue", q, "--plugin"].map(String::from));
        args.push(plugin("hog", "rust").to_str().unwrap().to_string());
        args.extend(["--timeout-ms", "600000"].map(String::from));
        Worker::spawn(&args)
    };
    let (w1, w2) = (worker(), worker());
    let id = stdout_ok(&bp(&cluster, "add", q, &["spin", r#"{"mode":"loop"}"#]));
    wait_until_ok(Duration::from_secs(30), Duration::from_millis(20), "the job never became active", || {
        let v = node_cluster(&cluster, &["inspect", q, &format!("[\"{id}\"]")]);
        if v["jobs"][0]["state"] == "active" {
            Ok(())
        } else {
            Err(v)
        }
    });
    let out = bp(&cluster, "cancel", q, &[&id, "--reason", "cluster", "--json"]);
    let r: Value = serde_json::from_str(&stdout_ok(&out)).unwrap();
    assert_eq!((r["state"].as_str(), r["failedReason"].as_str()), (Some("failed"), Some("cancelled: cluster")), "{r}");
    eprintln!("cluster cancel latency: {} ms", r["waitedMs"]);
    assert_eq!([&w1, &w2].iter().filter(|w| w.log().contains("attempt cancelled")).count(), 1);
    let jobs: Vec<Value> = (0..10).map(|i| serde_json::json!({"name": "ok", "data": {"mode": "ok", "i": i}})).collect();
    let more = ids(node_cluster(&cluster, &["add", q, &Value::Array(jobs).to_string()]));
    wait_until_ok(Duration::from_secs(30), Duration::from_millis(100), "the others did not complete", || {
        let v = node_cluster(&cluster, &["inspect", q, &serde_json::to_string(&more).unwrap()]);
        if v["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "completed") {
            Ok(())
        } else {
            Err(v)
        }
    });
}
