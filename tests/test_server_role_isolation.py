"""The teammate's server holds exactly one project's rights, with IAM evaluated for real.

A moto server with request authorization switched on (every call signed with IAM credentials
that moto issued and checked against their policies) plays AWS. The teammate is an IAM user
holding the project policy the program writes (``projects.project.policy_document``) and,
like many data scientists, broad S3 rights of their own. The project's server role holds the
program's ``server_policy_document``. ``python -m helper serve --runtime process`` runs the
project's server: the tutorial's run lands under ``churn/``, and the credentials the server
runs with read ``churn/`` but are refused ``other/`` and the connection secret, which the
teammate's own credentials can read.

What moto cannot evaluate is said where it matters: it ignores ``StringLike`` conditions (so
listing is checked against the policy document instead: ``test_listing_is_limited_to_the_prefix``)
and does not treat an account principal (``arn:aws:iam::<account>:root``) in a trust policy as
"whoever the account's policies allow", so here the trust names the teammate directly.
"""

from __future__ import annotations

import fnmatch
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from projects.project import policy_document, server_policy_document
from tests.support.helper_run import run_tracking_script, serving
from tests.support.processes import cmdline, environ
from tests.support.role_isolation import (  # noqa: F401 (fixtures)
    BUCKET,
    BUCKET_ARN,
    REPOSITORY_ARN,
    client,
    enforcing_moto,
    teammate,
)
from tests.support.services import MotoServer, free_port
from tests.support.stack_on_moto import (
    REGION,
)

pytestmark = pytest.mark.slow


def test_moto_enforces_iam_here(enforcing_moto: MotoServer, teammate: dict[str, Any]) -> None:
    """The control: unknown credentials are refused, so the refusals below mean something."""
    with pytest.raises(ClientError) as refused:
        client("s3", enforcing_moto, "AKIANOBODY", "nothing").get_object(
            Bucket=BUCKET, Key="churn/seed.txt"
        )
    assert refused.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied")


def test_the_server_runs_with_the_projects_prefix_only(
    enforcing_moto: MotoServer, teammate: dict[str, Any], tmp_path: Path
) -> None:
    moto, key = enforcing_moto, teammate["key"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env = {**base, "AWS_ENDPOINT_URL": moto.endpoint_url, "AWS_REGION": REGION,
           "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    port = free_port()
    argv = ["serve", "--project", teammate["project"].name, "--outputs", str(teammate["outputs"]),
            "--runtime", "process", "--port", str(port)]  # fmt: skip
    with serving(argv, env, tmp_path, port) as running:
        run_tracking_script(f"http://127.0.0.1:{port}", tmp_path / "work")  # artifact via server

        # The credentials the server runs with: its role's, from its credentials endpoint.
        [server_env] = [environ(pid) for pid in running.server_pids()
                        if "uvicorn" in cmdline(pid) or "mlflow" in cmdline(pid)][:1]  # fmt: skip
        variables = dict(line.split("=", 1) for line in server_env.splitlines() if "=" in line)
        request = urllib.request.Request(  # noqa: S310 (the helper's loopback endpoint)
            variables["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
            headers={"Authorization": variables["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback)
            role = json.loads(answer.read())

    server = boto3.Session(aws_access_key_id=role["AccessKeyId"],
                           aws_secret_access_key=role["SecretAccessKey"],
                           aws_session_token=role["Token"], region_name=REGION)  # fmt: skip
    s3 = server.client("s3", endpoint_url=moto.endpoint_url)
    assert s3.get_object(Bucket=BUCKET, Key="churn/seed.txt")["Body"].read() == b"churn's own"
    for call in (
        lambda: s3.get_object(Bucket=BUCKET, Key="other/secret.txt"),
        lambda: s3.put_object(Bucket=BUCKET, Key="other/planted.txt", Body=b"x"),
        lambda: s3.delete_object(Bucket=BUCKET, Key="other/secret.txt"),
        lambda: server.client("secretsmanager", endpoint_url=moto.endpoint_url).get_secret_value(
            SecretId=teammate["secret_arn"]
        ),
    ):
        with pytest.raises(ClientError) as denied:
            call()
        # (moto answers a JSON service's denial in XML: botocore then sees only the status.)
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    # The teammate's own credentials can do what the server cannot: the server has less.
    own = client("s3", moto, teammate["key"]["AccessKeyId"], teammate["key"]["SecretAccessKey"])
    assert own.get_object(Bucket=BUCKET, Key="other/secret.txt")["Body"].read()
    keys = [o["Key"] for o in own.list_objects_v2(Bucket=BUCKET, Prefix="churn/")["Contents"]]
    assert any(k.endswith("/artifacts/test.txt") for k in keys)  # the run's artifact, in churn/


def string_like(pattern: str, value: str) -> bool:
    """IAM's StringLike: ``*`` any run of characters, ``?`` one, case-sensitive."""
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def may_list(document: dict[str, Any], prefix: str) -> bool:
    for statement in document["Statement"]:
        if "s3:ListBucket" in statement["Action"] and BUCKET_ARN in statement["Resource"]:
            allowed = statement["Condition"]["StringLike"]["s3:prefix"]
            if any(string_like(pattern, prefix) for pattern in allowed):
                return True
    return False


@pytest.mark.parametrize("document", ["server role", "project policy"])
def test_listing_is_limited_to_the_prefix(document: str) -> None:
    """Project ``a`` lists ``a/`` and below, never ``ab/``, ``a-b/``, ``a`` or the bucket."""
    if document == "server role":
        doc = server_policy_document(BUCKET_ARN, "a")
    else:
        doc = policy_document(BUCKET_ARN, "a", "arn:s", REPOSITORY_ARN, "arn:r")
    for prefix in ("a/", "a/1/abc/artifacts/", "a/x"):
        assert may_list(dict(doc), prefix), prefix
    for prefix in ("ab/", "ab", "a-b/", "a", "", "b/", "A/"):
        assert not may_list(dict(doc), prefix), prefix
