//! The server API for backends (PROTOCOL §5). Every call needs the API key;
//! malformed bodies get 400 and change nothing.

// Handlers answer with a ready `Response` on every early exit; boxing it
// would only add an allocation to each error path.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_core::node::history_result;
use switchboard_core::trace::int;
use switchboard_core::{CommandError, Disconnect, HistoryQuery};
use switchboard_protocol::{ChannelName, ErrorCode, IdempotencyKey, StreamPosition};
use tracing::{Instrument as _, Span};

use super::{SharedState, error, json_response, unavailable};
use crate::auth::api_key_matches;

pub async fn require_api_key(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    if !api_key_matches(req.headers(), &st.cfg.api.key) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer <key>)",
        );
    }
    next.run(req).await
}

/// How many `/api/*` requests are served at once. Past it a request is
/// answered `503` + `Retry-After` before its body is read, so a flood of
/// backend calls holds at most `limit` bodies (each up to
/// `api.max_body_bytes`) and leaves the runtime to `/health`, `/ready`,
/// `/metrics` and the clients, which are not counted.
pub struct ApiGate {
    in_flight: AtomicUsize,
    limit: usize,
}

impl ApiGate {
    pub fn new(limit: usize) -> Self {
        ApiGate {
            in_flight: AtomicUsize::new(0),
            limit,
        }
    }

    /// A permit, held while one request is served; `None` past the limit.
    fn enter(self: &Arc<Self>) -> Option<ApiPermit> {
        let mut n = self.in_flight.load(Ordering::Relaxed);
        loop {
            if n >= self.limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ApiPermit(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// Released on drop, also when the caller goes away mid-request.
struct ApiPermit(Arc<ApiGate>);

impl Drop for ApiPermit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Runs after the key check, so callers without the key cannot use up the
/// backends' share.
pub async fn admit(State(gate): State<Arc<ApiGate>>, req: Request, next: Next) -> Response {
    let Some(_permit) = gate.enter() else {
        return unavailable(
            "unavailable",
            "too many API requests in progress; retry shortly",
            1,
        );
    };
    next.run(req).await
}

pub async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        "method not allowed on this endpoint",
    )
}

async fn read_json<T: for<'a> Deserialize<'a>>(body: Body, limit: usize) -> Result<T, Response> {
    let limited = http_body_util::Limited::new(body, limit);
    let bytes: Bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body is too large",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("body is not the expected JSON: {e}"),
        )
    })
}

fn parse_channel(name: &str) -> Result<ChannelName, Response> {
    ChannelName::parse(name)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))
}

pub(crate) fn command_error(e: CommandError) -> Response {
    match e.code {
        c if is_retryable(c) => unavailable(api_code(c), &e.message, 1),
        ErrorCode::Forbidden => error(StatusCode::FORBIDDEN, "forbidden", &e.message),
        ErrorCode::NotFound => error(StatusCode::NOT_FOUND, "not_found", &e.message),
        _ => error(StatusCode::BAD_REQUEST, e.code.as_str(), &e.message),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    /// A retry with the same key within `[api] idempotency_window` answers
    /// the first call's position and publishes nothing.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The body's `idempotency_key`, validated (`400 bad_request` otherwise).
fn idempotency_key(key: Option<&str>) -> Result<Option<IdempotencyKey>, Response> {
    key.map(IdempotencyKey::parse)
        .transpose()
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))
}

fn raw_bytes(v: Box<RawValue>) -> Result<Bytes, Response> {
    if !switchboard_protocol::is_portable_json(v.get()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`data` holds a number no JSON reader can represent",
        ));
    }
    let s: Box<str> = v.into();
    Ok(Bytes::from(s.into_boxed_bytes()))
}

fn position_json(pos: &StreamPosition) -> serde_json::Value {
    serde_json::json!({"offset": pos.offset, "epoch": pos.epoch})
}

/// `POST /api/publish`, traced as `api.publish` when `[otel]` is on.
pub async fn publish(State(st): State<SharedState>, req: Request) -> Response {
    let span = crate::otel::publish_span(req.headers());
    let response = publish_one(&st, req, &span).instrument(span.clone()).await;
    crate::otel::record_status(&span, response.status());
    response
}

