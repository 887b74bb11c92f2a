"""``python -m helper serve --remote``: a local reverse proxy to the project's central server that
signs every request with the teammate's AWS identity (``mlflow_aws.auth``), so the stock client,
unmodified scripts and the browser UI use ``http://127.0.0.1:<port>`` as with a local server.

Standard library only (plus boto3 for signing), so it runs wherever the helper is pip-installed:
no Docker, no database access, no MLflow server on the laptop. One thread per client connection,
each with its own kept-alive upstream connection; bodies stream both ways in blocks of
``BLOCK_BYTES``, so a multi-GB artifact never sits in memory.

HTTP/1.1 is spoken here directly on the sockets, not through http.server and http.client: their
email-based header parsing and separate writes for head and body cost more CPU and wake-ups per
call than everything else the proxy does (issue 17). It is also stricter than theirs: a request
line, header line or chunk that is not exactly as RFC 9112 spells it is refused.

The proxy holds the teammate's identity, so it is the trust boundary: it answers only requests
that carry the run's secret (``mlflow_aws.run_secret``: the client's MLFLOW_TRACKING_TOKEN or the
browser's cookie), whose Host is itself (no DNS rebinding) and whose Origin, if any, is itself
(no cross-site requests from other web pages), then drops Origin, Referer, cookies and any
Authorization before adding its own token; no cookie of the server comes back either.

Every refusal and every error reply closes the connection: a body the proxy did not read (or
read only in part) is never taken for the next request (HTTP/1.1 keep-alive desync), and a body
whose framing is ambiguous (Content-Length and Transfer-Encoding, a bad length, a coding other
than chunked, a malformed chunk) is refused before anything is signed.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import re
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from mlflow_aws import run_secret
from mlflow_aws.auth.token import host_header
from mlflow_aws.load_balancer import IDLE_TIMEOUT_SECONDS

from .errors import HelperError

BLOCK_BYTES = 1 << 20
SMALL_BODY_BYTES = 1 << 20  # read whole (one send, replayable on a stale connection) below this
# Per socket operation. A proxied artifact keeps the server silent while it moves the whole
# object to or from S3; the load balancer allows that up to its idle timeout, so the proxy waits
# a little longer: the ALB decides, and its own 504 (not the proxy's 502) says where it stopped.
UPSTREAM_TIMEOUT = IDLE_TIMEOUT_SECONDS + 10.0
CLIENT_IDLE_TIMEOUT = 300.0
CHECK_TIMEOUT = 30.0  # the sign-in check before serving (Aurora resuming can take ~15 s)
MAX_LINE = 65536  # a request line, header line or chunk line (http.client's limit)
MAX_HEADERS = 100
MAX_HEAD_BYTES = 1 << 18  # a whole head (100 lines of MAX_LINE would hold 6.4 MiB a connection)
HEAD_TIMEOUT = 30.0  # a request's head, from its first byte (slowloris: a byte every 299 s)
MAX_CONNECTIONS = 256  # one thread each; past it a new connection gets 503 and is closed
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "transfer-encoding", "upgrade"}
)  # fmt: skip
# Replaced by the proxy (host, authorization, content-length), or not for the server (origin and
# referer name 127.0.0.1, which MLflow's CORS check would treat as another site; expect is the
# proxy's business; cookies are the browser's for 127.0.0.1, the proxy's own secret among them,
# and no business of the server's).
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "host", "authorization", "origin", "referer", "expect", "cookie", "content-length"
}  # fmt: skip
# No cookie of the server lands in the browser under 127.0.0.1, where every local server reads it.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "set-cookie"}
NO_BODY_STATUSES = frozenset({204, 304})
LINGER_SECONDS = 1.0  # after a refusal, unread body bytes are discarded this long (then closed)
LINGER_BYTES = 1 << 20
_DIGITS = re.compile(r"[0-9]{1,18}")
# "." or ".." as a path segment, plain or percent-encoded: /proj/../other is another project's
# server for anything on the way that normalizes paths.
_DOT_SEGMENT = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:/|$)", re.IGNORECASE)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[^\r\n]*)?\r?\n")
# RFC 9112: method SP request-target SP HTTP-version; a target of visible ASCII only.
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]{1,16384}) HTTP/1\.([01])\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: ([^\r\n]*))?\r?\n")
# field-name ":" OWS field-value OWS, no obsolete line folding, no control characters.
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r?\n"
)


class BadRequestBody(Exception):
    """The request's body framing is ambiguous or malformed: refused, the connection closed."""


