"""The aws-iam app's ASGI layer (``AwsIamAuthMiddleware``) around a stub app, without MLflow,
AWS or a server: what reaches the wrapped app, what is answered instead, and how.

The authenticator is a stand-in with a fixed decision (the token rules have their own tests in
test_auth_unit.py, the whole chain against moto in test_auth_e2e.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mlflow_aws.auth.sign_in_app import (
    VERIFYING_THREADS,
    Authenticator,
    AwsIamAuthMiddleware,
    Decision,
    RateLimiter,
    Settings,
    client_address,
    create_app,
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
    assert b"retry-after" not in headers  # only a 429 says when to come back
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


# MLflow's two streaming artifact routes, written out: the module's own list is what is tested.
STREAMING_ARTIFACT_ROUTES = (
    "/api/2.0/mlflow-artifacts/artifacts/",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/",
)


@pytest.mark.parametrize("route", STREAMING_ARTIFACT_ROUTES)
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
    request = scope(f"/churn{STREAMING_ARTIFACT_ROUTES[0]}1/x")
    app, _, sent = call(request, Decision(401, "no token"))
    assert app.scopes == [] and response(sent)[0] == 401


# -- the app mlflow starts: create_app ------------------------------------------------------------

START_ENVIRON = {
    "MLFLOW_AWS_IAM_AUDIENCE": "mlflow.example.com/churn",
    "MLFLOW_AWS_IAM_MARKER_URL": MARKER,
    "AWS_REGION": "eu-west-1",
}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubApp]:
    """create_app's surroundings: MLflow's app is a stub (MLflow itself in test_auth_e2e.py),
    the auth logger as a fresh process has it (restored afterwards)."""
    inner = StubApp()
    monkeypatch.setitem(sys.modules, "mlflow.server.fastapi_app", SimpleNamespace(app=inner))
    unset = ("MLFLOW_AWS_IAM_ALLOWED_ROLES", "MLFLOW_AWS_IAM_ALLOWED_GROUPS",
             "MLFLOW_AWS_IAM_LOG_LEVEL", "_MLFLOW_STATIC_PREFIX",
             "AWS_ENDPOINT_URL_S3")  # fmt: skip
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in START_ENVIRON.items():
        monkeypatch.setenv(name, value)
    logger = logging.getLogger("mlflow_aws.auth")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers.clear()
    try:
        yield inner
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What went to stderr, without the time stamps."""
    return [line.split(" ", 2)[2] for line in capsys.readouterr().err.splitlines()]


