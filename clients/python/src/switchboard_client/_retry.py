"""When to try a call again, and how long to wait first: shared by both clients."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on ``503`` (and ``429``) and on connection errors.

    ``attempts`` counts the first try: ``attempts=1`` never retries. The wait
    before retry *n* (1-based) is drawn uniformly from
    ``[ceiling / 2, ceiling]`` with ``ceiling = min(max_delay, base_delay * 2**(n-1))``,
    so many backends that failed together do not come back together. A
    ``Retry-After`` from the server is honoured (plus up to ``base_delay`` of
    jitter) when it is at most ``max_delay``; a longer one ends the retries and
    the error carries it as ``retry_after``.
    """

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(attempts=1)

    def delay(
        self, attempt: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` tries made so far), or None: give up."""
        if attempt >= self.attempts:
            return None
        r = rng or random
        if retry_after is not None:
            if retry_after > self.max_delay:
                return None
            return retry_after + r.uniform(0, self.base_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return r.uniform(ceiling / 2, ceiling)


RETRY_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
