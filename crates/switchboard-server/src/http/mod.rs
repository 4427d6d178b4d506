//! The HTTP side: one router for `/ws`, `/sse`, `/api/*`, the operations
//! endpoints, the JS SDK under `/sdk/` and, in development mode only, the demo
//! page and its token endpoint.

pub mod admin;
pub mod admission;
pub mod api;
pub mod front;
pub mod inbox;
pub mod ops;
pub mod origin;
pub mod sdk;
pub mod storm;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use switchboard_core::Node;
use switchboard_protocol::ChannelName;

use crate::auth::Verifier;
use crate::config::Config;

/// What every handler shares.
pub struct AppState {
    pub node: Arc<Node>,
    pub cfg: Config,
    pub verifier: Verifier,
    pub text_channel: Option<ChannelName>,
    /// Set once the drain began: `/ws` and `/sse` refuse.
    pub draining: AtomicBool,
    /// A stop's progress: `/ready` answers 503 from its start.
    pub stop: crate::shutdown::Stop,
    /// Handshakes in progress and per-address handshake rates.
    pub storm: storm::Storm,
    /// WebSocket transports still running (a drain waits for them).
    pub live_transports: AtomicUsize,
    /// Development mode: the demo page and `/dev/token` exist.
    pub dev: bool,
    pub registry: prometheus_client::registry::Registry,
    /// The gateway's nodes (`/api/info`).
    pub cluster: crate::backends::Cluster,
    pub broker_metrics: ops::BrokerMetrics,
}

pub type SharedState = Arc<AppState>;

/// `{"error": {"code", "message"}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json_response(status, body.to_string().into_bytes())
}

/// A 503 with `Retry-After` (whole seconds).
pub fn unavailable(code: &str, message: &str, retry_after_s: u32) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    r
}

pub fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub fn router(state: SharedState) -> Router {
    let gate = Arc::new(api::ApiGate::new(state.cfg.api.max_concurrent_requests));
    // Layers run last-added first: the key check, then the gate.
    let api = Router::new()
        .route("/publish", post(api::publish))
        .route("/broadcast", post(api::broadcast))
        .route("/presence/{channel}", get(api::presence))
        .route("/online", get(api::online))
        .route("/history/{channel}", get(api::history))
        .route("/disconnect", post(api::disconnect))
        .route("/info", get(api::info))
        .route("/inbox/{user}", get(inbox::report))
        .merge(admin::api_routes(&state.cfg.admin))
        .fallback(not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(gate, api::admit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_api_key,
        ));
    let mut r = Router::new()
        .route("/ws", get(ws::upgrade).fallback(ws::upgrade))
        .route("/sse", get(crate::sse::open))
        .route("/sse/ack", post(crate::sse::ack::ack))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/sdk/{file}", get(sdk::file))
        .nest("/api", api)
        .merge(admin::page_routes(&state.cfg.admin));
    if state.dev {
        r = r
            .route("/", get(ops::demo_page))
            .route("/dev/token", get(ops::dev_token));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}
