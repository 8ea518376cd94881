//! Where Redis is and how to reach it: one server, a Redis Cluster reached
//! through seed nodes, or the master of a Sentinel group, with TLS,
//! credentials and a connect timeout.
//! The one place that opens bullpen's own connections and builds
//! bullmq-official's connection options, so every command and the worker
//! treat every setup alike.
//!
//! On a Cluster, BullMQ's scripts touch several keys of a queue at once, so
//! all of them must hash to one slot: the prefix must carry a hash tag
//! (`{bull}`). bullpen's own keys (`<prefix>:<queue>:bullpen:*`, job logs,
//! locks) share that prefix and so that slot. Deploy notices use classic
//! pub/sub, which a Cluster broadcasts to every node, so subscribing on one
//! seed node sees them all.
//!
//! With Sentinel, every connection (bullpen's and bullmq-official's, via
//! the vendored `client_resolver` hook) asks the sentinels for the master
//! before each connection attempt and checks its ROLE, so a reconnect after
//! a failover reaches the new master; a READONLY reply (the master was
//! demoted) makes the connection reconnect too.
//!
//! Before any command uses Redis, [`RedisTarget::check`] makes one
//! connection and says in one line why Redis cannot be used (refused,
//! unknown host, no answer, TLS, credentials, loading, replica): bullmq's
//! own connections retry for tens of seconds before they give up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use bullmq::options::RedisConnectionOptions;
use bullmq::redis_connection::AnyConnection;
use redis::{ClientTlsConfig, TlsCertificates};

/// How long to wait for Redis when connecting (`--connect-timeout-ms`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Redis as the user named it (`--redis`, repeatable, `--cluster`, the TLS
/// files, a password from elsewhere than the URL).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// One URL for a single server; one or more seed nodes for a Cluster.
    /// Credentials included: never print these, print the target (masked).
    pub urls: Vec<String>,
    pub cluster: bool,
    /// CA and client certificate for `rediss://` (PEM bytes).
    tls: TlsFiles,
    /// Per connection attempt, and the preflight check's whole budget.
    pub connect_timeout: Duration,
    /// Set: `urls[0]` is the master's template (scheme, credentials,
    /// database; its host and port are replaced by the address the
    /// sentinels give).
    sentinel: Option<Sentinels>,
}

/// A Sentinel group, asked for the current master (`--sentinel`,
/// `--sentinel-master`).
#[derive(Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `redis[s]://[user:password@]host:port` of each sentinel; the
    /// credentials are the sentinel's own (often none), not the master's.
    pub urls: Vec<String>,
    /// The master's name in the sentinels' configuration (`sentinel monitor NAME ...`).
    pub master: String,
}

impl Sentinels {
    /// `HOST:PORT` or a `redis://` / `rediss://` URL per sentinel, checked.
    pub fn new(addrs: &[String], master: &str, password: Option<&str>) -> anyhow::Result<Sentinels> {
        if master.is_empty() {
            anyhow::bail!(
                "--sentinel needs --sentinel-master NAME (the name in the sentinels' `sentinel monitor NAME ...`)"
            );
        }
        let mut urls = Vec::new();
        for a in addrs {
            let u = if a.contains("://") { a.clone() } else { format!("redis://{a}") };
            let mut parsed = url::Url::parse(&u)
                .map_err(|e| anyhow::anyhow!("--sentinel {}: not HOST:PORT or a URL ({e})", mask(&u)))?;
            if !matches!(parsed.scheme(), "redis" | "rediss") || !parsed.has_host() {
                anyhow::bail!("--sentinel {}: give HOST:PORT, redis://HOST:PORT or rediss://HOST:PORT", mask(&u));
            }
            if parsed.port().is_none() {
                let _ = parsed.set_port(Some(26379));
            }
            if let (Some(p), None) = (password, parsed.password()) {
                let _ = parsed.set_password(Some(p));
            }
            urls.push(parsed.to_string());
        }
        Ok(Sentinels { urls, master: master.to_string() })
    }

    fn list(&self) -> String {
        self.urls.iter().map(|u| mask(u)).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels").field("urls", &self.list()).field("master", &self.master).finish()
    }
}

/// PEM bytes for TLS: the CA that signed the server's certificate (else the
/// webpki roots) and a client certificate and key for mutual TLS.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .client
                .clone()
                .map(|(client_cert, client_key)| ClientTlsConfig { client_cert, client_key }),
            root_cert: self.ca.clone(),
        }
    }
}

