//! `/health`, `/ready`, `/metrics` and the development-only demo page.

use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use switchboard_protocol::ChannelName;

use super::{SharedState, error, json_response};
use crate::auth::{Claims, mint_hs256};
use crate::fds;

pub async fn health(State(st): State<SharedState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "connections": st.node.hub.connection_count(),
        "open_fds": fds::open_fds(),
        "fd_limit": fds::fd_limit(),
        "uptime_s": st.node.uptime().as_secs(),
    });
    json_response(StatusCode::OK, body.to_string())
}

pub async fn ready(State(st): State<SharedState>) -> Response {
    if st.draining.load(Ordering::Acquire) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

pub async fn metrics(State(st): State<SharedState>) -> Response {
    st.node.metrics.open_fds.set(fds::open_fds() as i64);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &st.registry).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not encode metrics",
        );
    }
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

const DEMO: &str = include_str!("../../assets/demo.html");

pub async fn demo_page() -> Html<&'static str> {
    Html(DEMO)
}

#[derive(Deserialize)]
pub struct DevTokenQuery {
    user: Option<String>,
}

/// Mints a one-hour token for the demo page. Exists only in development mode.
pub async fn dev_token(State(st): State<SharedState>, Query(q): Query<DevTokenQuery>) -> Response {
    let user = q.user.unwrap_or_default();
    if user.is_empty() || user.len() > 64 || ChannelName::personal(&user).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user must be 1-64 characters of A-Z a-z 0-9 _ - . @ = ,",
        );
    }
    let claims = Claims {
        sub: user.clone(),
        exp: Some(jsonwebtoken::get_current_timestamp() + 3600),
        channels: vec![],
        info: Some(serde_json::json!({ "name": user })),
    };
    match mint_hs256(&st.cfg.auth.hmac_secret, &claims) {
        Ok(token) => json_response(
            StatusCode::OK,
            serde_json::json!({ "token": token }).to_string(),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not mint a token",
        ),
    }
}
