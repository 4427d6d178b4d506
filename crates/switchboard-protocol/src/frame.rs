//! Encoding what the server sends (PROTOCOL §2 replies, §3 pushes).
//!
//! A publication is encoded to its `pub` frame once, when it is created; every
//! subscriber, and every later history or recovery answer, shares those bytes.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::channel::ChannelName;

/// The error codes of PROTOCOL §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    LimitExceeded,
    RateLimited,
    TooLarge,
    Internal,
    /// Not a wire error code: the HTTP API's answer when the broker cannot take
    /// a publication; clients never see it in a reply.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

const PUB_PREFIX: &[u8] = br#"{"type":"pub","#;

/// One message in a channel's stream, with its `pub` frame encoded once.
#[derive(Debug, Clone)]
pub struct Publication {
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: Arc<str>,
    /// Raw JSON text of the payload, as the publisher sent it.
    pub data: Bytes,
    /// The client publication's sender; `None` for API publications.
    pub from: Option<Arc<str>>,
    frame: Bytes,
}

fn put_json_str(buf: &mut BytesMut, s: &str) {
    // Writing into a BytesMut cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer((&mut *buf).writer(), s);
}

impl Publication {
    /// Builds the publication and encodes its frame. `data` must be valid JSON
    /// text (callers pass text that came out of a JSON parser).
    pub fn new(
        channel: ChannelName,
        offset: u64,
        epoch: Arc<str>,
        data: Bytes,
        from: Option<Arc<str>>,
    ) -> Self {
        let mut buf = BytesMut::with_capacity(
            PUB_PREFIX.len() + 64 + channel.as_str().len() + data.len() + epoch.len(),
        );
        buf.put_slice(PUB_PREFIX);
        buf.put_slice(b"\"channel\":");
        put_json_str(&mut buf, channel.as_str());
        buf.put_slice(b",\"offset\":");
        buf.put_slice(itoa(offset).as_bytes());
        buf.put_slice(b",\"epoch\":");
        put_json_str(&mut buf, &epoch);
        buf.put_slice(b",\"data\":");
        buf.put_slice(&data);
        if let Some(from) = &from {
            buf.put_slice(b",\"from\":");
            put_json_str(&mut buf, from);
        }
        buf.put_u8(b'}');
        Publication {
            channel,
            offset,
            epoch,
            data,
            from,
            frame: buf.freeze(),
        }
    }

    /// The `{"type":"pub",...}` frame, shared by every recipient.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Appends this publication as an item of a `publications` list:
    /// the `pub` frame without its `type`.
    pub fn write_item(&self, out: &mut BytesMut) {
        out.put_u8(b'{');
        out.put_slice(&self.frame[PUB_PREFIX.len()..]);
    }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

/// Writes a JSON array of publications, oldest first.
pub fn write_publications(out: &mut BytesMut, pubs: &[Arc<Publication>]) {
    out.put_u8(b'[');
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        p.write_item(out);
    }
    out.put_u8(b']');
}

fn reply_head(out: &mut BytesMut, id: Option<u64>) {
    out.put_u8(b'{');
    if let Some(id) = id {
        out.put_slice(b"\"id\":");
        out.put_slice(itoa(id).as_bytes());
        out.put_u8(b',');
    }
}

