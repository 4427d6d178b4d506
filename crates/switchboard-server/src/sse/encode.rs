//! A client's outgoing frames as server-sent events (PROTOCOL §11).
//!
//! The node queues the same JSON frames for an SSE client as for a WebSocket
//! one; this turns each into an event: `pub` and `lost` carry an `id` that
//! resumes every channel of the stream (see [`super::event_id`]), the reply
//! to each channel's subscribe becomes `event: recovered` (on a resumed
//! stream) or an `id` alone (so a reconnect before the first publication
//! still resumes), and a keep-alive ping is a `: ping` comment.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_core::Out;
use switchboard_protocol::ChannelName;

use super::event_id::{self, Position};

/// The fields of a frame this encoder reads; the rest (`data`) is skipped.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
    offset: Option<u64>,
    id: Option<u64>,
    ok: Option<bool>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// A subscribe reply's result.
#[derive(Deserialize)]
struct Joined<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    recovered: bool,
    #[serde(borrow)]
    publications: Vec<&'a RawValue>,
}

/// One stream's encoder: where each channel stands, and which subscribe
/// reply is whose.
pub(super) struct Encoder {
    positions: Vec<Position>,
    /// Subscribe ids are indexes here plus one.
    channels: Vec<ChannelName>,
    /// The stream resumes a `Last-Event-ID`: each channel's reply is an
    /// `event: recovered`.
    resumed: bool,
}

impl Encoder {
    pub(super) fn new(channels: Vec<ChannelName>, resumed: bool) -> Self {
        Encoder {
            positions: Vec::with_capacity(channels.len()),
            channels,
            resumed,
        }
    }

    /// Appends `out` as an event (or nothing: a welcome, a control frame).
    pub(super) fn encode(&mut self, out: &Out, buf: &mut BytesMut) {
        match out {
            Out::Ping => buf.put_slice(b": ping\n\n"),
            Out::Control(..) => {}
            Out::Frame(frame) => self.frame(frame, buf),
        }
    }

    /// The server's last word: `event: disconnect` with the §3 frame.
    pub(super) fn disconnect(&self, frame: &[u8], buf: &mut BytesMut) {
        event(buf, Some("disconnect"), None, frame);
    }

    fn set(&mut self, channel: &ChannelName, epoch: &str, offset: u64) -> usize {
        match self.positions.iter().position(|p| &p.channel == channel) {
            Some(i) => {
                let p = &mut self.positions[i];
                if p.epoch != epoch {
                    p.epoch = epoch.to_owned();
                }
                p.offset = offset;
                i
            }
            None => {
                self.positions.push(Position {
                    channel: channel.clone(),
                    epoch: epoch.to_owned(),
                    offset,
                });
                self.positions.len() - 1
            }
        }
    }

    /// The id after moving `channel` to `epoch`/`offset`; `None` when the
    /// frame's position cannot be an id (then the event carries none and
    /// the browser keeps the last one).
    fn id_after(&mut self, channel: &str, epoch: &str, offset: u64) -> Option<BytesMut> {
        let channel = ChannelName::parse(channel).ok()?;
        if !event_id::valid_epoch(epoch) {
            return None;
        }
        let i = self.set(&channel, epoch, offset);
        let mut id = BytesMut::with_capacity(64 * self.positions.len());
        event_id::render(Some(&self.positions[i]), &self.positions, &mut id);
        Some(id)
    }

    fn frame(&mut self, frame: &Bytes, buf: &mut BytesMut) {
        let Ok(head) = serde_json::from_slice::<Head>(frame) else {
            return;
        };
        match head.kind.as_deref() {
            Some("pub") | Some("lost") => {
                let id = match (&head.channel, &head.epoch, head.offset) {
                    (Some(c), Some(e), Some(o)) => self.id_after(c, e, o),
                    _ => None,
                };
                event(buf, head.kind.as_deref(), id.as_deref(), frame);
            }
            // Nothing a reader of events needs: the stream is its connection.
            Some("welcome") | Some("pong") => {}
            Some(kind) => event(buf, Some(kind), None, frame),
            None => self.reply(&head, buf),
        }
    }

