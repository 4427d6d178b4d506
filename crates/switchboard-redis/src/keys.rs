//! Every Redis key and pub/sub channel name Switchboard uses, in one place.
//!
//! The keys of one channel share the hash tag `{<channel>}`, so a script that
//! touches them runs on one Redis Cluster slot, and the channel's pub/sub
//! name hashes to that slot too (sharded pub/sub delivers it from the shard
//! that stored it). Channel names cannot contain `{` or `}` (PROTOCOL §7), so
//! the tag is exactly the channel.

use switchboard_protocol::{ChannelName, IdempotencyKey};

/// Prefix of every key, so Switchboard can share a Redis with others.
const PREFIX: &str = "sb";

/// A channel's stream of stored publications (ids `0-<offset>`).
pub fn stream(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:stream")
}

/// A channel's meta hash: `e` epoch, `o` last offset.
pub fn meta(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:meta")
}

/// An inbox channel's device cursors: hash device →
/// `offset:expires_ms:advanced_ms:epoch` (`lua/cursor_advance.lua`).
pub fn cursors(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:cursors")
}

/// A namespace's channels that keep history: sorted set channel → the
/// expiry (ms, server time) their count lasts until (`history_max_channels`).
pub fn history_channels(namespace: &str) -> String {
    format!("{PREFIX}:{{history-channels:{namespace}}}")
}

/// An idempotency key of a channel: `"<offset> <epoch>"` of its first
/// publish, expiring with the window. The key follows the channel's hash tag,
/// so the first `{`…`}` is still the channel's.
pub fn idempotency(channel: &ChannelName, key: &IdempotencyKey) -> String {
    format!("{PREFIX}:{{{channel}}}:idem:{key}")
}

/// A publish's own request id (`redis_min_replicas`): kept like an
/// idempotency key, but in its own space so no client key can meet it.
pub fn request(channel: &ChannelName, run: &str, id: u64) -> String {
    format!("{PREFIX}:{{{channel}}}:req:{run}:{id}")
}

/// The pub/sub channel carrying a channel's publications and pushes.
pub fn pubsub(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:pub")
}

/// The channel name inside a [`pubsub`] name, if it is one.
pub fn channel_of_pubsub(name: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(name).ok()?;
    name.strip_prefix("sb:{")?.strip_suffix("}:pub")
}

/// A channel's presence entries: hash client → entry JSON.
pub fn presence_entries(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:presence")
}

/// A channel's presence expiries: sorted set client → expiry (ms, server time).
pub fn presence_expiries(channel: &ChannelName) -> String {
    format!("{PREFIX}:{{{channel}}}:presence-exp")
}

/// A user's connections on every node: sorted set client → expiry (ms).
pub fn user_connections(user: &str) -> String {
    format!("{PREFIX}:{{user-conns:{user}}}")
}

/// Users online on any node: sorted set user → latest expiry (ms).
pub const ONLINE: &str = "sb:{online}";

/// Live nodes: hash name → announcement JSON.
pub const NODES: &str = "sb:{nodes}:info";
/// Live nodes' expiries: sorted set name → expiry (ms).
pub const NODE_EXPIRIES: &str = "sb:{nodes}:exp";

/// Control messages to every node. Plain (not sharded) pub/sub, which Redis
/// Cluster forwards to every shard.
pub const CONTROL: &str = "sb:control";

/// The pub/sub channel a node probes its own subscription with; `lane` is
/// the subscription connection it exercises.
pub fn probe(node: &str, lane: usize) -> String {
    format!("{PREFIX}:{{probe:{node}}}:{lane}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channels_keys_share_its_hash_tag() {
        let c = ChannelName::parse("chat:lobby").expect("valid");
        for key in [
            stream(&c),
            meta(&c),
            pubsub(&c),
            presence_entries(&c),
            presence_expiries(&c),
            idempotency(&c, &IdempotencyKey::parse("{x} y").expect("valid")),
        ] {
            assert!(key.contains("{chat:lobby}"), "{key}");
        }
    }

    #[test]
    fn pubsub_names_give_their_channel_back() {
        let c = ChannelName::parse("user:42").expect("valid");
        assert_eq!(channel_of_pubsub(pubsub(&c).as_bytes()), Some("user:42"));
        assert_eq!(channel_of_pubsub(b"sb:control"), None);
        assert_eq!(channel_of_pubsub(&[0xff, 0xfe]), None);
    }
}
