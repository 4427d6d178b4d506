//! One connected client: its identity, its subscriptions and its [`Outbox`].
//!
//! The outbox is the only way anything reaches a client's socket: replies and
//! pushes share it, so a client sees one order. It is bounded by bytes; a push
//! that would overflow it closes the client as a slow consumer instead of
//! waiting, so a client that does not read never slows anyone else down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use std::task::{Context, Poll, Waker};
use switchboard_protocol::ChannelName;

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
    /// The transport's task, waiting in [`Outbox::poll_ready`].
    waker: Option<Waker>,
    /// Whether that task wants to hear of new frames (not while its socket is
    /// stalled: then only a close wakes it).
    wants_frames: bool,
    /// A protocol ping is in the queue: another would add nothing.
    ping_queued: bool,
}

impl OutboxState {
    /// Takes the waker to wake once the lock is released.
    fn waker_for(&mut self, frame: bool) -> Option<Waker> {
        if frame && !self.wants_frames {
            return None;
        }
        self.waker.take()
    }
}

/// A client's bounded queue of outgoing frames.
///
/// A `parking_lot` mutex rather than an async one: it is held only to push or
/// to swap the queue out, never across an `.await`.
///
/// It wakes its transport through a waker kept in the same mutex, rather than
/// a `Notify`: the transport polls it without a stored future, which keeps an
/// idle client's task small.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
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
            st.ping_queued = false;
            st.closing = Some(Disconnect::SLOW);
            let waker = st.waker_for(false);
            drop(st);
            wake(waker);
            return Err(PushError::Overflow(dropped));
        }
        st.bytes += frame.len();
        st.queue.push_back(Out::Frame(frame));
        let waker = st.waker_for(true);
        drop(st);
        wake(waker);
        Ok(())
    }

    /// Queues a protocol ping. It is not counted against the byte bound, so
    /// at most one waits in the queue: a client that has not taken the last
    /// one gets no second.
    pub fn push_ping(&self) {
        let mut st = self.state.lock();
        if st.closing.is_none() && !st.ping_queued {
            st.ping_queued = true;
            st.queue.push_back(Out::Ping);
            let waker = st.waker_for(true);
            drop(st);
            wake(waker);
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
        let waker = st.waker_for(false);
        drop(st);
        wake(waker);
        true
    }

    /// Whether the outbox is closing, and why.
    pub fn closing(&self) -> Option<Disconnect> {
        self.state.lock().closing
    }

    /// Takes the whole queue, leaving an empty one that holds no memory (an
    /// idle client keeps no queue allocation), and tells whether it is closing.
    pub fn take(&self) -> (VecDeque<Out>, Option<Disconnect>) {
        let mut st = self.state.lock();
        st.bytes = 0;
        st.ping_queued = false;
        (std::mem::take(&mut st.queue), st.closing)
    }

    /// Ready when the outbox is closing, or (with `want_frames`) holds frames;
    /// otherwise remembers the task to wake.
    pub fn poll_ready(&self, cx: &mut Context<'_>, want_frames: bool) -> Poll<()> {
        let mut st = self.state.lock();
        if st.closing.is_some() || (want_frames && !st.queue.is_empty()) {
            return Poll::Ready(());
        }
        st.wants_frames = want_frames;
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until something is queued or the outbox started closing.
    pub async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx, true)).await;
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The byte bound past which the client is closed as slow.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
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
    /// The `device` upgrade parameter (PROTOCOL §10), already checked.
    pub device: Option<String>,
    /// The welcome's `inbox` object, when the device has an inbox.
    pub inbox: Option<serde_json::Value>,
}

/// A client id on the wire (`c-` and 16 hex digits), kept inline: no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId([u8; 18]);

