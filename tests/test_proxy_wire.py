"""The signing proxy's HTTP/1.1 on the wire (``helper/proxy.py``), fast: the real ``SigningProxy``
in this process between a raw socket (the attacker, or a client) and a scripted upstream (it
stands in for the central server, records every request that reached it and answers with the
bytes a test gives). Each test is the bad input or attack it stands for; no test waits for a
timeout, so ``./dev mutate helper/proxy.py`` runs these for every mutant (issue 19)."""

from __future__ import annotations

import contextlib
import io
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from helper import proxy as proxy_module
from helper.proxy import SigningProxy, Upstream

SECRET = "wire-" + "s" * 40
SIGNED = "aws-iam-v1.wire-token"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CLOSE = b"<close>"  # an answer ending with this: the upstream closes the connection after it


@dataclass
class Seen:
    line: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # which upstream connection it came on

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]


@dataclass
class Scripted:
    """The upstream: answers[i] for the i-th request (the last one repeats)."""

    answers: list[bytes | Callable[[Any], None]] = field(default_factory=lambda: [OK])
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def answer(self, n: int) -> bytes | Callable[[Any], None]:
        return self.answers[min(n, len(self.answers) - 1)]


def _read_request(rfile: Any) -> tuple[str, list[tuple[str, str]], bytes] | None:
    line = rfile.readline()
    if not line:
        return None
    headers = []
    while (h := rfile.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    lower = {n.lower(): v for n, v in headers}
    body = b""
    if lower.get("transfer-encoding") == "chunked":
        while (size := int(rfile.readline().split(b";")[0], 16)) > 0:
            body += rfile.read(size)
            rfile.readline()
        rfile.readline()
    elif "content-length" in lower:
        body = rfile.read(int(lower["content-length"]))
    return line.decode("latin-1").rstrip("\r\n"), headers, body


@contextlib.contextmanager
def scripted(*answers: bytes | Callable[[Any], None]) -> Iterator[Scripted]:
    script = Scripted(list(answers) or [OK])

    class Handler(socketserver.StreamRequestHandler):
        def setup(self) -> None:
            tls = getattr(script, "tls", None)
            if tls is not None:  # an https server (the test's own certificate)
                self.request = tls.wrap_socket(self.request, server_side=True)
                self.connection = self.request
            super().setup()

        def handle(self) -> None:
            script.connections += 1
            number = script.connections
            while (request := _read_request(self.rfile)) is not None:
                script.seen.append(Seen(*request, connection=number))
                answer = script.answer(len(script.seen) - 1)
                if callable(answer):
                    answer(self)
                    return
                self.wfile.write(answer.removesuffix(CLOSE))
                if answer.endswith(CLOSE):
                    return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    script.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield script
    finally:
        server.shutdown()
        server.server_close()


class Tokens:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def token(self) -> str:
        if self.fail:
            raise RuntimeError("the SSO session has expired")
        return SIGNED


@dataclass
class Proxy:
    port: int
    log: io.StringIO

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def proxy_to(script: Scripted, tokens: Tokens | None = None) -> Iterator[Proxy]:
    log = io.StringIO()
    upstream = Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj")
    server = SigningProxy(0, upstream, tokens or Tokens(), log, SECRET)
    port = server.server_address[1]
    server.gate = type(server.gate)(SECRET, port)  # port 0 was asked for: the gate's is the real
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield Proxy(port, log)
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name]


def read_reply(rfile: Any, method: str = "GET") -> Reply:
    status_line = rfile.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers = []
    while (h := rfile.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    lower = {n.lower(): v for n, v in headers}
    body = b""
    if method == "HEAD" or status in (100, 204, 304):
        pass
    elif lower.get("transfer-encoding") == "chunked":
        while (size := int(rfile.readline().split(b";")[0], 16)) > 0:
            body += rfile.read(size)
            rfile.readline()
        rfile.readline()
    elif "content-length" in lower:
        body = rfile.read(int(lower["content-length"]))
    else:
        body = rfile.read()
    return Reply(status, headers, body)


@contextlib.contextmanager
def connected(proxy: Proxy) -> Iterator[tuple[socket.socket, Any]]:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        yield sock, sock.makefile("rb")


def closed(rfile: Any) -> bool:
    """Whether the proxy closed (or half-closed) the connection: EOF, not a timeout."""
    try:
        return rfile.read1(65536) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def signed(method: str, path: str, host: str, extra: str = "", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {SECRET}\r\n"
    return (head + extra + "\r\n").encode() + body


def one(
    proxy: Proxy, data: bytes, method: str = "GET", closing: bool = False
) -> tuple[Reply, bool]:
    """Send ``data``; the one reply, and (``closing``: waited for) whether the proxy closed the
    connection after it (it does so at once: half-close, then linger)."""
    with connected(proxy) as (sock, rfile):
        sock.sendall(data)
        reply = read_reply(rfile, method)
        return reply, closing and closed(rfile)


def one_closing(proxy: Proxy, data: bytes, method: str = "GET") -> tuple[Reply, bool]:
    return one(proxy, data, method, closing=True)


SMUGGLED = (
    b"POST /api/2.0/mlflow/experiments/delete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer " + SECRET.encode() + b"\r\nContent-Length: 22\r\n\r\n"
    b'{"experiment_id": "1"}'
)


# -- body framing: whatever does not say exactly where the body ends is refused, then closed ------


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Content-Length: 5\r\nContent-Length: 50\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5x\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length: \r\n",
        "Content-Length: 1234567890123456789\r\n",  # 19 digits: no sane body, an overflow risk
        "Content-Length: 5 5\r\n",
        "Content-Length: '5'\r\n",
    ],
)
def test_an_ambiguous_body_framing_is_refused_with_400_and_the_smuggled_request_never_sent(
    framing: str,
) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("POST", "/api/2.0/mlflow/runs/create", proxy.host, framing)
        reply, was_closed = one_closing(proxy, data + b"0\r\n\r\n" + SMUGGLED)
    assert reply.status == 400 and reply.body.startswith(b"refused: "), reply
    assert script.seen == []
    assert was_closed


