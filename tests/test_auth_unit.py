"""The aws-iam token checks and authorization rules as pure functions: each refusal names its
rule; no network (the e2e tests do the same through a real server, moto STS and IAM)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest

from helper.outputs import OutputsError, parse_connection_bundle
from helper.proxy import Upstream
from mlflow_aws.auth.server import (
    Authenticator,
    AwsUnavailable,
    Settings,
    SettingsError,
    authorize,
    role_allowed,
    settings_from_environ,
    sso_permission_set,
)
from mlflow_aws.auth.token import (
    STS_BODY,
    TOKEN_PREFIX,
    CallerIdentity,
    SignedRequest,
    TokenError,
    check_token,
    make_token,
    parse_caller_identity,
    sts_error,
)
from mlflow_aws.run_secret import Gate

STS = "https://sts.eu-west-1.amazonaws.com/"
SERVER = "mlflow.example.com"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
OWN = "111122223333"


def token(
    server_id: str = SERVER, sts: str = STS, at: datetime = NOW, session: str | None = "s"
) -> str:
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        return make_token("ASIAEXAMPLEKEY000001", "secret", session, "eu-west-1", sts, server_id)


def payload(tok: str) -> dict[str, object]:
    data = tok[len(TOKEN_PREFIX) :]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    return decoded


def encode(data: dict[str, object]) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def check(tok: str, now: datetime = NOW) -> SignedRequest:
    return check_token(tok, sts_url=STS, server_id=SERVER, now=now)


def test_a_fresh_token_passes_and_holds_no_secret() -> None:
    tok = token()
    request = check(tok)
    assert request.url == STS and request.body == STS_BODY
    assert set(request.headers) == {
        "host", "content-type", "x-amz-date", "x-amz-security-token", "authorization",
        "x-mlflow-aws-iam-server-id",
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
        (TOKEN_PREFIX + "x" * 9000, "longer than 8192"),
        (encode({"url": STS}), "exactly url, headers and body"),
    ],
)
def test_refuses_malformed_tokens(tok: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        check(tok)


def test_refuses_another_server_id() -> None:
    with pytest.raises(TokenError, match=r"token is for server 'other\.example\.com'"):
        check(token(server_id="other.example.com"))


def test_refuses_expired_and_future_tokens() -> None:
    check(token(at=NOW - timedelta(minutes=14)))
    with pytest.raises(TokenError, match="token expired: signed 16 min ago"):
        check(token(at=NOW - timedelta(minutes=16)))
    with pytest.raises(TokenError, match="in the future"):
        check(token(at=NOW + timedelta(minutes=16)))


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
    unsigned = headers["authorization"].replace(";x-mlflow-aws-iam-server-id", "")
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
        {"MLFLOW_AWS_IAM_SERVER_ID": SERVER, "AWS_REGION": "eu-west-1",
         "MLFLOW_AWS_IAM_ALLOWED_ROLES": roles, "MLFLOW_AWS_IAM_ALLOWED_GROUPS": groups},
        endpoint_for=lambda region: f"https://sts.{region}.amazonaws.com/",
    )  # fmt: skip


def test_settings_are_required() -> None:
    with pytest.raises(SettingsError, match="MLFLOW_AWS_IAM_SERVER_ID is not set"):
        settings_from_environ({"AWS_REGION": "eu-west-1"})
    with pytest.raises(SettingsError, match="AWS_REGION is not set"):
        settings_from_environ({"MLFLOW_AWS_IAM_SERVER_ID": SERVER})
    with pytest.raises(SettingsError, match="not an IAM role ARN"):
        settings(roles="arn:aws:iam::1:user/x")
    assert settings(roles="a, b\nc").allowed_roles == {"a", "b", "c"}


def test_sso_roles_match_by_name_or_permission_set() -> None:
    sso = "AWSReservedSSO_DataScientist_0123456789abcdef"
    assert sso_permission_set(sso) == "DataScientist"
    assert sso_permission_set("AWSReservedSSO_Data_Sci_0123456789abcdef") == "Data_Sci"
    assert sso_permission_set("DataScientist") is None
    assert role_allowed(OWN, sso, frozenset({"DataScientist"}), OWN)
    assert role_allowed(OWN, sso, frozenset({sso}), OWN)
    assert not role_allowed(OWN, sso, frozenset({"Data"}), OWN)


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
                                  clock=lambda: now[0])  # fmt: skip
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
                         clock=lambda: NOW)  # fmt: skip
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
