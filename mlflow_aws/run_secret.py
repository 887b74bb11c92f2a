"""The per-run secret of a server on the teammate's machine: the laptop MLflow server (process and
docker runtimes, the embedded default) and the helper's signing proxy (``serve --remote``).

Both listen on loopback, where every web page the teammate opens and every other user of the
machine can reach them; the server holds the project role's rights and the proxy signs as the
teammate. So each run makes a random secret, and only requests that carry it are served:

* the MLflow client sends it as ``Authorization: Bearer <secret>`` (MLflow's own
  ``MLFLOW_TRACKING_TOKEN``, printed in the helper's export line);
* a browser opens ``http://127.0.0.1:<port>/?token=<secret>`` once (as Jupyter does): the answer
  sets an HttpOnly, SameSite=Strict cookie and redirects to the same URL without the token;
* everything else gets 401, and a request whose Origin is another site, or that a browser marks
  as sent by another site (``Sec-Fetch-Site``), gets 403 whatever it carries.

``Gate.decide`` is the one decision, used by the proxy (helper/proxy.py) and by the laptop
server's app (``mlflow server --app-name mlflow-aws-run-secret``: ``create_app`` below). The
secret reaches the server in its environment (``MLFLOW_AWS_RUN_SECRET``), never in argv or a
log; the app takes it out of the environment before MLflow starts, and takes the Authorization
header and its cookie out of every request before MLflow sees it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from mlflow_aws import environment as env_names
from mlflow_aws import passwords

SECRET_ENV = env_names.RUN_SECRET
PUBLIC_PORT_ENV = env_names.PUBLIC_PORT  # the port browsers use (docker publishes another)
CLIENT_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # noqa: S105 (the client sends it as a bearer token)
APP_NAME = "mlflow-aws-run-secret"  # `mlflow server --app-name` (pyproject entry point)
QUERY_KEY = "token"  # the one-time browser URL's parameter, as Jupyter names it
BEARER = "bearer "
# What a browser sends for requests a page of this origin, or the user themself, made.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
# Health checks (the helper's, the image's HEALTHCHECK) carry no secret; /health says only "OK".
HEALTH_METHODS = frozenset({"GET", "HEAD"})


MIN_SECRET_CHARS = 32
_SECRET = passwords.pattern(MIN_SECRET_CHARS, 512)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def run_secret_for(environ: Mapping[str, str]) -> str:
    """A new random secret, or the caller's MLFLOW_TRACKING_TOKEN when one is set (as
    JUPYTER_TOKEN is used: a shell that already has the export line keeps working across
    restarts). A weak or malformed one raises ValueError."""
    given = environ.get(CLIENT_TOKEN_ENV)
    if given is None:
        return new_secret()
    if not _SECRET.fullmatch(given):
        raise ValueError(
            f"{CLIENT_TOKEN_ENV} in your environment would be this run's secret, but it is not "
            f"{MIN_SECRET_CHARS}+ characters of {passwords.SHOWN}; unset it (the helper then "
            "makes one) or set a strong one"
        )
    return given


def cookie_name(port: int) -> str:
    """Cookies are not per port: each port's server has its own name."""
    return f"mlflow-aws-{port}"


def browser_url(base_url: str, secret: str) -> str:
    return f"{base_url}/?{urlencode({QUERY_KEY: secret})}"


def export_line(base_url: str, secret: str) -> str:
    return f"export MLFLOW_TRACKING_URI={base_url} {CLIENT_TOKEN_ENV}={secret}"


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode("utf-8"))


def cookie_values(cookie_headers: list[str], name: str) -> list[str]:
    values = []
    for header in cookie_headers:
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                values.append(value)
    return values


def without_cookie(cookie_header: str, name: str) -> str:
    """A Cookie header without ``name`` (the server's own; other cookies are not ours to drop)."""
    kept = [p.strip() for p in cookie_header.split(";") if p.strip().partition("=")[0] != name]
    return "; ".join(p for p in kept if p)


@dataclass(frozen=True)
class Verdict:
    """``status`` 0: serve the request; otherwise answer it with this status and close."""

    status: int = 0
    message: str = ""
    location: str | None = None  # a redirect (the one-time URL, without its token)
    set_cookie: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0


ALLOW = Verdict()