    /// A subscribe reply, told from the others by its id.
    fn reply(&mut self, head: &Head<'_>, buf: &mut BytesMut) {
        let Some(channel) = head
            .id
            .and_then(|id| usize::try_from(id).ok()?.checked_sub(1))
            .and_then(|i| self.channels.get(i).cloned())
        else {
            return;
        };
        let channel_json = serde_json::to_string(channel.as_str()).unwrap_or_default();
        if head.ok != Some(true) {
            let error = head.error.map_or("null", RawValue::get);
            let data = format!("{{\"channel\":{channel_json},\"error\":{error}}}");
            event(buf, Some("error"), None, data.as_bytes());
            return;
        }
        let Some(joined) = head
            .result
            .and_then(|r| serde_json::from_str::<Joined>(r.get()).ok())
        else {
            return;
        };
        if !self.resumed {
            let id = self.id_after(channel.as_str(), &joined.epoch, joined.offset);
            event(buf, None, id.as_deref(), b"");
            return;
        }
        // `recovered` first, its id still where the stream stood (the
        // publications that follow move it), so a reconnect right after
        // it asks for them again. Its `offset`/`epoch` are the channel's
        // position at the join: the publications up to it that follow are
        // the replay, so a client can tell them from live ones.
        let epoch_json = serde_json::to_string(joined.epoch.as_ref()).unwrap_or_default();
        let data = format!(
            "{{\"channel\":{channel_json},\"recovered\":{},\"offset\":{},\"epoch\":{epoch_json}}}",
            joined.recovered, joined.offset
        );
        let id = if joined.recovered {
            let since = self
                .positions
                .iter()
                .position(|p| p.channel == channel)
                .map(|i| self.positions[i].clone());
            match since {
                Some(p) => self.id_after(channel.as_str(), &p.epoch, p.offset),
                None => None,
            }
        } else {
            self.id_after(channel.as_str(), &joined.epoch, joined.offset)
        };
        event(buf, Some("recovered"), id.as_deref(), data.as_bytes());
        for item in joined.publications {
            // A `publications` item is the `pub` frame without its `type`.
            let Some(fields) = item.get().strip_prefix('{') else {
                continue;
            };
            let mut frame = BytesMut::with_capacity(item.get().len() + 14);
            frame.put_slice(b"{\"type\":\"pub\",");
            frame.put_slice(fields.as_bytes());
            self.frame(&frame.freeze(), buf);
        }
        if joined.recovered {
            self.set(&channel, &joined.epoch, joined.offset);
        }
    }

    /// Where the stream stood before it was opened: the positions a resumed
    /// stream starts from (its `recovered` events report each channel's).
    pub(super) fn start_from(&mut self, positions: impl IntoIterator<Item = Position>) {
        for p in positions {
            self.set(&p.channel, &p.epoch, p.offset);
        }
    }
}

/// Writes one event. `data` is split at line ends (JSON may hold raw ones
/// as whitespace); a reader joins the `data` lines with `\n`, which is JSON
/// whitespace too. No data and no kind: an `id` alone, which moves the
/// browser's last id without dispatching anything.
fn event(buf: &mut BytesMut, kind: Option<&str>, id: Option<&[u8]>, data: &[u8]) {
    if let Some(kind) = kind {
        buf.put_slice(b"event: ");
        buf.put_slice(kind.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id);
        buf.put_u8(b'\n');
    }
    if !data.is_empty() || kind.is_some() {
        for line in data.split(|b| *b == b'\n' || *b == b'\r') {
            buf.put_slice(b"data: ");
            buf.put_slice(line);
            buf.put_u8(b'\n');
        }
    }
    buf.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).expect("channel")
    }

    fn encode(enc: &mut Encoder, frame: &str) -> String {
        let mut buf = BytesMut::new();
        enc.encode(&Out::Frame(Bytes::from(frame.to_owned())), &mut buf);
        String::from_utf8(buf.to_vec()).expect("utf-8")
    }

    #[test]
    fn publications_carry_an_id_that_resumes_every_channel() {
        let mut enc = Encoder::new(vec![ch("user:al"), ch("news")], false);
        assert_eq!(
            encode(
                &mut enc,
                r#"{"id":1,"ok":true,"result":{"offset":0,"epoch":"e1","recovered":false,"publications":[]}}"#
            ),
            "id: user:al:e1:0\n\n"
        );
        let pub_frame = "{\"type\":\"pub\",\"channel\":\"news\",\"offset\":4,\"epoch\":\"e2\",\"data\":{\"a\":\n1}}";
        assert_eq!(
            encode(&mut enc, pub_frame),
            "event: pub\nid: news:e2:4;user:al:e1:0\ndata: {\"type\":\"pub\",\"channel\":\"news\",\"offset\":4,\"epoch\":\"e2\",\"data\":{\"a\":\ndata: 1}}\n\n"
        );
        assert_eq!(encode(&mut enc, r#"{"type":"welcome","client":"c"}"#), "");
        let mut buf = BytesMut::new();
        enc.encode(&Out::Ping, &mut buf);
        assert_eq!(&buf[..], b": ping\n\n");
    }

    #[test]
    fn a_resumed_channel_reports_recovered_then_its_publications() {
        let mut enc = Encoder::new(vec![ch("news")], true);
        enc.start_from([Position {
            channel: ch("news"),
            epoch: "e".into(),
            offset: 1,
        }]);
        let out = encode(
            &mut enc,
            r#"{"id":1,"ok":true,"result":{"offset":2,"epoch":"e","recovered":true,"publications":[{"channel":"news","offset":2,"epoch":"e","data":1}]}}"#,
        );
        assert_eq!(
            out,
            "event: recovered\nid: news:e:1\ndata: {\"channel\":\"news\",\"recovered\":true,\"offset\":2,\"epoch\":\"e\"}\n\n\
             event: pub\nid: news:e:2\ndata: {\"type\":\"pub\",\"channel\":\"news\",\"offset\":2,\"epoch\":\"e\",\"data\":1}\n\n"
        );
        let out = encode(
            &mut enc,
            r#"{"id":1,"ok":false,"error":{"code":"forbidden","message":"no"}}"#,
        );
        assert_eq!(
            out,
            "event: error\ndata: {\"channel\":\"news\",\"error\":{\"code\":\"forbidden\",\"message\":\"no\"}}\n\n"
        );
    }
}
