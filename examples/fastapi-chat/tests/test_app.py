"""The example backend on its own: settings, the session cookie, bad input, and a gateway
that does not answer (a real closed port). The whole path through the real gateway and a
real browser is tests/e2e/fastapi-chat.test.mjs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import jwt
import pytest
from fastapi.testclient import TestClient
from switchboard_client import RetryPolicy

import app as app_module
from settings import Settings, SettingsError

SECRET = "example-test-secret-0123456789abcdef"
ENV = {"SWITCHBOARD_API_KEY": "k", "SWITCHBOARD_AUTH_HMAC_SECRET": SECRET}


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # One attempt: the gateway is down for the whole test.
    monkeypatch.setattr(app_module, "RETRIES", RetryPolicy.never())
    env = {**ENV, "SWITCHBOARD_URL": f"http://127.0.0.1:{closed_port()}"}
    with TestClient(app_module.create_app(Settings.from_env(env))) as c:
        yield c


def login(client: TestClient, user: str = "alice") -> None:
    r = client.post("/login", json={"user": user})
    assert r.status_code == 200, r.text


def test_settings_name_the_variable_that_is_wrong() -> None:
    with pytest.raises(SettingsError, match="SWITCHBOARD_API_KEY"):
        Settings.from_env({"SWITCHBOARD_AUTH_HMAC_SECRET": SECRET})
    with pytest.raises(SettingsError, match="SWITCHBOARD_AUTH_HMAC_SECRET"):
        Settings.from_env({"SWITCHBOARD_API_KEY": "k", "SWITCHBOARD_AUTH_HMAC_SECRET": "short"})
    with pytest.raises(SettingsError, match="SWITCHBOARD_URL"):
        Settings.from_env({**ENV, "SWITCHBOARD_URL": "127.0.0.1:8000"})
    with pytest.raises(SettingsError, match="SWITCHBOARD_PUBLIC_URL"):
        Settings.from_env({**ENV, "SWITCHBOARD_PUBLIC_URL": "http://x/ws"})
    with pytest.raises(SettingsError, match="SESSION_TTL"):
        Settings.from_env({**ENV, "SESSION_TTL": "1h"})


def test_the_ws_url_keeps_the_pages_host_and_the_gateways_port() -> None:
    s = Settings.from_env({**ENV, "SWITCHBOARD_URL": "http://127.0.0.1:8000"})
    assert s.ws_url_for("localhost") == "ws://localhost:8000/ws"
    assert s.ws_url_for("::1") == "ws://[::1]:8000/ws"
    assert Settings.from_env({**ENV, "SWITCHBOARD_URL": "https://gw.example.com"}).ws_url_for(
        "chat.example.com"
    ) == "wss://chat.example.com/ws"
    public = Settings.from_env({**ENV, "SWITCHBOARD_PUBLIC_URL": "wss://chat.example.com/ws"})
    assert public.ws_url_for("anything") == "wss://chat.example.com/ws"


def test_login_sets_an_httponly_cookie_holding_a_token_for_the_user(client: TestClient) -> None:
    r = client.post("/login", json={"user": "alice"})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("sb_token=")
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie  # plain http here; https gets Secure
    token = cookie.split(";")[0].split("=", 1)[1]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] > claims["iat"]
    me = client.get("/me").json()
    assert me["user"] == "alice"
    assert me["ws_url"].startswith("ws://testserver:")
    assert client.get("/", follow_redirects=False).headers["location"] == "/chat"


def test_without_a_valid_cookie_every_call_is_401_with_a_json_error(client: TestClient) -> None:
    for method, path in [("GET", "/me"), ("POST", "/chat"), ("POST", "/notify/bob"), ("GET", "/who")]:
        r = client.request(method, path, json={"text": "x", "key": "k1"})
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"
    client.cookies.set("sb_token", jwt.encode({"sub": "alice", "exp": 4102444800}, "another-secret-0123456789abcdefghij"))
    assert client.get("/me").status_code == 401
    assert client.get("/chat", follow_redirects=False).headers["location"] == "/"


def test_logout_forgets_the_cookie(client: TestClient) -> None:
    login(client)
    assert client.post("/logout").status_code == 204
    assert client.get("/me").status_code == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/login", {"user": "no spaces"}),
        ("/login", {"user": "x" * 33}),
        ("/login", {}),
        ("/chat", {"text": "   ", "key": "k1"}),
        ("/chat", {"text": "x" * 2001, "key": "k1"}),
        ("/chat", {"text": "hi", "key": "not a key!"}),
        ("/chat", {"text": "hi"}),
        ("/notify/bad%20name", {"text": "hi"}),
        ("/notify/bob", {"text": ""}),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, path: str, body: dict[str, object]) -> None:
    login(client)
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "bad_request"


def test_a_gateway_that_does_not_answer_is_503_with_retry_after(client: TestClient) -> None:
    login(client)
    for path, body in [("/chat", {"text": "hi", "key": "k1"}), ("/notify/bob", {"text": "hi"})]:
        r = client.post(path, json=body)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "unavailable"
    assert client.get("/who").status_code == 503


def test_only_the_sdks_files_are_served_from_clients_js(client: TestClient) -> None:
    r = client.get("/sdk/switchboard.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "export class Switchboard" in r.text
    assert client.get("/sdk/sse.js").status_code == 200
    assert client.get("/sdk/package.json").status_code == 404
    assert client.get("/sdk/..%2Fpython%2FREADME.md").status_code == 404
