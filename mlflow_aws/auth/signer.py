"""Tokens from the caller's standard AWS credential chain (env, profile, SSO, role), refreshed
before they expire. Shared by the client plugin and the helper's local proxy; boto3 only.

A token is for one project's server (its audience, from the tracking URI) and carries a signed
read of that project's sign-in marker, whose URL the server tells a signed-in identity once
(``<tracking URI>/aws-iam-sign-in``); both are refused for a tracking URI that is not HTTPS.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .. import environment as env_names
from .token import SIGN_IN_PATH, audience_for, check_marker_url, make_token, sts_endpoint_url

STS_REGION_ENV = env_names.IAM_STS_REGION
# Tokens last 15 min on the server; reusing one for 5 lets the server's identity cache answer
# most requests, and leaves 10 min of margin for clock skew and long uploads.
REUSE_SECONDS = 300.0
SIGN_IN_TIMEOUT = 30.0


class SigningError(RuntimeError):
    """No credentials or no region to sign with, or a URL not to sign for; the message says the
    fix."""


def audience_of(tracking_uri: str) -> str:
    """``audience_for`` the tracking URI, as a ``SigningError`` for a URL not to sign for."""
    try:
        return audience_for(tracking_uri)
    except ValueError as exc:
        raise SigningError(str(exc)) from None


def project_root(tracking_uri: str) -> str:
    """``https://<domain>/<project>`` of any URL under it."""
    parts = urlsplit(tracking_uri)
    segments = [part for part in parts.path.split("/") if part]
    return f"{parts.scheme}://{parts.netloc}" + (f"/{segments[0]}" if segments else "")


def s3_endpoint_url(region: str) -> str:
    """The S3 endpoint botocore uses for ``region`` (``AWS_ENDPOINT_URL_S3`` honoured)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", region_name=region, aws_access_key_id="unused",
        aws_secret_access_key="unused",  # noqa: S106 (only the endpoint is read)
    )  # fmt: skip
    return str(client.meta.endpoint_url)


def fetch_sign_in(url: str, token: str) -> tuple[int, bytes]:
    """``GET url`` with the token, TLS verified (requests' CA bundle: REQUESTS_CA_BUNDLE)."""
    import requests

    response = requests.get(
        url, headers={"Authorization": f"Bearer {token}"}, timeout=SIGN_IN_TIMEOUT,
        allow_redirects=False,
    )  # fmt: skip
    return response.status_code, response.content


class TokenSource:
    """``token()`` gives a fresh-enough token for the project server of ``tracking_uri``
    (``https://<domain>/<project>``: the token's audience); thread-safe."""

    def __init__(
        self,
        tracking_uri: str,
        region: str | None = None,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, str], tuple[int, bytes]] = fetch_sign_in,
    ) -> None:
        import boto3

        self.audience = audience_of(tracking_uri)
        self.sign_in_url = project_root(tracking_uri) + SIGN_IN_PATH
        self.session = session or boto3.session.Session()
        # The variable wins: it is how a user points signing at the stack's region.
        self.region = os.environ.get(STS_REGION_ENV) or region or self.session.region_name
        if not self.region:
            raise SigningError(
                "no AWS region to sign with: set AWS_REGION (the central server's region) "
                f"or {STS_REGION_ENV}"
            )
        self.sts_url = sts_endpoint_url(self.region)
        self.clock = clock
        self.fetch = fetch
        self._lock = threading.Lock()
        self._token: str | None = None
        self._made_at = 0.0
        self._access_key: str | None = None
        self._marker_url: str | None = None

    def _marker(self, sign: Callable[[str | None], str]) -> str | None:
        """The project's marker URL, asked of the server once with an identity-only token; None
        when the server refuses the identity (the request itself then carries the refusal)."""
        if self._marker_url is None:
            try:
                status, body = self.fetch(self.sign_in_url, sign(None))
            except OSError as exc:
                raise SigningError(f"cannot reach {self.sign_in_url}: {exc}") from None
            reason = body.decode(errors="replace").strip()[:300]
            if status in (401, 403):
                return None
            if status != 200:
                raise SigningError(
                    f"{self.sign_in_url} refused to sign you in ({status}: {reason})"
                )
            try:
                answer = json.loads(body)
                if answer["audience"] != self.audience:
                    raise SigningError(
                        f"{self.sign_in_url} is the server of {answer['audience']!r}, not of "
                        f"{self.audience!r}"
                    )
                check_marker_url(str(answer["marker"]), s3_endpoint_url(self.region))
            except (ValueError, KeyError, TypeError) as exc:
                raise SigningError(f"{self.sign_in_url} answered oddly: {exc}") from None
            self._marker_url = str(answer["marker"])
        return self._marker_url

    def token(self) -> str:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise SigningError(
                "no AWS credentials to sign in with: log in (`aws sso login`), select a profile "
                "(AWS_PROFILE) or run with a role; check with `aws sts get-caller-identity`"
            )
        # Refreshable credentials (SSO, assumed roles) renew themselves here when near expiry.
        frozen = credentials.get_frozen_credentials()
        with self._lock:
            fresh = self.clock() - self._made_at < REUSE_SECONDS
            if self._token is not None and fresh and frozen.access_key == self._access_key:
                return self._token

            def sign(marker_url: str | None) -> str:
                return make_token(
                    frozen.access_key, frozen.secret_key, frozen.token, self.region, self.sts_url,
                    self.audience, marker_url,
                )  # fmt: skip

            marker_url = self._marker(sign)
            token = sign(marker_url)
            if marker_url is None:  # refused: asked again next time, once allowed
                return token
            self._token = token
            self._made_at = self.clock()
            self._access_key = frozen.access_key
            return self._token
