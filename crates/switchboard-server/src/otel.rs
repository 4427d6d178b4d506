//! OpenTelemetry traces of the API path (`[otel]`), exported over OTLP/HTTP
//! in protobuf. Spans are `tracing` spans with the target
//! [`switchboard_core::trace::TARGET`]; only the layer built here enables
//! that target, so with `[otel]` off every one of them is disabled at its
//! callsite (no span is built, nothing allocated) and no exporter exists.
//!
//! A trace: `api.publish` (or `api.broadcast`), opened by the HTTP handler
//! under the caller's W3C `traceparent` when it sends one; its child
//! `broker.publish` (per channel), opened by the node around the broker
//! call; under that `hub.deliver`, the hand-over to this node's subscribers
//! (the memory broker delivers before it answers). Finished spans go into a
//! bounded queue (`otel/export.rs`) and out in batches; a full queue
//! or a failed export drops spans and counts them in
//! `switchboard_otel_dropped_spans_total`, never holding up a publish.

mod export;

use std::sync::LazyLock;
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use switchboard_core::trace::TARGET;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtelConfig;
pub use export::Flusher;

/// How long one export request may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans lost to a full queue or a failed export, since the start.
static DROPPED_SPANS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Adds `switchboard_otel_dropped_spans_total` to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(
        "switchboard_otel_dropped_spans",
        "Spans not exported: the export queue was full or the collector failed",
        DROPPED_SPANS.clone(),
    );
}

/// The exporter of a running server.
pub struct Otel {
    provider: SdkTracerProvider,
    flusher: Flusher,
}

impl Otel {
    /// Builds the OTLP/HTTP exporter for `cfg.endpoint` and its export task
    /// on `runtime`. Nothing is sent until spans end.
    pub fn start(cfg: &OtelConfig, runtime: &tokio::runtime::Handle) -> Result<Otel, String> {
        let client =
            opentelemetry_http::hyper::HyperClient::new(connector()?, EXPORT_TIMEOUT, None);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_url())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("otel.endpoint: cannot build the exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let (queue, flusher) = export::ExportQueue::start(
            exporter,
            DROPPED_SPANS.clone(),
            export::QUEUE_SPANS,
            runtime,
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Otel { provider, flusher })
    }

    /// The `tracing` layer that turns the API path's spans into
    /// OpenTelemetry spans (and nothing else: logs stay logs).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("switchboard"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            // No other OpenTelemetry instrumentation runs in the process:
            // entering a span (each poll of an instrumented future) need
            // not make its context current.
            .with_context_activation(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.target() == TARGET
            }))
    }

    /// What exports at shutdown: see [`Flusher::flush`].
    pub fn flusher(&self) -> Flusher {
        self.flusher.clone()
    }
}

/// http:// or https:// (the system's trusted roots, the workspace's
/// aws-lc-rs provider).
fn connector()
-> Result<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, String>
{
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("otel.endpoint: TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(EXPORT_TIMEOUT));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// `api.publish`, a server span, child of the request's `traceparent` when
/// it has a valid one. Disabled (and free) when nothing exports.
pub fn publish_span(headers: &HeaderMap) -> Span {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::INFO) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "api.publish",
        "otel.kind" = "server",
        channel = Empty,
        namespace = Empty,
        bytes = Empty,
        idempotent = Empty,
        offset = Empty,
        "http.response.status_code" = Empty,
        "otel.status_code" = Empty,
    );
    adopt_parent(&span, headers);
    span
}

/// `api.broadcast`, as [`publish_span`]; one `broker.publish` per channel
/// under it.
pub fn broadcast_span(headers: &HeaderMap) -> Span {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::INFO) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "api.broadcast",
        "otel.kind" = "server",
        channels = Empty,
        bytes = Empty,
        idempotent = Empty,
        failed = Empty,
        "http.response.status_code" = Empty,
        "otel.status_code" = Empty,
    );
    adopt_parent(&span, headers);
    span
}

/// The answer's status on an API span; a 5xx marks it failed (a 4xx is the
/// caller's error, not the server's).
pub fn record_status(span: &Span, status: http::StatusCode) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Makes `span` a child of the W3C `traceparent` (and `tracestate`) of
/// `headers`; a missing or malformed header leaves it a root.
fn adopt_parent(span: &Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_remote() {
        let _ = span.set_parent(cx);
    }
}
