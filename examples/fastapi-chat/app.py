"""The FastAPI guide's chat and notification example, rebuilt on Switchboard.

The guide's app holds every WebSocket itself (a ConnectionManager, a receive
loop, broadcast with asyncio.gather, Redis pub/sub between workers, heartbeat
tasks). Here FastAPI keeps only what is its own: who the user is (login sets an
HttpOnly ``sb_token`` cookie holding a Switchboard connection token), what may
be said (validated POSTs), and publishing it through the Python SDK. The
browser holds its connection to the gateway with the JS SDK; the gateway does
the fan-out, presence, heartbeats, limits and recovery after reconnects.

Run: see README.md. docs/fastapi-migration.md maps each part of the guide.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Annotated

import jwt
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from switchboard_client import (
    AsyncSwitchboard,
    RateLimitedError,
    RetryPolicy,
    SwitchboardError,
    TooLargeError,
    TransportError,
    UnavailableError,
    mint_token,
)

from settings import Settings

log = logging.getLogger("fastapi-chat")

HERE = FsPath(__file__).resolve().parent
STATIC = HERE / "static"
# The JS SDK is served from the repository's clients/js: no copy to keep in step.
SDK_DIR = FsPath(os.environ.get("SWITCHBOARD_JS_SDK_DIR", HERE.parent.parent / "clients" / "js"))
SDK_FILES = frozenset({"switchboard.js", "sse.js"})

COOKIE = "sb_token"  # the gateway's [auth] cookie_name (its default)
CHAT = "chat:lobby"
NAME = r"^[A-Za-z0-9_-]{1,32}$"
KEY = r"^[A-Za-z0-9_-]{1,64}$"

# Enough attempts to ride out a gateway restart of a few seconds (about 6 s of
# waiting in all); past that the page gets a 503 and retries with the same key.
RETRIES = RetryPolicy(attempts=6, base_delay=0.25, max_delay=2.0)

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]


class Login(BaseModel):
    user: str = Field(pattern=NAME)


class ChatMessage(BaseModel):
    text: Text
    #: Chosen by the page once per message and sent again on its retries, so a
    #: message whose answer was lost is published once.
    key: str = Field(pattern=KEY)


class Notification(BaseModel):
    text: Text
    key: str | None = Field(default=None, pattern=KEY)


def error_body(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Errors in the gateway's own shape, so the page reads one kind."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# ---- dependencies -----------------------------------------------------------------


def settings_of(request: Request) -> Settings:
    cfg: Settings = request.app.state.settings
    return cfg


def gateway(request: Request) -> AsyncSwitchboard:
    sb: AsyncSwitchboard = request.app.state.sb
    return sb


def session_user(request: Request) -> str | None:
    """The user whose valid ``sb_token`` cookie came with the request: the gateway's
    token is also this app's session (one secret, one expiry)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        claims = jwt.decode(
            token,
            settings_of(request).hmac_secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
        )
    except jwt.PyJWTError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


def current_user(request: Request) -> str:
    user = session_user(request)
    if user is None:
        raise HTTPException(401, "log in first")
    return user


User = Annotated[str, Depends(current_user)]
Gateway = Annotated[AsyncSwitchboard, Depends(gateway)]
Config = Annotated[Settings, Depends(settings_of)]

router = APIRouter()

# ---- pages ------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    if session_user(request):
        return RedirectResponse("/chat", status_code=303)
    return FileResponse(STATIC / "index.html")


@router.get("/chat", include_in_schema=False)
async def chat_page(request: Request) -> Response:
    if not session_user(request):
        return RedirectResponse("/", status_code=303)
    return FileResponse(STATIC / "chat.html")


@router.get("/sdk/{name}", include_in_schema=False)
async def sdk(name: str) -> FileResponse:
    if name not in SDK_FILES:
        raise HTTPException(404, "no such file")
    return FileResponse(SDK_DIR / name, media_type="text/javascript")


# ---- session ----------------------------------------------------------------------


