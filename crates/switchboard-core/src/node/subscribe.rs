//! The node's side of the delivery guarantees: a subscribe (broker
//! subscription when first, buffer, history read, merge), the node's broker
//! subscriptions, and the gap fills and resyncs of its channels' streams
//! (see [`crate::subscription`]). No lock is held across any `.await` here:
//! the hub is called before and after each read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::{ChannelName, Publication, StreamPosition};

use super::{CommandError, Node, json_str, spawn, subscribe_result};
use crate::client::ClientHandle;
use crate::cursor::Cursor;
use crate::disconnect::Disconnect;
use crate::history::{HistoryQuery, HistoryRead, Retention};
use crate::hub::{Begin, BroadcastOutcome, StreamKey};
use crate::subscription::{Gap, Joined};

/// How long a channel's stream holds a publication that came early before
/// it reads the hole from history. Concurrent publishers on one node hand
/// theirs over out of order by microseconds, and that must not cost a read;
/// a hole that lasts this long is a loss to fill (or to report `lost`).
pub const REORDER_WINDOW: Duration = Duration::from_millis(100);

/// History reads one subscribe makes at most before it gives up.
const MAX_JOIN_READS: usize = 4;

/// How long a failed gap fill waits before it tries again.
const FILL_RETRY: Duration = Duration::from_secs(1);

impl Node {
    /// A publication from the broker, through its channel's streams.
    pub(super) fn deliver_publication(&self, publication: &Arc<Publication>) {
        let start = std::time::Instant::now();
        let span = crate::trace::delivery_span(publication);
        let (out, gaps) = self.hub.publication(publication, !span.is_disabled());
        crate::trace::record_delivery(&span, out.delivered, out.first_queued);
        self.account(out, Some(start));
        for key in gaps {
            self.schedule_fill(publication.channel.clone(), key, REORDER_WINDOW);
        }
    }

