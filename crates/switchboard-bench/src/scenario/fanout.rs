//! `fanout`: N subscribers on one channel, M publications with at most W in flight
//! (or at a given rate): fan-out latency, deliveries/s, server CPU per delivery,
//! and every delivery accounted for (lost and duplicated must be 0).
//!
//! A publication is in flight from the moment it is sent until every subscriber
//! has it. Before measuring, warm-up publications are sent until every subscriber
//! has seen one (the peers register a connection only after the upgrade answer is
//! out), then one last warm-up that every subscriber must see, so the measured
//! phase starts with nothing in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_websockets::Message;

use super::{ConnectStats, Ctx, connect_client, cpu_between, wait_until};
use crate::clock;
use crate::conn::{Protocol, Ws};
use crate::frame::{Payload, parse_peer, parse_pub};
use crate::http::ApiClient;
use crate::ledger::{InFlight, OffsetTrack, Seen, SeqSet, Tally, totals};
use crate::progress::Progress;
use crate::report::{Report, opt};
use crate::stats::{Latency, human_us, ratio};

/// The warm-up number of the last warm-up publication.
const FINAL_WARM: u64 = 1_000_000;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscribers.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub subscribers: usize,
    /// Publications.
    #[arg(long, short = 'm', default_value_t = 200)]
    pub publications: u64,
    /// At most this many publications in flight (0: no limit).
    #[arg(long, short = 'w', default_value_t = 1)]
    pub window: usize,
    /// Publications per second (default: as fast as the window allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Give up after this many seconds in which nothing was delivered or sent.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// The channel (Switchboard) subscribed and published to.
    #[arg(long, default_value = "bench:all")]
    pub channel: String,
}

struct Shared {
    protocol: Protocol,
    channel: String,
    flight: InFlight,
    /// Free slots of the publish window; `None` for no limit.
    window: Option<Semaphore>,
    latency: Mutex<Latency>,
    /// First receipts of measured publications, over all subscribers.
    delivered: Arc<AtomicU64>,
    /// When the latest first receipt happened (clock ns).
    last_delivery_ns: AtomicU64,
    /// Subscribers that have seen any warm-up / the final warm-up.
    warm: AtomicU64,
    warm_final: AtomicU64,
    /// Publications every subscriber has.
    completed: AtomicU64,
    all_done: Notify,
    publications: u64,
    /// Publications the server accepted (HTTP 200, or written to the peer).
    published: Mutex<SeqSet>,
    accepted: AtomicU64,
    publish_errors: AtomicU64,
    first_publish_error: Mutex<Option<String>>,
    /// Publications handed to the server so far (accepted or not).
    sent: AtomicU64,
}

impl Shared {
    fn release_slot(&self) {
        if let Some(window) = &self.window {
            window.add_permits(1);
        }
    }

    async fn take_slot(&self) {
        if let Some(window) = &self.window
            && let Ok(permit) = window.acquire().await
        {
            permit.forget();
        }
    }

    fn publish_failed(&self, seq: u64, error: String) {
        self.publish_errors.fetch_add(1, Ordering::AcqRel);
        self.first_publish_error
            .lock()
            .get_or_insert(format!("publication {seq}: {error}"));
        // It will never be delivered: give its slot back.
        self.release_slot();
    }
}

/// What a subscriber hands back at the end.
struct SubscriberEnd {
    tally: Tally,
    seen: SeqSet,
    dropped: bool,
}