@dataclass(frozen=True)
class Gate:
    secret: str
    port: int  # the port browsers and clients use
    health_path: str | None = None  # served without the secret (the laptop server's /health)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset({f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}"})

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    @property
    def cookie(self) -> str:
        return cookie_name(self.port)

    def decide(
        self, method: str, path: str, query: str, headers: Mapping[str, list[str]]
    ) -> Verdict:
        """``headers``: lower-case names to every value sent under them."""
        if method in HEALTH_METHODS and path == self.health_path and not query:
            return ALLOW
        hosts = headers.get("host", [])
        if len(hosts) != 1 or hosts[0].lower() not in self.hosts:
            return Verdict(
                403, f"Host {hosts!r} is not this server (use http://127.0.0.1:{self.port})"
            )
        for origin in headers.get("origin", []):
            if origin.lower() not in self.origins:
                return Verdict(403, f"cross-origin request from {origin!r} refused")
        for site in headers.get("sec-fetch-site", []):
            if site.lower() not in OWN_FETCH_SITES:
                return Verdict(403, f"a request another site's page made ({site}) is refused")
        if query and any(key == QUERY_KEY for key, _ in parse_qsl(query, keep_blank_values=True)):
            return self._exchange(method, path, query)
        authorizations = headers.get("authorization", [])
        if authorizations:
            given = authorizations[0]
            if (
                len(authorizations) == 1
                and given[: len(BEARER)].lower() == BEARER
                and _same(given[len(BEARER) :].strip(), self.secret)
            ):
                return ALLOW
            return Verdict(401, "wrong token: use the MLFLOW_TRACKING_TOKEN the helper printed")
        cookies = cookie_values(headers.get("cookie", []), self.cookie)
        if any(_same(value, self.secret) for value in cookies):
            return ALLOW
        return Verdict(
            401,
            "this server needs its run's token: set MLFLOW_TRACKING_TOKEN as the helper's export "
            "line says, or open the browser URL it printed (http://127.0.0.1:"
            f"{self.port}/?token=...) once",
        )

    def _exchange(self, method: str, path: str, query: str) -> Verdict:
        """The one-time browser URL: its token becomes a cookie, the browser a clean URL."""
        pairs = parse_qsl(query, keep_blank_values=True)
        given = [value for key, value in pairs if key == QUERY_KEY]
        if method not in HEALTH_METHODS or len(given) != 1 or not _same(given[0], self.secret):
            return Verdict(401, "wrong token in the URL: open the URL the helper printed")
        rest = urlencode([(k, v) for k, v in pairs if k != QUERY_KEY])
        return Verdict(
            302,
            "signed in; continue at " + path,
            location=path + (f"?{rest}" if rest else ""),
            set_cookie=f"{self.cookie}={self.secret}; Path=/; HttpOnly; SameSite=Strict",
        )


def header_lists(pairs: Any) -> dict[str, list[str]]:
    """(name, value) pairs as ``Gate.decide`` takes them."""
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def refusal_head(verdict: Verdict) -> list[tuple[str, str]]:
    """The headers of a refusal or of the one-time URL's redirect; the connection is closed."""
    head = [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close"),
            ("Cache-Control", "no-store")]  # fmt: skip
    if verdict.location is not None:
        head.append(("Location", verdict.location))
    if verdict.set_cookie is not None:
        head.append(("Set-Cookie", verdict.set_cookie))
    return head


# -- the laptop server's app ------------------------------------------------------------------


class RunSecretMiddleware:
    """Wraps MLflow's ASGI app: only requests with the run's secret reach it."""

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        raw = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope.get("headers", [])]
        method = scope.get("method", "GET")
        query = scope.get("query_string", b"").decode("latin-1")
        verdict = self.gate.decide(method, scope.get("path", ""), query, header_lists(raw))
        if QUERY_KEY in query:
            # The server's access log writes this scope's query: never the one-time token.
            pairs = parse_qsl(query, keep_blank_values=True)
            scope["query_string"] = urlencode([(k, v) for k, v in pairs if k != QUERY_KEY]).encode()
        if not verdict.allowed:
            if scope["type"] != "http":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = (verdict.message + "\n").encode()
            head = [*refusal_head(verdict), ("Content-Length", str(len(body)))]
            await send({
                "type": "http.response.start",
                "status": verdict.status,
                "headers": [(n.lower().encode(), v.encode("latin-1")) for n, v in head],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
            return
        # Neither the secret nor any Authorization header reaches MLflow (nothing in it can log
        # or forward them); other cookies pass untouched.
        headers = []
        for (name, value), (raw_name, raw_value) in zip(raw, scope.get("headers", []), strict=True):
            lower = name.lower()
            if lower == "authorization":
                continue
            if lower == "cookie":
                rest = without_cookie(value, self.gate.cookie)
                if rest:
                    headers.append((raw_name, rest.encode("latin-1")))
                continue
            headers.append((raw_name, raw_value))
        await self.app({**scope, "headers": headers}, receive, send)


def gate_from_environ(environ: dict[str, str] | Any) -> Gate:
    """The laptop server's gate; the secret leaves the environment (no child inherits it)."""
    secret = environ.pop(SECRET_ENV, "")
    if len(secret) < 32:
        raise SystemExit(
            f"{APP_NAME}: {SECRET_ENV} must hold the run's secret (32+ characters; the helper "
            "sets it); refusing to serve without one"
        )
    try:
        port = int(environ.get(PUBLIC_PORT_ENV) or environ["MLFLOW_PORT"])
    except (KeyError, ValueError):
        raise SystemExit(f"{APP_NAME}: {PUBLIC_PORT_ENV} must be the served port") from None
    prefix = environ.get("_MLFLOW_STATIC_PREFIX", "").rstrip("/")
    return Gate(secret, port, health_path=f"{prefix}/health")


def create_app() -> RunSecretMiddleware:
    """The uvicorn factory of ``mlflow server --app-name mlflow-aws-run-secret``."""
    gate = gate_from_environ(os.environ)
    from mlflow.server.fastapi_app import app as mlflow_app

    from mlflow_aws import part_urls

    part_urls.install()

    return RunSecretMiddleware(mlflow_app, gate)
