"""An attacker's review of the signing proxy's own HTTP/1.1 code (issue 17 §3: helper/proxy.py
parses requests and answers on the sockets itself): every test is one attack on the real
``SigningProxy`` in a thread, sent as raw bytes, in front of either the recording upstream
(``tests.support.proxy_harness``) or a hostile upstream below that answers with bytes we choose.

The attacks: request smuggling (body framing, chunk syntax), header injection, odd request
targets and protocols, a hostile or broken central server splitting its answers, the run's
secret or the signed token leaking into the log, and resource exhaustion (slowloris on the head
and on the refusal's linger, unending bodies, many idle connections, huge heads).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from helper import proxy as proxy_module
from tests.support.proxy_harness import (
    SECRET,
    SIGNED,
    RunningProxy,
    Served,
    Upstreams,
    exchange,
    recording_upstream,
    statuses,
)
from tests.support.proxy_harness import running_proxy as harness_running_proxy

PATH = "/api/2.0/mlflow/runs/create"


def head(
    port: int, extra: str = "", method: str = "POST", path: str = PATH, close: bool = False
) -> bytes:
    """A request head that carries the run's secret (the attacks below need no guessing);
    ``close``: the last of an exchange (the proxy closes after answering it: no waiting)."""
    extra += "Connection: close\r\n" if close else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {SECRET}\r\n{extra}\r\n"
    ).encode("latin-1")


FAST_STOP = 0.05  # serve_forever's poll interval: each test stops its servers in 50 ms, not 500


@pytest.fixture
def upstream() -> Iterator[Upstreams]:
    """The harness's recording upstream, stopped in 50 ms."""
    with recording_upstream(poll_interval=FAST_STOP) as recording:
        yield recording


def running_proxy(upstream: Served) -> contextlib.AbstractContextManager[RunningProxy]:
    """The harness's running proxy, stopped in 50 ms."""
    return harness_running_proxy(upstream, poll_interval=FAST_STOP)


def smuggled(port: int) -> bytes:
    """What an attacker wants signed as a second request: delete an experiment."""
    body = b'{"experiment_id": "1"}'
    return (
        f"POST /api/2.0/mlflow/experiments/delete HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def assert_refused(upstream: Upstreams, received: bytes, closed: bool, status: int = 400) -> None:
    assert statuses(received) == [status], received
    assert closed, "the proxy kept the connection open after refusing (desync)"
    assert upstream.requests == [], f"forwarded: {upstream.requests}"


# -- request smuggling: the body's framing ---------------------------------------------------------

AMBIGUOUS_FRAMINGS = {
    "CL and TE": "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "TE chunked, identity": "Transfer-Encoding: chunked, identity\r\n",
    "TE identity, chunked": "Transfer-Encoding: identity, chunked\r\n",
    "TE twice": "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "TE obs-fold": "Transfer-Encoding: identity\r\n chunked\r\n",
    "TE space before colon": "Transfer-Encoding : chunked\r\n",
    "TE vertical tab": "Transfer-Encoding:\x0bchunked\r\n",
    "TE chunked with a parameter": "Transfer-Encoding: chunked;q=1\r\n",
    "TE gzip, chunked": "Transfer-Encoding: gzip, chunked\r\n",
    "CL twice, differing": "Content-Length: 5\r\nContent-Length: 6\r\n",
    "CL list": "Content-Length: 5, 5\r\n",
    "CL plus": "Content-Length: +5\r\n",
    "CL negative": "Content-Length: -1\r\n",
    "CL hex": "Content-Length: 0x5\r\n",
    "CL exponent": "Content-Length: 5e0\r\n",
    "CL two numbers": "Content-Length: 5 5\r\n",
    "CL huge": "Content-Length: 99999999999999999999\r\n",
    "CL empty": "Content-Length:\r\n",
    "Expect other than 100-continue": "Expect: 200-ok\r\nContent-Length: 5\r\n",
}


@pytest.mark.parametrize("framing", list(AMBIGUOUS_FRAMINGS))
def test_an_ambiguous_or_malformed_body_framing_is_refused_and_closes(
    upstream: Upstreams, framing: str
) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, AMBIGUOUS_FRAMINGS[framing]) + b"0\r\n\r\n" + smuggled(proxy.port)
        received, closed = exchange(proxy.port, data)
    assert_refused(upstream, received, closed)