def test_the_same_content_length_twice_is_one_length() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed(
            "POST", "/x", proxy.host, "Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"
        )
        reply, _ = one(proxy, data)
    assert reply.status == 200
    [seen] = script.seen
    assert seen.body == b"hello" and seen.header("content-length") == ["5"]


@pytest.mark.parametrize(
    "chunks",
    [
        b"2\r\nabcd\r\n0\r\n\r\n",  # longer than it says: what follows would be a request
        b"zz\r\nab\r\n0\r\n\r\n",  # not hex
        b"2 \r\nab\r\n0\r\n\r\n",  # junk after the size
        b"-2\r\nab\r\n0\r\n\r\n",
        b"\r\nab\r\n0\r\n\r\n",  # no size
        b"1234567890abcdef\r\nab\r\n0\r\n\r\n",  # 16 hex digits: 2**64 bytes
        b"2\r\nabXY0\r\n\r\n",  # no CRLF after the data
        b"2\r\nabZZZ0\r\n\r\n",  # junk where the CRLF belongs, then a last chunk
        b"0\r\nX-Trailer: yes",  # a trailer line never ended (the client then closes)
    ],
    ids=[
        "too long",
        "not hex",
        "junk",
        "negative",
        "empty",
        "huge",
        "no crlf",
        "junk crlf",
        "open trailer",
    ],
)
def test_a_malformed_chunk_is_refused_and_nothing_after_it_is_parsed(chunks: bytes) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("POST", "/x", proxy.host, "Transfer-Encoding: chunked\r\n", chunks)
        with connected(proxy) as (sock, rfile):
            if chunks.endswith(b"yes"):  # (a request after it would be more trailer lines)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            else:
                sock.sendall(data + SMUGGLED)
            reply = read_reply(rfile)
    assert reply.status in (400, 502), reply
    if chunks.endswith(b"yes"):
        assert b"malformed chunked trailer" in reply.body
    if b"ab" in chunks and b"\r\nab\r\n" not in chunks:  # the data, then no CRLF
        assert b"a chunk does not end with CRLF" in reply.body
    assert [s for s in script.seen if "delete" in s.line] == []
    assert all(s.body != b"ab" or chunks.startswith(b"2\r\nab\r\n") for s in script.seen)


def test_too_many_chunked_trailers_are_refused() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        trailers = b"".join(b"X-T%d: 1\r\n" % i for i in range(101))
        data = signed("POST", "/x", proxy.host, "Transfer-Encoding: chunked\r\n",
                      b"2\r\nab\r\n0\r\n" + trailers + b"\r\n")  # fmt: skip
        reply, was_closed = one_closing(proxy, data)
    assert reply.status == 400 and was_closed
    assert reply.body == b"refused: too many chunked trailers\n"
    assert script.seen == [] or script.seen[0].body != b"ab"


def test_a_well_formed_chunked_body_arrives_whole_with_extensions_and_trailers_dropped() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        chunks = b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Checksum: 1\r\n\r\n"
        data = signed("PUT", "/x", proxy.host, "Transfer-Encoding: Chunked\r\n", chunks)
        reply, _ = one(proxy, data)
    assert reply.status == 200
    [seen] = script.seen
    assert seen.body == b"abc0123456789"
    assert seen.header("transfer-encoding") == ["chunked"] and seen.header("content-length") == []
    assert seen.header("x-checksum") == []


def test_a_bare_lf_chunked_body_is_read_as_the_same_chunks() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("PUT", "/x", proxy.host, "Transfer-Encoding: chunked\r\n",
                      b"3\nabc\n0\n\n")  # fmt: skip
        reply, _ = one(proxy, data)
    assert reply.status == 200 and script.seen[0].body == b"abc"


def test_a_body_shorter_than_its_content_length_is_never_forwarded() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("POST", "/x", proxy.host, "Content-Length: 10\r\n", b"12345"))
        sock.shutdown(socket.SHUT_WR)  # the client is gone after 5 of 10 bytes
        reply = read_reply(rfile)
    assert reply.status == 400 and b"mid-body" in reply.body
    assert script.seen == []


def test_a_large_body_cut_short_never_reaches_the_server_whole() -> None:
    size = (1 << 20) + 10
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("PUT", "/x", proxy.host, f"Content-Length: {size}\r\n", b"a" * 1000))
        sock.shutdown(socket.SHUT_WR)
        reply = read_reply(rfile)
        at_end = closed(rfile)
    assert reply.status == 502 and at_end
    assert all(len(s.body) < size for s in script.seen)


def test_an_exact_content_length_body_is_forwarded_with_one_length() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        body = b"x" * ((1 << 20) + 1)  # just over the small-body limit: streamed
        data = signed("PUT", "/x", proxy.host, f"content-length: {len(body)}\r\n", body)
        reply, _ = one(proxy, data)
        small = signed("PUT", "/y", proxy.host, "Content-Length: 0\r\n")
        reply0, _ = one(proxy, small)
    assert reply.status == 200 and reply0.status == 200
    assert script.seen[0].body == body and script.seen[0].header("content-length") == [
        str(len(body))
    ]
    assert script.seen[1].body == b"" and script.seen[1].header("content-length") == ["0"]


def test_a_body_on_a_request_without_framing_is_not_a_body() -> None:
    """No Content-Length, no Transfer-Encoding: no body; what follows is the next request."""
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("GET", "/a", proxy.host) + signed("GET", "/b", proxy.host))
        first, second = read_reply(rfile), read_reply(rfile)
    assert (first.status, second.status) == (200, 200)
    assert [s.line for s in script.seen] == ["GET /proj/a HTTP/1.1", "GET /proj/b HTTP/1.1"]
    assert all(s.header("content-length") == [] and s.body == b"" for s in script.seen)


# -- the request line and the header lines: exactly as RFC 9112 spells them ---------------------


