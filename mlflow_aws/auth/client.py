"""``MLFLOW_TRACKING_AUTH=aws-iam``: the MLflow client signs in to the central server with the
caller's AWS identity (entry point group ``mlflow.request_auth_provider``, name ``aws-iam``).

mlflow loads this module on the first request with MLFLOW_TRACKING_AUTH set (every registered
provider is loaded then), so it stays light: boto3 loads on the first request. Each token is
bound to one project's server: its audience is ``<host>/<project>`` of the request's URL
(MLflow's requests go under MLFLOW_TRACKING_URI, ``https://<domain>/<project>``), and only
HTTPS URLs (plain HTTP only on loopback) are signed for.

With this provider in use it also sets mlflow-aws's artifact sizes as defaults in the process's
environment (``mlflow_aws.artifact_settings``: presigned multipart from 8 MiB, never over a
value the user set): MLflow reads them when it transfers, and a job configured with the three
``env --remote`` lines gets the same transfer as the lines the helper prints.
"""

from __future__ import annotations

import os
import threading

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests import PreparedRequest
from requests.auth import AuthBase

from mlflow_aws.artifact_settings import apply_client_defaults
from mlflow_aws.async_exit import install as install_bounded_async_exit

from . import PROVIDER_NAME
from .signer import TokenSource, audience_of


class AwsIamAuth(AuthBase):
    """Adds ``Authorization: Bearer aws-iam-v2.…`` to each request, one token source per project
    server (audience)."""

    def __init__(self) -> None:
        self._sources: dict[str, TokenSource] = {}
        self._lock = threading.Lock()

    def _source(self, url: str) -> TokenSource:
        audience = audience_of(url)  # refuses a URL that is not HTTPS (or loopback)
        with self._lock:
            source = self._sources.get(audience)
            if source is None:
                source = self._sources[audience] = TokenSource(url)
            return source

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._source(request.url or '').token()}"
        return request


_AUTH = AwsIamAuth()


class AwsIamRequestAuthProvider(RequestAuthProvider):
    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self) -> AwsIamAuth:
        apply_client_defaults(os.environ)  # MLFLOW_TRACKING_AUTH set after mlflow was imported
        return _AUTH


# mlflow imports every registered provider before the first request that has
# MLFLOW_TRACKING_AUTH set (its registry loads the entry points on import), so a process
# configured by its environment has the sizes before any artifact moves.
if os.environ.get("MLFLOW_TRACKING_AUTH") == PROVIDER_NAME:
    apply_client_defaults(os.environ)
# MLflow's async logging may not hold the process at exit for longer than a bound
# (mlflow_aws/async_exit.py; for other tracking URIs the run context provider installs it).
install_bounded_async_exit()