/// `{"id":..,"ok":true,"result":<result>}` where `result` is JSON text.
pub fn ok_reply(id: Option<u64>, result: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(32 + result.len());
    reply_head(&mut out, id);
    out.put_slice(b"\"ok\":true,\"result\":");
    out.put_slice(result);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"id":..,"ok":true,"result":<serialized value>}`.
pub fn ok_reply_value<T: Serialize>(id: Option<u64>, result: &T) -> Bytes {
    match serde_json::to_vec(result) {
        Ok(v) => ok_reply(id, &v),
        Err(_) => error_reply(id, ErrorCode::Internal, "could not encode the result"),
    }
}

/// `{"id":..,"ok":false,"error":{"code":..,"message":..}}`.
pub fn error_reply(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + message.len());
    reply_head(&mut out, id);
    out.put_slice(b"\"ok\":false,\"error\":{\"code\":\"");
    out.put_slice(code.as_str().as_bytes());
    out.put_slice(b"\",\"message\":");
    put_json_str(&mut out, message);
    out.put_slice(b"}}");
    out.freeze()
}

/// The `welcome` frame, the first a client receives.
pub fn welcome(client: &str, user: &str, node: &str, ping_interval_s: f64) -> Bytes {
    welcome_with_inbox(client, user, node, ping_interval_s, None)
}

/// The `welcome` frame with, for a device of an inbox, its `inbox` object
/// (`{"channel","offset","epoch","acked","unread"}`, PROTOCOL §10).
pub fn welcome_with_inbox(
    client: &str,
    user: &str,
    node: &str,
    ping_interval_s: f64,
    inbox: Option<&serde_json::Value>,
) -> Bytes {
    let mut v = serde_json::json!({
        "type": "welcome",
        "client": client,
        "user": user,
        "node": node,
        "ping_interval": ping_interval_s,
    });
    if let (Some(inbox), Some(map)) = (inbox, v.as_object_mut()) {
        map.insert("inbox".into(), inbox.clone());
    }
    Bytes::from(v.to_string())
}

/// `{"type":"pong"}` with the ping's id when it had one.
pub fn pong(id: Option<u64>) -> Bytes {
    match id {
        Some(id) => Bytes::from(format!("{{\"type\":\"pong\",\"id\":{id}}}")),
        None => Bytes::from_static(b"{\"type\":\"pong\"}"),
    }
}

/// A `join` push; `info` is raw JSON text (or `None` for none).
pub fn join(channel: &ChannelName, user: &str, client: &str, info: Option<&str>) -> Bytes {
    let mut out = BytesMut::with_capacity(96 + channel.as_str().len() + user.len());
    out.put_slice(b"{\"type\":\"join\",\"channel\":");
    put_json_str(&mut out, channel.as_str());
    out.put_slice(b",\"user\":");
    put_json_str(&mut out, user);
    out.put_slice(b",\"client\":");
    put_json_str(&mut out, client);
    if let Some(info) = info {
        out.put_slice(b",\"info\":");
        out.put_slice(info.as_bytes());
    }
    out.put_u8(b'}');
    out.freeze()
}

/// A `leave` push.
pub fn leave(channel: &ChannelName, user: &str, client: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(96 + channel.as_str().len() + user.len());
    out.put_slice(b"{\"type\":\"leave\",\"channel\":");
    put_json_str(&mut out, channel.as_str());
    out.put_slice(b",\"user\":");
    put_json_str(&mut out, user);
    out.put_slice(b",\"client\":");
    put_json_str(&mut out, client);
    out.put_u8(b'}');
    out.freeze()
}

/// A `lost` push (PROTOCOL §9): what came before `offset` in `epoch` and was
/// not yet delivered never will be; delivery goes on after `offset`.
pub fn lost(channel: &ChannelName, epoch: &str, offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(64 + channel.as_str().len() + epoch.len());
    out.put_slice(b"{\"type\":\"lost\",\"channel\":");
    put_json_str(&mut out, channel.as_str());
    out.put_slice(b",\"epoch\":");
    put_json_str(&mut out, epoch);
    out.put_slice(b",\"offset\":");
    out.put_slice(itoa(offset).as_bytes());
    out.put_u8(b'}');
    out.freeze()
}

/// The `disconnect` push sent just before the server closes; a drain adds
/// when to come back.
pub fn disconnect(code: u16, reason: &str, reconnect_after_ms: Option<u32>) -> Bytes {
    let mut v = serde_json::json!({"type": "disconnect", "code": code, "reason": reason});
    if let Some(ms) = reconnect_after_ms {
        v["reconnect_after_ms"] = ms.into();
    }
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).expect("valid JSON")
    }

    #[test]
    fn pub_frame_and_item_are_valid_json() {
        let p = Publication::new(
            ChannelName::parse("chat:a").expect("valid"),
            16,
            Arc::from("e\"1"),
            Bytes::from_static(br#"{"x":1}"#),
            Some(Arc::from("alice")),
        );
        let f = parse(p.frame());
        assert_eq!(f["type"], "pub");
        assert_eq!(f["offset"], 16);
        assert_eq!(f["epoch"], "e\"1");
        assert_eq!(f["data"]["x"], 1);
        assert_eq!(f["from"], "alice");
        let mut out = BytesMut::new();
        write_publications(&mut out, &[Arc::new(p.clone()), Arc::new(p)]);
        let items = parse(&out);
        assert_eq!(items[1]["channel"], "chat:a");
        assert!(items[1].get("type").is_none());
    }

    #[test]
    fn replies_are_valid_json() {
        assert_eq!(parse(&ok_reply(Some(1), b"{}"))["ok"], true);
        let e = parse(&error_reply(None, ErrorCode::RateLimited, "slow \"down\""));
        assert_eq!(e["error"]["code"], "rate_limited");
        assert!(e.get("id").is_none());
        assert_eq!(parse(&pong(Some(4)))["id"], 4);
        let j = parse(&join(
            &ChannelName::parse("c").expect("valid"),
            "u",
            "c-1",
            Some(r#"{"n":1}"#),
        ));
        assert_eq!(j["info"]["n"], 1);
    }
}
