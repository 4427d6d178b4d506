"""Every API call as a value: how to build its request and how to read its answer.

No I/O here. The async and the sync client both run these ``Call`` values, so
a call is described once and both clients stay the same by construction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from .errors import BadResponseError, error_from_answer
from .models import Broadcast, History, Inbox, Info, Online, Position, Presence

T = TypeVar("T")

# The characters of a channel name (PROTOCOL §7) that may stand in a path
# segment as they are; anything else is percent-encoded and the server judges it.
_PATH_SAFE = ":@=,.-_"


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any, int], T]
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    #: Sending it twice does no harm (a read, or a write carrying an
    #: idempotency key), so it may be retried after the request went out.
    #: Any call is retried when it surely did not (connect failed, or 503).
    replay_safe: bool = True

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, separators=(",", ":"), allow_nan=False).encode()


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _key(idempotency_key: str | None, auto: bool) -> str | None:
    if idempotency_key is not None:
        if not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        # The server's rule (ARCHITECTURE.md "Departures"): 1-128 printable ASCII.
        if len(idempotency_key) > 128 or not all(" " <= c <= "~" for c in idempotency_key):
            raise ValueError("idempotency_key must be at most 128 printable ASCII characters")
        return idempotency_key
    return new_idempotency_key() if auto else None


def _segment(channel: str) -> str:
    if not channel:
        raise ValueError("channel must not be empty")
    return quote(channel, safe=_PATH_SAFE)


def publish(channel: str, data: Any, idempotency_key: str | None, auto_key: bool) -> Call[Position]:
    key = _key(idempotency_key, auto_key)
    body: dict[str, Any] = {"channel": channel, "data": data}
    if key is not None:
        body["idempotency_key"] = key
    return Call(
        "POST",
        "/api/publish",
        lambda v, _s: Position.parse(v, "publish"),
        body=body,
        replay_safe=key is not None,
    )


def broadcast(
    channels: Sequence[str], data: Any, idempotency_key: str | None, auto_key: bool
) -> Call[Broadcast]:
    if isinstance(channels, str):
        raise TypeError("channels must be a list of channel names, not one string")
    key = _key(idempotency_key, auto_key)
    body: dict[str, Any] = {"channels": list(channels), "data": data}
    if key is not None:
        body["idempotency_key"] = key
    return Call("POST", "/api/broadcast", Broadcast.parse, body=body, replay_safe=key is not None)


def presence(channel: str) -> Call[Presence]:
    return Call("GET", f"/api/presence/{_segment(channel)}", lambda v, _s: Presence.parse(v))


def online() -> Call[Online]:
    return Call("GET", "/api/online", lambda v, _s: Online.parse(v))


def history(channel: str, since: Position | None, limit: int | None) -> Call[History]:
    params: dict[str, str] = {}
    if since is not None:
        params["since_offset"] = str(since.offset)
        params["epoch"] = since.epoch
    if limit is not None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        params["limit"] = str(limit)
    return Call(
        "GET", f"/api/history/{_segment(channel)}", lambda v, _s: History.parse(v), params=params
    )


def inbox(user: str) -> Call[Inbox]:
    if not user:
        raise ValueError("user must not be empty")
    return Call("GET", f"/api/inbox/{quote(user, safe='')}", lambda v, _s: Inbox.parse(v))


def _disconnected(v: Any, _status: int) -> int | None:
    n = v.get("disconnected") if isinstance(v, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def disconnect(user: str) -> Call[int | None]:
    if not user:
        raise ValueError("user must not be empty")
    return Call("POST", "/api/disconnect", _disconnected, body={"user": user})


def info() -> Call[Info]:
    return Call("GET", "/api/info", lambda v, _s: Info.parse(v))


def read_answer(call: Call[T], status: int, content: bytes, retry_after: float | None) -> T:
    """The call's result from a 2xx answer, or the typed error of any other."""
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = None
        if 200 <= status < 300:
            raise BadResponseError(f"{call.method} {call.path}: the answer is not JSON", status=status)
    if not 200 <= status < 300:
        raise error_from_answer(status, body, retry_after)
    try:
        return call.parse(body, status)
    except BadResponseError as e:
        e.status = status
        raise