impl ClientId {
    /// The id of the client with node-local `key`: a bijective scramble of the
    /// key and a per-node salt, so ids are unique on the node and do not
    /// reveal how many clients came before.
    pub fn new(key: u64, salt: u64) -> Self {
        let mut z = key ^ salt;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut b = [0u8; 18];
        b[0] = b'c';
        b[1] = b'-';
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in 0..16 {
            b[2 + i] = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
        }
        ClientId(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("c-")
    }
}

impl std::ops::Deref for ClientId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connected client, shared by the hub, the heartbeat sweep and its transport.
#[derive(Debug)]
pub struct ClientHandle {
    /// Numeric id for hashing and indexes.
    pub key: u64,
    /// The client id on the wire (`c-…`).
    pub id: ClientId,
    pub user: Arc<str>,
    /// The token's `info` and `channels`, behind one pointer that a
    /// `refresh` swaps whole (a reader never sees half of two tokens).
    claims: Mutex<Arc<ClientClaims>>,
    pub outbox: Outbox,
    /// Milliseconds since the node's start when the last frame arrived.
    pub last_seen_ms: AtomicU64,
    /// Milliseconds since the node's start when the last ping was queued.
    pub last_ping_ms: AtomicU64,
    /// Token expiry (Unix seconds, 0 for none) in 32 bits, which keeps the
    /// handle within its allocator size class; see [`Self::expires_at`].
    expires_at: AtomicU32,
    pub(crate) subscriptions: Mutex<Subscriptions>,
    pub(crate) removed: AtomicBool,
    /// Whether the hub delivers the client's own personal channel to it:
    /// personal channels are served from the hub's user index, not from a
    /// channel entry per user. Changed only under that index's lock.
    pub(crate) personal: AtomicBool,
    /// Where the personal channel's presence and join stand (see
    /// `Node::connect`); one of the `PERSONAL_*` values.
    pub(crate) personal_announce: AtomicU8,
}

/// The personal channel's presence and join are not announced yet.
pub(crate) const PERSONAL_PENDING: u8 = 0;
/// They are being announced.
pub(crate) const PERSONAL_ANNOUNCING: u8 = 1;
/// They were announced: leaving must undo them.
pub(crate) const PERSONAL_ANNOUNCED: u8 = 2;
/// The personal channel was left; an announcement in progress undoes itself.
pub(crate) const PERSONAL_LEFT: u8 = 3;

/// What a client's token says about what it may do and how others see it.
#[derive(Debug, Default)]
pub struct ClientClaims {
    /// Raw JSON text of the token's `info` claim.
    pub info: Option<Arc<str>>,
    /// The token's `channels` claim: names or `prefix*` patterns.
    pub channels: Box<[String]>,
    /// The connection's device (not a claim, but kept for the connection's
    /// life beside them, where it costs the handle nothing).
    pub device: Option<Arc<str>>,
}

impl ClientClaims {
    pub fn new(info: Option<String>, channels: Vec<String>) -> Self {
        ClientClaims {
            info: info.map(Arc::from),
            channels: channels.into_boxed_slice(),
            device: None,
        }
    }

    /// The same claims for a connection of `device`.
    pub fn with_device(mut self, device: Option<Arc<str>>) -> Self {
        self.device = device;
        self
    }
}

/// The channels a client is in. Its own personal channel, which every client
/// starts in, is a flag rather than an entry: an idle client's set holds no
/// memory.
///
/// A channel is *pending* while its subscribe is under way (its join push not
/// yet sent): a removal then leaves the leave push to that subscribe, so a
/// join is never sent after its leave.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    personal: Membership,
    /// A vector rather than a set: it is bounded by `max_channels_per_client`
    /// and smaller in every client. The flag: still pending.
    others: Vec<(ChannelName, bool)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Membership {
    #[default]
    Out,
    Pending,
    In,
}

impl Subscriptions {
    fn is_own(user: &str, channel: &ChannelName) -> bool {
        channel.personal_owner() == Some(user)
    }

    /// Adds `channel`, in; false when it was already there.
    pub(crate) fn insert(&mut self, user: &str, channel: &ChannelName) -> bool {
        self.add(user, channel, false)
    }

    /// Adds `channel` as pending; false when it was already there.
    pub(crate) fn insert_pending(&mut self, user: &str, channel: &ChannelName) -> bool {
        self.add(user, channel, true)
    }

    fn add(&mut self, user: &str, channel: &ChannelName, pending: bool) -> bool {
        if Self::is_own(user, channel) {
            if self.personal != Membership::Out {
                return false;
            }
            self.personal = if pending {
                Membership::Pending
            } else {
                Membership::In
            };
            true
        } else if self.others.iter().any(|(c, _)| c == channel) {
            false
        } else {
            self.others.push((channel.clone(), pending));
            true
        }
    }

    /// A pending channel's subscribe is done: a removal now sends its leave.
    /// False when it is not there (a removal took it).
    pub(crate) fn confirm(&mut self, user: &str, channel: &ChannelName) -> bool {
        if Self::is_own(user, channel) {
            if self.personal == Membership::Out {
                return false;
            }
            self.personal = Membership::In;
            true
        } else if let Some(entry) = self.others.iter_mut().find(|(c, _)| c == channel) {
            entry.1 = false;
            true
        } else {
            false
        }
    }

    /// Removes `channel`; false when it was not there.
    pub(crate) fn remove(&mut self, user: &str, channel: &ChannelName) -> bool {
        if Self::is_own(user, channel) {
            std::mem::take(&mut self.personal) != Membership::Out
        } else if let Some(i) = self.others.iter().position(|(c, _)| c == channel) {
            self.others.swap_remove(i);
            true
        } else {
            false
        }
    }

