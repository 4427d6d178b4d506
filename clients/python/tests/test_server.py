"""Every call of both clients against the real `switchboard` binary, with a
WebSocket subscriber to prove what the SDK publishes is delivered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import API_KEY, SECRET, Server
from switchboard_client import (
    AsyncSwitchboard,
    BadRequestError,
    LimitExceededError,
    NotFoundError,
    Position,
    Switchboard,
    UnauthorizedError,
    mint_token,
)


@pytest.fixture
def sb(server: Server) -> Iterator[Switchboard]:
    with Switchboard(server.url, API_KEY) as c:
        yield c


@contextmanager
def ws_connect(server: Server, user: str, **claims: Any) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    """A WebSocket client of `user`, with the welcome frame it got."""
    with connect(f"{server.ws_url}?token={mint_token(SECRET, user, **claims)}", open_timeout=5) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


def recv_until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=5))
        if pred(frame):
            return frame


def subscribe(ws: ClientConnection, channel: str, id: int = 1) -> dict[str, Any]:
    ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": id}))
    reply = recv_until(ws, lambda f: f.get("id") == id)
    assert reply["ok"], reply
    return reply


def test_publish_reaches_a_websocket_subscriber(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    channel = unique("chat:pub")
    with ws_connect(server, "alice") as (ws, _):
        subscribe(ws, channel)
        pos = sb.publish(channel, {"text": "hello from python"})
        assert pos.offset == 1 and pos.epoch
        pub = recv_until(ws, lambda f: f.get("type") == "pub")
        assert pub["channel"] == channel
        assert pub["data"] == {"text": "hello from python"}
        assert (pub["offset"], pub["epoch"]) == (pos.offset, pos.epoch)
        # an explicit idempotency key is taken as well
        assert sb.publish(channel, 2, idempotency_key="order-42").offset == 2


def test_the_async_client_publishes_to_a_users_personal_channel(server: Server, unique: Callable[[str], str]) -> None:
    user = unique("u")

    async def main() -> None:
        async with aconnect(f"{server.ws_url}?token={mint_token(SECRET, user)}") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            async with AsyncSwitchboard(server.url, API_KEY) as sb:
                pos = await sb.publish(f"user:{user}", {"n": 1})
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert frame["type"] == "pub" and frame["data"] == {"n": 1}
                assert frame["offset"] == pos.offset
                hist = await sb.history(f"user:{user}")
                assert [p.data for p in hist.publications] == [{"n": 1}]

    asyncio.run(main())


def test_broadcast_answers_one_result_per_channel(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    a, b = unique("chat:a"), unique("chat:b")
    with ws_connect(server, "alice") as (ws, _):
        subscribe(ws, a, 1)
        subscribe(ws, b, 2)
        out = sb.broadcast([a, b], {"x": 1})
        assert out.ok
        assert [(r.channel, r.position) for r in out.results] == [
            (a, out.results[0].position),
            (b, out.results[1].position),
        ]
        assert all(r.position is not None and r.position.offset == 1 for r in out.results)
        got = {recv_until(ws, lambda f: f.get("type") == "pub")["channel"] for _ in range(2)}
        assert got == {a, b}


def test_broadcast_reports_a_refused_channel(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    # `capped` keeps history in one channel at most: a second one is refused.
    first, second = unique("capped:a"), unique("capped:b")
    sb.publish(first, 0)
    try:
        out = sb.broadcast([first, second], {"x": 1})
    except LimitExceededError as e:
        # a server without per-channel results fails the whole call
        assert e.status == 400 and e.code == "limit_exceeded"
        return
    assert not out.ok
    assert out.results[0].ok
    err = out.results[1].error
    assert isinstance(err, LimitExceededError) and err.code == "limit_exceeded"


def test_presence_lists_the_subscribed_client_with_its_info(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    channel = unique("chat:presence")
    with ws_connect(server, "carol", info={"name": "Carol"}) as (ws, welcome):
        subscribe(ws, channel)
        p = sb.presence(channel)
        assert p.users == {"carol"}
        (c,) = p.clients
        assert c.client == welcome["client"] and c.info == {"name": "Carol"}
        assert c.node in (None, "py1")


def test_online_counts_a_connected_user(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    user = unique("online")
    assert user not in sb.online().users
    with ws_connect(server, user) as (ws, _):
        o = sb.online()
        assert user in o.users and o.count >= 1


def test_history_latest_and_since(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    channel = unique("chat:hist")
    for n in range(1, 4):
        sb.publish(channel, {"n": n})
    latest = sb.history(channel, limit=2)
    assert [p.offset for p in latest.publications] == [2, 3]
    assert latest.position.offset == 3
    after = sb.history(channel, since=Position(1, latest.position.epoch))
    assert [p.data for p in after.publications] == [{"n": 2}, {"n": 3}]


def test_disconnect_closes_the_users_connections_with_4000(server: Server, sb: Switchboard, unique: Callable[[str], str]) -> None:
    user = unique("kick")
    with ws_connect(server, user) as (ws, _):
        assert sb.disconnect(user) in (1, None)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000


def test_info_names_the_node_and_counts_connections(server: Server, sb: Switchboard) -> None:
    with ws_connect(server, "dave") as (ws, _):
        info = sb.info()
        assert [n.name for n in info.nodes] == ["py1"]
        assert info.connections >= 1


def test_inbox(server: Server, sb: Switchboard) -> None:
    try:
        inbox = sb.inbox("alice")
    except NotFoundError as e:
        pytest.skip(
            f"the server has no GET /api/inbox/{{user}} yet (PROTOCOL §5, §10): {e.message}; "
            "the call's request and parsing are covered by test_offline.py::test_inbox_call"
        )
    assert inbox.position.offset >= 0


def test_errors_are_typed(server: Server, sb: Switchboard) -> None:
    with Switchboard(server.url, "wrong-key") as bad:
        with pytest.raises(UnauthorizedError) as e:
            bad.online()
        assert (e.value.status, e.value.code) == (401, "unauthorized")
    with pytest.raises(BadRequestError) as b:
        sb.publish("not a channel!", 1)
    assert b.value.status == 400 and b.value.message
    with pytest.raises(BadRequestError):
        sb.history("not a channel!")


def test_the_async_client_answers_every_call_like_the_sync_one(
    server: Server, sb: Switchboard, unique: Callable[[str], str]
) -> None:
    user = unique("twin")
    channel = unique("chat:twin")
    with ws_connect(server, user) as (ws, welcome):
        subscribe(ws, channel)

        async def main() -> None:
            async with AsyncSwitchboard(server.url, API_KEY) as a:
                assert (await a.publish(channel, 1)).offset == 1
                out = await a.broadcast([channel], 2)
                pos = out.results[0].position
                assert out.ok and pos is not None and pos.offset == 2
                assert await a.presence(channel) == sb.presence(channel)
                assert [c.client for c in (await a.presence(channel)).clients] == [welcome["client"]]
                assert user in (await a.online()).users
                assert await a.history(channel) == sb.history(channel)
                assert [n.name for n in (await a.info()).nodes] == ["py1"]
                assert await a.disconnect(user) in (1, None)

        asyncio.run(main())
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=5)
