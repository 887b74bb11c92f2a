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
    audience_for,
    check_marker_url,
    check_token,
    host_header,
    is_loopback,
    make_token,
    normalized_endpoint,
    parse_caller_identity,
    require_https,
    sts_error,
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
        (["url", "headers", "body"], "exactly url, headers, body"),  # a list of the right names
        ({"headers": {}, "body": ""}, "exactly url, headers, body"),
        ({"url": STS, "body": ""}, "exactly url, headers, body"),
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
        ({"url": STS, "headers": {}, "body": "", "marker": ["url", "headers"]}, "marker must be"),
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


# -- the Authorization header's grammar (SigV4: Credential=<key>/<date>/<region>/sts/aws4_request)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (KEY, "ASIA'EXAMPLEKEY0001"),  # a quote in the access key id
        (KEY, "ASIA EXAMPLEKEY0001"),
        (KEY, "A" * 15),  # access key ids are 16 to 128 characters (IAM AccessKeyId)
        (KEY, "A" * 129),
        ("/20261127/", "/202611270/"),  # a 9-digit date
        ("/20261127/", "/2026112/"),
        ("/eu-west-1/", "//"),  # no region
        ("/eu-west-1/", "/eu-west-1'/"),
        ("/eu-west-1/", "/eu west 1/"),
        ("SignedHeaders=", "SignedHeaders='"),
        ("SignedHeaders=", "SignedHeaders= "),
    ],
)
def test_an_authorization_that_is_not_sigv4_grammar_is_refused(old: str, new: str) -> None:
    assert old in authorization()
    forged = authorization().replace(old, new, 1)
    refused(with_header("authorization", forged), "not an AWS4-HMAC-SHA256 signature for sts")


def test_an_empty_signed_headers_list_is_refused() -> None:
    forged = re.sub(r"SignedHeaders=[a-z0-9;-]+", "SignedHeaders=", authorization())
    refused(with_header("authorization", forged), "not an AWS4-HMAC-SHA256 signature for sts")


def test_the_requests_headers_never_show_in_a_repr() -> None:
    request = check(token())
    assert request.marker is not None
    for shown in (repr(request), repr(request.marker)):
        assert "Signature=" not in shown and "'s'" not in shown and "x-amz" not in shown


# -- URLs a client signs for, and the server verifies with ------------------------------------


def test_host_headers_of_urls_with_no_host_default_ports_and_ipv6() -> None:
    assert host_header("https:///x") == ""
    assert host_header("https://STS.example.com:443/") == "sts.example.com"
    assert host_header("http://example.com:80") == "example.com"
    assert host_header("http://[::1]:5000/") == "[::1]:5000"


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.localdomain", "127.0.0.1", "127.1.2.3", "[::1]"]
)
def test_loopback_hosts_are_this_machine(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["localhost.evil.example", "10.0.0.1", "::2", "example.com", ""])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("https://", "over https"),  # no host
        ("http://", "over http"),
        ("http://mlflow.example.com/churn", "over http"),
        ("//mlflow.example.com/churn", "over no scheme"),
        ("ftp://127.0.0.1/churn", "over ftp"),
    ],
)
def test_no_token_is_made_for_a_url_without_tls_or_host(url: str, said: str) -> None:
    with pytest.raises(ValueError, match=f"refusing to sign in {said}"):
        require_https(url)
    with pytest.raises(ValueError):
        audience_for(url)


def test_the_audience_of_a_server_at_the_root_is_its_host() -> None:
    assert audience_for("https://mlflow.example.com") == "mlflow.example.com"
    assert audience_for("https://mlflow.example.com/") == "mlflow.example.com"


def test_endpoints_are_http_or_https_with_a_host() -> None:
    assert normalized_endpoint("http://127.0.0.1:5000") == "http://127.0.0.1:5000/"  # moto
    assert normalized_endpoint("https://sts.amazonaws.com") == "https://sts.amazonaws.com/"
    for bad in ("ftp://sts.amazonaws.com", "https://", "sts.amazonaws.com"):
        with pytest.raises(ValueError, match="not an http"):
            normalized_endpoint(bad)


def test_a_token_without_a_marker_carries_no_marker_read() -> None:
    assert "marker" not in decoded(token(marker=None))


# -- the marker URL a server names: the client signs a HEAD of nothing else -----------------------


@pytest.mark.parametrize(
    "url",
    [
        MARKER,
        "https://s3.eu-west-1.amazonaws.com/mlflow-aws-dev/churn/.mlflow-aws-sign-in",  # path style
        "https://s3.amazonaws.com/b/.mlflow-aws-sign-in",
        "https://b.s3-eu-west-1.amazonaws.com/.mlflow-aws-sign-in",
        "https://b.s3.cn-north-1.amazonaws.com.cn/p/.mlflow-aws-sign-in",
    ],
)
def test_a_sign_in_marker_on_s3_may_be_signed(url: str) -> None:
    check_marker_url(url)


