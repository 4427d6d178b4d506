//! `/health`, `/ready`, `/metrics` and the development-only demo page.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use switchboard_protocol::ChannelName;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{AppState, SharedState, error, json_response};
use crate::auth::{Claims, mint_hs256};
use crate::fds;

/// The broker's health in `/metrics`: its probe's round trip, and whether
/// it is ok now.
pub struct BrokerMetrics {
    lag_seconds: Histogram,
    ok: Gauge,
}

impl BrokerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = BrokerMetrics {
            // 100 µs .. ~6.5 s.
            lag_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            ok: Gauge::default(),
        };
        let sb = registry.sub_registry_with_prefix("switchboard");
        sb.register(
            "broker_lag_seconds",
            "Round trip of this node's probe publication through the broker",
            m.lag_seconds.clone(),
        );
        sb.register(
            "broker_ok",
            "1 while the broker takes and delivers this node's publications",
            m.ok.clone(),
        );
        m
    }
}

/// Samples the broker's health every second into `/metrics` (the Redis
/// broker probes once a second, so each probe is observed about once).
pub async fn watch_broker(state: Weak<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(st) = state.upgrade() else { return };
        let h = st.node.broker_health();
        st.broker_metrics.ok.set(i64::from(h.ok));
        if let Some(lag) = h.lag {
            st.broker_metrics.lag_seconds.observe(lag.as_secs_f64());
        }
    }
}

pub async fn health(State(st): State<SharedState>) -> Response {
    let broker = st.node.broker_health();
    let body = serde_json::json!({
        "status": "ok",
        "connections": st.node.hub.connection_count(),
        "open_fds": fds::open_fds(),
        "fd_limit": fds::fd_limit(),
        "uptime_s": st.node.uptime().as_secs(),
        "broker": {
            "kind": st.cfg.broker.kind.as_str(),
            "ok": broker.ok,
            "lag_ms": broker.lag.map_or(0, |l| l.as_millis() as u64),
        },
    });
    json_response(StatusCode::OK, body.to_string())
}

/// 503 from the start of a stop (PROTOCOL §8 `ready_grace`), and while this node cannot deliver through its
/// broker (PROTOCOL §9): a load balancer then sends new clients elsewhere.
pub async fn ready(State(st): State<SharedState>) -> Response {
    if st.stop.begun() || st.draining.load(Ordering::Acquire) {
        json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else if !st.node.broker_health().ok {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"broker_unavailable"}"#,
        )
    } else {
        json_response(StatusCode::OK, r#"{"status":"ready"}"#)
    }
}

pub async fn metrics(State(st): State<SharedState>) -> Response {
    st.node.metrics.open_fds.set(fds::open_fds() as i64);
    st.broker_metrics
        .ok
        .set(i64::from(st.node.broker_health().ok));
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