impl RedisTarget {
    /// One standalone server.
    pub fn single(url: impl Into<String>) -> Self {
        Self::new(vec![url.into()], false)
    }

    /// A Redis Cluster, discovered from these seed nodes.
    pub fn cluster<I: IntoIterator<Item = S>, S: Into<String>>(seeds: I) -> Self {
        Self::new(seeds.into_iter().map(Into::into).collect(), true)
    }

    fn new(urls: Vec<String>, cluster: bool) -> Self {
        RedisTarget {
            urls,
            cluster,
            tls: TlsFiles::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            sentinel: None,
        }
    }

    /// Reach the master of this Sentinel group; the single URL becomes the
    /// master's template (its scheme, user, password and database are used;
    /// its host and port are not).
    pub fn with_sentinels(mut self, s: Sentinels) -> anyhow::Result<Self> {
        if self.cluster {
            anyhow::bail!("--sentinel and --cluster do not go together: a Cluster fails over by itself");
        }
        if s.urls.is_empty() {
            anyhow::bail!("--sentinel-master needs at least one --sentinel HOST:PORT");
        }
        self.sentinel = Some(s);
        Ok(self)
    }

    /// What the command line gave, checked: several URLs only make sense
    /// as Cluster seeds, and a Cluster needs a hash-tagged prefix.
    pub fn from_args(urls: Vec<String>, cluster: bool, prefix: &str) -> anyhow::Result<Self> {
        if urls.is_empty() {
            anyhow::bail!("no --redis URL given");
        }
        if urls.len() > 1 && !cluster {
            anyhow::bail!(
                "{} --redis URLs given without --cluster: several URLs are the seed nodes of a Redis Cluster",
                urls.len()
            );
        }
        for u in &urls {
            let parsed = url::Url::parse(u).map_err(|e| anyhow::anyhow!("--redis {}: not a URL ({e})", mask(u)))?;
            if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                anyhow::bail!("--redis {}: the scheme must be redis://, rediss:// (TLS) or unix://", mask(u));
            }
        }
        let t = Self::new(urls, cluster);
        t.check_prefix(prefix)?;
        Ok(t)
    }

    /// Use these TLS files; a CA or client certificate means TLS, so
    /// `redis://` URLs become `rediss://`.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        if !tls.is_empty() {
            let sentinels = self.sentinel.iter_mut().flat_map(|s| s.urls.iter_mut());
            for u in self.urls.iter_mut().chain(sentinels) {
                if let Some(rest) = u.strip_prefix("redis://") {
                    *u = format!("rediss://{rest}");
                }
            }
        }
        self.tls = tls;
        self
    }

    /// Authenticate with this password where a URL carries none (a URL's
    /// own password wins).
    pub fn with_password(mut self, password: &str) -> Self {
        for u in &mut self.urls {
            if let Ok(mut parsed) = url::Url::parse(u) {
                if parsed.password().is_none() && parsed.has_host() && parsed.set_password(Some(password)).is_ok() {
                    *u = parsed.to_string();
                }
            }
        }
        self
    }

    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }

    /// On a Cluster, refuse a prefix without a hash tag: BullMQ's scripts
    /// would fail with CROSSSLOT on the first job.
    pub fn check_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        if self.cluster && hash_tag(prefix).is_none() {
            anyhow::bail!(
                "--cluster needs a hash-tagged --prefix such as '{{bull}}' (got {prefix:?}): BullMQ's scripts use several keys of a \
                 queue at once, and Redis Cluster runs a script only when all its keys are in one hash slot"
            );
        }
        Ok(())
    }

    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        if self.tls.is_empty() {
            redis::Client::open(url)
        } else {
            redis::Client::build_with_tls(url, self.tls.certificates())
        }
    }

    fn cluster_client(&self) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut b = redis::cluster::ClusterClient::builder(self.urls.clone()).connection_timeout(self.connect_timeout);
        if self.is_tls() {
            b = b.tls(redis::TlsMode::Secure);
        }
        if !self.tls.is_empty() {
            b = b.certs(self.tls.certificates());
        }
        b.build()
    }

    /// A connection that reconnects by itself: a `ConnectionManager` for a
    /// single server (with Sentinel: to the master found before each
    /// connection attempt), a cluster connection (routing by key, following
    /// MOVED/ASK) for a Cluster.
    pub async fn connect(&self) -> redis::RedisResult<AnyConnection> {
        if self.cluster {
            Ok(AnyConnection::Cluster(self.cluster_client()?.get_async_connection().await?))
        } else {
            let mut config =
                redis::aio::ConnectionManagerConfig::new().set_connection_timeout(Some(self.connect_timeout));
            if let Some(r) = self.resolver() {
                config = config.set_client_resolver(r);
            }
            let client = self.client(self.placeholder())?;
            Ok(AnyConnection::Single(redis::aio::ConnectionManager::new_with_config(client, config).await?))
        }
    }

    /// The URL a single-server client is built from. With Sentinel the
    /// resolver says where to connect and this client is never connected;
    /// it names the first sentinel, so that anything connecting without
    /// the resolver fails loudly (a sentinel refuses BullMQ's commands)
    /// instead of reaching some other Redis.
    fn placeholder(&self) -> &str {
        match &self.sentinel {
            Some(s) => &s.urls[0],
            None => &self.urls[0],
        }
    }

    /// With Sentinel: what a `ConnectionManager` asks before each
    /// connection attempt. Failures are I/O errors, so that the manager
    /// keeps retrying through a failover.
    fn resolver(&self) -> Option<redis::aio::ClientResolver> {
        self.sentinel.as_ref()?;
        let t = self.clone();
        Some(Arc::new(move || {
            let t = t.clone();
            async move {
                let as_io = |e: ConnectError| redis::RedisError::from(std::io::Error::other(e.to_string()));
                let url = t.master_url().await.map_err(as_io)?;
                t.check(&url, false).await.map_err(as_io)?;
                t.client(&url)
            }
            .boxed()
        }))
    }

    /// bullmq-official's connection options for the same target.
    pub fn bullmq_options(&self) -> RedisConnectionOptions {
        let mut o = RedisConnectionOptions::default();
        if self.cluster {
            o = o.cluster_nodes(self.urls.clone()).tls(self.is_tls());
        } else {
            o = o.url(self.placeholder().to_string());
            if let Some(r) = self.resolver() {
                o = o.client_resolver(r);
            }
        }
        if !self.tls.is_empty() {
            let (client_cert, client_key) = self.tls.client.clone().unzip();
            o = o.tls_certs(bullmq::options::TlsCerts { root_cert: self.tls.ca.clone(), client_cert, client_key });
        }
        o
    }

    /// A pub/sub connection on the first reachable node. On a Cluster any
    /// node will do: classic PUBLISH reaches the subscribers of every node.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        if let Some(resolve) = self.resolver() {
            let c = resolve().await?;
            return match tokio::time::timeout(self.connect_timeout, c.get_async_pubsub()).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            };
        }
        let mut last = None;
        for url in &self.urls {
            match self.client(url) {
                Ok(c) => match tokio::time::timeout(self.connect_timeout, c.get_async_pubsub()).await {
                    Ok(Ok(ps)) => return Ok(ps),
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => last = Some(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a target has at least one URL"))
    }
}

/// Why Redis cannot be used, in one line that names the target (password
/// masked) and states the cause once.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens at that address (ECONNREFUSED).
    #[error("cannot connect to {target}: connection refused (is Redis running and listening there?)")]
    Refused { target: String },
    /// The host name does not resolve.
    #[error("cannot connect to {target}: unknown host `{host}`")]
    UnknownHost { target: String, host: String },
    /// No connection, or no answer to it, within the connect timeout.
    #[error("cannot connect to {target}: no answer within {ms} ms (--connect-timeout-ms)")]
    Timeout { target: String, ms: u128 },
    /// The server's certificate does not chain to a trusted CA (the
    /// webpki roots, or `--redis-ca`).
    #[error("cannot connect to {target}: the server's TLS certificate is not trusted ({detail}); pass the CA that signed it with --redis-ca")]
    Untrusted { target: String, detail: String },
    /// Any other TLS failure: a plaintext port, a certificate for another
    /// name, a client certificate the server refused or did not get.
    #[error("cannot connect to {target}: TLS handshake failed ({detail})")]
    Tls { target: String, detail: String },
    /// The server closed the connection before answering: often a TLS-only
    /// port reached with `redis://`.
    #[error("cannot connect to {target}: the server closed the connection before answering (a TLS-only port? then use rediss://)")]
    Closed { target: String },
    /// WRONGPASS (bad user or password), NOAUTH (a password is required but
    /// none was given) or an AUTH the server refused otherwise.
    #[error("cannot connect to {target}: authentication failed: {detail}")]
    Auth { target: String, detail: String },
    /// The server is still loading its dataset (`waited`: for how long
    /// this command waited, e.g. " after 5000 ms").
    #[error("cannot use {target}: Redis is still loading its dataset into memory{waited} (LOADING)")]
    Loading { target: String, waited: String },
    /// The server is a replica: BullMQ writes on every command.
    #[error("cannot use {target}: it is a read-only replica{of} (READONLY); point --redis at the master")]
    ReadOnly { target: String, of: String },
    /// `maxmemory` reached with the `noeviction` policy: writes are refused.
    #[error("cannot write to {target}: Redis is out of memory ({detail})")]
    OutOfMemory { target: String, detail: String },
    /// No sentinel answered: each refused, timed out or is not a sentinel
    /// (`cause`: the last one's line).
    #[error("cannot reach any Sentinel of master `{master}` ({sentinels}): {cause}")]
    NoSentinel { master: String, sentinels: String, cause: String },
    /// The sentinels answered, and none monitors a master of that name.
    #[error("no Sentinel knows a master named `{master}` (asked {sentinels}); check --sentinel-master")]
    UnknownMaster { master: String, sentinels: String },
    /// Anything else the client or the server said.
    #[error("cannot use {target}: {detail}")]
    Other { target: String, detail: String },
}

impl ConnectError {
    /// The same cause, said of `target`.
    fn retarget(self, to: String) -> ConnectError {
        use ConnectError::*;
        match self {
            Refused { .. } => Refused { target: to },
            UnknownHost { host, .. } => UnknownHost { target: to, host },
            Timeout { ms, .. } => Timeout { target: to, ms },
            Untrusted { detail, .. } => Untrusted { target: to, detail },
            Tls { detail, .. } => Tls { target: to, detail },
            Closed { .. } => Closed { target: to },
            Auth { detail, .. } => Auth { target: to, detail },
            Loading { waited, .. } => Loading { target: to, waited },
            ReadOnly { of, .. } => ReadOnly { target: to, of },
            OutOfMemory { detail, .. } => OutOfMemory { target: to, detail },
            Other { detail, .. } => Other { target: to, detail },
            e @ (NoSentinel { .. } | UnknownMaster { .. }) => e,
        }
    }

    /// A failure that may pass by itself (a restart, a failover, a load):
    /// a worker waits it out; a wrong setting (credentials, TLS, a URL)
    /// will not change, so a worker stops on it at start.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. }
                | ConnectError::UnknownHost { .. }
                | ConnectError::Timeout { .. }
                | ConnectError::Closed { .. }
                | ConnectError::Loading { .. }
                | ConnectError::ReadOnly { .. }
                | ConnectError::OutOfMemory { .. }
                | ConnectError::NoSentinel { .. }
        )
    }
}