@pytest.mark.parametrize(
    "line",
    [
        b"get / HTTP/1.1",  # methods are upper case
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.2",
        b"GET / HTTP/2.0",
        b"GET /a b HTTP/1.1",  # a space in the target
        b"GET /\x00 HTTP/1.1",
        b"GET /\xff HTTP/1.1",
        b"GET / HTTP/1.1 extra",
        b"GET /",  # HTTP/0.9
        b"GET\t/ HTTP/1.1",
    ],
)
def test_a_malformed_request_line_is_refused_with_400(line: bytes) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, was_closed = one_closing(proxy, line + b"\r\nHost: x\r\n\r\n")
    assert reply.status == 400 and b"malformed request line" in reply.body
    assert was_closed and script.seen == []


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND"])
def test_a_method_the_proxy_does_not_forward_gets_501(method: str) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, was_closed = one_closing(proxy, signed(method, "/x", proxy.host))
    assert reply.status == 501 and was_closed and script.seen == []


@pytest.mark.parametrize(
    "header",
    [
        b"Host : 127.0.0.1",  # a space before the colon (smuggling across parsers)
        b" X-Folded: continued",  # obsolete line folding
        b"X-No-Colon",
        b"X-Ctl: a\x01b",
        b"X-Cr: a\rb",
        b"X@Bad: 1",
        b"X-Del: a\x7fb",
        b": empty name",
    ],
)
def test_a_malformed_header_line_is_refused_with_400(header: bytes) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("GET", "/x", proxy.host).replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n")
        reply, was_closed = one_closing(proxy, data)
    assert reply.status == 400 and b"malformed header line" in reply.body
    assert was_closed and script.seen == []


def test_a_header_value_with_tabs_and_latin1_is_forwarded_as_sent() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host, "X-Note: \ta\tb \r\n".replace(
            "b", "b\xe9")).replace("\xe9".encode(), b"\xe9"))  # fmt: skip
    assert reply.status == 200
    assert script.seen[0].header("x-note") == ["a\tb\xe9"]


def test_more_than_100_headers_are_refused_with_431() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        many = "".join(f"X-H{i}: 1\r\n" for i in range(99))
        ok, _ = one(proxy, signed("GET", "/x", proxy.host, many))  # 101 with Host, Auth: no
        fewer = "".join(f"X-H{i}: 1\r\n" for i in range(98))
        ok98, _ = one(proxy, signed("GET", "/x", proxy.host, fewer))
    assert ok.status == 431 and ok98.status == 200


def test_a_header_line_over_64_kib_is_refused_with_431() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        long_line = "X-Long: " + "a" * 65530 + "\r\n"  # 65540 bytes
        reply, was_closed = one_closing(proxy, signed("GET", "/x", proxy.host, long_line))
        fits = "X-Long: " + "a" * 65526 + "\r\n"  # 65536 bytes: the limit
        reply_fits, _ = one(proxy, signed("GET", "/x", proxy.host, fits))
    assert reply.status == 431 and was_closed
    assert reply_fits.status == 200


def test_a_head_cut_off_before_its_blank_line_is_not_forwarded() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("GET", "/x", proxy.host).removesuffix(b"\r\n"))
        sock.shutdown(socket.SHUT_WR)
        rest = rfile.read()
    assert script.seen == []
    assert rest == b"" or rest.startswith(b"HTTP/1.1 400 ")


def test_one_empty_line_before_a_request_is_ignored() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, b"\r\n" + signed("GET", "/x", proxy.host))
    assert reply.status == 200 and len(script.seen) == 1


def test_a_path_starting_with_two_slashes_stays_a_path_under_the_project() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "//evil.example.com/x", proxy.host))
    assert reply.status == 200
    assert script.seen[0].line == "GET /proj/evil.example.com/x HTTP/1.1"


# -- what reaches the server: the proxy's Host and token, never the browser's headers ------------


DROPPED = ["Host", "Authorization", "Origin", "Referer", "Cookie", "Expect", "Connection",
           "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer", "Upgrade",
           "Proxy-Authenticate", "Content-Length", "Transfer-Encoding"]  # fmt: skip


@pytest.mark.parametrize("name", DROPPED)
def test_a_browser_header_the_proxy_drops_never_reaches_the_server(name: str) -> None:
    """Sent in odd case, beside what the proxy sets: the server sees only the proxy's own."""
    values = {"Host": "{host}", "Authorization": f"Bearer {SECRET}", "Origin": "http://{host}",
              "Content-Length": "2", "Transfer-Encoding": "chunked", "Expect": "100-continue",
              "Connection": "keep-alive"}  # fmt: skip
    spelled = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))
    value = values.get(name, "from-the-browser").replace("{host}", "127.0.0.1")
    with scripted() as script, proxy_to(script) as proxy:
        value = (
            value.replace("127.0.0.1", proxy.host) if "{host}" in values.get(name, "") else value
        )
        lines = ["POST /x HTTP/1.1", f"Authorization: Bearer {SECRET}", f"Host: {proxy.host}"]
        if name not in ("Content-Length", "Transfer-Encoding"):
            lines.append("Content-Length: 2")
        if name not in ("Authorization", "Host"):
            lines.append(f"{spelled}: {value}")
        else:
            lines = [ln.replace(name, spelled) for ln in lines]
        body = b"2\r\nhi\r\n0\r\n\r\n" if name == "Transfer-Encoding" else b"hi"
        with connected(proxy) as (sock, rfile):
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            reply = read_reply(rfile)
            if reply.status == 100:
                reply = read_reply(rfile)
    assert reply.status == 200, reply
    [seen] = script.seen
    names = [n.lower() for n, _ in seen.headers]
    assert names.count("host") == 1 and seen.header("host") == [f"127.0.0.1:{script.port}"]
    assert names.count("authorization") == 1 and seen.header("authorization") == [
        f"Bearer {SIGNED}"
    ]
    framing = [n for n in names if n in ("content-length", "transfer-encoding")]
    assert len(framing) == 1 and seen.body == b"hi"
    if name.lower() not in ("host", "authorization", "content-length", "transfer-encoding"):
        assert name.lower() not in names
    assert SECRET not in repr(seen)


