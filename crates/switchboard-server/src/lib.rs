//! The `switchboard` binary's library: configuration, authentication, the HTTP
//! and WebSocket front, and the composition root [`server::run`].
//!
//! # Layout
//! - [`config`]: defaults ← file ← environment, validated once.
//! - [`auth`]: token sources, JWT verification, the API key.
//! - [`http`]: the router: `/ws` (checks before the upgrade), `/api/*`, operations,
//!   the JS SDK under `/sdk/`.
//! - [`transport`]: one WebSocket client's read and write loop.
//! - [`sse`]: `GET /sse`, server-sent events for networks that block WebSockets.
//! - [`backends`]: the broker, presence and history stores the config names (memory,
//!   file, Redis or PostgreSQL).
//! - [`server`]: builds the node, accepts connections.
//! - [`shutdown`]: unready first, then a paced drain.
//! - [`fds`]: file-descriptor limit and count.
//! - [`secret`]: secrets and URL credentials redacted wherever the config is printed.
//! - [`otel`]: OpenTelemetry traces of the API path (`[otel]`), exported over OTLP/HTTP.

pub mod auth;
pub mod backends;
pub mod config;
pub mod fds;
pub mod http;
pub mod otel;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod transport;
