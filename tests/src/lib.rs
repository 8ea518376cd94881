//! The integration-test harness: real processes only.
//!
//! - [`Redis`]: a `redis-server` on a free port in a temp dir, killed on drop.
//! - [`Cluster`]: a Redis Cluster of redis-servers on loopback, killed on drop.
//! - [`Worker`]: the release `bullpen worker` binary, SIGTERMed on drop.
//! - [`node`] / [`python`]: the real `bullmq` packages (tests/node/driver.js,
//!   tests/python/driver.py) as producers and observers, JSON on stdout.
//!
//! Prerequisites come from `scripts/setup.sh` (run by `scripts/test.sh`):
//! target/release/bullpen, target/plugins/*.wasm, tests/node/node_modules,
//! tests/python/.venv.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The release `bullpen` binary (tests run against what users run).
pub fn bullpen_bin() -> PathBuf {
    let p = std::env::var_os("BULLPEN_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/release/bullpen"));
    assert!(p.exists(), "{} missing: run `cargo build --release -p bullpen` (scripts/test.sh does)", p.display());
    p
}

/// `target/plugins/<name>-<lang>.wasm`, built by scripts/build-plugins.sh.
pub fn plugin(name: &str, lang: &str) -> PathBuf {
    let p = root().join(format!("target/plugins/{name}-{lang}.wasm"));
    assert!(p.exists(), "{} missing: run scripts/build-plugins.sh", p.display());
    p
}

/// The usual interval between two polls of [`wait_until`] and [`wait_until_ok`].
pub const POLL: Duration = Duration::from_millis(50);

/// Call `poll` every `every` until it returns `Some`, and return that. Once
/// `timeout` has passed, panic with `what`, which says what did not happen
/// (e.g. "jobs never became active").
#[track_caller]
pub fn wait_until<T>(timeout: Duration, every: Duration, what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, every, || poll().ok_or(())) {
        Ok(v) => v,
        Err(()) => panic!("{what} (waited {timeout:?})"),
    }
}

/// Call `poll` every `every` until it returns `Ok`, and return that. `Err`
/// carries the state observed so far: once `timeout` has passed, panic with
/// `what` (what did not happen) and the last observed state (printed with
/// `{:#}`, so a JSON value comes out pretty).
#[track_caller]
pub fn wait_until_ok<T, S: std::fmt::Display>(
    timeout: Duration,
    every: Duration,
    what: &str,
    poll: impl FnMut() -> Result<T, S>,
) -> T {
    match poll_until(timeout, every, poll) {
        Ok(v) => v,
        Err(state) => panic!("{what} (waited {timeout:?}); last seen:\n{state:#}"),
    }
}

/// The loop of [`wait_until`] and [`wait_until_ok`]: the first `Ok`, or the
/// last `Err` once `timeout` has passed.
fn poll_until<T, S>(timeout: Duration, every: Duration, mut poll: impl FnMut() -> Result<T, S>) -> Result<T, S> {
    let deadline = Instant::now() + timeout;
    loop {
        match poll() {
            Err(_) if Instant::now() < deadline => std::thread::sleep(every),
            done => return done,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A byte-different copy of a component with the same behaviour: a custom
/// section (id 0: name, payload) appended at the end. A new digest for
/// deploy and hot-swap tests.
pub fn with_custom_section(bytes: &[u8], payload: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                return out.push(b);
            }
            out.push(b | 0x80);
        }
    }
    let name = b"bullpen-test";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend(body);
    out
}

/// Certificates for TLS tests, made by openssl in a temp dir (EC P-256, valid
/// two days): `ca.pem` signed `server.pem` (for 127.0.0.1 and localhost) and
/// `client.pem`; `other-ca.pem` is a CA that signed nothing here.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(d).output().expect("openssl not found");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (k, c, cn) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=bullpen test {ca}"));
            openssl(&[&["req", "-x509"][..], &key, &["-keyout", &k, "-out", &c, "-days", "2", "-subj", &cn]].concat());
        }
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let (k, csr, c) = (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"));
            let cn = format!("/CN={who}");
            openssl(&[&["req"][..], &key, &["-keyout", &k, "-out", &csr, "-subj", &cn]].concat());
            let ext = format!("{who}.ext");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &c,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs { dir }
    }

    /// `ca.pem`, `other-ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

