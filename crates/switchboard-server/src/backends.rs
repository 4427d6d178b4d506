//! Composition of the node's backends from `[broker]`, `[presence]` and
//! `[history]`: the memory broker (one node) or Redis (many nodes, PROTOCOL
//! §9). The only file of the server that names Redis: everything else sees
//! core's `Broker` and `PresenceStore` roles and [`Cluster`].
//!
//! A Redis that cannot be reached at start does not stop the start: the
//! node serves with `/ready` 503 (`"broker": {"ok": false}`), publishes
//! refused 503, while a task retries with backoff and jitter (`pending`).

mod pending;

use std::sync::{Arc, Weak};
use std::time::Duration;

use switchboard_core::{
    Broker, CursorStore, FileHistory, HistoryStore, MemoryBroker, MemoryCursors, MemoryHistory,
    MemoryPresence, Node, PresenceStore, SyncMode,
};
use switchboard_redis::{
    NodeInfo, RedisBroker, RedisCursors, RedisNodes, RedisOptions, RedisPresence, RedisUrl,
};

use crate::config::{BrokerKind, Config, HistoryStoreKind, RedisUrls, redact_url};
use pending::Pending;
use switchboard_postgres::{PgHistory, PgOptions};

/// The roles a node is built with, and what the cluster needs beside them.
pub struct Backends {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    /// Inbox cursors, in the store that keeps the history.
    pub cursors: Arc<dyn CursorStore>,
    nodes: Option<Arc<Pending>>,
    /// Redis to reach in the background (it was not reachable at start).
    connect_later: Option<RedisOptions>,
}

/// The nodes of the gateway, for `/api/info`: this one alone with the
/// memory broker, or every node that announced itself within the ttl.
pub struct Cluster {
    nodes: Option<Arc<Pending>>,
    announcer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(a) = &self.announcer {
            a.abort();
        }
    }
}

/// One node as `/api/info` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub version: String,
    pub connections: u64,
    pub subscriptions: u64,
}

fn summary(node: &Node) -> NodeInfo {
    NodeInfo {
        name: node.name().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        connections: node.hub.connection_count() as u64,
        subscriptions: node.hub.subscription_count() as u64,
    }
}

impl Cluster {
    /// Every live node, sorted by name; `None` with the memory broker (the
    /// caller lists itself). Other nodes' figures are as of their last
    /// announcement (at most ttl/3 old); `me`'s are now.
    pub async fn nodes(&self, me: &Node) -> Option<Result<Vec<NodeSummary>, String>> {
        let nodes = self.nodes.as_ref()?;
        let Some(nodes) = nodes.nodes() else {
            return Some(Err("redis not reached yet".into()));
        };
        let all = match nodes.nodes().await {
            Ok(all) => all,
            Err(e) => return Some(Err(e.to_string())),
        };
        let now = summary(me);
        let mut all: Vec<NodeInfo> = all.into_iter().filter(|n| n.name != now.name).collect();
        // This node is live (it answers), announced yet or not.
        all.push(now);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Ok(all
            .into_iter()
            .map(|n| NodeSummary {
                name: n.name,
                version: n.version,
                connections: n.connections,
                subscriptions: n.subscriptions,
            })
            .collect()))
    }

    /// A clean shutdown: this node leaves the list at once.
    pub async fn leave(&self, name: &str) {
        if let Some(nodes) = self.nodes.as_ref().and_then(|n| n.nodes())
            && let Err(e) = nodes.leave(name).await
        {
            tracing::warn!(error = %e, "could not withdraw this node's announcement");
        }
    }
}

impl Backends {
    pub async fn build(cfg: &Config) -> Result<Backends, String> {
        match cfg.broker.kind {
            BrokerKind::Memory => {
                let (history, cursors) = history(cfg)?;
                Ok(Backends {
                    broker: Arc::new(MemoryBroker::with_max_keys(
                        history,
                        cfg.api.idempotency_max_keys,
                    )),
                    presence: Arc::new(MemoryPresence::default()),
                    cursors,
                    nodes: None,
                    connect_later: None,
                })
            }
            BrokerKind::Redis => redis(cfg).await,
        }
    }

    /// Starts announcing `node` (every ttl/3) when other nodes share the
    /// broker, once Redis is reached.
    pub fn cluster(&self, node: &Arc<Node>) -> Cluster {
        if let (Some(pending), Some(options)) = (&self.nodes, &self.connect_later) {
            tokio::spawn(pending::connect_in_background(
                pending.clone(),
                options.clone(),
            ));
        }
        let announcer = self
            .nodes
            .as_ref()
            .map(|nodes| tokio::spawn(announce(nodes.clone(), Arc::downgrade(node))));
        Cluster {
            nodes: self.nodes.clone(),
            announcer,
        }
    }
}

/// The history store, and the cursor store beside it (the same file).
type Stores = (Arc<dyn HistoryStore>, Arc<dyn CursorStore>);