def test_headers_the_connection_header_names_are_hop_by_hop_and_dropped() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        extra = "Connection: Keep-Alive, X-Private\r\nX-Private: 1\r\nX-Kept: yes\r\n"
        reply, _ = one(proxy, signed("GET", "/x", proxy.host, extra))
    assert reply.status == 200
    assert script.seen[0].header("x-private") == [] and script.seen[0].header("x-kept") == ["yes"]


def test_the_token_goes_to_the_project_path_with_the_query_kept() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/api/2.0/mlflow/runs/get?run_id=1&x=%20", proxy.host))
    assert reply.status == 200
    assert script.seen[0].line == "GET /proj/api/2.0/mlflow/runs/get?run_id=1&x=%20 HTTP/1.1"


def test_an_expired_identity_gets_503_and_nothing_is_forwarded() -> None:
    with scripted() as script, proxy_to(script, Tokens(fail=True)) as proxy:
        reply, was_closed = one_closing(
            proxy, signed("POST", "/x", proxy.host, "Content-Length: 2\r\n", b"{}")
        )
    assert reply.status == 503 and b"the SSO session has expired" in reply.body
    assert was_closed and script.seen == []
    assert "-> 503" in proxy.log.getvalue()


# -- Expect: 100-continue -------------------------------------------------------------------------


def test_expect_100_continue_is_answered_only_after_the_secret_is_checked() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("PUT", "/x", proxy.host,
                                "Expect: 100-Continue\r\nContent-Length: 2\r\n"))  # fmt: skip
            interim = read_reply(rfile)
            sock.sendall(b"hi")
            final = read_reply(rfile)
        unsigned = b"PUT /x HTTP/1.1\r\nHost: " + proxy.host.encode() + (
            b"\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")  # fmt: skip
        refused, was_closed = one_closing(proxy, unsigned)
    assert (interim.status, final.status) == (100, 200)
    assert script.seen[0].body == b"hi" and script.seen[0].header("expect") == []
    assert refused.status == 401 and was_closed


def test_expect_without_a_body_gets_no_interim_answer() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host, "Expect: 100-continue\r\n"))
    assert reply.status == 200


def test_an_expectation_other_than_100_continue_is_refused() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("PUT", "/x", proxy.host, "Expect: 200-ok\r\nContent-Length: 2\r\n", b"hi")
        reply, was_closed = one_closing(proxy, data)
    assert reply.status == 400 and b"Expect" in reply.body and was_closed
    assert script.seen == []


# -- keep-alive, on both sides ------------------------------------------------------------------


def test_keep_alive_requests_share_one_upstream_connection() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        for _ in range(3):
            sock.sendall(signed("POST", "/x", proxy.host, "Content-Length: 2\r\n", b"{}"))
            assert read_reply(rfile).status == 200
    assert [s.connection for s in script.seen] == [1, 1, 1]


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1 with Connection: close"])
def test_a_client_that_asks_to_close_gets_the_connection_closed(version: str) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed(
            "GET", "/x", proxy.host, "Connection: close\r\n" if "close" in version else ""
        )
        if version == "HTTP/1.0":
            data = data.replace(b"HTTP/1.1", b"HTTP/1.0")
        reply, was_closed = one_closing(proxy, data)
    assert reply.status == 200 and was_closed


def test_an_http_1_0_client_asking_for_keep_alive_keeps_it() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        data = signed("GET", "/x", proxy.host, "Connection: keep-alive\r\n")
        with connected(proxy) as (sock, rfile):
            sock.sendall(data.replace(b"HTTP/1.1", b"HTTP/1.0") * 2)
            assert read_reply(rfile).status == read_reply(rfile).status == 200


def test_a_server_that_closes_after_answering_gets_a_new_connection_next_time() -> None:
    # It says close but keeps the socket open: the proxy must not send it another request.
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    with scripted(closing) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            for _ in range(2):
                sock.sendall(signed("POST", "/x", proxy.host, "Content-Length: 2\r\n", b"{}"))
                reply = read_reply(rfile)
                assert reply.status == 200 and reply.header("connection") == []
    assert [s.connection for s in script.seen] == [1, 2]


def test_an_http_1_0_server_without_keep_alive_gets_a_new_connection_next_time() -> None:
    old = OK.replace(b"HTTP/1.1", b"HTTP/1.0")  # (the socket stays open: 1.0 means close)
    with scripted(old) as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        for _ in range(2):
            sock.sendall(signed("GET", "/x", proxy.host))
            assert read_reply(rfile).status == 200
    assert [s.connection for s in script.seen] == [1, 2]


