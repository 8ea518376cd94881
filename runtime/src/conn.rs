//! Where Redis is: one server, or a Redis Cluster reached through seed
//! nodes. The one place that opens bullpen's own connections and builds
//! bullmq-official's connection options, so every command and the worker
//! treat both alike.
//!
//! On a Cluster, BullMQ's scripts touch several keys of a queue at once, so
//! all of them must hash to one slot: the prefix must carry a hash tag
//! (`{bull}`). bullpen's own keys (`<prefix>:<queue>:bullpen:*`, job logs,
//! locks) share that prefix and so that slot. Deploy notices use classic
//! pub/sub, which a Cluster broadcasts to every node, so subscribing on one
//! seed node sees them all.

use bullmq::options::RedisConnectionOptions;
use bullmq::redis_connection::AnyConnection;

/// Redis as the user named it (`--redis`, repeatable, and `--cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// One URL for a single server; one or more seed nodes for a Cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
}

impl RedisTarget {
    /// One standalone server.
    pub fn single(url: impl Into<String>) -> Self {
        RedisTarget { urls: vec![url.into()], cluster: false }
    }

    /// A Redis Cluster, discovered from these seed nodes.
    pub fn cluster<I: IntoIterator<Item = S>, S: Into<String>>(seeds: I) -> Self {
        RedisTarget { urls: seeds.into_iter().map(Into::into).collect(), cluster: true }
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
        let t = RedisTarget { urls, cluster };
        t.check_prefix(prefix)?;
        Ok(t)
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

    /// A connection that reconnects by itself: a `ConnectionManager` for a
    /// single server, a cluster connection (routing by key, following
    /// MOVED/ASK) for a Cluster.
    pub async fn connect(&self) -> redis::RedisResult<AnyConnection> {
        if self.cluster {
            let client = redis::cluster::ClusterClient::new(self.urls.clone())?;
            Ok(AnyConnection::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(self.urls[0].as_str())?;
            Ok(AnyConnection::Single(redis::aio::ConnectionManager::new(client).await?))
        }
    }

    /// bullmq-official's connection options for the same target.
    pub fn bullmq_options(&self) -> RedisConnectionOptions {
        let o = RedisConnectionOptions::default();
        if self.cluster {
            o.cluster_nodes(self.urls.clone())
        } else {
            o.url(self.urls[0].clone())
        }
    }

    /// A pub/sub connection on the first reachable node. On a Cluster any
    /// node will do: classic PUBLISH reaches the subscribers of every node.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut last = None;
        for url in &self.urls {
            match redis::Client::open(url.as_str()) {
                Ok(c) => match c.get_async_pubsub().await {
                    Ok(ps) => return Ok(ps),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("a target has at least one URL"))
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
        if self.cluster {
            write!(f, "Redis Cluster (seeds {})", self.urls.join(", "))
        } else {
            f.write_str(&self.urls[0])
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
    }
}
