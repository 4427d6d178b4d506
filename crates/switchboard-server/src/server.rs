//! The composition root: builds the node from the config, accepts
//! connections, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use switchboard_core::{Namespaces, Node, NodeOptions};
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
    let storm = crate::http::storm::Storm::new(
        cfg.limits.max_pending_handshakes,
        cfg.limits.handshakes_per_address_per_second,
    );
    Ok(Arc::new(AppState {
        storm,
        node,
        cfg,
        verifier,
        text_channel,
        draining: AtomicBool::new(false),
        stop: Default::default(),
        live_transports: AtomicUsize::new(0),
        dev,
        registry,
        cluster,
        broker_metrics,
    }))
}

/// Serves until `shutdown` resolves, then stops: `/ready` answers 503 at
/// once while clients are still taken for `ready_grace` (load balancers see
/// the node go unready), then the listener closes and the clients are
/// drained in paced batches ([`crate::shutdown::drain`]).
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
    let mut accept = Acceptor {
        set_nodelay: true,
        state: state.clone(),
        app,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accept.serve(accepted).await,
        }
    }
    state.stop.begin();
    let grace = tokio::time::sleep(state.cfg.shutdown.ready_grace.0);
    tokio::pin!(grace);
    if !state.stop.hurried() && !state.cfg.shutdown.ready_grace.0.is_zero() {
        tracing::info!("/ready answers 503; still serving for ready_grace");
        loop {
            tokio::select! {
                () = &mut grace => break,
                () = state.stop.until_hurried() => break,
                accepted = listener.accept() => accept.serve(accepted).await,
            }
        }
    }
    drop(listener);
    crate::shutdown::drain(&state).await;
    heartbeats.abort();
    broker_watch.abort();
    state.cluster.leave(state.node.name()).await;
    Ok(())
}

/// Hands each accepted connection to its own task.
struct Acceptor {
    /// Until an accepted socket shows it inherited `TCP_NODELAY` from the
    /// listener, it is set on each.
    set_nodelay: bool,
    state: SharedState,
    app: axum::Router,
}

impl Acceptor {
    async fn serve(&mut self, accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>) {
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        if self.set_nodelay {
            if stream.nodelay().unwrap_or(false) {
                self.set_nodelay = false;
            } else {
                let _ = stream.set_nodelay(true);
            }
        }
        // Counted from here: a task not yet run is work in hand.
        let pending = self.state.storm.enter();
        tokio::spawn(crate::http::front::serve(
            self.state.clone(),
            self.app.clone(),
            stream,
            peer,
            pending,
        ));
    }
}