class BadMessage(Exception):
    """A request (or the server's answer) that is not well-formed HTTP/1.1: refused, closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UpstreamClosed(ConnectionError):
    """The server closed the connection without answering (a stale kept-alive connection)."""


@dataclass(frozen=True)
class Upstream:
    """The central server of one project: ``https://<domain>/<project>``."""

    scheme: str
    hostname: str
    port: int
    base_path: str  # "/<project>", no trailing slash ("" for a server at the root)

    @classmethod
    def from_uri(cls, uri: str) -> Upstream:
        parts = urlsplit(uri)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query:
            raise HelperError(f"the project's TrackingUri {uri!r} is not an http(s) URL")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        return host_header(f"{self.scheme}://{self.hostname}:{self.port}")

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host_header}"

    def path_for(self, local_path: str) -> str:
        return self.base_path + (local_path if local_path.startswith("/") else "/" + local_path)

    def local_location(self, location: str) -> str:
        """A redirect's Location as seen through the proxy."""
        for prefix in (self.origin + self.base_path, self.base_path):
            if prefix and location.startswith(prefix + "/"):
                return location[len(prefix) :]
        return location

    def connect(self, timeout: float = UPSTREAM_TIMEOUT) -> http.client.HTTPConnection:
        """An http.client connection (the one-off sign-in check)."""
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.hostname, self.port, timeout=timeout,
                context=_tls_context(),  # certificate and host name verified
            )  # fmt: skip
        return http.client.HTTPConnection(self.hostname, self.port, timeout=timeout)

    def open_socket(self, timeout: float = UPSTREAM_TIMEOUT) -> socket.socket:
        """A connected socket to the server (TLS, certificate and host name verified, for
        https); no Nagle: a request's head and body go out in one write anyway, and a streamed
        body's last block must not wait for an ACK."""
        sock = socket.create_connection((self.hostname, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            try:
                return _tls_context().wrap_socket(sock, server_hostname=self.hostname)
            except BaseException:
                sock.close()
                raise
        return sock


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every upstream connection: building one loads the system's CAs."""
    return ssl.create_default_context()


def _chunked_body(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """Decode a chunked body, block by block (strictly: anything but well-formed chunks raises
    BadRequestBody, and the connection is closed)."""
    while True:
        size_line = stream.readline(1024)
        match = _CHUNK_SIZE.fullmatch(size_line)
        if match is None:
            raise BadRequestBody(f"malformed chunk size line ({len(size_line)} bytes)")
        size = int(match.group(1), 16)
        if size == 0:
            for _ in range(100):
                trailer = stream.readline(1024)
                if trailer in (b"\r\n", b"\n"):
                    return  # trailers: dropped
                if not trailer.endswith(b"\n"):
                    raise BadRequestBody("malformed chunked trailer")
            raise BadRequestBody("too many chunked trailers")
        yield from _sized_body(stream, size)
        if stream.readline(3) not in (b"\r\n", b"\n"):
            raise BadRequestBody("a chunk does not end with CRLF")


def _sized_body(stream: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining:
        block = stream.read(min(remaining, BLOCK_BYTES))
        if not block:
            raise ConnectionError("the peer closed the connection mid-body")
        remaining -= len(block)
        yield block


def _read_exactly(stream: io.BufferedIOBase, length: int) -> bytes:
    data = stream.read(length)
    if len(data) != length:
        raise ConnectionError("the peer closed the connection mid-body")
    return data


def _head_lines(stream: io.BufferedIOBase) -> list[bytes]:
    """The header lines up to the blank line that ends a head (each with its line ending)."""
    lines: list[bytes] = []
    total = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return lines
        total += len(line)
        if len(line) > MAX_LINE or len(lines) >= MAX_HEADERS or total > MAX_HEAD_BYTES:
            raise BadMessage("a header line is too long, or there are too many", 431)
        if not line.endswith(b"\n"):
            raise BadMessage("the connection closed mid-head")  # an answer in part: no retry
        lines.append(line)


def _parse_headers(lines: list[bytes]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """(name, value) pairs as sent, and lower-case names to every value (``Gate.decide``'s)."""
    pairs: list[tuple[str, str]] = []
    by_name: dict[str, list[str]] = {}
    for line in lines:
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            # Its name only: the value may be a secret (Authorization, Cookie), and it is logged.
            field, colon, _ = line.partition(b":")
            raise BadMessage(f"malformed header line {field[:40] if colon else '(no colon)'!r}")
        name, value = match.group(1).decode("ascii"), match.group(2).decode("latin-1")
        pairs.append((name, value))
        by_name.setdefault(name.lower(), []).append(value)
    return pairs, by_name


def _tokens(values: list[str]) -> set[str]:
    """The comma-separated tokens of a header such as Connection, lower case."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def _content_length(lengths: list[str]) -> int:
    if len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0]):
        raise BadRequestBody(f"Content-Length {', '.join(lengths)!r}")
    return int(lengths[0])


def _chunk(block: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(block), block)


class UpstreamConnection:
    """One kept-alive connection to the server, used by one client connection's thread."""

    def __init__(self, upstream: Upstream) -> None:
        self.sock = upstream.open_socket(UPSTREAM_TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def closed_by_peer(self) -> bool:
        """An idle kept-alive connection is readable only when the server has closed it."""
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        return bool(pending or select.select([self.sock], [], [], 0)[0])

    def holds_bytes(self) -> bool:
        """Whether the reader already holds bytes past the answer just read (a broken server's
        body after HEAD, 204 or 304), which would be taken for the next request's answer.
        (Not on every request: making the socket non-blocking for the peek costs ~25% of the
        proxy's CPU per call.)"""
        self.sock.setblocking(False)  # with nothing held, peek must not wait for more
        try:
            return bool(self.reader.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        finally:
            self.sock.settimeout(UPSTREAM_TIMEOUT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
            self.sock.close()


@dataclass
class Response:
    """The server's answer: its head parsed, its body still on the connection."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    length: int | None  # Content-Length, when sized
    chunked: bool
    will_close: bool  # the server closes after it (or its end is the close)


def read_response(reader: io.BufferedIOBase, method: str) -> Response:
    """The next final answer's head (1xx interim answers skipped); raises BadMessage when it is
    not well-formed, UpstreamClosed when the server closed without answering."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            raise UpstreamClosed("the server closed the connection without answering")
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise BadMessage(f"a malformed status line {line[:40]!r}", 502)
        pairs, by_name = _parse_headers(_head_lines(reader))
        status = int(match.group(2))
        if status >= 200:
            break
    connection = _tokens(by_name.get("connection", []))
    http10 = match.group(1) == b"0"
    will_close = "close" in connection or (http10 and "keep-alive" not in connection)
    codings, lengths = by_name.get("transfer-encoding"), by_name.get("content-length")
    if method == "HEAD" or status in NO_BODY_STATUSES:
        length, chunked = 0, False
    elif codings:
        if [c.lower() for c in codings] != ["chunked"] or lengths:  # (values come stripped)
            raise BadMessage(f"the server's Transfer-Encoding {', '.join(codings)!r}", 502)
        length, chunked = None, True
    elif lengths:
        try:
            length, chunked = _content_length(lengths), False
        except BadRequestBody as exc:
            raise BadMessage(f"the server's {exc}", 502) from None
    else:
        length, chunked, will_close = None, False, True  # delimited by the server closing
    reason = (match.group(3) or b"").decode("latin-1")
    return Response(status, reason, pairs, length, chunked, will_close)


class SigningProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # (socketserver's 5 drops a browser's or a parallel upload's SYNs)

    def __init__(
        self, port: int, upstream: Upstream, tokens: Any, log: IO[str], secret: str
    ) -> None:
        self.upstream = upstream
        self.upstream_host = upstream.host_header  # computed once, sent with every request
        self.tokens = tokens  # mlflow_aws.auth.signer.TokenSource
        self.log = log
        self.local_port = port
        self.gate = run_secret.Gate(secret, port)  # no path without the secret
        self.head_deadlines: dict[socket.socket, float] = {}  # connections reading a head
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", port), ProxyHandler)
        threading.Thread(target=self.cut_slow_heads, name="proxy-heads", daemon=True).start()

    def cut_slow_heads(self) -> None:
        """Slowloris: a byte now and then satisfies every per-read timeout, so a head not done
        by its deadline has its reading side shut (its reader then answers 408 and closes)."""
        while not self.closing.wait(min(1.0, HEAD_TIMEOUT / 4)):
            now = time.monotonic()
            for sock, deadline in self.head_deadlines.copy().items():
                if deadline < now:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to MAX_CONNECTIONS (idle ones cost a thread each)."""
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                message = b"the signing proxy has too many connections open; try again\n"
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(message), message)
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()


class ProxyHandler(socketserver.BaseRequestHandler):
    """One client connection: its requests one after the other, each forwarded signed."""

    server: SigningProxy
    request: socket.socket
    upstream_connection: UpstreamConnection | None = None
    command = ""
    path = ""
    answered: bool  # the head of this request's answer is written (set per request)

    def setup(self) -> None:
        self.request.settimeout(CLIENT_IDLE_TIMEOUT)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.request.makefile("rb")
        self.close_connection = False

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # the client went away (reset, timeout)
            while not self.close_connection:
                self.handle_one_request()

    def finish(self) -> None:
        self.drop_upstream()
        with contextlib.suppress(OSError):
            self.rfile.close()

    # -- one request ---------------------------------------------------------------------------

    def handle_one_request(self) -> None:
        self.command = self.path = ""
        if not self.rfile.peek(1):  # (kept alive: up to CLIENT_IDLE_TIMEOUT for the next request)
            self.close_connection = True  # the client closed between requests
            return
        # From its first byte, a head has HEAD_TIMEOUT in all (SigningProxy.cut_slow_heads).
        deadlines = self.server.head_deadlines
        deadlines[self.request] = deadline = time.monotonic() + HEAD_TIMEOUT
        try:
            line = self.rfile.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: one empty line before a request: ignored
                line = self.rfile.readline(MAX_LINE + 1)
            headers, by_name = self.parse_head(line)
        except BadMessage as exc:
            status, message = exc.status, str(exc)
            if time.monotonic() > deadline:
                status, message = 408, f"the request's head took longer than {HEAD_TIMEOUT:g} s"
            self.reply_error(status, f"refused: {message}")
            return
        finally:
            deadlines.pop(self.request, None)
        self.forward(headers, by_name)

    def parse_head(self, line: bytes) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            # Without its query: the one-time URL's token is never logged.
            raise BadMessage(f"a malformed request line {line.partition(b'?')[0][:40]!r}")
        self.command = match.group(1).decode("ascii")
        path = match.group(2).decode("ascii")
        # As http.server: a path starting with // is not a scheme-relative URL.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        if ("." in path or "%" in path) and _DOT_SEGMENT.search(self.path.partition("?")[0]):
            raise BadMessage("a '.' or '..' path segment (it could leave the project's path)")
        headers, by_name = _parse_headers(_head_lines(self.rfile))
        connection = _tokens(by_name.get("connection", []))
        if match.group(3) == b"0":
            self.close_connection = "keep-alive" not in connection
        else:
            self.close_connection = "close" in connection
        if self.command not in METHODS:
            raise BadMessage(f"method {self.command} is not supported", 501)
        return headers, by_name

    def forward(self, headers: list[tuple[str, str]], by_name: dict[str, list[str]]) -> None:
        path, _, query = self.path.partition("?")
        verdict = self.server.gate.decide(self.command, path, query, by_name)
        if not verdict.allowed:
            self.refuse(verdict)
            return
        try:
            body, length, chunked = self.request_body(by_name)
        except BadRequestBody as exc:
            self.reply_error(400, f"refused: {exc}")
            return
        try:
            token = self.server.tokens.token()
        except Exception as exc:  # no credentials, expired SSO session: say so, sign nothing
            self.reply_error(503, f"cannot sign the request with your AWS identity: {exc}")
            return
        head = self.upstream_head(headers, by_name, token, length, chunked)
        try:
            response = self.send_upstream(head, body, chunked)
        except BadRequestBody as exc:
            self.drop_upstream()  # it has part of a body: never reused
            self.reply_error(400, f"refused: {exc}")
            return
        except (OSError, BadMessage) as exc:
            self.drop_upstream()
            self.reply_error(502, f"cannot reach {self.server.upstream.origin}: {exc}")
            return
        # Whatever goes wrong from here on ends this connection, and finish() then drops the
        # upstream one too: bytes of the answer may be left on it.
        self.answered = False
        try:
            self.relay_response(response)
        except (BadRequestBody, BadMessage) as exc:  # the server's body is malformed
            if self.answered:  # the client sees a truncated answer: the connection closes
                self.server.log.write(f"proxy: {self.command} {self.path_for_log()}: {exc}\n")
                self.close_connection = True
            else:
                self.reply_error(502, f"{self.server.upstream.origin} answered badly: {exc}")
            return
        if response.will_close:
            self.drop_upstream()

    def request_body(
        self, by_name: dict[str, list[str]]
    ) -> tuple[bytes | Iterator[bytes] | None, int | None, bool]:
        """(body, Content-Length, chunked), read as it is framed, strictly: whatever does not
        say exactly one way where the body ends raises BadRequestBody."""
        codings = by_name.get("transfer-encoding", [])
        lengths = by_name.get("content-length", [])
        if codings and lengths:
            raise BadRequestBody("both Content-Length and Transfer-Encoding")
        expect = by_name.get("expect", [])
        if expect:
            if [e.lower() for e in expect] != ["100-continue"]:  # (values come stripped)
                raise BadRequestBody(f"Expect {', '.join(expect)!r} (only 100-continue)")
            if codings or lengths:
                self.request.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if codings:
            if [c.lower() for c in codings] != ["chunked"]:
                raise BadRequestBody(f"Transfer-Encoding {', '.join(codings)!r} (only chunked)")
            return _chunked_body(self.rfile), None, True
        if not lengths:
            return None, None, False
        length = _content_length(lengths)
        if length <= SMALL_BODY_BYTES:
            try:
                return _read_exactly(self.rfile, length), length, False
            except ConnectionError:
                raise BadRequestBody("the client closed the connection mid-body") from None
        return _sized_body(self.rfile, length), length, False

    def upstream_head(
        self, headers: list[tuple[str, str]], by_name: dict[str, list[str]], token: str,
        length: int | None, chunked: bool,
    ) -> bytes:  # fmt: skip
        """The request for the server: the client's own headers without the dropped ones (and
        those its Connection header names), then the server's Host, the token and the framing."""
        dropped = DROPPED_REQUEST_HEADERS | _tokens(by_name.get("connection", []))
        lines = [f"{self.command} {self.server.upstream.path_for(self.path)} HTTP/1.1"]
        lines += [f"{n}: {v}" for n, v in headers if n.lower() not in dropped]
        lines += [f"Host: {self.server.upstream_host}", f"Authorization: Bearer {token}"]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None:
            lines.append(f"Content-Length: {length}")
        return "\r\n".join([*lines, "", ""]).encode("latin-1")

    def send_upstream(
        self, head: bytes, body: bytes | Iterator[bytes] | None, chunked: bool
    ) -> Response:
        reused = self.upstream_connection is not None
        try:
            return self._send(head, body, chunked)
        except ConnectionError:
            # A kept-alive connection the server closed meanwhile: retry once on a new one,
            # unless part of a streamed body is already gone.
            self.drop_upstream()
            if not reused or not (body is None or isinstance(body, bytes)):
                raise
            return self._send(head, body, chunked)

    def _send(self, head: bytes, body: bytes | Iterator[bytes] | None, chunked: bool) -> Response:
        connection = self.upstream_connection
        if connection is not None and connection.closed_by_peer():
            self.drop_upstream()  # the server closed it while idle (uvicorn: after 5 s)
            connection = None
        if connection is None:
            connection = self.upstream_connection = UpstreamConnection(self.server.upstream)
        if body is None or isinstance(body, bytes):
            connection.sock.sendall(head + (body or b""))  # one write: one wake-up of the server
        else:
            connection.sock.sendall(head)
            for block in body:
                connection.sock.sendall(_chunk(block) if chunked else block)
            if chunked:
                connection.sock.sendall(b"0\r\n\r\n")
        return read_response(connection.reader, self.command)

    def relay_response(self, response: Response) -> None:
        head = [f"HTTP/1.1 {response.status} {response.reason}"]
        for name, value in response.headers:
            lower = name.lower()
            if lower in DROPPED_RESPONSE_HEADERS:
                continue
            if lower == "location":
                value = self.server.upstream.local_location(value)
            head.append(f"{name}: {value}")
        if response.status >= 400:
            self.server.log.write(
                f"proxy: {self.command} {self.path_for_log()} -> {response.status}\n"
            )
        assert self.upstream_connection is not None
        reader = self.upstream_connection.reader
        if response.length is not None and response.length <= SMALL_BODY_BYTES:
            # Most API answers (and HEAD, 204, 304): head and body in one write.
            if self.command == "HEAD" or response.status in NO_BODY_STATUSES:
                lengths = [v for n, v in response.headers if n.lower() == "content-length"]
                self.write_head(head + [f"Content-Length: {v}" for v in lengths[:1]])
                if self.upstream_connection.holds_bytes():
                    self.drop_upstream()  # a body after a bodiless answer: never the next answer
                return
            try:
                body = _read_exactly(reader, response.length)
            except ConnectionError:
                raise BadMessage("the server closed the connection mid-answer", 502) from None
            self.write_head([*head, f"Content-Length: {len(body)}"], body)
            return
        if response.length is not None:
            self.write_head([*head, f"Content-Length: {response.length}"])
            blocks = _sized_body(reader, response.length)
        elif response.chunked:
            rest = self.small_chunked_answer(head, _chunked_body(reader))
            if rest is None:
                return
            blocks = rest
        else:  # delimited by the server closing: so is ours
            self.write_head([*head, "Connection: close"])
            self.close_connection = True
            blocks = iter(functools.partial(reader.read1, BLOCK_BYTES), b"")
        for block in blocks:
            self.request.sendall(_chunk(block) if response.chunked else block)
        if response.chunked:
            self.request.sendall(b"0\r\n\r\n")

    def small_chunked_answer(
        self, head: list[str], blocks: Iterator[bytes]
    ) -> Iterator[bytes] | None:
        """A chunked answer that ends within SMALL_BODY_BYTES goes out sized, in one write
        (None); a longer one goes out chunked: its head now, the blocks to stream returned."""
        buffered: list[bytes] = []
        size = 0
        for block in blocks:
            buffered.append(block)
            size += len(block)
            if size > SMALL_BODY_BYTES:
                self.write_head([*head, "Transfer-Encoding: chunked"])
                return _prepended(buffered, blocks)
        body = b"".join(buffered)
        self.write_head([*head, f"Content-Length: {len(body)}"], body)
        return None

    def write_head(self, lines: list[str], body: bytes = b"") -> None:
        self.answered = True
        self.request.sendall("\r\n".join([*lines, "", ""]).encode("latin-1") + body)

    # -- small parts ---------------------------------------------------------------------------

    def drop_upstream(self) -> None:
        if self.upstream_connection is not None:
            self.upstream_connection.close()
            self.upstream_connection = None

    def refuse(self, verdict: run_secret.Verdict) -> None:
        head = run_secret.refusal_head(verdict)
        self.reply_error(verdict.status, verdict.message, head, log=verdict.status != 302)

    def reply_error(
        self,
        status: int,
        message: str,
        head: list[tuple[str, str]] | None = None,
        log: bool = True,
    ) -> None:
        """Answer and close the connection, whatever of the request's body was or was not read:
        its unread bytes must never be parsed as another request."""
        if log:
            self.server.log.write(
                f"proxy: {self.command or '-'} {self.path_for_log()} -> {status}: {message}\n"
            )
        data = (message + "\n").encode()
        self.close_connection = True
        reason = http.HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in head or [("Content-Type", "text/plain; charset=utf-8")]:
            if name.lower() != "connection":
                lines.append(f"{name}: {value}")
        lines += [f"Content-Length: {len(data)}", "Connection: close"]
        self.write_head(lines, b"" if self.command == "HEAD" else data)
        self.linger()

    def linger(self) -> None:
        """Half-close, then discard what the client still sends for a moment, so the answer is
        not lost to a reset (closing with unread bytes sends one) before the client reads it."""
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_WR)
            # LINGER_SECONDS in all: a byte now and then must not keep it going.
            end = time.monotonic() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES and (left := end - time.monotonic()) > 0:
                self.request.settimeout(left)
                if not (block := self.rfile.read1(BLOCK_BYTES)):
                    break
                discarded += len(block)

    def path_for_log(self) -> str:
        """The request's path without its query (the one-time URL's token is never logged)."""
        return self.path.partition("?")[0]


def _prepended(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


# -- the command ----------------------------------------------------------------------------------


def check_signed_in(upstream: Upstream, tokens: Any) -> None:
    """One signed request before serving, so a closed network, an expired session or an identity
    the server does not allow fails now, with the server's reason, not in the user's script."""
    path = upstream.path_for("/api/2.0/mlflow/experiments/search?max_results=1")
    try:
        token = tokens.token()
    except Exception as exc:
        raise HelperError(f"cannot sign in to {upstream.origin}: {exc}") from None
    try:
        connection = upstream.connect(timeout=CHECK_TIMEOUT)
        try:
            connection.request(
                "GET",
                path,
                headers={"Authorization": f"Bearer {token}", "Host": upstream.host_header},
            )
            response = connection.getresponse()
            text = response.read(2000).decode("utf-8", "replace").strip()
            reason = [line.strip() for line in text.splitlines()]
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        raise HelperError(
            f"cannot reach the central server {upstream.origin} ({exc}); check your network "
            "(VPN) and the project's TrackingUri"
        ) from None
    if response.status in (401, 403):
        why = reason[0] if reason else response.reason
        raise HelperError(
            f"the central server refused your AWS identity ({response.status}: {why}). "
            "Ask the platform engineer to allow your role or group for this project"
        )
    if response.status >= 400:
        raise HelperError(f"the central server answered {response.status} {response.reason}")


def serve_remote(
    tracking_uri: str, port: int, region: str, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr,
    artifacts: tuple[str, str] | None = None,
) -> int:  # fmt: skip
    from mlflow_aws.auth.signer import SigningError, TokenSource

    from . import checks
    from .supervise import StopRequested, choose_run_secret, stop_signals, url_lines

    secret = choose_run_secret()
    checks.check_port_free(port)
    upstream = Upstream.from_uri(tracking_uri)
    try:
        tokens = TokenSource(tracking_uri, region=region)  # bound to this project's server
    except SigningError as exc:
        raise HelperError(str(exc)) from None
    check_signed_in(upstream, tokens)
    proxy = SigningProxy(port, upstream, tokens, err, secret)
    thread = threading.Thread(target=proxy.serve_forever, name="signing-proxy", daemon=True)
    with stop_signals():
        thread.start()
        try:
            err.write(
                f"signing proxy to {tracking_uri} is up, signing with your AWS identity; "
                "Ctrl-C stops it\n"
            )
            out.write(url_lines(port, secret))
            if artifacts is not None:
                _say_artifacts(*artifacts, out, err)
            out.flush()
            while thread.is_alive():
                thread.join(0.5)
            raise HelperError("the signing proxy stopped unexpectedly")
        except (KeyboardInterrupt, StopRequested):
            err.write("\nstopping the signing proxy...\n")
            return 0
        finally:
            with contextlib.suppress(Exception):
                proxy.shutdown()
            proxy.server_close()


def _say_artifacts(mode: str, why: str, out: IO[str], err: IO[str]) -> None:
    from mlflow_aws.artifact_settings import describe

    from .artifacts import export_lines

    out.write("".join(f"{line}\n" for line in export_lines(mode)))
    err.write(f"{describe(mode)}: {why}\n")
