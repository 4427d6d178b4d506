//! Idempotent publish (PROTOCOL §5 `idempotency_key`): the same key on the
//! same channel within the window answers the first publish's position and
//! publishes nothing.
//!
//! Where keys live: the Redis broker claims them in its publish script; the
//! memory broker in a [`KeyTable`] of this node, claimed before the store
//! assigns the offset and answered once it is stored; a store that survives a
//! restart writes the key with the publication and hands it back at the next
//! start ([`HistoryStore::stored_keys`](crate::HistoryStore::stored_keys)).

use std::time::{Duration, SystemTime};

use switchboard_protocol::{ChannelName, IdempotencyKey, StreamPosition};

mod table;
pub use table::{Claim, ClaimGuard, KeyTable};

/// What a keyed publish carries down to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    /// How long the key answers with the first result (`[api] idempotency_window`).
    pub window: Duration,
}

/// A key a store kept with its publication, handed back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub channel: ChannelName,
    pub key: IdempotencyKey,
    pub position: StreamPosition,
    /// When the publication was stored (wall clock: it outlives the process).
    pub stored_at: SystemTime,
}
