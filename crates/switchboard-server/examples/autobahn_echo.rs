//! Echo server for the Autobahn|Testsuite fuzzingclient (`scripts/autobahn`).
//!
//! Every connection goes through [`switchboard_server::transport::echo`]: the
//! same WebSocket framing, UTF-8, control-frame and close handling as `/ws`,
//! with a 16 MiB message limit as the suite needs. It echoes every text and
//! binary message back.
//!
//! ```text
//! cargo run --release -p switchboard-server --example autobahn_echo -- [PORT]
//! ```
//! `PORT` defaults to 9001; the server listens on 127.0.0.1.

use std::net::SocketAddr;

use tokio::net::TcpListener;

const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = match std::env::args().nth(1) {
        Some(p) => p.parse::<u16>().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port `{p}`: {e}"))
        })?,
        None => 9001,
    };
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("autobahn_echo listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if let Err(e) = switchboard_server::transport::echo(stream, MAX_MESSAGE_SIZE).await {
                // Resets are expected: the suite drops connections on purpose.
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    eprintln!("connection error: {e}");
                }
            }
        });
    }
}