def test_a_server_with_wrong_settings_exits_saying_why(
    started: StubApp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_AWS_IAM_AUDIENCE")
    with pytest.raises(SystemExit, match=r"^aws-iam: MLFLOW_AWS_IAM_AUDIENCE is not set"):
        create_app()
    [line] = lines(capsys)
    assert line.startswith("ERROR aws-iam: MLFLOW_AWS_IAM_AUDIENCE is not set")


@pytest.mark.parametrize(
    ("roles", "groups", "warned", "listed"),
    [
        (None, None, True, "roles none, groups none"),
        ("ml-team", None, False, "roles ['ml-team'], groups none"),
        (None, "ml-users", False, "roles none, groups ['ml-users']"),
        ("b, a", "ml-users", False, "roles ['a', 'b'], groups ['ml-users']"),
    ],
)
def test_the_server_says_at_start_whom_it_lets_in_and_warns_when_nobody(
    started: StubApp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    roles: str | None,
    groups: str | None,
    warned: bool,
    listed: str,
) -> None:
    if roles is not None:
        monkeypatch.setenv("MLFLOW_AWS_IAM_ALLOWED_ROLES", roles)
    if groups is not None:
        monkeypatch.setenv("MLFLOW_AWS_IAM_ALLOWED_GROUPS", groups)
    app = create_app()
    assert app.app is started and app.settings.audience == "mlflow.example.com/churn"
    said = lines(capsys)
    nobody = "WARNING aws-iam: no allowed roles or groups: every request will be refused (403)"
    assert said[:-1] == ([nobody] if warned else [])
    assert said[-1].startswith("INFO aws-iam: audience mlflow.example.com/churn, marker ")
    assert said[-1].endswith(listed)


def test_the_auth_log_goes_once_to_stderr_and_not_on_to_mlflows_handlers(
    started: StubApp,
) -> None:
    create_app()
    create_app()  # a second app in the process (a reload) adds no second handler
    logger = logging.getLogger("mlflow_aws.auth")
    [handler] = logger.handlers
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    assert logger.propagate is False and logger.level == logging.INFO


def test_a_server_whose_settings_do_not_say_keeps_the_ai_gateway_off() -> None:
    quiet = Settings(audience="mlflow.example.com/churn", marker_url=MARKER,
                     allowed_roles=frozenset({"ml-team"}), allowed_groups=frozenset(),
                     region="eu-west-1", sts_url="https://sts.eu-west-1.amazonaws.com/",
                     static_prefix="/churn")  # fmt: skip
    app, sent = StubApp(), []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = AwsIamAuthMiddleware(app, FixedAuthenticator(ALLOWED), quiet)
    run(middleware(scope("/churn/gateway/chat/invocations"), None, send))
    assert app.scopes == [] and response(sent)[0] == 404


def test_addresses_beyond_the_limit_forget_the_oldest_never_the_one_asking() -> None:
    """A client cycling through addresses cannot make the server remember more than
    CLIENT_BUCKETS_MAX buckets; a remembered address that asks again is not the one forgotten."""
    limiter = RateLimiter(per_client=(2.0, 0.0), per_server=(100.0, 0.0), clock=lambda: 0.0)
    limiter.CLIENT_BUCKETS_MAX = 2
    assert [limiter.allow(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.1")] == [True] * 3
    assert limiter.allow("10.0.0.3")  # a third address: the oldest, 10.0.0.1, is forgotten
    assert limiter.allow("10.0.0.2") and not limiter.allow("10.0.0.2")  # still remembered
    assert limiter.allow("10.0.0.1")  # forgotten: a fresh bucket (spent, it would be refused)


def test_the_token_is_removed_whatever_the_case_of_its_header_name() -> None:
    # ASGI servers lower-case header names; a server or test client that does not still hides
    # the token from MLflow
    headers = [(b"Authorization", TOKEN.encode()), (b"X-AMZ-SECURITY-TOKEN", b"session"),
               (b"Accept", b"application/json")]  # fmt: skip
    app, _, _ = call(scope("/churn/api/2.0/mlflow/runs/get", headers=headers))
    [seen] = app.scopes
    assert seen["headers"] == [(b"Accept", b"application/json")]


def test_without_a_prefix_an_artifact_request_without_raw_path_is_passed_on_as_it_came() -> None:
    # ASGI lets a server leave raw_path out (None): nothing is rewritten, so nothing is made up
    request = {**scope("/api/2.0/mlflow-artifacts/artifacts/1/x"), "raw_path": None}
    app, _, _ = call(request, prefix="")
    assert app.scopes == [without_credentials(request)]


def test_a_websocket_to_the_sign_in_path_is_an_ordinary_request_needing_the_marker_read() -> None:
    # only an HTTP GET of the sign-in path is decided on the identity alone
    app, authenticator, sent = call(scope(f"/churn{SIGN_IN_PATH}", "websocket"))
    assert authenticator.sign_ins == [False]
    assert [s["path"] for s in app.scopes] == [f"/churn{SIGN_IN_PATH}"]
    assert sent == [{"type": "websocket.accept"}]


def test_a_refusal_is_logged_with_the_caller_when_known_and_a_dash_when_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="mlflow_aws.auth"):
        call(scope("/churn/x", headers=[]), Decision(401, "missing Authorization"))
        call(scope("/churn/y"), Decision(403, "role other is not allowed", ALICE))
    assert [r.getMessage() for r in caplog.records] == [
        "aws-iam: - GET /churn/x -> 401 missing Authorization",
        f"aws-iam: {ALICE} GET /churn/y -> 403 role other is not allowed",
    ]


@pytest.mark.parametrize(
    "raw",
    [b"/ch%75rn/api/2.0/mlflow-artifacts/artifacts/1/x", b"/CHURN/api/2.0/mlflow-artifacts/"
     b"artifacts/1/x", None],
    ids=["encoded-prefix", "other-case", "no-raw-path"],
)  # fmt: skip
def test_an_artifact_path_whose_raw_path_does_not_start_with_the_prefix_is_rebuilt_from_the_path(
    raw: bytes | None,
) -> None:
    """The decoded path matched the prefix; a raw path that spells it otherwise is not cut at
    the prefix's length (that would hand MLflow another path than the one allowed)."""
    request = {**scope("/churn/api/2.0/mlflow-artifacts/artifacts/1/x"), "raw_path": raw}
    app, _, _ = call(request)
    [seen] = app.scopes
    assert seen["path"] == "/api/2.0/mlflow-artifacts/artifacts/1/x"
    assert seen["raw_path"] == b"/api/2.0/mlflow-artifacts/artifacts/1/x"


def test_a_request_without_a_token_is_told_to_sign_in_even_when_attempts_are_spent() -> None:
    # nothing to verify costs no attempt: the answer is the 401 that says what to do
    spent = RateLimiter(per_client=(0.0, 0.0), clock=lambda: 0.0)
    _, authenticator, sent = call(
        scope("/churn/", headers=[]), Decision(401, "missing"), limiter=spent
    )
    assert authenticator.asked == [None] and response(sent)[0] == 401


def test_the_client_is_the_last_forwarded_hop_whatever_the_header_names_case() -> None:
    forwarded = {
        "headers": [(b"X-Forwarded-For", b"6.6.6.6, 10.1.2.3 ")],
        "client": ("10.0.0.9", 1),
    }
    assert client_address(forwarded) == "10.1.2.3"
    assert client_address({"headers": [], "client": None}) == "-"


def test_at_most_a_few_threads_wait_on_aws_however_many_requests_arrive() -> None:
    """MLflow keeps its threads: verifications beyond VERIFYING_THREADS wait their turn."""
    lock, running, most = threading.Lock(), [0], [0]

    class Slow(FixedAuthenticator):
        def decide(self, header: str | None, *, sign_in: bool = False) -> Decision:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)  # long enough for every thread allowed to start
            with lock:
                running[0] -= 1
            return Decision(401, "refused")

    middleware = AwsIamAuthMiddleware(StubApp(), Slow(ALLOWED), settings(),
                                      RateLimiter((100.0, 0.0), (100.0, 0.0)))  # fmt: skip

    async def send(message: dict[str, Any]) -> None:
        pass

    async def burst() -> None:
        await asyncio.gather(*(middleware(scope("/churn/"), None, send)
                               for _ in range(VERIFYING_THREADS + 4)))  # fmt: skip

    run(burst())
    assert most[0] == VERIFYING_THREADS