MALFORMED_CHUNKS = {
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative size": b"-5\r\nhello\r\n0\r\n\r\n",
    "size overflow (16 hex digits)": b"1" + b"0" * 15 + b"\r\nhello\r\n0\r\n\r\n",
    "space after the size": b"5 \r\nhello\r\n0\r\n\r\n",
    "space before the size": b" 5\r\nhello\r\n0\r\n\r\n",
    "no size": b"\r\nhello\r\n0\r\n\r\n",
    "chunk longer than its size": b"3\r\nhello\r\n0\r\n\r\n",
    "no CRLF after the data": b"5\r\nhelloX0\r\n\r\n",
    "bare CR line end": b"5\rhello\r\n0\r\n\r\n",
    "NUL in the size line": b"5\x00\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("chunks", list(MALFORMED_CHUNKS))
def test_a_malformed_chunk_is_refused_and_nothing_after_it_is_a_request(
    upstream: Upstreams, chunks: str
) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, "Transfer-Encoding: chunked\r\n")
        received, closed = exchange(
            proxy.port, data + MALFORMED_CHUNKS[chunks] + smuggled(proxy.port)
        )
    assert closed and 400 in statuses(received), received
    assert [r.path for r in upstream.requests if "delete" in r.path] == []


@pytest.mark.parametrize(
    "chunks",
    [
        b"5;name=value\r\nhello\r\n0\r\n\r\n",  # a chunk extension: dropped
        b"5\nhello\n0\n\n",  # bare LF line ends: re-framed with CRLF
        b"2\r\nhe\r\n3\r\nllo\r\n0\r\nX-Trailer: evil\r\nContent-Length: 99\r\n\r\n",  # trailers
    ],
    ids=["extension", "bare LF", "trailers"],
)
def test_odd_but_valid_chunking_reaches_the_server_re_framed_and_keep_alive_stays_in_step(
    upstream: Upstreams, chunks: bytes
) -> None:
    """Chunk extensions, bare-LF line ends and trailers are decoded and dropped, never passed
    on: the server gets one clean chunked body, and the pipelined request after it is a request
    of its own (a trailer was not taken for a header of the next one)."""
    with running_proxy(upstream) as proxy:
        second = head(
            proxy.port, method="GET", path="/api/2.0/mlflow/experiments/search", close=True
        )
        data = head(proxy.port, "Transfer-Encoding: CHUNKED\r\n") + chunks + second
        received, _ = exchange(proxy.port, data)
    assert statuses(received) == [200, 200], received  # the first kept alive, in step
    first, after = upstream.requests
    assert (first.path, first.body) == ("/proj" + PATH, b"hello")
    assert first.headers["transfer-encoding"] == "chunked"
    assert "x-trailer" not in first.headers and "x-trailer" not in after.headers
    assert (after.path, after.body) == ("/proj/api/2.0/mlflow/experiments/search", b"")


def test_duplicate_equal_content_lengths_are_one_length(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, "Content-Length: 5\r\nContent-Length: 5\r\n") + b"hello"
        received, _ = exchange(
            proxy.port, data + head(proxy.port, "Content-Length: 0\r\n", close=True)
        )
    assert statuses(received) == [200, 200], received
    assert [r.body for r in upstream.requests] == [b"hello", b""]
    assert upstream.requests[0].headers["content-length"] == "5"


# -- header injection ---------------------------------------------------------------------------