impl RedisTarget {
    /// Wait until Redis answers as a usable master, within the connect
    /// timeout: a server loading its dataset is waited for (said once).
    pub async fn ready(&self) -> Result<(), ConnectError> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let still_loading = || {
            let waited = format!(" after {} ms", start.elapsed().as_millis());
            Err(ConnectError::Loading { target: self.to_string(), waited })
        };
        let mut loading = false;
        loop {
            match tokio::time::timeout_at(deadline, self.check_all(false)).await {
                Ok(Err(ConnectError::Loading { .. })) => {
                    if tokio::time::Instant::now() >= deadline {
                        return still_loading();
                    }
                    if !loading {
                        tracing::warn!(
                            redis = %self,
                            "Redis is loading its dataset into memory; waiting up to {} ms",
                            self.connect_timeout.as_millis()
                        );
                        loading = true;
                    }
                    let next = tokio::time::Instant::now() + Duration::from_millis(100);
                    tokio::time::sleep_until(next.min(deadline)).await;
                }
                Ok(r) => return r,
                Err(_) if loading => return still_loading(),
                Err(_) => {
                    return Err(ConnectError::Timeout {
                        target: self.to_string(),
                        ms: self.connect_timeout.as_millis(),
                    })
                }
            }
        }
    }

    /// One try of [`Self::ready`], without waiting out LOADING and without
    /// logging, for a caller with its own retry loop that is about to write
    /// (the worker): a server out of memory under `noeviction` is refused
    /// too.
    pub async fn check_once(&self) -> Result<(), ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.check_all(true)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout { target: self.to_string(), ms: self.connect_timeout.as_millis() }),
        }
    }

    /// [`Self::check`] on each URL: the first that works. A Cluster needs
    /// one reachable seed; its failure is the last seed's.
    async fn check_all(&self, writes: bool) -> Result<(), ConnectError> {
        if self.sentinel.is_some() {
            let url = self.master_url().await?;
            return self.check(&url, writes).await;
        }
        let mut last = None;
        for url in &self.urls {
            match self.check(url, writes).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a target has at least one URL"))
    }

    /// The current master's URL, from the first sentinel that knows it
    /// (each asked within its share of the connect timeout). The address is
    /// not checked here: the caller's [`Self::check`] asks its ROLE.
    async fn master_url(&self) -> Result<String, ConnectError> {
        let s = self.sentinel.as_ref().expect("only with Sentinel");
        let per = (self.connect_timeout / s.urls.len() as u32).max(Duration::from_millis(200));
        let (mut answered, mut last, mut auth) = (0, None, None);
        for url in &s.urls {
            match tokio::time::timeout(per, self.ask_sentinel(url, &s.master, per)).await {
                Ok(Ok(Some((host, port)))) => {
                    let master = self.master_at(&host, port);
                    note_master(&s.master, &mask(&master));
                    return Ok(master);
                }
                Ok(Ok(None)) => answered += 1,
                Ok(Err(e @ ConnectError::Auth { .. })) => auth = Some(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(ConnectError::Timeout { target: mask(url), ms: per.as_millis() }),
            }
        }
        // A wrong setting first: it will not pass by itself.
        if let Some(e) = auth {
            return Err(e);
        }
        if answered > 0 {
            return Err(ConnectError::UnknownMaster { master: s.master.clone(), sentinels: s.list() });
        }
        let cause = last.map(|e| e.to_string()).unwrap_or_default();
        Err(ConnectError::NoSentinel { master: s.master.clone(), sentinels: s.list(), cause })
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel: `None` when it
    /// does not know the name.
    async fn ask_sentinel(
        &self,
        url: &str,
        master: &str,
        timeout: Duration,
    ) -> Result<Option<(String, u16)>, ConnectError> {
        // A refused AUTH (or a NOAUTH) is the sentinels' password, not the
        // master's: say which, and where it comes from.
        let of_sentinel = |e: ConnectError| {
            match e {
            ConnectError::Auth { target, detail } => ConnectError::Auth {
                target: format!("Sentinel {target}"),
                detail: format!(
                    "{detail} (the sentinels' own password: --sentinel-password-file or redis[s]://:PASSWORD@ in --sentinel)"
                ),
            },
            other => other,
        }
        };
        let fail = |e: redis::RedisError| of_sentinel(self.classify(url, &e));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        // AUTH sent here, as in `check`: the client would replace the
        // server's WRONGPASS with a message of its own.
        let (bare, auth) = split_credentials(url);
        let client = self.client(&bare).map_err(fail)?;
        let mut c = client.get_multiplexed_async_connection_with_config(&config).await.map_err(fail)?;
        if let Some((user, pass)) = auth {
            let mut cmd = redis::cmd("AUTH");
            if let Some(user) = user {
                cmd.arg(user);
            }
            cmd.arg(pass).query_async::<()>(&mut c).await.map_err(|e| {
                of_sentinel(match self.classify(url, &e) {
                    ConnectError::Other { target, detail } => ConnectError::Auth { target, detail },
                    other => other,
                })
            })?;
        }
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query_async(&mut c).await.map_err(fail)
    }

    /// The master's template URL at `host:port`.
    fn master_at(&self, host: &str, port: u16) -> String {
        let mut u = url::Url::parse(&self.urls[0]).expect("checked in from_args");
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let _ = u.set_host(Some(&host));
        let _ = u.set_port(Some(port));
        u.to_string()
    }

    /// One connection to `url`: authenticate, PING, and (not on a
    /// Cluster) ask the role. The AUTH is sent here rather than by the
    /// client, which replaces the server's WRONGPASS/NOAUTH with a message
    /// of its own.
    async fn check(&self, url: &str, writes: bool) -> Result<(), ConnectError> {
        let (bare, auth) = split_credentials(url);
        let fail = |e: redis::RedisError| self.classify(url, &e);
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let client = self.client(&bare).map_err(fail)?;
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        let mut c = if bare.starts_with("rediss://") {
            self.tls_connect(url, connecting).await?
        } else {
            connecting.await.map_err(fail)?
        };
        if let Some((user, pass)) = auth {
            let mut cmd = redis::cmd("AUTH");
            if let Some(user) = user {
                cmd.arg(user);
            }
            cmd.arg(pass).query_async::<()>(&mut c).await.map_err(|e| match self.classify(url, &e) {
                ConnectError::Other { target, detail } => ConnectError::Auth { target, detail },
                other => other,
            })?;
        }
        redis::cmd("PING").query_async::<()>(&mut c).await.map_err(fail)?;
        if self.cluster {
            return Ok(());
        }
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.map_err(fail)?;
        let text = |v: Option<&redis::Value>| match v {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            Some(redis::Value::Int(i)) => i.to_string(),
            _ => String::new(),
        };
        if let "slave" | "replica" = text(role.first()).as_str() {
            let of = format!(" of {}:{}", text(role.get(1)), text(role.get(2)));
            return Err(ConnectError::ReadOnly { target: mask(url), of });
        }
        if writes {
            let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.map_err(fail)?;
            if let Some(detail) = out_of_memory(&info) {
                return Err(ConnectError::OutOfMemory { target: mask(url), detail });
            }
        }
        Ok(())
    }

    /// A TLS connection, told apart from a silent server when it stalls: a
    /// plaintext Redis port reads the ClientHello as the start of an inline
    /// command and waits for its end, so the handshake never ends. Once half
    /// the connect timeout has passed without a handshake, the port is asked
    /// `PING` in plaintext on a second connection; a Redis reply there is
    /// the cause, said at once. (A healthy TLS server has long answered by
    /// then, so it never sees the probe.)
    async fn tls_connect<T>(
        &self,
        url: &str,
        connecting: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ConnectError> {
        let fail = |e: redis::RedisError| self.classify(url, &e);
        tokio::pin!(connecting);
        let half = self.connect_timeout / 2;
        tokio::select! {
            r = &mut connecting => return r.map_err(fail),
            () = tokio::time::sleep(half) => {}
        }
        tokio::select! {
            r = &mut connecting => r.map_err(fail),
            true = speaks_plaintext_redis(url, half) => Err(ConnectError::Tls {
                target: mask(url),
                detail: "no answer to it, and the port answers plaintext Redis: it is not a TLS port; \
                         use redis:// without --redis-ca"
                    .into(),
            }),
        }
    }

    /// The one-line cause of a failed command, when `err` holds a Redis
    /// error that says Redis is unreachable or unusable (rather than that
    /// the command itself was wrong).
    pub fn explain(&self, err: &anyhow::Error) -> Option<ConnectError> {
        let url = self.urls.first()?;
        let e = err.chain().find_map(|e| e.downcast_ref::<redis::RedisError>())?;
        match self.classify(url, e) {
            ConnectError::Other { .. } => None,
            // With Sentinel the template URL names no server: name the group.
            c if self.sentinel.is_some() => Some(c.retarget(self.to_string())),
            c => Some(c),
        }
    }

    fn classify(&self, url: &str, e: &redis::RedisError) -> ConnectError {
        let target = mask(url);
        let text = e.to_string();
        let server = || match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => text.clone(),
        };
        match e.code() {
            Some("WRONGPASS" | "NOAUTH" | "NOPERM") => return ConnectError::Auth { target, detail: server() },
            Some("LOADING") => return ConnectError::Loading { target, waited: String::new() },
            Some("READONLY") => return ConnectError::ReadOnly { target, of: String::new() },
            // Refused inside a script, Redis appends `script: <sha>, on @user_script:<line>.`
            Some("OOM") => {
                let detail = server();
                let detail = detail.split(" script: ").next().unwrap_or_default().to_string();
                return ConnectError::OutOfMemory { target, detail };
            }
            _ => {}
        }
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return ConnectError::Auth { target, detail: text };
        }
        if e.is_connection_refusal() {
            return ConnectError::Refused { target };
        }
        if e.is_timeout() {
            return ConnectError::Timeout { target, ms: self.connect_timeout.as_millis() };
        }
        if text.contains("failed to lookup address") {
            let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(String::from)).unwrap_or_default();
            return ConnectError::UnknownHost { target, host };
        }
        if url.starts_with("rediss://") && e.is_io_error() {
            // rustls reports an untrusted chain as `invalid peer
            // certificate: UnknownIssuer` (or BadSignature, for a CA
            // that did not sign it).
            if text.contains("invalid peer certificate")
                && (text.contains("UnknownIssuer") || text.contains("BadSignature"))
            {
                return ConnectError::Untrusted { target, detail: text };
            }
            return ConnectError::Tls { target, detail: text };
        }
        if e.is_connection_dropped() {
            return ConnectError::Closed { target };
        }
        ConnectError::Other { target, detail: text }
    }
}

