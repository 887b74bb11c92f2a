"""The ``aws-iam`` token: a SigV4-signed ``sts:GetCallerIdentity`` POST, carried as a bearer token.

Client side, ``make_token`` signs the request with the caller's credentials. Server side,
``check_token`` decides, without any network call, whether a token is exactly such a request,
for this server, signed recently, aimed at the server's own STS endpoint; only then is it replayed
to STS (``server.py``), which verifies the signature and answers with the caller's ARN.

Pure functions and constants only (botocore is imported where signing needs it), so the client
plugin, the helper's proxy and the server share one definition of the format.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

TOKEN_PREFIX = "aws-iam-v1."  # noqa: S105 (a format marker, not a secret)
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# Signed into every token: a token made for one server is refused by any other (no replay of a
# teammate's token, captured by one service, against another).
SERVER_ID_HEADER = "x-mlflow-aws-iam-server-id"
# Both sides read the server id from it (default on the client: the tracking URI's host).
SERVER_ID_ENV = "MLFLOW_AWS_IAM_SERVER_ID"
# STS itself refuses a SigV4 signature older than 15 minutes; the server holds tokens to that too.
TOKEN_LIFETIME = timedelta(minutes=15)
MAX_TOKEN_CHARS = 8192  # a real token is ~2-3 KB (a session token is most of it)

REQUIRED_HEADERS = frozenset(
    {"host", "content-type", "x-amz-date", "authorization", SERVER_ID_HEADER}
)
OPTIONAL_HEADERS = frozenset({"x-amz-security-token"})  # temporary credentials (roles, SSO)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=[A-Z0-9]{16,128}/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/sts/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<sig>[0-9a-f]{64})"
)
_STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}


class TokenError(ValueError):
    """A token that is not acceptable; the message is one line, fit for a 401 body."""


@dataclass(frozen=True)
class SignedRequest:
    """A token that passed every local check: what the server replays to STS."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: str
    signed_at: datetime

    @property
    def expires_at(self) -> datetime:
        return self.signed_at + TOKEN_LIFETIME


@dataclass(frozen=True)
class CallerIdentity:
    arn: str
    account: str
    user_id: str


def host_header(url: str) -> str:
    """The Host header SigV4 signs for ``url``: lowercase, no userinfo, no default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def normalized_endpoint(url: str) -> str:
    """``https://sts.eu-west-1.amazonaws.com`` -> ``https://sts.eu-west-1.amazonaws.com/``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) endpoint URL: {url!r}")
    return f"{parts.scheme}://{host_header(url)}{parts.path.rstrip('/')}/"


def sts_endpoint_url(region: str) -> str:
    """The STS endpoint botocore uses for ``region`` (regional; ``AWS_ENDPOINT_URL_STS`` and
    the shared config's endpoint settings are honoured, which is how tests point at moto)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "sts",
        region_name=region,
        aws_access_key_id="unused",
        aws_secret_access_key="unused",  # noqa: S106 (only the endpoint is read)
    )
    return normalized_endpoint(client.meta.endpoint_url)


# -- client: signing ----------------------------------------------------------------------------


def make_token(
    access_key: str, secret_key: str, session_token: str | None, region: str, sts_url: str,
    server_id: str,
) -> str:  # fmt: skip
    """Sign ``GetCallerIdentity`` for ``sts_url`` with the caller's credentials, for ``server_id``.

    The token holds the signed request (URL, headers, body), never the secret key.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = normalized_endpoint(sts_url)
    request = AWSRequest(
        method="POST",
        url=url,
        data=STS_BODY,
        headers={
            "Host": host_header(url),
            "Content-Type": CONTENT_TYPE,
            SERVER_ID_HEADER: server_id,
        },
    )
    SigV4Auth(Credentials(access_key, secret_key, session_token), "sts", region).add_auth(request)
    payload = {
        "url": url,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": STS_BODY,
    }
    encoded = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    return TOKEN_PREFIX + encoded.decode().rstrip("=")


# -- server: checks before replaying ------------------------------------------------------------


