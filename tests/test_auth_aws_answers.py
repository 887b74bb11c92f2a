"""What the aws-iam server makes of each answer STS, S3 and IAM can give (issue 19): the replays
(``StsReplay``, ``MarkerReplay``) against a real HTTP server on loopback that answers as the test
scripts it, and the IAM lookups (``AwsLookups``) with boto3 against moto in process, or against
an endpoint that is not there. Fast: no server processes.

The rules: only STS's 200 is an identity and only S3's 200 a read of the marker; an AWS that
cannot answer (5xx, throttling, a dropped connection, a redirect) is a 503 that decides nothing,
asked once (no retries parking MLflow's threads) and never followed elsewhere; the rest is the
token's fault (401) or the identity's (403). Group membership and role paths are asked again
after ``GROUPS_TTL_SECONDS``, never sooner nor later."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

import mlflow_aws.auth.sign_in_app as server
from mlflow_aws.auth.sign_in_app import (
    GROUPS_TTL_SECONDS,
    AwsLookups,
    AwsUnavailable,
    MarkerRefused,
    MarkerReplay,
    StsReplay,
)
from mlflow_aws.auth.token import CallerIdentity, MarkerRead, SignedRequest, TokenError

ALICE = "arn:aws:sts::111122223333:assumed-role/ml-team/alice"
ADMIN = "arn:aws:sts::111122223333:assumed-role/admin/mallory"
REGION = "eu-west-1"


def identity_xml(arn: str) -> bytes:
    return (
        '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROAEXAMPLE:alice</UserId>"
        "<Account>111122223333</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
    ).encode()


ERROR_XML = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender'
    b"</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
    b"does not match</Message></Error></ErrorResponse>"
)


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


@dataclass
class Scripted:
    """A loopback HTTP server: ``answers[path]`` is what each path gets; every request is kept."""

    url: str
    answers: dict[str, Answer]
    seen: list[tuple[str, str, dict[str, str], bytes]]


@pytest.fixture(scope="module")
def loopback() -> Iterator[Scripted]:
    answers: dict[str, Answer] = {}
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.append((self.command, self.path, dict(self.headers.items()), body))
            answer = answers.get(self.path, Answer(404))
            if answer.drop:
                self.close_connection = True
                return
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)

        do_POST = do_HEAD = do_GET = _answer

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Scripted(f"http://127.0.0.1:{httpd.server_address[1]}", answers, seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def aws(loopback: Scripted) -> Scripted:
    loopback.answers.clear()
    loopback.seen.clear()
    return loopback


def signed(url: str) -> SignedRequest:
    headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=...", "X-Amz-Date": "20261202T000000Z"}
    return SignedRequest(url, headers, "Action=GetCallerIdentity&Version=2011-06-15",
                         datetime(2026, 12, 2, tzinfo=UTC))  # fmt: skip


def marker(url: str) -> MarkerRead:
    return MarkerRead(url, {"Authorization": "AWS4-HMAC-SHA256 Credential=...", "x-amz-date": "1"})


# -- STS ---------------------------------------------------------------------------------------


def test_stss_200_is_the_callers_identity_from_the_signed_request_sent_as_it_was(
    aws: Scripted,
) -> None:
    aws.answers["/"] = Answer(200, identity_xml(ALICE))
    assert StsReplay()(signed(aws.url + "/")) == CallerIdentity(
        ALICE, "111122223333", "AROAEXAMPLE:alice"
    )
    [(method, path, headers, body)] = aws.seen
    assert (method, path, body) == ("POST", "/", b"Action=GetCallerIdentity&Version=2011-06-15")
    assert headers["Authorization"] == "AWS4-HMAC-SHA256 Credential=..."


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_an_sts_that_fails_or_throttles_is_a_503_not_a_refusal(aws: Scripted, status: int) -> None:
    aws.answers["/"] = Answer(status, b"<ErrorResponse/>")
    with pytest.raises(AwsUnavailable, match=f"STS answered {status}"):
        StsReplay()(signed(aws.url + "/"))


@pytest.mark.parametrize("status", [400, 403, 404, 499])
def test_an_sts_refusal_is_the_tokens_fault_with_stss_reason(aws: Scripted, status: int) -> None:
    aws.answers["/"] = Answer(status, ERROR_XML)
    with pytest.raises(TokenError, match=r"STS refused the token \(SignatureDoesNotMatch: The "):
        StsReplay()(signed(aws.url + "/"))


def test_a_redirect_from_sts_is_not_followed_to_an_identity_elsewhere(aws: Scripted) -> None:
    # whoever answers at the redirect's target does not name the caller
    aws.answers["/"] = Answer(307, b"", {"Location": "/elsewhere"})
    aws.answers["/elsewhere"] = Answer(200, identity_xml(ADMIN))
    with pytest.raises(TokenError, match="STS refused the token"):
        StsReplay()(signed(aws.url + "/"))
    assert [path for _, path, _, _ in aws.seen] == ["/"]


def test_an_sts_that_drops_the_connection_is_a_503_asked_once(aws: Scripted) -> None:
    aws.answers["/"] = Answer(200, drop=True)
    with pytest.raises(AwsUnavailable, match="cannot reach STS"):
        StsReplay()(signed(aws.url + "/"))
    assert len(aws.seen) == 1  # not retried: a stuck STS must not hold a thread twice as long


def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connect urllib3 makes from here on (the real ones: they still happen)."""
    import urllib3.connection

    attempts: list[tuple[str, int]] = []
    real = urllib3.connection.connection.create_connection

    def counted(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.connection.connection, "create_connection", counted)
    return attempts


