"""``MLFLOW_TRACKING_AUTH=aws-iam``: the MLflow client signs in to the central server with the
caller's AWS identity (entry point group ``mlflow.request_auth_provider``, name ``aws-iam``).

mlflow loads this module on the first request with MLFLOW_TRACKING_AUTH set (every registered
provider is loaded then), so it stays light:
boto3 loads on the first request. The server id is ``MLFLOW_AWS_IAM_SERVER_ID`` if set, else the
host of the request's URL, which for MLflow's requests is the host of MLFLOW_TRACKING_URI.

With this provider in use it also sets mlflow-aws's artifact sizes as defaults in the process's
environment (``mlflow_aws.artifact_settings``: presigned multipart from 8 MiB, never over a
value the user set): MLflow reads them when it transfers, and a job configured with the three
``env --remote`` lines gets the same transfer as the lines the helper prints.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests import PreparedRequest
from requests.auth import AuthBase

from mlflow_aws.artifact_settings import apply_client_defaults
from mlflow_aws.async_exit import install as install_bounded_async_exit

from .signer import TokenSource, server_id_for

PROVIDER_NAME = "aws-iam"


class AwsIamAuth(AuthBase):
    """Adds ``Authorization: Bearer aws-iam-v1.…`` to each request, one token source per server."""

    def __init__(self) -> None:
        self._sources: dict[str, TokenSource] = {}
        self._lock = threading.Lock()

    def _source(self, server_id: str) -> TokenSource:
        with self._lock:
            source = self._sources.get(server_id)
            if source is None:
                source = self._sources[server_id] = TokenSource(server_id)
            return source

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        server_id = server_id_for(urlsplit(request.url or "").hostname or "")
        request.headers["Authorization"] = f"Bearer {self._source(server_id).token()}"
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
