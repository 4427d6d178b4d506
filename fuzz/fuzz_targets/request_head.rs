//! The front path's request-head routing and parsing
//! (`switchboard_server::http::front::{route_head, parse_head}`) on arbitrary
//! bytes, fed as the socket would deliver them: routing never panics, never
//! changes its mind once decided, decides within the head size limit, and a
//! head routed to the WebSocket path parses into something the handshake can
//! read (or is left for hyper to answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_server::http::front::{Route, parse_head, route_head};

/// The front path's head limit (past it, hyper answers `431`).
const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    // First byte: the size of each read; the rest: what the client sent.
    let [step, bytes @ ..] = data else {
        return;
    };
    let step = usize::from(*step).max(1);
    let mut end = 0;
    let mut decided = Route::More;
    while end < bytes.len() {
        end = (end + step).min(bytes.len());
        let route = route_head(&bytes[..end]);
        if route != Route::More {
            decided = route;
            break;
        }
        assert!(end <= MAX_HEAD, "undecided past the head limit");
    }
    // More bytes (within the limit) would not have changed the decision.
    if decided != Route::More && end <= MAX_HEAD {
        let longer = &bytes[..bytes.len().min(MAX_HEAD)];
        assert_eq!(route_head(longer), decided, "routing changed its mind");
    }
    if decided == Route::WebSocket {
        assert!(bytes.starts_with(b"GET /ws"));
        if let Some(head) = parse_head(&bytes[..end]) {
            // The head ends within what was read; what follows are frames.
            assert!(head.head_len() <= end);
            // httparse ends a head at an empty line, CRLF or bare LF.
            let h = &bytes[..head.head_len()];
            assert!(h.ends_with(b"\n\r\n") || h.ends_with(b"\n\n"));
            if let Some(q) = head.query() {
                assert!(!q.contains(' '));
            }
            assert!(head.headers().len() <= 64);
            // The same head parses the same with its first frames behind it.
            let again = parse_head(bytes).expect("a head parses with bytes after it");
            assert_eq!(again.head_len(), head.head_len());
            assert_eq!(again.query(), head.query());
        }
    }
    // The parser alone, on anything: never panics.
    let _ = parse_head(bytes);
});
