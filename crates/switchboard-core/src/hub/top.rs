//! The channels with the most local subscribers, for the admin page: one
//! pass over the channel shards, each under its lock once, keeping only the
//! best `limit` so far (no list of every channel is ever built).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use switchboard_protocol::ChannelName;

use super::Hub;

impl Hub {
    /// The `limit` channels with the most local subscribers (joining ones
    /// included; personal channels, served from the user index, are not
    /// channels here), most first, ties by name.
    pub fn top_channels(&self, limit: usize) -> Vec<(ChannelName, usize)> {
        if limit == 0 {
            return Vec::new();
        }
        // A min-heap of the best so far: its top is the one to beat, and a
        // channel that does not beat it costs no clone of its name.
        let mut best: BinaryHeap<Reverse<(usize, ChannelName)>> =
            BinaryHeap::with_capacity(limit + 1);
        for shard in self.channels.iter() {
            let shard = shard.lock();
            for (name, entry) in shard.iter() {
                let n = entry.subscribers.len() + entry.stream.joiner_count();
                if best.len() == limit && best.peek().is_some_and(|Reverse((m, _))| *m >= n) {
                    continue;
                }
                best.push(Reverse((n, name.clone())));
                if best.len() > limit {
                    best.pop();
                }
            }
        }
        let mut top: Vec<(ChannelName, usize)> =
            best.into_iter().map(|Reverse((n, c))| (c, n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::{ClientHandle, ClientInit};

    fn client(key: u64) -> Arc<ClientHandle> {
        Arc::new(ClientHandle::new(
            key,
            0,
            ClientInit {
                user: format!("u{key}"),
                ..Default::default()
            },
            1024,
            0,
        ))
    }

    #[test]
    fn the_busiest_channels_come_first_and_only_limit_of_them() {
        let hub = Hub::new();
        let clients: Vec<_> = (0..10).map(client).collect();
        // Channel "c<n>" gets n subscribers.
        for n in 1..=6usize {
            let ch = ChannelName::parse(&format!("c{n}")).expect("valid");
            for c in &clients[..n] {
                hub.subscribe(&ch, c);
            }
        }
        let top = hub.top_channels(3);
        let names: Vec<(&str, usize)> = top.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        assert_eq!(names, vec![("c6", 6), ("c5", 5), ("c4", 4)]);
        assert_eq!(hub.top_channels(100).len(), 6);
        assert!(hub.top_channels(0).is_empty());
    }

    #[test]
    fn personal_channels_are_not_listed() {
        let hub = Hub::new();
        let a = client(1);
        hub.add_client(&a, 10, 10).expect("added");
        let own = ChannelName::personal("u1").expect("valid");
        hub.subscribe(&own, &a);
        assert!(hub.top_channels(10).is_empty());
    }
}
