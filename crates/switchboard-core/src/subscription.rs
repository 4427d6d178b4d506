//! What a node knows about one channel's stream: the delivery guarantees of
//! PROTOCOL §3 and §9, kept here once for every broker.
//!
//! A broker may hand a node a channel's publications out of order, twice, or
//! with holes. A [`Stream`] turns that into one contiguous sequence: it keeps
//! the channel's **position** (epoch and last delivered offset), drops what is
//! at or below it, holds what comes early, and says when a hole needs filling
//! from history; a filled hole that history no longer has becomes a `lost`
//! push. Every live subscriber of the channel on this node is at that one
//! position, so a live subscriber costs nothing here: per-subscriber state
//! ([`Joiner`]) exists only while a subscriber is joining (buffering live
//! publications while its history is read) or catching up to the channel.
//!
//! Nothing here locks, awaits or reads history: the hub calls it under its
//! shard lock, and the node does the reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::{ChannelName, Publication, frame};

use crate::client::ClientHandle;
use crate::history::HistoryRead;

/// Publications held while waiting for a hole to fill. Past it the latest
/// are dropped: the fill reads them back from history.
pub(crate) const MAX_HELD: usize = 1024;

/// One thing a subscriber receives, in stream order: a publication, or a
/// `lost` push (then `offset` is where the subscriber now stands).
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub frame: Bytes,
    /// A `lost` push (counted in the metrics).
    pub lost: bool,
}

impl Item {
    fn publication(p: &Publication) -> Self {
        Item {
            epoch: p.epoch.clone(),
            offset: p.offset,
            frame: p.frame().clone(),
            lost: false,
        }
    }

    fn lost(channel: &ChannelName, epoch: &Arc<str>, offset: u64) -> Self {
        Item {
            epoch: epoch.clone(),
            offset,
            frame: frame::lost(channel, epoch, offset),
            lost: true,
        }
    }
}

#[derive(Debug)]
enum JoinState {
    /// Its history is being read: live items wait here for the merge.
    /// `from`: the stream's position when they started to arrive (`None`
    /// while the stream has none): the buffer holds everything after it.
    Buffering {
        items: Vec<Item>,
        bytes: usize,
        from: Option<(Arc<str>, u64)>,
    },
    /// Its read went further than the channel has delivered yet: it has
    /// everything up to `until` of `epoch`, and turns live once the stream
    /// gets there.
    Catching { epoch: Arc<str>, until: u64 },
}

/// A subscriber that is not live yet.
#[derive(Debug)]
pub(crate) struct Joiner {
    pub client: Arc<ClientHandle>,
    state: JoinState,
}

/// Where the stream's items go besides its joiners.
pub(crate) trait Sink {
    /// To every live subscriber.
    fn live(&mut self, frame: &Bytes);
    /// To one client (a joiner's merge, a catching joiner).
    fn one(&mut self, client: &Arc<ClientHandle>, frame: &Bytes);
    /// A catching joiner got to the stream's position: it is live from now.
    fn promote(&mut self, client: Arc<ClientHandle>);
    /// A joiner's buffer outgrew its outbox bound: close it as slow.
    fn overflowed(&mut self, client: Arc<ClientHandle>);
    /// A `lost` push went out (to the live subscribers, or one joiner).
    fn lost(&mut self) {}
}

/// Whether the stream has a hole the node must fill from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gap {
    None,
    /// A new hole: fill it if it is still there after the reorder window.
    New,
}

/// How a join ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    /// The caller adds the client to the live subscribers.
    Live,
    /// It stays a joiner until the stream catches up.
    Catching,
    /// It was no longer joining (unsubscribed or removed meanwhile).
    Gone,
    /// The stream went past the read (another joiner's read placed it) and
    /// the buffer does not reach back to the read: read again from the
    /// read's offset, then finish with both. Nothing was queued.
    Behind,
}

/// A channel's stream as this node delivers it.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// Epoch and last offset delivered to the live subscribers; `None` until
    /// a first read or (with live subscribers that have no position of their
    /// own, as a connection's personal channel) a first publication.
    position: Option<(Arc<str>, u64)>,
    held: BTreeMap<u64, Arc<Publication>>,
    joiners: Vec<Joiner>,
    fill_scheduled: bool,
}

impl Stream {
    pub fn position(&self) -> Option<(&Arc<str>, u64)> {
        self.position.as_ref().map(|(e, o)| (e, *o))
    }

    /// Nothing to remember once no subscriber is left.
    pub fn has_joiners(&self) -> bool {
        !self.joiners.is_empty()
    }

