"""The aws-iam app's ASGI layer (``AwsIamAuthMiddleware``) around a stub app, without MLflow,
AWS or a server: what reaches the wrapped app, what is answered instead, and how.

The authenticator is a stand-in with a fixed decision (the token rules have their own tests in
test_auth_unit.py, the whole chain against moto in test_auth_e2e.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from mlflow_aws.auth.server import (
    ARTIFACT_PATHS,
    Authenticator,
    AwsIamAuthMiddleware,
    Decision,
    RateLimiter,
    Settings,
    without_credentials,
)
from mlflow_aws.auth.token import SIGN_IN_PATH

ALICE = "arn:aws:sts::111122223333:assumed-role/ml-team/alice"
ALLOWED = Decision(200, "allowed", ALICE)
TOKEN = "Bearer aws-iam-v2.secret-token-value"
MARKER = "https://bucket.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in"


def settings(prefix: str = "/churn", gateway: bool = False) -> Settings:
    return Settings(
        audience="mlflow.example.com/churn",
        marker_url=MARKER,
        allowed_roles=frozenset({"ml-team"}),
        allowed_groups=frozenset(),
        region="eu-west-1",
        sts_url="https://sts.eu-west-1.amazonaws.com/",
        static_prefix=prefix,
        gateway_enabled=gateway,
    )


class FixedAuthenticator(Authenticator):
    """Decides ``decision`` for every request and records the Authorization it was given."""

    def __init__(self, decision: Decision, cached: bool = False) -> None:
        self.decision = decision
        self.from_cache = cached
        self.asked: list[str | None] = []
        self.sign_ins: list[bool] = []

    def cached(self, header: str | None) -> Decision | None:
        if self.from_cache:
            self.asked.append(header)
            return self.decision
        return None

    def decide(self, header: str | None, *, sign_in: bool = False) -> Decision:
        self.asked.append(header)
        self.sign_ins.append(sign_in)
        return self.decision


class StubApp:
    """An ASGI app in the place of MLflow's: records each scope and answers 200 ``ok``."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})


