"""Retries, idempotency keys, parsing and errors against a scripted local HTTP
server standing in for the network, and mint_token."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import jwt
import pytest

from conftest import Answer, Scripted
from switchboard_client import (
    AsyncSwitchboard,
    BadResponseError,
    ForbiddenError,
    LimitExceededError,
    Position,
    RetryPolicy,
    Switchboard,
    SwitchboardError,
    TransportError,
    UnavailableError,
    mint_token,
)

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=2.0)
POS = {"offset": 7, "epoch": "e1"}


def client(s: Scripted, **kw: object) -> Switchboard:
    return Switchboard(s.url, "k", retries=kw.pop("retries", FAST), **kw)  # type: ignore[arg-type]


def test_503_with_retry_after_is_retried_after_the_wait_with_the_same_key(scripted: Scripted) -> None:
    scripted.answer(
        Answer(503, {"error": {"code": "unavailable", "message": "draining"}}, {"Retry-After": "1"}),
        Answer(200, POS),
    )
    started = time.monotonic()
    with client(scripted) as sb:
        assert sb.publish("news", {"a": 1}) == Position(7, "e1")
    assert time.monotonic() - started >= 1.0, "Retry-After was not honoured"
    first, second = scripted.seen
    assert first.body["idempotency_key"] == second.body["idempotency_key"]
    assert first.headers["Authorization"] == "Bearer k"


def test_the_async_twin_retries_the_same_way(scripted: Scripted) -> None:
    scripted.answer(Answer(503, None, {"Retry-After": "0"}), Answer(503), Answer(200, {"results": []}))

    async def main() -> None:
        async with AsyncSwitchboard(scripted.url, "k", retries=FAST) as sb:
            assert (await sb.broadcast(["a"], 1)).results == []

    asyncio.run(main())
    assert len(scripted.seen) == 3
    assert len({s.body["idempotency_key"] for s in scripted.seen}) == 1


def test_a_dropped_connection_is_retried_for_a_publish_with_a_key(scripted: Scripted) -> None:
    scripted.answer(Answer(hang_up=True), Answer(200, POS))
    with client(scripted) as sb:
        assert sb.publish("news", 1).offset == 7
    assert len(scripted.seen) == 2


def test_a_publish_without_a_key_is_not_sent_twice_after_a_dropped_connection(scripted: Scripted) -> None:
    scripted.answer(Answer(hang_up=True), Answer(200, POS))
    with client(scripted, idempotency_keys=False) as sb:
        with pytest.raises(TransportError):
            sb.publish("news", 1)
    assert len(scripted.seen) == 1
    assert "idempotency_key" not in scripted.seen[0].body


def test_attempts_are_bounded_and_the_error_is_typed(scripted: Scripted) -> None:
    scripted.answer(Answer(503, {"error": {"code": "unavailable", "message": "broker down"}}, {"Retry-After": "0"}))
    with client(scripted) as sb:
        with pytest.raises(UnavailableError) as e:
            sb.online()
    assert len(scripted.seen) == FAST.attempts
    assert (e.value.status, e.value.code, e.value.message) == (503, "unavailable", "broker down")
    assert e.value.retry_after == 0


def test_a_retry_after_beyond_max_delay_is_not_waited_for(scripted: Scripted) -> None:
    scripted.answer(Answer(503, None, {"Retry-After": "120"}))
    with client(scripted) as sb:
        with pytest.raises(UnavailableError) as e:
            sb.info()
    assert len(scripted.seen) == 1 and e.value.retry_after == 120


def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with Switchboard(f"http://127.0.0.1:{port}", "k", retries=FAST) as sb:
        with pytest.raises(TransportError) as e:
            sb.online()
    assert "3 attempt" in e.value.message and e.value.status is None


def test_no_retries_when_told(scripted: Scripted) -> None:
    scripted.answer(Answer(503))
    with client(scripted, retries=None) as sb:
        with pytest.raises(UnavailableError):
            sb.online()
    assert len(scripted.seen) == 1


def test_idempotency_keys_are_fresh_per_call_unless_given(scripted: Scripted) -> None:
    scripted.answer(Answer(200, POS))
    with client(scripted) as sb:
        sb.publish("a", 1)
        sb.publish("a", 1)
        sb.publish("a", 1, idempotency_key="mine")
    keys = [s.body["idempotency_key"] for s in scripted.seen]
    assert keys[0] != keys[1] and keys[2] == "mine"


def test_every_call_builds_the_contracts_request(scripted: Scripted) -> None:
    scripted.answer(Answer(200, {}))
    with client(scripted, retries=None) as sb:
        for call in (
            lambda: sb.presence("chat:a@b"),
            lambda: sb.online(),
            lambda: sb.history("chat:x", since=Position(3, "ep"), limit=5),
            lambda: sb.disconnect("bob"),
            lambda: sb.info(),
            lambda: sb.inbox("alice"),
        ):
            try:
                call()
            except BadResponseError:
                pass  # `{}` is not a valid answer for most; the request is what is checked
    got = [(s.method, s.path, s.body) for s in scripted.seen]
    assert got == [
        ("GET", "/api/presence/chat:a@b", None),
        ("GET", "/api/online", None),
        ("GET", "/api/history/chat:x?since_offset=3&epoch=ep&limit=5", None),
        ("POST", "/api/disconnect", {"user": "bob"}),
        ("GET", "/api/info", None),
        ("GET", "/api/inbox/alice", None),
    ]


def test_inbox_call(scripted: Scripted) -> None:
    scripted.answer(
        Answer(200, {"offset": 9, "epoch": "e", "devices": [{"device": "phone", "acked": 7, "unread": 2}]})
    )
    with client(scripted) as sb:
        inbox = sb.inbox("alice")
    assert inbox.position == Position(9, "e")
    assert [(d.device, d.acked, d.unread) for d in inbox.devices] == [("phone", 7, 2)]


def test_broadcast_per_channel_errors_are_typed(scripted: Scripted) -> None:
    scripted.answer(
        Answer(
            200,
            {
                "results": [
                    {"channel": "a", "offset": 1, "epoch": "e"},
                    {"channel": "b", "error": {"code": "forbidden", "message": "no"}},
                    {"channel": "c", "error": {"code": "limit_exceeded", "message": "cap"}},
                ]
            },
        )
    )
    with client(scripted) as sb:
        out = sb.broadcast(["a", "b", "c"], 1)
    assert not out.ok and [r.channel for r in out.failed] == ["b", "c"]
    assert isinstance(out.results[1].error, ForbiddenError)
    assert isinstance(out.results[2].error, LimitExceededError)
    assert out.results[0].position == Position(1, "e")


def test_a_garbled_answer_is_a_bad_response_not_a_crash(scripted: Scripted) -> None:
    scripted.answer(Answer(200, {"offset": "seven", "epoch": 1}))
    with client(scripted) as sb:
        with pytest.raises(BadResponseError) as e:
            sb.publish("a", 1)
    assert e.value.status == 200


def test_an_unknown_code_is_still_a_switchboard_error(scripted: Scripted) -> None:
    scripted.answer(Answer(418, {"error": {"code": "teapot", "message": "short and stout"}}))
    with client(scripted) as sb:
        with pytest.raises(SwitchboardError) as e:
            sb.online()
    assert (e.value.status, e.value.code) == (418, "teapot")


def test_arguments_are_checked_before_sending() -> None:
    with Switchboard("http://127.0.0.1:1", "k") as sb:
        with pytest.raises(TypeError):
            sb.broadcast("chat:a", 1)  # one string, not a list
        with pytest.raises(ValueError):
            sb.history("", limit=1)
    with pytest.raises(ValueError):
        Switchboard("127.0.0.1:8000", "k")


def test_mint_token_claims() -> None:
    t = mint_token(
        "s" * 32,
        "alice",
        ttl=timedelta(minutes=5),
        channels=["vip:*"],
        info={"name": "Alice"},
        audience="app",
        issuer="auth",
        now=1_000,
    )
    claims = jwt.decode(t, "s" * 32, algorithms=["HS256"], audience="app", issuer="auth", options={"verify_exp": False})
    assert claims == {
        "sub": "alice",
        "iat": 1_000,
        "exp": 1_300,
        "channels": ["vip:*"],
        "info": {"name": "Alice"},
        "aud": "app",
        "iss": "auth",
    }
    with pytest.raises(ValueError):
        mint_token("s" * 32, "")
    with pytest.raises(ValueError):
        mint_token("s" * 32, "a", ttl=0)
    with pytest.raises(ValueError):
        mint_token("s" * 32, "a", extra_claims={"sub": "b"})
