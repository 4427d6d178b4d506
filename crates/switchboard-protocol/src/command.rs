//! Decoding a client's text frame into a [`Command`] (PROTOCOL §2).
//!
//! Decoding is lenient about what it does not need (unknown fields are ignored)
//! and strict about what it does: every failure is a [`CommandError`] that still
//! carries the command's `id` when one could be read, so the reply can name it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{ChannelName, ChannelNameError};
use crate::idempotency::IdempotencyKey;

/// A position in a channel's stream: the `since` of `subscribe` and `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// One decoded client command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// When present, the command gets exactly one reply carrying it.
    pub id: Option<u64>,
    pub op: Op,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Subscribe {
        channel: ChannelName,
        since: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    /// `data` is the raw JSON text of the command's `data`, kept as sent so that
    /// it is never parsed and re-serialized on its way to subscribers.
    Publish {
        channel: ChannelName,
        data: Box<str>,
        /// A retry with the same key within the window answers the first
        /// publish's result and publishes nothing.
        idempotency_key: Option<IdempotencyKey>,
    },
    Presence {
        channel: ChannelName,
    },
    History {
        channel: ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    },
    Refresh {
        token: String,
    },
    /// This connection's device has handled everything of `channel` (an
    /// inbox) up to `offset` (PROTOCOL §10).
    Ack {
        channel: ChannelName,
        offset: u64,
    },
    Ping,
}

/// Why a frame is not a command. `id` is the command's id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub id: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandError {}

/// Every field any command may carry, each kept raw so that a wrong type in one
/// field does not hide the `id` of the command.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    // `null` is a valid payload: keep it rather than reading it as absent.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    offset: Option<&'a RawValue>,
    idempotency_key: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Whether `text` is JSON every parser takes: `RawValue` checks the grammar
/// only, and lets through numbers such as `1e999` that no subscriber can read.
/// Walks the value without building it.
pub fn is_portable_json(text: &str) -> bool {
    serde_json::from_str::<Portable>(text).is_ok()
}

/// A JSON value whose every number is finite; holds nothing.
struct Portable;

impl<'de> Deserialize<'de> for Portable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortableVisitor)
    }
}

struct PortableVisitor;

