//! What a client's text frames ask for: commands, plain-text chat, `refresh`.

use std::sync::Arc;

use switchboard_core::{ClientHandle, Node};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::websocket::Message;
use switchboard_protocol::{Op, decode_command};

use crate::auth::Token;
use crate::http::AppState;

/// Handles one text or binary message the rate limit allowed.
pub(super) async fn handle_frame(st: &AppState, client: &Arc<ClientHandle>, m: Message) {
    let node = &st.node;
    let Message::Text(text) = m else {
        let _ = client.outbox.push(frame::error_reply(
            None,
            ErrorCode::BadRequest,
            "binary frames are not commands",
        ));
        return;
    };
    let text = text.as_str();
    let cmd = match decode_command(text) {
        Ok(c) => c,
        Err(e) => {
            if let Some(channel) = &st.text_channel
                && e.id.is_none()
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
            {
                text_chat(node, client, channel, text).await;
                return;
            }
            let _ = client
                .outbox
                .push(frame::error_reply(e.id, ErrorCode::BadRequest, &e.message));
            return;
        }
    };
    match cmd.op {
        Op::Refresh { token } => {
            let result = refresh(st, client, &Token::new(token));
            node.reply(client, cmd.id, result);
        }
        op => node.handle(client, cmd.id, op).await,
    }
}

/// A plain-text frame on a server with `text_channel`: published as
/// `{"text": ...}` from the sender, under the channel's namespace rules.
async fn text_chat(
    node: &Node,
    client: &Arc<ClientHandle>,
    channel: &switchboard_protocol::ChannelName,
    text: &str,
) {
    let data = serde_json::json!({ "text": text }).to_string();
    node.handle(
        client,
        None,
        Op::Publish {
            channel: channel.clone(),
            data: data.into_boxed_str(),
            idempotency_key: None,
        },
    )
    .await;
}

fn refresh(
    st: &AppState,
    client: &Arc<ClientHandle>,
    token: &Token,
) -> Result<bytes::Bytes, switchboard_core::CommandError> {
    use switchboard_core::CommandError;
    let claims = st
        .verifier
        .verify(token)
        .map_err(|e| CommandError::new(ErrorCode::Unauthorized, e.to_string()))?;
    let exp = claims.exp;
    // The node applies the token's exp and claims (PROTOCOL §2).
    let token = switchboard_core::ClientInit {
        user: claims.sub,
        info: claims.info.map(|v| v.to_string()),
        channels: claims.channels,
        expires_at: exp.unwrap_or(0),
        ..Default::default()
    };
    st.node.refresh(client, token)?;
    Ok(bytes::Bytes::from(
        serde_json::json!({ "expires_at": exp }).to_string(),
    ))
}