/// Whether `url`'s host and port answer a plaintext `PING` as Redis does
/// (`+PONG`, or an error such as `-NOAUTH`) within `within`.
async fn speaks_plaintext_redis(url: &str, within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((host, port)) = url::Url::parse(url).ok().and_then(|u| Some((u.host_str()?.to_string(), u.port()))) else {
        return false;
    };
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(format!("{host}:{}", port.unwrap_or(6379))).await.ok()?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0u8; 5];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG") || (n > 1 && buf[0] == b'-' && buf[1].is_ascii_uppercase()))
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(true)))
}

/// From `INFO memory`: why writes are refused, when `maxmemory` is reached
/// under the `noeviction` policy (Redis then answers OOM to every write).
fn out_of_memory(info: &str) -> Option<String> {
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':'))).map(str::trim);
    let used: u64 = field("used_memory")?.parse().ok()?;
    let max: u64 = field("maxmemory")?.parse().ok()?;
    (max > 0 && used >= max && field("maxmemory_policy") == Some("noeviction"))
        .then(|| format!("maxmemory {max} bytes reached under maxmemory-policy noeviction, so writes are refused"))
}

/// Set for the one-shot commands (`add`, `stats`, ...): where a Sentinel
/// master is first found is not worth their one line.
static ONE_SHOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This process runs a one-shot command (see [`ONE_SHOT`]).
pub(crate) fn one_shot() {
    ONE_SHOT.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Log where a Sentinel group's master is, once per change (every
/// connection resolves it; one line per failover is what an operator needs).
fn note_master(name: &str, at: &str) {
    static SEEN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    match seen.iter_mut().find(|(n, _)| n == name) {
        Some((_, a)) if a == at => {}
        Some((_, a)) => {
            *a = at.to_string();
            tracing::info!("Sentinel: master `{name}` is at {at}");
        }
        None => {
            seen.push((name.to_string(), at.to_string()));
            // A one-shot command's only line is its result or its error.
            if ONE_SHOT.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!("Sentinel: master `{name}` is at {at}");
            } else {
                tracing::info!("Sentinel: master `{name}` is at {at}");
            }
        }
    }
}

