//! `history_max_channels` across nodes: a namespace's channels that keep
//! history are counted in one Redis set per namespace (`history_admit.lua`),
//! each until its stream would have expired. A node asks before a
//! publication only when it has not admitted the channel within the last
//! half history ttl, so a busy channel costs no extra round trip; a channel
//! may thus keep counting up to half a ttl less than its stream lives, never
//! more than the cap is admitted.

use std::collections::HashMap;

use parking_lot::Mutex;
use switchboard_core::Retention;
use switchboard_protocol::ChannelName;
use tokio::time::Instant;

/// Channels this node remembers as admitted; past this many it forgets them
/// all (and asks again), so the memory stays bounded.
const REMEMBERED: usize = 65_536;

#[derive(Default)]
pub(crate) struct Admitted {
    /// Channel → until when this node need not ask again.
    until: Mutex<HashMap<ChannelName, Instant>>,
}

impl Admitted {
    /// Whether a publication under `retention` must be admitted first.
    pub fn must_ask(&self, channel: &ChannelName, retention: Retention) -> bool {
        if retention.keeps_nothing() || retention.max_channels == 0 {
            return false;
        }
        self.until
            .lock()
            .get(channel)
            .is_none_or(|until| *until <= Instant::now())
    }

    /// Redis counted `channel` for a ttl from now.
    pub fn admitted(&self, channel: &ChannelName, retention: Retention) {
        let mut until = self.until.lock();
        if until.len() >= REMEMBERED {
            until.clear();
        }
        until.insert(channel.clone(), Instant::now() + retention.ttl / 2);
    }
}