    pub fn joiner_count(&self) -> usize {
        self.joiners.len()
    }

    /// Whether a fill is due: something is held above a hole.
    pub fn gapped(&self) -> bool {
        match (&self.position, self.held.first_key_value()) {
            (Some((_, c)), Some((o, _))) => *o > c + 1,
            _ => false,
        }
    }

    pub fn joiners(&self) -> impl Iterator<Item = &Arc<ClientHandle>> {
        self.joiners.iter().map(|j| &j.client)
    }

    /// Starts a join: the client buffers live items until [`Self::finish_join`].
    pub fn add_joiner(&mut self, client: Arc<ClientHandle>) {
        self.remove_joiner(client.key);
        self.joiners.push(Joiner {
            client,
            state: JoinState::Buffering {
                items: Vec::new(),
                bytes: 0,
                from: self.position.clone(),
            },
        });
    }

    /// Drops a joiner (unsubscribed, removed, or its join failed).
    pub fn remove_joiner(&mut self, key: u64) -> bool {
        match self.joiners.iter().position(|j| j.client.key == key) {
            Some(i) => {
                self.joiners.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn is_joining(&self, key: u64) -> bool {
        self.joiners.iter().any(|j| j.client.key == key)
    }

    /// A publication from the broker. `has_live`: live subscribers without
    /// a position of their own are waiting (they start at the first one).
    pub fn publication(
        &mut self,
        channel: &ChannelName,
        p: Arc<Publication>,
        has_live: bool,
        sink: &mut impl Sink,
    ) -> Gap {
        let Some((epoch, last)) = self.position.clone() else {
            if !has_live {
                // Only joiners: the first read says where the stream starts.
                self.hold(p);
                return Gap::None;
            }
            self.anchor(p.epoch.clone(), p.offset.saturating_sub(1));
            return self.publication(channel, p, has_live, sink);
        };
        if p.epoch != epoch {
            // The channel's history was lost: whatever was not delivered of
            // the old epoch never will be.
            self.held.clear();
            self.emit(channel, Item::lost(channel, &p.epoch, 0), sink);
            return self.publication(channel, p, has_live, sink);
        }
        if p.offset <= last {
            return Gap::None;
        }
        if p.offset == last + 1 {
            self.emit(channel, Item::publication(&p), sink);
            return self.resume(channel, sink);
        }
        self.hold(p);
        self.gap()
    }

    /// Gives a stream without a position one; joiners buffer from there.
    fn anchor(&mut self, epoch: Arc<str>, offset: u64) {
        for j in &mut self.joiners {
            if let JoinState::Buffering {
                from: from @ None, ..
            } = &mut j.state
            {
                *from = Some((epoch.clone(), offset));
            }
        }
        self.position = Some((epoch, offset));
    }

    fn hold(&mut self, p: Arc<Publication>) {
        if self.held.len() >= MAX_HELD {
            match self.held.last_key_value() {
                Some((&top, _)) if p.offset < top => {
                    self.held.remove(&top);
                }
                _ => return,
            }
        }
        self.held.insert(p.offset, p);
    }

    fn gap(&mut self) -> Gap {
        if self.gapped() && !self.fill_scheduled {
            self.fill_scheduled = true;
            Gap::New
        } else {
            Gap::None
        }
    }

    /// Delivers what is held right after the position, then tells whether
    /// a hole is left.
    pub fn resume(&mut self, channel: &ChannelName, sink: &mut impl Sink) -> Gap {
        let Some(last) = self.position.as_ref().map(|(_, o)| *o) else {
            return Gap::None;
        };
        let mut last = last;
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset <= last {
                entry.remove();
                continue;
            }
            if offset != last + 1 {
                break;
            }
            let p = entry.remove();
            self.emit(channel, Item::publication(&p), sink);
            last = offset;
        }
        self.gap()
    }

    /// The position a fill reads from, when a fill is due.
    pub fn fill_from(&mut self) -> Option<(Arc<str>, u64)> {
        if self.gapped() {
            self.position.clone()
        } else {
            self.fill_scheduled = false;
            None
        }
    }

    /// Applies a history read made from the stream's position. Holes that
    /// history no longer covers become `lost`; with `definitive` (after a
    /// resync, when nothing stored before the read can still arrive) the
    /// stream also moves to the read's latest offset.
    pub fn fill(
        &mut self,
        channel: &ChannelName,
        read: &HistoryRead,
        definitive: bool,
        sink: &mut impl Sink,
    ) -> Gap {
        self.fill_scheduled = false;
        let Some((epoch, _)) = self.position.clone() else {
            return Gap::None;
        };
        if read.epoch != epoch {
            self.held.clear();
            self.emit(channel, Item::lost(channel, &read.epoch, read.offset), sink);
            return Gap::None;
        }
        for p in &read.publications {
            if p.offset <= read.offset && !self.held.contains_key(&p.offset) {
                self.held.insert(p.offset, p.clone());
            }
        }
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            let last = self.position.as_ref().map_or(0, |(_, o)| *o);
            if offset <= last {
                entry.remove();
                continue;
            }
            if offset > read.offset {
                break;
            }
            let p = entry.remove();
            if offset > last + 1 {
                self.emit(channel, Item::lost(channel, &epoch, offset - 1), sink);
            }
            self.emit(channel, Item::publication(&p), sink);
        }
        let last = self.position.as_ref().map_or(0, |(_, o)| *o);
        if definitive && last < read.offset {
            self.emit(channel, Item::lost(channel, &epoch, read.offset), sink);
        }
        self.resume(channel, sink)
    }

    /// Ends a join whose reads cover everything up to `covered` of `epoch`:
    /// queues `head` (the reply, or the recovered publications) then the
    /// buffered items past `covered`. When the stream had no position yet,
    /// the read gives it one. After [`Joined::Live`] the caller adds the
    /// client to the live subscribers and then calls [`Self::resume`].
    pub fn finish_join(
        &mut self,
        channel: &ChannelName,
        client: &Arc<ClientHandle>,
        epoch: &Arc<str>,
        covered: u64,
        head: &[Bytes],
        sink: &mut impl Sink,
    ) -> Joined {
        let Some(i) = self.joiners.iter().position(|j| j.client.key == client.key) else {
            return Joined::Gone;
        };
        let Some((current, last)) = self.position.clone() else {
            self.joiners.swap_remove(i);
            for frame in head {
                sink.one(client, frame);
            }
            self.anchor(epoch.clone(), covered);
            return Joined::Live;
        };
        if *epoch != current {
            // The read and the stream disagree (history was reset in
            // between): the client is told where the stream it gets stands.
            self.joiners.swap_remove(i);
            for frame in head {
                sink.one(client, frame);
            }
            sink.one(client, &frame::lost(channel, &current, last));
            sink.lost();
            return Joined::Live;
        }
        let items = match &mut self.joiners[i].state {
            JoinState::Buffering { items, from, .. } => {
                let reaches = from
                    .as_ref()
                    .is_none_or(|(e, o)| e != epoch || *o <= covered);
                if last > covered && !reaches {
                    return Joined::Behind;
                }
                std::mem::take(items)
            }
            JoinState::Catching { .. } => Vec::new(),
        };
        for frame in head {
            sink.one(client, frame);
        }
        for item in items {
            if item.epoch == *epoch && item.offset > covered {
                sink.one(client, &item.frame);
            }
        }
        if last >= covered {
            self.joiners.swap_remove(i);
            Joined::Live
        } else {
            self.joiners[i].state = JoinState::Catching {
                epoch: epoch.clone(),
                until: covered,
            };
            Joined::Catching
        }
    }

    /// Hands `item` to every subscriber and moves the position.
    fn emit(&mut self, _channel: &ChannelName, item: Item, sink: &mut impl Sink) {
        match &mut self.position {
            // The common case: same epoch, no reference count touched.
            Some((epoch, offset)) if *epoch == item.epoch => *offset = item.offset,
            position => *position = Some((item.epoch.clone(), item.offset)),
        }
        sink.live(&item.frame);
        if item.lost {
            sink.lost();
        }
        let mut i = 0;
        while i < self.joiners.len() {
            let joiner = &mut self.joiners[i];
            match &mut joiner.state {
                JoinState::Buffering { items, bytes, .. } => {
                    *bytes += item.frame.len();
                    if *bytes > joiner.client.outbox.max_bytes() {
                        let gone = self.joiners.swap_remove(i);
                        sink.overflowed(gone.client);
                        continue;
                    }
                    items.push(item.clone());
                }
                JoinState::Catching { epoch, until } => {
                    let same = *epoch == item.epoch;
                    if same && item.offset < *until {
                        i += 1;
                        continue;
                    }
                    if !same || item.offset > *until {
                        sink.one(&joiner.client, &item.frame);
                    }
                    let done = self.joiners.swap_remove(i);
                    sink.promote(done.client);
                    continue;
                }
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientInit;

    #[derive(Default)]
    struct Record {
        live: Vec<String>,
        one: Vec<(u64, String)>,
        promoted: Vec<u64>,
        overflowed: Vec<u64>,
    }

    impl Sink for Record {
        fn live(&mut self, frame: &Bytes) {
            self.live.push(describe(frame));
        }
        fn one(&mut self, client: &Arc<ClientHandle>, frame: &Bytes) {
            self.one.push((client.key, describe(frame)));
        }
        fn promote(&mut self, client: Arc<ClientHandle>) {
            self.promoted.push(client.key);
        }
        fn overflowed(&mut self, client: Arc<ClientHandle>) {
            self.overflowed.push(client.key);
        }
    }

    /// `pub 3`, `lost 7`, or the raw text.
    fn describe(frame: &Bytes) -> String {
        let v: serde_json::Value = serde_json::from_slice(frame).expect("json");
        match v["type"].as_str() {
            Some(t @ ("pub" | "lost")) => format!("{t} {}", v["offset"]),
            _ => String::from_utf8_lossy(frame).into_owned(),
        }
    }

    fn ch() -> ChannelName {
        ChannelName::parse("chat:a").expect("valid")
    }

    fn p(offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            ch(),
            offset,
            Arc::from("e1"),
            Bytes::from_static(b"1"),
            None,
        ))
    }

    fn client(key: u64, max: usize) -> Arc<ClientHandle> {
        Arc::new(ClientHandle::new(key, 0, ClientInit::default(), max, 0))
    }

    fn read(offset: u64, pubs: &[u64], epoch: &str) -> HistoryRead {
        HistoryRead {
            publications: pubs
                .iter()
                .map(|o| {
                    Arc::new(Publication::new(
                        ch(),
                        *o,
                        Arc::from(epoch),
                        Bytes::from_static(b"1"),
                        None,
                    ))
                })
                .collect(),
            offset,
            epoch: Arc::from(epoch),
            recovered: true,
        }
    }

    fn anchored(at: u64) -> Stream {
        Stream {
            position: Some((Arc::from("e1"), at)),
            ..Default::default()
        }
    }

    #[test]
    fn in_order_publications_go_straight_through_and_duplicates_are_dropped() {
        let mut s = anchored(0);
        let mut r = Record::default();
        for o in [1, 2, 2, 1, 3] {
            assert_eq!(s.publication(&ch(), p(o), true, &mut r), Gap::None);
        }
        assert_eq!(r.live, ["pub 1", "pub 2", "pub 3"]);
    }

    #[test]
    fn reordering_that_heals_costs_no_fill() {
        let mut s = anchored(0);
        let mut r = Record::default();
        assert_eq!(s.publication(&ch(), p(2), true, &mut r), Gap::New);
        assert_eq!(s.publication(&ch(), p(3), true, &mut r), Gap::None);
        assert!(r.live.is_empty());
        assert_eq!(s.publication(&ch(), p(1), true, &mut r), Gap::None);
        assert_eq!(r.live, ["pub 1", "pub 2", "pub 3"]);
        assert!(!s.gapped());
        assert_eq!(
            s.fill_from(),
            None,
            "the scheduled fill finds nothing to do"
        );
    }

    #[test]
    fn a_hole_is_filled_from_history_or_reported_lost() {
        let mut s = anchored(1);
        let mut r = Record::default();
        assert_eq!(s.publication(&ch(), p(5), true, &mut r), Gap::New);
        let (_, from) = s.fill_from().expect("due");
        assert_eq!(from, 1);
        // History still has 3 and 4 but 2 was trimmed.
        s.fill(&ch(), &read(5, &[3, 4, 5], "e1"), false, &mut r);
        assert_eq!(r.live, ["lost 2", "pub 3", "pub 4", "pub 5"]);
        assert_eq!(s.position().map(|(_, o)| o), Some(5));
    }

    #[test]
    fn a_resync_moves_to_the_stored_tail() {
        let mut s = anchored(4);
        let mut r = Record::default();
        s.fill(&ch(), &read(9, &[8, 9], "e1"), true, &mut r);
        assert_eq!(r.live, ["lost 7", "pub 8", "pub 9"]);
        let mut r = Record::default();
        s.fill(&ch(), &read(12, &[], "e1"), true, &mut r);
        assert_eq!(r.live, ["lost 12"]);
    }

    #[test]
    fn an_epoch_change_is_a_lost() {
        let mut s = anchored(4);
        let mut r = Record::default();
        let q = Arc::new(Publication::new(
            ch(),
            1,
            Arc::from("e2"),
            Bytes::from_static(b"1"),
            None,
        ));
        s.publication(&ch(), q, true, &mut r);
        assert_eq!(r.live, ["lost 0", "pub 1"]);
        assert_eq!(s.position().map(|(e, _)| &**e), Some("e2"));
    }

    #[test]
    fn a_joiner_gets_its_reply_then_what_the_read_missed() {
        let mut s = anchored(3);
        let mut r = Record::default();
        let c = client(7, 1 << 20);
        s.add_joiner(c.clone());
        for o in [4, 5, 6] {
            s.publication(&ch(), p(o), true, &mut r);
        }
        // Its read saw up to 5: 6 follows the reply, 4 and 5 do not repeat.
        let joined = s.finish_join(
            &ch(),
            &c,
            &Arc::from("e1"),
            5,
            &[Bytes::from_static(b"{\"type\":\"reply\"}")],
            &mut r,
        );
        assert_eq!(joined, Joined::Live);
        let got: Vec<_> = r.one.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(got, ["{\"type\":\"reply\"}", "pub 6"]);
    }

    #[test]
    fn a_joiner_whose_read_went_ahead_catches_up_without_duplicates() {
        let mut s = anchored(3);
        let mut r = Record::default();
        let c = client(7, 1 << 20);
        s.add_joiner(c.clone());
        let joined = s.finish_join(&ch(), &c, &Arc::from("e1"), 5, &[], &mut r);
        assert_eq!(joined, Joined::Catching);
        for o in [4, 5, 6] {
            s.publication(&ch(), p(o), true, &mut r);
        }
        assert_eq!(r.promoted, [7]);
        assert!(
            r.one.is_empty(),
            "4 and 5 it had, 6 reaches it as a live one"
        );
        assert_eq!(r.live, ["pub 4", "pub 5", "pub 6"]);
    }

    #[test]
    fn the_first_read_anchors_a_stream_and_releases_what_was_held() {
        let mut s = Stream::default();
        let mut r = Record::default();
        let c = client(7, 1 << 20);
        s.add_joiner(c.clone());
        s.publication(&ch(), p(6), false, &mut r);
        s.publication(&ch(), p(5), false, &mut r);
        assert!(r.live.is_empty() && r.one.is_empty());
        assert_eq!(
            s.finish_join(&ch(), &c, &Arc::from("e1"), 5, &[], &mut r),
            Joined::Live
        );
        // The caller adds it to the live ones, then resumes.
        s.resume(&ch(), &mut r);
        assert_eq!(r.live, ["pub 6"]);
    }

    #[test]
    fn a_joiner_whose_read_is_behind_a_position_set_by_another_read_reads_again() {
        let mut s = Stream::default();
        let mut r = Record::default();
        let (a, b) = (client(1, 1 << 20), client(2, 1 << 20));
        s.add_joiner(a.clone());
        s.add_joiner(b.clone());
        // 4 and 5 arrive while both read, before the stream has a position.
        s.publication(&ch(), p(4), false, &mut r);
        s.publication(&ch(), p(5), false, &mut r);
        let e: Arc<str> = Arc::from("e1");
        // b's read saw 5: the stream starts there, and 4 and 5 are gone.
        assert_eq!(s.finish_join(&ch(), &b, &e, 5, &[], &mut r), Joined::Live);
        // a's read saw only 3: its buffer has nothing before 5, so it must
        // read again, and nothing was queued for it.
        assert_eq!(s.finish_join(&ch(), &a, &e, 3, &[], &mut r), Joined::Behind);
        assert!(r.one.iter().all(|(k, _)| *k != 1));
        s.publication(&ch(), p(6), true, &mut r);
        // Its second read covers up to 5; 6 came through its buffer.
        assert_eq!(s.finish_join(&ch(), &a, &e, 5, &[], &mut r), Joined::Live);
        let got: Vec<_> = r
            .one
            .iter()
            .filter(|(k, _)| *k == 1)
            .map(|(_, f)| f.as_str())
            .collect();
        assert_eq!(got, ["pub 6"]);
    }

    #[test]
    fn a_joiner_buffer_is_bounded_by_its_outbox() {
        let mut s = anchored(0);
        let mut r = Record::default();
        let c = client(7, 100);
        s.add_joiner(c.clone());
        for o in 1..=5 {
            s.publication(&ch(), p(o), true, &mut r);
        }
        assert_eq!(r.overflowed, [7]);
        assert!(!s.has_joiners());
    }

    #[test]
    fn held_publications_are_bounded() {
        let mut s = anchored(0);
        let mut r = Record::default();
        for o in (2..MAX_HELD as u64 + 100).rev() {
            s.publication(&ch(), p(o), true, &mut r);
        }
        assert_eq!(s.held.len(), MAX_HELD);
        assert_eq!(s.held.first_key_value().map(|(o, _)| *o), Some(2));
    }
}
