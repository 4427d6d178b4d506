//! How to reach Redis, and the broker's timings.

use std::time::Duration;

/// `[broker] redis_url`: one server, or the seed nodes of a Redis Cluster.
/// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum RedisUrl {
    /// One Redis server (or a proxy that looks like one).
    Single(String),
    /// A Redis Cluster, reached through any of these nodes.
    Cluster(Vec<String>),
}

impl RedisUrl {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisUrl::Cluster(_))
    }
}

/// A URL with its user and password replaced, for logs.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_string(),
        },
        None => "<unparsable url>".to_string(),
    }
}

/// Passwords never reach a log.
impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisUrl::Single(u) => f.debug_tuple("Single").field(&redacted(u)).finish(),
            RedisUrl::Cluster(us) => f
                .debug_tuple("Cluster")
                .field(&us.iter().map(|u| redacted(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// What a [`crate::RedisBroker`] and [`crate::RedisPresence`] are built with.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: RedisUrl,
    /// This node's name (probe channel, node announcements).
    pub node: String,
    /// No probe back through pub/sub for this long: `health().ok` is false.
    /// Default 5 s.
    pub stall_timeout: Duration,
    /// How often the probe is published. Default 1 s.
    pub probe_interval: Duration,
    /// Pub/sub connections channels are spread over (one Redis only; a
    /// Cluster gets one per shard). Default 4.
    pub pubsub_connections: usize,
    /// How long a channel's offset and epoch outlive its last publication
    /// (at least its history ttl). Default 1 day.
    pub meta_ttl: Duration,
    /// A command not answered within this is `Unavailable`. Default 3 s.
    pub response_timeout: Duration,
    /// Connecting gives up after this. Default 2 s.
    pub connect_timeout: Duration,
    /// Presence, online users, per-user counts and node announcements expire
    /// this long after their node last refreshed them. Default 60 s.
    pub presence_ttl: Duration,
    /// For `rediss://`: the CA certificate (PEM) that signs Redis's, trusted
    /// instead of the system's roots. Default: none (the system's roots).
    pub tls_root_cert: Option<Vec<u8>>,
    /// Replicas that must hold a publication before it is acknowledged
    /// (`WAIT` after the publish script); fewer within `replica_timeout`
    /// answer `Unavailable` (503), never ok. Default 0: acknowledged once
    /// the master ran it, so a master crash before it replicated can lose it.
    pub min_replicas: usize,
    /// How long a publish waits for `min_replicas`. Default 1 s.
    pub replica_timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: RedisUrl, node: impl Into<String>) -> Self {
        RedisOptions {
            url,
            node: node.into(),
            stall_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            pubsub_connections: 4,
            meta_ttl: Duration::from_secs(24 * 3600),
            response_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(60),
            tls_root_cert: None,
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_debug() {
        let one = RedisUrl::Single("rediss://user:s3cret@redis.local:6380/0".into());
        let shown = format!("{one:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("redis.local:6380"),
            "{shown}"
        );
        let seeds = RedisUrl::Cluster(vec!["redis://:pw@a:1".into(), "redis://b:2".into()]);
        let shown = format!("{:?}", RedisOptions::new(seeds, "n1"));
        assert!(!shown.contains("pw@") && shown.contains("b:2"), "{shown}");
    }

    #[test]
    fn one_url_or_a_list_of_seeds() {
        #[derive(serde::Deserialize)]
        struct B {
            redis_url: RedisUrl,
        }
        let one: B =
            serde_json::from_str(r#"{"redis_url":"redis://127.0.0.1:6379"}"#).expect("one url");
        assert!(!one.redis_url.is_cluster());
        let seeds: B =
            serde_json::from_str(r#"{"redis_url":["redis://a:1","redis://b:2"]}"#).expect("seeds");
        assert_eq!(
            seeds.redis_url,
            RedisUrl::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!(serde_json::from_str::<B>(r#"{"redis_url":7}"#).is_err());
    }
}