/// How a test reaches a TLS-only redis-server: the CA, and a client
/// certificate when the server requires one.
#[derive(Clone)]
struct TlsClient {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// How a test reaches a TLS server made with `certs`, and the
/// `redis-server` arguments of one: `certs`' server certificate; `mutual`:
/// a client certificate signed by `certs`' CA is required
/// (`--tls-auth-clients yes`).
fn tls_server(certs: &Certs, mutual: bool) -> (TlsClient, Vec<String>) {
    let tls = TlsClient {
        ca: certs.path("ca.pem"),
        client: mutual.then(|| (certs.path("client.pem"), certs.path("client.key"))),
    };
    let args = vec![
        "--tls-cert-file".into(),
        certs.arg("server.pem"),
        "--tls-key-file".into(),
        certs.arg("server.key"),
        "--tls-ca-cert-file".into(),
        certs.arg("ca.pem"),
        "--tls-auth-clients".into(),
        if mutual { "yes" } else { "no" }.into(),
    ];
    (tls, args)
}

/// `--redis-ca` (and the client certificate) for bullpen.
fn tls_args(tls: Option<&TlsClient>) -> Vec<String> {
    let mut a = vec![];
    if let Some(t) = tls {
        a.extend(["--redis-ca".into(), t.ca.to_str().unwrap().into()]);
        if let Some((c, k)) = &t.client {
            a.extend([
                "--redis-cert".into(),
                c.to_str().unwrap().into(),
                "--redis-key".into(),
                k.to_str().unwrap().into(),
            ]);
        }
    }
    a
}

/// The environment tests/node/driver.js reads for TLS.
fn tls_node_env(tls: Option<&TlsClient>) -> Vec<(&'static str, String)> {
    let mut env = vec![];
    if let Some(t) = tls {
        env.push(("REDIS_TLS_CA", t.ca.to_str().unwrap().to_string()));
        if let Some((c, k)) = &t.client {
            env.push(("REDIS_TLS_CERT", c.to_str().unwrap().to_string()));
            env.push(("REDIS_TLS_KEY", k.to_str().unwrap().to_string()));
        }
    }
    env
}

/// A private redis-server for one test.
pub struct Redis {
    child: Child,
    pub port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    tls: Option<TlsClient>,
    /// Set by [`Redis::require_password`]: what [`Redis::cli`] authenticates with.
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// Start with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> Redis {
        Self::start_inner(extra, None)
    }

    /// A TLS-only server (`--port 0 --tls-port P`) with `certs`' server
    /// certificate; `mutual`: it requires a client certificate signed by
    /// `certs`' CA (`--tls-auth-clients yes`).
    pub fn start_tls(certs: &Certs, mutual: bool, extra: &[&str]) -> Redis {
        let (tls, mut args) = tls_server(certs, mutual);
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_inner(&args.iter().map(String::as_str).collect::<Vec<_>>(), Some(tls))
    }

