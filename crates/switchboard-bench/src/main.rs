//! `switchboard-bench`: the load generator of the Performance issue.
//!
//! It speaks Switchboard's protocol (PROTOCOL.md: `/ws?token=`, welcome, subscribe,
//! `POST /api/publish`) and the peers' plain one (`/ws/{id}`, a text frame is
//! broadcast to all), runs one scenario per invocation, and prints one JSON line
//! (`--json`) and a readable table. Every run is bounded by `--timeout` and stops by
//! itself. Server CPU and memory come from `/proc/<--server-pid>`.
//!
//! Layout: `scenario/` (idle, fanout, echo, hostile with its attackers, and their
//! shared connect phase),
//! `conn` (sockets over 127.0.0.x, upgrade, tokens), `http` (the publish client),
//! `frame` (what is sent and read back), `ledger` (loss and duplicates), `stats`
//! (HDR histograms), `procfs` (/proc parsing), `report`, `progress`, `clock`.

mod clock;
mod conn;
mod frame;
mod http;
mod ledger;
mod procfs;
mod progress;
mod report;
mod scenario;
mod stats;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::conn::{Protocol, Target};
use crate::procfs::ServerProbe;
use crate::scenario::Ctx;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator for Switchboard and the broadcast peers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N connections and hold them: handshake rate/latency, CPU per handshake, memory per connection.
    Idle(scenario::idle::IdleArgs),
    /// N subscribers, M publications: fan-out latency, deliveries/s, CPU per delivery, loss and duplicates.
    Fanout(scenario::fanout::FanoutArgs),
    /// K clients doing round trips through the server.
    Echo(scenario::echo::EchoArgs),
    /// Every attack of issue 10 at once, with idle clients, a publisher and a watcher: RSS, CPU, loss over time.
    Hostile(scenario::hostile::HostileArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Echo(_) => "echo",
            Scenario::Hostile(_) => "hostile",
        }
    }
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Server address (host:port).
    #[arg(long, global = true, default_value = "127.0.0.1:8000")]
    server: SocketAddr,
    /// Protocol the server speaks.
    #[arg(long, global = true, value_enum, default_value = "switchboard")]
    protocol: Protocol,
    /// HS256 secret to mint connection tokens with (switchboard).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_AUTH_HMAC_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// API key for POST /api/publish (switchboard).
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// More nodes of the same gateway (host:port, repeated or comma-separated):
    /// clients are spread over --server and these; publications go through --server.
    #[arg(long = "node", global = true, value_delimiter = ',')]
    nodes: Vec<SocketAddr>,
    /// Pid of the server process, to read its CPU and memory from /proc; one per
    /// node with --node (repeated or comma-separated), summed.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Pid of the broker (redis-server): its CPU per publication is reported apart.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Seconds after which the run stops, finished or not.
    #[arg(long, global = true, default_value_t = 120.0)]
    timeout: f64,
    /// Seconds allowed for one handshake (and one reply or round trip).
    #[arg(long, global = true, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Handshakes in progress at once.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// Spread client sockets over this many source addresses 127.0.0.2.. (0: don't bind).
    #[arg(long, global = true, default_value_t = 200)]
    source_addrs: u8,
    /// Name of the server in the output.
    #[arg(long, global = true)]
    label: Option<String>,
    /// Extra key=value pairs copied into the JSON line (e.g. run=3).
    #[arg(long = "tag", global = true, value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Print one JSON line per result on stdout (the table then goes to stderr).
    #[arg(long, global = true)]
    json: bool,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() -> ExitCode {
    clock::init();
    let cli = Cli::parse();
    // Sockets are files: take the hard limit.
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async_main(cli, fd_limit));
    // Don't wait for thousands of sockets to be torn down one by one.
    runtime.shutdown_background();
    code
}

async fn async_main(cli: Cli, fd_limit: u64) -> ExitCode {
    let c = &cli.common;
    let timeout = Duration::from_secs_f64(c.timeout.max(1.0));
    let ctx = Ctx {
        target: Target {
            addr: c.server,
            nodes: c.nodes.clone(),
            protocol: c.protocol,
            secret: c.secret.clone(),
            api_key: c.api_key.clone(),
            source_addrs: c.source_addrs,
            handshake_timeout: Duration::from_secs_f64(c.handshake_timeout.max(0.1)),
        },
        probes: c.server_pid.iter().copied().map(ServerProbe::new).collect(),
        broker: c.broker_pid.map(ServerProbe::new),
        deadline: Instant::now() + timeout,
        connect_concurrency: c.connect_concurrency,
    };
    let wanted = match &cli.scenario {
        Scenario::Idle(a) => a.connections,
        Scenario::Fanout(a) => a.subscribers + 1,
        Scenario::Echo(a) => a.clients,
        Scenario::Hostile(a) => a.idle + a.slowloris + 8 * a.attackers + 2,
    } as u64;
    if fd_limit > 0 && wanted + 64 > fd_limit {
        eprintln!(
            "switchboard-bench: warning: {wanted} connections wanted, open-file limit is {fd_limit}"
        );
    }

    // Scenarios watch the deadline themselves; this is the backstop.
    let run = async {
        match &cli.scenario {
            Scenario::Idle(a) => scenario::idle::run(&ctx, a).await,
            Scenario::Fanout(a) => scenario::fanout::run(&ctx, a).await,
            Scenario::Echo(a) => scenario::echo::run(&ctx, a).await,
            Scenario::Hostile(a) => scenario::hostile::run(&ctx, a).await,
        }
    };
    let result = match tokio::time::timeout(timeout + Duration::from_secs(30), run).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!(
            "run did not stop by itself within --timeout + 30 s"
        )),
    };
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("switchboard-bench {}: {e:#}", cli.scenario.name());
            return ExitCode::FAILURE;
        }
    };

    let label = c
        .label
        .clone()
        .unwrap_or_else(|| format!("{:?}", c.protocol).to_lowercase());
    if let Some(obj) = report.json.as_object_mut() {
        obj.insert("server".into(), label.clone().into());
        obj.insert(
            "protocol".into(),
            serde_json::to_value(c.protocol).unwrap_or_default(),
        );
        // How busy the machine was: the figures assume nothing else runs.
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        {
            obj.insert("loadavg_1m".into(), load.into());
        }
        for (k, v) in &c.tags {
            obj.insert(k.clone(), v.clone().into());
        }
    }
    let table = report.table(&format!(
        "{} against {label} ({})",
        cli.scenario.name(),
        c.server
    ));
    if c.json {
        println!("{}", report.json);
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    let _ = std::io::stdout().flush();
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
