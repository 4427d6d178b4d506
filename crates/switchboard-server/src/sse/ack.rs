//! `POST /sse/ack` (PROTOCOL §11): a device on server-sent events acknowledges
//! its inbox the way a WebSocket client's `ack` op does (§10), with the same
//! token and `?device=` it streams with. The same rules: its own inbox only,
//! cursors only move forward, an offset beyond the channel's latest is
//! refused `bad_request`.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use switchboard_protocol::ChannelName;

use crate::auth::extract_token;
use crate::http::admission::{device_param, origin_ok};
use crate::http::api::command_error;
use crate::http::{SharedState, error, json_response};

/// An ack body is two small fields: anything longer is not one.
const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    channel: String,
    offset: u64,
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub async fn ack(State(st): State<SharedState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (headers, query) = (&parts.headers, parts.uri.query());
    // A cookie rides along on any cross-site POST: the allowlist decides.
    if !origin_ok(&st, headers) {
        return error(StatusCode::FORBIDDEN, "forbidden", "origin not allowed");
    }
    let claims = match extract_token(headers, query, &st.cfg.auth.cookie_name)
        .ok_or(crate::auth::AuthError::Missing)
        .and_then(|t| st.verifier.verify(&t))
    {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNAUTHORIZED, "unauthorized", &e.to_string()),
    };
    let device = match device_param(query) {
        Ok(d) => d,
        Err(message) => return bad_request(message),
    };
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "an ack body is at most 4096 bytes",
            );
        }
    };
    let body: AckBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("the body is not {{\"channel\", \"offset\"}}: {e}")),
    };
    let channel = match ChannelName::parse(&body.channel) {
        Ok(c) => c,
        Err(e) => return bad_request(&e.to_string()),
    };
    match st
        .node
        .ack_as(&claims.sub, device.as_deref(), &channel, body.offset)
        .await
    {
        Ok(acked) => json_response(
            StatusCode::OK,
            serde_json::json!({ "acked": acked }).to_string(),
        ),
        Err(e) => command_error(e),
    }
}
