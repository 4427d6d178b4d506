//! The composition root: builds the node from the config, accepts
//! connections, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use switchboard_core::{Disconnect, Namespaces, Node, NodeOptions};
use switchboard_protocol::ChannelName;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::Verifier;
use crate::backends::Backends;
use crate::config::Config;
use crate::http::{AppState, SharedState, router};

/// Binds `addr` with a listen backlog that survives bursts of handshakes
/// (tokio's default of 128 overflows under a few hundred at once).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Accepted sockets inherit it (on Linux): one system call fewer per client.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Builds the shared state (node, its backends, verifier, router state)
/// from a valid config. With Redis, waits for it a while (see `backends`).
pub async fn build_state(cfg: Config, dev: bool) -> Result<SharedState, String> {
    let verifier = Verifier::from_config(&cfg.auth)?;
    let opts = NodeOptions {
        name: cfg.node_name.clone(),
        namespaces: Namespaces::new(cfg.namespace_policies()),
        max_connections: cfg.limits.max_connections,
        max_connections_per_user: cfg.limits.max_connections_per_user,
        max_channels_per_client: cfg.limits.max_channels_per_client,
        send_queue_max_bytes: cfg.ws.send_queue_max_bytes,
        ping_interval: cfg.ws.ping_interval.0,
        ping_timeout: cfg.ws.ping_timeout.0,
        leeway: cfg.auth.leeway.0,
        idempotency_window: cfg.api.idempotency_window.0,
    };
    let backends = Backends::build(&cfg).await?;
    let node = Node::with_cursors(
        opts,
        backends.broker.clone(),
        backends.presence.clone(),
        backends.cursors.clone(),
    );
    let cluster = backends.cluster(&node);
    let mut registry = node.metrics.registry();
    let broker_metrics = crate::http::ops::BrokerMetrics::register(&mut registry);
    if cfg.otel.enabled() {
        crate::otel::register(&mut registry);
    }
    let text_channel = if cfg.text_channel.is_empty() {
        None
    } else {
        ChannelName::parse(&cfg.text_channel).ok()
    };
    Ok(Arc::new(AppState {
        node,
        cfg,
        verifier,
        text_channel,
        draining: AtomicBool::new(false),
        live_transports: AtomicUsize::new(0),
        dev,
        registry,
        cluster,
        broker_metrics,
    }))
}

/// Serves until `shutdown` resolves, then drains: `/ready` turns 503, no new
/// connections are taken, every client gets 1001, and the call returns once
/// they are gone or `shutdown_timeout` passed.
pub async fn run(
    state: SharedState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let heartbeats = tokio::spawn(
        state
            .node
            .clone()
            .run_heartbeats(state.cfg.auth.expire_connections),
    );
    let broker_watch = tokio::spawn(crate::http::ops::watch_broker(Arc::downgrade(&state)));
    tokio::pin!(shutdown);
    // Until an accepted socket shows it inherited `TCP_NODELAY` from the
    // listener, set it on each.
    let mut set_nodelay = true;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if set_nodelay {
                    if stream.nodelay().unwrap_or(false) {
                        set_nodelay = false;
                    } else {
                        let _ = stream.set_nodelay(true);
                    }
                }
                tokio::spawn(crate::http::front::serve(state.clone(), app.clone(), stream));
            }
        }
    }
    drop(listener);
    drain(&state).await;
    heartbeats.abort();
    broker_watch.abort();
    state.cluster.leave(state.node.name()).await;
    Ok(())
}

/// Stops taking clients and closes every one with 1001, waiting up to
/// `shutdown_timeout` for their transports to end.
pub async fn drain(state: &AppState) {
    state.draining.store(true, Ordering::Release);
    tracing::info!(
        clients = state.node.hub.connection_count(),
        "draining: closing every client with 1001"
    );
    // The node closes, too, a client whose handshake passed the check above
    // just before it was set.
    state.node.drain(Disconnect::SHUTDOWN).await;
    let deadline = tokio::time::Instant::now() + state.cfg.shutdown_timeout.0;
    while state.live_transports.load(Ordering::Acquire) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.live_transports.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(left, "shutdown timeout passed with clients still closing");
    }
}