fn history(cfg: &Config) -> Result<Stores, String> {
    match cfg.history.store {
        HistoryStoreKind::Memory => {
            return Ok((
                Arc::new(MemoryHistory::new()),
                Arc::new(MemoryCursors::default()),
            ));
        }
        HistoryStoreKind::Postgres => {
            let pg = postgres(cfg)?;
            let cursors = Arc::new(pg.cursors());
            return Ok((pg, cursors));
        }
        HistoryStoreKind::File => {}
    }
    let sync = if cfg.history.sync == "batch" {
        SyncMode::Batch {
            max_delay: cfg.history.batch_delay.0,
        }
    } else {
        SyncMode::Always
    };
    let file = Arc::new(FileHistory::open(&cfg.history.path, sync).map_err(|e| e.to_string())?);
    Ok((file.clone(), file))
}

/// PostgreSQL need not be up: the store migrates once it is reached, and
/// until then the node is not ready and publishes answer 503.
fn postgres(cfg: &Config) -> Result<Arc<PgHistory>, String> {
    let mut options = PgOptions::new(cfg.history.postgres_url.trim());
    options.pool_size = cfg.history.postgres_pool_size;
    let store = PgHistory::open(options)?;
    tracing::info!(
        postgres = %redact_url(&cfg.history.postgres_url),
        "history in postgres"
    );
    Ok(Arc::new(store))
}

/// What `check-config` says about `[history] store = "postgres"`: whether
/// the database answers, and its schema against this build's migrations.
pub fn check_postgres(cfg: &Config) -> Result<String, String> {
    let shown = redact_url(&cfg.history.postgres_url);
    let mut options = PgOptions::new(cfg.history.postgres_url.trim());
    options.pool_size = cfg.history.postgres_pool_size;
    let st = switchboard_postgres::check(&options)
        .map_err(|e| format!("history.postgres_url: cannot reach {shown}: {e}"))?;
    if !st.is_ok() {
        return Err(format!("history.postgres_url: {shown}: {st}"));
    }
    Ok(format!("postgres {shown}: reachable, {st}"))
}

fn options(cfg: &Config) -> Result<RedisOptions, String> {
    let url = match &cfg.broker.redis_url {
        urls if urls.is_cluster() => {
            RedisUrl::Cluster(urls.urls().into_iter().map(String::from).collect())
        }
        RedisUrls::One(u) => RedisUrl::Single(u.trim().to_string()),
        RedisUrls::Seeds(us) => RedisUrl::Single(us.first().cloned().unwrap_or_default()),
    };
    let mut o = RedisOptions::new(url, cfg.node_name.clone());
    o.stall_timeout = cfg.broker.stall_timeout.0;
    o.presence_ttl = cfg.presence.ttl.0;
    o.min_replicas = cfg.broker.redis_min_replicas;
    o.replica_timeout = cfg.broker.redis_replica_timeout.0;
    if !cfg.broker.redis_tls_ca_file.is_empty() {
        o.tls_root_cert = Some(std::fs::read(&cfg.broker.redis_tls_ca_file).map_err(|e| {
            format!(
                "broker.redis_tls_ca_file: cannot read {}: {e}",
                cfg.broker.redis_tls_ca_file
            )
        })?);
    }
    Ok(o)
}

/// What a node keeps in Redis.
type Connections = (RedisBroker, RedisPresence, RedisNodes, RedisCursors);

/// Connects the broker, presence, node announcements and inbox cursors to Redis.
async fn connect(options: &RedisOptions) -> Result<Connections, String> {
    let broker = RedisBroker::connect(options.clone())
        .await
        .map_err(|e| e.to_string())?;
    let presence = RedisPresence::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    let nodes = RedisNodes::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    let cursors = RedisCursors::connect(options)
        .await
        .map_err(|e| e.to_string())?;
    Ok((broker, presence, nodes, cursors))
}

async fn redis(cfg: &Config) -> Result<Backends, String> {
    let options = options(cfg)?;
    let shown: Vec<String> = cfg
        .broker
        .redis_url
        .urls()
        .into_iter()
        .map(redact_url)
        .collect();
    let pending = Arc::new(Pending::new(options.presence_ttl));
    let connect_later = match connect(&options).await {
        Ok(connected) => {
            tracing::info!(redis = ?shown, "connected to redis");
            pending.connected(connected);
            None
        }
        Err(e) => {
            tracing::warn!(
                redis = ?shown, error = %e,
                "redis unreachable: serving with /ready 503 while retrying"
            );
            Some(options)
        }
    };
    Ok(Backends {
        broker: Arc::new(pending::LazyBroker(pending.clone())),
        presence: Arc::new(pending::LazyPresence(pending.clone())),
        cursors: Arc::new(pending::LazyCursors(pending.clone())),
        nodes: Some(pending),
        connect_later,
    })
}

/// Announces the node every ttl/3 until it is dropped (each tick a no-op
/// until Redis is reached).
async fn announce(pending: Arc<Pending>, node: Weak<Node>) {
    let mut tick = tokio::time::interval(pending.announce_every().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        let info = summary(&node);
        drop(node);
        let Some(nodes) = pending.nodes() else {
            continue;
        };
        if let Err(e) = nodes.announce(&info).await {
            tracing::warn!(error = %e, "node announcement failed; next in ttl/3");
        }
    }
}
