//! `sse::event_id::parse` on arbitrary text (a `Last-Event-ID` header or a
//! `since` parameter): never panics, every accepted id renders back to an
//! equivalent one, and what it accepts stays within its bounds.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_server::sse::event_id::{self, IdError};

const MAX: usize = 8;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match event_id::parse(&text, MAX) {
        Ok(positions) => {
            assert!(positions.len() <= MAX);
            for (i, p) in positions.iter().enumerate() {
                assert!(event_id::valid_epoch(&p.epoch), "{:?}", p.epoch);
                assert!(
                    positions[..i].iter().all(|q| q.channel != p.channel),
                    "duplicate accepted"
                );
            }
            let mut out = BytesMut::new();
            event_id::render(positions.first(), &positions, &mut out);
            let rendered = std::str::from_utf8(&out).expect("an id is text");
            assert!(!rendered.contains(['\n', '\r', '\0']), "{rendered:?}");
            assert_eq!(event_id::parse(rendered, MAX), Ok(positions));
        }
        Err(IdError::TooMany) => assert!(text.split(';').count() > MAX),
        Err(_) => {}
    }
});
