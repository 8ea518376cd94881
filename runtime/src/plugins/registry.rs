//! Which plugin version a queue runs now: locally, the [`PluginSlot`] of a
//! binding; fleet-wide, the Redis [`Registry`] that `bullpen deploy` and
//! `bullpen rollback` write and every worker of the queue follows.
//!
//! Attempts take an `Arc` of the current plugin when they start, so a swap
//! never disturbs a running attempt: it finishes on the version it started
//! with, and the next attempt uses the new one.
//!
//! # The registry in Redis
//!
//! Every key of one queue lives under the queue's BullMQ base
//! `<prefix>:<queue>`, so a hash-tagged prefix such as `{bull}` keeps the
//! queue and its registry in one Redis Cluster slot (the deploy and rollback
//! scripts touch several keys at once):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:<queue>:bullpen:plugins` | hash | digest → component bytes |
//! | `<prefix>:<queue>:bullpen:versions` | sorted set | digest, scored by its last deploy time (ms since the epoch) |
//! | `<prefix>:<queue>:bullpen:current` | string | the digest workers must run |
//! | `<prefix>:<queue>:bullpen:history` | list | digests in the order they became current (last = current; at most 100) |
//! | `<prefix>:<queue>:bullpen:deploys` | pub/sub channel | a [`Notice`] (JSON) each time `current` changes |
//!
//! A digest is the lowercase sha256 hex of the component bytes
//! ([`super::plugin::digest`]). The registry stores only components that
//! `bullpen deploy` validated; workers check the digest of what they fetch.

use std::sync::{Arc, RwLock};

use bullmq::redis_connection::AnyConnection;
use serde::{Deserialize, Serialize};

use super::plugin::Plugin;
use crate::conn::RedisTarget;
use crate::now_ms;

/// The current plugin of one binding; swapped atomically.
pub(crate) struct PluginSlot {
    current: RwLock<Arc<Plugin>>,
}

impl PluginSlot {
    pub(crate) fn new(plugin: Arc<Plugin>) -> Self {
        PluginSlot { current: RwLock::new(plugin) }
    }

    /// The version new attempts use.
    pub(crate) fn current(&self) -> Arc<Plugin> {
        self.current.read().unwrap().clone()
    }

    /// Make `plugin` current; returns the previous version.
    pub(crate) fn swap(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        std::mem::replace(&mut *self.current.write().unwrap(), plugin)
    }
}

/// How many entries `bullpen:history` keeps (how far back a plain
/// `bullpen rollback` can go).
pub(crate) const HISTORY_LEN: i64 = 100;

/// The registry keys of one queue (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct RegistryKeys {
    base: String,
}

impl RegistryKeys {
    pub(crate) fn new(prefix: &str, queue: &str) -> Self {
        RegistryKeys { base: format!("{prefix}:{queue}:bullpen") }
    }
    /// Sorted set: live worker id scored by its last heartbeat (ms); see `stats`.
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.base)
    }
    /// Hash: worker id → JSON (host, pid, digest, concurrency, start time).
    pub(crate) fn worker_info(&self) -> String {
        format!("{}:worker-info", self.base)
    }
    /// Hash: digest → component bytes.
    pub(crate) fn plugins(&self) -> String {
        format!("{}:plugins", self.base)
    }
    /// Sorted set: digest scored by its last deploy time (ms).
    pub(crate) fn versions(&self) -> String {
        format!("{}:versions", self.base)
    }
    /// String: the current digest.
    pub(crate) fn current(&self) -> String {
        format!("{}:current", self.base)
    }
    /// List: digests in the order they became current.
    pub(crate) fn history(&self) -> String {
        format!("{}:history", self.base)
    }
    /// Pub/sub channel of [`Notice`]s.
    pub(crate) fn channel(&self) -> String {
        format!("{}:deploys", self.base)
    }
}

/// What is published on the channel when the current version changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Notice {
    /// The digest that is now current.
    pub(crate) digest: String,
    /// When it was made current (ms since the epoch, the deploying machine's clock).
    pub(crate) at: u64,
    /// `deploy` or `rollback`.
    pub(crate) action: String,
}

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// No version was ever deployed for this queue (under this prefix).
    #[error("nothing is deployed for queue `{queue}` (no key {key}); run `bullpen deploy` first")]
    NothingDeployed { queue: String, key: String },
    /// `bullpen rollback` without `--to`, but the history holds only the
    /// current version.
    #[error("queue `{queue}` has no previous version to roll back to (current: {current}); use --to <digest>")]
    NoPrevious { queue: String, current: String },
    /// `--to` names no stored version.
    #[error("no deployed version of queue `{queue}` matches `{spec}` (see `bullpen plugins --queue {queue}`)")]
    UnknownVersion { queue: String, spec: String },
    /// `--to` is a digest prefix that matches several versions.
    #[error("`{spec}` matches several versions of queue `{queue}`: {matches:?}; give more digits")]
    Ambiguous { queue: String, spec: String, matches: Vec<String> },
    /// A Redis command failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something the registry scripts never return (keys
    /// written by something else).
    #[error("unexpected reply from redis: {0}")]
    Reply(#[from] redis::ParsingError),
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone)]
pub(crate) struct Switched {
    /// The digest current before (None: nothing was deployed).
    pub(crate) previous: Option<String>,
    /// The digest current now.
    pub(crate) current: String,
    /// How many subscribers (workers) received the notice. On a Cluster,
    /// only those subscribed on the node that ran the script are counted
    /// (PUBLISH reaches the others but reports local receivers).
    pub(crate) notified: u64,
}

