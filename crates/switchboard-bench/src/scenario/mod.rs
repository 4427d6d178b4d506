//! The scenarios and what they share: the run context, the connect phase, waiting
//! with a deadline, and server measurements.

pub mod attack;
pub mod echo;
pub mod fanout;
pub mod hostile;
pub mod idle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};

use crate::conn::{self, Protocol, Target, Ws};
use crate::procfs::{CpuSample, Memory, ServerProbe};
use crate::stats::Latency;

/// Everything a scenario needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub target: Target,
    /// The server's processes: one, or every node of a gateway (summed).
    pub probes: Vec<ServerProbe>,
    /// The broker's process (redis-server), measured apart from the nodes.
    pub broker: Option<ServerProbe>,
    /// The run stops by itself at this instant, whatever it is doing.
    pub deadline: Instant,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
}

impl Ctx {
    /// CPU used so far by the server (all its nodes), its broker and this
    /// generator. `None` for the server when any node could not be read.
    pub fn cpu(&self) -> CpuMark {
        let server = self
            .probes
            .iter()
            .map(|p| p.cpu().ok())
            .reduce(|a, b| Some(a?.plus(b?)))
            .flatten();
        CpuMark {
            server,
            broker: self.broker.and_then(|p| p.cpu().ok()),
            generator: ServerProbe::new(std::process::id()).cpu().ok(),
        }
    }

    /// The server's memory, summed over its nodes.
    pub fn memory(&self) -> Option<Memory> {
        self.probes
            .iter()
            .map(|p| p.memory().ok())
            .reduce(|a, b| Some(a?.plus(b?)))
            .flatten()
    }

    pub fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Client id on the wire: the JWT `sub` for Switchboard, the path segment for peers.
    pub fn client_id(&self, prefix: &str, index: usize) -> String {
        match self.target.protocol {
            Protocol::Switchboard => format!("u{prefix}{index}"),
            Protocol::Peer => format!("{prefix}{index}"),
        }
    }
}

/// The connect phase, shared by the connecting tasks.
#[derive(Debug, Default)]
pub struct ConnectStats {
    pub handshake: Mutex<Latency>,
    /// Arc'd so a progress bar can watch it.
    pub connected: Arc<AtomicU64>,
    pub failed: AtomicU64,
    /// Established, then closed by the server before the run ended.
    pub dropped: AtomicU64,
    pub first_error: Mutex<Option<String>>,
}

impl ConnectStats {
    pub fn settled(&self) -> u64 {
        self.connected.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }

    pub fn connected(&self) -> u64 {
        self.connected.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    fn fail(&self, error: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::AcqRel);
        self.first_error
            .lock()
            .get_or_insert_with(|| format!("{error:#}"));
    }
}

/// Connects client `index` as `id` (a handshake slot from `gate` held meanwhile),
/// records its handshake latency and, for Switchboard, subscribes it to `channel`.
/// Counts the client as connected or failed; `None` on failure.
pub async fn connect_client(
    ctx: &Ctx,
    index: usize,
    id: &str,
    channel: Option<&str>,
    gate: &Semaphore,
    stats: &ConnectStats,
) -> Option<Ws> {
    let uri = match conn::ws_uri(&ctx.target, index, id) {
        Ok(uri) => uri,
        Err(e) => {
            stats.fail(e);
            return None;
        }
    };
    let Ok(_slot) = gate.acquire().await else {
        return None;
    };
    if ctx.timed_out() {
        stats.fail(anyhow::anyhow!("run deadline passed before connecting"));
        return None;
    }
    let started = Instant::now();
    let mut ws = match conn::open(&ctx.target, index, &uri).await {
        Ok(ws) => ws,
        Err(e) => {
            stats.fail(e);
            return None;
        }
    };
    let took = started.elapsed();
    stats
        .handshake
        .lock()
        .record_ns(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    if let (Protocol::Switchboard, Some(channel)) = (ctx.target.protocol, channel)
        && let Err(e) = conn::subscribe(&mut ws, channel, ctx.target.handshake_timeout).await
    {
        stats.fail(e);
        return None;
    }
    stats.connected.fetch_add(1, Ordering::AcqRel);
    Some(ws)
}

/// Keeps an idle connection open (answering pings, which the library does while
/// reading) until `stop`; counts it as dropped if the server ends it first.
pub async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, stats: &ConnectStats) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            msg = ws.next() => match msg {
                Some(Ok(m)) if !m.is_close() => {}
                _ => {
                    stats.dropped.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            },
        }
    }
}

/// Polls `done` every few milliseconds until it holds (true) or `deadline` passes (false).
pub async fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sleeps for `d`, but not past `deadline`.
pub async fn sleep_bounded(d: Duration, deadline: Instant) {
    let until = (Instant::now() + d).min(deadline);
    tokio::time::sleep_until(until.into()).await;
}

/// A reading of the server's and the generator's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    server: Option<CpuSample>,
    broker: Option<CpuSample>,
    generator: Option<CpuSample>,
}

/// CPU seconds used between two readings, where both were taken. The generator's
/// own share tells whether it, rather than the server, was the bottleneck.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsed {
    pub server_s: Option<f64>,
    pub broker_s: Option<f64>,
    pub generator_s: Option<f64>,
}

pub fn cpu_between(before: CpuMark, after: CpuMark) -> CpuUsed {
    let between = |a: Option<CpuSample>, b: Option<CpuSample>| Some(b?.seconds_since(a?));
    CpuUsed {
        server_s: between(before.server, after.server),
        broker_s: between(before.broker, after.broker),
        generator_s: between(before.generator, after.generator),
    }
}

#[cfg(test)]
mod tests;
