//! The checks every client connection passes before it is answered
//! (PROTOCOL §1), shared by `/ws` and `/sse`: draining → origin → token →
//! limits. The refusal, when there is one, is the response to send.

use std::sync::atomic::Ordering;

use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use switchboard_core::ClientInit;
use switchboard_core::hub::AddError;

use super::origin::origin_allowed;
use super::{SharedState, error, unavailable};
use crate::auth::{AuthError, extract_token};

/// Admits a client: its identity once every check passed.
pub async fn admit(
    st: &SharedState,
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
    Ok(ClientInit {
        user: claims.sub,
        info: claims.info.map(|v| v.to_string()),
        channels: claims.channels,
        expires_at: claims.exp.unwrap_or(0),
    })
}