MALFORMED_HEADERS = {
    "NUL in a value": "X-Note: a\x00b\r\n",
    "bare CR in a value": "X-Note: a\rX-Injected: 1\r\n",
    "a line without a colon": "X-Note\r\n",
    "space before the colon": "X-Note : 1\r\n",
    "a space in the name": "X Note: 1\r\n",
    "a non-token name": "X(Note): 1\r\n",
    "an empty name": ": 1\r\n",
    "obs-fold continuation": "X-Note: 1\r\n folded: 2\r\n",
    "DEL in a value": "X-Note: a\x7fb\r\n",
    "ESC in a value": "X-Note: \x1b[31mred\r\n",
}


@pytest.mark.parametrize("header", list(MALFORMED_HEADERS))
def test_a_malformed_header_line_is_refused_and_closes(upstream: Upstreams, header: str) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, MALFORMED_HEADERS[header] + "Content-Length: 0\r\n")
        received, closed = exchange(proxy.port, data + smuggled(proxy.port))
    assert_refused(upstream, received, closed)


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("Transfer-Encoding : chunked\r\n", b"malformed header line b'Transfer-Encoding '"),
        ("X-Note: a\x00b\r\n", b"malformed header line b'X-Note'"),
        ("X-Note\r\n", b"malformed header line '(no colon)'"),
    ],
    ids=["space before the colon", "NUL in the value", "no colon"],
)
def test_the_refusal_of_a_malformed_header_line_names_the_header_not_its_value(
    upstream: Upstreams, header: str, named: bytes
) -> None:
    """What the user (and the log) sees says which header to fix; a line without a colon may be
    a value alone (a secret), so it is not shown at all."""
    with running_proxy(upstream) as proxy:
        received, closed = exchange(proxy.port, head(proxy.port, header))
        log = proxy.log.getvalue()
    assert_refused(upstream, received, closed)
    assert received.endswith(b"refused: " + named + b"\n"), received
    assert named.decode() in log, log


