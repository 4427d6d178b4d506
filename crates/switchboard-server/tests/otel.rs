//! OpenTelemetry traces (`[otel]`): the binary exports the API path's spans
//! over OTLP/HTTP to a collector this test runs on port 0 — the receiving
//! end, decoding each request with the OTLP protobuf types — and sends
//! nothing at all when `[otel]` is off.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use common::proc::{BIN, ServerProcess, base_config};
use common::{API_KEY, Client, SECRET, http, token};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use prost::Message as _;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// One span as the collector got it, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

#[derive(Default)]
struct Received {
    requests: Mutex<usize>,
    spans: Mutex<Vec<Got>>,
    content_types: Mutex<Vec<String>>,
}

/// A minimal OTLP/HTTP trace receiver on a free port.
async fn collector() -> (SocketAddr, Arc<Received>) {
    let got = Arc::new(Received::default());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, got)
}

async fn receive(
    State(got): State<Arc<Received>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    *got.requests.lock() += 1;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    got.content_types.lock().push(content_type);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (
            http::StatusCode::BAD_REQUEST,
            "not an ExportTraceServiceRequest",
        )
            .into_response();
    };
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| string_of(&r.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.spans.lock().push(Got {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    (
        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

fn value_of<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    match value_of(attributes, key)? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_of(span: &Span, key: &str) -> Option<i64> {
    match value_of(&span.attributes, key)? {
        AnyValue::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn bool_of(span: &Span, key: &str) -> Option<bool> {
    match value_of(&span.attributes, key)? {
        AnyValue::BoolValue(b) => Some(*b),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits (20 s at most) until the collector holds spans that `done` accepts.
async fn spans_until(got: &Received, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = got.spans.lock().clone();
        if done(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans not exported within 20 s; got {:?}",
            spans.iter().map(|g| &g.span.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|g| g.span.name == name).collect()
}

fn api_headers(traceparent: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![("Authorization", format!("Bearer {API_KEY}"))];
    if let Some(tp) = traceparent {
        h.push(("traceparent", tp.to_string()));
    }
    h
}

async fn post(addr: SocketAddr, path: &str, traceparent: Option<&str>, body: &str) -> u16 {
    let headers = api_headers(traceparent);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http(addr, "POST", path, &headers, Some(body)).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.status
}

/// SIGTERM, then the exit (a graceful stop flushes queued spans).
fn stop(mut server: ServerProcess) {
    let pid = server.pid().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_traced_from_the_api_through_the_broker_to_its_first_delivery() {
    let (collector, got) = collector().await;
    let config = format!(
        "{}\n[otel]\nendpoint = \"http://{collector}\"\nservice_name = \"switchboard-test\"\n",
        base_config()
    );
    let server = ServerProcess::start(&config, &[]);
    let mut alice = Client::connect(server.addr, &token("alice", 3600, &[])).await;
    alice.subscribe("chat:room").await;

    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let body = r#"{"channel":"chat:room","data":{"n":1}}"#;
    post(server.addr, "/api/publish", Some(&traceparent), body).await;
    let delivered = alice.recv_type("pub").await;
    assert_eq!(delivered["offset"], 1);

    let spans = spans_until(&got, |s| {
        ["api.publish", "broker.publish", "hub.deliver"]
            .iter()
            .all(|n| !named(s, n).is_empty())
    })
    .await;
    let api = named(&spans, "api.publish")[0];
    let broker = named(&spans, "broker.publish")[0];
    let deliver = named(&spans, "hub.deliver")[0];
    for g in [api, broker, deliver] {
        assert_eq!(
            hex(&g.span.trace_id),
            TRACE_ID,
            "{}: the caller's trace",
            g.span.name
        );
        assert_eq!(g.service, "switchboard-test");
    }
    // The caller's span → api.publish → broker.publish → hub.deliver.
    assert_eq!(hex(&api.span.parent_span_id), CALLER_SPAN);
    assert_eq!(broker.span.parent_span_id, api.span.span_id);
    assert_eq!(deliver.span.parent_span_id, broker.span.span_id);

    assert_eq!(api.span.kind, SpanKind::Server as i32);
    assert_eq!(
        string_of(&api.span.attributes, "channel").as_deref(),
        Some("chat:room")
    );
    assert_eq!(
        string_of(&api.span.attributes, "namespace").as_deref(),
        Some("chat")
    );
    assert_eq!(int_of(&api.span, "bytes"), Some(r#"{"n":1}"#.len() as i64));
    assert_eq!(bool_of(&api.span, "idempotent"), Some(false));
    assert_eq!(int_of(&api.span, "offset"), Some(1));
    assert_eq!(int_of(&api.span, "http.response.status_code"), Some(200));

    assert_eq!(
        string_of(&broker.span.attributes, "broker").as_deref(),
        Some("memory")
    );
    assert_eq!(int_of(&broker.span, "offset"), Some(1));

    assert_eq!(int_of(&deliver.span, "subscribers"), Some(1));
    assert_eq!(int_of(&deliver.span, "offset"), Some(1));
    let first_frame = int_of(&deliver.span, "first_frame_us").expect("first_frame_us");
    let broker_us = (broker.span.end_time_unix_nano - broker.span.start_time_unix_nano) / 1000;
    // Queued within the broker call (the memory broker delivers before it
    // answers); 1 ms of slack for the span clock being another clock.
    assert!(
        (0..=broker_us as i64 + 1_000).contains(&first_frame),
        "the first frame is queued within the broker call: {first_frame} µs of {broker_us}"
    );
    assert!(
        got.content_types
            .lock()
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "OTLP/HTTP with protobuf: {:?}",
        got.content_types.lock()
    );

    // A broadcast without `traceparent`: a trace of its own, one
    // broker.publish per channel under api.broadcast.
    let body = r#"{"channels":["chat:a","chat:b"],"data":{},"idempotency_key":"k-1"}"#;
    post(server.addr, "/api/broadcast", None, body).await;
    let spans = spans_until(&got, |s| {
        let Some(b) = named(s, "api.broadcast")
            .first()
            .map(|g| g.span.span_id.clone())
        else {
            return false;
        };
        s.iter()
            .filter(|g| g.span.name == "broker.publish" && g.span.parent_span_id == b)
            .count()
            == 2
    })
    .await;
    let broadcast = named(&spans, "api.broadcast")[0];
    assert!(broadcast.span.parent_span_id.is_empty(), "a root span");
    assert_ne!(hex(&broadcast.span.trace_id), TRACE_ID);
    assert_eq!(int_of(&broadcast.span, "channels"), Some(2));
    assert_eq!(bool_of(&broadcast.span, "idempotent"), Some(true));
    assert_eq!(int_of(&broadcast.span, "failed"), Some(0));
    let mut channels: Vec<String> = spans
        .iter()
        .filter(|g| g.span.parent_span_id == broadcast.span.span_id)
        .inspect(|g| assert_eq!(g.span.trace_id, broadcast.span.trace_id))
        .filter_map(|g| string_of(&g.span.attributes, "channel"))
        .collect();
    channels.sort();
    assert_eq!(channels, ["chat:a", "chat:b"]);
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_otel_off_nothing_is_sent_even_with_the_standard_otlp_variables() {
    let (collector, got) = collector().await;
    let endpoint = format!("http://{collector}");
    // The SDK's own variables do not turn tracing on: only `[otel]` does.
    let server = ServerProcess::start(
        &base_config(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    );
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    for n in 0..3 {
        let body = format!(r#"{{"channel":"chat:room","data":{{"n":{n}}}}}"#);
        post(server.addr, "/api/publish", Some(&traceparent), &body).await;
    }
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await;
    assert!(
        !metrics.body.contains("switchboard_otel"),
        "{}",
        metrics.body
    );
    // A graceful stop would flush any queued span: none may arrive.
    stop(server);
    assert_eq!(
        *got.requests.lock(),
        0,
        "nothing is exported with [otel] off"
    );
}

#[test]
fn check_config_refuses_a_bad_otel_endpoint_naming_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("otel.toml");
    let check = |toml: &str| {
        std::fs::write(&path, toml).expect("write");
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .env_clear()
            .env("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET)
            .env("SWITCHBOARD_API_KEY", API_KEY)
            .output()
            .expect("run check-config");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("[otel]\nendpoint = \"localhost:4318\"\n");
    assert!(!ok);
    assert!(
        err.contains("otel.endpoint") && err.contains("http://"),
        "{err}"
    );
    let (ok, err) = check("[otel]\nendpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2.0\n");
    assert!(!ok);
    assert!(err.contains("otel.sample_ratio"), "{err}");
    let (ok, err) = check("[otel]\nendpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.5\n");
    assert!(ok, "{err}");
}
