"""The sign-in app, ``mlflow server --app-name aws-iam``: MLflow's whole ASGI app behind AWS
identity auth (the module keeps its name, which the entry point below names:
README.md "Five things called server").

MLflow starts this app with uvicorn through the ``mlflow.app`` entry point ``aws-iam``, which
names ``create_app`` (a factory: mlflow passes ``--factory``, so the settings are read in the
worker and ``mlflow server`` itself imports only this light module).

Every request but ``<static-prefix>/health`` needs ``Authorization: Bearer aws-iam-v2.…``
(``token.py``): the Flask routes, the native FastAPI ones (artifact streaming, OTel, gateway,
jobs), the UI and its assets alike, since the middleware wraps the ASGI app from outside.
Decisions: 401 with a one-line reason for a missing or invalid token, 403 for a verified
identity that is not allowed, 503 when AWS cannot be asked; allowed otherwise. An allowed
request reaches MLflow without its ``Authorization`` header (nothing inside MLflow can see or
forward a token). One log line per request names the caller's ARN, every field with its control
characters escaped; tokens and Authorization headers are never logged.

Settings (environment):
  MLFLOW_AWS_IAM_AUDIENCE         required; tokens must be made for it: ``<domain>/<project>``,
                                  the host and first path segment of the project's tracking URI
  MLFLOW_AWS_IAM_MARKER_URL       required; the project's sign-in marker object
                                  (``https://<bucket>.s3.<region>.amazonaws.com/<prefix>/
                                  .mlflow-aws-sign-in``): a token must carry a signed HEAD of it,
                                  which S3 answers only while IAM lets the caller read the
                                  project's prefix (revocation, deny policies and SCPs end
                                  sign-in within DECISION_TTL)
  MLFLOW_AWS_IAM_ALLOWED_ROLES    role names; ``sso:<PermissionSetName>`` for the IAM Identity
                                  Center roles of a permission set (AWSReservedSSO_<name>_<hex>
                                  under /aws-reserved/sso.amazonaws.com/, checked with
                                  iam:GetRole); role ARNs; comma separated, or a JSON array for
                                  names with commas (role names are of this account)
  MLFLOW_AWS_IAM_ALLOWED_GROUPS   IAM group names of this account whose users are allowed
  AWS_REGION                      the STS endpoint's region (sts.<region>.amazonaws.com)
  AWS_ENDPOINT_URL_STS / _IAM     other endpoints (tests: moto)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import environment as env_names
from .token import (
    AUDIENCE_ENV,
    SIGN_IN_PATH,
    CallerIdentity,
    MarkerRead,
    SignedRequest,
    TokenError,
    check_marker_url,
    check_token,
    parse_caller_identity,
    printable,
    sts_endpoint_url,
    sts_error,
)

# This app's name for `mlflow server --app-name` (pyproject.toml's mlflow.app entry point).
APP_NAME = "aws-iam"
ALLOWED_ROLES_ENV = env_names.IAM_ALLOWED_ROLES
ALLOWED_GROUPS_ENV = env_names.IAM_ALLOWED_GROUPS
MARKER_URL_ENV = env_names.IAM_MARKER_URL
GATEWAY_ENV = "MLFLOW_ENABLE_AI_GATEWAY"
SSO_ENTRY = "sso:"  # an allowed-roles entry naming an IAM Identity Center permission set
SSO_ROLE_PATH = "/aws-reserved/sso.amazonaws.com/"  # where Identity Center puts its roles
# What `mlflow server --static-prefix` (or MLFLOW_STATIC_PREFIX) hands its worker; routes use it.
STATIC_PREFIX_ENV = "_MLFLOW_STATIC_PREFIX"
BEARER = "bearer "
GROUPS_TTL_SECONDS = 120.0  # a group membership change is seen within 2 min
# A decision is replayed to STS and S3 again after this, whatever the token's remaining life: a
# revoked session (deny policy, detached policy, removed from the group) is refused within it.
DECISION_TTL = timedelta(minutes=2)
# Sign-in attempts that need AWS (a token not in the cache): each costs an STS and an S3 round
# trip, so a public load balancer must not turn the server into an amplifier, nor park MLflow's
# threads on them. Token buckets: (burst, per second), per client address and for the server.
CLIENT_ATTEMPTS = (20.0, 2.0)
SERVER_ATTEMPTS = (200.0, 20.0)
VERIFYING_THREADS = 8  # at most this many threads wait on AWS; MLflow keeps the rest
IDENTITY_CACHE_MAX = 10_000
STS_CONNECT_TIMEOUT = 3.0
STS_READ_TIMEOUT = 10.0
# MLflow's streaming artifact routes are registered without the static prefix (3.17); Flask has
# prefixed copies that buffer the whole body in memory. Prefixed artifact paths go to the former.
ARTIFACT_PATHS = (
    "/api/2.0/mlflow-artifacts/artifacts/",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/",
)

_PERMISSION_SET = re.compile(r"[\w+=,.@-]{1,32}")  # IAM Identity Center's CreatePermissionSet
_SSO_ROLE = re.compile(r"AWSReservedSSO_(?P<permission_set>.+)_[0-9a-f]{16}")
_ASSUMED_ROLE = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]+)/.+"
)
_IAM_USER = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):user/(?:[\w+=,.@/-]*/)?(?P<user>[\w+=,.@-]+)"
)
_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[\w+=,.@/-]*/)?(?P<role>[\w+=,.@-]+)"
)

logger = logging.getLogger("mlflow_aws.auth")


class SettingsError(ValueError):
    """The server's auth settings are missing or wrong: it refuses to start."""