def test_too_many_headers_are_refused_with_431(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        extra = "".join(f"X-H{i}: {i}\r\n" for i in range(150))
        received, closed = exchange(proxy.port, head(proxy.port, extra))
    assert_refused(upstream, received, closed, 431)


def test_a_header_line_longer_than_the_limit_is_refused_with_431(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        received, closed = exchange(proxy.port, head(proxy.port, f"X-Big: {'a' * 70000}\r\n"))
    assert_refused(upstream, received, closed, 431)


def head_of(port: int, total: int) -> bytes:
    """A request (the secret, Content-Length: 0, Connection: close) whose header lines, the
    request line and the blank line aside, are ``total`` bytes: padded with X-Pad-N lines."""
    plain = head(port, "Content-Length: 0\r\n", close=True)
    request_line = f"POST {PATH} HTTP/1.1\r\n".encode()
    padding = total - (len(plain) - len(request_line) - 2)
    count = -(-padding // 60000)  # lines well under MAX_LINE each
    sizes = [padding // count + (i < padding % count) for i in range(count)]
    lines = "".join(
        f"X-Pad-{i}: " + "a" * (size - len(f"X-Pad-{i}: \r\n")) + "\r\n"
        for i, size in enumerate(sizes)
    )
    data = head(port, lines + "Content-Length: 0\r\n", close=True)
    assert len(data) - len(request_line) - 2 == total
    return data


def test_a_head_of_exactly_the_limit_is_forwarded_and_one_byte_more_refused_with_431(
    upstream: Upstreams,
) -> None:
    limit = proxy_module.MAX_HEAD_BYTES
    with running_proxy(upstream) as proxy:
        at_limit, _ = exchange(proxy.port, head_of(proxy.port, limit))
        over, closed = exchange(proxy.port, head_of(proxy.port, limit + 1))
    assert statuses(at_limit) == [200], at_limit[:200]
    [recorded] = upstream.requests
    assert recorded.headers["x-pad-0"].startswith("aaaa")
    assert statuses(over) == [431] and closed, over[:200]


def test_a_head_of_many_long_lines_is_bounded_in_total(upstream: Upstreams) -> None:
    """99 lines just under the per-line limit would hold 6 MiB per connection; the head as a
    whole is bounded far below that: the 431 comes while the attacker is still sending."""
    with running_proxy(upstream) as proxy:
        line = f"X-Big: {'a' * 60000}\r\n".encode()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(head(proxy.port)[:-2])
            sent, answer = 0, b""
            with contextlib.suppress(OSError):
                for _ in range(99):
                    sock.sendall(line)
                    sent += len(line)
                    if select.select([sock], [], [], 0.05)[0]:
                        break
                while block := sock.recv(65536):
                    answer += block
    assert statuses(answer) == [431], answer[:200]
    assert sent <= 1 << 20, f"{sent} bytes of head taken before refusing"
    assert upstream.requests == []


def test_latin1_header_values_pass_unchanged_and_cannot_split(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, "X-Name: caf\xe9\x85 \r\nContent-Length: 0\r\n", close=True)
        received, _ = exchange(proxy.port, data)
    assert statuses(received) == [200], received
    [recorded] = upstream.requests
    assert recorded.headers["x-name"] == "caf\xe9\x85"  # \x85 (NEL) is no line end here
    assert "x-injected" not in recorded.headers


def test_hop_by_hop_headers_named_in_connection_are_not_forwarded(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        data = head(
            proxy.port,
            "Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nProxy-Authorization: x\r\n"
            "Upgrade: h2c\r\nTE: trailers\r\nContent-Length: 0\r\n",
            close=True,
        )
        received, _ = exchange(proxy.port, data)
    assert statuses(received) == [200], received
    [recorded] = upstream.requests
    for name in ("x-secret-hop", "proxy-authorization", "upgrade", "te"):
        assert name not in recorded.headers, name
    assert recorded.headers["authorization"] == f"Bearer {SIGNED}"


# -- request targets and protocols ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("http://evil.example/api/2.0/x", "/proj/http://evil.example/api/2.0/x"),
        ("//evil.example/api/2.0/x", "/proj/evil.example/api/2.0/x"),
        ("api/2.0/x", "/proj/api/2.0/x"),
        ("*", "/proj/*"),
    ],
    ids=["absolute-form", "scheme-relative", "no leading slash", "asterisk"],
)
def test_no_request_target_leaves_the_projects_server_or_prefix(
    upstream: Upstreams, target: str, forwarded: str
) -> None:
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, "Content-Length: 0\r\n", method="OPTIONS", path=target, close=True)
        received, _ = exchange(proxy.port, data)
    assert statuses(received) == [200], received
    assert [r.path for r in upstream.requests] == [forwarded]


@pytest.mark.parametrize(
    "target",
    [
        "/../other-project/api/2.0/mlflow/runs/create",
        "/api/../../other-project/api/2.0/mlflow/runs/create",
        "/%2e%2e/other-project/api/2.0/mlflow/runs/create",
        "/.%2E/other-project/api",
        "/%2E%2e/other-project/api",
        "/./api/2.0/mlflow/runs/create",
        "/api/2.0/..",
    ],
)
def test_a_dot_segment_that_could_escape_the_projects_prefix_is_refused(
    upstream: Upstreams, target: str
) -> None:
    """/proj/../other-project is another project's server for anything that normalizes the
    path (a load balancer, a CDN): the proxy never sends a dot segment, plain or encoded."""
    with running_proxy(upstream) as proxy:
        data = head(proxy.port, "Content-Length: 0\r\n", path=target)
        received, closed = exchange(proxy.port, data)
    assert_refused(upstream, received, closed)


def test_dots_in_a_query_or_a_file_name_are_not_dot_segments(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        path = "/get-artifact?path=../x&run_uuid=1"
        data = (
            head(proxy.port, method="GET", path=path)
            + head(proxy.port, method="GET", path="/artifacts/model..v2/.hidden/a.b")
            # three dots are a name like any other (RFC 3986: only "." and ".." are special)
            + head(proxy.port, method="GET", path="/artifacts/.../%2e%2e%2e/b", close=True)
        )
        received, _ = exchange(proxy.port, data)
    assert statuses(received) == [200, 200, 200], received
    assert [r.path for r in upstream.requests] == [
        "/proj/get-artifact?path=../x&run_uuid=1",
        "/proj/artifacts/model..v2/.hidden/a.b",
        "/proj/artifacts/.../%2e%2e%2e/b",
    ]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 501),
        (b"TRACE / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 501),
        (b"get / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),  # the HTTP/2 preface
        (b"GET / HTTP/1.2\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),
        (b"\r\n\r\nGET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n", 400),  # two empty lines
    ],
    ids=["CONNECT", "TRACE", "lower-case method", "HTTP/0.9", "HTTP/2 preface", "HTTP/1.2",
         "double space", "space in target", "NUL in target", "two leading empty lines"],
)  # fmt: skip
def test_a_request_line_that_is_not_http_1_is_refused_and_closes(
    upstream: Upstreams, request_bytes: bytes, status: int
) -> None:
    with running_proxy(upstream) as proxy:
        data = request_bytes.replace(b"{port}", str(proxy.port).encode())
        received, closed = exchange(proxy.port, data + smuggled(proxy.port))
    assert_refused(upstream, received, closed, status)


def test_a_pipelined_request_after_a_refused_one_is_never_read(upstream: Upstreams) -> None:
    """A request without the secret, then a signed one in the same packet: one refusal, close."""
    with running_proxy(upstream) as proxy:
        refused = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n".encode()
        received, closed = exchange(proxy.port, refused + smuggled(proxy.port))
    assert_refused(upstream, received, closed, 401)


def test_http_1_0_without_keep_alive_is_answered_once_and_closed(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        first = head(proxy.port, method="GET").replace(b"HTTP/1.1", b"HTTP/1.0")
        received, closed = exchange(proxy.port, first + smuggled(proxy.port))
    assert statuses(received) == [200] and closed, received
    assert [r.path for r in upstream.requests] == ["/proj" + PATH]


# -- the response side: a hostile or broken server -------------------------------------------------


@dataclass
class RawUpstream:
    """A server that reads each request's head (and Content-Length body) and answers with the
    next of ``answers``, as raw bytes; ``connections`` counts the connections it accepted."""

    answers: list[bytes]
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/proj"

    def serve(self, sock: socket.socket) -> None:
        with sock:
            reader = sock.makefile("rb")
            while self.answers:
                lines = []
                while (line := reader.readline()) not in (b"\r\n", b""):
                    lines.append(line)
                if not lines:
                    return
                self.requests.append(b"".join(lines))
                for line in lines:
                    if line.lower().startswith(b"content-length:"):
                        reader.read(int(line.split(b":")[1]))
                sock.sendall(self.answers.pop(0))


@contextlib.contextmanager
def raw_upstream(*answers: bytes) -> Iterator[RawUpstream]:
    server = RawUpstream(list(answers))
    listener = socket.create_server(("127.0.0.1", 0))
    server.port = listener.getsockname()[1]

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = listener.accept()
                server.connections += 1
                threading.Thread(target=server.serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server
    finally:
        listener.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def two_gets(port: int) -> bytes:
    return head(port, method="GET") + head(port, method="GET", path="/second", close=True)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: planted=1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",  # the well-formed control
    ],
    ids=["CL and TE", "two lengths", "TE chunked, identity", "CR in a value", "NUL in a value",
         "obs-fold", "four-digit status", "negative length", "control"],
)  # fmt: skip
def test_a_split_or_ambiguous_answer_of_the_server_is_a_502_and_its_connection_dropped(
    upstream: Upstreams, answer: bytes, request: pytest.FixtureRequest
) -> None:
    with raw_upstream(answer, OK, OK) as raw, running_proxy(raw) as proxy:
        received, closed = exchange(proxy.port, two_gets(proxy.port))
    if request.node.callspec.id == "control":  # the same exchange, well-formed: both answered
        assert statuses(received) == [200, 200], received
        assert raw.connections == 1
        return
    assert statuses(received) == [502] and closed, received
    answer_head = received.partition(b"\r\n\r\n")[0].lower()
    assert b"set-cookie" not in answer_head and b"planted" not in answer_head


def test_interim_1xx_answers_are_skipped_and_never_mistaken_for_the_final_one(
    upstream: Upstreams,
) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK
    with raw_upstream(answer, OK) as raw, running_proxy(raw) as proxy:
        received, closed = exchange(proxy.port, two_gets(proxy.port))
    assert statuses(received) == [200, 200] and closed, received  # closed: the second's close
    assert raw.connections == 1


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 60\r\n\r\n"),
    ],
    ids=["HEAD", "204", "304"],
)
def test_a_body_after_a_bodiless_answer_is_never_the_next_answer(
    upstream: Upstreams, method: str, answer: bytes
) -> None:
    """A broken server sends a body after HEAD, 204 or 304, and that body is a whole answer:
    the client's next request must get the server's real answer, not the planted one."""
    planted = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Planted: 1\r\n\r\nplanted"
    with raw_upstream(answer + planted, OK) as raw, running_proxy(raw) as proxy:
        first = head(proxy.port, method=method)
        data = first + head(proxy.port, method="GET", path="/second", close=True)
        received, _ = exchange(proxy.port, data)
    assert b"planted" not in received and b"X-Planted" not in received, received
    assert statuses(received)[1:] in ([200], [502]), received
    assert received.endswith(b"ok") or statuses(received)[1:] == [502]


def test_an_answer_the_server_ends_by_closing_ends_the_clients_connection_too(
    upstream: Upstreams,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    with raw_upstream(answer) as raw, running_proxy(raw) as proxy:
        received, closed = exchange(proxy.port, two_gets(proxy.port))
    assert statuses(received) == [200] and closed, received
    assert received.endswith(b"all of it") and b"connection: close" in received.lower()


def test_connection_close_from_the_server_is_not_reused_and_extra_bytes_are_not_an_answer(
    upstream: Upstreams,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" + (
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nplanted"
    )
    with raw_upstream(answer, OK) as raw, running_proxy(raw) as proxy:
        received, _ = exchange(proxy.port, two_gets(proxy.port))
    assert statuses(received) == [200, 200] and b"planted" not in received, received
    assert raw.connections == 2


def test_a_server_that_closes_mid_body_truncates_and_closes_never_pads(
    upstream: Upstreams,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    with raw_upstream(answer) as raw, running_proxy(raw) as proxy:
        # (the raw upstream closes after its last answer)
        received, closed = exchange(proxy.port, two_gets(proxy.port), wait=3)
    assert closed
    assert statuses(received) in ([502], [502, 502]), received


# -- the secret and the token never in the log ----------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        "GET /?token={secret} HTTP/1.2\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "GET /x?token={secret}\x01 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: mlflow-aws-{port}={secret}\x00\r\n"
        "\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization : Bearer {secret}\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization Bearer {secret}\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n{secret}\r\n",
    ],
    ids=["query of a bad request line", "query with a control character",
         "bad Authorization line", "bad Cookie line", "space before the colon",
         "Authorization without its colon", "the secret as a chunk size line"],
)  # fmt: skip
def test_the_run_secret_in_a_malformed_request_is_never_logged(
    upstream: Upstreams, request_bytes: str
) -> None:
    with running_proxy(upstream) as proxy:
        data = request_bytes.format(secret=SECRET, port=proxy.port).encode("latin-1")
        received, closed = exchange(proxy.port, data)
        log = proxy.log.getvalue()
    assert closed and statuses(received)[-1] in (400, 401), received
    assert upstream.requests == []
    assert log, "the refusal is logged"
    assert SECRET[:12] not in log, log
    assert SECRET[:12].encode() not in received, received


def test_the_signed_token_is_never_in_an_error_reply_or_the_log(upstream: Upstreams) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
    with raw_upstream(answer) as raw, running_proxy(raw) as proxy:
        received, _ = exchange(proxy.port, head(proxy.port, method="GET", close=True))
        log = proxy.log.getvalue()
    assert statuses(received) == [502], received
    assert SIGNED.encode() in raw.requests[0]  # it was signed, and the token went upstream only
    assert SIGNED.encode() not in received and SIGNED not in log and SECRET not in log


# -- resource exhaustion ---------------------------------------------------------------------------


def dribble(
    port: int, data: bytes, every: float, for_seconds: float, first: bytes = b""
) -> tuple[float, bytes]:
    """Send ``first``, then ``data`` a byte every ``every`` s; (seconds until the proxy closed
    the connection for good, not just its sending side; what it answered)."""
    start = time.monotonic()
    received, half_closed = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=every) as sock:
        sock.sendall(first)
        for byte in data:
            if time.monotonic() - start > for_seconds:
                break
            try:
                sock.sendall(bytes([byte]))
                if half_closed:
                    time.sleep(every)
                    continue
                block = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset, broken pipe: closed for good
                return time.monotonic() - start, received
            half_closed = not block
            received += block
    return time.monotonic() - start, received


