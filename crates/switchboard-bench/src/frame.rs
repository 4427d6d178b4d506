//! What the generator sends and reads back.
//!
//! A publication's data is `{"seq": n, "t": <send time, ns>}` (warm-up ones carry
//! `warm` instead of `seq`; echo ones add `c`, the sending client). Switchboard wraps
//! it in a `pub` push (PROTOCOL §3); the peers broadcast the text frame as it came,
//! possibly behind a prefix such as `User 17: `, so a peer frame is read from its
//! first `{`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The generator's own publication payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<u64>,
    #[serde(default)]
    pub t: u64,
}

impl Payload {
    pub fn seq(seq: u64, t: u64) -> Self {
        Payload {
            seq: Some(seq),
            t,
            ..Payload::default()
        }
    }

    pub fn warm(n: u64, t: u64) -> Self {
        Payload {
            warm: Some(n),
            t,
            ..Payload::default()
        }
    }

    pub fn echo(client: u64, seq: u64, t: u64) -> Self {
        Payload {
            seq: Some(seq),
            c: Some(client),
            t,
            ..Payload::default()
        }
    }

    pub fn to_json(self) -> String {
        // A struct of integers always serialises.
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// A server-to-client frame of Switchboard, reduced to what the generator uses.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    Welcome,
    Pub {
        channel: String,
        offset: Option<u64>,
        payload: Option<Payload>,
    },
    Reply {
        id: Option<u64>,
        ok: bool,
        error: Option<String>,
    },
    Other(String),
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Reads one Switchboard frame; `None` when it is not JSON of the expected shape.
pub fn parse_server(text: &str) -> Option<ServerMsg> {
    let raw: RawFrame<'_> = serde_json::from_str(text).ok()?;
    if let Some(ok) = raw.ok {
        let error = raw.error.map(|e| e.to_string());
        return Some(ServerMsg::Reply {
            id: raw.id,
            ok,
            error,
        });
    }
    match raw.kind.as_deref() {
        Some("welcome") => Some(ServerMsg::Welcome),
        Some("pub") => Some(ServerMsg::Pub {
            channel: raw.channel.map(Cow::into_owned).unwrap_or_default(),
            offset: raw.offset,
            payload: raw.data.and_then(|d| serde_json::from_value(d).ok()),
        }),
        Some(other) => Some(ServerMsg::Other(other.to_owned())),
        None => None,
    }
}

/// The payload and offset of a `pub` on `channel`, or `None` for any other frame.
///
/// This is the subscriber's hot path (once per delivery), so it borrows and skips
/// everything it does not need rather than going through [`parse_server`].
pub fn parse_pub(text: &str, channel: &str) -> Option<(Payload, Option<u64>)> {
    #[derive(Deserialize)]
    struct PubFrame<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        channel: Cow<'a, str>,
        #[serde(default)]
        offset: Option<u64>,
        data: Payload,
    }
    let frame: PubFrame<'_> = serde_json::from_str(text).ok()?;
    (frame.kind == "pub" && frame.channel == channel).then_some((frame.data, frame.offset))
}

/// The payload of a peer's broadcast frame: the JSON object from the first `{`.
pub fn parse_peer(text: &str) -> Option<Payload> {
    let start = text.find('{')?;
    serde_json::from_str(&text[start..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_without_empty_fields() {
        let p = Payload::seq(7, 123);
        assert_eq!(p.to_json(), r#"{"seq":7,"t":123}"#);
        assert_eq!(Payload::warm(2, 5).to_json(), r#"{"warm":2,"t":5}"#);
        assert_eq!(Payload::echo(3, 4, 5).to_json(), r#"{"seq":4,"c":3,"t":5}"#);
    }

    #[test]
    fn switchboard_pub_is_read_with_its_offset() {
        let text = r#"{"type":"pub","channel":"bench:all","offset":16,"epoch":"e1","data":{"seq":3,"t":99}}"#;
        assert_eq!(
            parse_pub(text, "bench:all"),
            Some((Payload::seq(3, 99), Some(16)))
        );
        assert_eq!(parse_pub(text, "bench:other"), None);
        let from_client = r#"{"type":"pub","channel":"bench:echo","offset":2,"epoch":"e","data":{"c":1,"seq":0,"t":5},"from":"u1"}"#;
        assert_eq!(
            parse_pub(from_client, "bench:echo"),
            Some((Payload::echo(1, 0, 5), Some(2)))
        );
    }

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let text =
            r#"{ "data": {"t": 1, "seq": 2}, "offset": 3, "channel": "bench:all", "type": "pub" }"#;
        assert_eq!(
            parse_pub(text, "bench:all"),
            Some((Payload::seq(2, 1), Some(3)))
        );
    }

    #[test]
    fn other_frames_are_not_deliveries() {
        assert_eq!(parse_pub(r#"{"type":"pong"}"#, "bench:all"), None);
        assert_eq!(
            parse_pub(r#"{"id":1,"ok":true,"result":{}}"#, "bench:all"),
            None
        );
        assert_eq!(parse_pub("not json", "bench:all"), None);
    }

    #[test]
    fn server_frames_are_classified() {
        assert_eq!(
            parse_server(
                r#"{"type":"welcome","client":"c-1","user":"u1","node":"n1","ping_interval":30}"#
            ),
            Some(ServerMsg::Welcome)
        );
        assert_eq!(
            parse_server(
                r#"{"id":1,"ok":true,"result":{"offset":0,"epoch":"e","recovered":false,"publications":[]}}"#
            ),
            Some(ServerMsg::Reply {
                id: Some(1),
                ok: true,
                error: None
            })
        );
        match parse_server(r#"{"id":2,"ok":false,"error":{"code":"forbidden","message":"no"}}"#) {
            Some(ServerMsg::Reply {
                id: Some(2),
                ok: false,
                error: Some(e),
            }) => assert!(e.contains("forbidden")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_server(r#"{"type":"pong"}"#),
            Some(ServerMsg::Other("pong".into()))
        );
        assert_eq!(parse_server("[1,2]"), None);
    }

    #[test]
    fn peer_frames_are_read_after_any_prefix() {
        assert_eq!(
            parse_peer(r#"User s1: {"seq":4,"t":8}"#),
            Some(Payload::seq(4, 8))
        );
        assert_eq!(parse_peer(r#"{"warm":0,"t":8}"#), Some(Payload::warm(0, 8)));
        assert_eq!(parse_peer("User s1 has left the forge."), None);
    }
}
