//! `GET /ws`: every check happens before the `101` (PROTOCOL §1); then the
//! upgraded stream is handed to the transport.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use switchboard_core::ClientInit;
use switchboard_core::hub::AddError;

use super::front::Prefixed;
use super::origin::origin_allowed;
use super::{SharedState, error, unavailable};
use crate::auth::{AuthError, extract_token};
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
    let accepted = match check(&st, req.method(), req.uri().query(), req.headers()).await {
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
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Accepted, Box<Response>> {
    checked(st, method, query, headers).await.map_err(|mut r| {
        // A refused client has nothing more to say on this connection.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    })
}

async fn checked(
    st: &SharedState,
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
    if st.draining.load(Ordering::Acquire) {
        reject("draining");
        return Err(Box::new(unavailable(
            "unavailable",
            "the node is draining; connect elsewhere",
            1,
        )));
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    if let Some(origin) = origins.next() {
        // Two `Origin` headers are not a well-formed request.
        let ok = origins.next().is_none()
            && origin
                .to_str()
                .is_ok_and(|o| origin_allowed(&st.cfg.ws.allowed_origins, o));
        if !ok {
            reject("origin");
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "origin not allowed",
            )));
        }
    }
    let claims = match extract_token(headers, query, &st.cfg.auth.cookie_name)
        .ok_or(AuthError::Missing)
        .and_then(|t| st.verifier.verify(&t))
    {
        Ok(c) => c,
        Err(e) => {
            reject(e.metric_reason());
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &e.to_string(),
            )));
        }
    };
    if switchboard_protocol::ChannelName::personal(&claims.sub).is_err() {
        reject("invalid_token");
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sub is not a valid user id",
        )));
    }
    let device = match device_param(query) {
        Ok(d) => d,
        Err(message) => {
            reject("bad_device");
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                message,
            )));
        }
    };
    match node.admission_everywhere(&claims.sub).await {
        Ok(()) => {}
        Err(AddError::NodeFull) => {
            reject("node_full");
            return Err(Box::new(unavailable(
                "limit_exceeded",
                "node at its connection limit",
                5,
            )));
        }
        Err(AddError::UserFull) => {
            reject("user_full");
            return Err(Box::new(unavailable(
                "limit_exceeded",
                "too many connections for this user",
                5,
            )));
        }
    }
    // The welcome's `inbox` object (PROTOCOL §10). A store that cannot
    // answer now leaves it out rather than refusing the connection.
    let inbox = match &device {
        Some(d) => match node.inbox_state(&claims.sub, d).await {
            Ok(state) => state.and_then(|s| serde_json::to_value(s).ok()),
            Err(e) => {
                tracing::warn!(error = %e.message, "inbox state unavailable for the welcome");
                None
            }
        },
        None => None,
    };
    Ok(Accepted {
        accept: accept_key(key.as_bytes()),
        init: ClientInit {
            user: claims.sub,
            info: claims.info.map(|v| v.to_string()),
            channels: claims.channels,
            expires_at: claims.exp.unwrap_or(0),
            device,
            inbox,
        },
    })
}

/// The `device` query parameter (PROTOCOL §10): `[A-Za-z0-9_-]{1,64}`, once.
fn device_param(query: Option<&str>) -> Result<Option<String>, &'static str> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "device" {
            continue;
        }
        if found.is_some() {
            return Err("the `device` parameter is given twice");
        }
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err("the `device` parameter must be 1 to 64 of [A-Za-z0-9_-]");
        }
        found = Some(value.to_string());
    }
    Ok(found)
}

#[cfg(test)]
mod device_tests {
    use super::device_param;

    #[test]
    fn device_ids_are_checked() {
        assert_eq!(device_param(None), Ok(None));
        assert_eq!(device_param(Some("token=x")), Ok(None));
        assert_eq!(
            device_param(Some("token=x&device=phone_1-A")),
            Ok(Some("phone_1-A".into()))
        );
        for bad in ["device=", "device=a%20b", "device=a.b", "device=x&device=y"] {
            assert!(device_param(Some(bad)).is_err(), "{bad}");
        }
        assert!(device_param(Some(&format!("device={}", "a".repeat(65)))).is_err());
        assert!(device_param(Some(&format!("device={}", "a".repeat(64)))).is_ok());
    }
}