def test_slowloris_on_the_request_head_is_cut_off(
    upstream: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte every 0.2 s keeps every per-read timeout happy; the head as a whole has a
    deadline (set to 1 s here), after which the proxy answers 408 and closes."""
    monkeypatch.setattr(proxy_module, "HEAD_TIMEOUT", 1.0, raising=False)
    with running_proxy(upstream) as proxy:
        endless = head(proxy.port)[:-2] + b"X-Slow: " + b"a" * 1000
        took, received = dribble(proxy.port, endless, every=0.2, for_seconds=6)
    assert took < 4, f"still open after {took:.1f} s"
    assert statuses(received) == [408], received
    assert upstream.requests == []


def test_slowloris_on_a_refused_requests_body_is_cut_off(upstream: Upstreams) -> None:
    """After a refusal the proxy discards what the client still sends for LINGER_SECONDS: a
    body dribbled a byte every 0.2 s must not keep that going forever."""
    with running_proxy(upstream) as proxy:
        refused = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nContent-Length: 9999\r\n\r\n"
        took, received = dribble(
            proxy.port, b"a" * 9999, 0.2, for_seconds=8, first=refused.encode()
        )
    assert statuses(received) == [401], received
    assert took < 4, f"still open after {took:.1f} s"


def test_an_unending_body_without_the_secret_is_cut_off(upstream: Upstreams) -> None:
    with running_proxy(upstream) as proxy:
        refused = (
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = _chunk_of(64 * 1024)
        start, sent = time.monotonic(), 0
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(refused)
            with contextlib.suppress(OSError):
                while time.monotonic() - start < 8:
                    sock.sendall(chunk)
                    sent += len(chunk)
        took = time.monotonic() - start
    assert took < 4 and sent < 8 << 20, f"{sent} bytes taken in {took:.1f} s"
    assert upstream.requests == []


def _chunk_of(size: int) -> bytes:
    return b"%x\r\n%s\r\n" % (size, b"a" * size)


def test_thousands_of_idle_connections_are_bounded(
    upstream: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection is a thread: past MAX_CONNECTIONS (set to 16 here) new ones are
    answered 503 and closed at once, and the proxy serves again when the idle ones go."""
    monkeypatch.setattr(proxy_module, "MAX_CONNECTIONS", 16, raising=False)
    with running_proxy(upstream) as proxy, contextlib.ExitStack() as stack:
        before = threading.active_count()
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port), timeout=3))
            for _ in range(200)
        ]
        time.sleep(0.5)
        threads = threading.active_count() - before
        refused = 0
        for sock in idle:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if sock.recv(4096).startswith(b"HTTP/1.1 503"):
                    refused += 1
        assert threads <= 20, f"{threads} threads for 200 idle connections"
        assert refused >= 180, refused
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        received, _ = exchange(proxy.port, head(proxy.port, method="GET", close=True))
    assert statuses(received) == [200], received
