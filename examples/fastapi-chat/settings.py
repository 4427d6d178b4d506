"""What the example reads from the environment, checked once at start.

The names are the gateway's own (``SWITCHBOARD_AUTH_HMAC_SECRET``,
``SWITCHBOARD_API_KEY``), so one set of variables configures both processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit


class SettingsError(Exception):
    """A variable is missing or wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    #: Where this backend reaches the gateway's HTTP API.
    switchboard_url: str
    #: The ``/ws`` URL the browser connects to; None: the page's own host name
    #: with the gateway's port (cookies are per host, not per port).
    public_ws_url: str | None
    api_key: str
    hmac_secret: str
    #: How long a login lasts: the ``sb_token`` cookie and the JWT in it.
    session_ttl: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        url = e.get("SWITCHBOARD_URL", "http://127.0.0.1:8000").rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"SWITCHBOARD_URL must be http(s)://host[:port], got `{url}`")
        public = e.get("SWITCHBOARD_PUBLIC_URL") or None
        if public is not None and urlsplit(public).scheme not in ("ws", "wss"):
            raise SettingsError("SWITCHBOARD_PUBLIC_URL must start with ws:// or wss://")
        key = e.get("SWITCHBOARD_API_KEY", "")
        if not key:
            raise SettingsError("SWITCHBOARD_API_KEY is required (the gateway's [api] key)")
        secret = e.get("SWITCHBOARD_AUTH_HMAC_SECRET", "")
        # The gateway refuses shorter secrets; failing here says so before the first login.
        if len(secret.encode()) < 16:
            raise SettingsError(
                "SWITCHBOARD_AUTH_HMAC_SECRET is required, at least 16 bytes "
                "(the gateway's [auth] hmac_secret)"
            )
        ttl_text = e.get("SESSION_TTL", "28800")
        try:
            ttl = int(ttl_text)
        except ValueError:
            raise SettingsError(f"SESSION_TTL must be whole seconds, got `{ttl_text}`") from None
        if ttl <= 0:
            raise SettingsError("SESSION_TTL must be positive")
        return cls(url, public, key, secret, ttl)

    def ws_url_for(self, page_host: str) -> str:
        """The ``/ws`` URL for a page served from ``page_host`` (the request's host name)."""
        if self.public_ws_url:
            return self.public_ws_url
        parts = urlsplit(self.switchboard_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        port = f":{parts.port}" if parts.port else ""
        host = f"[{page_host}]" if ":" in page_host else page_host
        return f"{scheme}://{host}{port}/ws"
