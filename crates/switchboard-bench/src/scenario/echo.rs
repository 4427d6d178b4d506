//! `echo`: K clients, each doing R round trips one after the other: it publishes a
//! message to the channel they all share and waits until it comes back to itself.
//!
//! That is the one round trip both kinds of server offer: Switchboard's client
//! `publish` to a channel the client subscribed to, and the peers' "a text frame is
//! broadcast to all". Every message therefore also reaches the other K-1 clients,
//! on both kinds alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_websockets::Message;

use super::{ConnectStats, Ctx, connect_client, cpu_between, wait_until};
use crate::clock;
use crate::conn::{Protocol, Ws};
use crate::frame::{Payload, ServerMsg, parse_peer, parse_server};
use crate::progress::Progress;
use crate::report::{Report, opt};
use crate::stats::{Latency, human_us, ratio};

#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Clients doing round trips at the same time.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub clients: usize,
    /// Round trips per client.
    #[arg(long, short = 'r', default_value_t = 200)]
    pub rounds: u64,
    /// The channel (Switchboard) the clients share.
    #[arg(long, default_value = "bench:echo")]
    pub channel: String,
}

pub async fn run(ctx: &Ctx, args: &EchoArgs) -> Result<Report> {
    let k = args.clients;
    let stats = Arc::new(ConnectStats::default());
    let gate = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let mut clients = Vec::with_capacity(k);
    for i in 0..k {
        let (ctx, stats, gate, channel) = (
            ctx.clone(),
            stats.clone(),
            gate.clone(),
            args.channel.clone(),
        );
        clients.push(tokio::spawn(async move {
            let id = ctx.client_id("e", i);
            connect_client(&ctx, i, &id, Some(&channel), &gate, &stats).await
        }));
    }
    let mut sockets = Vec::with_capacity(k);
    for (i, task) in clients.into_iter().enumerate() {
        if let Ok(Some(ws)) = task.await {
            sockets.push((i as u64, ws));
        }
    }
    wait_until(ctx.deadline, || stats.settled() >= k as u64).await;

    let latency = Arc::new(Mutex::new(Latency::new()));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("echo", sockets.len() as u64 * args.rounds, done.clone());
    let cpu_before = ctx.cpu();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets {
        let (ctx, latency, done, channel) = (
            ctx.clone(),
            latency.clone(),
            done.clone(),
            args.channel.clone(),
        );
        let rounds = args.rounds;
        tasks.push(tokio::spawn(async move {
            client(ws, i, rounds, &ctx, &channel, &latency, &done).await
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = ctx.cpu();
    progress.finish();

    let round_trips = done.load(Ordering::Acquire);
    let expected = k as u64 * args.rounds;
    let rtt = latency.lock().summary();
    let cpu = cpu_between(cpu_before, cpu_after);
    let cpu_s = cpu.server_s;
    let cpu_per_rt_us = cpu_s.and_then(|s| ratio(s * 1e6, round_trips as f64));
    let timed_out = ctx.timed_out();
    let ok = round_trips == expected && errors.is_empty() && stats.failed() == 0 && !timed_out;
    let json = json!({
        "scenario": "echo",
        "clients": k,
        "connected": stats.connected(),
        "connect_failed": stats.failed(),
        "rounds": args.rounds,
        "round_trips": round_trips,
        "expected": expected,
        "client_errors": errors.len(),
        "first_error": errors.first().cloned().or_else(|| stats.first_error.lock().clone()),
        "elapsed_s": elapsed,
        "round_trips_per_s": ratio(round_trips as f64, elapsed),
        "latency": rtt,
        "server_cpu_s": cpu_s,
        "generator_cpu_s": cpu.generator_s,
        "cpu_per_round_trip_us": cpu_per_rt_us,
        "timed_out": timed_out,
        "ok": ok,
    });
    let mut report = Report::new(json, ok);
    report.row("clients", format!("{} of {k}", stats.connected()));
    report.row("round trips", format!("{round_trips} of {expected}"));
    report.row("round trips/s", opt(ratio(round_trips as f64, elapsed), 0));
    report.row(
        "round-trip latency",
        format!(
            "p50 {}  p99 {}  max {}",
            human_us(rtt.p50_us),
            human_us(rtt.p99_us),
            human_us(rtt.max_us)
        ),
    );
    report.row(
        "server CPU/round trip",
        format!("{} µs", opt(cpu_per_rt_us, 1)),
    );
    if let Some(e) = errors.first() {
        report.row("first error", e.clone());
    }
    if timed_out {
        report.row("TIMED OUT", "the run deadline passed");
    }
    Ok(report)
}

async fn client(
    mut ws: Ws,
    me: u64,
    rounds: u64,
    ctx: &Ctx,
    channel: &str,
    latency: &Mutex<Latency>,
    done: &AtomicU64,
) -> Result<()> {
    for round in 0..rounds {
        if ctx.timed_out() {
            bail!("run deadline passed");
        }
        let sent = clock::now_ns();
        let payload = Payload::echo(me, round, sent);
        let text = match ctx.target.protocol {
            Protocol::Switchboard => {
                json!({"op": "publish", "channel": channel, "data": payload, "id": round + 10})
                    .to_string()
            }
            Protocol::Peer => payload.to_json(),
        };
        ws.send(Message::text(text)).await?;
        let wait = ctx.target.handshake_timeout;
        tokio::time::timeout(wait, wait_for_own(&mut ws, ctx.target.protocol, me, round))
            .await
            .map_err(|_| {
                anyhow!("client {me}: round {round} did not come back within {wait:?}")
            })??;
        latency
            .lock()
            .record_ns(clock::now_ns().saturating_sub(sent));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn wait_for_own(ws: &mut Ws, protocol: Protocol, me: u64, round: u64) -> Result<()> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection closed"))??;
        if msg.is_close() {
            bail!("closed by server: {:?}", msg.as_close());
        }
        let Some(text) = msg.as_text() else { continue };
        let payload = match protocol {
            Protocol::Peer => parse_peer(text),
            Protocol::Switchboard => match parse_server(text) {
                Some(ServerMsg::Pub { payload, .. }) => payload,
                Some(ServerMsg::Reply {
                    ok: false, error, ..
                }) => {
                    bail!("publish refused: {}", error.unwrap_or_default())
                }
                _ => None,
            },
        };
        if let Some(p) = payload
            && p.c == Some(me)
            && p.seq == Some(round)
        {
            return Ok(());
        }
    }
}
