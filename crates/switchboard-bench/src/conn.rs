//! Opening client connections: sockets spread over source addresses, the WebSocket
//! upgrade, Switchboard's token and welcome, and the peers' plain `/ws/{id}`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::frame::{ServerMsg, parse_server};

pub type Ws = WebSocketStream<TcpStream>;

/// Which protocol the server under test speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Switchboard: `/ws?token=`, welcome, subscribe, `POST /api/publish`.
    Switchboard,
    /// The peers: `/ws/{id}`, every text frame is broadcast to all.
    Peer,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where publications go, and the first node clients connect to.
    pub addr: SocketAddr,
    /// More nodes of the same gateway (one broker): clients are spread over
    /// `addr` and these, in turn by index, as a load balancer would.
    pub nodes: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub secret: Option<String>,
    pub api_key: Option<String>,
    /// Source addresses to spread client sockets over (127.0.0.2 ..); 0 = let the kernel pick.
    pub source_addrs: u8,
    pub handshake_timeout: Duration,
}

impl Target {
    /// The node client `index` connects to.
    pub fn node(&self, index: usize) -> SocketAddr {
        match index % (1 + self.nodes.len()) {
            0 => self.addr,
            i => self.nodes[i - 1],
        }
    }
}

/// The source address of client `index`: 127.0.0.(2 + index % spread), so that no
/// single address needs more than its ~28k ephemeral ports. `None` when spreading
/// is off or the server is not on IPv4 loopback.
pub fn source_addr(server: SocketAddr, index: usize, spread: u8) -> Option<SocketAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && spread > 0 => {
            let last = 2 + (index % usize::from(spread)) as u8;
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                0,
            ))
        }
        _ => None,
    }
}

/// A TCP connection with TCP_NODELAY, bound to client `index`'s source address.
pub async fn tcp_connect(target: &Target, index: usize) -> Result<TcpStream> {
    let addr = target.node(index);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    if let Some(source) = source_addr(addr, index, target.source_addrs) {
        socket
            .bind(source)
            .with_context(|| format!("binding {source}"))?;
    }
    Ok(socket.connect(addr).await?)
}

/// HS256 connection token for user `sub`, valid for an hour.
pub fn mint_token(secret: &str, sub: &str) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub,
        exp: now + 3600,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// The URI client `index` connects to: Switchboard's `/ws?token=` or a peer's `/ws/{id}`.
pub fn ws_uri(target: &Target, index: usize, id: &str) -> Result<String> {
    let addr = target.node(index);
    Ok(match target.protocol {
        Protocol::Switchboard => {
            let secret = target
                .secret
                .as_deref()
                .ok_or_else(|| anyhow!("--secret is needed for switchboard"))?;
            format!("ws://{addr}/ws?token={}", mint_token(secret, id)?)
        }
        Protocol::Peer => format!("ws://{addr}/ws/{id}"),
    })
}

/// Opens a WebSocket to `uri` from client `index`'s source address and, for
/// Switchboard, waits for the welcome. Bounded by the handshake timeout.
pub async fn open(target: &Target, index: usize, uri: &str) -> Result<Ws> {
    tokio::time::timeout(target.handshake_timeout, async {
        let stream = tcp_connect(target, index).await?;
        let builder = ClientBuilder::new().uri(uri)?;
        let (mut ws, _) = builder.connect_on(stream).await?;
        if target.protocol == Protocol::Switchboard {
            loop {
                match next_text(&mut ws).await? {
                    Some(ServerMsg::Welcome) => break,
                    Some(ServerMsg::Other(kind)) if kind == "disconnect" => {
                        bail!("disconnected before welcome")
                    }
                    _ => {}
                }
            }
        }
        Ok(ws)
    })
    .await
    .map_err(|_| anyhow!("handshake timed out"))?
}

/// Sends a Switchboard command and waits for the reply with its `id`, ignoring
/// other frames in between.
pub async fn command(ws: &mut Ws, json: String, id: u64, wait: Duration) -> Result<()> {
    ws.send(Message::text(json)).await?;
    tokio::time::timeout(wait, async {
        loop {
            match next_text(ws).await? {
                Some(ServerMsg::Reply {
                    id: Some(got),
                    ok: true,
                    ..
                }) if got == id => return Ok(()),
                Some(ServerMsg::Reply {
                    id: Some(got),
                    ok: false,
                    error,
                }) if got == id => {
                    bail!("command refused: {}", error.unwrap_or_default())
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply to command {id}"))?
}

/// `subscribe` to `channel` and wait for `ok: true`.
pub async fn subscribe(ws: &mut Ws, channel: &str, wait: Duration) -> Result<()> {
    let cmd = serde_json::json!({"op": "subscribe", "channel": channel, "id": 1}).to_string();
    command(ws, cmd, 1, wait)
        .await
        .with_context(|| format!("subscribing to {channel}"))
}

/// The next text frame, parsed as a Switchboard frame (`Ok(None)` when it is not
/// one); an error when the connection ends or the server closes it.
async fn next_text(ws: &mut Ws) -> Result<Option<ServerMsg>> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection closed"))??;
        if let Some((code, reason)) = msg.as_close() {
            bail!("closed by server: {code:?} {reason}");
        }
        if let Some(text) = msg.as_text() {
            return Ok(parse_server(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_over_loopback() {
        let server: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        assert_eq!(
            source_addr(server, 0, 200),
            Some("127.0.0.2:0".parse().expect("addr"))
        );
        assert_eq!(
            source_addr(server, 199, 200),
            Some("127.0.0.201:0".parse().expect("addr"))
        );
        assert_eq!(
            source_addr(server, 200, 200),
            Some("127.0.0.2:0".parse().expect("addr"))
        );
        assert_eq!(source_addr(server, 5, 0), None);
        let remote: SocketAddr = "[::1]:8000".parse().expect("addr");
        assert_eq!(source_addr(remote, 5, 200), None);
    }

    #[test]
    fn clients_spread_over_the_nodes_in_turn() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let target = Target {
            addr: addr("127.0.0.1:1"),
            nodes: vec![addr("127.0.0.1:2"), addr("127.0.0.1:3")],
            protocol: Protocol::Switchboard,
            secret: Some("s".into()),
            api_key: None,
            source_addrs: 0,
            handshake_timeout: std::time::Duration::from_secs(1),
        };
        let ports: Vec<u16> = (0..6).map(|i| target.node(i).port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        let uri = ws_uri(&target, 4, "u").expect("uri");
        assert!(uri.starts_with("ws://127.0.0.1:2/ws?token="), "{uri}");
        let alone = Target {
            nodes: Vec::new(),
            ..target
        };
        assert!((0..3).all(|i| alone.node(i) == alone.addr));
    }

    #[test]
    fn tokens_are_hs256_with_sub_and_exp() {
        let token = mint_token("s3cret", "u7").expect("mints");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("valid");
        assert_eq!(data.claims["sub"], "u7");
        assert_eq!(data.header.alg, jsonwebtoken::Algorithm::HS256);
    }
}