/// One stored version, as `bullpen plugins` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Version {
    pub(crate) digest: String,
    /// Last deploy time, ms since the epoch.
    pub(crate) deployed_at: u64,
    /// Component size in bytes.
    pub(crate) size: u64,
    pub(crate) current: bool,
}

/// Store the bytes, record the deploy time, make the digest current (pushing
/// it on the history when it changes), publish the notice. One script, so a
/// concurrent deploy or rollback never interleaves.
const DEPLOY: &str = r#"
-- KEYS: plugins, versions, current, history; ARGV: digest, bytes, now, history len, channel, notice
local prev = redis.call('GET', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if prev ~= ARGV[1] then
  redis.call('SET', KEYS[3], ARGV[1])
  redis.call('RPUSH', KEYS[4], ARGV[1])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[4]), -1)
end
local n = redis.call('PUBLISH', ARGV[5], ARGV[6])
return {prev or '', n}
"#;

/// Roll back: to ARGV[1] when given, else to the version before the current
/// one in the history (popping the current one, so repeated rollbacks walk
/// further back). Codes: {0, prev, new, notified}; {1, cur, cur, 0} when the
/// target is already current; -1 nothing deployed; -2 no previous version;
/// -3 the target is not stored.
const ROLLBACK: &str = r#"
-- KEYS: plugins, current, history; ARGV: target or '', history len, channel, notice template
local cur = redis.call('GET', KEYS[2])
if not cur then return {-1} end
local target = ARGV[1]
if target == '' then
  local n = redis.call('LLEN', KEYS[3])
  while n > 0 and redis.call('LINDEX', KEYS[3], -1) == cur do
    redis.call('RPOP', KEYS[3])
    n = n - 1
  end
  if n == 0 then
    redis.call('RPUSH', KEYS[3], cur)
    return {-2, cur}
  end
  target = redis.call('LINDEX', KEYS[3], -1)
else
  if redis.call('HEXISTS', KEYS[1], target) == 0 then return {-3} end
  if target == cur then return {1, cur, cur, 0} end
  redis.call('RPUSH', KEYS[3], target)
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[2]), -1)
end
if redis.call('HEXISTS', KEYS[1], target) == 0 then return {-3} end
redis.call('SET', KEYS[2], target)
local notice = string.gsub(ARGV[4], '@DIGEST@', target)
local n = redis.call('PUBLISH', ARGV[3], notice)
return {0, cur, target, n}
"#;

/// The registry of one queue.
#[derive(Clone)]
pub(crate) struct Registry {
    pub(crate) keys: RegistryKeys,
    pub(crate) queue: String,
    conn: AnyConnection,
}

impl Registry {
    /// Connect (the connection reconnects by itself after a failure).
    pub(crate) async fn connect(redis: &RedisTarget, prefix: &str, queue: &str) -> Result<Registry, RegistryError> {
        let conn = redis.connect().await?;
        Ok(Registry { keys: RegistryKeys::new(prefix, queue), queue: queue.to_string(), conn })
    }

