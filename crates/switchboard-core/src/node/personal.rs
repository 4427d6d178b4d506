//! The personal channel's presence and join/leave. Every connection starts
//! in its user's channel without a subscribe (PROTOCOL §1); when the `user`
//! namespace has presence or join/leave on, connecting and leaving announce
//! it exactly as a subscribe and an unsubscribe would.
//!
//! `connect` cannot wait, so the announcement runs as a task, and
//! `ClientHandle::personal_announce` orders it with leaving: whichever of
//! the two comes second does the undoing, so no join is ever left without
//! its leave, and no leave is pushed for a join that never was.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchboard_protocol::ChannelName;
use switchboard_protocol::frame;

use super::{Node, spawn};
use crate::client::{
    ClientHandle, PERSONAL_ANNOUNCED, PERSONAL_ANNOUNCING, PERSONAL_LEFT, PERSONAL_PENDING,
};
use crate::presence::PresenceEntry;

impl Node {
    /// Presence and the join push of the personal channel, as a subscribe
    /// would do them (PROTOCOL §1: every connection starts in it), when the
    /// `user` namespace has them on. `connect` cannot wait, so this runs as a
    /// task; `personal_announce` orders it with leaving (see `leave_personal`).
    pub(super) fn announce_personal(&self, client: &Arc<ClientHandle>, personal: ChannelName) {
        let policy = self.opts.namespaces.policy(&personal);
        if !(policy.presence || policy.join_leave) {
            return;
        }
        let Some(node) = self.me.upgrade() else {
            return;
        };
        let client = client.clone();
        spawn(async move {
            if client
                .personal_announce
                .compare_exchange(
                    PERSONAL_PENDING,
                    PERSONAL_ANNOUNCING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                return; // left before it was announced: nothing to say
            }
            node.announce(&client, &personal).await;
            if client
                .personal_announce
                .compare_exchange(
                    PERSONAL_ANNOUNCING,
                    PERSONAL_ANNOUNCED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // Left while we announced: the leave is ours to say.
                node.denounce(&client, &personal).await;
            }
        });
    }

    /// This node's presence entry for `client`.
    pub(super) fn presence_entry(&self, client: &ClientHandle) -> PresenceEntry {
        PresenceEntry {
            user: client.user.to_string(),
            client: client.id.to_string(),
            info: client
                .claims()
                .info
                .as_deref()
                .and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or(serde_json::Value::Null),
            node: self.opts.name.clone(),
        }
    }

    /// Adds presence and pushes the join of `client` in `channel`, as the
    /// namespace says: both in one step when both are on
    /// ([`crate::PresenceStore::join`]). Whether a join push went out
    /// (possibly, for a store that failed half-way: then its leave is pushed
    /// at once, only if the join went out).
    pub(super) async fn announce(&self, client: &ClientHandle, channel: &ChannelName) -> bool {
        let policy = self.opts.namespaces.policy(channel);
        let claims = client.claims();
        let join = || frame::join(channel, &client.user, &client.id, claims.info.as_deref());
        match (policy.presence, policy.join_leave) {
            (true, true) => {
                let entry = self.presence_entry(client);
                match self
                    .presence
                    .join(channel, entry, join(), &*self.broker)
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        // It may have happened before the failure: undone
                        // the same way, its leave pushed only if it did.
                        tracing::warn!(error = %e, "presence join failed");
                        let leave = frame::leave(channel, &client.user, &client.id);
                        if let Err(e) = self
                            .presence
                            .leave(channel, &client.id, leave, &*self.broker)
                            .await
                        {
                            tracing::warn!(error = %e, "presence leave failed");
                        }
                        false
                    }
                }
            }
            (true, false) => {
                if let Err(e) = self
                    .presence
                    .add(channel, self.presence_entry(client))
                    .await
                {
                    tracing::warn!(error = %e, "presence add failed");
                }
                false
            }
            (false, true) => match self.broker.push(channel, join()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "join push failed");
                    false
                }
            },
            (false, false) => false,
        }
    }

    /// Removes presence and pushes the leave of `client` from `channel`, as
    /// the namespace says: both in one step when both are on, the leave
    /// then pushed only if the client was present.
    pub(super) async fn denounce(&self, client: &ClientHandle, channel: &ChannelName) {
        let policy = self.opts.namespaces.policy(channel);
        let leave = || frame::leave(channel, &client.user, &client.id);
        match (policy.presence, policy.join_leave) {
            (true, true) => {
                if let Err(e) = self
                    .presence
                    .leave(channel, &client.id, leave(), &*self.broker)
                    .await
                {
                    tracing::warn!(error = %e, "presence leave failed");
                }
            }
            (true, false) => {
                if let Err(e) = self.presence.remove(channel, &client.id).await {
                    tracing::warn!(error = %e, "presence remove failed");
                }
            }
            (false, true) => {
                if let Err(e) = self.broker.push(channel, leave()).await {
                    tracing::warn!(error = %e, "leave push failed");
                }
            }
            (false, false) => {}
        }
    }

    /// Whether leaving the personal channel must undo presence and join now:
    /// not when they were never announced, nor while the announcement runs
    /// (it undoes itself when it sees `PERSONAL_LEFT`).
    pub(super) fn leave_personal(&self, client: &ClientHandle) -> bool {
        matches!(
            client
                .personal_announce
                .swap(PERSONAL_LEFT, Ordering::AcqRel),
            PERSONAL_ANNOUNCED | PERSONAL_LEFT
        )
    }
}
