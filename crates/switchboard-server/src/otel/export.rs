//! The span queue between the publish path and the collector: the SDK hands
//! each finished span to [`ExportQueue::on_end`], which only tries to put it
//! in a bounded channel and counts it dropped when the channel is full, so a
//! slow or unreachable collector never holds up a publish. One task takes
//! the spans out in batches and exports them.

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

/// Finished spans waiting for export; past it they are dropped and counted.
pub const QUEUE_SPANS: usize = 2048;
/// Spans in one export request at most.
pub const BATCH_SPANS: usize = 512;
/// A batch that is not full leaves after this long.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The SDK's side of the queue.
#[derive(Debug)]
pub struct ExportQueue {
    spans: mpsc::Sender<SpanData>,
    dropped: Counter,
}

/// Asks the export task to send what it holds now (at shutdown).
#[derive(Debug, Clone)]
pub struct Flusher(mpsc::Sender<oneshot::Sender<()>>);

impl Flusher {
    /// Exports every span queued so far; gives up after `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.0.send(done).await.is_ok() {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }
}

impl ExportQueue {
    /// The queue (`capacity` spans), with its export task spawned on
    /// `runtime`. `dropped` counts spans lost to a full queue or a failed
    /// export.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        dropped: Counter,
        capacity: usize,
        runtime: &tokio::runtime::Handle,
    ) -> (ExportQueue, Flusher) {
        let (queue, spans) = ExportQueue::new(capacity, dropped.clone());
        let (flush, flushes) = mpsc::channel(1);
        runtime.spawn(run(exporter, spans, flushes, dropped));
        (queue, Flusher(flush))
    }

    fn new(capacity: usize, dropped: Counter) -> (ExportQueue, mpsc::Receiver<SpanData>) {
        let (spans, rx) = mpsc::channel(capacity);
        (ExportQueue { spans, dropped }, rx)
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Synchronous callers cannot wait on the export task; the server
        // flushes through `Flusher` at shutdown instead.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    dropped: Counter,
) {
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    let mut tick = tokio::time::interval(EXPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            span = spans.recv() => {
                let Some(span) = span else { break };
                batch.push(span);
                if batch.len() >= BATCH_SPANS {
                    export(&exporter, &mut batch, &dropped, &mut failing).await;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(&exporter, &mut batch, &dropped, &mut failing).await;
                }
            }
            Some(done) = flushes.recv() => {
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                    if batch.len() >= BATCH_SPANS {
                        export(&exporter, &mut batch, &dropped, &mut failing).await;
                    }
                }
                if !batch.is_empty() {
                    export(&exporter, &mut batch, &dropped, &mut failing).await;
                }
                let _ = done.send(());
            }
        }
    }
    if !batch.is_empty() {
        export(&exporter, &mut batch, &dropped, &mut failing).await;
    }
}

/// Sends `batch` (emptying it); a failure loses its spans, counted, and is
/// logged when exports start failing and when they work again, not per batch.
async fn export<E: SpanExporter>(
    exporter: &E,
    batch: &mut Vec<SpanData>,
    dropped: &Counter,
    failing: &mut bool,
) {
    let spans = std::mem::replace(batch, Vec::with_capacity(BATCH_SPANS));
    let n = spans.len() as u64;
    match exporter.export(spans).await {
        Ok(()) => {
            if std::mem::take(failing) {
                tracing::info!("otel: exporting spans works again");
            }
        }
        Err(e) => {
            dropped.inc_by(n);
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, "otel: exporting spans failed; they are dropped (switchboard_otel_dropped_spans_total) until the collector answers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    fn provider(queue: ExportQueue) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(queue)
            .build()
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        // Nobody takes spans out: the fifth and later find the queue full.
        let (queue, _spans) = ExportQueue::new(4, dropped.clone());
        let tracer = provider(queue).tracer("test");
        for _ in 0..7 {
            tracer.start("span").end();
        }
        assert_eq!(dropped.get(), 3);
    }

    #[derive(Debug)]
    struct Refusing;

    impl SpanExporter for Refusing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("collector away".into()))
        }
    }

    #[tokio::test]
    async fn a_failed_export_counts_its_spans_dropped() {
        let dropped = Counter::default();
        let (queue, flusher) = ExportQueue::start(
            Refusing,
            dropped.clone(),
            16,
            &tokio::runtime::Handle::current(),
        );
        let tracer = provider(queue).tracer("test");
        for _ in 0..3 {
            tracer.start("span").end();
        }
        flusher.flush(Duration::from_secs(30)).await;
        assert_eq!(dropped.get(), 3);
    }
}
