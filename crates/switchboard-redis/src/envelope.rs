//! What travels through pub/sub. A publication's envelope is written by
//! `publish.lua` (so its offset and epoch are the stored ones); each node
//! decodes it once and builds the `Publication`, which encodes the `pub`
//! frame once for all its local subscribers.
//!
//! `p<offset> <epoch> <from> <data>`, `from` being `-` or `<bytes> <sender>`;
//! `j<frame>` for a push (join, leave); `h<micros>` for a health probe.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::{ChannelName, Publication};

/// What a message on a channel's pub/sub name carries.
#[derive(Debug)]
pub(crate) enum Envelope {
    Publication(Arc<Publication>),
    Push(Bytes),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed pub/sub envelope")]
pub(crate) struct Malformed;

pub(crate) fn push(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(b'j');
    out.extend_from_slice(frame);
    out
}

pub(crate) fn probe(micros: u64) -> String {
    format!("h{micros}")
}

pub(crate) fn decode_probe(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.strip_prefix(b"h")?)
        .ok()?
        .parse()
        .ok()
}

/// Splits `s` at the first space.
fn word(s: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let at = s.iter().position(|&b| b == b' ').ok_or(Malformed)?;
    Ok((&s[..at], &s[at + 1..]))
}

fn number(s: &[u8]) -> Result<u64, Malformed> {
    std::str::from_utf8(s)
        .map_err(|_| Malformed)?
        .parse()
        .map_err(|_| Malformed)
}

/// Reads a stored sender field: `-` or `<bytes> <sender>`; returns what follows.
pub(crate) fn decode_from(s: &[u8]) -> Result<(Option<Arc<str>>, &[u8]), Malformed> {
    if let Some(rest) = s.strip_prefix(b"-") {
        return Ok((None, rest));
    }
    let (len, rest) = word(s)?;
    let len = usize::try_from(number(len)?).map_err(|_| Malformed)?;
    let name = rest.get(..len).ok_or(Malformed)?;
    let name = std::str::from_utf8(name).map_err(|_| Malformed)?;
    Ok((Some(Arc::from(name)), &rest[len..]))
}

/// Decodes a message received on `channel`'s pub/sub name. `payload` is
/// shared, so the publication's data is a slice of it, not a copy.
pub(crate) fn decode(channel: ChannelName, payload: Bytes) -> Result<Envelope, Malformed> {
    match payload.first() {
        Some(b'j') => Ok(Envelope::Push(payload.slice(1..))),
        Some(b'p') => {
            let (offset, rest) = word(&payload[1..])?;
            let offset = number(offset)?;
            let (epoch, rest) = word(rest)?;
            let epoch: Arc<str> = Arc::from(std::str::from_utf8(epoch).map_err(|_| Malformed)?);
            let (from, rest) = decode_from(rest)?;
            let data = rest.strip_prefix(b" ").ok_or(Malformed)?;
            let data = payload.slice_ref(data);
            Ok(Envelope::Publication(Arc::new(Publication::new(
                channel, offset, epoch, data, from,
            ))))
        }
        _ => Err(Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> ChannelName {
        ChannelName::parse("chat:a").expect("valid")
    }

    #[test]
    fn publications_decode_with_and_without_a_sender() {
        let Ok(Envelope::Publication(p)) = decode(ch(), Bytes::from_static(br#"p7 e1 - {"a":1}"#))
        else {
            panic!("a publication");
        };
        assert_eq!((p.offset, &*p.epoch, p.from.clone()), (7, "e1", None));
        assert_eq!(&p.data[..], br#"{"a":1}"#);
        let Ok(Envelope::Publication(p)) = decode(
            ch(),
            Bytes::from_static("p8 e1 7 bob x\u{e9} [1]".as_bytes()),
        ) else {
            panic!("a publication");
        };
        assert_eq!(p.from.as_deref(), Some("bob x\u{e9}"));
        assert_eq!(&p.data[..], b"[1]");
    }

    #[test]
    fn pushes_keep_their_frame() {
        let Ok(Envelope::Push(f)) = decode(ch(), Bytes::from(push(b"{\"type\":\"join\"}"))) else {
            panic!("a push");
        };
        assert_eq!(&f[..], b"{\"type\":\"join\"}");
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        for bad in [
            &b""[..],
            b"p",
            b"px e -",
            b"p1 e",
            b"p1 e 99 bob {}",
            b"p1 e 3 bo",
            b"p1 e -{}",
            b"z",
            b"p1 \xff -  {}",
        ] {
            assert!(
                decode(ch(), Bytes::copy_from_slice(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode_probe(b"h12"), Some(12));
        assert_eq!(decode_probe(b"hx"), None);
    }
}
