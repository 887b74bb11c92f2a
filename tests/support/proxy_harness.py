"""The helper's signing proxy between a recording upstream and a raw client: the upstream
fixture, the proxy running in a thread, raw exchanges, and an attacker's page for the browser
tests."""

from __future__ import annotations

import contextlib
import http.server
import inspect
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from helper.proxy import SigningProxy, Upstream
from tests.support.services import free_port

SECRET = "s3cr3t-" + "x" * 40
SIGNED = "aws-iam-v1.stand-in-token"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstreams:
    port: int
    requests: list[Recorded] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/proj"


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def do_GET(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while (size := int(self.rfile.readline().strip().split(b";")[0], 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.recorded.append(
            Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        data = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "upstream-session=from-the-server; Path=/")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def recording_upstream(poll_interval: float = 0.5) -> Iterator[Upstreams]:
    """The recording upstream; ``poll_interval`` is serve_forever's, so how long stopping it
    takes (a file that starts one per test shortens it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHandler)
    server.daemon_threads = True
    recorded: list[Recorded] = []
    server.recorded = recorded  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield Upstreams(server.server_address[1], recorded)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    with recording_upstream() as recording:
        yield recording


class StandInTokens:
    def token(self) -> str:
        return SIGNED


@dataclass
class RunningProxy:
    port: int
    log: io.StringIO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Served(Protocol):
    @property
    def uri(self) -> str: ...


@contextlib.contextmanager
def running_proxy(upstream: Served, poll_interval: float = 0.5) -> Iterator[RunningProxy]:
    """The proxy in front of ``upstream``; ``poll_interval`` as for ``recording_upstream``."""
    port = free_port()
    log = io.StringIO()
    arguments: list[Any] = [port, Upstream.from_uri(upstream.uri), StandInTokens(), log]
    if "secret" in inspect.signature(SigningProxy.__init__).parameters:
        arguments.append(SECRET)  # (the proxy before the per-run secret had none)
    proxy = SigningProxy(*arguments)
    thread = threading.Thread(target=proxy.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    try:
        yield RunningProxy(port, log)
    finally:
        proxy.shutdown()
        proxy.server_close()


def exchange(port: int, data: bytes, wait: float = 3.0) -> tuple[bytes, bool]:
    """Send raw bytes; (everything read, whether the proxy closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                block = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not block:
                return received, True
            received += block
        return received, False


def statuses(received: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", received)]


ATTACK_PAGE = """<!doctype html><title>cat pictures</title><script>
const proxy = "http://127.0.0.1:%(port)d";
const smuggled = %(smuggled)s;
async function attack() {
  const tries = [
    fetch(proxy + "/", {method: "POST", mode: "no-cors", body: smuggled}),
    fetch(proxy + "/", {method: "POST", mode: "no-cors", credentials: "include", body: smuggled}),
    fetch(proxy + "/api/2.0/mlflow/experiments/create", {method: "POST", mode: "no-cors",
      credentials: "include", headers: {"Content-Type": "text/plain"},
      body: '{"name": "planted"}'}),
    fetch(proxy + "/api/2.0/mlflow/experiments/search", {credentials: "include"}),
  ];
  for (const t of tries) { try { await t; } catch (e) {} }
  document.title = "done";
}
attack();
</script>"""


@contextlib.contextmanager
def attack_site(page: str) -> Iterator[int]:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