@pytest.mark.parametrize("who", ["STS", "S3"])
def test_an_aws_endpoint_that_cannot_be_reached_is_a_503_tried_once(
    monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    # A refused (or, in AWS, a timed-out) connect is not retried: a sign-in waits one connect
    # timeout for an unreachable endpoint, not two, and holds a server thread no longer.
    from tests.support.services import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connect is refused
    attempts = connect_attempts(monkeypatch)
    with pytest.raises(AwsUnavailable, match=f"cannot reach {who}"):
        if who == "STS":
            StsReplay()(signed(url + "/"))
        else:
            MarkerReplay()(marker(url + "/m"))
    assert len(attempts) == 1


# -- S3: the marker read -------------------------------------------------------------------------


def test_s3s_200_is_a_read_of_the_marker_sent_as_signed(aws: Scripted) -> None:
    aws.answers["/churn/.mlflow-aws-sign-in"] = Answer(200)
    assert MarkerReplay()(marker(aws.url + "/churn/.mlflow-aws-sign-in")) is None
    [(method, path, headers, _)] = aws.seen
    assert (method, path) == ("HEAD", "/churn/.mlflow-aws-sign-in")
    assert headers["Authorization"] == "AWS4-HMAC-SHA256 Credential=..."


def test_s3s_403_refuses_the_identity(aws: Scripted) -> None:
    aws.answers["/m"] = Answer(403)
    with pytest.raises(MarkerRefused, match="may not read this project's sign-in marker now"):
        MarkerReplay()(marker(aws.url + "/m"))


def test_a_missing_marker_is_a_503_naming_it(aws: Scripted) -> None:
    with pytest.raises(AwsUnavailable, match=r"sign-in marker http://\S+/m is missing"):
        MarkerReplay()(marker(aws.url + "/m"))


@pytest.mark.parametrize("status", [500, 503, 301, 307, 429])
def test_an_s3_that_fails_moves_or_throttles_is_a_503(aws: Scripted, status: int) -> None:
    aws.answers["/m"] = Answer(status, headers={"Location": "/elsewhere"})
    aws.answers["/elsewhere"] = Answer(200)  # a redirect is not followed to a 200
    with pytest.raises(AwsUnavailable, match=f"S3 answered {status} for the sign-in marker"):
        MarkerReplay()(marker(aws.url + "/m"))
    assert [path for _, path, _, _ in aws.seen] == ["/m"]


@pytest.mark.parametrize("status", [400, 302, 499])
def test_a_marker_read_s3_will_not_take_is_the_tokens_fault(aws: Scripted, status: int) -> None:
    aws.answers["/m"] = Answer(status, headers={"Location": "/elsewhere"})
    aws.answers["/elsewhere"] = Answer(200)
    with pytest.raises(TokenError, match=rf"S3 refused the token's marker read \({status}\)"):
        MarkerReplay()(marker(aws.url + "/m"))


def test_an_s3_that_drops_the_connection_is_a_503_asked_once(aws: Scripted) -> None:
    aws.answers["/m"] = Answer(200, drop=True)
    with pytest.raises(AwsUnavailable, match="cannot reach S3"):
        MarkerReplay()(marker(aws.url + "/m"))
    assert len(aws.seen) == 1


# -- IAM: this account, group membership, role paths ----------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The lookups' monotonic clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(server, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_IAM", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("iam", region_name=REGION)


def counted(lookups: AwsLookups, service: str) -> list[str]:
    """The API calls ``lookups`` makes to ``service`` from now on."""
    calls: list[str] = []
    lookups._client(service).meta.events.register(
        "before-call", lambda model, **_: calls.append(model.name)
    )
    return calls


def test_this_servers_account_is_asked_once_and_the_clients_made_once(iam: Any) -> None:
    lookups = AwsLookups(REGION)
    assert lookups._client("sts") is lookups._client("sts")
    assert lookups._client("iam") is not lookups._client("sts")
    calls = counted(lookups, "sts")
    assert lookups.own_account() == "123456789012" and lookups.own_account() == "123456789012"
    assert calls == ["GetCallerIdentity"]


def test_a_group_change_is_seen_after_the_ttl_and_not_asked_before(
    iam: Any, clock: list[float]
) -> None:
    iam.create_user(UserName="carol")
    iam.create_group(GroupName="ml-users")
    iam.add_user_to_group(GroupName="ml-users", UserName="carol")
    lookups = AwsLookups(REGION)
    calls = counted(lookups, "iam")
    assert lookups.groups_of("carol") == {"ml-users"}
    iam.remove_user_from_group(GroupName="ml-users", UserName="carol")
    clock[0] += GROUPS_TTL_SECONDS - 0.5
    assert lookups.groups_of("carol") == {"ml-users"} and calls == ["ListGroupsForUser"]
    clock[0] += 0.5  # exactly the TTL: asked again, carol is out
    assert lookups.groups_of("carol") == frozenset()
    assert calls == ["ListGroupsForUser"] * 2


def test_a_role_path_is_read_again_after_the_ttl_and_not_before(
    iam: Any, clock: list[float]
) -> None:
    trust = '{"Version":"2012-10-17","Statement":[]}'
    iam.create_role(RoleName="AWSReservedSSO_DS_0123456789abcdef", AssumeRolePolicyDocument=trust,
                    Path="/aws-reserved/sso.amazonaws.com/eu-west-1/")  # fmt: skip
    lookups = AwsLookups(REGION)
    calls = counted(lookups, "iam")
    path = "/aws-reserved/sso.amazonaws.com/eu-west-1/"
    assert lookups.role_path("AWSReservedSSO_DS_0123456789abcdef") == path
    clock[0] += GROUPS_TTL_SECONDS - 0.5
    assert lookups.role_path("AWSReservedSSO_DS_0123456789abcdef") == path
    assert calls == ["GetRole"]
    clock[0] += 0.5
    assert lookups.role_path("AWSReservedSSO_DS_0123456789abcdef") == path
    assert calls == ["GetRole"] * 2


def test_an_iam_or_sts_that_cannot_be_reached_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    # a port nothing listens on: connection refused at once
    monkeypatch.setenv("AWS_ENDPOINT_URL_IAM", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    lookups = AwsLookups(REGION)
    with pytest.raises(AwsUnavailable, match="cannot list the groups of user carol"):
        lookups.groups_of("carol")
    with pytest.raises(AwsUnavailable, match="cannot read the path of role ml-team"):
        lookups.role_path("ml-team")
    with pytest.raises(AwsUnavailable, match="cannot learn this server's own account"):
        lookups.own_account()
