//! The [`Broker`] role: it orders a channel's publications (next offset,
//! history append and delivery in one step) and hands each one to every node
//! through [`BrokerEvents`]. [`MemoryBroker`] does it inside one process, on
//! the same callback path a distributed broker uses, so one node and many
//! share one publish path.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, Publication, StreamPosition};

use crate::history::{
    HistoryError, HistoryQuery, HistoryRead, HistoryStore, Retention, Sweep, Swept,
};

/// What a broker delivers to a node.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication for the node's subscribers of its channel. Called in
    /// offset order per channel; must not block.
    fn on_publication(&self, publication: &Arc<Publication>);
    /// A push that is not a publication (join, leave) for a channel's subscribers.
    fn on_push(&self, channel: &ChannelName, frame: &Bytes);
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot take the request now; the caller may retry.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// Called once the subscriber may receive live publications: with the
/// recovery read, at the point after which every publication reaches it.
pub type OnJoin = Box<dyn FnOnce(&HistoryRead) + Send>;

/// Where a join found the channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub offset: u64,
    pub epoch: String,
    pub recovered: bool,
    /// Publications replayed to the subscriber.
    pub publications: usize,
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Binds the node the broker delivers to. Called once, before any publish.
    fn bind(&self, events: Arc<dyn BrokerEvents>);

    /// Assigns the next offset, stores, and delivers to every node. Answers
    /// only once the publication is stored and handed on.
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError>;

    /// Delivers a non-publication push to the channel's subscribers on every node.
    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError>;

    /// Reads stored publications.
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError>;

    /// Reads what was missed since `since` (or just the position) and calls
    /// `on_join` so that no publication falls between the read and live delivery.
    async fn join(
        &self,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        retention: Retention,
        on_join: OnJoin,
    ) -> Result<Joined, BrokerError>;

    /// Periodic housekeeping: applies retention to streams nobody touches.
    fn sweep(&self, _pass: &Sweep<'_>) -> Swept {
        Swept::default()
    }
}

const SHARDS: usize = 64;

/// Runs a step that waits on the disk (an fsync) without stalling the other
/// tasks of its worker thread, where the runtime allows it.
fn blocking<T>(step: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(step)
        }
        _ => step(),
    }
}

/// The single-process broker: history from a [`HistoryStore`], delivery
/// straight to the bound node.
pub struct MemoryBroker {
    history: Arc<dyn HistoryStore>,
    hasher: RandomState,
    /// Per-shard publish lock: holding it across offset, append and delivery
    /// is what makes delivery order equal offset order. A std-style mutex
    /// because nothing awaits under it.
    locks: Box<[Mutex<()>]>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    pub fn new(history: Arc<dyn HistoryStore>) -> Self {
        MemoryBroker {
            history,
            hasher: RandomState::new(),
            locks: (0..SHARDS).map(|_| Mutex::new(())).collect(),
            events: OnceLock::new(),
        }
    }

    fn lock(&self, channel: &ChannelName) -> parking_lot::MutexGuard<'_, ()> {
        self.locks[(self.hasher.hash_one(channel) as usize) % SHARDS].lock()
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

    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError> {
        let events = self.events()?;
        let step = || {
            let _order = self.lock(channel);
            let publication = self.history.append(channel, data, from, retention)?;
            events.on_publication(&publication);
            Ok(StreamPosition {
                offset: publication.offset,
                epoch: publication.epoch.to_string(),
            })
        };
        if self.history.blocks() {
            blocking(step)
        } else {
            step()
        }
    }

    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        let events = self.events()?;
        events.on_push(channel, &frame);
        Ok(())
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        Ok(self.history.read(channel, query, retention)?)
    }

    async fn join(
        &self,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        retention: Retention,
        on_join: OnJoin,
    ) -> Result<Joined, BrokerError> {
        let query = HistoryQuery {
            limit: if since.is_some() { None } else { Some(0) },
            since,
        };
        let _order = self.lock(channel);
        let read = self.history.read(channel, &query, retention)?;
        on_join(&read);
        Ok(Joined {
            offset: read.offset,
            epoch: read.epoch.to_string(),
            recovered: read.recovered,
            publications: read.publications.len(),
        })
    }

    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        self.history.sweep(pass)
    }
}
