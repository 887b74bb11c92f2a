"""The signing proxy's rules (``helper/proxy.py``) as the bad input each one keeps out (issue 19:
every mutant ``./dev mutate helper/proxy.py`` makes must fail one of these or a test of
``tests/test_auth_unit.py`` / ``tests/test_auth_e2e.py``)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from helper.errors import HelperError
from helper.proxy import Upstream
from tests.support.proxy_harness import (
    SECRET,
    SIGNED,
    RecordingHandler,
    Upstreams,
    exchange,
    running_proxy,
    statuses,
)


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://mlflow.example.com/churn",  # another scheme (would then be spoken to as plain HTTP)
        "file:///etc/passwd",
        "mlflow.example.com/churn",  # no scheme at all
        "https:///churn",  # no host
        "https://",
        "https://mlflow.example.com/churn?next=https://evil.example.com",  # a query
    ],
)
def test_a_tracking_uri_that_is_not_a_plain_https_url_is_refused(uri: str) -> None:
    with pytest.raises(HelperError, match="is not an http"):
        Upstream.from_uri(uri)


def test_a_tracking_uri_is_split_into_scheme_host_port_and_project_path() -> None:
    assert Upstream.from_uri("https://mlflow.example.com/churn/") == Upstream(
        "https", "mlflow.example.com", 443, "/churn"
    )
    assert Upstream.from_uri("http://127.0.0.1/p") == Upstream("http", "127.0.0.1", 80, "/p")
    assert Upstream.from_uri("https://h.example.com:8443").port == 8443
    assert Upstream.from_uri("https://h.example.com:8443").host_header == "h.example.com:8443"
    assert Upstream.from_uri("https://h.example.com:443/p").host_header == "h.example.com"
    assert Upstream.from_uri("https://h.example.com/p").origin == "https://h.example.com"


@pytest.mark.parametrize(
    ("local", "upstream"),
    [
        # a request line whose path lacks the leading "/" must not reach another project's
        # server: /churn-other/api is project churn-other's
        ("-other/api/2.0/mlflow/runs/get", "/churn/-other/api/2.0/mlflow/runs/get"),
        ("api/2.0/x", "/churn/api/2.0/x"),
        ("/api/2.0/x?y=1", "/churn/api/2.0/x?y=1"),
        ("/", "/churn/"),
        ("", "/churn/"),
    ],
)  # fmt: skip
def test_every_local_path_stays_under_the_projects_prefix(local: str, upstream: str) -> None:
    assert Upstream.from_uri("https://mlflow.example.com/churn").path_for(local) == upstream


def test_a_redirect_elsewhere_is_passed_on_unchanged_and_ours_made_local() -> None:
    upstream = Upstream.from_uri("https://mlflow.example.com/churn")
    assert upstream.local_location("https://mlflow.example.com/churn/x") == "/x"
    assert upstream.local_location("/churn/x") == "/x"
    # another project on the same host, and a prefix that is only a prefix of the name
    assert upstream.local_location("/churn-other/x") == "/churn-other/x"
    assert upstream.local_location("https://mlflow.example.com/churnx/y") == (
        "https://mlflow.example.com/churnx/y"
    )
    root = Upstream.from_uri("https://mlflow.example.com")
    assert root.local_location("/x") == "/x" and root.path_for("/x") == "/x"


# -- what reaches the server: the proxy's headers, never the browser's ----------------------------


class RawRecordingHandler(RecordingHandler):
    """Records every header line as sent (a repeated header is two lines, in any case)."""

    def do_GET(self) -> None:
        self.server.raw.append(list(self.headers.items()))
        super().do_GET()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


@pytest.fixture
def raw_upstream() -> Iterator[tuple[Upstreams, list[list[tuple[str, str]]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RawRecordingHandler)
    server.daemon_threads = True
    raw: list[list[tuple[str, str]]] = []
    server.recorded = []  # type: ignore[attr-defined]
    server.raw = raw  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Upstreams(server.server_address[1], server.recorded), raw  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# Each in lower case too: a header the proxy forgot to drop would then go out beside the one it
# sets (http.server keeps the client's spelling), so the server would see two.
CLIENT_HEADERS = [
    ("authorization", f"Bearer {SECRET}"),  # the run's secret: never for the central server
    ("host", "{local}"),
    ("origin", "http://{local}"),
    ("referer", "http://{local}/#/experiments"),
    ("cookie", "mlflow-aws-other=1"),
    ("expect", "100-continue"),
    ("connection", "keep-alive, x-private"),
    ("keep-alive", "timeout=5"),
    ("proxy-authorization", "Basic dXNlcjpwYXNz"),
    ("proxy-connection", "keep-alive"),
    ("te", "trailers"),
    ("trailer", "x-checksum"),
    ("upgrade", "h2c"),
]


def test_the_browsers_own_authorization_origin_host_and_cookies_never_reach_the_server(
    raw_upstream: tuple[Upstreams, list[list[tuple[str, str]]]],
) -> None:
    upstream, raw = raw_upstream
    with running_proxy(upstream) as proxy:
        local = f"127.0.0.1:{proxy.port}"
        body = b'{"experiment_id": "1"}'
        lines = ["POST /api/2.0/mlflow/experiments/delete HTTP/1.1",
                 f"Content-Length: {len(body)}", "Content-Type: application/json",
                 "X-Kept: yes"]  # fmt: skip
        lines += [f"{name}: {value.format(local=local)}" for name, value in CLIENT_HEADERS]
        received, _ = exchange(proxy.port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert statuses(received)[-1:] == [200], received
    (sent,) = raw
    names = [name.lower() for name, _ in sent]
    assert sorted(names) == ["authorization", "content-length", "content-type", "host", "x-kept"]
    values = {name.lower(): value for name, value in sent}
    assert values["authorization"] == f"Bearer {SIGNED}"  # the proxy's token, not the secret
    assert values["host"] == f"127.0.0.1:{upstream.port}"  # the server's, not the proxy's
    assert upstream.requests[0].body == body
    assert SECRET not in repr(sent)


def test_the_servers_cookies_and_hop_by_hop_headers_never_reach_the_browser(
    raw_upstream: tuple[Upstreams, list[list[tuple[str, str]]]],
) -> None:
    upstream, _ = raw_upstream
    with running_proxy(upstream) as proxy:
        request = (
            f"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}"
            f"\r\nAuthorization: Bearer {SECRET}\r\n\r\n"
        )
        received, _ = exchange(proxy.port, request.encode(), wait=1.5)
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert statuses(received) == [200] and b"set-cookie" not in head
    assert head.count(b"content-length:") == 1


# -- a multi-GB artifact is streamed, never held: the same at 64 MiB, with tracemalloc's peak -----

STREAMED_MIB = 64
HELD_LIMIT_MIB = 16  # a few 1 MiB blocks in flight; holding the body would be >= 64
BLOCK = bytes(range(256)) * 4096  # 1 MiB


class SinkHandler(http.server.BaseHTTPRequestHandler):
    """Counts an upload's bytes block by block (sized or chunked) and answers a download with
    STREAMED_MIB MiB (sized, or chunked when the path says so), never holding either."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Any

    def do_PUT(self) -> None:
        received = 0
        if self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                for _ in range(0, size, 1 << 20):
                    received += len(self.rfile.read(min(1 << 20, size - _)))
                self.rfile.readline()
            self.rfile.readline()
        else:
            left = int(self.headers["Content-Length"])
            while left:
                block = self.rfile.read(min(left, 1 << 20))
                received, left = received + len(block), left - len(block)
        self.server.received.append(received)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        chunked = self.path.endswith("/chunked")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(STREAMED_MIB << 20))
        self.end_headers()
        for _ in range(STREAMED_MIB):
            if chunked:
                self.wfile.write(b"100000\r\n")
            self.wfile.write(BLOCK)
            if chunked:
                self.wfile.write(b"\r\n")
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[tuple[Upstreams, list[int]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SinkHandler)
    server.daemon_threads = True
    received: list[int] = []
    server.received = received  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Upstreams(server.server_address[1]), received
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def peak_traced_mib() -> Iterator[list[float]]:
    """The peak of Python's allocations (every thread: client, proxy, server) in the block."""
    peak: list[float] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] / (1 << 20))
        tracemalloc.stop()


