"""What the server API answers, as typed values (PROTOCOL §5).

Parsing is strict about the fields a caller relies on (a missing ``offset`` is
a :class:`~switchboard_client.errors.BadResponseError`, not a ``KeyError``) and
lenient about fields it does not know, so a newer server does not break an
older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BadResponseError, SwitchboardError, error_from_item

JSON = Any


def _obj(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise BadResponseError(f"{what}: expected a JSON object, got {type(v).__name__}")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise BadResponseError(f"{what}: expected a JSON array, got {type(v).__name__}")
    return v


def _int(d: dict[str, Any], key: str, what: str) -> int:
    v = d.get(key)
    # bool is an int in Python; the wire never means one as the other
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadResponseError(f"{what}: `{key}` is not a whole number")
    return v


def _opt_int(d: dict[str, Any], key: str, what: str) -> int | None:
    return None if d.get(key) is None else _int(d, key, what)


def _str(d: dict[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise BadResponseError(f"{what}: `{key}` is not a string")
    return v


def _opt_str(d: dict[str, Any], key: str, what: str) -> str | None:
    return None if d.get(key) is None else _str(d, key, what)


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a channel's stream: ``offset`` within ``epoch``."""

    offset: int
    epoch: str

    @classmethod
    def parse(cls, v: Any, what: str = "position") -> Position:
        d = _obj(v, what)
        return cls(offset=_int(d, "offset", what), epoch=_str(d, "epoch", what))


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """One channel's outcome in a broadcast: a position, or an error."""

    channel: str
    position: Position | None = None
    error: SwitchboardError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Broadcast:
    results: list[BroadcastResult]

    @property
    def ok(self) -> bool:
        """True when every channel took the publication."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[BroadcastResult]:
        return [r for r in self.results if not r.ok]

    @classmethod
    def parse(cls, v: Any, status: int) -> Broadcast:
        what = "broadcast"
        items = _list(_obj(v, what).get("results"), f"{what}.results")
        results = []
        for item in items:
            d = _obj(item, f"{what}.results[]")
            channel = _str(d, "channel", f"{what}.results[]")
            if "error" in d:
                results.append(BroadcastResult(channel, error=error_from_item(d["error"], status)))
            else:
                results.append(BroadcastResult(channel, position=Position.parse(d, what)))
        return cls(results)


@dataclass(frozen=True, slots=True)
class PresenceClient:
    user: str
    client: str
    node: str | None = None
    info: JSON = None


@dataclass(frozen=True, slots=True)
class Presence:
    clients: list[PresenceClient]

    @property
    def users(self) -> set[str]:
        return {c.user for c in self.clients}

    @classmethod
    def parse(cls, v: Any) -> Presence:
        what = "presence"
        out = []
        for item in _list(_obj(v, what).get("clients"), f"{what}.clients"):
            d = _obj(item, f"{what}.clients[]")
            out.append(
                PresenceClient(
                    user=_str(d, "user", what),
                    client=_str(d, "client", what),
                    node=_opt_str(d, "node", what),
                    info=d.get("info"),
                )
            )
        return cls(out)


@dataclass(frozen=True, slots=True)
class Online:
    users: list[str]
    count: int

    @classmethod
    def parse(cls, v: Any) -> Online:
        what = "online"
        d = _obj(v, what)
        users = _list(d.get("users"), f"{what}.users")
        if not all(isinstance(u, str) for u in users):
            raise BadResponseError(f"{what}.users: not all strings")
        count = _opt_int(d, "count", what)
        return cls(users=users, count=len(users) if count is None else count)


@dataclass(frozen=True, slots=True)
class Publication:
    """A stored publication, as history answers it."""

    offset: int
    data: JSON
    epoch: str | None = None
    channel: str | None = None
    sender: str | None = None  # the wire's `from`: present for client publications

    @classmethod
    def parse(cls, v: Any) -> Publication:
        what = "publication"
        d = _obj(v, what)
        return cls(
            offset=_int(d, "offset", what),
            data=d.get("data"),
            epoch=_opt_str(d, "epoch", what),
            channel=_opt_str(d, "channel", what),
            sender=_opt_str(d, "from", what),
        )


@dataclass(frozen=True, slots=True)
class History:
    publications: list[Publication]
    position: Position

    @classmethod
    def parse(cls, v: Any) -> History:
        what = "history"
        d = _obj(v, what)
        pubs = [Publication.parse(p) for p in _list(d.get("publications"), f"{what}.publications")]
        return cls(publications=pubs, position=Position.parse(d, what))


@dataclass(frozen=True, slots=True)
class DeviceCursor:
    device: str
    acked: int
    unread: int


@dataclass(frozen=True, slots=True)
class Inbox:
    """A user's inbox (PROTOCOL §10): the stream's head and each device's cursor."""

    position: Position
    devices: list[DeviceCursor]

    @classmethod
    def parse(cls, v: Any) -> Inbox:
        what = "inbox"
        d = _obj(v, what)
        devices = []
        for item in _list(d.get("devices", []), f"{what}.devices"):
            c = _obj(item, f"{what}.devices[]")
            devices.append(
                DeviceCursor(
                    device=_str(c, "device", what),
                    acked=_int(c, "acked", what),
                    unread=_int(c, "unread", what),
                )
            )
        return cls(position=Position.parse(d, what), devices=devices)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    connections: int
    subscriptions: int | None = None
    #: every field the node reported, the ones above included
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Info:
    nodes: list[NodeInfo]

    @property
    def connections(self) -> int:
        return sum(n.connections for n in self.nodes)

    @classmethod
    def parse(cls, v: Any) -> Info:
        what = "info"
        nodes = []
        for item in _list(_obj(v, what).get("nodes"), f"{what}.nodes"):
            d = _obj(item, f"{what}.nodes[]")
            nodes.append(
                NodeInfo(
                    name=_str(d, "name", what),
                    connections=_int(d, "connections", what),
                    subscriptions=_opt_int(d, "subscriptions", what),
                    raw=d,
                )
            )
        return cls(nodes)
