//! Decoding a client's text frame into a [`Command`] (PROTOCOL §2).
//!
//! Decoding is lenient about what it does not need (unknown fields are ignored)
//! and strict about what it does: every failure is a [`CommandError`] that still
//! carries the command's `id` when one could be read, so the reply can name it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{ChannelName, ChannelNameError};

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
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
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
        id: None,
        message: "frame is not a JSON object".into(),
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
                Some(d) => d.get().into(),
                None => {
                    return Err(CommandError {
                        id,
                        message: "field `data` is required".into(),
                    });
                }
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