def _decode(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"token is longer than {MAX_TOKEN_CHARS} characters")
    if not token.startswith(TOKEN_PREFIX):
        raise TokenError(
            f"not an aws-iam token (expected 'Bearer {TOKEN_PREFIX}…'; "
            "clients use MLFLOW_TRACKING_AUTH=aws-iam or `python -m helper serve --remote`)"
        )
    data = token[len(TOKEN_PREFIX) :]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        raise TokenError("token is not base64url-encoded JSON") from None
    if not isinstance(decoded, dict) or set(decoded) != {"url", "headers", "body"}:
        raise TokenError("token must be an object with exactly url, headers and body")
    headers = decoded["headers"]
    if not (
        isinstance(decoded["url"], str)
        and isinstance(decoded["body"], str)
        and isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise TokenError("token's url and body must be strings and its headers strings too")
    return decoded


def _signed_at(amz_date: str) -> datetime:
    try:
        return datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise TokenError(f"token's x-amz-date {amz_date!r} is not {AMZ_DATE_FORMAT}") from None


def check_token(token: str, *, sts_url: str, server_id: str, now: datetime) -> SignedRequest:
    """The signed request in ``token`` if it is exactly a ``GetCallerIdentity`` POST to this
    server's STS endpoint (``sts_url``), for ``server_id``, signed within 15 minutes of ``now``,
    with every header signed and no other header; else ``TokenError`` saying which rule failed.

    The signature itself is STS's to verify: only STS knows the secret key.
    """
    decoded = _decode(token)
    expected_url = normalized_endpoint(sts_url)
    try:
        url = normalized_endpoint(decoded["url"])
    except ValueError:
        raise TokenError("token's url is not an http(s) URL") from None
    if url != expected_url or decoded["url"] != url:
        # Never contact a host named by the token: it is only compared, and refused here.
        raise TokenError(
            f"token is signed for {host_header(decoded['url']) or '?'}, but this server verifies "
            f"with {host_header(expected_url)} (sign for the server's region: AWS_REGION or "
            "MLFLOW_AWS_IAM_STS_REGION)"
        )
    if decoded["body"] != STS_BODY:
        raise TokenError(f"token is not an sts:GetCallerIdentity request (body must be {STS_BODY})")

    headers = {name.lower(): value for name, value in decoded["headers"].items()}
    if len(headers) != len(decoded["headers"]):
        raise TokenError("token repeats a header")
    unexpected = sorted(set(headers) - REQUIRED_HEADERS - OPTIONAL_HEADERS)
    if unexpected:
        raise TokenError(f"token has unexpected headers: {', '.join(unexpected)}")
    missing = sorted(REQUIRED_HEADERS - set(headers))
    if missing:
        raise TokenError(f"token lacks headers: {', '.join(missing)}")
    if headers["host"] != host_header(expected_url):
        raise TokenError(f"token's Host header {headers['host']!r} is not the STS endpoint's")
    if headers["content-type"] != CONTENT_TYPE:
        raise TokenError(f"token's Content-Type must be {CONTENT_TYPE!r}")
    if headers[SERVER_ID_HEADER] != server_id:
        raise TokenError(
            f"token is for server {headers[SERVER_ID_HEADER]!r}, this is {server_id!r} "
            "(MLFLOW_AWS_IAM_SERVER_ID on the client must match)"
        )

    authorization = _AUTHORIZATION.fullmatch(headers["authorization"])
    if authorization is None:
        raise TokenError("token's Authorization is not an AWS4-HMAC-SHA256 signature for sts")
    signed = authorization["signed"].split(";")
    if sorted(signed) != signed or set(signed) != set(headers) - {"authorization"}:
        raise TokenError("token must sign exactly its headers (the server id one included)")
    signed_at = _signed_at(headers["x-amz-date"])
    if authorization["date"] != headers["x-amz-date"][:8]:
        raise TokenError("token's credential scope date is not its signing date")
    age = now - signed_at
    if age > TOKEN_LIFETIME:
        minutes = int(age.total_seconds() // 60)
        raise TokenError(f"token expired: signed {minutes} min ago, tokens last 15 min")
    if -age > TOKEN_LIFETIME:
        raise TokenError("token is signed more than 15 min in the future (check the clock)")
    return SignedRequest(url, headers, STS_BODY, signed_at)


# -- server: STS's answer -----------------------------------------------------------------------


def parse_caller_identity(xml: bytes) -> CallerIdentity:
    """``GetCallerIdentityResponse`` -> the identity; ``TokenError`` if it is not one."""
    try:
        root = ElementTree.fromstring(xml)  # noqa: S314 (STS's answer, from a fixed endpoint)
    except ElementTree.ParseError:
        raise TokenError("STS answered with something that is not XML") from None
    result = root.find("sts:GetCallerIdentityResult", _STS_NS)
    values = {}
    for key in ("Arn", "Account", "UserId"):
        node = result.find(f"sts:{key}", _STS_NS) if result is not None else None
        if node is None or not node.text:
            raise TokenError(f"STS's answer has no {key}")
        values[key] = node.text.strip()
    return CallerIdentity(values["Arn"], values["Account"], values["UserId"])


def sts_error(xml: bytes) -> str:
    """``Code: Message`` of an STS error response, for a one-line 401 reason."""
    try:
        root = ElementTree.fromstring(xml)  # noqa: S314
    except ElementTree.ParseError:
        return "unreadable error"
    code = root.findtext(".//{*}Code") or "?"
    message = " ".join((root.findtext(".//{*}Message") or "").split())
    return f"{code}: {message}"[:300]
