//! The live admin page (`/admin`, `[admin] enabled = true`, off by default):
//! plain HTML and ES modules served from the binary, and the endpoints it
//! reads behind the API key.
//!
//! - `page`: the page and its modules, with a strict content security policy;
//! - `stats`: `GET /api/admin/stats`, a `text/event-stream` of this node's
//!   counters once a second, at most [`MAX_STREAMS`] at once;
//! - `user`: `GET /api/admin/user/{user}`, a user's connections on every node.
//!
//! The page sends the key as `Authorization: Bearer` on every call (kept in
//! the tab's session storage): never in a URL, so never in a log. The stats
//! stream is read with `fetch()` for that reason (`EventSource` cannot send a
//! header). Disconnecting a user is the existing `POST /api/disconnect`.

mod page;
mod stats;
mod user;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use axum::{Extension, Router};

use super::SharedState;
use crate::config::AdminConfig;

/// Admin streams open at once on a node; one more is answered 503. Each
/// costs a task and a pass over the channels once a second.
pub const MAX_STREAMS: usize = 8;

/// The page's routes: none unless `[admin] enabled` (the router's 404 then).
pub fn page_routes(cfg: &AdminConfig) -> Router<SharedState> {
    if !cfg.enabled {
        return Router::new();
    }
    Router::new()
        .route("/admin", get(page::index))
        .route("/admin/{file}", get(page::asset))
}

/// The endpoints under `/api` (the caller's router checks the key first):
/// none unless `[admin] enabled`.
pub fn api_routes(cfg: &AdminConfig) -> Router<SharedState> {
    if !cfg.enabled {
        return Router::new();
    }
    Router::new()
        .route("/admin/stats", get(stats::open))
        .route("/admin/user/{user}", get(user::lookup))
        .layer(Extension(Arc::new(StreamSlots::new(MAX_STREAMS))))
}

/// Counts the open stats streams against their cap.
#[derive(Debug)]
struct StreamSlots {
    open: AtomicUsize,
    max: usize,
}

impl StreamSlots {
    fn new(max: usize) -> Self {
        StreamSlots {
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, held for a stream's life; `None` when all are taken.
    fn take(self: &Arc<Self>) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }
}

/// Given back on drop: when the stream's response is dropped, which is when
/// its connection ended, whoever ended it.
#[derive(Debug)]
struct StreamSlot(Arc<StreamSlots>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let slots = Arc::new(StreamSlots::new(2));
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_none(), "the cap holds");
        drop(a);
        assert!(slots.take().is_some(), "a dropped slot is free again");
    }
}