def test_a_server_that_closed_an_idle_connection_is_asked_again_on_a_new_one() -> None:
    """A kept-alive connection the server dropped after its answer without saying so: the next
    request (its small body replayable) goes out once more, on a new connection."""

    def answer_then_drop(handler: Any) -> None:
        handler.wfile.write(OK)
        handler.connection.shutdown(socket.SHUT_RDWR)

    with scripted(answer_then_drop, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            for _ in range(2):
                sock.sendall(signed("POST", "/x", proxy.host, "Content-Length: 2\r\n", b"{}"))
                assert read_reply(rfile).status == 200
    assert [s.connection for s in script.seen] == [1, 2]
    assert [s.body for s in script.seen] == [b"{}", b"{}"]


def test_a_server_that_drops_the_connection_without_answering_gets_502_after_one_retry() -> None:
    def drop(handler: Any) -> None:
        handler.connection.shutdown(socket.SHUT_RDWR)

    with scripted(OK, drop) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            assert read_reply(rfile).status == 200
            sock.sendall(signed("GET", "/y", proxy.host))
            reply = read_reply(rfile)
    assert reply.status == 502
    assert [s.line.split()[1] for s in script.seen] == ["/proj/x", "/proj/y", "/proj/y"]


def test_a_server_gone_before_the_first_request_gets_502_without_a_retry() -> None:
    def drop(handler: Any) -> None:
        handler.connection.shutdown(socket.SHUT_RDWR)

    with scripted(drop) as script, proxy_to(script) as proxy:
        reply, was_closed = one_closing(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 502 and was_closed
    assert len(script.seen) == 1
    assert "-> 502" in proxy.log.getvalue()


def test_an_unreachable_server_gets_502() -> None:
    with scripted() as script:
        pass
    with proxy_to(script) as proxy:  # its port is closed now
        reply, was_closed = one_closing(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 502 and b"cannot reach http://127.0.0.1:" in reply.body and was_closed


def test_a_server_silent_until_its_first_byte_is_waited_for_up_to_the_timeout_then_502(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow's proxied download fetches the whole object from S3 before its first byte; the
    # real wait is the load balancer's idle timeout (10 minutes), scaled down here.
    monkeypatch.setattr(proxy_module, "UPSTREAM_TIMEOUT", 1.0)
    released = threading.Event()

    def after(seconds: float) -> Callable[[Any], None]:
        def answer(handler: Any) -> None:
            released.wait(seconds)
            with contextlib.suppress(OSError):  # the proxy gave up on the slow one
                handler.wfile.write(OK)

        return answer

    with scripted(after(0.3), after(30)) as script, proxy_to(script) as proxy:
        try:
            in_time, _ = one(proxy, signed("GET", "/x", proxy.host))
            started = time.monotonic()
            too_late, was_closed = one_closing(proxy, signed("GET", "/y", proxy.host))
            waited = time.monotonic() - started
        finally:
            released.set()
    assert (in_time.status, in_time.body) == (200, b"{}")
    assert too_late.status == 502 and b"timed out" in too_late.body and was_closed
    assert 1.0 <= waited < 10
    assert [s.line.split()[1] for s in script.seen] == ["/proj/x", "/proj/y"]  # not sent twice


# -- what comes back: the server's answer, without its cookies and hop-by-hop headers -----------


def test_the_servers_cookies_and_hop_by_hop_headers_never_reach_the_browser() -> None:
    answer = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nKeep-Alive: timeout=5\r\n"
              b"Upgrade: h2c\r\nProxy-Authenticate: Basic\r\nTrailer: x\r\nX-Kept: 1\r\n"
              b"Content-Length: 2\r\n\r\n{}")  # fmt: skip
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    names = [n.lower() for n, _ in reply.headers]
    assert reply.status == 200 and reply.body == b"{}"
    assert sorted(names) == ["content-length", "x-kept"]


def test_a_redirect_to_the_project_is_made_local_and_elsewhere_passed_on() -> None:
    answers = [
        b"HTTP/1.1 302 Found\r\nLocation: /proj/x\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nlocation: https://elsewhere.example.com/y\r\n"
        b"Content-Length: 0\r\n\r\n",
    ]
    with scripted(*answers) as script, proxy_to(script) as proxy:
        first, _ = one(proxy, signed("GET", "/a", proxy.host))
        second, _ = one(proxy, signed("GET", "/b", proxy.host))
    assert first.header("location") == ["/x"]
    assert second.header("location") == ["https://elsewhere.example.com/y"]


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_has_none_and_the_connection_stays_usable(status: int) -> None:
    answer = b"HTTP/1.1 %d X\r\nContent-Length: 7\r\n\r\n" % status
    with scripted(answer, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/a", proxy.host))
            first = read_reply(rfile)
            sock.sendall(signed("GET", "/b", proxy.host))
            second = read_reply(rfile)
    assert (first.status, first.header("content-length")) == (status, ["7"])
    assert second.status == 200 and second.body == b"{}"


def test_a_head_answer_keeps_its_length_and_sends_no_body() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    with scripted(answer, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("HEAD", "/a", proxy.host))
            first = read_reply(rfile, "HEAD")
            sock.sendall(signed("GET", "/b", proxy.host))
            second = read_reply(rfile)
    assert first.header("content-length") == ["1000"] and first.body == b""
    assert second.status == 200 and second.body == b"{}"


def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 200 and reply.body == b"{}" and reply.header("link") == []


def test_a_small_chunked_answer_goes_out_sized() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1\r\n \r\n0\r\n\r\n"
    with scripted(answer) as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("GET", "/x", proxy.host))
        reply = read_reply(rfile)
        sock.sendall(signed("GET", "/y", proxy.host))  # and the connection goes on
        again = read_reply(rfile)
    assert reply.body == b"{} " and reply.header("content-length") == ["3"]
    assert reply.header("transfer-encoding") == [] and again.body == b"{} "


def test_a_large_chunked_answer_goes_out_chunked_and_whole() -> None:
    block = b"b" * 300_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(block), block) for _ in range(5))
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    with scripted(answer, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            first = read_reply(rfile)
            sock.sendall(signed("GET", "/y", proxy.host))
            second = read_reply(rfile)
    assert first.header("transfer-encoding") == ["chunked"] and first.body == block * 5
    assert second.body == b"{}"


def test_a_large_sized_answer_goes_out_whole_with_its_length() -> None:
    body = bytes(range(256)) * 8193  # just over 2 MiB
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with scripted(answer, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            first = read_reply(rfile)
            sock.sendall(signed("GET", "/y", proxy.host))
            second = read_reply(rfile)
    assert first.header("content-length") == [str(len(body))] and first.body == body
    assert second.body == b"{}" and [s.connection for s in script.seen] == [1, 1]


def test_an_answer_that_ends_at_the_close_is_passed_on_and_closed() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end" + CLOSE
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 200 and reply.body == b"until the end"
    assert reply.header("connection") == ["close"]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nBad Header: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}" + CLOSE,  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + CLOSE,
        b"HTTP/1.1 200 OK\r\nContent-Le" + CLOSE,  # a head cut short
    ],
    ids=["no status", "http2", "te and cl", "gzip", "two lengths", "negative", "bad header",
         "short body", "bad chunk", "short head"],
)  # fmt: skip
def test_a_malformed_answer_from_the_server_gets_502_and_the_connection_closed(
    answer: bytes,
) -> None:
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, was_closed = one_closing(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 502 and was_closed, reply
    assert len(script.seen) == 1  # not retried: the server may have acted on it


def test_a_chunked_answer_broken_after_1_mib_is_cut_short_and_closed() -> None:
    block = b"c" * (1 << 20)
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"%x\r\n%s\r\n" % (len(block) + 1, block + b"c") + b"zz\r\n" + CLOSE)  # fmt: skip
    with scripted(answer) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            head = rfile.readline()
            rest = rfile.read()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert not rest.endswith(b"0\r\n\r\n")  # the client sees the answer was cut
    assert "/x:" in proxy.log.getvalue()


