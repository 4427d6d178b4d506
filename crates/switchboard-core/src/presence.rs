//! The [`PresenceStore`] role: who is in a channel now, and [`MemoryPresence`].

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Serialize;
use switchboard_protocol::ChannelName;

/// One client present in a channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceEntry {
    pub user: String,
    pub client: String,
    /// The token's `info` claim, or `null`.
    pub info: serde_json::Value,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence store failed: {0}")]
    Store(String),
}

/// Per-channel presence.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError>;
    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError>;
    /// Entries ordered by client id.
    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError>;
}

/// Presence of this node's clients, kept in memory.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<ChannelName, BTreeMap<String, PresenceEntry>>>,
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError> {
        self.channels
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(entry.client.clone(), entry);
        Ok(())
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError> {
        let mut channels = self.channels.lock();
        if let Some(entries) = channels.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError> {
        Ok(self
            .channels
            .lock()
            .get(channel)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_come_and_go() {
        let p = MemoryPresence::default();
        let ch = ChannelName::parse("c").expect("valid");
        let e = PresenceEntry {
            user: "u".into(),
            client: "c-1".into(),
            info: serde_json::Value::Null,
            node: "n1".into(),
        };
        p.add(&ch, e.clone()).await.expect("add");
        assert_eq!(p.get(&ch).await.expect("get"), vec![e]);
        p.remove(&ch, "c-1").await.expect("remove");
        assert!(p.get(&ch).await.expect("get").is_empty());
    }
}
