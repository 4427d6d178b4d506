//! `decode_command` on arbitrary text: never panics; what it accepts is
//! well-formed, and what the server builds from it is valid JSON.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchboard_protocol::frame::{self, ErrorCode, Publication};
use switchboard_protocol::{ChannelName, Op, decode_command};

fn is_json(text: &str) -> bool {
    serde_json::from_str::<&RawValue>(text).is_ok()
}

fn check_channel(c: &ChannelName) {
    assert_eq!(ChannelName::parse(c.as_str()).as_ref(), Ok(c));
}

fn check(text: &str) {
    match decode_command(text) {
        Ok(cmd) => {
            // Anything accepted is a JSON object.
            assert!(is_json(text), "accepted a frame that is not JSON: {text:?}");
            match &cmd.op {
                Op::Publish { channel, data, .. } => {
                    check_channel(channel);
                    assert!(is_json(data), "publish data is not JSON text: {data:?}");
                    // The pub frame built from it is JSON and carries the data verbatim.
                    let p = Publication::new(
                        channel.clone(),
                        1,
                        Arc::from("e"),
                        bytes_of(data),
                        Some(Arc::from("u\"\\\u{1}")),
                    );
                    let frame = std::str::from_utf8(p.frame()).expect("pub frame is UTF-8");
                    #[derive(serde::Deserialize)]
                    struct Pub<'a> {
                        #[serde(borrow)]
                        data: &'a RawValue,
                        channel: String,
                    }
                    let parsed: Pub<'_> = serde_json::from_str(frame).expect("pub frame is JSON");
                    assert_eq!(parsed.data.get(), &**data);
                    assert_eq!(parsed.channel, channel.as_str());
                }
                Op::Subscribe { channel, .. }
                | Op::Unsubscribe { channel }
                | Op::Presence { channel }
                | Op::History { channel, .. } => check_channel(channel),
                Op::Refresh { .. } | Op::Ping => {}
            }
            let pong = frame::pong(cmd.id);
            assert!(serde_json::from_slice::<serde_json::Value>(&pong).is_ok());
        }
        Err(e) => {
            // The error reply the server sends is JSON and carries the id.
            let reply = frame::error_reply(e.id, ErrorCode::BadRequest, &e.message);
            let v: serde_json::Value = serde_json::from_slice(&reply).expect("error reply is JSON");
            assert_eq!(v.get("id").and_then(|i| i.as_u64()), e.id);
        }
    }
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
    } else {
        check(&String::from_utf8_lossy(data));
    }
});
