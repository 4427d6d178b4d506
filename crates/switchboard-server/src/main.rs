//! `switchboard`: the real-time gateway.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchboard_server::auth::Claims;
use switchboard_server::config::{Config, Dur, HistoryStoreKind};
use switchboard_server::otel::Otel;
use switchboard_server::{fds, server, shutdown};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A real-time WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without a config and a secret it runs in development
    /// mode: a generated secret and API key, and the demo page at `/`.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file (with the environment applied) and exit.
    CheckConfig { file: PathBuf },
    /// Print every key with its default, as TOML.
    DefaultConfig,
    /// Mint a token with the configured HMAC secret, for development.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A channel or `prefix*` pattern for the `channels` claim (repeatable).
        #[arg(long = "channel")]
        channels: Vec<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !ok {
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Logs to stderr, plus the OpenTelemetry layer when `[otel]` is on. The
/// log filter never enables the trace spans' target, whatever `RUST_LOG`
/// says: with `[otel]` off those spans are disabled at their callsites.
fn init_logs(level: &str, otel: Option<&Otel>) {
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let not_traces = filter_fn(|m| m.target() != switchboard_core::trace::TARGET);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter.and(not_traces));
    let registry = tracing_subscriber::registry().with(logs);
    match otel {
        Some(otel) => registry.with(otel.layer()).init(),
        None => registry.init(),
    }
}

/// jemalloc with its background thread: idle connections cost less than with
/// glibc's malloc, and pages freed when clients leave go back to the system
/// (BENCHMARKS.md has the figures; decay times in `.cargo/config.toml`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { file } => Config::load(Some(&file), env_vars())
            .map_err(anyhow::Error::from)
            .and_then(|(cfg, warnings)| {
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                if cfg.history.store == HistoryStoreKind::Postgres {
                    let said = switchboard_server::backends::check_postgres(&cfg)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    println!("{said}");
                }
                println!("{}: ok", file.display());
                Ok(())
            }),
        Command::DefaultConfig => {
            print!(
                "{}",
                toml::to_string(&Config::default()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Token {
            sub,
            ttl,
            channels,
            config,
        } => token(sub, &ttl, channels, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn token(
    sub: String,
    ttl: &str,
    channels: Vec<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let ttl = Dur::parse(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    // Minting needs the secret (and the audience and issuer the server will
    // check), not the API key or anything else a server needs to start.
    let (cfg, _) = Config::load_unvalidated(config.as_deref(), env_vars())?;
    let auth = &cfg.auth;
    anyhow::ensure!(
        !auth.hmac_secret.is_empty(),
        "auth.hmac_secret is not set (SWITCHBOARD_AUTH_HMAC_SECRET or --config): \
         tokens for key files are minted by your auth service"
    );
    anyhow::ensure!(
        auth.hmac_secret.len() >= 16,
        "auth.hmac_secret: must be at least 16 bytes"
    );
    let mut claims = serde_json::to_value(Claims {
        sub,
        exp: Some(jsonwebtoken::get_current_timestamp() + ttl.0.as_secs()),
        channels,
        info: None,
    })?;
    // A server configured with an audience or issuer refuses tokens without them.
    if let Some(obj) = claims.as_object_mut() {
        if !auth.audience.is_empty() {
            obj.insert("aud".into(), auth.audience.clone().into());
        }
        if !auth.issuer.is_empty() {
            obj.insert("iss".into(), auth.issuer.clone().into());
        }
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(auth.hmac_secret.as_bytes()),
    )
    .context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let mut env = env_vars();
    let has = |k: &str, env: &[(String, String)]| env.iter().any(|(n, v)| n == k && !v.is_empty());
    let dev = config.is_none()
        && ![
            "SWITCHBOARD_AUTH_HMAC_SECRET",
            "SWITCHBOARD_AUTH_PUBLIC_KEY_FILE",
            "SWITCHBOARD_AUTH_JWKS_FILE",
            "SWITCHBOARD_AUTH_JWKS_URL",
        ]
        .iter()
        .any(|k| has(k, &env));
    let mut generated = None;
    if dev {
        let secret = random_hex(32);
        let key = if has("SWITCHBOARD_API_KEY", &env) {
            None
        } else {
            let k = random_hex(16);
            env.push(("SWITCHBOARD_API_KEY".into(), k.clone()));
            Some(k)
        };
        env.push(("SWITCHBOARD_AUTH_HMAC_SECRET".into(), secret.clone()));
        generated = Some((secret, key));
    }
    let (mut cfg, warnings) = Config::load(config.as_deref(), env)?;
    if dev {
        cfg = cfg.with_dev_namespaces();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let otel = if cfg.otel.enabled() {
        Some(Otel::start(&cfg.otel, runtime.handle()).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    init_logs(&cfg.log.level, otel.as_ref());
    if cfg.otel.enabled() {
        tracing::info!(
            endpoint = %switchboard_server::secret::redact_url(&cfg.otel.traces_url()),
            sample_ratio = cfg.otel.sample_ratio,
            "otel: exporting traces of the API path"
        );
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some((secret, key)) = &generated {
        eprintln!("================================================================");
        eprintln!(" DEVELOPMENT MODE: no config file and no secret were given.");
        eprintln!(" Generated for this run only (do not use in production):");
        eprintln!("   SWITCHBOARD_AUTH_HMAC_SECRET={secret}");
        if let Some(k) = key {
            eprintln!("   SWITCHBOARD_API_KEY={k}");
        }
        eprintln!(" The demo page is on at / and tokens at /dev/token?user=NAME.");
        eprintln!(" Run with --config FILE (or SWITCHBOARD_AUTH_HMAC_SECRET) for production.");
        eprintln!("================================================================");
    }
    tracing::info!(config = %cfg.redacted_toml(), "effective configuration");
    match fds::raise_fd_limit() {
        Ok((soft, hard)) => {
            tracing::info!(soft, hard, "open file limit");
            let want = cfg.limits.max_connections as u64 + 256;
            if soft < want {
                tracing::warn!(
                    soft,
                    wanted = want,
                    "open file limit is below limits.max_connections plus headroom; \
                     raise LimitNOFILE (systemd) or ulimit -n"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
    let addr = cfg
        .listen
        .parse()
        .with_context(|| format!("listen: `{}` is not an address", cfg.listen))?;
    let flusher = otel.as_ref().map(Otel::flusher);
    // The accept loop runs on a worker, not on this thread: a client's task
    // then starts where its connection was accepted, without waking another
    // thread (with one core, a context switch per handshake).
    let serve = runtime.spawn(async move {
        let listener = server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let state = server::build_state(cfg, dev)
            .await
            .map_err(anyhow::Error::msg)?;
        println!("listening on http://{local}");
        tracing::info!(%local, node = %state.node.name(), "switchboard started");
        server::run(state.clone(), listener, shutdown::on_signals(state)).await?;
        if let Some(flusher) = flusher {
            // What the last requests traced leaves before the process does.
            flusher.flush(std::time::Duration::from_secs(3)).await;
        }
        tracing::info!("stopped");
        Ok(())
    });
    runtime
        .block_on(serve)
        .context("the server's task panicked")?
}
