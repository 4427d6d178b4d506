//! `GET /api/admin/user/{user}`: the user's connections on every node.
//!
//! This node's come from its hub, with what only the hub knows (device,
//! subscriptions, queued bytes, idle time). Other nodes' (Redis broker) come
//! from what is already shared: presence on the user's personal channel
//! when the `user` namespace keeps presence (client, node, info), and
//! otherwise only the count of the user's connections on every node, which
//! the per-user limit keeps anyway; `unlisted` says how many that leaves
//! unnamed. No new cross-node request exists for this page.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;
use serde::Serialize;
use switchboard_core::ClientHandle;
use switchboard_protocol::ChannelName;

use crate::http::{SharedState, error, json_response, unavailable};

/// One connection as the page lists it; the fields only this node's hub
/// knows are absent for other nodes' connections.
#[derive(Debug, Serialize)]
struct Connection {
    client: String,
    node: String,
    info: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_bytes: Option<usize>,
    /// Seconds since a frame last came from the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_s: Option<u64>,
}

/// Where other nodes' connections were learnt from.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    /// One node (memory broker): the hub knows every connection.
    Hub,
    /// Presence on the personal channel, on every node.
    Presence,
    /// The count of connections on every node only.
    Count,
}

fn local(node_name: &str, now_ms: u64, c: &ClientHandle) -> Connection {
    let claims = c.claims();
    Connection {
        client: c.id.to_string(),
        node: node_name.to_string(),
        info: claims
            .info
            .as_deref()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(serde_json::Value::Null),
        device: claims.device.as_deref().map(str::to_string),
        subscriptions: Some(c.subscription_count()),
        queued_bytes: Some(c.outbox.queued_bytes()),
        idle_s: Some(
            now_ms.saturating_sub(c.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed)) / 1000,
        ),
    }
}

pub async fn lookup(
    State(st): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(user)) = path else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad user in the path",
        );
    };
    let Ok(personal) = ChannelName::personal(&user) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a user id (user:<id> must be a valid channel name)",
        );
    };
    let node = &st.node;
    let me = node.name();
    let now_ms = node.now_ms();
    let mut connections: Vec<Connection> = node
        .hub
        .user_clients(&user)
        .iter()
        .map(|c| local(me, now_ms, c))
        .collect();
    let (total, source) =
        if node.is_clustered() {
            let total = match node.user_connections_everywhere(&user).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "counting a user's connections failed");
                    return unavailable("unavailable", "presence store unavailable, retry", 1);
                }
            };
            if node.opts.namespaces.policy(&personal).presence {
                let entries = match node.presence(&personal).await {
                    Ok(entries) => entries,
                    Err(e) => return crate::http::api::command_error(e),
                };
                connections.extend(entries.into_iter().filter(|e| e.node != me).map(|e| {
                    Connection {
                        client: e.client,
                        node: e.node,
                        info: e.info,
                        device: None,
                        subscriptions: None,
                        queued_bytes: None,
                        idle_s: None,
                    }
                }));
                (total, Source::Presence)
            } else {
                (total, Source::Count)
            }
        } else {
            (connections.len(), Source::Hub)
        };
    connections.sort_by(|a, b| (&a.node, &a.client).cmp(&(&b.node, &b.client)));
    // Counted and listed a moment apart: neither is less than what was seen.
    let total = total.max(connections.len());
    let body = serde_json::json!({
        "user": user,
        "node": me,
        "total": total,
        "unlisted": total - connections.len(),
        "source": source,
        "connections": connections,
    });
    json_response(StatusCode::OK, body.to_string())
}