    /// Counts what a push did and closes the clients that overflowed.
    /// `publication`: when the fan-out of a publication began.
    pub(super) fn account(&self, out: BroadcastOutcome, publication: Option<std::time::Instant>) {
        self.metrics.messages_out.inc_by(out.delivered as u64);
        if out.lost > 0 {
            self.metrics.lost.inc_by(out.lost as u64);
        }
        if let Some(start) = publication {
            self.metrics.publications.inc();
            self.metrics.deliveries.inc_by(out.delivered as u64);
            self.metrics
                .fanout_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        if !out.overflowed.is_empty() {
            self.metrics
                .slow_clients
                .inc_by(out.overflowed.len() as u64);
            for client in out.overflowed {
                self.metrics.dropped_deliveries.inc();
                self.count_disconnect(Disconnect::SLOW);
                tracing::info!(client = %client.id, user = %client.user, "closing slow consumer");
                // Removal awaits presence: it runs on its own task, never
                // under the caller's locks.
                if let Some(node) = self.me.upgrade() {
                    spawn(async move { node.remove_client(&client).await });
                }
            }
        }
    }

    /// Fills a stream's hole after `delay`, if it is still there then.
    fn schedule_fill(&self, channel: ChannelName, key: StreamKey, delay: Duration) {
        if let Some(node) = self.me.upgrade() {
            spawn(async move {
                tokio::time::sleep(delay).await;
                node.fill(&channel, key, false).await;
            });
        }
    }

    /// Reads a stream's hole (or, `definitive`, everything after its
    /// position: after a resync) from history and hands it on.
    async fn fill(&self, channel: &ChannelName, key: StreamKey, definitive: bool) {
        let from = if definitive {
            self.hub.position(channel, key)
        } else {
            self.hub.fill_from(channel, key)
        };
        let Some((epoch, offset)) = from else {
            return;
        };
        let retention = self.opts.namespaces.policy(channel).retention();
        let query = HistoryQuery::since(offset, &epoch);
        match self.broker.history(channel, &query, retention).await {
            Ok(read) => {
                self.metrics.gap_fills.inc();
                let (out, gap) = self.hub.fill(channel, key, &read, definitive);
                self.account(out, None);
                if gap == Gap::New {
                    self.schedule_fill(channel.clone(), key, REORDER_WINDOW);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "filling a gap from history failed; retrying");
                self.schedule_fill(channel.clone(), key, FILL_RETRY);
            }
        }
    }

    /// The broker may have dropped publications of every channel: each
    /// stream reads what follows its position.
    pub async fn resync(&self) {
        for (channel, key) in self.hub.streams() {
            self.fill(&channel, key, true).await;
        }
    }

    /// Subscribes the node to `channel` on the broker without waiting when
    /// the broker answers at once (the memory broker always does), else on a
    /// task of its own: a connection's personal channel, taken at connect.
    pub(super) fn broker_subscribe_now(&self, channel: ChannelName) {
        let broker = self.broker.clone();
        let mut subscribing = Box::pin(async move {
            if let Err(e) = broker.subscribe(&channel).await {
                tracing::warn!(error = %e, "broker subscribe failed");
            }
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if subscribing.as_mut().poll(&mut cx).is_pending() {
            spawn(subscribing);
        }
    }

    /// The node's last local subscriber of `channel` left: stops its broker
    /// subscription, and takes it again if a subscriber came back meanwhile
    /// (then fills whatever passed while it was off).
    pub(super) async fn release_broker(&self, channel: &ChannelName) {
        let still_needed = |node: &Node| match channel.personal_owner() {
            Some(owner) => node.hub.user_connection_count(owner) > 0,
            None => node.hub.has_channel(channel),
        };
        if still_needed(self) {
            return;
        }
        if let Err(e) = self.broker.unsubscribe(channel).await {
            tracing::warn!(error = %e, "broker unsubscribe failed");
        }
        if still_needed(self) {
            match self.broker.subscribe(channel).await {
                Ok(()) => {
                    self.hub.broker_subscribed(channel);
                    let key = match channel.personal_owner() {
                        Some(_) => StreamKey::Own,
                        None => StreamKey::Shared,
                    };
                    self.fill(channel, key, true).await;
                }
                Err(e) => tracing::warn!(error = %e, "broker subscribe failed"),
            }
        }
    }

    /// Joins `channel`, recovering from `since`, and queues the reply (when
    /// `id` is set) before any publication that follows it. Returns how many
    /// publications were recovered.
    ///
    /// The subscriber is added as buffering, history is read, and the two
    /// are merged by offset (`Hub::finish_join`): no lock is held across
    /// the read, and a broker that delivers out of order loses nothing.
    /// Without `id`, recovered publications arrive as `pub` frames (or a
    /// `lost` push when they cannot be recovered).
    pub async fn subscribe(
        &self,
        client: &Arc<ClientHandle>,
        id: Option<u64>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
    ) -> Result<usize, CommandError> {
        let ns = &self.opts.namespaces;
        if !ns.may_subscribe(channel, &client.user, &client.claims().channels) {
            return Err(CommandError::forbidden());
        }
        // A device subscribing to its own inbox without `since` resumes from
        // its cursor (PROTOCOL §10); read before anything is changed.
        let inbox = match (&since, client.claims().device.clone()) {
            (None, Some(device))
                if ns.policy(channel).inbox && channel.personal_owner() == Some(&*client.user) =>
            {
                Some(
                    self.cursors
                        .get(channel, &device)
                        .await
                        .map_err(super::inbox::cursor_error)?,
                )
            }
            _ => None,
        };
        let closing = || CommandError::new(ErrorCode::Internal, "client is closing");
        let already = {
            let mut subs = client.subscriptions.lock();
            if client.is_removed() {
                return Err(closing());
            }
            if subs.contains(&client.user, channel) {
                true
            } else if subs.len() >= self.opts.max_channels_per_client {
                return Err(CommandError::new(
                    ErrorCode::LimitExceeded,
                    "too many channels on this connection",
                ));
            } else {
                // Pending until its join push is out: see `Subscriptions`.
                subs.insert_pending(&client.user, channel);
                false
            }
        };
        if !already {
            self.metrics.subscriptions.inc();
        }
        let policy = ns.policy(channel);
        // With join/leave on, the entry goes in with its join push, in one
        // step, once the subscriber is live (below).
        if policy.presence && !policy.join_leave && !already {
            let entry = self.presence_entry(client);
            if let Err(e) = self.presence.add(channel, entry).await {
                tracing::warn!(error = %e, "presence add failed");
                self.abandon(client, channel, false).await;
                return Err(CommandError::new(ErrorCode::Internal, "presence failed"));
            }
        }
        let recovered = match self
            .join(client, id, channel, since, inbox, policy.retention())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                if already {
                    // It stays subscribed; the failed join only ends.
                    if !client.is_removed() {
                        self.hub.subscribe(channel, client);
                    }
                } else {
                    self.abandon(client, channel, false).await;
                }
                return Err(e);
            }
        };
        if !already {
            let mut join_sent = false;
            if policy.join_leave && !client.is_removed() {
                // The reply is out: a failure leaves the client subscribed,
                // unannounced.
                join_sent = self.announce(client, channel).await;
            }
            let confirmed = client.subscriptions.lock().confirm(&client.user, channel);
            if !confirmed {
                // Removed meanwhile: its removal left this channel to us.
                self.abandon(client, channel, join_sent).await;
                return Err(closing());
            }
        }
        self.metrics.publications_recovered.inc_by(recovered as u64);
        Ok(recovered)
    }

    /// Undoes a subscribe that did not complete: out of the client's set,
    /// the hub and presence, with a leave push when its join went out.
    async fn abandon(&self, client: &Arc<ClientHandle>, channel: &ChannelName, join_sent: bool) {
        client.subscriptions.lock().remove(&client.user, channel);
        self.metrics.subscriptions.dec();
        if let Some(true) = self.hub.leave(channel, client) {
            self.release_broker(channel).await;
        }
        let policy = self.opts.namespaces.policy(channel);
        // With presence on, the store knows whether the join went out (its
        // leave is pushed only then); without, `join_sent` says it.
        if policy.presence || join_sent {
            self.denounce(client, channel).await;
        }
    }

    /// The most a subscribe or history reply may carry, in bytes: half the
    /// outbox, so one large history never closes its reader as slow.
    fn reply_cap(&self) -> usize {
        self.opts.send_queue_max_bytes / 2
    }

    /// A client's history reply cut to [`Self::reply_cap`] bytes: the first
    /// publications that fit after `since` (the client pages on from the
    /// last), or without it the latest that fit.
    pub(super) fn capped(&self, mut read: HistoryRead, since_given: bool) -> HistoryRead {
        let cap = self.reply_cap();
        let mut bytes = 0;
        let mut fits = |p: &Arc<Publication>| {
            bytes += p.frame().len();
            bytes <= cap
        };
        if since_given {
            let keep = read.publications.iter().take_while(|p| fits(p)).count();
            read.publications.truncate(keep);
        } else {
            let keep = read
                .publications
                .iter()
                .rev()
                .take_while(|p| fits(p))
                .count();
            let drop = read.publications.len() - keep;
            read.publications.drain(..drop);
        }
        read
    }

    /// The hub side of a subscribe: buffer, read, merge (see [`Node::subscribe`]).
    async fn join(
        &self,
        client: &Arc<ClientHandle>,
        id: Option<u64>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        inbox: Option<Option<Cursor>>,
        retention: Retention,
    ) -> Result<usize, CommandError> {
        let recover = since.is_some() || inbox.is_some();
        let begin = self
            .hub
            .begin_join(channel, client, recover, |epoch, offset| {
                id.map(|_| frame::ok_reply(id, &position_result(epoch, offset)))
            });
        let broker_subscribe = match begin {
            Begin::Live(out) => {
                self.account(out, None);
                return Ok(0);
            }
            Begin::Joining { broker_subscribe } => broker_subscribe,
        };
        let key = match channel.personal_owner() {
            Some(owner) if owner == &*client.user => StreamKey::Own,
            _ => StreamKey::Shared,
        };
        if broker_subscribe {
            // Before the read: every publication stored after it reaches us.
            self.broker.subscribe(channel).await?;
            self.hub.broker_subscribed(channel);
        }
        let mut read = match &inbox {
            Some(cursor) => self.inbox_read(channel, cursor.as_ref(), retention).await?,
            None => {
                let query = HistoryQuery {
                    limit: if recover { None } else { Some(0) },
                    since,
                };
                self.broker.history(channel, &query, retention).await?
            }
        };
        let bytes: usize = read.publications.iter().map(|p| p.frame().len()).sum();
        // Never a partial list (but an inbox gets what it still holds), and
        // never more than the outbox takes.
        if bytes > self.reply_cap() || (!read.recovered && inbox.is_none()) {
            read.recovered = false;
            read.publications.clear();
        }
        let head: Vec<Bytes> = match id {
            Some(_) => vec![frame::ok_reply(id, &subscribe_result(&read))],
            None if !recover => Vec::new(),
            None if read.recovered => read
                .publications
                .iter()
                .map(|p| p.frame().clone())
                .collect(),
            None => match read.publications.first() {
                // What the inbox still holds follows what it lost.
                Some(first) => std::iter::once(frame::lost(channel, &read.epoch, first.offset - 1))
                    .chain(read.publications.iter().map(|p| p.frame().clone()))
                    .collect(),
                None => vec![frame::lost(channel, &read.epoch, read.offset)],
            },
        };
        let (mut head, mut epoch, mut covered) = (head, read.epoch.clone(), read.offset);
        // Another subscriber's read may have placed the channel's stream past
        // this one's: then what lies between is read too (rarely more than once).
        for _ in 0..MAX_JOIN_READS {
            let (joined, out, gap) = self
                .hub
                .finish_join(channel, client, &epoch, covered, &head);
            self.account(out, None);
            if gap == Gap::New {
                self.schedule_fill(channel.clone(), key, REORDER_WINDOW);
            }
            match joined {
                Joined::Live | Joined::Catching => return Ok(read.publications.len()),
                Joined::Gone => {
                    return Err(CommandError::new(ErrorCode::Internal, "client is closing"));
                }
                Joined::Behind => {}
            }
            let more = self
                .broker
                .history(channel, &HistoryQuery::since(covered, &epoch), retention)
                .await?;
            let bytes: usize = more.publications.iter().map(|p| p.frame().len()).sum();
            if more.recovered && bytes <= self.reply_cap() {
                head.extend(more.publications.iter().map(|p| p.frame().clone()));
            } else {
                head.push(frame::lost(channel, &more.epoch, more.offset));
            }
            epoch = more.epoch;
            covered = more.offset;
        }
        Err(CommandError::new(
            ErrorCode::Internal,
            "the channel moved on during the subscribe, retry",
        ))
    }
}

/// A subscribe reply's result without recovery: where the channel is.
fn position_result(epoch: &str, offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(80);
    out.put_slice(b"{\"offset\":");
    out.put_slice(offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":");
    out.put_slice(&json_str(epoch));
    out.put_slice(b",\"recovered\":false,\"publications\":[]}");
    out.freeze()
}
