//! The [`Broker`] role: it assigns a channel's offsets, stores its
//! publications and hands each one to every node subscribed to the channel
//! through [`BrokerEvents`]. It promises nothing about delivery order: the
//! node's streams (`crate::subscription`) drop duplicates, reorder and fill
//! holes from history, once, for every broker. [`MemoryBroker`] does it inside
//! one process, through that same path.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, Publication, StreamPosition};

use crate::history::{
    HistoryError, HistoryQuery, HistoryRead, HistoryStore, Retention, Sweep, Swept,
};
use crate::idempotency::{Claim, Idempotency, KeyTable};

/// What a broker hands a node. Calls for one channel may come out of order,
/// duplicated, or with gaps: the node's per-channel state drops duplicates,
/// reorders and fills gaps from history (never the broker). None may block.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication of a channel this node subscribed to ([`Broker::subscribe`]).
    fn on_publication(&self, publication: Arc<Publication>);
    /// A push that is not a publication (join, leave) for the channel's local subscribers.
    fn on_push(&self, channel: &ChannelName, frame: Bytes);
    /// A cluster-wide control message (e.g. disconnect a user on every node).
    fn on_control(&self, message: ControlMessage);
    /// Publications may have been missed for every subscribed channel (the
    /// pub/sub connection dropped and came back, broker restart/failover):
    /// each live channel reads its tail from history and fills its gap.
    fn on_resync(&self);
}

/// A message to every node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every connection of `user` on every node with `code`/`reason`.
    Disconnect {
        user: String,
        code: u16,
        reason: String,
    },
}

/// The broker's own view of its health (for /health, /ready and metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerHealth {
    pub ok: bool,
    /// The last probe's round trip, if any.
    pub lag: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot take the request now; the caller may retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    History(#[from] HistoryError),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Binds the node the broker delivers to. Called once, before anything else.
    fn bind(&self, events: Arc<dyn BrokerEvents>);

    /// Starts delivering `channel`'s publications and pushes to this node. The
    /// node calls it when its first local subscriber arrives, and awaits it
    /// before reading history for that subscriber: once it returns, every
    /// publication stored later reaches `on_publication`. Idempotent;
    /// reference counting is the node's job.
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// Stops it (the node's last local subscriber left).
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError>;

    /// Assigns the next offset, stores as `retention` says, and hands the
    /// publication to every subscribed node. Answers only once it is stored;
    /// `Unavailable` when it cannot, never an acknowledgement followed by a loss.
    ///
    /// With `idempotency`, the key is claimed in the same step as the offset:
    /// the same key on the same channel within the window answers the first
    /// publish's position and publishes nothing, however many duplicates
    /// arrive at once (on every node the broker serves).
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError>;

    /// A non-publication push to the channel's subscribers on every node.
    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError>;

    /// A control message to every node (this one included).
    async fn control(&self, message: ControlMessage) -> Result<(), BrokerError>;

    /// Stored publications (recovery, history, gap filling). Same `recovered`
    /// rules as [`HistoryStore::read`] (whole range and same epoch, or false).
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError>;

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            ok: true,
            lag: None,
        }
    }

    /// What traces call this broker (`broker.publish`'s `broker` attribute).
    fn kind(&self) -> &'static str {
        "other"
    }

    /// Periodic housekeeping: applies retention to streams nobody touches.
    fn sweep(&self, _pass: &Sweep<'_>) -> Swept {
        Swept::default()
    }
}

/// Runs a step that waits on the disk (an fsync) without stalling the other
/// tasks of its worker thread, where the runtime allows it.
fn position(publication: &Publication) -> StreamPosition {
    StreamPosition {
        offset: publication.offset,
        epoch: publication.epoch.to_string(),
    }
}

pub(crate) fn blocking<T>(step: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(step)
        }
        _ => step(),
    }
}

/// The single-process broker: offsets and storage from a [`HistoryStore`],
/// delivery straight to the bound node. It delivers every channel to its one
/// node, so `subscribe` has nothing to do.
///
/// An append that waits on the disk holds no lock of the broker's: the store
/// orders offsets, concurrent publishers may hand their publications to the
/// node in any order, and the node's streams put them back (filling a hole
/// that outlives the reorder window from the file). An append that does not
/// wait (the memory store) is handed on under a per-shard lock instead: a publisher preempted between its append and its
/// delivery for longer than the reorder window would otherwise turn into a
/// `lost` on a channel with no history to fill from.
pub struct MemoryBroker {
    history: Arc<dyn HistoryStore>,
    /// Idempotency keys, claimed before the store assigns the offset.
    keys: Arc<KeyTable>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    hasher: RandomState,
    /// Held only across a non-blocking append and its hand-off (no await,
    /// no fsync under it).
    order: Box<[Mutex<()>]>,
}

const ORDER_SHARDS: usize = 64;

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(history: Arc<dyn HistoryStore>) -> Self {
        Self::with_max_keys(history, KeyTable::DEFAULT_MAX_KEYS)
    }

    /// Remembers at most about `max_keys` idempotency keys (the oldest go
    /// first past it), starting with those the store kept across a restart.
    pub fn with_max_keys(history: Arc<dyn HistoryStore>, max_keys: usize) -> Self {
        let keys = KeyTable::new(max_keys);
        match history.stored_keys() {
            Ok(stored) => keys.restore(stored),
            Err(e) => {
                tracing::error!(error = %e, "idempotency keys of the history store not read; retries of earlier publishes publish again")
            }
        }
        MemoryBroker {
            history,
            keys,
            events: OnceLock::new(),
            hasher: RandomState::new(),
            order: (0..ORDER_SHARDS).map(|_| Mutex::new(())).collect(),
        }
    }

    fn events(&self) -> Result<&Arc<dyn BrokerEvents>, BrokerError> {
        self.events
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not bound to a node".into()))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn bind(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    async fn subscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &ChannelName) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError> {
        let events = self.events()?;
        let claim = match idempotency {
            None => None,
            Some(idem) => match self.keys.claim(channel, idem).await {
                Claim::Done(position) => return Ok(position),
                Claim::Mine(claim) => Some(claim),
            },
        };
        let key = idempotency.map(|i| &i.key);
        let append = || {
            self.history
                .append_keyed(channel, data, from, retention, key)
        };
        let blocks = self.history.blocks();
        let publication = if blocks {
            // The store answers once the publication is durable (its fsync
            // is shared with concurrent appends); no lock is held meanwhile.
            blocking(append)?
        } else {
            let shard = self.hasher.hash_one(channel) as usize % ORDER_SHARDS;
            let _order = self.order[shard].lock();
            let publication = append()?;
            events.on_publication(publication.clone());
            publication
        };
        let position = position(&publication);
        if let Some(claim) = claim {
            claim.done(&position);
        }
        if blocks {
            events.on_publication(publication);
        }
        Ok(position)
    }

    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        self.events()?.on_push(channel, frame);
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn control(&self, message: ControlMessage) -> Result<(), BrokerError> {
        self.events()?.on_control(message);
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        let read = || self.history.read(channel, query, retention);
        if self.history.blocks() {
            // A database round trip: off the worker's other tasks.
            return Ok(blocking(read)?);
        }
        Ok(read()?)
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            ok: self.history.healthy(),
            lag: None,
        }
    }

    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        self.history.sweep(pass)
    }
}