@router.post("/login")
async def login(body: Login, request: Request, response: Response, cfg: Config) -> dict[str, str]:
    # A real app checks a password or an SSO answer here; the example takes the name.
    token = mint_token(cfg.hmac_secret, body.user, ttl=cfg.session_ttl, info={"name": body.user})
    # HttpOnly: page scripts never see it; the browser sends it with the WebSocket
    # upgrade to the gateway on the same host name (any port).
    response.set_cookie(
        COOKIE,
        token,
        max_age=cfg.session_ttl,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return {"user": body.user}


@router.post("/logout", status_code=204)
async def logout(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")


@router.get("/me")
async def me(user: User, request: Request, cfg: Config) -> dict[str, str]:
    ws_url = cfg.ws_url_for(request.url.hostname or "127.0.0.1")
    return {"user": user, "ws_url": ws_url, "channel": CHAT}


# ---- what the guide's WebSocket endpoint did --------------------------------------


@router.post("/chat")
async def say(body: ChatMessage, user: User, sb: Gateway) -> dict[str, int | str]:
    """The guide's receive loop + broadcast: one publish, the gateway fans it out."""
    pos = await sb.publish(
        CHAT, {"user": user, "text": body.text}, idempotency_key=f"chat-{user}-{body.key}"
    )
    return {"offset": pos.offset, "epoch": pos.epoch}


@router.post("/notify/{to}")
async def notify(
    to: Annotated[str, Path(pattern=NAME)], body: Notification, user: User, sb: Gateway
) -> dict[str, int | str]:
    """The guide's send_personal_message: every tab and device of `to`, now or when it is back."""
    key = f"note-{user}-{body.key}" if body.key else None
    pos = await sb.publish(f"user:{to}", {"sender": user, "text": body.text}, idempotency_key=key)
    return {"offset": pos.offset, "epoch": pos.epoch}


@router.get("/history")
async def recent(user: User, sb: Gateway) -> dict[str, object]:
    """The lobby's latest messages and where they end: the page subscribes from there."""
    h = await sb.history(CHAT, limit=50)
    return {
        "publications": [{"offset": p.offset, "data": p.data} for p in h.publications],
        "offset": h.position.offset,
        "epoch": h.position.epoch,
    }


@router.get("/who")
async def who(user: User, sb: Gateway) -> dict[str, list[str]]:
    """Who is in the lobby now, on every gateway node (the guide's presence keys)."""
    return {"users": sorted((await sb.presence(CHAT)).users)}


# ---- errors -----------------------------------------------------------------------


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {401: "unauthorized", 404: "not_found", 405: "bad_request"}
    return error_body(exc.status_code, codes.get(exc.status_code, "bad_request"), str(exc.detail))


async def bad_input(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error_body(422, "bad_request", f"{where}: {first.get('msg', 'invalid')}")


async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SwitchboardError)
    retry = {"Retry-After": str(max(1, math.ceil(exc.retry_after or 1)))}
    if isinstance(exc, (UnavailableError, TransportError)):
        return error_body(503, "unavailable", "the gateway is not reachable now; retry", retry)
    if isinstance(exc, RateLimitedError):
        return error_body(429, "rate_limited", "too many messages; retry later", retry)
    if isinstance(exc, TooLargeError):
        return error_body(413, "too_large", "message too large")
    log.error("gateway refused a call: %r", exc)
    return error_body(502, "bad_gateway", f"the gateway answered {exc.code}")


# ---- the app ----------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    cfg: Settings = app.state.settings
    # One client (one connection pool) for the process, closed on shutdown.
    async with AsyncSwitchboard(cfg.switchboard_url, cfg.api_key, retries=RETRIES) as sb:
        app.state.sb = sb
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="Switchboard FastAPI chat example", lifespan=lifespan)
    app.state.settings = settings or Settings.from_env()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_input)
    app.add_exception_handler(SwitchboardError, gateway_error)
    return app


app = create_app()