    pub(crate) fn contains(&self, user: &str, channel: &ChannelName) -> bool {
        if Self::is_own(user, channel) {
            self.personal != Membership::Out
        } else {
            self.others.iter().any(|(c, _)| c == channel)
        }
    }

    /// The channels other than the personal one whose subscribe is done
    /// (a pending one is left to its subscribe).
    pub(crate) fn others(&self) -> impl Iterator<Item = &ChannelName> {
        self.others
            .iter()
            .filter(|(_, pending)| !pending)
            .map(|(c, _)| c)
    }

    pub(crate) fn len(&self) -> usize {
        self.others.len() + usize::from(self.personal != Membership::Out)
    }

    /// Empties the set, returning the channels whose subscribe is done
    /// (pending ones are left to their subscribe).
    pub(crate) fn drain(&mut self, user: &str) -> Vec<ChannelName> {
        let mut all: Vec<ChannelName> = std::mem::take(&mut self.others)
            .into_iter()
            .filter(|(_, pending)| !pending)
            .map(|(c, _)| c)
            .collect();
        if std::mem::take(&mut self.personal) == Membership::In
            && let Ok(own) = ChannelName::personal(user)
        {
            all.push(own);
        }
        all
    }
}

impl ClientHandle {
    pub(crate) fn new(
        key: u64,
        salt: u64,
        init: ClientInit,
        max_bytes: usize,
        now_ms: u64,
    ) -> Self {
        ClientHandle {
            key,
            id: ClientId::new(key, salt),
            user: Arc::from(init.user),
            claims: Mutex::new(Arc::new(
                ClientClaims::new(init.info, init.channels).with_device(init.device.map(Arc::from)),
            )),
            outbox: Outbox::new(max_bytes),
            last_seen_ms: AtomicU64::new(now_ms),
            last_ping_ms: AtomicU64::new(now_ms),
            expires_at: AtomicU32::new(clamp_unix(init.expires_at)),
            subscriptions: Mutex::new(Subscriptions::default()),
            removed: AtomicBool::new(false),
            personal: AtomicBool::new(false),
            personal_announce: AtomicU8::new(PERSONAL_PENDING),
        }
    }

    /// The token's claims now (a `refresh` may replace them).
    pub fn claims(&self) -> Arc<ClientClaims> {
        self.claims.lock().clone()
    }

    /// Replaces the claims (a `refresh`).
    pub fn set_claims(&self, claims: ClientClaims) {
        *self.claims.lock() = Arc::new(claims);
    }

    /// Token expiry in Unix seconds, 0 for none.
    pub fn expires_at(&self) -> u64 {
        u64::from(self.expires_at.load(Ordering::Relaxed))
    }

    /// Moves the token expiry (a `refresh`); 0 for none.
    pub fn set_expires_at(&self, unix_s: u64) {
        self.expires_at.store(clamp_unix(unix_s), Ordering::Relaxed);
    }

    /// Records that a frame arrived (any frame: command, pong, ping).
    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.subscriptions.lock().contains(&self.user, channel)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().len()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// Unix seconds past 2106 are as good as never for a token's expiry.
fn clamp_unix(unix_s: u64) -> u32 {
    u32::try_from(unix_s).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|k| ClientId::new(k, 42).to_string())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 18 && i.starts_with("c-")));
    }

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
        let (v, closing) = o.take();
        assert_eq!(closing, Some(Disconnect::SLOW));
        assert!(v.is_empty());
    }

    #[test]
    fn take_empties_and_frees_the_bound() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"1234567890")), Ok(()));
        let (v, closing) = o.take();
        assert_eq!(closing, None);
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
        let (v, closing) = o.take();
        assert_eq!(closing, Some(Disconnect::KICKED));
        assert_eq!(v.len(), 1);
    }

    /// Protocol pings bypass the byte bound, so a client that takes nothing
    /// holds one, however many heartbeats pass.
    #[test]
    fn at_most_one_ping_waits() {
        let o = Outbox::new(10);
        for _ in 0..100 {
            o.push_ping();
        }
        let (v, _) = o.take();
        assert_eq!(v.len(), 1);
        o.push_ping();
        assert_eq!(o.take().0.len(), 1);
    }

    /// Every connection holds one handle in an `Arc`: past 256 bytes the
    /// allocator's next size class is 320, 64 more bytes per connection.
    #[test]
    fn a_client_handle_fits_a_256_byte_allocation() {
        let arc_inner = std::mem::size_of::<ClientHandle>() + 2 * std::mem::size_of::<usize>();
        assert!(
            arc_inner <= 256,
            "Arc<ClientHandle> takes {arc_inner} bytes"
        );
    }
}