/// `url` without its user and password, and those (percent-decoded).
#[allow(clippy::type_complexity)]
fn split_credentials(url: &str) -> (String, Option<(Option<String>, String)>) {
    let Ok(mut u) = url::Url::parse(url) else { return (url.to_string(), None) };
    let Some(pass) = u.password().map(decode) else { return (url.to_string(), None) };
    let user = Some(decode(u.username())).filter(|s| !s.is_empty());
    let _ = u.set_password(None);
    let _ = u.set_username("");
    (u.to_string(), Some((user, pass)))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `url` with its password replaced by `***`: what logs and errors show.
pub fn mask(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("urls", &self.urls.iter().map(|u| mask(u)).collect::<Vec<_>>())
            .field("cluster", &self.cluster)
            .field("sentinel", &self.sentinel)
            .field("ca", &self.tls.ca.is_some())
            .field("client_cert", &self.tls.client.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        RedisTarget::single(url)
    }
}

impl From<String> for RedisTarget {
    fn from(url: String) -> Self {
        RedisTarget::single(url)
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| mask(u)).collect();
        if let Some(s) = &self.sentinel {
            write!(f, "Sentinel master `{}` (sentinels {})", s.master, s.list())
        } else if self.cluster {
            write!(f, "Redis Cluster (seeds {})", urls.join(", "))
        } else {
            f.write_str(&urls[0])
        }
    }
}

