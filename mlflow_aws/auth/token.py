"""The ``aws-iam`` token: a SigV4-signed ``sts:GetCallerIdentity`` POST and a signed ``HEAD`` of
the project's sign-in marker object, carried as a bearer token.

Client side, ``make_token`` signs both requests with the caller's credentials. Server side,
``check_token`` decides, without any network call, whether a token is exactly such a pair, for
this project's server (its audience), signed recently, aimed at the server's own STS endpoint and
marker; only then are they replayed (``sign_in_app.py``): STS verifies the signature and answers
with the caller's ARN, and S3 answers the marker's ``HEAD`` only if IAM lets the caller read the
project's prefix *now* (``GetCallerIdentity`` succeeds even under an explicit deny, so it cannot
tell a revoked session from a live one; the marker read is the project policy itself).

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

from .. import environment as env_names

TOKEN_PREFIX = "aws-iam-v2."  # noqa: S105 (a format marker, not a secret)
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
# Signed into every token: the one project's server it is for, ``<host>/<project>`` of the
# tracking URI the client uses. A token made for one project's server is refused by every other
# (a token captured by one service, or by a colleague's project, cannot be replayed elsewhere).
AUDIENCE_HEADER = "x-mlflow-aws-iam-audience"
# The server's own audience (infra/containers.py sets ``<domain>/<project>`` per project's task).
AUDIENCE_ENV = env_names.IAM_AUDIENCE
# STS itself refuses a SigV4 signature older than 15 minutes; the server holds tokens to that too.
TOKEN_LIFETIME = timedelta(minutes=15)
# A token dated later than this is refused: a future date would stretch its life past 15 min.
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_TOKEN_CHARS = 12288  # a real token is ~3-5 KB (a session token is most of it)
# The project's sign-in marker, ``<artifact root>/.mlflow-aws-sign-in`` (the program writes it;
# MLflow's own artifacts live under ``<artifact root>/<experiment id>/``, gc only touches those).
MARKER_NAME = ".mlflow-aws-sign-in"
# The marker's URL the server tells a signed-in identity (``<prefix>/aws-iam-sign-in``).
SIGN_IN_PATH = "/aws-iam-sign-in"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PROBE_REQUIRED_HEADERS = frozenset({"host", "x-amz-date", "x-amz-content-sha256", "authorization"})

REQUIRED_HEADERS = frozenset(
    {"host", "content-type", "x-amz-date", "authorization", AUDIENCE_HEADER}
)
OPTIONAL_HEADERS = frozenset({"x-amz-security-token"})  # temporary credentials (roles, SSO)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/(?P<service>sts|s3)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"?Signature=(?P<sig>[0-9a-f]{64})"
)
# S3 endpoints a client signs a marker HEAD for: virtual-hosted or path style, any region.
_S3_HOST = re.compile(r"(?:[a-z0-9.-]+\.)?s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?")
_STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
# C0 and C1 controls, DEL and the Unicode line separators (CR, LF, NUL, NEL...): never valid in
# a header value, never written raw to a log (each would start a forged line or steer a terminal).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class TokenError(ValueError):
    """A token that is not acceptable; the message is one line, fit for a 401 body."""


@dataclass(frozen=True)
class MarkerRead:
    """The token's signed ``HEAD`` of the project's sign-in marker, as the server replays it."""

    url: str
    headers: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class SignedRequest:
    """A token that passed every local check: what the server replays to STS (and to S3: the
    marker read, absent only in a token that asks for the marker's URL)."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: str
    signed_at: datetime
    marker: MarkerRead | None = None

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


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: this machine only, so plain HTTP is not on a wire."""
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_https(url: str, what: str = "tracking URI") -> None:
    """Refuse to sign for ``url`` unless it is HTTPS or on loopback: a token sent in the clear
    is a token given away (for 15 min, to whoever is on the path)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ValueError(
        f"refusing to sign in over {parts.scheme or 'no scheme'}: the {what} {url!r} must be "
        "https:// (plain http only to this machine: 127.0.0.1, ::1 or localhost)"
    )


def audience_for(url: str) -> str:
    """The audience a token for ``url`` carries: ``<host>/<project>``, the Host SigV4 would sign
    (no default port) and the first path segment (MLflow serves each project under its own
    prefix, ``https://<domain>/<project>``); ``ValueError`` for a URL that is not HTTPS."""
    require_https(url)
    segments = [part for part in urlsplit(url).path.split("/") if part]
    return f"{host_header(url)}/{segments[0]}" if segments else host_header(url)


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def printable(text: object) -> str:
    """``text`` safe for one log line: control characters (CR, LF, ESC...) as ``\\xNN``."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], str(text))


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
    audience: str, marker_url: str | None = None,
) -> str:  # fmt: skip
    """Sign ``GetCallerIdentity`` for ``sts_url`` with the caller's credentials, for ``audience``
    (``audience_for`` the tracking URI), and a ``HEAD`` of ``marker_url`` (the project's sign-in
    marker, which the server names; without it the token only asks for that URL).

    The token holds the signed requests (URL, headers, body), never the secret key.
    """
    from botocore.auth import S3SigV4Auth, SigV4Auth
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
            AUDIENCE_HEADER: audience,
        },
    )
    credentials = Credentials(access_key, secret_key, session_token)
    SigV4Auth(credentials, "sts", region).add_auth(request)
    payload: dict[str, Any] = {
        "url": url,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": STS_BODY,
    }
    if marker_url is not None:  # checked by the caller (``check_marker_url``)
        marker = AWSRequest(
            method="HEAD",
            url=marker_url,
            headers={"Host": host_header(marker_url), "X-Amz-Content-SHA256": EMPTY_SHA256},
        )
        S3SigV4Auth(credentials, "s3", region).add_auth(marker)
        headers = {name.lower(): value for name, value in marker.headers.items()}
        headers.pop("x-amz-security-token", None)  # the STS part's: the server copies it over
        payload["marker"] = {"url": marker_url, "headers": headers}
    encoded = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
    return TOKEN_PREFIX + encoded.decode().rstrip("=")


def check_marker_url(url: str, s3_endpoint: str | None = None) -> None:
    """Refuse to sign a ``HEAD`` of anything but a sign-in marker on an S3 endpoint (the server
    names the URL: it must not be able to make a client sign for something else)."""
    parts = urlsplit(url)
    require_https(url, "sign-in marker URL")
    endpoint_host = host_header(s3_endpoint) if s3_endpoint else None
    if not (_S3_HOST.fullmatch(parts.hostname or "") or host_header(url) == endpoint_host):
        raise ValueError(f"the sign-in marker URL {url!r} is not on an S3 endpoint")
    if parts.query or parts.fragment or not parts.path.endswith(f"/{MARKER_NAME}"):
        raise ValueError(f"the sign-in marker URL {url!r} does not name a {MARKER_NAME} object")


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
    if not isinstance(decoded, dict) or not (
        {"url", "headers", "body"} <= set(decoded) <= {"url", "headers", "body", "marker"}
    ):
        raise TokenError("token must be an object with exactly url, headers, body (and marker)")
    marker = decoded.get("marker", {"url": "", "headers": {}})
    if not isinstance(marker, dict) or set(marker) != {"url", "headers"}:
        raise TokenError("token's marker must be an object with exactly url and headers")
    for part in (decoded, marker):
        headers = part["headers"]
        if not (
            isinstance(part["url"], str)
            and isinstance(part.get("body", ""), str)
            and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TokenError("token's urls and body must be strings and its headers strings too")
        if any(has_control_characters(v) for v in (part["url"], *headers, *headers.values())):
            raise TokenError("token's url or headers contain control characters (CR, LF, ...)")
    return decoded


def _signed_at(amz_date: str) -> datetime:
    try:
        return datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise TokenError(f"token's x-amz-date {amz_date!r} is not {AMZ_DATE_FORMAT}") from None


def _check_age(amz_date: str, now: datetime) -> datetime:
    signed_at = _signed_at(amz_date)
    age = now - signed_at
    if age > TOKEN_LIFETIME:
        minutes = int(age.total_seconds() // 60)
        raise TokenError(f"token expired: signed {minutes} min ago, tokens last 15 min")
    if -age > MAX_CLOCK_SKEW:
        raise TokenError(
            "token is signed more than 5 min in the future (check the clock: e.g. "
            "`date -u` against https://time.aws.com)"
        )
    return signed_at


def _check_marker(
    marker: Mapping[str, Any], marker_url: str, sts_headers: Mapping[str, str],
    access_key: str, now: datetime,
) -> MarkerRead:  # fmt: skip
    """The marker ``HEAD``: this project's marker, signed by the STS part's credentials."""
    if marker["url"] != marker_url:
        raise TokenError(
            f"token reads the sign-in marker {marker['url'] or '?'!r}, this server's is "
            f"{marker_url!r} (a token is good on one project's server only)"
        )
    headers = {name.lower(): value for name, value in marker["headers"].items()}
    if len(headers) != len(marker["headers"]):
        raise TokenError("token's marker read repeats a header")
    if set(headers) != PROBE_REQUIRED_HEADERS:
        raise TokenError(
            "token's marker read must have exactly the headers "
            + ", ".join(sorted(PROBE_REQUIRED_HEADERS))
        )
    if headers["host"] != host_header(marker_url):
        raise TokenError("token's marker read has another Host than the marker's")
    if headers["x-amz-content-sha256"] != EMPTY_SHA256:
        raise TokenError("token's marker read must sign an empty body")
    authorization = _AUTHORIZATION.fullmatch(headers["authorization"])
    if authorization is None or authorization["service"] != "s3":
        raise TokenError("token's marker read is not an AWS4-HMAC-SHA256 signature for s3")
    if authorization["key"] != access_key:
        raise TokenError("token's marker read is signed with other credentials than its STS part")
    if "x-amz-security-token" in sts_headers:
        headers["x-amz-security-token"] = sts_headers["x-amz-security-token"]
    signed = authorization["signed"].split(";")
    if sorted(signed) != signed or set(signed) != set(headers) - {"authorization"}:
        raise TokenError("token's marker read must sign exactly its headers")
    _signed_at(headers["x-amz-date"])
    if authorization["date"] != headers["x-amz-date"][:8]:
        raise TokenError("token's marker read has a credential scope date other than its date")
    _check_age(headers["x-amz-date"], now)
    return MarkerRead(marker_url, headers)


def check_token(
    token: str, *, sts_url: str, audience: str, now: datetime, marker_url: str | None = None
) -> SignedRequest:
    """The signed request in ``token`` if it is exactly a ``GetCallerIdentity`` POST to this
    server's STS endpoint (``sts_url``), for ``audience`` (this project's server), signed within
    the last 15 minutes (and at most 5 minutes ahead of ``now``),
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
    if headers[AUDIENCE_HEADER] != audience:
        raise TokenError(
            f"token is for {headers[AUDIENCE_HEADER]!r}, this server is {audience!r}: a token "
            "is good on one project's server only (sign in with this project's tracking URI, "
            f"https://{audience})"
        )

    authorization = _AUTHORIZATION.fullmatch(headers["authorization"])
    if authorization is None or authorization["service"] != "sts":
        raise TokenError("token's Authorization is not an AWS4-HMAC-SHA256 signature for sts")
    signed = authorization["signed"].split(";")
    if sorted(signed) != signed or set(signed) != set(headers) - {"authorization"}:
        raise TokenError("token must sign exactly its headers (the audience one included)")
    _signed_at(headers["x-amz-date"])  # a date first, then the scope's date is compared
    if authorization["date"] != headers["x-amz-date"][:8]:
        raise TokenError("token's credential scope date is not its signing date")
    signed_at = _check_age(headers["x-amz-date"], now)
    marker = None
    if "marker" in decoded and marker_url is not None:
        marker = _check_marker(decoded["marker"], marker_url, headers, authorization["key"], now)
    return SignedRequest(url, headers, STS_BODY, signed_at, marker)


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