@pytest.mark.parametrize("status", [400, 404, 500])
def test_an_error_answer_is_logged_without_its_query(status: int) -> None:
    answer = b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x?run=abc", proxy.host))
    assert reply.status == status
    assert proxy.log.getvalue() == f"proxy: GET /x -> {status}\n"


def test_a_successful_answer_is_not_logged() -> None:
    answer = b"HTTP/1.1 399 X\r\nContent-Length: 0\r\n\r\n"
    with scripted(answer) as script, proxy_to(script) as proxy:
        one(proxy, signed("GET", "/x", proxy.host))
    assert proxy.log.getvalue() == ""


# -- refusals -----------------------------------------------------------------------------------


def test_a_refused_head_request_gets_no_body_and_a_refused_get_a_plain_text_one() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        head = f"HEAD /x HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
        refused_head, _ = one(proxy, head, "HEAD")
        with connected(proxy) as (sock, rfile):
            sock.sendall(head)
            sock.settimeout(2)
            raw = rfile.read()
        refused_get, was_closed = one_closing(
            proxy, f"GET /x HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
        )
    assert refused_head.status == 401 and raw.endswith(b"\r\n\r\n")
    assert refused_get.status == 401 and was_closed
    assert refused_get.header("content-type") == ["text/plain; charset=utf-8"]
    assert refused_get.header("connection") == ["close"]
    assert int(refused_get.header("content-length")[0]) == len(refused_get.body)
    assert script.seen == []


def test_the_one_time_url_is_not_logged_and_a_refusal_is() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        signed_in, _ = one(
            proxy, f"GET /?token={SECRET} HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
        )
        refused, _ = one(
            proxy, f"GET /x?token=wrong HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
        )
    assert signed_in.status == 302 and signed_in.header("connection") == ["close"]
    assert refused.status == 401
    assert proxy.log.getvalue().splitlines() == [
        "proxy: GET /x -> 401: wrong token in the URL: open the URL the helper printed"
    ]
    assert SECRET not in proxy.log.getvalue()


def test_a_malformed_request_is_logged_as_such() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        one(proxy, b"BAD\r\n\r\n")
    assert proxy.log.getvalue().startswith("proxy: - ")


# -- more of the same, each for a rule a mutant showed no test held ------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_the_mlflow_client_and_ui_use_is_forwarded(method: str) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed(method, "/x", proxy.host), method)
    assert reply.status == 200 and script.seen[0].line == f"{method} /proj/x HTTP/1.1"


def test_an_http_1_0_server_asking_for_keep_alive_keeps_its_connection() -> None:
    old = OK.replace(b"HTTP/1.1", b"HTTP/1.0").replace(
        b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n"
    )
    with scripted(old) as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        for _ in range(2):
            sock.sendall(signed("GET", "/x", proxy.host))
            assert read_reply(rfile).status == 200
    assert [s.connection for s in script.seen] == [1, 1]


def test_a_chunked_body_with_trailers_leaves_the_next_request_intact() -> None:
    chunks = b"2\r\nab\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("PUT", "/x", proxy.host, "Transfer-Encoding: chunked\r\n", chunks)
                     + signed("GET", "/next", proxy.host))  # fmt: skip
        first, second = read_reply(rfile), read_reply(rfile)
    assert (first.status, second.status) == (200, 200)
    assert [s.line.split()[1] for s in script.seen] == ["/proj/x", "/proj/next"]


def test_a_large_upload_after_the_server_dropped_the_idle_connection_goes_on_a_new_one() -> None:
    def answer_then_drop(handler: Any) -> None:
        handler.wfile.write(OK)
        handler.connection.shutdown(socket.SHUT_RDWR)

    body = b"u" * ((1 << 20) + 1)  # streamed: it could not be sent again
    with scripted(answer_then_drop, OK) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            assert read_reply(rfile).status == 200
            time.sleep(0.1)  # the server's close has arrived
            sock.sendall(signed("PUT", "/y", proxy.host, f"Content-Length: {len(body)}\r\n", body))
            reply = read_reply(rfile)
    assert reply.status == 200
    assert [s.connection for s in script.seen] == [1, 2] and script.seen[1].body == body


@pytest.mark.parametrize(
    ("size", "tries"), [(1 << 20, 2), ((1 << 20) + 1, 1)], ids=["1 MiB: replayed", "streamed"]
)
def test_a_body_is_sent_again_after_a_dropped_connection_only_if_the_proxy_still_has_it(
    size: int, tries: int
) -> None:
    def drop(handler: Any) -> None:
        handler.connection.shutdown(socket.SHUT_RDWR)

    with scripted(OK, drop) as script, proxy_to(script) as proxy:  # noqa: SIM117
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/x", proxy.host))
            assert read_reply(rfile).status == 200
            sock.sendall(
                signed("PUT", "/y", proxy.host, f"Content-Length: {size}\r\n", b"b" * size)
            )
            reply = read_reply(rfile)
    assert reply.status == 502
    assert [s.line.split()[1] for s in script.seen] == ["/proj/x"] + ["/proj/y"] * tries


def test_the_servers_reason_phrase_is_passed_on_and_a_missing_one_is_no_error() -> None:
    answers = [OK.replace(b"200 OK", b"200 Fine Thanks"), OK.replace(b"200 OK", b"200")]
    with scripted(*answers) as script, proxy_to(script) as proxy:
        with connected(proxy) as (sock, rfile):
            sock.sendall(signed("GET", "/a", proxy.host))
            first = rfile.readline()
            read_reply_rest = rfile.readline()
        second, _ = one(proxy, signed("GET", "/b", proxy.host))
    assert first == b"HTTP/1.1 200 Fine Thanks\r\n" and read_reply_rest
    assert second.status == 200 and second.body == b"{}"