async fn publish_one(st: &SharedState, req: Request, span: &Span) -> Response {
    let body: PublishBody = match read_json(req.into_body(), st.cfg.api.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let channel = match parse_channel(&body.channel) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = match idempotency_key(body.idempotency_key.as_deref()) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let data = match raw_bytes(body.data) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !span.is_disabled() {
        span.record("channel", channel.as_str());
        span.record("namespace", channel.namespace());
        span.record("bytes", int(data.len()));
        span.record("idempotent", key.is_some());
    }
    match st.node.publish(&channel, data, None, key).await {
        Ok(pos) => {
            span.record("offset", int(pos.offset));
            json_response(StatusCode::OK, position_json(&pos).to_string())
        }
        Err(e) => command_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    /// Applies to each channel on its own: a retry publishes only to the
    /// channels the key has not been published to within the window.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Publishes to every channel, each on its own: one channel's failure does
/// not stop the others, and the answer says channel by channel what was
/// published, so a caller retries only what failed (PROTOCOL §5 plus the
/// partial answer in ARCHITECTURE.md "Departures"). Every name is checked
/// before anything is published.
pub async fn broadcast(State(st): State<SharedState>, req: Request) -> Response {
    let span = crate::otel::broadcast_span(req.headers());
    let response = broadcast_all(&st, req, &span)
        .instrument(span.clone())
        .await;
    crate::otel::record_status(&span, response.status());
    response
}

async fn broadcast_all(st: &SharedState, req: Request, span: &Span) -> Response {
    let body: BroadcastBody = match read_json(req.into_body(), st.cfg.api.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut channels = Vec::with_capacity(body.channels.len());
    for c in &body.channels {
        match parse_channel(c) {
            Ok(c) => channels.push(c),
            Err(r) => return r,
        }
    }
    let key = match idempotency_key(body.idempotency_key.as_deref()) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let data = match raw_bytes(body.data) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if !span.is_disabled() {
        span.record("channels", int(channels.len()));
        span.record("bytes", int(data.len()));
        span.record("idempotent", key.is_some());
    }
    let mut results = Vec::with_capacity(channels.len());
    let mut failed: Vec<CommandError> = Vec::new();
    for channel in channels {
        match st
            .node
            .publish(&channel, data.clone(), None, key.clone())
            .await
        {
            Ok(pos) => results.push(serde_json::json!({
                "channel": channel.as_str(), "offset": pos.offset, "epoch": pos.epoch
            })),
            Err(e) => {
                results.push(serde_json::json!({
                    "channel": channel.as_str(),
                    "error": {"code": api_code(e.code), "message": &e.message},
                }));
                failed.push(e);
            }
        }
    }
    let total = results.len();
    span.record("failed", int(failed.len()));
    let Some(first) = failed.first() else {
        return json_response(
            StatusCode::OK,
            serde_json::json!({ "results": results }).to_string(),
        );
    };
    // Some channel failed: the status and `error` are those of a failure
    // (a retryable one first, so that callers that read only the status
    // retry), and `results` says which channels were published.
    let retryable = failed.iter().find(|e| is_retryable(e.code));
    let worst = retryable.unwrap_or(first);
    let message = format!(
        "{} of {total} channels not published (see results): {}",
        failed.len(),
        worst.message
    );
    let mut r = command_error(CommandError::new(worst.code, message.clone()));
    let body = serde_json::json!({
        "error": {"code": api_code(worst.code), "message": message},
        "results": results,
    });
    *r.body_mut() = Body::from(body.to_string());
    r
}

fn is_retryable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Internal | ErrorCode::Unavailable)
}

/// The `code` an API error carries for a command error (as [`command_error`]).
fn api_code(code: ErrorCode) -> &'static str {
    if is_retryable(code) {
        "unavailable"
    } else {
        code.as_str()
    }
}

fn path_channel(path: Result<Path<String>, PathRejection>) -> Result<ChannelName, Response> {
    match path {
        Ok(Path(channel)) => parse_channel(&channel),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &e.body_text(),
        )),
    }
}

pub async fn presence(
    State(st): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let channel = match path_channel(path) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match st.node.presence(&channel).await {
        Ok(clients) => json_response(
            StatusCode::OK,
            serde_json::json!({ "clients": clients }).to_string(),
        ),
        Err(e) => command_error(e),
    }
}

/// Users connected to any node (PROTOCOL §9).
pub async fn online(State(st): State<SharedState>) -> Response {
    match st.node.online().await {
        Ok(users) => json_response(
            StatusCode::OK,
            serde_json::json!({ "count": users.len(), "users": users }).to_string(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "online users read failed");
            unavailable("unavailable", "presence store unavailable, retry", 1)
        }
    }
}

#[derive(Deserialize)]
pub struct HistoryParams {
    since_offset: Option<String>,
    epoch: Option<String>,
    limit: Option<String>,
}

pub async fn history(
    State(st): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let channel = match path_channel(path) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "bad_request", m);
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => return bad("limit must be a whole number"),
    };
    let since = match (q.since_offset.as_deref(), q.epoch) {
        (None, _) => None,
        (Some(o), epoch) => match o.parse::<u64>() {
            Ok(offset) => Some(StreamPosition {
                offset,
                epoch: epoch.unwrap_or_default(),
            }),
            Err(_) => return bad("since_offset must be a whole number"),
        },
    };
    match st
        .node
        .history(&channel, HistoryQuery { since, limit })
        .await
    {
        Ok(read) => json_response(StatusCode::OK, history_result(&read)),
        Err(e) => command_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    user: String,
}

pub async fn disconnect(State(st): State<SharedState>, req: Request) -> Response {
    let body: DisconnectBody = match read_json(req.into_body(), st.cfg.api.max_body_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Every node closes the user's connections; the count is of all nodes.
    match st
        .node
        .disconnect_everywhere(&body.user, Disconnect::KICKED)
        .await
    {
        Ok(n) => json_response(
            StatusCode::OK,
            serde_json::json!({ "disconnected": n }).to_string(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "disconnect on other nodes failed");
            unavailable(
                "unavailable",
                "the broker could not reach the other nodes, retry",
                1,
            )
        }
    }
}

pub async fn info(State(st): State<SharedState>) -> Response {
    let node = &st.node;
    match st.cluster.nodes(node).await {
        None => {}
        Some(Ok(nodes)) => {
            return json_response(
                StatusCode::OK,
                serde_json::json!({ "nodes": nodes }).to_string(),
            );
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "node list read failed");
            return unavailable("unavailable", "node list unavailable, retry", 1);
        }
    }
    let body = serde_json::json!({
        "nodes": [{
            "name": node.name(),
            "connections": node.hub.connection_count(),
            "subscriptions": node.hub.subscription_count(),
            "channels": node.hub.channel_count(),
            "users": node.hub.users().len(),
            "uptime_s": node.uptime().as_secs(),
        }]
    });
    json_response(StatusCode::OK, body.to_string())
}
