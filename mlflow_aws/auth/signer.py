"""Tokens from the caller's standard AWS credential chain (env, profile, SSO, role), refreshed
before they expire. Shared by the client plugin and the helper's local proxy; boto3 only."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .token import SERVER_ID_ENV, make_token, sts_endpoint_url

STS_REGION_ENV = "MLFLOW_AWS_IAM_STS_REGION"
# Tokens last 15 min on the server; reusing one for 5 lets the server's identity cache answer
# most requests, and leaves 10 min of margin for clock skew and long uploads.
REUSE_SECONDS = 300.0


def server_id_for(host: str) -> str:
    """The server id tokens are bound to: the tracking URI's host unless overridden."""
    return os.environ.get(SERVER_ID_ENV) or host


class SigningError(RuntimeError):
    """No credentials or no region to sign with; the message says the fix."""


class TokenSource:
    """``token()`` gives a fresh-enough token for ``server_id``; thread-safe."""

    def __init__(
        self,
        server_id: str,
        region: str | None = None,
        session: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import boto3

        self.server_id = server_id
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
        self._lock = threading.Lock()
        self._token: str | None = None
        self._made_at = 0.0
        self._access_key: str | None = None

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
            self._token = make_token(
                frozen.access_key, frozen.secret_key, frozen.token, self.region, self.sts_url,
                self.server_id,
            )  # fmt: skip
            self._made_at = self.clock()
            self._access_key = frozen.access_key
            return self._token
