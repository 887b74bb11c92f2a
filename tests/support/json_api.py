"""The HTTP plumbing of the tests' stand-ins for AWS JSON APIs (tests/support/ecs_fake.py,
tests/support/data_api_emulator.py): a threaded server on 127.0.0.1 that hands each POST to one
function, and the JSON answer with AWS's error header."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def start(
    handle: Callable[[BaseHTTPRequestHandler], None],
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``handle`` for every POST on a free port, from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, each answer would wait
        # ~40 ms for the client's delayed ACK, which AWS's endpoints do not do.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            handle(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def close(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def body(handler: BaseHTTPRequestHandler) -> bytes:
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def reply(
    handler: BaseHTTPRequestHandler, status: int, answer: Mapping[str, Any], content_type: str,
    error: str = "", headers: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    """``answer`` as JSON; ``error``: AWS's error code, in ``x-amzn-ErrorType`` as AWS sends it."""
    data = json.dumps(answer, default=str).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if error:
        handler.send_header("x-amzn-ErrorType", error)
    handler.end_headers()
    handler.wfile.write(data)