def test_a_marker_on_the_configured_s3_endpoint_may_be_signed() -> None:
    moto = "http://127.0.0.1:5000/mlflow-aws-dev/churn/.mlflow-aws-sign-in"
    check_marker_url(moto, s3_endpoint="http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="not on an S3 endpoint"):
        check_marker_url(moto, s3_endpoint="http://127.0.0.1:5001")
    with pytest.raises(ValueError, match="not on an S3 endpoint"):
        check_marker_url(moto)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example.com/churn/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b.s3.amazonaws.com.evil.example/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://.s3.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b.s3..amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b.s3.eu'west.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        # a bucket part with a quote, a semicolon or a backtick: no bucket name has one
        ("https://my'bucket.s3.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b;x.s3.eu-west-1.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://b`x.s3.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        ("https://iam.amazonaws.com/.mlflow-aws-sign-in", "not on an S3 endpoint"),
        (MARKER + "?versionId=1", "does not name a .mlflow-aws-sign-in object"),
        (MARKER + "#x", "does not name a .mlflow-aws-sign-in object"),
        (MARKER.replace(".mlflow-aws-sign-in", "model.pkl"), "does not name"),
        (MARKER + "x", "does not name"),
        (MARKER.replace("https://", "http://"), "refusing to sign in over http"),
    ],
)
def test_a_server_cannot_make_the_client_sign_for_anything_else(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_marker_url(url)


def test_a_marker_read_of_no_url_names_it_as_missing() -> None:
    data = decoded()
    data["marker"]["url"] = ""
    refused(data, "token reads the sign-in marker '\\?'")


def test_a_marker_read_with_a_header_left_out_of_its_signature_is_refused() -> None:
    theirs = authorization("marker")
    assert "x-amz-content-sha256;" in theirs
    unsigned = theirs.replace("x-amz-content-sha256;", "")
    refused(with_header("authorization", unsigned, "marker"), "must sign exactly its headers")


# -- STS's answer ---------------------------------------------------------------------------------

STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def identity_xml(arn: str = "<Arn>a</Arn>", account: str = "<Account>1</Account>") -> bytes:
    return (f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>{arn}'
            f"<UserId>AID</UserId>{account}</GetCallerIdentityResult>"
            "</GetCallerIdentityResponse>").encode()  # fmt: skip


def test_an_answer_that_is_not_sts_identity_is_a_401_reason_not_a_crash() -> None:
    for answer, reason in [
        (b"<html>captive portal</html", "not XML"),
        (b"not xml at all", "not XML"),
        (identity_xml(arn=""), "no Arn"),
        (identity_xml(arn="<Arn></Arn>"), "no Arn"),
        (identity_xml(account=""), "no Account"),
        (identity_xml().replace(STS_NS.encode(), b"https://evil.example/"), "no Arn"),
    ]:
        with pytest.raises(TokenError, match=reason):
            parse_caller_identity(answer)
    assert parse_caller_identity(identity_xml(arn="<Arn> a </Arn>")).arn == "a"


def test_an_sts_error_is_one_short_line() -> None:
    assert sts_error(b"nonsense") == "unreadable error"
    long = f'<ErrorResponse xmlns="{STS_NS}"><Error><Code>X</Code><Message>{"m " * 400}'
    line = sts_error((long + "</Message></Error></ErrorResponse>").encode())
    assert line.startswith("X: m m") and len(line) == 300 and "\n" not in line
    assert sts_error(b"<ErrorResponse/>") == "?: "


@pytest.mark.parametrize("change", ["drop", "add", "quote"])
def test_a_signature_that_is_not_64_hex_digits_is_refused(change: str) -> None:
    signature = re.search(r"Signature=([0-9a-f]+)", authorization())
    assert signature is not None and len(signature[1]) == 64
    forged = {"drop": signature[1][:-1], "add": signature[1] + "a",
              "quote": signature[1][:-1] + "'"}[change]  # fmt: skip
    refused(with_header("authorization", authorization().replace(signature[1], forged)),
            "not an AWS4-HMAC-SHA256 signature for sts")  # fmt: skip


def test_a_marker_read_of_another_url_names_that_url() -> None:
    data = decoded()
    data["marker"]["url"] = MARKER.replace("/churn/", "/fraud/")
    refused(data, re.escape(f"token reads the sign-in marker {data['marker']['url']!r}"))