impl<'de> serde::de::Visitor<'de> for PortableVisitor {
    type Value = Portable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value with finite numbers")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Portable, E> {
        if v.is_finite() {
            Ok(Portable)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_unit<E>(self) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_none<E>(self) -> Result<Portable, E> {
        Ok(Portable)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Portable, A::Error> {
        while seq.next_element::<Portable>()?.is_some() {}
        Ok(Portable)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Portable, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Portable>()?
            .is_some()
        {}
        Ok(Portable)
    }
}

/// The `id` of a frame that failed to decode as a command, when it is an
/// object whose `id` is a whole number (duplicate keys included).
fn salvage_id(text: &str) -> Option<u64> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    map.get("id")?.as_u64()
}

fn field<'de, T: Deserialize<'de>>(
    raw: Option<&'de RawValue>,
    name: &str,
    id: Option<u64>,
) -> Result<Option<T>, CommandError> {
    match raw {
        None => Ok(None),
        Some(v) if v.get() == "null" => Ok(None),
        Some(v) => serde_json::from_str(v.get())
            .map(Some)
            .map_err(|_| CommandError {
                id,
                message: format!("field `{name}` has the wrong type"),
            }),
    }
}

fn required<'de, T: Deserialize<'de>>(
    raw: Option<&'de RawValue>,
    name: &str,
    id: Option<u64>,
) -> Result<T, CommandError> {
    field(raw, name, id)?.ok_or_else(|| CommandError {
        id,
        message: format!("field `{name}` is required"),
    })
}

fn channel(raw: Option<&RawValue>, id: Option<u64>) -> Result<ChannelName, CommandError> {
    let name: String = required(raw, "channel", id)?;
    ChannelName::parse(&name).map_err(|e: ChannelNameError| CommandError {
        id,
        message: e.to_string(),
    })
}

/// Decodes one text frame. Never panics, whatever the input.
pub fn decode_command(text: &str) -> Result<Command, CommandError> {
    let raw: RawCommand<'_> = serde_json::from_str(text).map_err(|_| CommandError {
        id: salvage_id(text),
        message: "frame is not a JSON command object".into(),
    })?;
    // An id that is not a non-negative integer is treated as absent.
    let id: Option<u64> = raw.id.and_then(|v| serde_json::from_str(v.get()).ok());
    let op_name: String = required(raw.op, "op", id)?;
    let op = match op_name.as_str() {
        "subscribe" => Op::Subscribe {
            channel: channel(raw.channel, id)?,
            since: field(raw.since, "since", id)?,
        },
        "unsubscribe" => Op::Unsubscribe {
            channel: channel(raw.channel, id)?,
        },
        "publish" => Op::Publish {
            channel: channel(raw.channel, id)?,
            data: match raw.data {
                Some(d) if is_portable_json(d.get()) => d.get().into(),
                Some(_) => {
                    return Err(CommandError {
                        id,
                        message: "field `data` holds a number no JSON reader can represent".into(),
                    });
                }
                None => {
                    return Err(CommandError {
                        id,
                        message: "field `data` is required".into(),
                    });
                }
            },
            idempotency_key: match field::<String>(raw.idempotency_key, "idempotency_key", id)? {
                None => None,
                Some(k) => Some(IdempotencyKey::parse(&k).map_err(|e| CommandError {
                    id,
                    message: e.to_string(),
                })?),
            },
        },
        "presence" => Op::Presence {
            channel: channel(raw.channel, id)?,
        },
        "history" => Op::History {
            channel: channel(raw.channel, id)?,
            since: field(raw.since, "since", id)?,
            limit: field(raw.limit, "limit", id)?,
        },
        "refresh" => Op::Refresh {
            token: required(raw.token, "token", id)?,
        },
        "ack" => Op::Ack {
            channel: channel(raw.channel, id)?,
            offset: required(raw.offset, "offset", id)?,
        },
        "ping" => Op::Ping,
        _ => {
            return Err(CommandError {
                id,
                message: "unknown op".into(),
            });
        }
    };
    Ok(Command { id, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn subscribe_with_since_decodes() {
        let c = decode_command(
            r#"{"op":"subscribe","id":3,"channel":"chat:a","since":{"offset":4,"epoch":"x"}}"#,
        )
        .expect("valid");
        assert_eq!(c.id, Some(3));
        assert_eq!(
            c.op,
            Op::Subscribe {
                channel: ChannelName::parse("chat:a").expect("valid"),
                since: Some(StreamPosition {
                    offset: 4,
                    epoch: "x".into()
                })
            }
        );
    }

    #[test]
    fn publish_keeps_data_as_sent() {
        let c = decode_command(r#"{"op":"publish","channel":"c","data":{"a": [1, 2]}}"#)
            .expect("valid");
        match c.op {
            Op::Publish { data, .. } => assert_eq!(&*data, r#"{"a": [1, 2]}"#),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publish_takes_an_optional_idempotency_key() {
        let c =
            decode_command(r#"{"op":"publish","channel":"c","data":1,"idempotency_key":"k-1"}"#)
                .expect("valid");
        match c.op {
            Op::Publish {
                idempotency_key, ..
            } => assert_eq!(idempotency_key.as_ref().map(|k| k.as_str()), Some("k-1")),
            other => panic!("unexpected {other:?}"),
        }
        for bad in [r#""""#, "5", r#""tab\there""#] {
            let text = format!(
                r#"{{"op":"publish","id":4,"channel":"c","data":1,"idempotency_key":{bad}}}"#
            );
            let e = decode_command(&text).expect_err(bad);
            assert_eq!(e.id, Some(4));
            assert!(e.message.contains("idempotency_key"), "{}", e.message);
        }
    }

    #[test]
    fn errors_keep_the_id_when_it_can_be_read() {
        let e = decode_command(r#"{"op":"fly","id":7}"#).expect_err("unknown op");
        assert_eq!(e.id, Some(7));
        let e = decode_command(r#"{"op":"subscribe","id":8,"channel":5}"#).expect_err("bad");
        assert_eq!(e.id, Some(8));
        let e = decode_command(r#"{"op":"subscribe","id":9,"channel":"a b"}"#).expect_err("bad");
        assert_eq!(e.id, Some(9));
        let e = decode_command("not json").expect_err("bad");
        assert_eq!(e.id, None);
        let e = decode_command(r#"{"op":"ping","id":"x"}"#);
        assert_eq!(e.map(|c| c.id), Ok(None));
    }

    #[test]
    fn null_data_is_a_payload_and_unreadable_numbers_are_not() {
        let c = decode_command(r#"{"op":"publish","id":8,"channel":"c","data":null}"#)
            .expect("null is JSON");
        assert!(matches!(c.op, Op::Publish { ref data, .. } if &**data == "null"));
        let e = decode_command(r#"{"op":"publish","id":8,"channel":"c","data":1e999}"#)
            .expect_err("not portable");
        assert_eq!(e.id, Some(8));
        let e = decode_command(r#"{"op":"publish","id":8,"channel":"c"}"#).expect_err("missing");
        assert_eq!(e.id, Some(8));
    }

    #[test]
    fn duplicate_keys_fail_but_keep_the_id() {
        let e = decode_command(r#"{"op":"ping","op":"ping","id":3}"#).expect_err("duplicate");
        assert_eq!(e.id, Some(3));
    }

    #[test]
    fn ack_needs_a_channel_and_a_non_negative_offset() {
        let c =
            decode_command(r#"{"op":"ack","id":2,"channel":"user:a","offset":7}"#).expect("valid");
        assert_eq!(
            c.op,
            Op::Ack {
                channel: ChannelName::parse("user:a").expect("valid"),
                offset: 7
            }
        );
        for bad in [
            r#"{"op":"ack","id":2,"channel":"user:a"}"#,
            r#"{"op":"ack","id":2,"channel":"user:a","offset":-1}"#,
            r#"{"op":"ack","id":2,"channel":"user:a","offset":"7"}"#,
            r#"{"op":"ack","id":2,"offset":7}"#,
        ] {
            assert_eq!(decode_command(bad).expect_err(bad).id, Some(2));
        }
    }

    #[test]
    fn ping_decodes_without_id() {
        assert_eq!(
            decode_command(r#"{"op":"ping"}"#),
            Ok(Command {
                id: None,
                op: Op::Ping
            })
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(s in ".{0,200}") {
            let _ = decode_command(&s);
        }

        #[test]
        fn decoding_json_shaped_input_never_panics(
            op in prop_oneof![Just("subscribe"), Just("publish"), Just("history"), Just("x")],
            id in proptest::option::of(any::<i64>()),
            ch in ".{0,20}",
        ) {
            let v = serde_json::json!({"op": op, "id": id, "channel": ch, "data": ch, "limit": id});
            let _ = decode_command(&v.to_string());
        }
    }
}
