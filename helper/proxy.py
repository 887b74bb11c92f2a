"""``python -m helper serve --remote``: a local reverse proxy to the project's central server that
signs every request with the teammate's AWS identity (``mlflow_aws.auth``), so the stock client,
unmodified scripts and the browser UI use ``http://127.0.0.1:<port>`` as with a local server.

Standard library only (plus boto3 for signing), so it runs wherever the helper is pip-installed:
no Docker, no database access, no MLflow server on the laptop. One thread per client connection,
each with its own kept-alive upstream connection; bodies stream both ways in blocks of
``BLOCK_BYTES``, so a multi-GB artifact never sits in memory.

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
import ssl
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import urlsplit

from mlflow_aws import run_secret
from mlflow_aws.auth.token import host_header

from .errors import HelperError

BLOCK_BYTES = 1 << 20
SMALL_BODY_BYTES = 1 << 20  # read whole (one send, replayable on a stale connection) below this
UPSTREAM_TIMEOUT = 300.0  # per socket operation; a large artifact's transfer may take long overall
CLIENT_IDLE_TIMEOUT = 300.0
CHECK_TIMEOUT = 30.0  # the sign-in check before serving (Aurora resuming can take ~15 s)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "transfer-encoding", "upgrade"}
)  # fmt: skip
# Replaced by the proxy (host, authorization), or not for the server (origin and referer name
# 127.0.0.1, which MLflow's CORS check would treat as another site; expect is the proxy's
# business; cookies are the browser's for 127.0.0.1, the proxy's own secret among them, and no
# business of the server's).
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {
    "host", "authorization", "origin", "referer", "expect", "cookie"
}  # fmt: skip
# No cookie of the server lands in the browser under 127.0.0.1, where every local server reads it.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"content-length", "set-cookie"}
NO_BODY_STATUSES = frozenset({204, 304})
LINGER_SECONDS = 1.0  # after a refusal, unread body bytes are discarded this long (then closed)
LINGER_BYTES = 1 << 20
_DIGITS = re.compile(rb"[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[^\r\n]*)?\r?\n")


class BadRequestBody(Exception):
    """The request's body framing is ambiguous or malformed: refused, the connection closed."""


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
        if self.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.hostname, self.port, timeout=timeout,
                context=_tls_context(),  # certificate and host name verified
            )  # fmt: skip
        else:
            connection = http.client.HTTPConnection(self.hostname, self.port, timeout=timeout)
        connection.connect()
        assert connection.sock is not None
        # Headers and a small body go out in separate writes: without this, Nagle and delayed
        # ACKs add ~40 ms to every call.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every upstream connection: building one loads the system's CAs."""
    return ssl.create_default_context()