def scope(path: str, kind: str = "http", headers: list[tuple[bytes, bytes]] | None = None,
          raw_path: bytes | None = None) -> dict[str, Any]:  # fmt: skip
    made: dict[str, Any] = {
        "type": kind,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "headers": [(b"authorization", TOKEN.encode())] if headers is None else headers,
        "query_string": b"",
    }
    if kind == "http":
        made["method"] = "GET"
    return made


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """On a loop of its own: asyncio.run() would leave the thread without a current loop."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coroutine)
    finally:
        loop.close()


def call(
    request: dict[str, Any],
    decision: Decision = ALLOWED,
    prefix: str = "/churn",
    gateway: bool = False,
    limiter: RateLimiter | None = None,
) -> tuple[StubApp, FixedAuthenticator, list[dict[str, Any]]]:
    app, authenticator, sent = StubApp(), FixedAuthenticator(decision), []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = AwsIamAuthMiddleware(app, authenticator, settings(prefix, gateway), limiter)
    run(middleware(request, receive, send))
    return app, authenticator, sent


def response(sent: list[dict[str, Any]]) -> tuple[int, dict[bytes, bytes], bytes]:
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


# -- health: the one path without an identity -----------------------------------------------------


@pytest.mark.parametrize("prefix", ["/churn", ""])
def test_health_reaches_the_app_without_asking_for_an_identity(prefix: str) -> None:
    request = scope(f"{prefix}/health", headers=[])
    app, authenticator, sent = call(request, Decision(401, "no token"), prefix)
    assert app.scopes == [request] and authenticator.asked == []
    assert response(sent)[0] == 200


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/churn/health/", "http"),
        ("/churn/healthz", "http"),
        ("/health", "http"),  # another prefix's health: this server's is /churn/health
        ("/fraud/health", "http"),
        ("/churn/health", "websocket"),
    ],
)
def test_only_the_exact_health_path_over_http_is_open(path: str, kind: str) -> None:
    app, authenticator, sent = call(scope(path, kind, headers=[]), Decision(401, "no token"))
    assert app.scopes == [] and authenticator.asked == [None]
    assert sent[0]["type"] == ("http.response.start" if kind == "http" else "websocket.close")


def test_lifespan_passes_through_untouched() -> None:
    app, authenticator, sent = call({"type": "lifespan"}, Decision(401, "no token"))
    assert app.scopes == [{"type": "lifespan"}] and authenticator.asked == [] and sent == []


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "challenge"),
    [
        (Decision(401, "token expired: signed 20 min ago, tokens last 15 min"), True),
        (Decision(403, f"{ALICE}: role ml-team is not allowed on this server", ALICE), False),
        (Decision(503, "cannot reach STS"), False),
    ],
    ids=["401", "403", "503"],
)
def test_a_refusal_answers_the_reason_and_never_reaches_the_app(
    decision: Decision, challenge: bool
) -> None:
    app, authenticator, sent = call(scope("/churn/api/2.0/mlflow/experiments/search"), decision)
    assert app.scopes == [] and authenticator.asked == [TOKEN]
    status, headers, body = response(sent)
    assert status == decision.status
    assert body == f"{decision.reason}\n".encode()
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert (b"www-authenticate" in headers) is challenge
    if challenge:
        assert headers[b"www-authenticate"].startswith(b'Bearer realm="mlflow-aws"')


def test_a_reason_on_several_lines_is_answered_on_one() -> None:
    _, _, sent = call(scope("/churn/"), Decision(401, "first\r\nsecond\x1b[2J"))
    body = response(sent)[2]
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and b"\r" not in body
    assert b"\x1b" not in body and body.startswith(b"first")


def test_a_websocket_without_an_allowed_identity_is_closed_with_policy_violation() -> None:
    reason = "no token: " + "x" * 200
    app, _, sent = call(scope("/churn/ws", "websocket", headers=[]), Decision(401, reason))
    assert app.scopes == []
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": reason[:120]}]


def test_too_many_attempts_are_answered_429_before_asking_aws() -> None:
    spent = RateLimiter(per_client=(0.0, 0.0), clock=lambda: 0.0)
    app, authenticator, sent = call(scope("/churn/"), limiter=spent)
    assert app.scopes == [] and authenticator.asked == []
    status, headers, _ = response(sent)
    assert status == 429 and headers[b"retry-after"] == b"2"


def test_the_sign_in_path_answers_the_marker_to_an_allowed_identity_only() -> None:
    app, authenticator, sent = call(scope(f"/churn{SIGN_IN_PATH}"))
    assert app.scopes == [] and authenticator.sign_ins == [True]
    status, headers, body = response(sent)
    assert status == 200 and headers[b"cache-control"] == b"no-store"
    assert json.loads(body) == {"audience": "mlflow.example.com/churn", "marker": MARKER}
    _, _, refused = call(scope(f"/churn{SIGN_IN_PATH}"), Decision(401, "no token"))
    assert response(refused)[0] == 401


@pytest.mark.parametrize("gateway", [False, True], ids=["off", "on"])
def test_the_ai_gateway_is_not_reached_while_it_is_off(gateway: bool) -> None:
    app, _, sent = call(scope("/churn/gateway/chat/invocations"), gateway=gateway)
    if gateway:
        assert [s["path"] for s in app.scopes] == ["/churn/gateway/chat/invocations"]
    else:
        assert app.scopes == [] and response(sent)[0] == 404


def test_an_allowed_request_reaches_the_app_without_the_token_or_its_headers() -> None:
    headers = [(b"authorization", TOKEN.encode()), (b"X-Mlflow-Aws-Iam-Marker", b"forged"),
               (b"x-amz-security-token", b"session"), (b"accept", b"application/json")]  # fmt: skip
    app, _, _ = call(scope("/churn/api/2.0/mlflow/runs/get", headers=headers))
    [seen] = app.scopes
    assert seen["headers"] == [(b"accept", b"application/json")]


def test_an_allowed_websocket_reaches_the_app() -> None:
    app, _, sent = call(scope("/churn/ws", "websocket"))
    assert [s["path"] for s in app.scopes] == ["/churn/ws"]
    assert sent == [{"type": "websocket.accept"}]


@pytest.mark.parametrize(
    ("headers", "seen"),
    [
        ([], None),
        ([(b"Authorization", TOKEN.encode())], TOKEN),  # header names are case-insensitive
        ([(b"authorization", TOKEN.encode()), (b"authorization", b"Bearer other")], "<several>"),
    ],
    ids=["none", "one", "several"],
)
def test_the_authenticator_gets_the_one_authorization_header(
    headers: list[tuple[bytes, bytes]], seen: str | None
) -> None:
    _, authenticator, _ = call(scope("/churn/", headers=headers), Decision(401, "refused"))
    assert authenticator.asked == [seen]


def test_a_cached_decision_is_used_without_deciding_again() -> None:
    app, authenticator, sent = StubApp(), FixedAuthenticator(ALLOWED, cached=True), []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = AwsIamAuthMiddleware(app, authenticator, settings())
    run(middleware(scope("/churn/"), None, send))
    assert authenticator.asked == [TOKEN] and len(app.scopes) == 1


def test_the_log_names_the_caller_never_the_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mlflow_aws.auth"):
        call(scope("/churn/api/2.0/mlflow/runs/get"))
        call(scope("/churn/"), Decision(403, "role other is not allowed", ALICE))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ALICE in text and "/churn/api/2.0/mlflow/runs/get" in text and "-> 403" in text
    assert "secret-token-value" not in text


# -- the prefix rewrite of artifact paths --------------------------------------------------


@pytest.mark.parametrize("route", ARTIFACT_PATHS)
def test_prefixed_artifact_paths_reach_the_app_without_the_prefix(route: str) -> None:
    """MLflow's streaming artifact routes have no prefix; the prefixed Flask copies buffer
    whole bodies, so the layer strips the prefix for those paths (the encoded path too)."""
    path = f"/churn{route}1/abc/artifacts/model weights.bin"
    raw = f"/churn{route}1/abc/artifacts/model%20weights.bin".encode()
    app, _, _ = call(scope(path, raw_path=raw))
    [seen] = app.scopes
    assert seen["path"] == f"{route}1/abc/artifacts/model weights.bin"
    assert seen["raw_path"] == f"{route}1/abc/artifacts/model%20weights.bin".encode()
    assert {k: v for k, v in seen.items() if k not in ("path", "raw_path")} == {
        k: v for k, v in without_credentials(scope(path)).items() if k not in ("path", "raw_path")
    }


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/churn/api/2.0/mlflow/runs/get", "/churn"),  # not an artifact route
        ("/churn/ajax-api/2.0/mlflow/experiments/search", "/churn"),
        ("/api/2.0/mlflow-artifacts/artifacts/1/x", "/churn"),  # already without the prefix
        ("/fraud/api/2.0/mlflow-artifacts/artifacts/1/x", "/churn"),  # another prefix
        ("/api/2.0/mlflow-artifacts/artifacts/1/x", ""),  # no prefix at all
    ],
)
def test_other_paths_reach_the_app_as_they_came(path: str, prefix: str) -> None:
    request = scope(path)
    app, _, _ = call(request, prefix=prefix)
    assert app.scopes == [without_credentials(request)]


def test_a_refused_artifact_request_is_not_rewritten_or_passed_on() -> None:
    app, _, sent = call(scope(f"/churn{ARTIFACT_PATHS[0]}1/x"), Decision(401, "no token"))
    assert app.scopes == [] and response(sent)[0] == 401
