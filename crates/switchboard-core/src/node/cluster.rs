//! What the node answers for the whole cluster when its presence store is
//! shared with other nodes (PROTOCOL §9): connections per user for the
//! per-user limit, online users, a disconnect that reaches every node, the
//! broker's health. With a store of this node's own, the hub already knows
//! each answer exactly and nothing here costs a call.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::broker::{BrokerHealth, ControlMessage};
use crate::client::ClientHandle;
use crate::disconnect::Disconnect;
use crate::hub::AddError;

use super::{Node, spawn};

impl Node {
    /// Whether other nodes share this node's presence (and broker).
    pub fn is_clustered(&self) -> bool {
        self.presence.shared()
    }

    pub fn broker_health(&self) -> BrokerHealth {
        self.broker.health()
    }

    /// [`Node::admission`], counting `user`'s connections on every node. A
    /// store that cannot answer lets the client in: [`Node::connect`]'s
    /// count closes the one too many once it can.
    pub async fn admission_everywhere(&self, user: &str) -> Result<(), AddError> {
        self.admission(user)?;
        if !self.is_clustered() {
            return Ok(());
        }
        match self.presence.user_connections(user).await {
            Ok(n) if n >= self.opts.max_connections_per_user => Err(AddError::UserFull),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "counting a user's connections failed");
                Ok(())
            }
        }
    }

    /// Counts a new client among its user's connections on every node; the
    /// one that makes them more than allowed (two nodes admitted at once)
    /// is closed.
    pub(super) fn count_connection(&self, client: &Arc<ClientHandle>) {
        if !self.is_clustered() {
            return;
        }
        let Some(node) = self.me.upgrade() else {
            return;
        };
        let client = client.clone();
        spawn(async move {
            let counted = node.presence.add_connection(&client.user, &client.id).await;
            // Removed while we counted: its removal may have run before our
            // add reached the store, so undo it (both are idempotent).
            if client.removed.load(Ordering::Acquire) {
                node.uncount_connection(&client).await;
                return;
            }
            match counted {
                Ok(n) if n > node.opts.max_connections_per_user => {
                    node.close_client(&client, Disconnect::USER_LIMIT).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "counting a connection failed"),
            }
        });
    }

    pub(super) async fn uncount_connection(&self, client: &ClientHandle) {
        if !self.is_clustered() {
            return;
        }
        if let Err(e) = self
            .presence
            .remove_connection(&client.user, &client.id)
            .await
        {
            tracing::warn!(error = %e, "uncounting a connection failed");
        }
    }

    /// Users with at least one connection on any node, sorted.
    pub async fn online(&self) -> Result<Vec<String>, crate::presence::PresenceError> {
        if self.is_clustered() {
            return self.presence.online().await;
        }
        let mut users: Vec<String> = self.hub.users().iter().map(|u| u.to_string()).collect();
        users.sort();
        Ok(users)
    }

    /// `user`'s connections on every node (the hub's count when no other
    /// node shares the presence store).
    pub async fn user_connections_everywhere(
        &self,
        user: &str,
    ) -> Result<usize, crate::presence::PresenceError> {
        if !self.is_clustered() {
            return Ok(self.hub.user_connection_count(user));
        }
        self.presence.user_connections(user).await
    }

    /// Closes every connection of `user` on every node with `reason`;
    /// returns how many there were (on every node, as counted just before).
    pub async fn disconnect_everywhere(
        &self,
        user: &str,
        reason: Disconnect,
    ) -> Result<usize, crate::broker::BrokerError> {
        if !self.is_clustered() {
            return Ok(self.disconnect_user(user, reason).await);
        }
        let counted = self.presence.user_connections(user).await.ok();
        // This node's own are closed now, so the answer follows them.
        let here = self.disconnect_user(user, reason).await;
        self.broker
            .control(ControlMessage::Disconnect {
                user: user.to_string(),
                code: reason.code,
                reason: reason.reason.to_string(),
            })
            .await?;
        Ok(counted.unwrap_or(here).max(here))
    }
}