def test_a_chunked_answer_in_any_case_of_chunked_is_decoded() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    assert reply.status == 200 and reply.body == b"{}"


def test_only_the_location_header_is_made_local() -> None:
    answer = OK.replace(b"\r\n\r\n", b"\r\nX-Path: /proj/kept\r\nContent-Location: /proj/c\r\n\r\n")
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    assert reply.header("x-path") == ["/proj/kept"]
    assert reply.header("content-location") == ["/proj/c"]


def test_a_chunked_upload_with_expect_100_continue_gets_the_interim_answer() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(signed("PUT", "/x", proxy.host,
                            "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n"))  # fmt: skip
        interim = read_reply(rfile)
        sock.sendall(b"2\r\nhi\r\n0\r\n\r\n")
        final = read_reply(rfile)
    assert (interim.status, final.status) == (100, 200) and script.seen[0].body == b"hi"


def test_a_chunked_answer_of_exactly_1_mib_goes_out_sized() -> None:
    block = b"m" * (1 << 20)
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
              % (len(block), block))  # fmt: skip
    with scripted(answer) as script, proxy_to(script) as proxy:
        reply, _ = one(proxy, signed("GET", "/x", proxy.host))
    assert reply.header("content-length") == [str(1 << 20)] and reply.body == block


def test_a_refused_request_leaves_no_traceback_and_no_thread_behind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with scripted() as script, proxy_to(script) as proxy:
        before = threading.active_count()
        for data in (b"GET /x HTTP/1.1\r\nHost: " + proxy.host.encode() + b"\r\n\r\n",
                     signed("GET", "/ok", proxy.host)):  # fmt: skip
            reply, _ = one(proxy, data)
            assert reply.status in (401, 200)
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() <= before, "a connection's thread outlived it"
    assert "Traceback" not in capsys.readouterr().err
    assert proxy.log.getvalue().count("proxy: ") == 1  # the refusal; a client that left is no error


def test_a_request_sent_after_a_refusal_on_the_same_connection_is_never_read() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: " + proxy.host.encode() + b"\r\n\r\n")
        assert read_reply(rfile).status == 401
        time.sleep(1.3)  # past the linger
        with contextlib.suppress(OSError):
            sock.sendall(signed("POST", "/api/2.0/mlflow/experiments/delete", proxy.host))
        time.sleep(0.3)
    assert script.seen == []


def test_a_refusal_reaches_a_client_that_sent_a_body_the_proxy_never_read() -> None:
    """The unread body would make closing send a reset, which can destroy the answer in
    flight: the proxy half-closes and drains first."""
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, rfile):
        body = b"x" * (256 << 10)
        sock.sendall(f"PUT /x HTTP/1.1\r\nHost: {proxy.host}\r\nContent-Length: {len(body)}"
                     "\r\n\r\n".encode() + body)  # fmt: skip
        time.sleep(0.3)
        reply = read_reply(rfile)
    assert reply.status == 401 and reply.body.startswith(b"this server needs its run's token")


def test_a_refused_client_that_keeps_sending_is_cut_off() -> None:
    with scripted() as script, proxy_to(script) as proxy, connected(proxy) as (sock, _):
        sock.sendall(f"PUT /x HTTP/1.1\r\nHost: {proxy.host}\r\nContent-Length: {1 << 30}"
                     "\r\n\r\n".encode())  # fmt: skip
        block = b"z" * (1 << 20)
        with pytest.raises(OSError):  # reset once the proxy stops reading after 1 MiB
            for _ in range(64):
                sock.sendall(block)


