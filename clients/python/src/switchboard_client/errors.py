"""Typed errors: one class per error ``code`` of the server API (PROTOCOL §2, §5).

Every error carries the HTTP ``status`` (None when no answer came), the
``code`` and the server's ``message``; catch :class:`SwitchboardError` for all
of them, or one subclass for one condition.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SwitchboardError(Exception):
    """An error answer of the server API, or a failure to get one."""

    #: The error code this class stands for; the base class takes any code.
    code_name: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.code_name or "unknown"
        #: Seconds the server asked to wait (``Retry-After``), when it did.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class BadRequestError(SwitchboardError):
    code_name = "bad_request"


class UnauthorizedError(SwitchboardError):
    code_name = "unauthorized"


class ForbiddenError(SwitchboardError):
    code_name = "forbidden"


class NotFoundError(SwitchboardError):
    code_name = "not_found"


class LimitExceededError(SwitchboardError):
    code_name = "limit_exceeded"


class RateLimitedError(SwitchboardError):
    code_name = "rate_limited"


class TooLargeError(SwitchboardError):
    code_name = "too_large"


class InternalError(SwitchboardError):
    code_name = "internal"


class UnavailableError(SwitchboardError):
    """503: the node cannot take the call now (draining, broker down); retry later."""

    code_name = "unavailable"


class TransportError(SwitchboardError):
    """No answer: the connection failed or timed out on every attempt."""

    code_name = "transport"


class BadResponseError(SwitchboardError):
    """The server answered something this client cannot read."""

    code_name = "bad_response"


_BY_CODE: dict[str, type[SwitchboardError]] = {
    cls.code_name: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        LimitExceededError,
        RateLimitedError,
        TooLargeError,
        InternalError,
        UnavailableError,
    )
}

# When the body names no code (a proxy's HTML page, say), the status decides.
_BY_STATUS: dict[int, type[SwitchboardError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    413: TooLargeError,
    429: RateLimitedError,
    500: InternalError,
    502: UnavailableError,
    503: UnavailableError,
    504: UnavailableError,
}


def error_from_answer(
    status: int, body: Any, retry_after: float | None = None
) -> SwitchboardError:
    """The typed error for an error answer: by the body's ``error.code``, else by status."""
    code: str | None = None
    message = f"HTTP {status}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            if isinstance(err.get("code"), str):
                code = err["code"]
            if isinstance(err.get("message"), str):
                message = err["message"]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status, SwitchboardError)
    return cls(message, status=status, code=code or cls.code_name or None, retry_after=retry_after)


def error_from_item(err: Any, status: int) -> SwitchboardError:
    """The typed error of one item of a multi-result answer (a broadcast's channel)."""
    return error_from_answer(status, {"error": err})
