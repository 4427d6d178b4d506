//! Per-namespace policy (PROTOCOL §7): who may subscribe and publish, whether
//! presence and join/leave are on, and how much history is kept.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_protocol::{ChannelName, pattern_matches};

use crate::history::Retention;

/// Who may subscribe to a namespace's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeRule {
    /// Any authenticated user.
    #[default]
    Any,
    /// Only users whose token's `channels` claim matches the channel.
    Claims,
}

/// One namespace's policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespacePolicy {
    pub name: String,
    pub publish: bool,
    pub presence: bool,
    pub join_leave: bool,
    /// Publications kept per channel; 0 keeps none.
    pub history_size: usize,
    /// How long a publication is kept; zero keeps none.
    pub history_ttl: Duration,
    pub subscribe: SubscribeRule,
    /// Channels of this namespace that may keep history at once; 0: no cap.
    pub history_max_channels: usize,
    /// Per-device acknowledged cursors (PROTOCOL §10); only personal
    /// channels (`user:<id>`) have them.
    pub inbox: bool,
}

impl NamespacePolicy {
    /// The policy of a channel with no configured namespace: subscribe only.
    pub fn subscribe_only(name: &str) -> Self {
        NamespacePolicy {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn retention(&self) -> Retention {
        Retention {
            size: self.history_size,
            ttl: self.history_ttl,
            max_channels: self.history_max_channels,
        }
    }
}

/// Every configured namespace, looked up by a channel's prefix.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    by_name: HashMap<String, NamespacePolicy>,
    fallback: NamespacePolicy,
}

impl Namespaces {
    pub fn new(list: impl IntoIterator<Item = NamespacePolicy>) -> Self {
        Namespaces {
            by_name: list.into_iter().map(|n| (n.name.clone(), n)).collect(),
            fallback: NamespacePolicy::subscribe_only(""),
        }
    }

    /// The policy that governs `channel`. A channel whose namespace is not
    /// configured is subscribe-only, as one without a prefix is when no `""`
    /// namespace exists.
    pub fn policy(&self, channel: &ChannelName) -> &NamespacePolicy {
        self.by_name
            .get(channel.namespace())
            .unwrap_or(&self.fallback)
    }

    /// Whether `user` (with its token's `channels` claim) may subscribe —
    /// and, in a `claims` namespace, use the channel at all (PROTOCOL §7:
    /// the claim governs subscribe, publish, presence and history).
    pub fn may_subscribe(&self, channel: &ChannelName, user: &str, claims: &[String]) -> bool {
        if let Some(owner) = channel.personal_owner() {
            return owner == user;
        }
        if claims.iter().any(|p| pattern_matches(p, channel.as_str())) {
            return true;
        }
        self.policy(channel).subscribe == SubscribeRule::Any
    }

    /// Whether a client of `user` (with its token's `channels` claim) may
    /// publish to `channel`: the namespace lets clients publish and, in a
    /// `claims` namespace, the claim matches. Nobody publishes to a personal
    /// channel but the server API.
    pub fn may_publish(&self, channel: &ChannelName, user: &str, claims: &[String]) -> bool {
        channel.personal_owner().is_none()
            && self.policy(channel).publish
            && self.may_subscribe(channel, user, claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).expect("valid")
    }

    #[test]
    fn personal_channels_belong_to_their_user() {
        let ns = Namespaces::new([]);
        assert!(ns.may_subscribe(&ch("user:alice"), "alice", &[]));
        assert!(!ns.may_subscribe(&ch("user:alice"), "bob", &["*".into()]));
        assert!(!ns.may_publish(&ch("user:alice"), "alice", &["*".into()]));
    }

    #[test]
    fn claims_namespaces_need_a_matching_pattern() {
        let ns = Namespaces::new([NamespacePolicy {
            name: "vip".into(),
            subscribe: SubscribeRule::Claims,
            ..Default::default()
        }]);
        assert!(!ns.may_subscribe(&ch("vip:a"), "u", &[]));
        assert!(ns.may_subscribe(&ch("vip:a"), "u", &["vip:*".into()]));
        assert!(ns.may_subscribe(&ch("other:a"), "u", &[]));
        assert!(!ns.may_publish(&ch("other:a"), "u", &["*".into()]));
    }

    #[test]
    fn in_a_claims_namespace_the_claim_governs_publish_too() {
        let ns = Namespaces::new([
            NamespacePolicy {
                name: "vip".into(),
                publish: true,
                subscribe: SubscribeRule::Claims,
                ..Default::default()
            },
            NamespacePolicy {
                name: "chat".into(),
                publish: true,
                ..Default::default()
            },
        ]);
        assert!(!ns.may_publish(&ch("vip:a"), "u", &[]));
        assert!(!ns.may_publish(&ch("vip:a"), "u", &["vip:b".into()]));
        assert!(ns.may_publish(&ch("vip:a"), "u", &["vip:*".into()]));
        assert!(ns.may_publish(&ch("chat:a"), "u", &[]));
    }
}