def test_a_refusal_is_not_cached_and_the_one_time_url_redirects_to_a_clean_path() -> None:
    with scripted() as script, proxy_to(script) as proxy:
        refused, _ = one(proxy, f"GET /x HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode())
        signed_in, _ = one(
            proxy, f"GET /a?token={SECRET}&b=1 HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode()
        )
    assert refused.header("cache-control") == ["no-store"]
    assert signed_in.header("location") == ["/a?b=1"]
    assert signed_in.header("set-cookie")[0].startswith(f"mlflow-aws-{proxy.port}={SECRET};")


def test_a_restarted_proxy_gets_its_port_back_at_once() -> None:
    with scripted() as script:
        with proxy_to(script) as proxy:
            port = proxy.port
            one_closing(proxy, f"GET /x HTTP/1.1\r\nHost: {proxy.host}\r\n\r\n".encode())
        upstream = Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj")
        again = SigningProxy(port, upstream, Tokens(), io.StringIO(), SECRET)  # no EADDRINUSE
        again.server_close()


def test_stopping_the_proxy_does_not_wait_for_idle_client_connections() -> None:
    with scripted() as script:
        log = io.StringIO()
        upstream = Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj")
        server = SigningProxy(0, upstream, Tokens(), log, SECRET)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        before = set(threading.enumerate())
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as idle:
            idle.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # a head not yet finished
            time.sleep(0.2)
            handlers = set(threading.enumerate()) - before
            started = time.monotonic()
            server.shutdown()
            server.server_close()
            assert time.monotonic() - started < 2
    assert handlers and all(t.daemon for t in handlers)  # nor does the interpreter's exit


# -- the sign-in check before serving --------------------------------------------------------------


def answer(status: int, body: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def test_the_sign_in_check_sends_one_signed_request_under_the_project() -> None:
    from helper.proxy import check_signed_in

    with scripted() as script:
        check_signed_in(Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj"), Tokens())
    [seen] = script.seen
    assert seen.line == "GET /proj/api/2.0/mlflow/experiments/search?max_results=1 HTTP/1.1"
    assert seen.header("authorization") == [f"Bearer {SIGNED}"]
    assert seen.header("host") == [f"127.0.0.1:{script.port}"]


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (401, b"\n  role x is not allowed \nmore\n", "identity (401: role x is not allowed)."),
        (403, b"", "refused your AWS identity (403: X)"),
        (400, b"", "answered 400 X"),
        (500, b"oops", "answered 500 X"),
    ],
)  # fmt: skip
def test_a_sign_in_check_the_server_refuses_says_why(status: int, body: bytes, says: str) -> None:
    from helper.errors import HelperError
    from helper.proxy import check_signed_in

    with scripted(answer(status, body)) as script, pytest.raises(HelperError) as raised:
        check_signed_in(Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj"), Tokens())
    assert says in str(raised.value)


def test_a_sign_in_check_the_server_accepts_with_a_redirect_is_no_error() -> None:
    from helper.proxy import check_signed_in

    with scripted(answer(399)) as script:
        check_signed_in(Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj"), Tokens())


def test_a_sign_in_check_without_credentials_or_network_says_so() -> None:
    from helper.errors import HelperError
    from helper.proxy import check_signed_in

    with scripted() as script:
        upstream = Upstream.from_uri(f"http://127.0.0.1:{script.port}/proj")
        with pytest.raises(HelperError, match=r"cannot sign in to .*the SSO session has expired"):
            check_signed_in(upstream, Tokens(fail=True))
    with pytest.raises(HelperError, match=r"cannot reach the central server http://127\.0\.0\.1:"):
        check_signed_in(upstream, Tokens())  # its port is closed now


# -- https: spoken only over TLS, certificate and host name checked -------------------------------


def test_an_https_tracking_uri_is_never_spoken_to_in_plain_http() -> None:
    import http.client
    import ssl

    connection = Upstream.from_uri("https://mlflow.example.com/churn").connect()
    assert isinstance(connection, http.client.HTTPSConnection)
    context = connection._context  # type: ignore[attr-defined]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    plain = Upstream.from_uri("http://127.0.0.1:9/churn").connect()
    assert not isinstance(plain, http.client.HTTPSConnection)


def test_the_proxy_opens_https_upstreams_with_a_tls_handshake_naming_the_host() -> None:
    import ssl

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    hello: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        with conn:
            hello.append(conn.recv(4096))  # the ClientHello; then the connection closes

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    with pytest.raises((ssl.SSLError, OSError)):  # not a TLS server: refused, not used
        Upstream("https", "localhost", port, "/p").open_socket(timeout=5)
    thread.join(5)
    listener.close()
    assert hello and hello[0][:1] == b"\x16" and b"localhost" in hello[0]


@contextlib.contextmanager
def tls_proxy(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *answers: bytes
) -> Iterator[tuple[Scripted, Proxy]]:
    """The scripted upstream as an https server (this test's own certificate, which the proxy's
    one client context trusts alone, still verifying), and the proxy to it."""
    import ssl
    import subprocess

    import helper.proxy

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    monkeypatch.setattr(
        helper.proxy, "_tls_context", lambda: ssl.create_default_context(cafile=cert)
    )
    with scripted(*answers) as script:
        script.tls = server_side  # type: ignore[attr-defined]
        upstream = Upstream("https", "localhost", script.port, "/proj")
        server = SigningProxy(0, upstream, Tokens(), io.StringIO(), SECRET)
        port = server.server_address[1]
        server.gate = type(server.gate)(SECRET, port)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        try:
            yield script, Proxy(port, io.StringIO())
        finally:
            server.shutdown()
            server.server_close()


def test_an_https_server_is_kept_alive_over_one_verified_tls_connection(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tls_proxy(tmp_path, monkeypatch) as (script, proxy), connected(proxy) as (sock, rfile):
        for _ in range(3):
            sock.sendall(signed("POST", "/x", proxy.host, "Content-Length: 2\r\n", b"{}"))
            assert read_reply(rfile).status == 200
    assert [s.connection for s in script.seen] == [1, 1, 1]
    assert script.seen[0].header("host") == [f"localhost:{script.port}"]
    assert script.seen[0].header("authorization") == [f"Bearer {SIGNED}"]


def test_bodiless_answers_of_an_https_server_keep_its_one_tls_connection(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEAD, 204 and 304 answers (the UI's and the client's existence checks) end where their
    head does: nothing is left on the TLS connection, so it is reused, not handshaken anew."""
    answers = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
        OK,
    )
    with (
        tls_proxy(tmp_path, monkeypatch, *answers) as (script, proxy),
        connected(proxy) as (sock, rfile),
    ):
        replies = []
        for method in ("HEAD", "GET", "GET", "GET"):
            sock.sendall(signed(method, "/x", proxy.host))
            replies.append(read_reply(rfile, method))
    assert [r.status for r in replies] == [200, 204, 304, 200]
    assert replies[-1].body == b"{}"
    assert [s.connection for s in script.seen] == [1, 1, 1, 1]


def test_bytes_an_https_server_sent_past_its_answer_are_never_the_next_answer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken server that answers twice in one write: the second answer, decrypted but not yet
    read (the TLS layer holds what the reader's buffer could not take), is no answer to the next
    request, which goes on a new connection and gets its own answer."""
    stale = b"stale" * 2400
    unasked = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(stale), stale)
    second = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"second": true}'
    with (
        tls_proxy(tmp_path, monkeypatch, OK + unasked, second) as (script, proxy),
        connected(proxy) as (sock, rfile),
    ):
        sock.sendall(signed("GET", "/a", proxy.host))
        first = read_reply(rfile)
        sock.sendall(signed("GET", "/b", proxy.host))
        reply = read_reply(rfile)
    assert first.body == b"{}"
    assert reply.body == b'{"second": true}', reply.body[:40]
    assert [s.connection for s in script.seen] == [1, 2]


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_a_bodiless_answer_for_a_multi_gb_artifact_keeps_its_length_and_waits_for_no_body(
    method: str, status: int
) -> None:
    answer = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, 2 << 30)
    with (
        scripted(answer, OK) as script,
        proxy_to(script) as proxy,
        connected(proxy) as (sock, rfile),
    ):
        sock.sendall(signed(method, "/big.bin", proxy.host))
        first = read_reply(rfile, method)
        sock.sendall(signed("GET", "/next", proxy.host))
        second = read_reply(rfile)
    assert first.status == status and first.header("content-length") == [str(2 << 30)]
    assert second.body == b"{}"