pub async fn run(ctx: &Ctx, args: &FanoutArgs) -> Result<Report> {
    let n = args.subscribers;
    let m = args.publications;
    if n == 0 || m == 0 {
        bail!("fanout needs at least one subscriber and one publication");
    }
    let shared = Arc::new(Shared {
        protocol: ctx.target.protocol,
        channel: args.channel.clone(),
        flight: InFlight::new(usize::try_from(m)?, u32::try_from(n)?),
        window: (args.window > 0).then(|| Semaphore::new(args.window)),
        latency: Mutex::new(Latency::new()),
        delivered: Arc::new(AtomicU64::new(0)),
        last_delivery_ns: AtomicU64::new(0),
        warm: AtomicU64::new(0),
        warm_final: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        all_done: Notify::new(),
        publications: m,
        published: Mutex::new(SeqSet::new(m)),
        accepted: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        first_publish_error: Mutex::new(None),
        sent: AtomicU64::new(0),
    });

    // Subscribers.
    let stats = Arc::new(ConnectStats::default());
    let gate = Arc::new(Semaphore::new(ctx.connect_concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Progress::start("subscribe", n as u64, stats.connected.clone());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (ctx, stats, gate, shared, stop) = (
            ctx.clone(),
            stats.clone(),
            gate.clone(),
            shared.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = ctx.client_id("s", i);
            let ws = connect_client(&ctx, i, &id, Some(&shared.channel), &gate, &stats).await?;
            Some(subscriber(ws, &shared, stop).await)
        }));
    }
    wait_until(ctx.deadline, || stats.settled() >= n as u64).await;
    progress.finish();
    let connected = stats.connected();
    let not_connected = n as u64 - connected;
    // Publications wait only for the subscribers that made it.
    shared
        .flight
        .forget_subscribers(u32::try_from(not_connected)?);

    let mut publisher = Publisher::open(ctx, n, &stop_rx)
        .await
        .context("opening the publisher")?;

    // Warm-up until every subscriber is known to be registered.
    let mut warm_ok = connected > 0;
    let mut k = 0;
    while warm_ok && shared.warm.load(Ordering::Acquire) < connected {
        if ctx.timed_out() || k >= 30 {
            warm_ok = false;
            break;
        }
        publisher
            .send(ctx, &shared.channel, Payload::warm(k, clock::now_ns()))
            .await?;
        k += 1;
        let wait = (Instant::now() + Duration::from_secs(2)).min(ctx.deadline);
        wait_until(wait, || shared.warm.load(Ordering::Acquire) >= connected).await;
    }
    if warm_ok {
        publisher
            .send(
                ctx,
                &shared.channel,
                Payload::warm(FINAL_WARM, clock::now_ns()),
            )
            .await?;
        let wait = (Instant::now() + Duration::from_secs(30)).min(ctx.deadline);
        warm_ok = wait_until(wait, || {
            shared.warm_final.load(Ordering::Acquire) >= connected
        })
        .await;
    }

    // The measured phase.
    let expected_total = connected * m;
    let progress = Progress::start("deliver", expected_total, shared.delivered.clone());
    let cpu_before = ctx.cpu();
    let started = Instant::now();
    let started_ns = clock::now_ns();
    if warm_ok {
        publisher.start(ctx, &shared, args);
        let drain = Duration::from_secs_f64(args.drain_timeout.max(0.1));
        let mut last_progress = (0, Instant::now());
        loop {
            let notified = shared.all_done.notified();
            if shared.completed.load(Ordering::Acquire)
                + shared.publish_errors.load(Ordering::Acquire)
                >= m
            {
                break;
            }
            if ctx.timed_out() {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            // Progress is a delivery or a publication sent; none for `drain`
            // means what is missing is not coming (a lost delivery holds its
            // window slot forever).
            let activity =
                shared.delivered.load(Ordering::Acquire) + shared.sent.load(Ordering::Acquire);
            if activity != last_progress.0 {
                last_progress = (activity, Instant::now());
            } else if last_progress.1.elapsed() >= drain {
                break;
            }
        }
    }
    // Subscribers may have every publication before its publisher has the
    // answer (with Redis the fan-out runs ahead of the API's reply): let the
    // workers read the answers of what they sent, briefly, before stopping
    // them, or those publications would count as never accepted.
    let answers = (Instant::now() + Duration::from_secs(2)).min(ctx.deadline);
    wait_until(answers, || shared.sent.load(Ordering::Acquire) >= m).await;
    // Stopped early (deadline, stall): no more publishing, and a short grace for
    // what was already accepted, so that "late" is not counted as "lost".
    publisher.stop_publishing();
    let accepted_count = shared.accepted.load(Ordering::Acquire);
    let grace = Instant::now() + Duration::from_secs(2);
    wait_until(grace, || {
        shared.delivered.load(Ordering::Acquire) >= connected * accepted_count
    })
    .await;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = ctx.cpu();
    let memory = ctx.memory();
    progress.finish();
    let _ = stop_tx.send(true);
    publisher.stop().await;

    let mut ends = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(Some(end)) = task.await {
            ends.push(end);
        }
    }

    // Accounting: every publication the server accepted must reach every subscriber once.
    let published = shared.published.lock().clone();
    let accepted: Vec<u64> = (0..m).filter(|&s| published.contains(s)).collect();
    let per_sub: Vec<(Tally, u64)> = ends
        .iter()
        .map(|e| (e.tally, e.seen.missing_of(accepted.iter().copied())))
        .collect();
    let t = totals(&per_sub, accepted.len() as u64);
    let dropped = ends.iter().filter(|e| e.dropped).count() as u64;
    let publish_errors = shared.publish_errors.load(Ordering::Acquire);
    let last_ns = shared.last_delivery_ns.load(Ordering::Acquire);
    let active_s = if last_ns > started_ns {
        (last_ns - started_ns) as f64 / 1e9
    } else {
        wall
    };
    let latency = shared.latency.lock().summary();
    let cpu = cpu_between(cpu_before, cpu_after);
    let cpu_s = cpu.server_s;
    let cpu_per_delivery_ns = cpu_s.and_then(|s| ratio(s * 1e9, t.delivered as f64));
    let deliveries_per_s = ratio(t.delivered as f64, active_s);
    // All publications go through one node (--server).
    let publications_per_s = ratio(accepted.len() as f64, active_s);
    let broker_cpu_per_publication_us = cpu
        .broker_s
        .and_then(|s| ratio(s * 1e6, accepted.len() as f64));
    let timed_out = ctx.timed_out();
    let ok = warm_ok
        && not_connected == 0
        && t.lost == 0
        && t.duplicated == 0
        && t.unknown == 0
        && t.offset_anomalies == 0
        && publish_errors == 0
        && dropped == 0
        && accepted.len() as u64 == m
        && !timed_out;

    let json = json!({
        "scenario": "fanout",
        "subscribers": n,
        "connected": connected,
        "connect_failed": stats.failed(),
        "first_connect_error": stats.first_error.lock().clone(),
        "publications": m,
        "accepted": accepted.len(),
        "publish_errors": publish_errors,
        "first_publish_error": shared.first_publish_error.lock().clone(),
        "window": args.window,
        "rate": args.rate,
        "warmed_up": warm_ok,
        "expected": t.expected,
        "delivered": t.delivered,
        "lost": t.lost,
        "duplicated": t.duplicated,
        "unknown": t.unknown,
        "offset_anomalies": t.offset_anomalies,
        "subscribers_dropped": dropped,
        "elapsed_s": active_s,
        "deliveries_per_s": deliveries_per_s,
        "nodes": 1 + ctx.target.nodes.len(),
        "publications_per_s": publications_per_s,
        "broker_cpu_s": cpu.broker_s,
        "broker_cpu_per_publication_us": broker_cpu_per_publication_us,
        "latency": latency,
        "server_cpu_s": cpu_s,
        "generator_cpu_s": cpu.generator_s,
        "cpu_per_delivery_ns": cpu_per_delivery_ns,
        "server_memory": memory,
        "timed_out": timed_out,
        "ok": ok,
    });
    let mut report = Report::new(json, ok);
    report.row("subscribers", format!("{connected} of {n}"));
    report.row(
        "publications",
        format!(
            "{} accepted of {m}, window {}, rate {}",
            accepted.len(),
            args.window,
            opt(args.rate, 1)
        ),
    );
    report.row(
        "deliveries",
        format!("{} of {} expected", t.delivered, t.expected),
    );
    report.row(
        "lost / duplicated",
        format!(
            "{} / {} (unknown {}, offset gaps {})",
            t.lost, t.duplicated, t.unknown, t.offset_anomalies
        ),
    );
    report.row("deliveries/s", opt(deliveries_per_s, 0));
    report.row(
        "fan-out latency",
        format!(
            "p50 {}  p99 {}  max {}",
            human_us(latency.p50_us),
            human_us(latency.p99_us),
            human_us(latency.max_us)
        ),
    );
    report.row(
        "CPU used",
        format!(
            "server {} s, generator {} s, over {active_s:.2} s",
            opt(cpu_s, 2),
            opt(cpu.generator_s, 2)
        ),
    );
    report.row(
        "server CPU/delivery",
        format!("{} ns", opt(cpu_per_delivery_ns, 1)),
    );
    report.row("publications/s", opt(publications_per_s, 0));
    if cpu.broker_s.is_some() {
        report.row(
            "broker CPU/publication",
            format!("{} µs", opt(broker_cpu_per_publication_us, 1)),
        );
    }
    if !warm_ok {
        report.row(
            "WARM-UP FAILED",
            "not every subscriber received the warm-up publications",
        );
    }
    for (label, err) in [
        ("connect error", stats.first_error.lock().clone()),
        ("publish error", shared.first_publish_error.lock().clone()),
    ] {
        if let Some(e) = err {
            report.row(label, e);
        }
    }
    if timed_out {
        report.row("TIMED OUT", "the run deadline passed");
    }
    Ok(report)
}

