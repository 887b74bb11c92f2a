"""The central server as its ECS task runs it, sign-in included: the image's packages (the lock
plus mlflow-aws, installed as the Dockerfile installs them), ``docker/entrypoint.sh`` with the
task's environment and its ``command`` (``--app-name aws-iam``, infra/containers.py), MariaDB with
TLS, moto for S3, STS and IAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from infra.containers import AUTH_APP
from mlflow_aws.auth.token import TOKEN_PREFIX, make_token, sts_endpoint_url
from tests.support import image_server
from tests.support.central import (
    ALLOWED_ROLE,
    Identities,
    get,
    make_identities,
    marker_url,
    put_marker,
)
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import REGION, create_project, ensure_bucket

pytestmark = pytest.mark.slow

BUCKET = "mlflow-aws-image-auth"
SERVER_ID = "mlflow.example.com"  # the load balancer's name
PROJECT = "img-auth"
AUDIENCE = f"{SERVER_ID}/{PROJECT}"  # as infra/containers.py sets MLFLOW_AWS_IAM_AUDIENCE


@pytest.fixture(scope="module")
def identities(moto: MotoServer) -> Identities:
    return make_identities(moto)


@pytest.fixture(scope="module")
def task(
    image_venv: Path, mariadb: MariaDB, moto: MotoServer, tmp_path_factory: Any
) -> Iterator[image_server.ImageServer]:
    project = create_project(mariadb, PROJECT)
    ensure_bucket(moto.aws_env(), BUCKET)
    port = free_port()
    aws = {k: v for k, v in moto.aws_env().items() if k != "AWS_ENDPOINT_URL"}
    env = image_server.task_environment(
        backend_store_uri=project.backend_store_uri,
        ca_pem=mariadb.ca_path.read_text(),
        artifacts_destination=f"s3://{BUCKET}/{project.name}",
        port=port,
        prefix=f"/{project.name}",
        allowed_hosts=f"{SERVER_ID},127.0.0.1:{port}",
        cors_origins=f"https://{SERVER_ID}",
        extra={
            **aws,
            "MLFLOW_S3_ENDPOINT_URL": moto.endpoint_url,
            "AWS_ENDPOINT_URL_STS": moto.endpoint_url,
            "AWS_ENDPOINT_URL_IAM": moto.endpoint_url,
            "AWS_ENDPOINT_URL_S3": moto.endpoint_url,
            "MLFLOW_AWS_IAM_AUDIENCE": AUDIENCE,
            "MLFLOW_AWS_IAM_MARKER_URL": marker_url(moto, f"s3://{BUCKET}/{PROJECT}"),
            "MLFLOW_AWS_IAM_ALLOWED_ROLES": ALLOWED_ROLE,
        },
    )
    put_marker(moto, f"s3://{BUCKET}/{PROJECT}")
    home = tmp_path_factory.mktemp("task")
    with image_server.running(image_venv, env, home, home / "task.log",
                              ("--app-name", AUTH_APP)) as server:  # fmt: skip
        yield server


def bearer(moto: MotoServer, credentials: Any) -> dict[str, str]:
    with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL_STS": moto.endpoint_url}):
        url = sts_endpoint_url(REGION)
    token = make_token(credentials.access_key_id, credentials.secret_access_key,
                       credentials.session_token, REGION, url, AUDIENCE,
                       marker_url(moto, f"s3://{BUCKET}/{PROJECT}"))  # fmt: skip
    return {"Authorization": f"Bearer {token}", "Host": SERVER_ID}


def test_the_task_answers_health_and_nothing_else_without_sign_in(
    task: image_server.ImageServer,
) -> None:
    assert get(f"{task.url}/health", {"Host": "10.0.12.34:5000"})[0] == 200  # the ALB's check
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/", "/version",
                 "/api/2.0/mlflow-artifacts/artifacts"):  # fmt: skip
        status, body = get(f"{task.url}{path}", {"Host": SERVER_ID})
        assert status == 401, (path, status, body[:200])


def test_an_allowed_role_signs_in_and_logs_a_run_an_outsider_does_not(
    task: image_server.ImageServer, moto: MotoServer, identities: Identities
) -> None:
    create = f"{task.url}/api/2.0/mlflow/experiments/create"
    body = json.dumps({"name": "signed-in"}).encode()
    headers = {**bearer(moto, identities.allowed_role), "Content-Type": "application/json"}
    status, answer = get(create, headers, method="POST", data=body)
    assert status == 200, answer
    experiment = json.loads(answer)["experiment_id"]
    outsider = {**bearer(moto, identities.outsider_role), "Content-Type": "application/json"}
    status, answer = get(create, outsider, method="POST", data=json.dumps({"name": "x"}).encode())
    assert status == 403 and b"outsider" in answer
    status, answer = get(f"{task.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment}",
                         bearer(moto, identities.allowed_role))  # fmt: skip
    assert status == 200 and b"signed-in" in answer
    log = task.log()
    assert "assumed-role/ml-team" in log and "assumed-role/outsider" in log  # who, per request
    assert TOKEN_PREFIX not in log  # never the token
