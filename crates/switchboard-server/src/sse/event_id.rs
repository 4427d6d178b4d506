//! An event's `id` and the `Last-Event-ID` (or `?since=`) that resumes a
//! stream: `<channel>:<epoch>:<offset>` (PROTOCOL §11), one entry per channel
//! of the stream joined by `;`, the event's own channel first. One id thus
//! resumes every channel, although a browser keeps only the last one.
//!
//! Parsed from untrusted input: fuzzed by `fuzz/fuzz_targets/event_id.rs`.

use std::fmt;

use bytes::{BufMut, BytesMut};
use switchboard_protocol::ChannelName;

/// Between the entries of an id (never in a channel name or an epoch).
pub const SEPARATOR: char = ';';

/// Longest epoch accepted: epochs are short tokens (8 hex digits today).
const MAX_EPOCH: usize = 64;

/// Where a channel's stream stands: the last publication delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub channel: ChannelName,
    pub epoch: String,
    pub offset: u64,
}

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// An entry is not `<channel>:<epoch>:<offset>`.
    Malformed,
    BadChannel,
    BadEpoch,
    BadOffset,
    /// The same channel twice.
    Duplicate,
    /// More entries than a stream may have channels.
    TooMany,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdError::Malformed => "an entry is not <channel>:<epoch>:<offset>",
            IdError::BadChannel => "an entry names an invalid channel",
            IdError::BadEpoch => "an entry has an invalid epoch",
            IdError::BadOffset => "an entry has an invalid offset",
            IdError::Duplicate => "a channel appears twice",
            IdError::TooMany => "more entries than channels a stream may have",
        })
    }
}

fn epoch_ok(epoch: &str) -> bool {
    !epoch.is_empty()
        && epoch.len() <= MAX_EPOCH
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses an id of at most `max` entries. Blank entries (and surrounding
/// blanks) are ignored, so an empty id is no position at all.
pub fn parse(id: &str, max: usize) -> Result<Vec<Position>, IdError> {
    let mut out: Vec<Position> = Vec::new();
    for entry in id.split(SEPARATOR) {
        let entry = entry.trim_matches(' ');
        if entry.is_empty() {
            continue;
        }
        if out.len() >= max {
            return Err(IdError::TooMany);
        }
        let (rest, offset) = entry.rsplit_once(':').ok_or(IdError::Malformed)?;
        let (channel, epoch) = rest.rsplit_once(':').ok_or(IdError::Malformed)?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::BadOffset);
        }
        let offset: u64 = offset.parse().map_err(|_| IdError::BadOffset)?;
        if !epoch_ok(epoch) {
            return Err(IdError::BadEpoch);
        }
        let channel = ChannelName::parse(channel).map_err(|_| IdError::BadChannel)?;
        if out.iter().any(|p| p.channel == channel) {
            return Err(IdError::Duplicate);
        }
        out.push(Position {
            channel,
            epoch: epoch.to_owned(),
            offset,
        });
    }
    Ok(out)
}

/// Writes an id: `first` (the event's channel) then the others, in order.
pub fn render<'a>(
    first: Option<&'a Position>,
    all: impl IntoIterator<Item = &'a Position>,
    out: &mut BytesMut,
) {
    let mut wrote = false;
    let mut put = |p: &Position, out: &mut BytesMut| {
        if wrote {
            out.put_u8(SEPARATOR as u8);
        }
        wrote = true;
        out.put_slice(p.channel.as_str().as_bytes());
        out.put_u8(b':');
        out.put_slice(p.epoch.as_bytes());
        out.put_u8(b':');
        out.put_slice(p.offset.to_string().as_bytes());
    };
    if let Some(f) = first {
        put(f, out);
    }
    for p in all {
        if first.is_some_and(|f| f.channel == p.channel) {
            continue;
        }
        put(p, out);
    }
}

/// Whether an epoch may appear in an id (what [`parse`] accepts).
pub fn valid_epoch(epoch: &str) -> bool {
    epoch_ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).expect("channel")
    }

    #[test]
    fn an_id_names_every_channel_and_reads_back() {
        let ps = parse("chat:lobby:0a1b2c3d:16;user:alice:ff00aa11:0", 8).expect("parsed");
        assert_eq!(
            ps,
            vec![
                Position {
                    channel: ch("chat:lobby"),
                    epoch: "0a1b2c3d".into(),
                    offset: 16
                },
                Position {
                    channel: ch("user:alice"),
                    epoch: "ff00aa11".into(),
                    offset: 0
                },
            ]
        );
        let mut out = BytesMut::new();
        render(Some(&ps[1]), &ps, &mut out);
        assert_eq!(&out[..], b"user:alice:ff00aa11:0;chat:lobby:0a1b2c3d:16");
        // The contract's single entry is an id too; so is no entry.
        assert_eq!(parse("news:e:3", 8).expect("one").len(), 1);
        assert_eq!(parse("", 8), Ok(vec![]));
    }

    #[test]
    fn bad_ids_are_refused_with_a_reason() {
        assert_eq!(parse("news", 8), Err(IdError::Malformed));
        assert_eq!(parse("news:3", 8), Err(IdError::Malformed));
        assert_eq!(parse("news:e:x", 8), Err(IdError::BadOffset));
        assert_eq!(parse("news:e:-1", 8), Err(IdError::BadOffset));
        assert_eq!(
            parse("news:e:99999999999999999999999", 8),
            Err(IdError::BadOffset)
        );
        assert_eq!(parse("news::3", 8), Err(IdError::BadEpoch));
        assert_eq!(parse("new s:e:3", 8), Err(IdError::BadChannel));
        assert_eq!(parse(":e:3", 8), Err(IdError::BadChannel));
        assert_eq!(parse("a:e:1;a:e:2", 8), Err(IdError::Duplicate));
        assert_eq!(parse("a:e:1;b:e:2", 1), Err(IdError::TooMany));
    }
}
