"""The aws-iam token checks and authorization rules as pure functions: each refusal names its
rule; no network (the e2e tests do the same through a real server, moto STS and IAM)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import boto3
import pytest
import requests

import mlflow_aws.auth.sign_in_app as server_module
from helper.outputs import OutputsError, parse_connection_bundle
from helper.proxy import Upstream
from mlflow_aws.auth.client import AwsIamAuth
from mlflow_aws.auth.sign_in_app import (
    DECISION_TTL,
    Authenticator,
    AwsIamAuthMiddleware,
    AwsUnavailable,
    MarkerRefused,
    RateLimiter,
    Settings,
    SettingsError,
    authorize,
    client_address,
    role_allowed,
    settings_from_environ,
    split_list,
    sso_permission_set,
)
from mlflow_aws.auth.signer import SigningError, TokenSource
from mlflow_aws.auth.token import (
    STS_BODY,
    TOKEN_PREFIX,
    CallerIdentity,
    MarkerRead,
    SignedRequest,
    TokenError,
    audience_for,
    check_marker_url,
    check_token,
    make_token,
    parse_caller_identity,
    sts_error,
)
from mlflow_aws.run_secret import Gate

STS = "https://sts.eu-west-1.amazonaws.com/"
SERVER = "mlflow.example.com/churn"  # the audience of churn's server
MARKER = "https://mlflow-aws-dev.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OWN = "111122223333"


def token(
    audience: str = SERVER, sts: str = STS, at: datetime = NOW, session: str | None = "s",
    marker: str | None = MARKER,
) -> str:  # fmt: skip
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        return make_token(
            "ASIAEXAMPLEKEY000001", "secret", session, "eu-west-1", sts, audience, marker
        )


def payload(tok: str) -> dict[str, object]:
    data = tok[len(TOKEN_PREFIX) :]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    return decoded


def encode(data: dict[str, object]) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def check(tok: str, now: datetime = NOW) -> SignedRequest:
    return check_token(tok, sts_url=STS, audience=SERVER, now=now, marker_url=MARKER)


def test_a_fresh_token_passes_and_holds_no_secret() -> None:
    tok = token()
    request = check(tok)
    assert request.url == STS and request.body == STS_BODY
    assert set(request.headers) == {
        "host", "content-type", "x-amz-date", "x-amz-security-token", "authorization",
        "x-mlflow-aws-iam-audience",
    }  # fmt: skip
    assert request.expires_at == NOW + timedelta(minutes=15)
    assert "secret" not in json.dumps(payload(tok))
    check(token(session=None))  # long-lived keys: no session token header


@pytest.mark.parametrize(
    ("tok", "reason"),
    [
        ("", "not an aws-iam token"),
        ("garbage", "not an aws-iam token"),
        (TOKEN_PREFIX + "!!!", "not base64url-encoded JSON"),
        (TOKEN_PREFIX + "x" * 13000, "longer than 12288"),
        (encode({"url": STS}), "exactly url, headers, body"),
    ],
)
def test_refuses_malformed_tokens(tok: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        check(tok)


def test_refuses_another_projects_or_hosts_audience() -> None:
    with pytest.raises(TokenError, match=r"token is for 'mlflow\.example\.com/fraud', this server"):
        check(token(audience="mlflow.example.com/fraud"))
    with pytest.raises(TokenError, match=r"token is for 'mlflow\.example\.com', this server"):
        check(token(audience="mlflow.example.com"))  # the old host-only binding


def test_the_audience_is_host_and_project_of_the_tracking_uri() -> None:
    assert audience_for("https://MLflow.Example.com/churn") == "mlflow.example.com/churn"
    assert audience_for("https://mlflow.example.com:443/churn/api/2.0/x") == SERVER
    assert audience_for("https://mlflow.example.com:8443/churn/") == "mlflow.example.com:8443/churn"
    assert audience_for("http://127.0.0.1:5000/churn") == "127.0.0.1:5000/churn"
    assert audience_for("http://[::1]:5000/churn") == "[::1]:5000/churn"
    assert audience_for("http://localhost:5000/churn") == "localhost:5000/churn"


@pytest.mark.parametrize(
    "uri",
    ["http://mlflow.example.com/churn", "http://10.0.0.5:5000/churn", "ftp://127.0.0.1/churn",
     "http://127.0.0.1.evil.example.com/churn"],
)  # fmt: skip
def test_refuses_to_sign_for_plain_http_except_loopback(uri: str) -> None:
    """Low: the plugin and the proxy signed for http:// tracking URIs (a token in the clear).
    On the previous main both signed for any of these."""
    with pytest.raises(ValueError, match="must be https://"):
        audience_for(uri)
    with pytest.raises(SigningError, match="must be https://"):
        TokenSource(uri, region="eu-west-1")
    request = requests.Request("GET", f"{uri}/api/2.0/mlflow/experiments/search").prepare()
    with pytest.raises(SigningError, match="must be https://"):
        AwsIamAuth()(request)


def test_refuses_expired_and_future_tokens() -> None:
    check(token(at=NOW - timedelta(minutes=14)))
    with pytest.raises(TokenError, match="token expired: signed 16 min ago"):
        check(token(at=NOW - timedelta(minutes=16)))
    check(token(at=NOW + timedelta(minutes=4, seconds=59)))
    # Medium 2: up to 15 min ahead was accepted on the previous main (a longer life).
    with pytest.raises(TokenError, match="more than 5 min in the future"):
        check(token(at=NOW + timedelta(minutes=5, seconds=1)))


@pytest.mark.parametrize("bad", ["a\r\nx-evil: 1", "a\nb", "a\x00b", "a\x7fb", "a\x85b"])
def test_refuses_control_characters_in_the_token(bad: str) -> None:
    """Low: CR/LF in x-amz-security-token made the replay raise (an unhandled 500) on the
    previous main; now a 401 that says why."""
    data = payload(token())
    headers = dict(data["headers"])  # type: ignore[call-overload]
    with pytest.raises(TokenError, match="control characters"):
        check(encode({**data, "headers": {**headers, "x-amz-security-token": bad}}))
    with pytest.raises(TokenError, match="control characters"):
        check(encode({**data, "headers": {**headers, f"x{bad}": "1"}}))


def test_refuses_a_token_for_another_host() -> None:
    with pytest.raises(TokenError, match=r"signed for evil\.example\.com"):
        check(token(sts="https://evil.example.com/"))
    with pytest.raises(TokenError, match=r"signed for sts\.us-east-1\.amazonaws\.com"):
        check(token(sts="https://sts.us-east-1.amazonaws.com/"))
    data = payload(token())
    data["url"] = "https://sts.eu-west-1.amazonaws.com/?Action=AssumeRole"
    with pytest.raises(TokenError, match="signed for"):
        check(encode(data))


def test_refuses_another_action_and_tampered_headers() -> None:
    data = payload(token())
    cases: list[tuple[dict[str, object], str]] = [
        ({**data, "body": "Action=GetSessionToken&Version=2011-06-15"}, "not an sts:GetCallerI"),
    ]
    headers = dict(data["headers"])  # type: ignore[call-overload]
    cases.append(({**data, "headers": {**headers, "x-extra": "1"}}, "unexpected headers: x-extra"))
    without_date = {k: v for k, v in headers.items() if k != "x-amz-date"}
    cases.append(({**data, "headers": without_date}, "lacks headers: x-amz-date"))
    cases.append(({**data, "headers": {**headers, "host": "evil.example.com"}}, "Host header"))
    cases.append(({**data, "headers": {**headers, "content-type": "text/xml"}}, "Content-Type"))
    unsigned = headers["authorization"].replace(";x-mlflow-aws-iam-audience", "")
    cases.append(({**data, "headers": {**headers, "authorization": unsigned}}, "sign exactly"))
    cases.append(
        ({**data, "headers": {**headers, "authorization": "AWS4-HMAC-SHA256 nonsense"}}, "AWS4")
    )
    s3_scope = headers["authorization"].replace("/sts/", "/s3/")
    cases.append(({**data, "headers": {**headers, "authorization": s3_scope}}, "AWS4"))
    cases.append(({**data, "headers": {**headers, "x-amz-date": "yesterday"}}, "x-amz-date"))
    for tampered, reason in cases:
        with pytest.raises(TokenError, match=reason):
            check(encode(tampered))


def test_sts_answers_are_parsed() -> None:
    ok = (
        b'<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        b"<GetCallerIdentityResult><Arn>arn:aws:iam::1:user/a</Arn><UserId>AID</UserId>"
        b"<Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
    )
    assert parse_caller_identity(ok) == CallerIdentity("arn:aws:iam::1:user/a", "1", "AID")
    with pytest.raises(TokenError, match="no Arn"):
        parse_caller_identity(b"<GetCallerIdentityResponse/>")
    error = (
        b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
        b"<Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does "
        b"not match</Message></Error></ErrorResponse>"
    )
    assert (
        sts_error(error)
        == "SignatureDoesNotMatch: The request signature we calculated does not match"
    )


# -- who may ---------------------------------------------------------------------------------------


def settings(roles: str = "", groups: str = "") -> Settings:
    return settings_from_environ(
        {"MLFLOW_AWS_IAM_AUDIENCE": SERVER, "AWS_REGION": "eu-west-1",
         "MLFLOW_AWS_IAM_MARKER_URL": MARKER,
         "MLFLOW_AWS_IAM_ALLOWED_ROLES": roles, "MLFLOW_AWS_IAM_ALLOWED_GROUPS": groups},
        endpoint_for=lambda region: f"https://sts.{region}.amazonaws.com/",
    )  # fmt: skip


def test_settings_are_required() -> None:
    with pytest.raises(SettingsError, match="MLFLOW_AWS_IAM_AUDIENCE is not set"):
        settings_from_environ({"AWS_REGION": "eu-west-1"})
    with pytest.raises(SettingsError, match="AWS_REGION is not set"):
        settings_from_environ(
            {"MLFLOW_AWS_IAM_AUDIENCE": SERVER, "MLFLOW_AWS_IAM_MARKER_URL": MARKER}
        )
    for shared in ("mlflow.example.com", "MLflow.example.com/churn"):  # every project's, or case
        with pytest.raises(SettingsError, match="is not <domain>/<project> in lowercase"):
            settings_from_environ({"MLFLOW_AWS_IAM_AUDIENCE": shared, "AWS_REGION": "eu-west-1"})
    with pytest.raises(SettingsError, match="not an IAM role ARN"):
        settings(roles="arn:aws:iam::1:user/x")
    assert settings(roles="a, b\nc").allowed_roles == {"a", "b", "c"}


def test_sso_roles_match_by_name_or_an_explicit_sso_entry_and_their_path() -> None:
    """Low: a plain "DataScientist" let in any role named AWSReservedSSO_DataScientist_<hex>
    (creatable with iam:CreateRole) on the previous main."""
    sso = "AWSReservedSSO_DataScientist_0123456789abcdef"
    assert sso_permission_set(sso) == "DataScientist"
    assert sso_permission_set("AWSReservedSSO_Data_Sci_0123456789abcdef") == "Data_Sci"
    assert sso_permission_set("DataScientist") is None
    assert not role_allowed(OWN, sso, frozenset({"DataScientist"}), OWN)
    assert role_allowed(OWN, sso, frozenset({"sso:DataScientist"}), OWN)
    assert role_allowed(OWN, sso, frozenset({sso}), OWN)
    assert not role_allowed(OWN, sso, frozenset({"Data"}), OWN)
    arn = f"arn:aws:sts::{OWN}:assumed-role/{sso}/alice@example.com"
    identity = CallerIdentity(arn, OWN, "id")
    config = settings("sso:DataScientist")
    paths = {sso: "/aws-reserved/sso.amazonaws.com/eu-west-1/"}
    assert authorize(identity, config, lambda: OWN, lambda u: frozenset(), paths.get).allowed  # type: ignore[arg-type]
    made_by_someone = authorize(identity, config, lambda: OWN, lambda u: frozenset(),
                                lambda role: "/")  # fmt: skip
    assert (
        made_by_someone.status == 403
        and "is not an IAM Identity Center role" in made_by_someone.reason
    )
    # An exact name needs no path: IAM role names are unique in an account.
    assert authorize(identity, settings(sso), lambda: OWN, lambda u: frozenset()).allowed
    with pytest.raises(SettingsError, match="is not sso:<PermissionSetName>"):
        settings("sso:")


def test_allowed_names_with_commas_come_as_a_json_array() -> None:
    """Low: a comma in a role name split it in two on the previous main."""
    assert split_list('["ml,team", "ops"]') == {"ml,team", "ops"}
    assert split_list("ml,team") == {"ml", "team"}
    assert role_allowed(OWN, "ml,team", settings('["ml,team"]').allowed_roles, OWN)
    assert not role_allowed(OWN, "ml", settings('["ml,team"]').allowed_roles, OWN)
    with pytest.raises(SettingsError, match="not a JSON array of names"):
        split_list('["ml", 1]')


def test_a_role_name_means_this_account_only() -> None:
    # Anyone can create a role called ml-team in an account of their own.
    assert not role_allowed("999999999999", "ml-team", frozenset({"ml-team"}), OWN)
    arn = "arn:aws:iam::999999999999:role/team/ml-team"
    assert role_allowed("999999999999", "ml-team", frozenset({arn}), OWN)


def decide(arn: str, roles: str = "ml-team", groups: str = "ml-users",
           user_groups: frozenset[str] = frozenset()) -> tuple[int, str]:  # fmt: skip
    identity = CallerIdentity(arn, arn.split(":")[4], "id")
    decision = authorize(identity, settings(roles, groups), lambda: OWN, lambda user: user_groups)
    return decision.status, decision.reason


def test_deny_by_default() -> None:
    role = f"arn:aws:sts::{OWN}:assumed-role/ml-team/alice"
    assert decide(role)[0] == 200
    assert decide(role, roles="")[0] == 403
    assert decide(f"arn:aws:sts::{OWN}:assumed-role/other/alice")[1].endswith(
        "role other is not allowed on this server"
    )
    user = f"arn:aws:iam::{OWN}:user/dev/carol"
    assert decide(user, user_groups=frozenset({"ml-users"}))[0] == 200
    assert decide(user, user_groups=frozenset({"other"}))[0] == 403
    assert decide(user, groups="", user_groups=frozenset({"ml-users"}))[0] == 403
    assert (
        decide("arn:aws:iam::999999999999:user/carol", user_groups=frozenset({"ml-users"}))[0]
        == 403
    )
    for other in (f"arn:aws:iam::{OWN}:root", f"arn:aws:sts::{OWN}:federated-user/bob"):
        assert decide(other)[0] == 403


def test_verified_identities_are_cached_until_the_token_expires() -> None:
    calls: list[SignedRequest] = []

    def replay(request: SignedRequest) -> CallerIdentity:
        calls.append(request)
        return CallerIdentity(f"arn:aws:sts::{OWN}:assumed-role/ml-team/alice", OWN, "id")

    now = [NOW]
    authenticator = Authenticator(settings("ml-team"), replay, lambda: OWN, lambda u: frozenset(),
                                  clock=lambda: now[0], read_marker=lambda m: None)  # fmt: skip
    header = f"Bearer {token()}"
    assert authenticator.cached(header) is None
    assert authenticator.decide(header).allowed
    assert authenticator.cached(header) is not None and len(calls) == 1
    assert authenticator.decide(header).allowed and len(calls) == 1  # no second STS call
    now[0] = NOW + timedelta(minutes=15, seconds=1)
    assert authenticator.cached(header) is None
    assert authenticator.decide(header).status == 401  # expired now
    # Refusals are not cached, and AWS being unreachable is a 503, not a decision.
    assert authenticator.decide(None).status == 401
    assert authenticator.decide("Basic abc").status == 401

    def unavailable(request: SignedRequest) -> CallerIdentity:
        raise AwsUnavailable("cannot reach STS")

    down = Authenticator(settings("ml-team"), unavailable, lambda: OWN, lambda u: frozenset(),
                         clock=lambda: NOW, read_marker=lambda m: None)  # fmt: skip
    assert down.decide(header).status == 503 and down.cached(header) is None


# -- the proxy's and the bundle's pure parts ------------------------------------------------------


def test_the_proxy_signs_only_its_own_origin() -> None:
    gate, secret = Gate("s" * 43, 5000), {"authorization": ["Bearer " + "s" * 43]}

    def problem(host: str, origin: str | None) -> str:
        headers = {"host": [host], **secret, **({"origin": [origin]} if origin else {})}
        return gate.decide("POST", "/api/2.0/mlflow/runs/create", "", headers).message

    assert problem("127.0.0.1:5000", None) == ""
    assert problem("localhost:5000", "http://localhost:5000") == ""
    assert "Host" in problem("evil.example.com:5000", None)
    assert "Host" in problem("127.0.0.1:5001", None)
    assert "cross-origin" in problem("127.0.0.1:5000", "https://evil.example.com")
    assert "cross-origin" in problem("127.0.0.1:5000", "null")


def test_upstream_paths_and_redirects() -> None:
    upstream = Upstream.from_uri("https://mlflow.example.com/churn")
    assert upstream.path_for("/api/2.0/x?y=1") == "/churn/api/2.0/x?y=1"
    assert upstream.path_for("/") == "/churn/"
    assert upstream.host_header == "mlflow.example.com"
    assert upstream.local_location("https://mlflow.example.com/churn/#/x") == "/#/x"
    assert upstream.local_location("/churn/static-files/a") == "/static-files/a"
    assert upstream.local_location("https://elsewhere.example.com/") == (
        "https://elsewhere.example.com/"
    )
    assert Upstream.from_uri("http://127.0.0.1:8080/p/").host_header == "127.0.0.1:8080"


def test_bundle_tracking_uri_is_optional() -> None:
    bundle = {
        "Project": "p", "Database": "p", "BackendStoreUri": "mysql+pymysql://u:pw@h/p",
        "Password": "pw", "ArtifactRoot": "s3://b/p", "DatabaseEndpoint": "h",
        "DatabasePort": 3306, "Region": "eu-west-1", "ImageUri": "i", "MlflowVersion": "3",
    }  # fmt: skip
    assert parse_connection_bundle(bundle, "b").tracking_uri is None
    assert parse_connection_bundle({**bundle, "TrackingUri": None}, "b").tracking_uri is None
    uri = "https://mlflow.example.com/p"
    assert parse_connection_bundle({**bundle, "TrackingUri": uri}, "b").tracking_uri == uri
    with pytest.raises(OutputsError, match="TrackingUri must be an http"):
        parse_connection_bundle({**bundle, "TrackingUri": 42}, "b")


# -- the middleware: what MLflow sees, what the log says ------------------------------------------


ALICE = f"arn:aws:sts::{OWN}:assumed-role/ml-team/alice"


def middleware(inner: Any) -> AwsIamAuthMiddleware:
    def replay(request: SignedRequest) -> CallerIdentity:
        return CallerIdentity(ALICE, OWN, "id")  # STS's answer (the e2e tests ask moto's STS)

    config = settings("ml-team")
    authenticator = Authenticator(config, replay, lambda: OWN, lambda u: frozenset(),
                                  clock=lambda: NOW, read_marker=lambda m: None)  # fmt: skip
    return AwsIamAuthMiddleware(inner, authenticator, config)


def call(app: AwsIamAuthMiddleware, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "headers": headers}  # fmt: skip
    loop = asyncio.new_event_loop()  # not asyncio.run: it unsets the thread's loop (pulumi's)
    try:
        loop.run_until_complete(app(scope, receive, send))
    finally:
        loop.close()
    return int(sent[0]["status"])


def test_mlflow_never_sees_the_token() -> None:
    """High 2: on the previous main the whole Authorization header reached MLflow (whose
    gateway passthrough routes forward it to an endpoint's api_base)."""
    seen: list[dict[str, Any]] = []

    async def mlflow_side(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    tok = token()
    headers = [(b"host", b"mlflow.example.com"), (b"authorization", f"Bearer {tok}".encode()),
               (b"x-mlflow-aws-iam-audience", SERVER.encode()), (b"X-Amz-Security-Token", b"s"),
               (b"accept", b"application/json")]  # fmt: skip
    assert call(middleware(mlflow_side), "/churn/api/2.0/mlflow/experiments/search", headers) == 200
    [scope] = seen
    assert scope["headers"] == [(b"host", b"mlflow.example.com"), (b"accept", b"application/json")]
    assert tok not in repr(scope)


def test_the_auth_log_escapes_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    """Low: ``GET /churn/x%0a<fake line>`` wrote a forged second line on the previous main."""

    async def mlflow_side(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    forged = "/churn/x\n2026-11-27 12:00:00 INFO aws-iam: arn:aws:iam::1:root GET /churn/\r\x1b[2J"
    app = middleware(mlflow_side)
    with caplog.at_level(logging.INFO, logger="mlflow_aws.auth"):
        assert call(app, forged, []) == 401
        assert call(app, forged, [(b"authorization", f"Bearer {token()}".encode())]) == 200
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    for line in lines:
        assert not any(ch in line for ch in "\n\r\x1b"), line
        assert "/churn/x\\n2026-11-27" in line and "\\r\\x1b[2J" in line


# -- the marker read: what the token must carry, what the client signs ----------------------------


def test_the_marker_read_must_be_this_projects_and_the_same_signers() -> None:
    request = check(token())
    assert request.marker is not None and request.marker.url == MARKER
    assert request.marker.headers["x-amz-security-token"] == "s"  # the STS part's, shared
    with pytest.raises(TokenError, match="this server's is"):
        check(token(marker=MARKER.replace("/churn/", "/fraud/")))
    data = payload(token())
    other = payload(token(session=None))  # the same key id, but a marker without a session...
    stranger = make_token("ASIAOTHERKEY00000001", "x", "s", "eu-west-1", STS, SERVER, MARKER)
    other_headers: dict[str, str] = dict(other["marker"]["headers"])  # type: ignore[index]
    with_session = {"url": MARKER, "headers": {**other_headers, "x-amz-security-token": "s"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**data, "marker": payload(stranger)["marker"]}, "signed with other credentials"),
        ({**data, "marker": {"url": MARKER}}, "exactly url and headers"),
        ({**data, "marker": with_session}, "exactly the headers"),
    ]
    marker_headers = dict(data["marker"]["headers"])  # type: ignore[index]
    for name, value, reason in [
        ("host", "evil.example.com", "another Host"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD", "empty body"),
        ("authorization", marker_headers["authorization"].replace("/s3/", "/sts/"), "for s3"),
        ("x-amz-date", "20261127T100000Z", "scope date|expired"),
    ]:
        cases.append(({**data, "marker": {"url": MARKER,
                      "headers": {**marker_headers, name: value}}}, reason))  # fmt: skip
    for tampered, reason in cases:
        with pytest.raises(TokenError, match=reason):
            check(encode(tampered))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example.com/churn/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b.s3.eu-west-1.amazonaws.com/churn/model.pkl", "does not name"),
        ("https://b.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in?x=1", "does not name"),
        ("http://b.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in", "must be https"),
        ("https://s3.amazonaws.com.evil.example/b/.mlflow-aws-sign-in", "not on an S3 endpoint"),
    ],
)
def test_the_client_signs_a_marker_read_only_for_a_marker_on_s3(url: str, reason: str) -> None:
    """A hostile server names the URL: it must not get a signed read of anything else."""
    check_marker_url("https://b.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in")
    check_marker_url("https://s3.eu-west-1.amazonaws.com/b.x/churn/.mlflow-aws-sign-in")
    check_marker_url("http://127.0.0.1:9000/b/churn/.mlflow-aws-sign-in", "http://127.0.0.1:9000")
    with pytest.raises(ValueError, match=reason):
        check_marker_url(url)

    def hostile(sign_in_url: str, tok: str) -> tuple[int, bytes]:
        return 200, json.dumps({"audience": SERVER, "marker": url}).encode()

    session = boto3.session.Session(
        aws_access_key_id="AKIAEXAMPLE000000001", aws_secret_access_key="x", region_name="eu-west-1"
    )
    source = TokenSource("https://mlflow.example.com/churn", session=session, fetch=hostile)
    with pytest.raises(SigningError, match=reason):
        source.token()


def test_the_client_asks_for_the_marker_once_and_signs_it() -> None:
    asked: list[str] = []

    def server(sign_in_url: str, tok: str) -> tuple[int, bytes]:
        asked.append(sign_in_url)
        assert "marker" not in payload(tok)  # an identity-only token
        return 200, json.dumps({"audience": SERVER, "marker": MARKER}).encode()

    session = boto3.session.Session(
        aws_access_key_id="AKIAEXAMPLE000000001", aws_secret_access_key="x", region_name="eu-west-1"
    )
    clock = [0.0]
    source = TokenSource("https://mlflow.example.com/churn/", session=session, fetch=server,
                         clock=lambda: clock[0])  # fmt: skip
    first = source.token()
    assert payload(first)["marker"]["url"] == MARKER  # type: ignore[index]
    clock[0] += 301  # a new token, the same marker
    source.token()  # made again (the same second: the same signature), the marker not asked
    assert source._made_at == 301 and asked == ["https://mlflow.example.com/churn/aws-iam-sign-in"]


# -- decisions: never older than DECISION_TTL; the rate of verifications bounded -----------------


def test_a_decision_is_cached_for_at_most_the_decision_ttl() -> None:
    calls: list[str] = []

    def read(marker: MarkerRead) -> None:
        calls.append(marker.url)

    now = [NOW]
    authenticator = Authenticator(
        settings("ml-team"), lambda r: CallerIdentity(ALICE, OWN, "id"), lambda: OWN,
        lambda u: frozenset(), clock=lambda: now[0], read_marker=read,
    )  # fmt: skip
    header = f"Bearer {token()}"
    assert authenticator.decide(header).allowed and calls == [MARKER]
    now[0] += DECISION_TTL - timedelta(seconds=1)
    assert authenticator.cached(header) is not None
    now[0] += timedelta(seconds=1)
    assert authenticator.cached(header) is None  # the token is good for 13 more minutes
    assert timedelta(minutes=5) >= DECISION_TTL
    assert authenticator.decide(header).allowed and len(calls) == 2  # asked S3 again

    def refused(marker: MarkerRead) -> None:
        raise MarkerRefused("may not read this project's sign-in marker now")

    authenticator.read_marker = refused
    now[0] += DECISION_TTL
    decision = authenticator.decide(header)
    assert decision.status == 403 and decision.reason == f"{ALICE}: may not read this project's " \
        "sign-in marker now"  # fmt: skip
    # An identity-only token (the sign-in request's kind) does not pass as a request's.
    bare = authenticator.decide(f"Bearer {token(marker=None)}")
    assert bare.status == 401 and "no read of the project's sign-in marker" in bare.reason
    assert authenticator.decide(f"Bearer {token(marker=None)}", sign_in=True).allowed


def test_verifications_are_rate_limited_per_client_and_for_the_server() -> None:
    """Low: a failed token was never cached and each cost an STS call, unbounded on main."""
    now = [0.0]
    limiter = RateLimiter(per_client=(3, 1.0), per_server=(5, 2.0), clock=lambda: now[0])
    assert [limiter.allow("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert [limiter.allow("10.0.0.2") for _ in range(3)] == [True, True, False]  # server's 5
    now[0] += 1.0  # the server's bucket refills 2, each client's 1
    assert limiter.allow("10.0.0.1") and limiter.allow("10.0.0.2")
    assert not limiter.allow("10.0.0.3")

    replays: list[SignedRequest] = []

    def replay(request: SignedRequest) -> CallerIdentity:
        replays.append(request)
        raise TokenError("STS refused the token (SignatureDoesNotMatch: ...)")

    config = settings("ml-team")
    authenticator = Authenticator(config, replay, lambda: OWN, lambda u: frozenset(),
                                  clock=lambda: NOW, read_marker=lambda m: None)  # fmt: skip
    app = AwsIamAuthMiddleware(None, authenticator, config,
                               RateLimiter((2, 0.0), (100, 0.0), clock=lambda: 0.0))  # fmt: skip
    bad = [(b"authorization", f"Bearer {token()}".encode()), (b"x-forwarded-for", b"1.2.3.4")]
    assert [call(app, "/churn/api", bad) for _ in range(4)] == [401, 401, 429, 429]
    assert len(replays) == 2  # the refused ones cost no AWS call
    other = [(b"authorization", f"Bearer {token()}".encode()), (b"x-forwarded-for", b"5.6.7.8")]
    assert call(app, "/churn/api", other) == 401
    assert client_address({"headers": [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4")]}) == "1.2.3.4"
    assert client_address({"headers": [], "client": ("127.0.0.1", 5)}) == "127.0.0.1"


def test_the_sign_in_request_names_the_marker_to_an_allowed_identity_only() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = middleware(None)
    header = [(b"authorization", f"Bearer {token(marker=None)}".encode())]
    scope = {"type": "http", "method": "GET", "path": "/aws-iam-sign-in", "headers": header}
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app(scope, receive, send))
        assert sent[0]["status"] == 200
        assert json.loads(sent[1]["body"]) == {"audience": SERVER, "marker": MARKER}
        sent.clear()
        loop.run_until_complete(app({**scope, "headers": []}, receive, send))
        assert sent[0]["status"] == 401 and b"mlflow-aws-sign-in" not in sent[1]["body"]
    finally:
        loop.close()


def test_the_sign_in_request_asks_afresh_who_the_caller_is_never_the_request_cache() -> None:
    """Sign-in needs an allowed identity only: a refusal cached for the same token's requests
    (S3 refused its marker read) is not its answer, and nothing it decides is cached."""
    replays: list[SignedRequest] = []

    def replay(request: SignedRequest) -> CallerIdentity:
        replays.append(request)
        return CallerIdentity(ALICE, OWN, "id")

    def refused(marker: MarkerRead) -> None:
        raise MarkerRefused("may not read this project's sign-in marker now")

    config = settings("ml-team")
    authenticator = Authenticator(config, replay, lambda: OWN, lambda u: frozenset(),
                                  clock=lambda: NOW, read_marker=refused)  # fmt: skip
    app = AwsIamAuthMiddleware(None, authenticator, config)
    header = [(b"authorization", f"Bearer {token()}".encode())]
    assert call(app, "/churn/api/2.0/mlflow/runs/get", header) == 403  # now cached
    assert call(app, "/churn/api/2.0/mlflow/runs/get", header) == 403 and len(replays) == 1
    assert call(app, "/aws-iam-sign-in", header) == 200 and len(replays) == 2
    assert authenticator.decide(f"Bearer {token()}", sign_in=True).allowed and len(replays) == 3
    assert authenticator.cached(f"Bearer {token()}").status == 403  # type: ignore[union-attr]


def test_a_valid_token_under_another_scheme_or_two_headers_is_refused_before_sts() -> None:
    replays: list[SignedRequest] = []

    def replay(request: SignedRequest) -> CallerIdentity:
        replays.append(request)
        return CallerIdentity(ALICE, OWN, "id")

    authenticator = Authenticator(settings("ml-team"), replay, lambda: OWN, lambda u: frozenset(),
                                  clock=lambda: NOW, read_marker=lambda m: None)  # fmt: skip
    tok = token()
    # "Digest " is as long as "Bearer ": only the scheme's name tells them apart
    for header in (f"Digest {tok}", f"Basic {tok}", f"Bearer{tok}", "<several>", tok):
        decision = authenticator.decide(header)
        assert (decision.status, decision.reason) == (
            401, "Authorization must be 'Bearer <aws-iam token>'",
        ), header  # fmt: skip
    assert replays == []
    # the scheme in any case, the token with the spaces a client may leave around it
    for header in (f"bearer {tok}", f"BEARER   {tok}  ", f"Bearer {tok}\t"):
        assert authenticator.decide(header).allowed, header


def test_an_identity_only_token_that_signed_in_still_does_not_pass_as_a_requests() -> None:
    """The sign-in kind of token carries no marker read: its sign-in is not remembered for the
    requests that token then makes (each needs the marker read)."""
    config = settings("ml-team")
    authenticator = Authenticator(config, lambda r: CallerIdentity(ALICE, OWN, "id"),
                                  lambda: OWN, lambda u: frozenset(), clock=lambda: NOW,
                                  read_marker=lambda m: None)  # fmt: skip
    app = AwsIamAuthMiddleware(None, authenticator, config)
    bare = [(b"authorization", f"Bearer {token(marker=None)}".encode())]
    assert call(app, "/aws-iam-sign-in", bare) == 200
    assert authenticator.cached(f"Bearer {token(marker=None)}") is None
    assert call(app, "/api/2.0/mlflow/runs/get", bare) == 401


def test_a_role_that_is_not_allowed_is_told_so_and_s3_is_not_asked() -> None:
    reads: list[str] = []
    other = "arn:aws:sts::111122223333:assumed-role/other/mallory"
    authenticator = Authenticator(settings("ml-team"), lambda r: CallerIdentity(other, OWN, "id"),
                                  lambda: OWN, lambda u: frozenset(), clock=lambda: NOW,
                                  read_marker=lambda m: reads.append(m.url))  # fmt: skip
    for tok in (token(), token(marker=None)):
        decision = authenticator.decide(f"Bearer {tok}")
        assert (decision.status, decision.reason) == (
            403, f"{other}: role other is not allowed on this server",
        )  # fmt: skip
    assert reads == []


def test_a_flood_of_tokens_keeps_the_decision_cache_bounded_forgetting_expired_then_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every verified token is remembered: a client minting tokens must not grow the cache past
    IDENTITY_CACHE_MAX. Full, it drops what has expired first, then the oldest."""
    monkeypatch.setattr(server_module, "IDENTITY_CACHE_MAX", 2)
    now = [NOW]
    authenticator = Authenticator(settings("ml-team"), lambda r: CallerIdentity(ALICE, OWN, "id"),
                                  lambda: OWN, lambda u: frozenset(), clock=lambda: now[0],
                                  read_marker=lambda m: None)  # fmt: skip
    a, b, c = (f"Bearer {token(session=s)}" for s in ("a", "b", "c"))
    for header in (a, b, c):
        assert authenticator.decide(header).allowed
    assert authenticator.cached(a) is None  # the oldest, forgotten for c
    assert authenticator.cached(b) is not None and authenticator.cached(c) is not None

    fresh = Authenticator(settings("ml-team"), lambda r: CallerIdentity(ALICE, OWN, "id"),
                          lambda: OWN, lambda u: frozenset(), clock=lambda: now[0],
                          read_marker=lambda m: None)  # fmt: skip
    older = f"Bearer {token(session='b', at=NOW - timedelta(minutes=14))}"  # expires in 1 min
    assert fresh.decide(a).allowed and fresh.decide(older).allowed
    now[0] = NOW + timedelta(minutes=1)  # older has expired, a has another minute
    assert fresh.decide(c).allowed
    assert fresh.cached(a) is not None and fresh.cached(c) is not None


def test_a_signed_in_client_is_served_from_the_cache_without_spending_sign_in_attempts() -> None:
    """The rate limit is on verifications: a browser's burst of requests with one token that
    is already verified is not answered 429."""
    config = settings("ml-team")
    authenticator = Authenticator(config, lambda r: CallerIdentity(ALICE, OWN, "id"),
                                  lambda: OWN, lambda u: frozenset(), clock=lambda: NOW,
                                  read_marker=lambda m: None)  # fmt: skip
    inner_calls: list[str] = []

    async def mlflow_side(scope: dict[str, Any], receive: Any, send: Any) -> None:
        inner_calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = AwsIamAuthMiddleware(mlflow_side, authenticator, config,
                               RateLimiter((1, 0.0), (1, 0.0), clock=lambda: 0.0))  # fmt: skip
    header = [(b"authorization", f"Bearer {token()}".encode())]
    assert [call(app, "/api/2.0/mlflow/runs/get", header) for _ in range(5)] == [200] * 5
    assert len(inner_calls) == 5
    other = [(b"authorization", f"Bearer {token(session='other')}".encode())]
    assert call(app, "/api/2.0/mlflow/runs/get", other) == 429  # a new token: the bucket is spent
