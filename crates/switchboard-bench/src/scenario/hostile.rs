//! `hostile`: every attack of issue 10 at once against one server that also
//! holds N idle clients and serves a steady publisher and a watcher, for a
//! fixed time. Prints the server's RSS and CPU, the watcher's delivery loss
//! and `/health`'s slowest latency every `--sample` seconds: under attack all
//! of them must stay flat, and loss must stay 0.
//!
//! The server should run with `bench/switchboard-soak.toml` (a `bench`
//! namespace clients may publish in, a `hist` namespace that keeps history,
//! the default rate limit). The run stops by itself at `--duration`, or
//! early when the server's RSS passes `--max-rss-mib` (so a server without
//! the bounds cannot take the machine down).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use super::attack::{self, AttackStats};
use super::{ConnectStats, Ctx, connect_client, hold, sleep_bounded, wait_until};
use crate::clock;
use crate::conn::Protocol;
use crate::frame::{Payload, parse_pub};
use crate::http::ApiClient;
use crate::ledger::{Seen, SeqSet};
use crate::progress::Progress;
use crate::report::{Report, opt};

#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    /// Seconds the attacks last (the run adds the connect phase and a drain).
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
    /// Idle clients held meanwhile.
    #[arg(long, default_value_t = 5000)]
    pub idle: usize,
    /// Publications a second to the watched channel.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds between two sample lines.
    #[arg(long, default_value_t = 10.0)]
    pub sample: f64,
    /// Attackers of each connection-based kind (ping flood, fragments,
    /// never-reader, bad frames) and /api flood connections.
    #[arg(long, default_value_t = 4)]
    pub attackers: usize,
    /// Slowloris connections held open at once.
    #[arg(long, default_value_t = 200)]
    pub slowloris: usize,
    /// New history channels a second (spam through the API).
    #[arg(long, default_value_t = 200.0)]
    pub history_spam: f64,
    /// Size of the message sent as 1-byte fragments.
    #[arg(long, default_value_t = 60_000)]
    pub fragment_message: usize,
    /// Attacks to leave out, comma-separated (ping_flood, tiny_fragments,
    /// never_reader, history_spam, api_flood, slowloris, bad_frames): to see
    /// which one a bound is missing for.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Stop early when the server's RSS passes this (MiB).
    #[arg(long, default_value_t = 1024)]
    pub max_rss_mib: u64,
    /// Growth of RSS over the second half of the run that still counts as
    /// flat (MiB): the first half is allowed to fill caches and queues up to
    /// their bounds; after it, a bounded server stops growing.
    #[arg(long, default_value_t = 8)]
    pub max_rss_growth_mib: u64,
}

/// The channel the publisher publishes to and the watcher reads.
const WATCHED: &str = "bench:soak";
/// A channel only the never-reading attackers subscribe to, fed big
/// publications so that their queues fill within seconds.
const BULK: &str = "bench:bulk";

/// `/health` between two samples: the slowest answer and the probes that
/// got none within 10 s.
#[derive(Debug, Default)]
struct HealthWindow {
    max_ms: f64,
    timeouts: u64,
}