class AwsUnavailable(Exception):
    """STS or IAM could not be asked (network, throttling, 5xx): answer 503, decide nothing."""


# -- settings -----------------------------------------------------------------------------------


def split_list(text: str | None) -> frozenset[str]:
    """``a, b c`` or a JSON array of strings (IAM names may hold commas: the program writes a
    JSON array when one does)."""
    stripped = (text or "").strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError:
            raise SettingsError(f"not a JSON array of names: {stripped[:80]!r}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise SettingsError(f"not a JSON array of names: {stripped[:80]!r}")
        return frozenset(item.strip() for item in items if item.strip())
    return frozenset(item for item in re.split(r"[,\s]+", stripped) if item)


@dataclass(frozen=True)
class Settings:
    audience: str
    marker_url: str
    allowed_roles: frozenset[str]
    allowed_groups: frozenset[str]
    region: str
    sts_url: str
    static_prefix: str
    gateway_enabled: bool = False

    @property
    def health_path(self) -> str:
        return f"{self.static_prefix}/health"

    @property
    def gateway_paths(self) -> tuple[str, ...]:
        """The AI Gateway's routes (FastAPI's and Flask's), answered 404 while it is off."""
        p = self.static_prefix
        return (
            f"{p}/gateway/",
            f"{p}/api/3.0/mlflow/gateway/",
            f"{p}/ajax-api/3.0/mlflow/gateway/",
            f"{p}/ajax-api/2.0/mlflow/gateway-proxy",
        )


def settings_from_environ(
    environ: Mapping[str, str], endpoint_for: Callable[[str], str] = sts_endpoint_url
) -> Settings:
    audience = environ.get(AUDIENCE_ENV, "").strip()
    if not audience:
        raise SettingsError(
            f"{AUDIENCE_ENV} is not set: set it to <domain>/<project> of the tracking URI "
            "clients use (https://<domain>/<project>); tokens are bound to it"
        )
    if audience != audience.lower() or "/" not in audience.strip("/"):
        raise SettingsError(
            f"{AUDIENCE_ENV}: {audience!r} is not <domain>/<project> in lowercase "
            "(e.g. mlflow.example.com/churn): each project's server has its own"
        )
    marker_url = environ.get(MARKER_URL_ENV, "").strip()
    if not marker_url:
        raise SettingsError(
            f"{MARKER_URL_ENV} is not set: set it to the URL of the project's sign-in marker "
            "(https://<bucket>.s3.<region>.amazonaws.com/<prefix>/.mlflow-aws-sign-in): "
            "sign-in needs a read of it that only the project's policy allows"
        )
    try:
        check_marker_url(marker_url, environ.get("AWS_ENDPOINT_URL_S3"))
    except ValueError as exc:
        raise SettingsError(f"{MARKER_URL_ENV}: {exc}") from None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise SettingsError("AWS_REGION is not set: it selects the STS endpoint tokens go to")
    for name in split_list(environ.get(ALLOWED_ROLES_ENV)):
        if name.startswith("arn:") and not _ROLE_ARN.fullmatch(name):
            raise SettingsError(f"{ALLOWED_ROLES_ENV}: {name!r} is not an IAM role ARN")
        if name.startswith(SSO_ENTRY) and not _PERMISSION_SET.fullmatch(name[len(SSO_ENTRY) :]):
            raise SettingsError(
                f"{ALLOWED_ROLES_ENV}: {name!r} is not sso:<PermissionSetName> (1-32 of "
                "letters, digits and +=,.@_-)"
            )
    return Settings(
        audience=audience,
        marker_url=marker_url,
        allowed_roles=split_list(environ.get(ALLOWED_ROLES_ENV)),
        allowed_groups=split_list(environ.get(ALLOWED_GROUPS_ENV)),
        region=region,
        sts_url=endpoint_for(region),
        static_prefix=environ.get(STATIC_PREFIX_ENV, "").rstrip("/"),
        # MLflow's own switch (default on in MLflow; server.env turns it off).
        gateway_enabled=environ.get(GATEWAY_ENV, "true").strip().lower() in ("true", "1"),
    )


# -- who may: pure rules ------------------------------------------------------------------------


def sso_permission_set(role_name: str) -> str | None:
    """``DataScientist`` of the IAM Identity Center role ``AWSReservedSSO_DataScientist_<hash>``."""
    match = _SSO_ROLE.fullmatch(role_name)
    return match["permission_set"] if match else None


def role_match(account: str, role: str, allowed: frozenset[str], own_account: str) -> str | None:
    """How an assumed role of ``account`` named ``role`` is allowed: ``"name"`` or ``"arn"``
    (IAM role names are unique in an account), ``"sso"`` (an ``sso:<PermissionSetName>`` entry:
    the name alone proves nothing, anyone with iam:CreateRole can make an AWSReservedSSO_… role,
    so the caller checks the role's path), or None."""
    permission_set = sso_permission_set(role)
    found = None
    for entry in allowed:
        arn = _ROLE_ARN.fullmatch(entry)
        if arn is not None:
            if arn["account"] == account and arn["role"] == role:
                return "arn"
        elif account != own_account:
            continue
        elif entry == role:
            return "name"
        elif permission_set is not None and entry == f"{SSO_ENTRY}{permission_set}":
            found = "sso"
    return found


def role_allowed(account: str, role: str, allowed: frozenset[str], own_account: str) -> bool:
    """An assumed role of ``account`` named ``role``, against names (this account only), SSO
    permission sets (``sso:<name>``; their path is checked by ``authorize``) and ARNs."""
    return role_match(account, role, allowed, own_account) is not None


@dataclass(frozen=True)
class Decision:
    status: int  # 200 allowed, 401, 403, 503
    reason: str
    arn: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


def authorize(
    identity: CallerIdentity,
    settings: Settings,
    own_account: Callable[[], str],
    groups_of: Callable[[str], frozenset[str]],
    role_path: Callable[[str], str] | None = None,
) -> Decision:
    """Deny by default: an allowed assumed role, or an IAM user in an allowed group, of this
    account (a role or user of the same name in another account is someone else); a role
    allowed by its SSO permission set only if IAM Identity Center made it (its path)."""
    arn = identity.arn
    role = _ASSUMED_ROLE.fullmatch(arn)
    if role is not None:
        how = role_match(role["account"], role["role"], settings.allowed_roles, own_account())
        if how == "sso":
            path = role_path(role["role"]) if role_path is not None else None
            if path is None or not path.startswith(SSO_ROLE_PATH):
                return Decision(
                    403,
                    f"{arn}: role {role['role']} is not an IAM Identity Center role (its path "
                    f"is {path or 'unknown'}, not {SSO_ROLE_PATH}…)",
                    arn,
                )
        if how is not None:
            return Decision(200, "allowed role", arn)
        return Decision(403, f"{arn}: role {role['role']} is not allowed on this server", arn)
    user = _IAM_USER.fullmatch(arn)
    if user is not None:
        if user["account"] != own_account() or not settings.allowed_groups:
            return Decision(403, f"{arn}: this user is not allowed on this server", arn)
        if groups_of(user["user"]) & settings.allowed_groups:
            return Decision(200, "allowed group", arn)
        return Decision(403, f"{arn}: user is in none of the allowed groups", arn)
    return Decision(403, f"{arn}: only IAM roles and IAM users in allowed groups may sign in", arn)


# -- the side effects: STS, IAM, caches ---------------------------------------------------------


class StsReplay:
    """Send a checked token's request to the configured STS endpoint, TLS verified, and read
    the caller's identity from the answer."""

    def __init__(self) -> None:
        import urllib3

        self.pool = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)
        self.timeout = urllib3.Timeout(connect=STS_CONNECT_TIMEOUT, read=STS_READ_TIMEOUT)

    def __call__(self, request: SignedRequest) -> CallerIdentity:
        import urllib3

        try:
            # The URL is the server's own endpoint (check_token refused any other one).
            response = self.pool.request(
                "POST",
                request.url,
                body=request.body.encode(),
                headers=dict(request.headers),
                timeout=self.timeout,
                redirect=False,
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise AwsUnavailable(f"cannot reach STS: {type(exc).__name__}") from None
        if response.status == 200:
            return parse_caller_identity(response.data)
        if response.status >= 500 or response.status == 429:
            raise AwsUnavailable(f"STS answered {response.status}")
        raise TokenError(f"STS refused the token ({sts_error(response.data)})")


class AwsLookups:
    """This server's own account (for names without an account) and IAM group membership."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._account: str | None = None
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._paths: dict[str, tuple[float, str]] = {}
        self._clients: dict[str, Any] = {}  # boto3 clients are thread-safe: made once each
        self._lock = threading.Lock()

    def _client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                import boto3
                from botocore.config import Config

                config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2})
                session = boto3.session.Session(region_name=self.region)
                self._clients[service] = session.client(service, config=config)
            return self._clients[service]

    def own_account(self) -> str:
        if self._account is None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self._account = str(self._client("sts").get_caller_identity()["Account"])
            except (BotoCoreError, ClientError) as exc:
                raise AwsUnavailable(f"cannot learn this server's own account: {exc}") from None
        return self._account

    def role_path(self, role_name: str) -> str:
        """The path of this account's role ``role_name`` (``iam:GetRole``), cached 2 min."""
        with self._lock:
            cached = self._paths.get(role_name)
        if cached is not None and time.monotonic() - cached[0] < GROUPS_TTL_SECONDS:
            return cached[1]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            path = str(self._client("iam").get_role(RoleName=role_name)["Role"]["Path"])
        except (BotoCoreError, ClientError) as exc:
            raise AwsUnavailable(f"cannot read the path of role {role_name}: {exc}") from None
        with self._lock:
            self._paths[role_name] = (time.monotonic(), path)
        return path

    def groups_of(self, user_name: str) -> frozenset[str]:
        with self._lock:
            cached = self._groups.get(user_name)
        if cached is not None and time.monotonic() - cached[0] < GROUPS_TTL_SECONDS:
            return cached[1]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self._client("iam").get_paginator("list_groups_for_user")
            groups = frozenset(
                group["GroupName"]
                for page in pages.paginate(UserName=user_name)
                for group in page["Groups"]
            )
        except (BotoCoreError, ClientError) as exc:
            raise AwsUnavailable(f"cannot list the groups of user {user_name}: {exc}") from None
        with self._lock:
            self._groups[user_name] = (time.monotonic(), groups)
        return groups


class MarkerRefused(Exception):
    """S3 refused the caller the project's sign-in marker: they do not hold its policy now."""


class MarkerReplay:
    """Send a checked token's marker ``HEAD`` to S3 (the server's own marker URL), TLS
    verified: 200 means IAM lets the caller read the project's prefix now."""

    def __init__(self) -> None:
        import urllib3

        self.pool = urllib3.PoolManager(num_pools=2, maxsize=8, retries=False)
        self.timeout = urllib3.Timeout(connect=STS_CONNECT_TIMEOUT, read=STS_READ_TIMEOUT)

    def __call__(self, marker: MarkerRead) -> None:
        import urllib3

        try:
            response = self.pool.request(
                "HEAD", marker.url, headers=dict(marker.headers), timeout=self.timeout,
                redirect=False, preload_content=True,
            )  # fmt: skip
        except urllib3.exceptions.HTTPError as exc:
            raise AwsUnavailable(f"cannot reach S3: {type(exc).__name__}") from None
        if response.status == 200:
            return
        if response.status == 403:
            raise MarkerRefused(
                "may not read this project's sign-in marker now: the project's policy is not "
                "attached to this identity (any more), or a deny applies"
            )
        if response.status == 404:
            raise AwsUnavailable(
                f"the project's sign-in marker {marker.url} is missing (`pulumi up` creates it)"
            )
        if response.status >= 500 or response.status in (301, 307, 429):
            raise AwsUnavailable(f"S3 answered {response.status} for the sign-in marker")
        # 400: a signature S3 will not take (too old or skewed, malformed): the token's fault.
        raise TokenError(f"S3 refused the token's marker read ({response.status})")


def token_key(header: str) -> str:
    return hashlib.sha256(header.encode()).hexdigest()


class RateLimiter:
    """Token buckets: one per client address (at most ``CLIENT_BUCKETS_MAX`` remembered) and one
    for the whole server; ``allow(client)`` spends one from both or refuses."""

    CLIENT_BUCKETS_MAX = 10_000

    def __init__(
        self,
        per_client: tuple[float, float] = CLIENT_ATTEMPTS,
        per_server: tuple[float, float] = SERVER_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_client, self.per_server, self.clock = per_client, per_server, clock
        self._server = (per_server[0], clock())
        self._clients: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _refill(bucket: tuple[float, float], rule: tuple[float, float], now: float) -> float:
        level, at = bucket
        return min(rule[0], level + (now - at) * rule[1])

    def allow(self, client: str) -> bool:
        now = self.clock()
        with self._lock:
            server = self._refill(self._server, self.per_server, now)
            own = self._refill(self._clients.get(client, (self.per_client[0], now)),
                               self.per_client, now)  # fmt: skip
            if server < 1 or own < 1:
                return False
            self._server = (server - 1, now)
            if client not in self._clients and len(self._clients) >= self.CLIENT_BUCKETS_MAX:
                del self._clients[next(iter(self._clients))]  # the oldest address
            self._clients[client] = (own - 1, now)
            return True


class Authenticator:
    """Authorization header -> Decision; a verified token's decision is cached by its hash
    for at most ``DECISION_TTL`` (and never past the token's expiry), so a warm request costs one
    hash and one dict lookup, and a revoked session is refused once its entry lapses."""

    def __init__(
        self,
        settings: Settings,
        replay: Callable[[SignedRequest], CallerIdentity],
        own_account: Callable[[], str],
        groups_of: Callable[[str], frozenset[str]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        read_marker: Callable[[MarkerRead], None],
        role_path: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.replay = replay
        self.own_account = own_account
        self.groups_of = groups_of
        self.clock = clock
        self.read_marker = read_marker
        self.role_path = role_path
        self._cache: dict[str, tuple[datetime, Decision]] = {}
        self._lock = threading.Lock()

    def cached(self, header: str | None) -> Decision | None:
        if not header:
            return None
        key = token_key(header)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            return None
        expires_at, decision = hit
        if self.clock() >= expires_at:
            with self._lock:
                self._cache.pop(key, None)
            return None
        return decision

    def decide(self, header: str | None, *, sign_in: bool = False) -> Decision:
        """The full path: check, replay to STS and S3, authorize; blocking (run it in a thread).
        ``sign_in``: the request for the marker's URL, which needs an allowed identity only."""
        hit = None if sign_in else self.cached(header)
        if hit is not None:
            return hit
        if not header:
            return Decision(401, "missing Authorization: Bearer token (use MLFLOW_TRACKING_AUTH="
                            "aws-iam or `python -m helper serve --remote`)")  # fmt: skip
        if header[: len(BEARER)].lower() != BEARER:
            return Decision(401, "Authorization must be 'Bearer <aws-iam token>'")
        now = self.clock()
        try:
            request = check_token(
                header[len(BEARER) :].strip(),
                sts_url=self.settings.sts_url,
                audience=self.settings.audience,
                now=now,
                marker_url=None if sign_in else self.settings.marker_url,
            )
            identity = self.replay(request)
            decision = authorize(
                identity, self.settings, self.own_account, self.groups_of, self.role_path
            )
            if decision.allowed and request.marker is None and not sign_in:
                raise TokenError(
                    "token carries no read of the project's sign-in marker (update mlflow-aws "
                    "on the client: its plugin and proxy sign one)"
                )
            if decision.allowed and request.marker is not None:
                try:
                    self.read_marker(request.marker)
                except MarkerRefused as exc:
                    decision = Decision(403, f"{identity.arn}: {exc}", identity.arn)
        except TokenError as exc:
            return Decision(401, str(exc))  # not cached: nothing was learnt
        except AwsUnavailable as exc:
            return Decision(503, str(exc))
        if not sign_in:
            self._remember(token_key(header), min(request.expires_at, now + DECISION_TTL), decision)
        return decision

    def _remember(self, key: str, expires_at: datetime, decision: Decision) -> None:
        with self._lock:
            if len(self._cache) >= IDENTITY_CACHE_MAX:
                now = self.clock()
                for stale in [k for k, (exp, _) in self._cache.items() if exp <= now]:
                    del self._cache[stale]
                while len(self._cache) >= IDENTITY_CACHE_MAX:  # still full: drop the oldest
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = (expires_at, decision)


# -- the ASGI middleware ------------------------------------------------------------------------


# Removed from an allowed request before MLflow sees it: the token, and any header of the token's
# own (a request carries them only to forge or leak something).
_STRIPPED_PREFIXES = (b"x-mlflow-aws-iam-", b"x-amz-security-token")


def without_credentials(scope: dict[str, Any]) -> dict[str, Any]:
    """``scope`` without ``Authorization`` and the token's headers: MLflow (its gateway's
    passthrough routes forward ``Authorization``) never holds a caller's token."""
    headers = [
        (name, value)
        for name, value in scope.get("headers", [])
        if name.lower() != b"authorization" and not name.lower().startswith(_STRIPPED_PREFIXES)
    ]
    return {**scope, "headers": headers}


def _authorization(scope: Mapping[str, Any]) -> str | None:
    values = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
    if len(values) != 1:
        return None if not values else "<several>"  # several: refused as not a bearer token
    try:
        return bytes(values[0]).decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes any byte)
        return None


class AwsIamAuthMiddleware:
    """Wraps an ASGI app; lets a request through only with an allowed identity."""

    def __init__(
        self, app: Any, authenticator: Authenticator, settings: Settings,
        limiter: RateLimiter | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.authenticator = authenticator
        self.settings = settings
        self.limiter = limiter or RateLimiter()
        self._verifying: Any = None  # anyio.CapacityLimiter, made in the event loop
        self.sign_in_path = settings.static_prefix + SIGN_IN_PATH
        prefix = settings.static_prefix
        self.prefixed_artifact_paths = (
            tuple(prefix + path for path in ARTIFACT_PATHS) if prefix else ()
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope["type"] == "http" and path == self.settings.health_path:
            await self.app(scope, receive, send)  # load balancer health checks: no identity
            return
        header = _authorization(scope)
        sign_in = scope["type"] == "http" and path == self.sign_in_path
        decision = None if sign_in else self.authenticator.cached(header)
        if decision is None:
            decision = await self._verify(scope, header, sign_in)
        method = scope.get("method", "WS")
        if not decision.allowed:
            logger.warning(
                "aws-iam: %s %s %s -> %d %s",
                printable(decision.arn or "-"), printable(method), printable(path),
                decision.status, printable(decision.reason),
            )  # fmt: skip
            await _refuse(scope, send, decision)
            return
        logger.info(
            "aws-iam: %s %s %s", printable(decision.arn), printable(method), printable(path)
        )
        if sign_in:
            await self._sign_in(send)
            return
        if not self.settings.gateway_enabled and path.startswith(self.settings.gateway_paths):
            # MLflow itself would answer 501; nothing of the gateway is reached at all.
            await _refuse(scope, send, Decision(404, "the AI Gateway is off on this server"))
            return
        if self.prefixed_artifact_paths and path.startswith(self.prefixed_artifact_paths):
            scope = _without_prefix(scope, self.settings.static_prefix)
        await self.app(without_credentials(scope), receive, send)

    async def _verify(
        self, scope: Mapping[str, Any], header: str | None, sign_in: bool
    ) -> Decision:
        """A token not in the cache: rate-limited, then verified in one of a few threads."""
        if header and not self.limiter.allow(client_address(scope)):
            return Decision(429, "too many sign-in attempts: retry in a few seconds")
        import anyio
        import anyio.to_thread

        if self._verifying is None:
            self._verifying = anyio.CapacityLimiter(VERIFYING_THREADS)
        return await anyio.to_thread.run_sync(
            lambda: self.authenticator.decide(header, sign_in=sign_in), limiter=self._verifying
        )

    async def _sign_in(self, send: Any) -> None:
        """The project's marker URL, for a signed-in identity to sign a read of."""
        body = json.dumps(
            {"audience": self.settings.audience, "marker": self.settings.marker_url}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"cache-control", b"no-store")]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def client_address(scope: Mapping[str, Any]) -> str:
    """The caller's address: the last ``X-Forwarded-For`` hop (the one the load balancer, the
    tasks' only peer, appended), else the peer's."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-forwarded-for":
            return bytes(value).decode("latin-1").rsplit(",", 1)[-1].strip()[:64]
    client = scope.get("client")
    return str(client[0]) if client else "-"


def _without_prefix(scope: dict[str, Any], prefix: str) -> dict[str, Any]:
    path = scope["path"][len(prefix) :]
    raw = scope.get("raw_path")
    raw_path = (
        raw[len(prefix) :] if isinstance(raw, bytes) and raw.startswith(prefix.encode()) else None
    )
    return {**scope, "path": path, "raw_path": raw_path or path.encode()}


async def _refuse(scope: Mapping[str, Any], send: Any, decision: Decision) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": decision.reason[:120]})
        return
    body = (printable(decision.reason) + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
    ]
    if decision.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="mlflow-aws", error="invalid_token"'))
    if decision.status == 429:
        headers.append((b"retry-after", b"2"))
    await send({"type": "http.response.start", "status": decision.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _configure_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get(env_names.IAM_LOG_LEVEL, "INFO"))
        logger.propagate = False


def create_app() -> AwsIamAuthMiddleware:
    """The uvicorn factory: MLflow's FastAPI app (Flask mounted inside) wrapped whole."""
    _configure_logging()
    try:
        settings = settings_from_environ(os.environ)
    except SettingsError as exc:
        logger.error("aws-iam: %s", exc)
        raise SystemExit(f"aws-iam: {exc}") from None
    if not settings.allowed_roles and not settings.allowed_groups:
        logger.warning("aws-iam: no allowed roles or groups: every request will be refused (403)")
    from mlflow.server.fastapi_app import app as mlflow_app

    from mlflow_aws import part_urls

    part_urls.install()
    lookups = AwsLookups(settings.region)
    authenticator = Authenticator(
        settings, StsReplay(), lookups.own_account, lookups.groups_of,
        read_marker=MarkerReplay(), role_path=lookups.role_path,
    )  # fmt: skip
    logger.info(
        "aws-iam: audience %s, marker %s, STS %s, roles %s, groups %s",
        settings.audience, settings.marker_url, settings.sts_url,
        sorted(settings.allowed_roles) or "none", sorted(settings.allowed_groups) or "none",
    )  # fmt: skip
    return AwsIamAuthMiddleware(mlflow_app, authenticator, settings)