def signed_head(port: int, method: str, path: str, framing: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {SECRET}"
        f"\r\n{framing}\r\n"
    ).encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_a_large_upload_is_streamed_through_not_held_in_memory(
    sink: tuple[Upstreams, list[int]], chunked: bool
) -> None:
    upstream, received = sink
    with running_proxy(upstream) as proxy, peak_traced_mib() as peak:
        framing = "Transfer-Encoding: chunked\r\n" if chunked else (
            f"Content-Length: {STREAMED_MIB << 20}\r\n"
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.sendall(signed_head(proxy.port, "PUT", "/upload", framing))
            for _ in range(STREAMED_MIB):
                if chunked:
                    sock.sendall(b"100000\r\n")
                sock.sendall(BLOCK)
                if chunked:
                    sock.sendall(b"\r\n")
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            answer = sock.recv(65536)
    assert statuses(answer) == [200], answer
    assert received == [STREAMED_MIB << 20]
    assert peak[0] < HELD_LIMIT_MIB, f"{peak[0]:.0f} MiB held for a {STREAMED_MIB} MiB body"


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_a_large_download_is_streamed_through_not_held_in_memory(
    sink: tuple[Upstreams, list[int]], chunked: bool
) -> None:
    upstream, _ = sink
    buffer = bytearray(1 << 20)
    with running_proxy(upstream) as proxy, peak_traced_mib() as peak:
        path = "/download/chunked" if chunked else "/download/sized"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.sendall(signed_head(proxy.port, "GET", path))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            total = 0
            while n := sock.recv_into(buffer):
                total += n
                if not chunked and total == STREAMED_MIB << 20:
                    break
                if chunked and bytes(buffer[max(0, n - 7) : n]).endswith(b"0\r\n\r\n"):
                    break
    assert statuses(head) == [200], head
    if chunked:
        assert b"transfer-encoding: chunked" in head.lower()
        assert total > STREAMED_MIB << 20  # the body and its chunk lines
    else:
        assert f"Content-Length: {STREAMED_MIB << 20}".encode() in head
        assert total == STREAMED_MIB << 20
    assert peak[0] < HELD_LIMIT_MIB, f"{peak[0]:.0f} MiB held for a {STREAMED_MIB} MiB body"
