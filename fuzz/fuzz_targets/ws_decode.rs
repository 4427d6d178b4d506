//! The WebSocket frame decoder (`switchboard_protocol::websocket::Decoder`) on
//! arbitrary client bytes: it never panics, what it yields obeys RFC 6455 and
//! the size limit, and feeding the bytes in arbitrary pieces (as the transport
//! does) decodes exactly as feeding them at once, and counts the same frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::websocket::{Decoder, Message, ProtocolError, close_code_is_valid};

/// Decodes `chunks` one after the other, the way the transport does.
fn run(max: usize, chunks: &[&[u8]]) -> (Vec<Message>, Option<ProtocolError>, usize) {
    let mut dec = Decoder::new(max);
    let mut out = Vec::new();
    let mut frames = 0;
    for chunk in chunks {
        match dec.decode(chunk, &mut out) {
            Ok(n) => frames += n,
            Err(e) => return (out, Some(e), frames),
        }
        if matches!(out.last(), Some(Message::Close(..))) {
            break;
        }
    }
    (out, None, frames)
}

fuzz_target!(|data: &[u8]| {
    // First byte: the size limit; second: where to cut the rest into pieces.
    let [limit, cut, rest @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
    let (whole, whole_err, whole_frames) = run(max, &[rest]);
    assert!(whole_frames >= whole.len());
    for m in &whole {
        match m {
            Message::Text(t) => assert!(t.len() <= max),
            Message::Binary(b) => assert!(b.len() <= max),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close(code, reason) => {
                assert!(code.is_none_or(close_code_is_valid));
                assert!(reason.len() <= 123);
                assert!(code.is_some() || reason.is_empty());
            }
        }
    }
    if let Some(e) = whole_err {
        assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
        let _ = e.reason();
    }
    // The same bytes in pieces of `cut` bytes (and one byte at a time for short inputs).
    let step = usize::from(*cut).max(1);
    let pieces: Vec<&[u8]> = rest.chunks(step).collect();
    let (split, split_err, split_frames) = run(max, &pieces);
    assert_eq!(whole, split, "pieces of {step}");
    assert_eq!(whole_err, split_err, "pieces of {step}");
    if whole_err.is_none() {
        assert_eq!(whole_frames, split_frames, "pieces of {step}");
    }
    if rest.len() <= 64 {
        let bytes: Vec<&[u8]> = rest.chunks(1).collect();
        let (one, one_err, _) = run(max, &bytes);
        assert_eq!((one, one_err), (whole, whole_err));
    }
});
