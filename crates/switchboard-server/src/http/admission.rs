//! The checks every client connection passes before it is answered
//! (PROTOCOL §1), shared by `/ws` and `/sse`: draining → storm (handshakes
//! in progress, per-address rate) → origin → token → limits (and the inbox's
//! `device`). The refusal, when there is one, is the response to send.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use switchboard_core::ClientInit;
use switchboard_core::hub::AddError;

use super::origin::origin_allowed;
use super::storm::Refusal;
use super::{SharedState, error, unavailable};
use crate::auth::{AuthError, extract_token};

/// Admits a client: its identity once every check passed.
pub async fn admit(
    st: &SharedState,
    peer: Option<IpAddr>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<ClientInit, Box<Response>> {
    let node = &st.node;
    let reject = |reason: &'static str| node.metrics.reject(reason);
    if st.draining.load(Ordering::Acquire) {
        reject("draining");
        return Err(Box::new(unavailable(
            "unavailable",
            "the node is draining; connect elsewhere",
            1,
        )));
    }
    match st.storm.admit(peer) {
        Ok(()) => {}
        Err(Refusal::Busy { retry_after_s }) => {
            reject("busy");
            return Err(Box::new(unavailable(
                "unavailable",
                "too many handshakes in progress; retry later",
                retry_after_s,
            )));
        }
        Err(Refusal::AddressRate { retry_after_s }) => {
            reject("address_rate");
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many handshakes from this address",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            return Err(Box::new(r));
        }
    }
    if !origin_ok(st, headers) {
        reject("origin");
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "origin not allowed",
        )));
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
    Ok(ClientInit {
        user: claims.sub,
        info: claims.info.map(|v| v.to_string()),
        channels: claims.channels,
        expires_at: claims.exp.unwrap_or(0),
        device,
        inbox,
    })
}

/// The `device` query parameter (PROTOCOL §10): `[A-Za-z0-9_-]{1,64}`, once.
/// No `Origin`, or one the allowlist admits (`[ws] allowed_origins`).
pub(crate) fn origin_ok(st: &SharedState, headers: &HeaderMap) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match origins.next() {
        None => true,
        // Two `Origin` headers are not a well-formed request.
        Some(origin) => {
            origins.next().is_none()
                && origin
                    .to_str()
                    .is_ok_and(|o| origin_allowed(&st.cfg.ws.allowed_origins, o))
        }
    }
}

pub(crate) fn device_param(query: Option<&str>) -> Result<Option<String>, &'static str> {
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
