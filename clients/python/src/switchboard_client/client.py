"""The server API clients: :class:`AsyncSwitchboard` (asyncio) and its sync twin :class:`Switchboard`.

Both run the same :mod:`._calls` values through the same retry decision; they
differ only in how they send a request and how they wait.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call
from ._retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from .errors import TransportError
from .models import Broadcast, History, Inbox, Info, Online, Position, Presence

T = TypeVar("T")

__version__ = "0.1.0"
_USER_AGENT = f"switchboard-client-python/{__version__}"

# Failures where the request surely never reached the server: any call may be sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class _Settings:
    """What both clients share: where, with which key, and how to retry."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        retries: RetryPolicy | None,
        idempotency_keys: bool,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("SWITCHBOARD_API_KEY")
        if not key:
            raise ValueError("an API key is required (api_key=... or SWITCHBOARD_API_KEY)")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries or RetryPolicy.never()
        self.idempotency_keys = idempotency_keys
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }

    def request(self, call: Call[Any]) -> dict[str, Any]:
        headers = dict(self._headers)
        content = call.content()
        if content is not None:
            headers["Content-Type"] = "application/json"
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "params": call.params or None,
            "content": content,
            "headers": headers,
            "timeout": self.timeout,
        }

    def wait_after_error(self, call: Call[Any], attempt: int, exc: httpx.TransportError) -> float | None:
        """Seconds to wait before trying again after a connection error, or None: give up."""
        if not isinstance(exc, _NOT_SENT) and not call.replay_safe:
            # It may have been published: sending it again could publish it twice.
            return None
        return self.retries.delay(attempt, None)

    def wait_after_status(self, attempt: int, status: int, retry_after: float | None) -> float | None:
        if status not in RETRY_STATUSES:
            return None
        return self.retries.delay(attempt, retry_after)


def _transport_error(call: Call[Any], attempt: int, exc: httpx.TransportError) -> TransportError:
    return TransportError(
        f"{call.method} {call.path}: {type(exc).__name__}: {exc} (after {attempt} attempt(s))"
    )


class AsyncSwitchboard:
    """Async client of the Switchboard server API (PROTOCOL §5), on ``httpx``.

    >>> async with AsyncSwitchboard("http://127.0.0.1:8000", api_key="...") as sb:
    ...     pos = await sb.publish("news", {"title": "hello"})

    ``retries``: a :class:`RetryPolicy` (default: 4 attempts) or ``None`` for
    one attempt. ``idempotency_keys``: give every publish and broadcast a fresh
    key unless one is passed, so a retried call is published once.
    ``http_client``: an ``httpx.AsyncClient`` of your own (not closed by ``aclose``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: RetryPolicy | None = RetryPolicy(),
        idempotency_keys: bool = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._s = _Settings(base_url, api_key, timeout, retries, idempotency_keys)
        self._own = http_client is None
        self._http = http_client or httpx.AsyncClient()

    async def __aenter__(self) -> AsyncSwitchboard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._http.request(**self._s.request(call))
            except httpx.TransportError as exc:
                wait = self._s.wait_after_error(call, attempt, exc)
                if wait is None:
                    raise _transport_error(call, attempt, exc) from exc
                await asyncio.sleep(wait)
                continue
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            wait = self._s.wait_after_status(attempt, resp.status_code, retry_after)
            if wait is not None:
                await asyncio.sleep(wait)
                continue
            return _calls.read_answer(call, resp.status_code, resp.content, retry_after)

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> Position:
        """Publishes ``data`` (any JSON value) to ``channel``; answers its position once stored."""
        return await self._run(_calls.publish(channel, data, idempotency_key, self._s.idempotency_keys))

    async def broadcast(
        self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None
    ) -> Broadcast:
        """Publishes ``data`` to every channel; the answer has one result per channel."""
        return await self._run(_calls.broadcast(channels, data, idempotency_key, self._s.idempotency_keys))

    async def presence(self, channel: str) -> Presence:
        return await self._run(_calls.presence(channel))

    async def online(self) -> Online:
        return await self._run(_calls.online())

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> History:
        """Stored publications, oldest first: after ``since`` when given, else the latest ``limit``."""
        return await self._run(_calls.history(channel, since, limit))

    async def inbox(self, user: str) -> Inbox:
        """The user's inbox head and each device's acknowledged cursor (PROTOCOL §10)."""
        return await self._run(_calls.inbox(user))

    async def disconnect(self, user: str) -> int | None:
        """Closes every connection of ``user`` (close code 4000); how many, when the server says."""
        return await self._run(_calls.disconnect(user))

    async def info(self) -> Info:
        return await self._run(_calls.info())


class Switchboard:
    """The blocking twin of :class:`AsyncSwitchboard`: the same calls, answers and errors."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: RetryPolicy | None = RetryPolicy(),
        idempotency_keys: bool = True,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._s = _Settings(base_url, api_key, timeout, retries, idempotency_keys)
        self._own = http_client is None
        self._http = http_client or httpx.Client()

    def __enter__(self) -> Switchboard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _run(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._http.request(**self._s.request(call))
            except httpx.TransportError as exc:
                wait = self._s.wait_after_error(call, attempt, exc)
                if wait is None:
                    raise _transport_error(call, attempt, exc) from exc
                time.sleep(wait)
                continue
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            wait = self._s.wait_after_status(attempt, resp.status_code, retry_after)
            if wait is not None:
                time.sleep(wait)
                continue
            return _calls.read_answer(call, resp.status_code, resp.content, retry_after)

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> Position:
        """Publishes ``data`` (any JSON value) to ``channel``; answers its position once stored."""
        return self._run(_calls.publish(channel, data, idempotency_key, self._s.idempotency_keys))

    def broadcast(
        self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None
    ) -> Broadcast:
        """Publishes ``data`` to every channel; the answer has one result per channel."""
        return self._run(_calls.broadcast(channels, data, idempotency_key, self._s.idempotency_keys))

    def presence(self, channel: str) -> Presence:
        return self._run(_calls.presence(channel))

    def online(self) -> Online:
        return self._run(_calls.online())

    def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> History:
        """Stored publications, oldest first: after ``since`` when given, else the latest ``limit``."""
        return self._run(_calls.history(channel, since, limit))

    def inbox(self, user: str) -> Inbox:
        """The user's inbox head and each device's acknowledged cursor (PROTOCOL §10)."""
        return self._run(_calls.inbox(user))

    def disconnect(self, user: str) -> int | None:
        """Closes every connection of ``user`` (close code 4000); how many, when the server says."""
        return self._run(_calls.disconnect(user))

    def info(self) -> Info:
        return self._run(_calls.info())
