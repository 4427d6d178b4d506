//! Spans of the publish path, for the server's OpenTelemetry exporter
//! (`[otel]`). They carry their own target, which the log output never
//! enables: with no exporter, every callsite here is disabled, and a publish
//! pays a cached interest check per span — no span is built, nothing is
//! allocated, no clock is read.
//!
//! `broker.publish` is opened by [`crate::Node::publish`] only inside a span
//! of the caller's (the HTTP API's `api.publish`); `hub.deliver` only while
//! such a publish is handing its publication to this node's subscribers,
//! which the memory broker does before `publish` returns. A publication that
//! arrives through Redis pub/sub carries no trace context, so its delivery
//! is not traced.

use std::time::Instant;

use switchboard_protocol::Publication;
use tracing::Span;
use tracing::field::Empty;

/// The `tracing` target of every span meant for the exporter.
pub const TARGET: &str = "switchboard::otel";

tokio::task_local! {
    /// When the traced publish running on this task reached the broker:
    /// what a delivery's `first_frame_us` counts from. Set only while a
    /// `broker.publish` span records.
    static PUBLISH_STARTED: Instant;
}

/// `n` as OpenTelemetry's integer attribute (an i64): `tracing-opentelemetry`
/// exports a `u64` field as text.
pub fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The `broker.publish` span for a publish to `channel`, or a disabled span
/// when nothing exports or the caller is not itself traced.
pub(crate) fn publish_span(broker: &'static str, channel: &str) -> Span {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::INFO) || Span::current().is_none() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "broker.publish",
        broker,
        channel,
        offset = Empty,
        "otel.status_code" = Empty,
    )
}

/// Runs a publish under `span`, remembering when it began for the
/// delivery span. A disabled span adds nothing.
pub(crate) async fn in_publish<F: Future>(span: &Span, publish: F) -> F::Output {
    use tracing::Instrument as _;
    if span.is_disabled() {
        return publish.await;
    }
    PUBLISH_STARTED
        .scope(Instant::now(), publish.instrument(span.clone()))
        .await
}

/// The `hub.deliver` span of `publication` when a traced publish on this
/// task is handing it over; a disabled span otherwise.
pub(crate) fn delivery_span(publication: &Publication) -> Span {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::INFO)
        || PUBLISH_STARTED.try_with(|_| ()).is_err()
    {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "hub.deliver",
        channel = publication.channel.as_str(),
        offset = int(publication.offset),
        subscribers = Empty,
        first_frame_us = Empty,
    )
}

/// Records what a delivery did on its span: how many subscribers got the
/// frame, and how long after the publish began the first one was queued.
pub(crate) fn record_delivery(span: &Span, subscribers: usize, first_queued: Option<Instant>) {
    if span.is_disabled() {
        return;
    }
    span.record("subscribers", int(subscribers));
    let started = PUBLISH_STARTED.try_with(|s| *s).ok();
    if let (Some(started), Some(first)) = (started, first_queued) {
        let us = first.saturating_duration_since(started).as_micros();
        span.record("first_frame_us", int(us));
    }
}
