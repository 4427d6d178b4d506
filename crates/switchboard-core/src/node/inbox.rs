//! The inbox (PROTOCOL §10): per-device acknowledged cursors of a user's
//! personal channel, in a namespace with `inbox = true`. The logic is here,
//! in the node, so every transport (WebSocket `ack`, a later `POST
//! /sse/ack`) and the API share it; the cursors themselves live in the
//! [`CursorStore`](crate::CursorStore) that sits beside the history.
//!
//! A cursor is `(epoch, offset)`. When the inbox's epoch changes (its history
//! was lost: a memory store restarted, a file store's unclean batch-mode
//! stop, Redis metadata expired) a cursor of the old epoch names nothing: the
//! device counts as never having acked (`acked: 0`) and gets every
//! publication the new epoch still holds, with `recovered: false`.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::ChannelName;
use switchboard_protocol::frame::ErrorCode;

use super::{CommandError, Node, json};
use crate::client::ClientHandle;
use crate::cursor::{Cursor, CursorError, CursorLimits, DEFAULT_MAX_DEVICES};
use crate::history::{HistoryQuery, HistoryRead, Retention};

/// Where a device of an inbox stands: the welcome's `inbox` object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InboxState {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    pub acked: u64,
    pub unread: u64,
}

pub(super) fn cursor_error(e: CursorError) -> CommandError {
    tracing::warn!(error = %e, "cursor store request failed");
    match e {
        CursorError::Unavailable(_) => {
            CommandError::new(ErrorCode::Internal, "temporarily unavailable, retry")
        }
        CursorError::Store(_) => CommandError::new(ErrorCode::Internal, "cursor store failed"),
    }
}

/// What a cursor means in the channel's current epoch.
fn acked(cursor: Option<&Cursor>, epoch: &str) -> u64 {
    cursor
        .filter(|c| &*c.epoch == epoch)
        .map_or(0, |c| c.offset)
}

fn unread(read: &HistoryRead, acked: u64) -> u64 {
    read.publications
        .iter()
        .filter(|p| p.offset > acked)
        .count() as u64
}

impl Node {
    /// `user`'s inbox channel, when the `user` namespace is an inbox.
    pub fn inbox_channel(&self, user: &str) -> Option<ChannelName> {
        let channel = ChannelName::personal(user).ok()?;
        self.opts
            .namespaces
            .policy(&channel)
            .inbox
            .then_some(channel)
    }

    fn cursor_limits(&self, channel: &ChannelName) -> CursorLimits {
        CursorLimits {
            max_devices: DEFAULT_MAX_DEVICES,
            ttl: self.opts.namespaces.policy(channel).history_ttl,
        }
    }

    /// What an inbox subscribe without `since` recovers: everything after
    /// the device's cursor; when that is not all stored (or the epoch
    /// changed), or the device never acked, every publication the inbox
    /// still holds. `recovered` is false only when something after the
    /// cursor is gone.
    pub(super) async fn inbox_read(
        &self,
        channel: &ChannelName,
        cursor: Option<&Cursor>,
        retention: Retention,
    ) -> Result<HistoryRead, CommandError> {
        if let Some(c) = cursor {
            let read = self
                .broker
                .history(channel, &HistoryQuery::since(c.offset, &c.epoch), retention)
                .await?;
            if read.recovered {
                return Ok(read);
            }
        }
        let mut all = self
            .broker
            .history(channel, &HistoryQuery::default(), retention)
            .await?;
        all.recovered = cursor.is_none();
        Ok(all)
    }

    /// The welcome's `inbox` object for `device` of `user` (`None` when the
    /// user's namespace is not an inbox).
    pub async fn inbox_state(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<InboxState>, CommandError> {
        let Some(channel) = self.inbox_channel(user) else {
            return Ok(None);
        };
        let retention = self.opts.namespaces.policy(&channel).retention();
        let cursor = self
            .cursors
            .get(&channel, device)
            .await
            .map_err(cursor_error)?;
        let read = self
            .broker
            .history(&channel, &HistoryQuery::default(), retention)
            .await?;
        let acked = acked(cursor.as_ref(), &read.epoch);
        Ok(Some(InboxState {
            channel: channel.as_str().to_string(),
            offset: read.offset,
            epoch: read.epoch.to_string(),
            acked,
            unread: unread(&read, acked),
        }))
    }

    /// The `ack` op: moves the connection's device cursor forward to
    /// `offset` (never back); answers `{"acked": n}`, where the cursor stands.
    pub async fn ack(
        &self,
        client: &Arc<ClientHandle>,
        channel: &ChannelName,
        offset: u64,
    ) -> Result<Bytes, CommandError> {
        let device = client.claims().device.clone();
        let now = self
            .ack_as(&client.user, device.as_deref(), channel, offset)
            .await?;
        json(&serde_json::json!({ "acked": now }))
    }

    /// An ack by `user`'s `device`, whatever carried it (the `ack` op, or
    /// `POST /sse/ack`): its own inbox only, then [`Node::cursor_ack`].
    /// Returns where the cursor stands.
    pub async fn ack_as(
        &self,
        user: &str,
        device: Option<&str>,
        channel: &ChannelName,
        offset: u64,
    ) -> Result<u64, CommandError> {
        if !self.opts.namespaces.policy(channel).inbox {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                "the channel is not an inbox",
            ));
        }
        if channel.personal_owner() != Some(user) {
            return Err(CommandError::forbidden());
        }
        let Some(device) = device else {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                "no device: connect with ?device=<id>",
            ));
        };
        self.cursor_ack(channel, device, offset).await
    }

    /// Advances `device`'s cursor of `channel` to `offset` of the channel's
    /// current epoch; refused when `offset` is past the channel's latest.
    pub async fn cursor_ack(
        &self,
        channel: &ChannelName,
        device: &str,
        offset: u64,
    ) -> Result<u64, CommandError> {
        let retention = self.opts.namespaces.policy(channel).retention();
        let head = self
            .broker
            .history(
                channel,
                &HistoryQuery {
                    since: None,
                    limit: Some(0),
                },
                retention,
            )
            .await?;
        if offset > head.offset {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!(
                    "offset {offset} is beyond the channel's latest offset {}",
                    head.offset
                ),
            ));
        }
        let to = Cursor {
            epoch: head.epoch.clone(),
            offset,
        };
        let now = self
            .cursors
            .advance(channel, device, to, self.cursor_limits(channel))
            .await
            .map_err(cursor_error)?;
        Ok(acked(Some(&now), &head.epoch))
    }

    /// `GET /api/inbox/{user}`: the inbox's position and, per device with a
    /// cursor, what it acked and how many retained publications follow.
    /// `None` when the user's namespace is not an inbox.
    pub async fn inbox_report(
        &self,
        user: &str,
    ) -> Result<Option<serde_json::Value>, CommandError> {
        let Some(channel) = self.inbox_channel(user) else {
            return Ok(None);
        };
        let retention = self.opts.namespaces.policy(&channel).retention();
        let read = self
            .broker
            .history(&channel, &HistoryQuery::default(), retention)
            .await?;
        let mut devices = self.cursors.devices(&channel).await.map_err(cursor_error)?;
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        let devices: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let acked = acked(Some(&d.cursor), &read.epoch);
                serde_json::json!({
                    "device": &*d.device,
                    "acked": acked,
                    "unread": unread(&read, acked),
                })
            })
            .collect();
        Ok(Some(serde_json::json!({
            "offset": read.offset,
            "epoch": &*read.epoch,
            "devices": devices,
        })))
    }
}