    fn start_inner(extra: &[&str], tls: Option<TlsClient>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis_tls(port, &extra, dir.path(), tls.as_ref()) {
                return Redis { child, port, extra, dir, tls, password: None };
            }
        }
        panic!("could not start redis-server");
    }

    /// Kill the server (as a crash would) and start it again on the same
    /// port and directory: with `--appendonly yes` the data survives.
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.start_again();
    }

    /// Kill the server (as a crash would); its port then refuses connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the killed server again, on the same port and directory.
    pub fn start_again(&mut self) {
        self.child = spawn_redis_tls(self.port, &self.extra, self.dir.path(), self.tls.as_ref())
            .expect("redis-server did not come back");
    }

    /// A server still loading its dataset: `keys` keys saved, then the
    /// server restarted with `key-load-delay` (µs per key), so it answers
    /// LOADING for about `keys` × `delay_us` after this returns.
    pub fn start_loading(keys: usize, delay_us: u64) -> Redis {
        Self::start_loading_with(keys, delay_us, None)
    }

    /// [`Self::start_loading`], restarted with `--requirepass password`
    /// when one is given (AUTH works while loading; PING says LOADING).
    pub fn start_loading_with(keys: usize, delay_us: u64, password: Option<&str>) -> Redis {
        let mut r = Redis::start();
        let mut c = r.conn();
        let mut pipe = redis::pipe();
        for i in 0..keys {
            pipe.set(format!("k{i}"), i).ignore();
        }
        pipe.query::<()>(&mut c).unwrap();
        redis::cmd("SAVE").query::<()>(&mut c).unwrap();
        let _ = r.child.kill();
        let _ = r.child.wait();
        r.extra = ["--key-load-delay", &delay_us.to_string(), "--loading-process-events-interval-bytes", "1024"]
            .map(String::from)
            .to_vec();
        if let Some(p) = password {
            r.extra.extend(["--requirepass".to_string(), p.to_string()]);
        }
        r.child = Command::new("redis-server")
            .args(["--port", &r.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&r.extra)
            .arg("--dir")
            .arg(r.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", r.port),
            None => r.url(),
        };
        loop {
            let reply = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match reply {
                Err(e) if e.code() == Some("LOADING") => return r,
                _ => assert!(Instant::now() < deadline, "redis-server never answered LOADING: {reply:?}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// From now on the server requires `password` (`requirepass`), and
    /// authenticates with it to its master (`masterauth`), as a replica or
    /// a master demoted by a failover; [`Redis::cli`] uses it. A replication
    /// link already up stays up.
    pub fn require_password(&mut self, password: &str) {
        self.cli(&["CONFIG", "SET", "masterauth", password]);
        self.cli(&["CONFIG", "SET", "requirepass", password]);
        self.password = Some(password.to_string());
    }

    /// The server's process (to stop or kill it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the server hangs (the kernel still accepts connections,
    /// nothing answers), as in a long fsync or a paused VM, until [`resume`](Self::resume).
    pub fn stop(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT after [`stop`](Self::stop): the server runs what it received meanwhile.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// Hung for `d`, then running again.
    pub fn pause(&self, d: Duration) {
        self.stop();
        std::thread::sleep(d);
        self.resume();
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `--redis <url>` and, for a TLS server, `--redis-ca` (and the client
    /// certificate): how bullpen reaches this server.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--redis".to_string(), self.url()];
        a.extend(tls_args(self.tls.as_ref()));
        a
    }

    /// The environment tests/node/driver.js reads for TLS.
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        tls_node_env(self.tls.as_ref())
    }

    /// `redis-cli` on this server (TLS included), one command; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_command().args(args).output().expect("redis-cli not found");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn cli_command(&self) -> Command {
        let mut c = cli_command(self.port, self.tls.as_ref());
        if let Some(p) = &self.password {
            c.env("REDISCLI_AUTH", p);
        }
        c
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

fn cli_command(port: u16, tls: Option<&TlsClient>) -> Command {
    let mut c = Command::new("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(t) = tls {
        c.arg("--tls").arg("--cacert").arg(&t.ca);
        if let Some((cert, key)) = &t.client {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    c
}

fn spawn_redis_tls(port: u16, extra: &[String], dir: &Path, tls: Option<&TlsClient>) -> Option<Child> {
    let port = port.to_string();
    let port_args = match tls {
        Some(_) => vec!["--port", "0", "--tls-port", &port],
        None => vec!["--port", &port],
    };
    let mut child = Command::new("redis-server")
        .args(port_args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server not found: scripts/setup.sh installs it (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // port taken between probe and bind
        }
        let up = match tls {
            None => redis_ping(port.parse().unwrap()),
            Some(t) => cli_command(port.parse().unwrap(), Some(t))
                .arg("PING")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG")),
        };
        if up {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The server answers (NOAUTH too: it is up, and wants a password).
fn redis_ping(port: u16) -> bool {
    let reply = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    reply.is_ok() || reply.is_err_and(|e| e.code() == Some("NOAUTH"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster for one test: `masters` redis-servers with
/// `--cluster-enabled yes` (no replicas), joined by `redis-cli --cluster
/// create`; all killed on drop. [`Cluster::start_tls`]: TLS-only nodes.
pub struct Cluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
    tls: Option<TlsClient>,
}

impl Cluster {
    pub fn start(masters: usize) -> Cluster {
        Self::start_inner(masters, None, vec![])
    }

    /// A TLS-only Cluster: every node `--port 0 --tls-port P` with `certs`'
    /// server certificate, the cluster bus and replication over TLS too
    /// (`--tls-cluster yes`, `--tls-replication yes`); `mutual`: clients
    /// (and nodes, which present their server certificate) need a
    /// certificate signed by `certs`' CA.
    pub fn start_tls(masters: usize, certs: &Certs, mutual: bool) -> Cluster {
        let (tls, mut args) = tls_server(certs, mutual);
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        Self::start_inner(masters, Some(tls), args)
    }

    fn start_inner(masters: usize, tls: Option<TlsClient>, extra: Vec<String>) -> Cluster {
        // Built up node by node, so a failed start still kills the nodes already up.
        let mut cluster = Cluster { nodes: vec![], ports: vec![], dir: tempfile::tempdir().unwrap(), tls };
        for i in 0..masters {
            let ndir = cluster.dir.path().join(format!("node{i}"));
            std::fs::create_dir(&ndir).unwrap();
            // The bus port is set explicitly: the default (port + 10000) may be taken or out of range.
            let child = (0..5).find_map(|_| {
                let (port, bus) = (free_port(), free_port());
                let mut args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus.to_string(),
                ]
                .map(String::from)
                .to_vec();
                args.extend(extra.iter().cloned());
                spawn_redis_tls(port, &args, &ndir, cluster.tls.as_ref()).map(|c| (c, port))
            });
            let (c, port) = child.expect("could not start a cluster redis-server");
            cluster.nodes.push(c);
            cluster.ports.push(port);
        }
        let out = cli_command(cluster.ports[0], cluster.tls.as_ref())
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli not found (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must agree the cluster is up (all slots covered) before clients connect.
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            "cluster never reached cluster_state:ok",
            || {
                cluster
                    .ports
                    .iter()
                    .all(|p| cluster.cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                    .then_some(())
            },
        );
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        self.ports.iter().map(|p| format!("{scheme}://127.0.0.1:{p}")).collect()
    }

    /// `--cluster --redis <url>...` for bullpen (and, for a TLS Cluster,
    /// `--redis-ca` and the client certificate).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--cluster".to_string()];
        for u in self.urls() {
            a.extend(["--redis".to_string(), u]);
        }
        a.extend(tls_args(self.tls.as_ref()));
        a
    }

    /// The seed list as tests/node/driver.js takes it (comma-separated: a Cluster).
    pub fn node_url(&self) -> String {
        self.urls().join(",")
    }

    /// The environment tests/node/driver.js reads for TLS.
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        tls_node_env(self.tls.as_ref())
    }

    /// `redis-cli` on the node at `port` (TLS included), one command; its
    /// output (empty when it failed).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = cli_command(port, self.tls.as_ref()).args(args).output().expect("redis-cli not found");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A plaintext Cluster's connection (not for [`Cluster::start_tls`]).
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        assert!(self.tls.is_none(), "Cluster::conn is plaintext only");
        redis::cluster::ClusterClient::new(self.urls()).unwrap().get_connection().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `bullpen worker`.
pub struct Worker {
    pub child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    pub fn start(redis: &Redis, queue: &str, plugin: &Path, extra: &[&str]) -> Worker {
        let mut args = redis.args();
        args.extend(["--queue", queue, "--plugin", plugin.to_str().unwrap()].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args)
    }

    /// `bullpen worker <args>`, once it logged "worker ready".
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Worker {
        Self::spawn_env(args, &[])
    }

    /// The same with extra environment variables (e.g. `BULLPEN_LOG`).
    pub fn spawn_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let child = Command::new(bullpen_bin())
            .arg("worker")
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Worker { child, log, _dir: dir };
        w.wait_log("worker ready", Duration::from_secs(30));
        w
    }

    /// What the worker wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port of a worker started with `--metrics-addr 127.0.0.1:0`, from its log line.
    pub fn metrics_port(&self) -> u16 {
        let log = self.log();
        log.split("addr=127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_until_ok(timeout, POLL, &format!("worker log never said {needle:?}"), || {
            let log = self.log();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log)
            }
        })
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.child.wait().unwrap()
    }

    /// SIGKILL: the process dies mid-attempt, as on a machine failure.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Send `sig` (`-HUP`, ...) to the worker.
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }
}

/// `kill <sig> <pid>`, which must succeed.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success(), "kill {sig} {pid}");
}

impl Drop for Worker {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Stop a bullpen process the way an operator would: SIGTERM, up to 15 s
/// for a clean exit, then SIGKILL. Does nothing if it already exited.
pub fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `out`, after asserting that its command (`what`) succeeded; the failure
/// message has the command's stdout and stderr.
#[track_caller]
pub fn succeeded(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_json(mut cmd: Command, what: &str) -> Value {
    let out = succeeded(cmd.output().unwrap_or_else(|e| panic!("{what}: {e}")), what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{what}: bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(2000)]))
    })
}

/// `node tests/node/driver.js <args>` (the real bullmq npm package).
pub fn node(args: &[&str]) -> Value {
    node_env(args, &[])
}

/// The same with environment variables (e.g. [`Redis::node_env`]).
pub fn node_env(args: &[&str], env: &[(&str, String)]) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/node/driver.js")).args(args).envs(env.iter().map(|(k, v)| (k, v)));
    run_json(cmd, &format!("node driver.js {}", args.first().unwrap_or(&"")))
}

/// `tests/python/.venv/bin/python tests/python/driver.py <args>` (bullmq on PyPI).
pub fn python(args: &[&str]) -> Value {
    let py = root().join("tests/python/.venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh", py.display());
    let mut cmd = Command::new(py);
    cmd.arg(root().join("tests/python/driver.py")).args(args);
    run_json(cmd, "python driver.py")
}

/// Node QueueEvents listening in the background; `finish` collects events.
pub struct NodeEvents {
    child: Child,
}

impl NodeEvents {
    /// Listen until `count` completed/failed events arrived or `timeout`.
    pub fn listen(redis: &Redis, queue: &str, count: usize, timeout: Duration) -> NodeEvents {
        let mut child = Command::new("node")
            .arg(root().join("tests/node/driver.js"))
            .args(["events", &redis.url(), queue, &count.to_string(), &timeout.as_millis().to_string()])
            .envs(redis.node_env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "QueueEvents listener did not start");
        NodeEvents { child }
    }

    pub fn finish(self) -> Vec<Value> {
        let out: Output = self.child.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }
}

/// The job's log without bullpen's own `bullpen: ...` lines (such as the
/// `bullpen: plugin sha256:...` line written once per attempt, recording the
/// plugin version): only what the guest wrote.
pub fn guest_logs(job: &Value) -> Value {
    Value::Array(
        job["logs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| !l.as_str().unwrap().starts_with("bullpen: "))
            .cloned()
            .collect(),
    )
}

/// Inspect jobs from Node: `{jobs: [...], counts: {...}}`.
pub fn inspect(redis: &Redis, queue: &str, ids: &[String]) -> Value {
    node_env(&["inspect", &redis.url(), queue, &serde_json::to_string(ids).unwrap()], &redis.node_env())
}

/// Add jobs from Node; returns their ids. (The jobs go through stdin.)
pub fn node_add(redis: &Redis, queue: &str, jobs: Value) -> Vec<String> {
    let mut cmd = Command::new("node");
    cmd.arg(root().join("tests/node/driver.js")).args(["add", &redis.url(), queue, "-"]).envs(redis.node_env());
    ids(run_json_stdin(cmd, "node driver.js add", jobs.to_string().as_bytes()))
}

fn run_json_stdin(mut cmd: Command, what: &str, input: &[u8]) -> Value {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: bad JSON ({e})"))
}

pub fn ids(v: Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// Poll Node's view until every job is finished (completed or failed).
pub fn wait_finished(redis: &Redis, queue: &str, ids: &[String], timeout: Duration) -> Value {
    wait_until_ok(timeout, Duration::from_millis(100), "jobs not finished", || {
        let v = inspect(redis, queue, ids);
        let done = v["jobs"].as_array().unwrap().iter().all(|j| j["state"] == "completed" || j["state"] == "failed");
        if done {
            Ok(v)
        } else {
            Err(v)
        }
    })
}

/// Run `bullpen <args>` to completion.
pub fn bullpen(args: &[&str]) -> Output {
    Command::new(bullpen_bin()).args(args).env("NO_COLOR", "1").output().unwrap()
}

/// A Sentinel group for one test: a master, one replica of it, and
/// `sentinels` `redis-server --sentinel` processes monitoring it as `name`
/// with quorum 2 and short timers (1 s to call the master down, 3 s
/// failover timeout); all killed on drop.
pub struct SentinelGroup {
    pub master: Redis,
    pub replica: Redis,
    pub name: String,
    pub ports: Vec<u16>,
    sentinels: Vec<Child>,
    dir: tempfile::TempDir,
    secure: Secure,
    tls: Option<TlsClient>,
}

/// TLS and passwords for a [`SentinelGroup`]; the default is neither.
#[derive(Clone, Default)]
pub struct Secure {
    /// Every server and sentinel TLS-only (`port 0`, `tls-port`) with these
    /// certificates' server certificate, replication and the sentinels'
    /// links included (`tls-replication yes`); no client certificate needed.
    pub certs: Option<std::sync::Arc<Certs>>,
    /// Master and replica `requirepass` and `masterauth`; the sentinels'
    /// `sentinel auth-pass`.
    pub password: Option<String>,
    /// The sentinels' own `requirepass` (they use it with each other too).
    pub sentinel_password: Option<String>,
}

impl SentinelGroup {
    /// Started, and returned once the replica is in sync and every sentinel
    /// sees it and the other sentinels. `extra`: redis-server arguments for
    /// both servers.
    pub fn start(name: &str, extra: &[&str]) -> SentinelGroup {
        Self::start_secure(name, extra, Secure::default())
    }

    /// [`Self::start`] with TLS and passwords.
    pub fn start_secure(name: &str, extra: &[&str], secure: Secure) -> SentinelGroup {
        // The first sync at once (Redis waits 5 s by default for more replicas).
        let mut extra: Vec<&str> =
            ["--repl-diskless-sync-delay", "0"].into_iter().chain(extra.iter().copied()).collect();
        let start = |args: &[&str]| match &secure.certs {
            Some(c) => Redis::start_tls(c, false, args),
            None => Redis::start_with(args),
        };
        if secure.certs.is_some() {
            extra.extend(["--tls-replication", "yes"]);
        }
        let mut master = start(&extra);
        let replica_of = ["--replicaof", "127.0.0.1", &master.port.to_string()].map(String::from);
        let args: Vec<&str> = extra.iter().copied().chain(replica_of.iter().map(String::as_str)).collect();
        let mut replica = start(&args);
        wait_until(Duration::from_secs(10), POLL, "the replica never synced", || {
            replica.cli(&["INFO", "replication"]).contains("master_link_status:up").then_some(())
        });
        if let Some(p) = &secure.password {
            master.require_password(p);
            replica.require_password(p);
        }
        let tls = secure.certs.as_ref().map(|c| tls_server(c, false).0);
        let mut g = SentinelGroup {
            master,
            replica,
            name: name.to_string(),
            ports: vec![],
            sentinels: vec![],
            dir: tempfile::tempdir().unwrap(),
            secure,
            tls,
        };
        for _ in 0..3 {
            g.spawn_sentinel();
        }
        wait_until_ok(Duration::from_secs(20), Duration::from_millis(100), "sentinels did not find each other", || {
            let seen: Vec<String> = g.ports.iter().map(|&p| g.sentinel_cli(p, &["SENTINEL", "master", name])).collect();
            let ready = seen.iter().all(|m| {
                let field = |f: &str| m.lines().skip_while(|l| *l != f).nth(1).unwrap_or("").to_string();
                field("num-slaves") == "1" && field("num-other-sentinels") == (g.ports.len() - 1).to_string()
            });
            if ready {
                Ok(())
            } else {
                Err(seen.join("\n---\n"))
            }
        });
        g
    }

    fn spawn_sentinel(&mut self) {
        for _ in 0..5 {
            let port = free_port();
            let conf = self.dir.path().join(format!("sentinel-{port}.conf"));
            let name = &self.name;
            let mut text = match &self.secure.certs {
                Some(c) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients no\ntls-replication yes\n",
                    c.arg("server.pem"),
                    c.arg("server.key"),
                    c.arg("ca.pem")
                ),
                None => format!("port {port}\n"),
            };
            text += &format!(
                "bind 127.0.0.1\ndir {dir}\nsentinel monitor {name} 127.0.0.1 {m} 2\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 3000\n",
                dir = self.dir.path().display(),
                m = self.master.port
            );
            if let Some(p) = &self.secure.password {
                text += &format!("sentinel auth-pass {name} {p}\n");
            }
            if let Some(p) = &self.secure.sentinel_password {
                text += &format!("requirepass {p}\n");
            }
            std::fs::write(&conf, text).unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if self.sentinel_command(port).arg("PING").output().is_ok_and(|o| o.stdout.starts_with(b"PONG")) {
                    self.ports.push(port);
                    self.sentinels.push(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server --sentinel");
    }

    fn sentinel_cli(&self, port: u16, args: &[&str]) -> String {
        let out = self.sentinel_command(port).args(args).output().expect("redis-cli not found");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `redis-cli` for the sentinel at `port`, with its TLS and password.
    fn sentinel_command(&self, port: u16) -> Command {
        let mut c = cli_command(port, self.tls.as_ref());
        if let Some(p) = &self.secure.sentinel_password {
            c.env("REDISCLI_AUTH", p);
        }
        c
    }

    /// The environment tests/node/sentinel.js reads for TLS (`REDIS_TLS_CA`:
    /// sentinels and master) and passwords (`REDIS_PASSWORD`: the master's,
    /// `SENTINEL_PASSWORD`: the sentinels').
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        let mut env = tls_node_env(self.tls.as_ref());
        if let Some(p) = &self.secure.password {
            env.push(("REDIS_PASSWORD", p.clone()));
        }
        if let Some(p) = &self.secure.sentinel_password {
            env.push(("SENTINEL_PASSWORD", p.clone()));
        }
        env
    }

    /// `--sentinel 127.0.0.1:P` for each sentinel and `--sentinel-master NAME`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> =
            self.ports.iter().flat_map(|p| ["--sentinel".into(), format!("127.0.0.1:{p}")]).collect();
        a.extend(["--sentinel-master".into(), self.name.clone()]);
        a
    }

    /// `127.0.0.1:P,127.0.0.1:Q,...`: the sentinels for tests/node/sentinel.js.
    pub fn node_list(&self) -> String {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The port of the master as the first answering sentinel says now.
    pub fn master_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|&p| {
            let reply = self.sentinel_cli(p, &["SENTINEL", "get-master-addr-by-name", &self.name]);
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
