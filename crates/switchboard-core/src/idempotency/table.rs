//! [`KeyTable`]: the idempotency keys one node remembers (memory broker).
//!
//! A key is claimed before the store assigns its offset: a concurrent
//! duplicate finds the claim and waits for the first publish's answer
//! instead of publishing, so two duplicates never both publish. If the
//! first publish fails (or its caller goes away) the claim is released and a
//! waiting duplicate claims the key itself.
//!
//! Bounded: a key is forgotten once its window has passed, and each shard
//! keeps at most its share of `max_keys`; past that the oldest key is
//! forgotten early (a retry of it after that publishes again), never the
//! memory.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, IdempotencyKey, StreamPosition};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Idempotency, StoredKey};

const SHARDS: usize = 64;

type Key = (ChannelName, IdempotencyKey);

enum Entry {
    /// Claimed; the publish is under way. Its answer comes on the channel.
    Pending {
        id: u64,
        answer: watch::Receiver<Option<StreamPosition>>,
    },
    Done {
        id: u64,
        position: StreamPosition,
    },
}

impl Entry {
    fn id(&self) -> u64 {
        match self {
            Entry::Pending { id, .. } | Entry::Done { id, .. } => *id,
        }
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    /// Claims in the order they were made (so by age): (claimed at, id, key).
    order: VecDeque<(Instant, u64, Key)>,
    next_id: u64,
}

impl Shard {
    /// Forgets what the window no longer covers, and the oldest keys until
    /// one more fits under the cap.
    fn expire(&mut self, now: Instant, window: Duration, cap: usize) {
        while let Some((at, id, _)) = self.order.front() {
            let (at, id) = (*at, *id);
            if now.saturating_duration_since(at) < window && self.order.len() < cap {
                break;
            }
            let Some((_, _, key)) = self.order.pop_front() else {
                break;
            };
            // A key released and claimed again has a newer entry: keep it.
            if self.map.get(&key).is_some_and(|e| e.id() == id) {
                self.map.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: Key, at: Instant, make: impl FnOnce(u64) -> Entry) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.order.push_back((at, id, key.clone()));
        self.map.insert(key, make(id));
        id
    }
}

/// The keys this node remembers; see the module docs.
pub struct KeyTable {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("max_keys", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

/// The answer to [`KeyTable::claim`].
pub enum Claim {
    /// The key was published within the window: answer this, publish nothing.
    Done(StreamPosition),
    /// The key is this caller's: publish, then [`ClaimGuard::done`].
    Mine(ClaimGuard),
}

/// A claimed key. Dropped without [`ClaimGuard::done`] (the publish failed
/// or was abandoned), it releases the key.
pub struct ClaimGuard {
    table: Arc<KeyTable>,
    key: Option<Key>,
    id: u64,
    answer: watch::Sender<Option<StreamPosition>>,
}

impl ClaimGuard {
    /// The publish succeeded: duplicates answer `position` from now on.
    pub fn done(mut self, position: &StreamPosition) {
        if let Some(key) = self.key.take() {
            let mut shard = self.table.shard(&key).lock();
            if let Some(entry) = shard.map.get_mut(&key).filter(|e| e.id() == self.id) {
                *entry = Entry::Done {
                    id: self.id,
                    position: position.clone(),
                };
            }
        }
        self.answer.send_replace(Some(position.clone()));
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut shard = self.table.shard(&key).lock();
            if shard.map.get(&key).is_some_and(|e| e.id() == self.id) {
                shard.map.remove(&key);
            }
        }
        // Dropping the sender wakes the waiting duplicates, which claim again.
    }
}

impl KeyTable {
    /// The default of `max_keys`: about 20 MB of keys per node.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    pub fn new(max_keys: usize) -> Arc<Self> {
        Arc::new(KeyTable {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        })
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Claims `idem`'s key on `channel`, or answers the first publish's
    /// position (waiting for it while that publish is under way).
    pub async fn claim(self: &Arc<Self>, channel: &ChannelName, idem: &Idempotency) -> Claim {
        let key: Key = (channel.clone(), idem.key.clone());
        loop {
            let mut answer = {
                let now = Instant::now();
                let mut shard = self.shard(&key).lock();
                shard.expire(now, idem.window, self.per_shard);
                match shard.map.get(&key) {
                    Some(Entry::Done { position, .. }) => return Claim::Done(position.clone()),
                    Some(Entry::Pending { answer, .. }) => answer.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        let id =
                            shard.insert(key.clone(), now, |id| Entry::Pending { id, answer: rx });
                        return Claim::Mine(ClaimGuard {
                            table: self.clone(),
                            key: Some(key),
                            id,
                            answer: tx,
                        });
                    }
                }
            };
            if let Ok(position) = answer.wait_for(Option::is_some).await
                && let Some(position) = position.clone()
            {
                return Claim::Done(position);
            }
            // The first publish failed: its claim is gone, try again.
        }
    }

