//! Connections to one Redis or to a Redis Cluster behind one type, so the
//! rest of the crate issues commands without caring which it is.

use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError, RedisFuture, RedisResult,
    TlsCertificates, ToRedisArgs, Value,
};

use crate::config::{RedisOptions, RedisUrl};

/// A multiplexed connection: clones share one socket per server, and
/// commands issued at once share its round trips (pipelining for free).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Which pub/sub a name uses: sharded (a channel's publications, which its
/// shard sends) or plain (control messages, which reach every shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Sharded,
    Plain,
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Subscribes to `names`, answering once Redis confirmed every one.
    pub async fn subscribe(&mut self, names: &[(String, Kind)]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
                if names.is_empty() {
                    return Ok(());
                }
                c.subscribe(&names).await
            }
            // SSUBSCRIBE takes names of one slot only, so one command per
            // name; issued together they share round trips.
            Conn::Cluster(c) => {
                let calls = names.iter().map(|(name, kind)| {
                    let mut c = c.clone();
                    async move {
                        match kind {
                            Kind::Sharded => c.ssubscribe(name).await,
                            Kind::Plain => c.subscribe(name).await,
                        }
                    }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    pub async fn unsubscribe(&mut self, names: &[(String, Kind)]) -> RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
                if names.is_empty() {
                    return Ok(());
                }
                c.unsubscribe(&names).await
            }
            Conn::Cluster(c) => {
                let calls = names.iter().map(|(name, kind)| {
                    let mut c = c.clone();
                    async move {
                        match kind {
                            Kind::Sharded => c.sunsubscribe(name).await,
                            Kind::Plain => c.unsubscribe(name).await,
                        }
                    }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The command that sends to a channel's pub/sub name of `kind`.
    pub fn publish_command(&self, kind: Kind) -> &'static str {
        match (self, kind) {
            (Conn::Cluster(_), Kind::Sharded) => "spublish",
            _ => "publish",
        }
    }

    /// `WAIT replicas timeout` on the connection (the Cluster node) that
    /// holds `key`: how many replicas acknowledged every write this
    /// connection sent before it.
    pub async fn wait_replicas(
        &mut self,
        key: &str,
        replicas: usize,
        timeout: Duration,
    ) -> RedisResult<usize> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let v = c.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(v)?)
            }
        }
    }

    /// Sends `payload` on `name`.
    pub async fn publish(
        &mut self,
        kind: Kind,
        name: &str,
        payload: impl ToRedisArgs + Send + Sync,
    ) -> RedisResult<()> {
        let _receivers: i64 = redis::cmd(self.publish_command(kind))
            .arg(name)
            .arg(payload)
            .query_async(self)
            .await?;
        Ok(())
    }
}

/// Opens a connection; with `push`, a RESP3 connection whose pub/sub
/// messages and disconnections go to `push`.
pub(crate) async fn connect(
    options: &RedisOptions,
    push: Option<impl AsyncPushSender>,
) -> RedisResult<Conn> {
    match &options.url {
        RedisUrl::Single(url) => {
            let info = url.as_str().into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let info = info.set_redis_settings(settings);
            let client = match &options.tls_root_cert {
                Some(pem) => redis::Client::build_with_tls(info, certificates(pem))?,
                None => redis::Client::open(info)?,
            };
            // One quick reconnection attempt per command: a caller waiting on
            // a dead Redis gets `Unavailable` fast instead of queueing.
            let mut config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(100));
            if let Some(push) = push {
                config = config.set_push_sender(push);
            }
            let manager = tokio::time::timeout(
                options.connect_timeout,
                client.get_connection_manager_with_config(config),
            )
            .await
            .map_err(|_| timed_out("connect"))??;
            Ok(Conn::Single(manager))
        }
        RedisUrl::Cluster(seeds) => {
            let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200);
            if let Some(push) = push {
                builder = builder.push_sender(push);
            }
            if let Some(pem) = &options.tls_root_cert {
                builder = builder.certs(certificates(pem));
            }
            let client = builder.build()?;
            let conn = tokio::time::timeout(options.connect_timeout, client.get_async_connection())
                .await
                .map_err(|_| timed_out("connect"))??;
            Ok(Conn::Cluster(conn))
        }
    }
}

fn certificates(root_pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(root_pem.to_vec()),
    }
}

pub(crate) fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("redis {what} timed out"),
    ))
}
