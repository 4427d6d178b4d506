//! [`RedisCursors`]: inbox cursors (PROTOCOL §10) shared by every node.
//!
//! One hash per inbox channel, `sb:{<channel>}:cursors` (the channel's hash
//! tag, so it lives on the channel's Cluster slot beside its stream), field
//! device → `offset:expires_ms:advanced_ms:epoch`. An advance is one Lua
//! script (`lua/cursor_advance.lua`): read, take the maximum within the
//! epoch, evict past the device cap, write, push the hash's expiry to the
//! ttl — atomic against advances from any node. Expiry is Redis server time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use switchboard_core::{Cursor, CursorError, CursorLimits, CursorStore, DeviceCursor};
use switchboard_protocol::ChannelName;

use crate::config::RedisOptions;
use crate::conn::{self, Conn};
use crate::keys;
use crate::pubsub::PushSink;

/// Inbox cursors in Redis.
pub struct RedisCursors {
    conn: Conn,
    advance: Script,
    live: Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisCursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCursors").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> CursorError {
    CursorError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `offset:expires:advanced:epoch` → the cursor.
fn parse(value: &str) -> Option<Cursor> {
    let mut parts = value.splitn(4, ':');
    let offset = parts.next()?.parse().ok()?;
    let _expires = parts.next()?;
    let _advanced = parts.next()?;
    let epoch = parts.next()?;
    Some(Cursor {
        epoch: Arc::from(epoch),
        offset,
    })
}

impl RedisCursors {
    pub async fn connect(options: &RedisOptions) -> Result<Self, CursorError> {
        let conn = conn::connect(options, None::<PushSink>)
            .await
            .map_err(unavailable)?;
        Ok(RedisCursors {
            conn,
            advance: Script::new(include_str!("lua/cursor_advance.lua")),
            live: Script::new(include_str!("lua/cursor_live.lua")),
            timeout: options.response_timeout,
        })
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CursorError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unavailable(conn::timed_out("cursor command")))?
            .map_err(unavailable)
    }

    async fn live(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        let mut conn = self.conn.clone();
        let call = self.live.key(keys::cursors(channel));
        let flat: Vec<String> = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| {
                Some(DeviceCursor {
                    device: Arc::from(pair[0].as_str()),
                    cursor: parse(&pair[1])?,
                })
            })
            .collect())
    }
}

#[async_trait]
impl CursorStore for RedisCursors {
    async fn get(
        &self,
        channel: &ChannelName,
        device: &str,
    ) -> Result<Option<Cursor>, CursorError> {
        Ok(self
            .live(channel)
            .await?
            .into_iter()
            .find(|d| &*d.device == device)
            .map(|d| d.cursor))
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        self.live(channel).await
    }

    async fn advance(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError> {
        let mut conn = self.conn.clone();
        let mut call = self.advance.key(keys::cursors(channel));
        call.arg(device)
            .arg(&*to.epoch)
            .arg(to.offset)
            .arg(millis(limits.ttl))
            .arg(limits.max_devices);
        let (offset, epoch): (u64, String) = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(Cursor {
            epoch: Arc::from(epoch),
            offset,
        })
    }
}
