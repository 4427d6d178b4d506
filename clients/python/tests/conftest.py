"""Fixtures: the real `switchboard` binary on port 0 with a temp config, and a
scriptable local HTTP server standing in for the network (retries)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SECRET = "python-sdk-test-secret-0123456789"
API_KEY = "python-sdk-test-key"

CONFIG = f"""
listen = "127.0.0.1:0"
node_name = "py1"

[auth]
hmac_secret = "{SECRET}"

[api]
key = "{API_KEY}"

[shutdown]
ready_grace = "0s"

[[namespaces]]
name = "chat"
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl = "10m"

[[namespaces]]
name = "user"
history_size = 100
history_ttl = "10m"

[[namespaces]]
name = "capped"
history_size = 10
history_ttl = "10m"
history_max_channels = 1
"""


def switchboard_bin() -> Path:
    """$SWITCHBOARD_BIN, else the debug or release build, else build it now."""
    env = os.environ.get("SWITCHBOARD_BIN")
    if env:
        return Path(env)
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "switchboard"
        if p.exists():
            return p
    subprocess.run(["cargo", "build", "--bin", "switchboard"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "switchboard"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    addr: str
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = switchboard_bin()
    d = tmp_path_factory.mktemp("switchboard")
    cfg = d / "switchboard.toml"
    cfg.write_text(CONFIG)
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
    proc = subprocess.Popen(
        [str(binary), "serve", "--config", str(cfg)],
        cwd=d,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    addr = None
    for line in proc.stdout:
        if line.startswith("listening on http://"):
            addr = line.strip().removeprefix("listening on http://")
            break
    if addr is None:
        proc.kill()
        raise RuntimeError(f"switchboard did not start: {proc.stderr.read()}")
    srv = Server(proc, addr)
    # Drain both pipes so the server never blocks on a full one.
    out, err = proc.stdout, proc.stderr

    def drain(pipe: Any, keep: list[str] | None) -> None:
        for line in pipe:
            if keep is not None:
                keep.append(line)

    threading.Thread(target=drain, args=(out, None), daemon=True).start()
    threading.Thread(target=drain, args=(err, srv.logs), daemon=True).start()
    yield srv
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- a scriptable HTTP server (the network's test double) -----------------


@dataclass
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: close the connection without answering (a connection error for the client)
    hang_up: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Scripted:
    """Answers requests from a script, the last answer repeating; records every request."""

    def __init__(self) -> None:
        self.script: list[Answer] = [Answer()]
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                with outer.lock:
                    outer.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                    answer = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if answer.hang_up:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                payload = b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _handle
            do_POST = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, *answers: Answer) -> None:
        with self.lock:
            self.script = list(answers)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Fresh channel names, so tests sharing the server do not see each other."""
    counter = iter(range(1_000_000))
    pid = os.getpid()

    def make(prefix: str) -> str:
        return f"{prefix}{pid}-{next(counter)}-{os.urandom(3).hex()}"

    return make
