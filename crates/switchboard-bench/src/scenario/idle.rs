//! `idle`: open N connections and keep them: handshake rate and latency, server CPU
//! per handshake, server memory per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::{ConnectStats, Ctx, connect_client, cpu_between, hold, sleep_bounded, wait_until};
use crate::conn;
use crate::progress::Progress;
use crate::report::{Report, opt};
use crate::stats::{human_us, ratio};

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to wait once all are open, before reading the server's memory.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Channel each Switchboard client subscribes to (none: only the personal channel).
    #[arg(long)]
    pub channel: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> Result<Report> {
    let n = args.connections;

    // One connection first, so what the server allocates once (lazy imports,
    // buffers, JIT) is not charged to the N that follow.
    let warm_id = ctx.client_id("warm", 0);
    if let Ok(ws) = conn::open(&ctx.target, 0, &conn::ws_uri(&ctx.target, 0, &warm_id)?).await {
        drop(ws);
    }
    sleep_bounded(Duration::from_millis(300), ctx.deadline).await;

    let mem_before = ctx.memory();
    let cpu_before = ctx.cpu();
    let stats = Arc::new(ConnectStats::default());
    let gate = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Progress::start("connect", n as u64, stats.connected.clone());

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (ctx, stats, gate, stop) = (ctx.clone(), stats.clone(), gate.clone(), stop_rx.clone());
        let channel = args.channel.clone();
        tasks.push(tokio::spawn(async move {
            let id = ctx.client_id("i", i);
            if let Some(ws) = connect_client(&ctx, i, &id, channel.as_deref(), &gate, &stats).await
            {
                hold(ws, stop, &stats).await;
            }
        }));
    }
    let all_settled = wait_until(ctx.deadline, || stats.settled() >= n as u64).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = ctx.cpu();
    progress.finish();

    sleep_bounded(Duration::from_secs_f64(args.settle.max(0.0)), ctx.deadline).await;
    let mem_after = ctx.memory();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // Every client has gone: what the server still holds over its baseline is
    // what it did not give back (allocator caches, or a leak).
    sleep_bounded(
        Duration::from_secs_f64(args.settle.max(0.0) + 1.0),
        ctx.deadline,
    )
    .await;
    let mem_left = ctx.memory();

    let connected = stats.connected() as f64;
    let failed = stats.failed();
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Acquire);
    let handshake = stats.handshake.lock().summary();
    let cpu = cpu_between(cpu_before, cpu_after);
    let cpu_s = cpu.server_s;
    let cpu_per_handshake_us = cpu_s.and_then(|s| ratio(s * 1e6, connected));
    let mem_per_conn_kib = match (mem_before, mem_after) {
        (Some(b), Some(a)) => ratio(a.rss_kib as f64 - b.rss_kib as f64, connected),
        _ => None,
    };
    let retained_kib = match (mem_before, mem_left) {
        (Some(b), Some(l)) => Some(l.rss_kib as f64 - b.rss_kib as f64),
        _ => None,
    };
    // Share of the growth under load still held once everyone left.
    let retained_pct = match (mem_before, mem_after, retained_kib) {
        (Some(b), Some(a), Some(r)) => {
            ratio(100.0 * r.max(0.0), a.rss_kib as f64 - b.rss_kib as f64)
        }
        _ => None,
    };
    let timed_out = !all_settled;
    let ok = failed == 0 && dropped == 0 && !timed_out;

    let json = json!({
        "scenario": "idle",
        "connections": n,
        "connected": stats.connected(),
        "failed": failed,
        "dropped": dropped,
        "first_error": stats.first_error.lock().clone(),
        "elapsed_s": elapsed,
        "handshakes_per_s": ratio(connected, elapsed),
        "handshake_latency": handshake,
        "server_cpu_s": cpu_s,
        "generator_cpu_s": cpu.generator_s,
        "cpu_per_handshake_us": cpu_per_handshake_us,
        "server_memory_before": mem_before,
        "server_memory_after": mem_after,
        "memory_per_connection_kib": mem_per_conn_kib,
        "server_memory_after_close": mem_left,
        "memory_retained_kib": retained_kib,
        "memory_retained_pct": retained_pct,
        "timed_out": timed_out,
        "ok": ok,
    });
    let mut report = Report::new(json, ok);
    report.row(
        "connections",
        format!(
            "{} of {n} ({failed} failed, {dropped} dropped)",
            stats.connected()
        ),
    );
    report.row("handshakes/s", opt(ratio(connected, elapsed), 0));
    report.row(
        "handshake latency",
        format!(
            "p50 {}  p99 {}  max {}",
            human_us(handshake.p50_us),
            human_us(handshake.p99_us),
            human_us(handshake.max_us)
        ),
    );
    report.row(
        "server CPU/handshake",
        format!("{} µs", opt(cpu_per_handshake_us, 1)),
    );
    report.row(
        "server memory",
        format!(
            "{} KiB/connection (RSS {} -> {} KiB)",
            opt(mem_per_conn_kib, 2),
            mem_before.map_or(0, |m| m.rss_kib),
            mem_after.map_or(0, |m| m.rss_kib)
        ),
    );
    report.row(
        "after all left",
        format!(
            "RSS {} KiB ({} KiB over the baseline, {}% of the growth)",
            mem_left.map_or(0, |m| m.rss_kib),
            opt(retained_kib, 0),
            opt(retained_pct, 0)
        ),
    );
    if let Some(e) = stats.first_error.lock().as_ref() {
        report.row("first error", e.clone());
    }
    if timed_out {
        report.row(
            "TIMED OUT",
            "the run deadline passed before every connection settled",
        );
    }
    Ok(report)
}
