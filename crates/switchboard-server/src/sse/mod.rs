//! Server-sent events (PROTOCOL §11): `GET /sse?channel=a&channel=b`, a
//! read-only client over a `text/event-stream` response, for networks that
//! block WebSockets.
//!
//! - `event_id`: an event's `id` and the `Last-Event-ID` that resumes;
//! - `encode`: the client's frames as events;
//! - `stream`: the response body, its bounds and its end.
//!
//! The client is an ordinary node client (same checks, limits, outbox and
//! slow-consumer bound as a WebSocket one); its channels are joined with
//! `subscribe` and `since`, the recovery path every client uses.

pub mod ack;
pub mod event_id;

mod encode;
mod stream;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use switchboard_protocol::frame;
use switchboard_protocol::{ChannelName, StreamPosition};

use crate::http::front::Peer;
use crate::http::{SharedState, admission, error, unavailable};
use encode::Encoder;
use event_id::Position;
pub use stream::ConnHandle;

/// The header a browser's `EventSource` resends on reconnect.
const LAST_EVENT_ID: &str = "last-event-id";

/// What a request's query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub channels: Vec<String>,
    pub since: Option<String>,
}

/// Reads `channel` (repeated) and `since`; other keys (`token`, a cache
/// buster) are left to others.
pub fn parse_query(query: Option<&str>) -> Params {
    let mut p = Params::default();
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "channel" => p.channels.push(percent_decode(value)),
            "since" => p.since = Some(percent_decode(value)),
            _ => {}
        }
    }
    p
}

/// `application/x-www-form-urlencoded` value decoding (`+` is a space);
/// invalid escapes are kept as they are, invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `GET /sse`: the §1 checks, then the channels and the id to resume from,
/// each refused with a status and a JSON body before any event is sent.
pub async fn open(State(st): State<SharedState>, req: Request) -> Response {
    let query = req.uri().query();
    let headers = req.headers();
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let init = match admission::admit(&st, peer, query, headers).await {
        Ok(init) => init,
        Err(refusal) => return *refusal,
    };
    let params = parse_query(query);
    let max = st.node.opts.max_channels_per_client;
    let Ok(personal) = ChannelName::personal(&init.user) else {
        return bad_request("sub is not a valid user id");
    };
    // The personal channel first: its recovery is the first event.
    let mut channels = vec![personal];
    for name in &params.channels {
        let Ok(c) = ChannelName::parse(name) else {
            return bad_request(&format!("invalid channel name {name:?}"));
        };
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.len() > max {
        return error(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            &format!("at most {max} channels per connection, the personal one included"),
        );
    }
    let ns = &st.node.opts.namespaces;
    for c in &channels {
        if !ns.may_subscribe(c, &init.user, &init.channels) {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("not allowed to subscribe to {}", c.as_str()),
            );
        }
    }
    let id = match headers.get(LAST_EVENT_ID) {
        Some(v) => match v.to_str() {
            Ok(s) => Some(s.to_owned()),
            Err(_) => return bad_request("Last-Event-ID is not text"),
        },
        None => params.since.clone(),
    };
    let since: Vec<Position> = match id.as_deref().map(|s| event_id::parse(s, max)) {
        None => Vec::new(),
        Some(Ok(p)) => p,
        Some(Err(e)) => return bad_request(&format!("bad Last-Event-ID or since: {e}")),
    };
    let resumed = id.is_some_and(|s| !s.trim().is_empty());
    let conn = req.extensions().get::<Arc<ConnHandle>>().cloned();

    let client = match st.node.connect(init) {
        Ok(c) => c,
        Err(_) => return unavailable("limit_exceeded", "connection limit reached", 5),
    };
    let mut enc = Encoder::new(channels.clone(), resumed);
    enc.start_from(
        since
            .iter()
            .filter(|p| channels.contains(&p.channel))
            .cloned(),
    );
    // Each channel is joined in order; the replies reach the outbox (and
    // the body) in that order, each before its channel's next publication.
    let node = st.node.clone();
    let joining = client.clone();
    tokio::spawn(async move {
        for (i, channel) in channels.iter().enumerate() {
            let id = Some(i as u64 + 1);
            let from = since
                .iter()
                .find(|p| &p.channel == channel)
                .map(|p| StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                });
            if let Err(e) = node.subscribe(&joining, id, channel, from).await {
                if joining.is_removed() {
                    return;
                }
                let _ = joining
                    .outbox
                    .push(frame::error_reply(id, e.code, &e.message));
            }
        }
    });
    let body = stream::SseBody::new(st.clone(), client, enc, conn);
    let mut r = Response::new(Body::new(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A proxy must pass events on as they come (nginx buffers otherwise).
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The connection ends with the stream: nothing waits behind it.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_gives_channels_and_since() {
        let p = parse_query(Some(
            "token=x&channel=chat%3Alobby&channel=news&since=a%3Ae%3A1&_=5",
        ));
        assert_eq!(p.channels, vec!["chat:lobby", "news"]);
        assert_eq!(p.since.as_deref(), Some("a:e:1"));
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(parse_query(None), Params::default());
    }
}