/// What the watcher saw.
struct Watch {
    seen: SeqSet,
    duplicates: u64,
    out_of_order: u64,
    last_offset: u64,
    closed: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &HostileArgs) -> Result<Report> {
    if ctx.target.protocol != Protocol::Switchboard {
        bail!("the hostile scenario speaks Switchboard only");
    }
    let Some(key) = ctx.target.api_key.clone() else {
        bail!("--api-key (SWITCHBOARD_API_KEY) is needed for the publisher");
    };
    let api = ApiClient::new(ctx.target.addr, &key);
    let duration = Duration::from_secs_f64(args.duration.max(1.0));
    let max_pubs = (args.rate.max(0.1) * (args.duration + 60.0)) as u64 + 16;

    // 1. The watcher and the idle crowd.
    let connect = Arc::new(ConnectStats::default());
    let gate = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let mut watcher_ws = connect_client(ctx, 0, "uwatcher", Some(WATCHED), &gate, &connect)
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the watcher could not connect: {}",
                connect.first_error.lock().clone().unwrap_or_default()
            )
        })?;
    let (stop_idle_tx, stop_idle) = watch::channel(false);
    let progress = Progress::start("idle clients", args.idle as u64, connect.connected.clone());
    let mut idle_tasks = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let (ctx, connect, gate, stop) = (
            ctx.clone(),
            connect.clone(),
            gate.clone(),
            stop_idle.clone(),
        );
        idle_tasks.push(tokio::spawn(async move {
            let id = ctx.client_id("idle", i);
            if let Some(ws) = connect_client(&ctx, i + 1, &id, None, &gate, &connect).await {
                hold(ws, stop, &connect).await;
            }
        }));
    }
    // The idle clients and the watcher.
    wait_until(ctx.deadline, || connect.settled() > args.idle as u64).await;
    progress.finish();
    let idle_connected = connect.connected().saturating_sub(1);

    // 2. The watcher reads everything on its own task.
    let watch_state = Arc::new(Mutex::new(Watch {
        seen: SeqSet::new(max_pubs),
        duplicates: 0,
        out_of_order: 0,
        last_offset: 0,
        closed: None,
    }));
    let (stop_tx, stop) = watch::channel(false);
    let watcher = {
        let state = watch_state.clone();
        // Stopped with the idle clients, after the drain: publications in
        // flight when the attacks stop are still counted.
        let mut stop = stop_idle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    msg = watcher_ws.next() => {
                        let text = match msg {
                            Some(Ok(m)) if m.is_close() => {
                                state.lock().closed = Some(format!("closed by the server: {:?}", m.as_close()));
                                return;
                            }
                            Some(Ok(m)) => match m.as_text() {
                                Some(t) => t.to_owned(),
                                None => continue,
                            },
                            Some(Err(e)) => {
                                state.lock().closed = Some(format!("error: {e}"));
                                return;
                            }
                            None => {
                                state.lock().closed = Some("connection ended".into());
                                return;
                            }
                        };
                        if let Some((payload, offset)) = parse_pub(&text, WATCHED) {
                            let mut w = state.lock();
                            if let Some(seq) = payload.seq
                                && w.seen.insert(seq) == Seen::Duplicate
                            {
                                w.duplicates += 1;
                            }
                            if let Some(o) = offset {
                                if o <= w.last_offset {
                                    w.out_of_order += 1;
                                }
                                w.last_offset = w.last_offset.max(o);
                            }
                        }
                    }
                }
            }
        })
    };

    // 3. The steady publisher: a publication is acknowledged once; one that
    // is refused (503) is not published and goes again with the same seq.
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (mut api, acked, refused, stop) =
            (api.fresh(), acked.clone(), refused.clone(), stop.clone());
        let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            while !*stop.borrow() && seq < max_pubs {
                tick.tick().await;
                let body = json!({"channel": WATCHED, "data": Payload::seq(seq, clock::now_ns())})
                    .to_string();
                match api.post_json("/api/publish", &body).await {
                    Ok(r) if r.status == 200 => {
                        seq += 1;
                        acked.store(seq, Ordering::Release);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // Big publications for the never-readers' channel.
    let bulk = {
        let (mut api, stop) = (api.fresh(), stop.clone());
        tokio::spawn(async move {
            let pad = "x".repeat(16 * 1024);
            let body = json!({"channel": BULK, "data": {"pad": pad}}).to_string();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !*stop.borrow() {
                tick.tick().await;
                let _ = api.post_json("/api/publish", &body).await;
            }
        })
    };

    // 4. The attackers.
    let stats = Arc::new(AttackStats::default());
    let kinds = [
        "ping_flood",
        "tiny_fragments",
        "never_reader",
        "history_spam",
        "api_flood",
        "slowloris",
        "bad_frames",
    ];
    let per_kind: Vec<Arc<AttackStats>> = kinds
        .iter()
        .map(|_| Arc::new(AttackStats::default()))
        .collect();
    for k in &args.skip {
        if !kinds.contains(&k.as_str()) {
            bail!("--skip {k}: no such attack (one of {})", kinds.join(", "));
        }
    }
    let on = |k: &str| !args.skip.iter().any(|s| s == k);
    let mut attackers = Vec::new();
    let base = args.idle + 10;
    for i in 0..args.attackers {
        let who = base + i;
        if on("ping_flood") {
            attackers.push(tokio::spawn(attack::ping_flood(
                ctx.clone(),
                who,
                stop.clone(),
                per_kind[0].clone(),
            )));
        }
        if on("tiny_fragments") {
            attackers.push(tokio::spawn(attack::tiny_fragments(
                ctx.clone(),
                who + 100,
                args.fragment_message,
                stop.clone(),
                per_kind[1].clone(),
            )));
        }
        if on("never_reader") {
            attackers.push(tokio::spawn(attack::never_reader(
                ctx.clone(),
                who + 200,
                vec![WATCHED.into(), BULK.into()],
                Duration::from_secs(60),
                stop.clone(),
                per_kind[2].clone(),
            )));
        }
        if on("history_spam") {
            attackers.push(tokio::spawn(attack::history_spam(
                api.fresh(),
                i,
                "hist".into(),
                args.history_spam / args.attackers.max(1) as f64,
                stop.clone(),
                per_kind[3].clone(),
            )));
        }
        if on("api_flood") {
            attackers.push(tokio::spawn(attack::api_flood(
                api.fresh(),
                i,
                stop.clone(),
                per_kind[4].clone(),
            )));
        }
        if on("bad_frames") {
            attackers.push(tokio::spawn(attack::bad_frames(
                ctx.clone(),
                who + 300,
                stop.clone(),
                per_kind[6].clone(),
            )));
        }
    }
    if on("slowloris") {
        for i in 0..args.slowloris {
            attackers.push(tokio::spawn(attack::slowloris(
                ctx.clone(),
                base + 400 + i,
                stop.clone(),
                per_kind[5].clone(),
            )));
        }
    }
    drop(stats);

    // 5. Samples until the end (or the RSS guard).
    eprintln!(
        "hostile: {idle_connected} idle clients, watcher on {WATCHED}; attacks for {:.0} s",
        duration.as_secs_f64()
    );
    eprintln!(
        "{:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>5}",
        "t_s", "rss_mib", "cpu_pct", "gen_pct", "acked", "seen", "lost", "health_ms", "h>10s"
    );
    let started = Instant::now();
    let end = (started + duration).min(ctx.deadline);
    let mut samples = Vec::new();
    let mut last_cpu = ctx.cpu();
    let mut last_t = Instant::now();
    let mut guard_tripped = None;
    // `/health` polled twice a second on its own task: each sample shows the
    // slowest answer since the last one, and how many took over 10 s.
    let health = Arc::new(Mutex::new(HealthWindow::default()));
    let prober = {
        let (api, health, stop) = (api.fresh(), health.clone(), stop.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                let ms = health_latency_ms(&api).await;
                {
                    let mut h = health.lock();
                    match ms {
                        Some(ms) => h.max_ms = h.max_ms.max(ms),
                        None => h.timeouts += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let step = Duration::from_secs_f64(args.sample.max(0.5));
    let mut next_sample = started + step;
    loop {
        // The RSS guard is checked four times a second, so a server without
        // its bounds is stopped before it takes the machine's memory.
        sleep_bounded(Duration::from_millis(250), end.min(next_sample)).await;
        let now = Instant::now();
        let rss_mib = ctx.memory().map(|m| m.rss_kib as f64 / 1024.0);
        let tripped = rss_mib.filter(|r| *r > args.max_rss_mib as f64);
        if now < next_sample && now < end && tripped.is_none() {
            continue;
        }
        next_sample += step;
        let cpu = ctx.cpu();
        let used = super::cpu_between(last_cpu, cpu);
        let interval_s = now.duration_since(last_t).as_secs_f64().max(1e-3);
        let cpu_pct = used.server_s.map(|s| 100.0 * s / interval_s);
        // The generator's own share: when it is near the machine's cores, the
        // attacks were limited by it, not by the server.
        let gen_pct = used.generator_s.map(|s| 100.0 * s / interval_s);
        last_cpu = cpu;
        last_t = now;
        let h = std::mem::take(&mut *health.lock());
        let acked_now = acked.load(Ordering::Acquire);
        let seen = watch_state.lock().seen.distinct();
        // In flight: what was acknowledged in the last second may still be
        // on its way; the final count after the drain is the real loss.
        let lost = acked_now.saturating_sub(seen);
        let t = started.elapsed().as_secs_f64();
        eprintln!(
            "{t:>6.0} {:>9} {:>8} {:>8} {acked_now:>8} {seen:>8} {lost:>6} {:>9} {:>5}",
            opt(rss_mib, 1),
            opt(cpu_pct, 0),
            opt(gen_pct, 0),
            opt((h.max_ms > 0.0).then_some(h.max_ms), 1),
            h.timeouts
        );
        samples.push(json!({
            "t_s": t, "rss_mib": rss_mib, "cpu_pct": cpu_pct, "generator_cpu_pct": gen_pct,
            "acked": acked_now, "seen": seen, "lost_so_far": lost,
            "health_max_ms": h.max_ms, "health_timeouts": h.timeouts,
        }));
        if let Some(r) = tripped {
            guard_tripped = Some(r);
            eprintln!("hostile: server RSS {r:.0} MiB passed --max-rss-mib; stopping early");
            break;
        }
        if now >= end {
            break;
        }
    }
    prober.abort();

    // 6. Stop the attacks and the publisher, give the last publications
    // time to arrive (a server that was starved catches up), count.
    let _ = stop_tx.send(true);
    for a in attackers {
        a.abort();
    }
    let _ = publisher.await;
    let _ = bulk.await;
    let final_acked = acked.load(Ordering::Acquire);
    let drained = wait_until(Instant::now() + Duration::from_secs(15), || {
        let w = watch_state.lock();
        w.closed.is_some() || w.seen.missing_of(0..final_acked) == 0
    })
    .await;
    let _ = stop_idle_tx.send(true);
    watcher.abort();
    for t in idle_tasks {
        let _ = t.await;
    }
    let (lost, duplicates, out_of_order, closed) = {
        let w = watch_state.lock();
        (
            w.seen.missing_of(0..final_acked),
            w.duplicates,
            w.out_of_order,
            w.closed.clone(),
        )
    };
    let idle_dropped = connect.dropped.load(Ordering::Acquire);

    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|s| s["rss_mib"].as_f64())
        .collect();
    let growth = match (rss.first(), rss.last()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let second_half = match (rss.get(rss.len() / 2), rss.last()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let flat = second_half.is_some_and(|g| g <= args.max_rss_growth_mib as f64);
    let health_timeouts: u64 = samples
        .iter()
        .filter_map(|s| s["health_timeouts"].as_u64())
        .sum();
    let ok = lost == 0
        && duplicates == 0
        && out_of_order == 0
        && closed.is_none()
        && idle_dropped == 0
        && guard_tripped.is_none()
        && health_timeouts == 0
        && flat
        && drained;

    let attacks: serde_json::Map<String, serde_json::Value> = kinds
        .iter()
        .zip(&per_kind)
        .map(|(k, s)| ((*k).to_owned(), s.snapshot()))
        .collect();
    let json = json!({
        "scenario": "hostile",
        "duration_s": started.elapsed().as_secs_f64(),
        "idle_connected": idle_connected,
        "idle_dropped": idle_dropped,
        "published": final_acked,
        "publish_refused": refused.load(Ordering::Relaxed),
        "lost": lost,
        "duplicated": duplicates,
        "out_of_order": out_of_order,
        "watcher_closed": closed,
        "rss_growth_mib": growth,
        "rss_growth_second_half_mib": second_half,
        "rss_guard_tripped_mib": guard_tripped,
        "health_timeouts": health_timeouts,
        "skipped": args.skip,
        "samples": samples,
        "attacks": attacks,
        "ok": ok,
    });
    let mut report = Report::new(json, ok);
    report.row(
        "idle clients",
        format!("{idle_connected} held, {idle_dropped} dropped by the server"),
    );
    report.row(
        "watched channel",
        format!(
            "{final_acked} published, {lost} lost, {duplicates} duplicated, {out_of_order} out of order"
        ),
    );
    report.row(
        "server RSS",
        format!(
            "{} MiB first sample -> {} MiB last ({} MiB growth, {} MiB in the second half)",
            opt(rss.first().copied(), 1),
            opt(rss.last().copied(), 1),
            opt(growth, 1),
            opt(second_half, 1)
        ),
    );
    let health_worst = samples
        .iter()
        .filter_map(|s| s["health_max_ms"].as_f64())
        .fold(0.0, f64::max);
    report.row(
        "/health",
        format!("slowest {health_worst:.1} ms, {health_timeouts} probes unanswered in 10 s"),
    );
    for (k, s) in kinds.iter().zip(&per_kind) {
        report.row(k, s.snapshot().to_string());
    }
    if let Some(c) = closed {
        report.row("WATCHER CLOSED", c);
    }
    if let Some(r) = guard_tripped {
        report.row("STOPPED EARLY", format!("server RSS {r:.0} MiB"));
    }
    Ok(report)
}

/// `GET /health` on a fresh connection, in milliseconds (`None` when it did
/// not answer within 10 s).
async fn health_latency_ms(api: &ApiClient) -> Option<f64> {
    let mut client = api.fresh();
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), client.get("/health")).await {
        Ok(Ok(r)) if r.status == 200 => Some(t.elapsed().as_secs_f64() * 1e3),
        _ => None,
    }
}