/// The part of `key` Redis Cluster hashes: the text between the first `{`
/// and the next `}`, when that is not empty.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag("{bull}"), Some("bull"));
        assert_eq!(hash_tag("x{a}{b}"), Some("a"));
        assert_eq!(hash_tag("bull"), None);
        assert_eq!(hash_tag("{}bull"), None, "an empty tag hashes the whole key");
        assert_eq!(hash_tag("{bull"), None);
    }

    #[test]
    fn cluster_needs_a_tagged_prefix_and_several_urls_need_cluster() {
        let seeds = vec!["redis://127.0.0.1:7000".to_string(), "redis://127.0.0.1:7001".to_string()];
        assert!(RedisTarget::from_args(seeds.clone(), true, "{bull}").is_ok());
        let e = RedisTarget::from_args(seeds.clone(), true, "bull").unwrap_err().to_string();
        assert!(e.contains("hash-tagged --prefix"), "{e}");
        let e = RedisTarget::from_args(seeds, false, "bull").unwrap_err().to_string();
        assert!(e.contains("without --cluster"), "{e}");
        assert!(RedisTarget::from_args(vec!["redis://h:1".into()], false, "bull").is_ok());
        let e = RedisTarget::from_args(vec!["http://u:secret@h:1".into()], false, "bull").unwrap_err().to_string();
        assert!(e.contains("scheme") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn passwords_are_masked_and_a_urls_own_password_wins() {
        let t = RedisTarget::single("redis://app:s3cr%40t@h:6379/0");
        assert_eq!(t.to_string(), "redis://app:***@h:6379/0");
        assert!(!format!("{t:?}").contains("s3cr"));
        assert_eq!(t.clone().with_password("other").urls[0], "redis://app:s3cr%40t@h:6379/0");
        let t = RedisTarget::single("redis://h:6379").with_password("p@ss word");
        assert_eq!(t.to_string(), "redis://:***@h:6379");
        let (bare, auth) = split_credentials(&t.urls[0]);
        assert_eq!((bare.as_str(), auth), ("redis://h:6379", Some((None, "p@ss word".to_string()))));
        let (_, auth) = split_credentials("redis://app:s3cr%40t@h:6379");
        assert_eq!(auth, Some((Some("app".to_string()), "s3cr@t".to_string())));
    }

    #[test]
    fn out_of_memory_only_under_noeviction() {
        let info =
            |used, policy| format!("# Memory\r\nused_memory:{used}\r\nmaxmemory:1000\r\nmaxmemory_policy:{policy}\r\n");
        assert!(out_of_memory(&info(1200, "noeviction")).is_some());
        assert!(out_of_memory(&info(900, "noeviction")).is_none());
        assert!(out_of_memory(&info(1200, "allkeys-lru")).is_none());
        assert!(out_of_memory("used_memory:5\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n").is_none());
    }

    #[test]
    fn sentinels_are_addresses_or_urls_and_never_print_a_password() {
        let s = Sentinels::new(&["10.0.0.1:26380".into(), "rediss://u:pw@s2".into()], "main", Some("sp")).unwrap();
        assert_eq!(s.urls, ["redis://:sp@10.0.0.1:26380", "rediss://u:pw@s2:26379"]);
        assert!(Sentinels::new(&["h:1".into()], "", None).unwrap_err().to_string().contains("--sentinel-master"));
        assert!(Sentinels::new(&["http://h:1".into()], "m", None).is_err());
        let t = RedisTarget::single("redis://app:secret@ignored:6379/2").with_sentinels(s.clone()).unwrap();
        assert_eq!(
            t.to_string(),
            "Sentinel master `main` (sentinels redis://:***@10.0.0.1:26380, rediss://u:***@s2:26379)"
        );
        assert!(!format!("{t:?}").contains("secret") && !format!("{t:?}").contains("sp@"));
        assert_eq!(t.master_at("10.0.0.9", 7000), "redis://app:secret@10.0.0.9:7000/2");
        assert_eq!(t.master_at("::1", 7000), "redis://app:secret@[::1]:7000/2");
        assert_eq!(t.bullmq_options().url, "redis://:sp@10.0.0.1:26380", "never connected: the resolver says where");
        assert!(t.bullmq_options().client_resolver.is_some());
        let tls = TlsFiles { ca: Some(b"pem".to_vec()), client: None };
        assert_eq!(t.with_tls(tls).sentinel.unwrap().urls[0], "rediss://:sp@10.0.0.1:26380");
        let cluster = RedisTarget::cluster(["redis://a:1", "redis://b:1"]);
        assert!(cluster.with_sentinels(s).unwrap_err().to_string().contains("--cluster"));
    }

    #[test]
    fn tls_files_make_a_url_rediss() {
        let tls = TlsFiles { ca: Some(b"pem".to_vec()), client: None };
        let t = RedisTarget::single("redis://h:6379").with_tls(tls);
        assert_eq!(t.urls[0], "rediss://h:6379");
        assert!(t.is_tls() && t.bullmq_options().tls_certs.is_some());
    }
}