async fn subscriber(mut ws: Ws, shared: &Shared, mut stop: watch::Receiver<bool>) -> SubscriberEnd {
    let mut seen = SeqSet::new(shared.publications);
    let mut tally = Tally::default();
    let mut offsets = OffsetTrack::default();
    let (mut warm, mut warm_final) = (false, false);
    let mut dropped = false;
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(m)) if m.is_close() => {
                dropped = true;
                break;
            }
            Some(Ok(m)) => m,
            _ => {
                dropped = true;
                break;
            }
        };
        let Some(text) = text.as_text() else { continue };
        let now = clock::now_ns();
        let (payload, offset) = match shared.protocol {
            Protocol::Switchboard => match parse_pub(text, &shared.channel) {
                Some(found) => found,
                None => continue,
            },
            Protocol::Peer => match parse_peer(text) {
                Some(payload) => (payload, None),
                None => continue,
            },
        };
        if let Some(offset) = offset {
            offsets.observe(offset);
        }
        if let Some(w) = payload.warm {
            if !warm {
                warm = true;
                shared.warm.fetch_add(1, Ordering::AcqRel);
            }
            if w == FINAL_WARM && !warm_final {
                warm_final = true;
                shared.warm_final.fetch_add(1, Ordering::AcqRel);
            }
            continue;
        }
        let Some(seq) = payload.seq else { continue };
        match seen.insert(seq) {
            Seen::First => {
                tally.received += 1;
                shared
                    .latency
                    .lock()
                    .record_ns(now.saturating_sub(payload.t));
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                shared.last_delivery_ns.fetch_max(now, Ordering::AcqRel);
                if shared.flight.delivered(seq) {
                    shared.release_slot();
                    if shared.completed.fetch_add(1, Ordering::AcqRel) + 1 == shared.publications {
                        shared.all_done.notify_one();
                    }
                }
            }
            Seen::Duplicate => tally.duplicated += 1,
            Seen::Unknown => tally.unknown += 1,
        }
    }
    tally.offset_anomalies = offsets.anomalies;
    SubscriberEnd {
        tally,
        seen,
        dropped,
    }
}

