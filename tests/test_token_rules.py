"""The aws-iam token's local checks (``mlflow_aws/auth/token.py``) as the forged or broken
tokens each one refuses, with a 401 reason and never a crash (issue 19: every mutant
``./dev mutate mlflow_aws/auth/token.py`` makes must fail one of these or a test of
``tests/test_auth_unit.py`` / ``tests/test_auth_e2e.py``). STS still verifies the signature; these
are the rules the server states before it asks STS. Pure: no AWS."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest

from mlflow_aws.auth.token import (
    TOKEN_PREFIX,
    SignedRequest,
    TokenError,
    check_token,
    make_token,
)

STS = "https://sts.eu-west-1.amazonaws.com/"
AUDIENCE = "mlflow.example.com/churn"
MARKER = "https://mlflow-aws-dev.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
KEY = "ASIAEXAMPLEKEY000001"


def token(at: datetime = NOW, session: str | None = "s", marker: str | None = MARKER) -> str:
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        return make_token(KEY, "secret", session, "eu-west-1", STS, AUDIENCE, marker)


def decoded(tok: str | None = None) -> dict[str, Any]:
    data = (tok or token())[len(TOKEN_PREFIX) :]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    return value


def encode(data: Any) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def check(tok: str, now: datetime = NOW, marker_url: str | None = MARKER) -> SignedRequest:
    return check_token(tok, sts_url=STS, audience=AUDIENCE, now=now, marker_url=marker_url)


def refused(data: Any, reason: str, now: datetime = NOW) -> None:
    with pytest.raises(TokenError, match=reason):
        check(encode(data), now=now)


def with_header(name: str, value: str, part: str | None = None) -> dict[str, Any]:
    data = decoded()
    target = data[part] if part else data
    target["headers"] = {**target["headers"], name: value}
    return data


def authorization(part: str | None = None) -> str:
    data = decoded()
    value: str = (data[part] if part else data)["headers"]["authorization"]
    return value


def test_the_genuine_token_passes_with_and_without_a_session_or_marker() -> None:
    request = check(token())
    assert request.marker is not None and request.marker.url == MARKER
    assert request.marker.headers["x-amz-security-token"] == "s"
    assert check(token(session=None)).marker is not None
    assert check(token(), marker_url=None).marker is None  # a server without a marker


# -- the token's shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "exactly url, headers, body"),
        ("a string", "exactly url, headers, body"),
        ({"url": STS, "headers": {}}, "exactly url, headers, body"),
        ({"url": STS, "headers": {}, "body": "", "extra": 1}, "exactly url, headers, body"),
        ({"url": 5, "headers": {}, "body": ""}, "must be strings"),
        ({"url": STS, "headers": {}, "body": 5}, "must be strings"),
        ({"url": STS, "headers": [], "body": ""}, "must be strings"),
        ({"url": STS, "headers": {"host": 5}, "body": ""}, "must be strings"),
        ({"url": STS, "headers": {"host": None}, "body": ""}, "must be strings"),
        ({"url": None, "headers": {}, "body": ""}, "must be strings"),
        ({"url": STS, "headers": {}, "body": "", "marker": []}, "marker must be an object"),
        ({"url": STS, "headers": {}, "body": "", "marker": {"url": MARKER}}, "marker must be"),
        ({"url": STS, "headers": {}, "body": "", "marker": {"url": 5, "headers": {}}},
         "must be strings"),
        ({"url": STS, "headers": {}, "body": "", "marker": {"url": MARKER, "headers": {"a": 1}}},
         "must be strings"),
    ],
)  # fmt: skip
def test_a_token_of_the_wrong_shape_is_a_401_not_a_crash(data: Any, reason: str) -> None:
    refused(data, reason)


def test_a_token_at_the_size_limit_is_read_and_one_over_is_not() -> None:
    with pytest.raises(TokenError, match="longer than 12288"):
        check(TOKEN_PREFIX + "x" * (12288 - len(TOKEN_PREFIX) + 1))
    with pytest.raises(TokenError, match="not base64url-encoded JSON"):
        check(TOKEN_PREFIX + "x" * (12288 - len(TOKEN_PREFIX)))


@pytest.mark.parametrize(
    "url",
    ["ftp://sts.eu-west-1.amazonaws.com/", "sts.eu-west-1.amazonaws.com", "https:///", "", "//x/"],
)
def test_a_token_for_a_url_that_is_not_http_is_a_401_not_a_crash(url: str) -> None:
    refused({**decoded(), "url": url}, "not an http")


def test_a_token_whose_url_only_normalizes_to_the_endpoint_is_refused() -> None:
    refused({**decoded(), "url": "https://STS.eu-west-1.amazonaws.com/"}, "signed for")
    refused({**decoded(), "url": "https://sts.eu-west-1.amazonaws.com:443/"}, "signed for")
    refused({**decoded(), "url": "https://sts.eu-west-1.amazonaws.com"}, "signed for")


# -- the STS part's signature -------------------------------------------------------------------


def test_a_credential_scope_date_other_than_the_signing_date_is_refused() -> None:
    scope = authorization().replace("/20261127/", "/20261126/")
    refused(with_header("authorization", scope), "credential scope date is not its signing date")


def test_text_after_the_signature_is_refused() -> None:
    refused(with_header("authorization", authorization() + ", extra=1"), "not an AWS4-HMAC")
    refused(with_header("authorization", "x" + authorization()), "not an AWS4-HMAC")


def test_unsorted_signed_headers_are_refused() -> None:
    signed = re.search(r"SignedHeaders=([a-z0-9;-]+)", authorization())
    assert signed is not None
    names = signed[1].split(";")
    shuffled = authorization().replace(signed[1], ";".join([names[-1], *names[:-1]]))
    refused(with_header("authorization", shuffled), "sign exactly its headers")


def test_a_header_left_out_of_the_signature_is_refused() -> None:
    unsigned = authorization().replace(";x-amz-security-token", "")
    refused(with_header("authorization", unsigned), "sign exactly its headers")


def test_a_signature_for_another_service_is_refused() -> None:
    refused(with_header("authorization", authorization().replace("/sts/", "/s3/")), "for sts")


def test_a_repeated_header_in_another_case_is_refused() -> None:
    data = decoded()
    data["headers"]["Host"] = data["headers"]["host"]
    refused(data, "repeats a header")


@pytest.mark.parametrize(
    ("minutes", "reason"),
    [(16, "token expired: signed 16 min ago"), (-6, "more than 5 min in the future")],
)
def test_a_token_older_than_15_minutes_or_dated_5_ahead_is_refused(
    minutes: int, reason: str
) -> None:
    with pytest.raises(TokenError, match=reason):
        check(token(at=NOW - timedelta(minutes=minutes)))


def test_a_token_just_inside_its_window_passes() -> None:
    check(token(at=NOW - timedelta(minutes=15)))
    check(token(at=NOW + timedelta(minutes=5)))
    check(token(), now=NOW + timedelta(minutes=15))
    with pytest.raises(TokenError, match="expired"):
        check(token(), now=NOW + timedelta(minutes=15, seconds=1))


# -- the marker read ------------------------------------------------------------------------------


def test_another_projects_marker_is_refused() -> None:
    data = decoded()
    data["marker"]["url"] = MARKER.replace("/churn/", "/fraud/")
    refused(data, "a token is good on one project's server only")


def test_a_token_without_a_marker_read_asks_for_nothing_but_the_marker_url() -> None:
    data = decoded()
    del data["marker"]
    assert check(encode(data)).marker is None  # the server answers it with the marker's URL only


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("host", "evil.example.com", "another Host than the marker's"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD", "must sign an empty body"),
        ("x-extra", "1", "must have exactly the headers"),
        ("x-amz-date", "yesterday", "x-amz-date 'yesterday' is not"),
    ],
)
def test_a_tampered_marker_read_is_refused(name: str, value: str, reason: str) -> None:
    refused(with_header(name, value, part="marker"), reason)


def test_a_marker_read_signed_otherwise_than_its_sts_part_is_refused() -> None:
    theirs = authorization("marker")
    refused(with_header("authorization", theirs.replace(KEY, "AKIAOTHERKEY00000001"), "marker"),
            "other credentials than its STS part")  # fmt: skip
    refused(with_header("authorization", theirs.replace("/s3/", "/sts/"), "marker"), "for s3")
    refused(with_header("authorization", theirs + " x", "marker"), "for s3")
    refused(with_header("authorization", theirs.replace("/20261127/", "/20261126/"), "marker"),
            "credential scope date")  # fmt: skip
    signed = re.search(r"SignedHeaders=([a-z0-9;-]+)", theirs)
    assert signed is not None
    names = signed[1].split(";")
    shuffled = theirs.replace(signed[1], ";".join([names[-1], *names[:-1]]))
    refused(with_header("authorization", shuffled, "marker"), "must sign exactly its headers")


def test_a_marker_read_repeating_a_header_is_refused() -> None:
    data = decoded()
    data["marker"]["headers"]["Host"] = data["marker"]["headers"]["host"]
    refused(data, "marker read repeats a header")


def test_an_old_marker_read_is_refused_even_with_a_fresh_sts_part() -> None:
    old = decoded(token(at=NOW - timedelta(minutes=20)))
    data = decoded()
    data["marker"] = old["marker"]
    refused(data, "token expired")