def _chunked_body(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """Decode a chunked request body from the client, block by block (strictly: anything but
    well-formed chunks raises BadRequestBody, and the connection is closed)."""
    while True:
        size_line = stream.readline(1024)
        match = _CHUNK_SIZE.fullmatch(size_line)
        if match is None:
            raise BadRequestBody(f"malformed chunk size line {size_line[:40]!r}")
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
            raise ConnectionError("client closed the connection mid-body")
        remaining -= len(block)
        yield block


def _peer_closed(connection: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection is readable only when the server has closed it."""
    if connection.sock is None:
        return True
    readable, _, _ = select.select([connection.sock], [], [], 0)
    return bool(readable)


class SigningProxy(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, port: int, upstream: Upstream, tokens: Any, log: IO[str], secret: str
    ) -> None:
        self.upstream = upstream
        self.tokens = tokens  # mlflow_aws.auth.signer.TokenSource
        self.log = log
        self.local_port = port
        self.gate = run_secret.Gate(secret, port)  # no path without the secret
        super().__init__(("127.0.0.1", port), ProxyHandler)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = CLIENT_IDLE_TIMEOUT
    server: SigningProxy
    upstream_connection: http.client.HTTPConnection | None = None

    def do_GET(self) -> None:
        self.forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # refusals and failures are reported below; nothing else is worth a line

    def finish(self) -> None:
        super().finish()
        if self.upstream_connection is not None:
            self.upstream_connection.close()

    # -- one request ---------------------------------------------------------------------------

    def forward(self) -> None:
        path, _, query = self.path.partition("?")
        verdict = self.server.gate.decide(
            self.command, path, query, run_secret.header_lists(self.headers.items())
        )
        if not verdict.allowed:
            self.refuse(verdict)
            return
        try:
            body, headers = self.request_body_and_headers()
        except BadRequestBody as exc:
            self.reply_error(400, f"refused: {exc}")
            return
        try:
            headers["Authorization"] = f"Bearer {self.server.tokens.token()}"
        except Exception as exc:  # no credentials, expired SSO session: say so, sign nothing
            self.reply_error(503, f"cannot sign the request with your AWS identity: {exc}")
            return
        upstream_path = self.server.upstream.path_for(self.path)
        try:
            response = self.send_upstream(upstream_path, headers, body)
        except BadRequestBody as exc:
            self.drop_upstream()  # it has part of a body: never reused
            self.reply_error(400, f"refused: {exc}")
            return
        except (OSError, http.client.HTTPException) as exc:
            self.drop_upstream()
            self.reply_error(502, f"cannot reach {self.server.upstream.origin}: {exc}")
            return
        relayed = False
        try:
            self.relay_response(response)
            relayed = True
        finally:
            # read1 leaves a fully read sized response open (CPython), which blocks the next
            # request on this connection; one not fully read leaves bytes behind: drop it then.
            response.close()
            if response.will_close or not relayed:
                self.drop_upstream()

    def request_body_and_headers(self) -> tuple[bytes | Iterator[bytes] | None, dict[str, str]]:
        """The headers for the server and the body, read as it is framed, strictly: whatever
        does not say exactly one way where the body ends raises BadRequestBody."""
        headers = {
            name: value
            for name, value in self.headers.items()
            if name.lower() not in DROPPED_REQUEST_HEADERS
        }
        headers["Host"] = self.server.upstream.host_header
        codings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if codings and lengths:
            raise BadRequestBody("both Content-Length and Transfer-Encoding")
        if codings:
            if [c.strip().lower() for c in codings] != ["chunked"]:
                raise BadRequestBody(f"Transfer-Encoding {', '.join(codings)!r} (only chunked)")
            headers.pop("Content-Length", None)
            headers["Transfer-Encoding"] = "chunked"
            return _chunked_body(self.rfile), headers
        if not lengths:
            return None, headers
        if len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0].strip().encode()):
            raise BadRequestBody(f"Content-Length {', '.join(lengths)!r}")
        length = int(lengths[0])
        headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        headers["Content-Length"] = str(length)
        if length <= SMALL_BODY_BYTES:
            body = self.rfile.read(length)
            if len(body) != length:
                raise BadRequestBody("the client closed the connection mid-body")
            return body, headers
        return _sized_body(self.rfile, length), headers

    def send_upstream(
        self, path: str, headers: dict[str, str], body: bytes | Iterator[bytes] | None
    ) -> http.client.HTTPResponse:
        reused = self.upstream_connection is not None
        try:
            return self._send(path, headers, body)
        except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
            # A kept-alive connection the server closed meanwhile: retry once on a new one,
            # unless part of a streamed body is already gone.
            self.drop_upstream()
            if not reused or not (body is None or isinstance(body, bytes)):
                raise
            return self._send(path, headers, body)

    def _send(
        self, path: str, headers: dict[str, str], body: bytes | Iterator[bytes] | None
    ) -> http.client.HTTPResponse:
        if self.upstream_connection is not None and _peer_closed(self.upstream_connection):
            self.drop_upstream()  # the server closed it while idle (uvicorn: after 5 s)
        if self.upstream_connection is None:
            self.upstream_connection = self.server.upstream.connect()
        connection = self.upstream_connection
        connection.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if isinstance(body, bytes):
            connection.endheaders(body)  # headers and body in one write
        else:
            connection.endheaders()
            chunked = headers.get("Transfer-Encoding") == "chunked"
            for block in body or ():
                connection.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                connection.send(b"0\r\n\r\n")
        return connection.getresponse()

    def relay_response(self, response: http.client.HTTPResponse) -> None:
        head = [f"HTTP/1.1 {response.status} {response.reason}"]
        for name, value in response.getheaders():
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
        sized = response.length is not None and not response.chunked
        if self.command == "HEAD" or response.status in NO_BODY_STATUSES:
            length = response.getheader("Content-Length")
            self.write_head(head + ([f"Content-Length: {length}"] if length is not None else []))
            response.read()
            return
        if sized and (response.length or 0) <= SMALL_BODY_BYTES:
            # Most API answers: head and body in one write, one wake-up of the client.
            body = response.read()
            self.write_head([*head, f"Content-Length: {len(body)}"], body)
            return
        if sized:
            self.write_head([*head, f"Content-Length: {response.length}"])
        elif response.chunked:
            self.write_head([*head, "Transfer-Encoding: chunked"])
        else:  # delimited by the server closing: so is ours
            self.write_head([*head, "Connection: close"])
            self.close_connection = True
        while block := response.read1(BLOCK_BYTES):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if response.chunked else block)
        if response.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def write_head(self, lines: list[str], body: bytes = b"") -> None:
        self.wfile.write("\r\n".join([*lines, "", ""]).encode("latin-1") + body)

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
                f"proxy: {self.command} {self.path_for_log()} -> {status}: {message}\n"
            )
        data = (message + "\n").encode()
        self.close_connection = True
        self.send_response_only(status)
        for name, value in head or [("Content-Type", "text/plain; charset=utf-8")]:
            if name.lower() != "connection":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
        self.linger()

    def linger(self) -> None:
        """Half-close, then discard what the client still sends for a moment, so the answer is
        not lost to a reset (closing with unread bytes sends one) before the client reads it."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            discarded = 0
            while discarded < LINGER_BYTES and (block := self.rfile.read1(BLOCK_BYTES)):
                discarded += len(block)

    def path_for_log(self) -> str:
        """The request's path without its query (the one-time URL's token is never logged)."""
        return self.path.partition("?")[0]


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
            reason = response.read(2000).decode("utf-8", "replace").strip().splitlines()
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