    /// Remembers keys a store kept across a restart, oldest first, each for
    /// what is left of its window.
    pub fn restore(&self, mut keys: Vec<StoredKey>) {
        keys.sort_by_key(|k| k.stored_at);
        let (wall, now) = (SystemTime::now(), Instant::now());
        for stored in keys {
            let age = wall.duration_since(stored.stored_at).unwrap_or_default();
            // A clock younger than the key's age (a fresh boot): keep it as new.
            let at = now.checked_sub(age).unwrap_or(now);
            let key: Key = (stored.channel, stored.key);
            let mut shard = self.shard(&key).lock();
            if !shard.map.contains_key(&key) {
                let cap = self.per_shard;
                shard.expire(at, Duration::MAX, cap);
                let position = stored.position;
                shard.insert(key, at, |id| Entry::Done { id, position });
            }
        }
    }

    /// Keys remembered now (tests, metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> ChannelName {
        ChannelName::parse("chat:k").expect("valid")
    }

    fn idem(key: &str, window: Duration) -> Idempotency {
        Idempotency {
            key: IdempotencyKey::parse(key).expect("valid"),
            window,
        }
    }

    fn pos(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_answers_duplicates_until_the_window_ends() {
        let t = KeyTable::new(100);
        let k = idem("a", Duration::from_secs(60));
        let Claim::Mine(g) = t.claim(&ch(), &k).await else {
            panic!("first claim");
        };
        g.done(&pos(1));
        assert!(matches!(t.claim(&ch(), &k).await, Claim::Done(p) if p == pos(1)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(t.claim(&ch(), &k).await, Claim::Mine(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_publish_releases_its_key_to_the_waiting_duplicate() {
        let t = KeyTable::new(100);
        let k = idem("a", Duration::from_secs(60));
        let Claim::Mine(g) = t.claim(&ch(), &k).await else {
            panic!("first claim");
        };
        let waiter = tokio::spawn({
            let (t, k) = (t.clone(), k.clone());
            async move { matches!(t.claim(&ch(), &k).await, Claim::Mine(_)) }
        });
        tokio::task::yield_now().await;
        drop(g);
        assert!(
            waiter.await.expect("join"),
            "the duplicate publishes itself"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_oldest_keys_are_forgotten() {
        let t = KeyTable::new(1);
        let w = Duration::from_secs(60);
        for i in 0..1000 {
            if let Claim::Mine(g) = t.claim(&ch(), &idem(&i.to_string(), w)).await {
                g.done(&pos(i));
            }
        }
        assert!(t.len() <= SHARDS, "{} keys kept", t.len());
    }

    #[test]
    fn restored_keys_keep_what_is_left_of_their_window() {
        let t = KeyTable::new(100);
        t.restore(vec![StoredKey {
            channel: ch(),
            key: IdempotencyKey::parse("old").expect("valid"),
            position: pos(7),
            stored_at: SystemTime::now(),
        }]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let k = idem("old", Duration::from_secs(60));
            assert!(matches!(t.claim(&ch(), &k).await, Claim::Done(p) if p == pos(7)));
        });
    }
}
