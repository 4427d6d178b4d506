//! `GET /ws`: every check happens before the `101` (PROTOCOL §1); then the
//! upgraded stream is handed to the transport.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use switchboard_core::ClientInit;

use super::front::{Peer, Prefixed};
use super::{SharedState, admission, error};
use crate::transport;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

pub async fn upgrade(State(st): State<SharedState>, mut req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let accepted = match check(&st, peer, req.method(), req.uri().query(), req.headers()).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // A second request on a kept-alive connection: hyper has the connection,
    // so the upgrade goes through it (the usual path is `front`).
    let on_upgrade = hyper::upgrade::on(&mut req);
    let live = transport::LiveTransport::new(&st);
    let init = accepted.init;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<Prefixed>() {
                Ok(parts) => {
                    let (stream, mut unread) = parts.io.into_parts();
                    unread.extend_from_slice(&parts.read_buf);
                    tokio::spawn(transport::start(stream, &unread, Bytes::new(), init, live));
                }
                Err(_) => tracing::warn!("upgraded connection is not a TCP stream"),
            },
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accepted.accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A handshake that passed every check.
pub struct Accepted {
    pub init: ClientInit,
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
}

/// Every check of PROTOCOL §1, before any `101`: the refusal, when there is
/// one, is the response to send (with `Connection: close`).
pub async fn check(
    st: &SharedState,
    peer: Option<IpAddr>,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Accepted, Box<Response>> {
    checked(st, peer, method, query, headers)
        .await
        .map_err(|mut r| {
            // A refused client has nothing more to say on this connection.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        })
}

async fn checked(
    st: &SharedState,
    peer: Option<IpAddr>,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Accepted, Box<Response>> {
    let node = &st.node;
    let reject = |reason: &'static str| node.metrics.reject(reason);
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let is_upgrade = method == Method::GET
        && header_has_token(headers, header::UPGRADE, "websocket")
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && key.is_some();
    let Some(key) = key.filter(|_| is_upgrade) else {
        reject("not_websocket");
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "this endpoint takes WebSocket upgrades (version 13) only",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Err(Box::new(r));
    };
    let init = admission::admit(st, peer, query, headers).await?;
    Ok(Accepted {
        accept: accept_key(key.as_bytes()),
        init,
    })
}
