//! One connected client: its identity, its subscriptions and its [`Outbox`].
//!
//! The outbox is the only way anything reaches a client's socket: replies and
//! pushes share it, so a client sees one order. It is bounded by bytes; a push
//! that would overflow it closes the client as a slow consumer instead of
//! waiting, so a client that does not read never slows anyone else down.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::ChannelName;
use tokio::sync::Notify;

use crate::disconnect::Disconnect;

/// What the write loop sends.
#[derive(Debug, Clone)]
pub enum Out {
    /// A text frame, shared with every other recipient of the same push.
    Frame(Bytes),
    /// A protocol-level ping.
    Ping,
    /// A control frame the transport answers with (pong, close): opcode, payload.
    Control(u8, Bytes),
}

/// Why a push did not enter the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The outbox would exceed its byte bound: the client must be closed as
    /// slow. Carries the number of frames discarded (the queue and this one).
    Overflow(usize),
    /// The client is already closing; the push is dropped with it.
    Closed,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Out>,
    bytes: usize,
    closing: Option<Disconnect>,
}

/// A client's bounded queue of outgoing frames.
///
/// A `parking_lot` mutex rather than an async one: it is held only to push or
/// to swap the queue out, never across an `.await`.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            max_bytes,
        }
    }

    /// Queues a frame without waiting. On overflow the queue is dropped and the
    /// outbox starts closing with [`Disconnect::SLOW`]; the caller counts it.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return Err(PushError::Closed);
        }
        if st.bytes + frame.len() > self.max_bytes {
            let dropped = st.queue.len() + 1;
            st.queue = VecDeque::new();
            st.bytes = 0;
            st.closing = Some(Disconnect::SLOW);
            drop(st);
            self.notify.notify_one();
            return Err(PushError::Overflow(dropped));
        }
        st.bytes += frame.len();
        st.queue.push_back(Out::Frame(frame));
        drop(st);
        self.notify.notify_one();
        Ok(())
    }

    /// Queues a protocol ping (it is not counted against the byte bound).
    pub fn push_ping(&self) {
        let mut st = self.state.lock();
        if st.closing.is_none() {
            st.queue.push_back(Out::Ping);
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Starts closing: frames already queued are still sent, then the close.
    /// Returns false when the outbox was already closing.
    pub fn close(&self, reason: Disconnect) -> bool {
        let mut st = self.state.lock();
        if st.closing.is_some() {
            return false;
        }
        st.closing = Some(reason);
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Whether the outbox is closing, and why.
    pub fn closing(&self) -> Option<Disconnect> {
        self.state.lock().closing
    }

    /// Moves every queued item into `into` and tells whether the client is closing.
    pub fn drain(&self, into: &mut Vec<Out>) -> Option<Disconnect> {
        let mut st = self.state.lock();
        into.extend(st.queue.drain(..));
        st.bytes = 0;
        st.closing
    }

    /// Takes the whole queue, leaving an empty one that holds no memory (an
    /// idle client keeps no queue allocation), and tells whether it is closing.
    pub fn take(&self) -> (VecDeque<Out>, Option<Disconnect>) {
        let mut st = self.state.lock();
        st.bytes = 0;
        (std::mem::take(&mut st.queue), st.closing)
    }

    /// Waits until something was pushed or the outbox started closing.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// What a transport knows about a client when it connects.
#[derive(Debug, Clone, Default)]
pub struct ClientInit {
    pub user: String,
    /// Raw JSON text of the token's `info` claim.
    pub info: Option<String>,
    /// The token's `channels` claim: names or `prefix*` patterns.
    pub channels: Vec<String>,
    /// Token expiry, Unix seconds; 0 when the connection does not expire.
    pub expires_at: u64,
}

/// A connected client, shared by the hub, the heartbeat sweep and its transport.
#[derive(Debug)]
pub struct ClientHandle {
    /// Numeric id for hashing and indexes.
    pub key: u64,
    /// The client id on the wire (`c-…`).
    pub id: Arc<str>,
    pub user: Arc<str>,
    pub info: Option<Arc<str>>,
    pub channels_claim: Vec<String>,
    pub outbox: Outbox,
    /// Milliseconds since the node's start when the last frame arrived.
    pub last_seen_ms: AtomicU64,
    /// Milliseconds since the node's start when the last ping was queued.
    pub last_ping_ms: AtomicU64,
    /// Token expiry (Unix seconds), 0 for none; a `refresh` moves it.
    pub expires_at: AtomicU64,
    pub(crate) subscriptions: Mutex<HashSet<ChannelName>>,
    pub(crate) removed: AtomicBool,
}

impl ClientHandle {
    pub(crate) fn new(key: u64, init: ClientInit, max_bytes: usize, now_ms: u64) -> Self {
        ClientHandle {
            key,
            id: Arc::from(format!("c-{:016x}", fastrand::u64(..))),
            user: Arc::from(init.user),
            info: init.info.map(Arc::from),
            channels_claim: init.channels,
            outbox: Outbox::new(max_bytes),
            last_seen_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            expires_at: AtomicU64::new(init.expires_at),
            subscriptions: Mutex::new(HashSet::new()),
            removed: AtomicBool::new(false),
        }
    }

    /// Records that a frame arrived (any frame: command, pong, ping).
    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.lock().contains(channel)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().len()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_the_queue_and_starts_a_slow_close() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"12345")), Ok(()));
        assert_eq!(o.push(Bytes::from_static(b"12345")), Ok(()));
        assert_eq!(
            o.push(Bytes::from_static(b"1")),
            Err(PushError::Overflow(3))
        );
        assert_eq!(o.push(Bytes::from_static(b"1")), Err(PushError::Closed));
        let mut v = Vec::new();
        assert_eq!(o.drain(&mut v), Some(Disconnect::SLOW));
        assert!(v.is_empty());
    }

    #[test]
    fn drain_empties_and_frees_the_bound() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"1234567890")), Ok(()));
        let mut v = Vec::new();
        assert_eq!(o.drain(&mut v), None);
        assert_eq!(v.len(), 1);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(Bytes::from_static(b"1234567890")), Ok(()));
    }

    #[test]
    fn close_keeps_queued_frames_and_refuses_new_ones() {
        let o = Outbox::new(100);
        assert_eq!(o.push(Bytes::from_static(b"a")), Ok(()));
        assert!(o.close(Disconnect::KICKED));
        assert!(!o.close(Disconnect::SHUTDOWN));
        assert_eq!(o.push(Bytes::from_static(b"b")), Err(PushError::Closed));
        let mut v = Vec::new();
        assert_eq!(o.drain(&mut v), Some(Disconnect::KICKED));
        assert_eq!(v.len(), 1);
    }
}
