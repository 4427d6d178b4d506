"""Switchboard server API client: publish, broadcast, presence, online, history,
inbox, disconnect and info, async (:class:`AsyncSwitchboard`) or blocking
(:class:`Switchboard`), with retries, idempotency keys and typed errors; and
:func:`mint_token` for backends that issue connection tokens.
"""

from ._retry import RetryPolicy
from .client import AsyncSwitchboard, Switchboard, __version__
from .errors import (
    BadRequestError,
    BadResponseError,
    ForbiddenError,
    InternalError,
    LimitExceededError,
    NotFoundError,
    RateLimitedError,
    SwitchboardError,
    TooLargeError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from .models import (
    Broadcast,
    BroadcastResult,
    DeviceCursor,
    History,
    Inbox,
    Info,
    NodeInfo,
    Online,
    Position,
    Presence,
    PresenceClient,
    Publication,
)
from .tokens import mint_token

__all__ = [
    "AsyncSwitchboard",
    "BadRequestError",
    "BadResponseError",
    "Broadcast",
    "BroadcastResult",
    "DeviceCursor",
    "ForbiddenError",
    "History",
    "Inbox",
    "Info",
    "InternalError",
    "LimitExceededError",
    "NodeInfo",
    "NotFoundError",
    "Online",
    "Position",
    "Presence",
    "PresenceClient",
    "Publication",
    "RateLimitedError",
    "RetryPolicy",
    "Switchboard",
    "SwitchboardError",
    "TooLargeError",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "__version__",
    "mint_token",
]
