//! [`RedisNodes`]: every live node, as each announces itself. A node that
//! stops announcing (it died) drops out within the ttl.

use std::time::Duration;

use switchboard_core::BrokerError;

use crate::broker::unavailable;
use crate::config::RedisOptions;
use crate::conn::{self, Conn};
use crate::keys;
use crate::pubsub::PushSink;
use crate::scripts::Scripts;

/// One node's announcement (`/api/info`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub version: String,
    pub connections: u64,
    pub subscriptions: u64,
}

/// Node announcements in Redis.
pub struct RedisNodes {
    conn: Conn,
    scripts: Scripts,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNodes")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisNodes {
    /// Announcements live `options.presence_ttl`; a node announces every ttl/3.
    pub async fn connect(options: &RedisOptions) -> Result<Self, BrokerError> {
        Ok(RedisNodes {
            conn: conn::connect(options, None::<PushSink>)
                .await
                .map_err(unavailable)?,
            scripts: Scripts::new(),
            ttl: options.presence_ttl,
            timeout: options.response_timeout,
        })
    }

    /// How often a node should call [`RedisNodes::announce`].
    pub fn announce_every(&self) -> Duration {
        self.ttl / 3
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unavailable(conn::timed_out("nodes command")))?
            .map_err(unavailable)
    }

    /// Announces (or refreshes) this node until the ttl.
    pub async fn announce(&self, info: &NodeInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let mut call = self.scripts.nodes_announce.key(keys::NODES);
        call.key(keys::NODE_EXPIRIES)
            .arg(
                u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(&info.name)
            .arg(json);
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// A clean shutdown: gone at once rather than at the ttl.
    pub async fn leave(&self, name: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let mut call = self.scripts.presence_remove.key(keys::NODES);
        call.key(keys::NODE_EXPIRIES).arg(name);
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Every live node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut conn = self.conn.clone();
        let mut call = self.scripts.nodes_live.key(keys::NODES);
        call.key(keys::NODE_EXPIRIES);
        let raw: Vec<Vec<u8>> = self.timed(call.invoke_async(&mut conn)).await?;
        let mut nodes: Vec<NodeInfo> = raw
            .iter()
            .filter_map(|j| serde_json::from_slice(j).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}