/// Sends the publications: `POST /api/publish` for Switchboard, a text frame on one
/// extra connection for the peers.
struct Publisher {
    /// Used for warm-ups; the workers get their own (see [`Sender::fork`]).
    sender: Sender,
    /// The publishing workers.
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Anything else (the peer publisher's reader).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    async fn open(ctx: &Ctx, index: usize, stop: &watch::Receiver<bool>) -> Result<Publisher> {
        match ctx.target.protocol {
            Protocol::Switchboard => {
                let api_key = ctx
                    .target
                    .api_key
                    .as_deref()
                    .ok_or_else(|| anyhow!("--api-key is needed for switchboard"))?;
                Ok(Publisher {
                    sender: Sender::Http(ApiClient::new(ctx.target.addr, api_key)),
                    workers: Vec::new(),
                    tasks: Vec::new(),
                })
            }
            Protocol::Peer => {
                let uri = crate::conn::ws_uri(&ctx.target, index, "pub")?;
                let ws = crate::conn::open(&ctx.target, index, &uri).await?;
                let (sink, mut stream) = ws.split();
                let mut stop = stop.clone();
                // The peers broadcast to the publisher too: read and drop, or the
                // server would block on it.
                let drain = tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.changed() => break,
                            msg = stream.next() => if !matches!(msg, Some(Ok(_))) { break },
                        }
                    }
                });
                let sender = Sender::Peer(Arc::new(tokio::sync::Mutex::new(sink)));
                Ok(Publisher {
                    sender,
                    workers: Vec::new(),
                    tasks: vec![drain],
                })
            }
        }
    }

    /// Sends one publication now (used for warm-ups).
    async fn send(&mut self, ctx: &Ctx, channel: &str, payload: Payload) -> Result<()> {
        self.sender.send(ctx, channel, payload).await
    }

    /// Starts publishing `0..m` in the background.
    fn start(&mut self, ctx: &Ctx, shared: &Arc<Shared>, args: &FanoutArgs) {
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers = match self.sender {
            // One HTTP connection per publication in flight (at most 64).
            Sender::Http(_) => {
                if args.window == 0 {
                    64
                } else {
                    args.window.min(64)
                }
            }
            // Frames on one connection: sending does not wait for an answer.
            Sender::Peer(_) => 1,
        };
        for _ in 0..workers {
            let (ctx, shared, next) = (ctx.clone(), shared.clone(), next.clone());
            let rate = args.rate;
            let channel = args.channel.clone();
            let mut sender = self.sender.fork();
            self.workers.push(tokio::spawn(async move {
                loop {
                    shared.take_slot().await;
                    let seq = next.fetch_add(1, Ordering::AcqRel);
                    if seq >= shared.publications || ctx.timed_out() {
                        shared.release_slot();
                        break;
                    }
                    if let Some(rate) = rate.filter(|r| *r > 0.0) {
                        let at = started + Duration::from_secs_f64(seq as f64 / rate);
                        tokio::time::sleep_until(at.min(ctx.deadline).into()).await;
                    }
                    let payload = Payload::seq(seq, clock::now_ns());
                    let result = sender.send(&ctx, &channel, payload).await;
                    shared.sent.fetch_add(1, Ordering::AcqRel);
                    match result {
                        Ok(()) => {
                            shared.published.lock().insert(seq);
                            shared.accepted.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => shared.publish_failed(seq, format!("{e:#}")),
                    }
                }
            }));
        }
    }

    /// Stops the publishing workers (the peer publisher's reader stays until `stop`).
    fn stop_publishing(&mut self) {
        for task in self.workers.drain(..) {
            task.abort();
        }
    }

    async fn stop(mut self) {
        self.stop_publishing();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

enum Sender {
    Http(ApiClient),
    Peer(Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>),
}

impl Sender {
    /// Another sender to the same place: a new API connection, or the same peer socket.
    fn fork(&self) -> Sender {
        match self {
            Sender::Http(api) => Sender::Http(api.fresh()),
            Sender::Peer(sink) => Sender::Peer(sink.clone()),
        }
    }

    async fn send(&mut self, ctx: &Ctx, channel: &str, payload: Payload) -> Result<()> {
        match self {
            Sender::Http(api) => {
                let body = json!({"channel": channel, "data": payload}).to_string();
                let resp = tokio::time::timeout(
                    ctx.target.handshake_timeout,
                    api.post_json("/api/publish", &body),
                )
                .await
                .map_err(|_| anyhow!("publish timed out"))??;
                if resp.status != 200 {
                    bail!(
                        "answered {}: {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    );
                }
                Ok(())
            }
            Sender::Peer(sink) => Ok(sink
                .lock()
                .await
                .send(Message::text(payload.to_json()))
                .await?),
        }
    }
}
