"""gc runs with the project's rights only, with IAM evaluated for real (moto enforcing IAM).

The stack and teammate of tests/test_server_role_isolation.py: the teammate holds the project
policy and broad S3 rights of their own; ``helper gc`` must still act as the project's server
role, so a run whose artifact location was crafted to point at another project's prefix loses
its rows but never that prefix's objects, and the role's own credentials are refused there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from mlflow_aws.gc import S3Store
from mlflow_aws.gc.artifacts import StoredObject
from tests.support.gc_world import migrate
from tests.support.helper_run import run_helper
from tests.support.role_isolation import BUCKET, client, enforcing_moto, teammate
from tests.support.services import MariaDB, MotoServer
from tests.support.stack_on_moto import ACCOUNT, REGION

pytestmark = pytest.mark.slow
__all__ = ["enforcing_moto", "teammate"]  # fixtures used here


def test_gc_holds_the_projects_prefix_only(
    enforcing_moto: MotoServer, teammate: dict[str, Any], mariadb: MariaDB, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    moto, key, project = enforcing_moto, teammate["key"], teammate["project"]
    uri = mariadb.url(project.user, project.password, project.schema)
    migrate(uri)
    mlflow = MlflowClient(uri)
    own = mlflow.create_experiment("own", artifact_location="mlflow-artifacts:/own")
    gone, live = (mlflow.create_run(own).info.run_id for _ in range(2))
    crafted_experiment = mlflow.create_experiment("x", artifact_location=f"s3://{BUCKET}/other")
    crafted = mlflow.create_run(crafted_experiment).info.run_id
    s3 = client("s3", moto, key["AccessKeyId"], key["SecretAccessKey"])  # the teammate's S3
    keys = {
        "gone": f"churn/own/{gone}/artifacts/model.bin",
        "live": f"churn/own/{live}/artifacts/model.bin",
        "crafted": f"other/{crafted}/artifacts/planted.txt",
    }
    for name, object_key in keys.items():
        s3.put_object(Bucket=BUCKET, Key=object_key, Body=name.encode())
    for run_id in (gone, crafted):
        mlflow.delete_run(run_id)

    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env = {**base, "AWS_ENDPOINT_URL": moto.endpoint_url, "AWS_REGION": REGION,
           "AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "XDG_RUNTIME_DIR": str(tmp_path)}  # fmt: skip
    result = run_helper(
        ["gc", "--project", project.name, "--outputs", str(teammate["outputs"])], env, 300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed 2 runs" in result.stdout, result.stdout
    assert "outside the project's root" in result.stdout

    def exists(object_key: str) -> bool:
        try:
            s3.head_object(Bucket=BUCKET, Key=object_key)
            return True
        except ClientError:
            return False

    assert not exists(keys["gone"])
    assert exists(keys["live"]) and exists(keys["crafted"]) and exists("other/secret.txt")
    assert not project.query("SELECT 1 FROM runs WHERE run_uuid = %s", (crafted,))  # rows went

    # Even asked to, the server role cannot delete there: S3 refuses it.
    sts = client("sts", moto, key["AccessKeyId"], key["SecretAccessKey"])
    role = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/churn-server", RoleSessionName="gc"
    )["Credentials"]
    as_role = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=REGION,
                           aws_access_key_id=role["AccessKeyId"],
                           aws_secret_access_key=role["SecretAccessKey"],
                           aws_session_token=role["SessionToken"])  # fmt: skip
    with pytest.raises(ClientError):
        as_role.delete_object(Bucket=BUCKET, Key=keys["crafted"])
    with pytest.raises(PermissionError, match="AccessDenied"):
        S3Store(as_role, f"s3://{BUCKET}/other").delete([StoredObject("secret.txt", 0)])
    assert exists(keys["crafted"]) and exists("other/secret.txt")
