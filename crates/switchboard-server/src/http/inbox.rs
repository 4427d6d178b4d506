//! `GET /api/inbox/{user}` (PROTOCOL §5, §10): the inbox's position and,
//! per device with a cursor, what it acknowledged and how many retained
//! publications follow.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use http::StatusCode;

use super::api::command_error;
use super::{SharedState, error, json_response};

pub async fn report(
    State(st): State<SharedState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let user = match path {
        Ok(Path(u)) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    if switchboard_protocol::ChannelName::personal(&user).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a valid user id",
        );
    }
    match st.node.inbox_report(&user).await {
        Ok(Some(body)) => json_response(StatusCode::OK, body.to_string()),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the `user` namespace is not an inbox (inbox = true)",
        ),
        Err(e) => command_error(e),
    }
}