    /// Store `bytes` under `digest`, make it current and notify the workers.
    /// The caller has validated the component (as `bullpen deploy` does) and
    /// computed `digest` from exactly these bytes.
    pub(crate) async fn deploy(&self, digest: &str, bytes: &[u8]) -> Result<Switched, RegistryError> {
        let at = now_ms();
        let notice = Notice { digest: digest.to_string(), at, action: "deploy".into() };
        let (prev, notified): (String, u64) = redis::Script::new(DEPLOY)
            .key(self.keys.plugins())
            .key(self.keys.versions())
            .key(self.keys.current())
            .key(self.keys.history())
            .arg(digest)
            .arg(bytes)
            .arg(at)
            .arg(HISTORY_LEN)
            .arg(self.keys.channel())
            .arg(serde_json::to_string(&notice).expect("notice serializes"))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Switched { previous: (!prev.is_empty()).then_some(prev), current: digest.to_string(), notified })
    }

    /// Make an earlier version current again: `to` (a digest, a unique
    /// prefix of one, optionally `sha256:`-prefixed), or by default the
    /// version that was current before the current one.
    pub(crate) async fn rollback(&self, to: Option<&str>) -> Result<Switched, RegistryError> {
        let target = match to {
            Some(spec) => self.resolve(spec).await?,
            None => String::new(),
        };
        let at = now_ms();
        let template =
            serde_json::to_string(&Notice { digest: "@DIGEST@".into(), at, action: "rollback".into() }).unwrap();
        let reply: Vec<redis::Value> = redis::Script::new(ROLLBACK)
            .key(self.keys.plugins())
            .key(self.keys.current())
            .key(self.keys.history())
            .arg(&target)
            .arg(HISTORY_LEN)
            .arg(self.keys.channel())
            .arg(template)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let code: i64 = reply.first().map(redis::from_redis_value_ref).transpose()?.unwrap_or(-99);
        let text = |i: usize| -> Result<String, RegistryError> {
            Ok(reply.get(i).map(redis::from_redis_value_ref::<String>).transpose()?.unwrap_or_default())
        };
        match code {
            0 | 1 => Ok(Switched {
                previous: Some(text(1)?),
                current: text(2)?,
                notified: reply.get(3).map(redis::from_redis_value_ref).transpose()?.unwrap_or(0),
            }),
            -1 => Err(self.nothing_deployed()),
            -2 => Err(RegistryError::NoPrevious { queue: self.queue.clone(), current: text(1)? }),
            _ => Err(RegistryError::UnknownVersion { queue: self.queue.clone(), spec: to.unwrap_or("").to_string() }),
        }
    }

    fn nothing_deployed(&self) -> RegistryError {
        RegistryError::NothingDeployed { queue: self.queue.clone(), key: self.keys.current() }
    }

    /// A full digest from what an operator typed: a digest or a unique
    /// prefix (at least 4 hex digits), with or without `sha256:`.
    pub(crate) async fn resolve(&self, spec: &str) -> Result<String, RegistryError> {
        let want = spec.trim().trim_start_matches("sha256:").to_ascii_lowercase();
        let unknown = || RegistryError::UnknownVersion { queue: self.queue.clone(), spec: spec.to_string() };
        if want.len() < 4 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let all: Vec<String> =
            redis::cmd("ZRANGE").arg(self.keys.versions()).arg(0).arg(-1).query_async(&mut self.conn.clone()).await?;
        let matches: Vec<String> = all.into_iter().filter(|d| d.starts_with(&want)).collect();
        match matches.len() {
            0 => Err(unknown()),
            1 => Ok(matches.into_iter().next().unwrap()),
            _ => Err(RegistryError::Ambiguous { queue: self.queue.clone(), spec: spec.to_string(), matches }),
        }
    }

    /// The digest workers must run now, if any.
    pub(crate) async fn current(&self) -> Result<Option<String>, RegistryError> {
        Ok(redis::cmd("GET").arg(self.keys.current()).query_async(&mut self.conn.clone()).await?)
    }

    /// The stored component bytes of `digest`.
    pub(crate) async fn bytes(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(redis::cmd("HGET").arg(self.keys.plugins()).arg(digest).query_async(&mut self.conn.clone()).await?)
    }

    /// Every stored version, oldest deploy first.
    pub(crate) async fn versions(&self) -> Result<Vec<Version>, RegistryError> {
        let mut conn = self.conn.clone();
        let (scored, current): (Vec<(String, f64)>, Option<String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(self.keys.versions())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("GET")
            .arg(self.keys.current())
            .query_async(&mut conn)
            .await?;
        let mut pipe = redis::pipe();
        for (d, _) in &scored {
            pipe.cmd("HSTRLEN").arg(self.keys.plugins()).arg(d);
        }
        let sizes: Vec<u64> = if scored.is_empty() { vec![] } else { pipe.query_async(&mut conn).await? };
        Ok(scored
            .into_iter()
            .zip(sizes)
            .map(|((digest, at), size)| Version {
                current: current.as_deref() == Some(&digest),
                digest,
                deployed_at: at as u64,
                size,
            })
            .collect())
    }
}

/// A pub/sub connection subscribed to the queue's deploy channel.
pub(crate) async fn subscribe(redis: &RedisTarget, keys: &RegistryKeys) -> Result<redis::aio::PubSub, RegistryError> {
    let mut pubsub = redis.pubsub().await?;
    pubsub.subscribe(keys.channel()).await?;
    Ok(pubsub)
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` for ms since the epoch.
pub(crate) fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_queue_base() {
        let k = RegistryKeys::new("{bull}", "emails");
        for key in [k.plugins(), k.versions(), k.current(), k.history(), k.channel(), k.workers(), k.worker_info()] {
            assert!(key.starts_with("{bull}:emails:bullpen:"), "{key}");
        }
    }

    #[test]
    fn iso8601_formats_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
