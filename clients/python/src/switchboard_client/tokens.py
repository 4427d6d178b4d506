"""Connection tokens for backends that issue them (PROTOCOL §1), on PyJWT."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import jwt

_REGISTERED = frozenset({"sub", "exp", "iat", "nbf", "aud", "iss", "channels", "info"})


def mint_token(
    key: str | bytes,
    sub: str,
    *,
    ttl: float | timedelta = 3600,
    channels: Sequence[str] | None = None,
    info: Mapping[str, Any] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    algorithm: str = "HS256",
    headers: Mapping[str, Any] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed connection token for user ``sub``, valid for ``ttl`` (seconds or a timedelta).

    ``key`` is the server's ``[auth] hmac_secret`` for HS256 (the default), or a
    PEM private key with ``algorithm`` ``RS256``/``ES256``/``EdDSA`` (those need
    PyJWT's ``crypto`` extra). ``channels``: names or ``prefix*`` patterns the
    user may use beyond the namespaces' rules; ``info``: a JSON object shown to
    others in presence; ``audience``/``issuer``: set them when the server
    checks ``aud``/``iss``. ``headers`` (e.g. ``{"kid": ...}``) go in the JWT header.
    """
    if not sub:
        raise ValueError("sub must not be empty")
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError("ttl must be positive")
    if algorithm.lower() == "none":
        raise ValueError("unsigned tokens are never accepted")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + int(seconds)}
    if channels is not None:
        if isinstance(channels, str):
            raise TypeError("channels must be a list of names, not one string")
        claims["channels"] = list(channels)
    if info is not None:
        claims["info"] = dict(info)
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    for k, v in (extra_claims or {}).items():
        if k in _REGISTERED:
            raise ValueError(f"claim `{k}` has its own argument")
        claims[k] = v
    return jwt.encode(claims, key, algorithm=algorithm, headers=dict(headers) if headers else None)
