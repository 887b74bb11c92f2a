"""A moto server that enforces IAM (``enforcing_moto``) and a teammate's project on it: the
server role may reach only its project's prefix."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from projects.project import policy_document, server_policy_document
from tests.support.services import MariaDB, MotoServer, running_moto
from tests.support.stack_on_moto import (
    ACCOUNT,
    REGION,
    bundle_for,
    create_project,
    put_connection_secret,
    write_outputs,
)

BUCKET = "mlflow-aws-iso-artifacts"  # the stack's bucket prefix (helper/trust.py)
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
REPOSITORY_ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/mlflow-aws/iso/server"


def client(service: str, moto: MotoServer, key: str = "setup", secret: str = "setup") -> Any:  # noqa: S107
    return boto3.client(service, endpoint_url=moto.endpoint_url, region_name=REGION,
                        aws_access_key_id=key, aws_secret_access_key=secret)  # fmt: skip


@pytest.fixture(scope="module")
def enforcing_moto() -> Iterator[MotoServer]:
    with running_moto() as server:
        yield server


@pytest.fixture(scope="module")
def teammate(enforcing_moto: MotoServer, mariadb: MariaDB, tmp_path_factory: Any) -> dict[str, Any]:
    """The stack and the teammate, set up before moto starts enforcing IAM."""
    moto = enforcing_moto
    s3, iam = client("s3", moto), client("iam", moto)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=BUCKET, Key="churn/seed.txt", Body=b"churn's own")
    s3.put_object(Bucket=BUCKET, Key="other/secret.txt", Body=b"another project's")

    user = iam.create_user(UserName="teammate")["User"]["Arn"]
    key = iam.create_access_key(UserName="teammate")["AccessKey"]
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"AWS": user}}]}  # fmt: skip
    role = iam.create_role(RoleName="churn-server", AssumeRolePolicyDocument=json.dumps(trust))
    role_arn = role["Role"]["Arn"]
    iam.put_role_policy(
        RoleName="churn-server",
        PolicyName="prefix",
        PolicyDocument=json.dumps(server_policy_document(BUCKET_ARN, "churn")),
    )
    # Named churn: its prefix is its name, as the program makes it (the helper checks that).
    project = create_project(mariadb, "churn")
    env = {**moto.aws_env(), "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
    bundle = bundle_for(project, "iso", BUCKET, role_arn)
    secret_arn = put_connection_secret(env, bundle)
    project_policy = policy_document(BUCKET_ARN, "churn", secret_arn, REPOSITORY_ARN, role_arn)
    iam.put_user_policy(UserName="teammate", PolicyName="project",
                        PolicyDocument=json.dumps(project_policy))  # fmt: skip
    everything = {"Effect": "Allow", "Action": "s3:*", "Resource": [BUCKET_ARN, f"{BUCKET_ARN}/*"]}
    # moto authorizes Secrets Manager calls against the resource "*" (it passes no ARN), so
    # the project policy's statement for exactly the secret's ARN never matches there.
    moto_gap = {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}
    broad = {"Version": "2012-10-17", "Statement": [everything, moto_gap]}
    iam.put_user_policy(
        UserName="teammate", PolicyName="broad-s3", PolicyDocument=json.dumps(broad)
    )

    outputs = write_outputs(tmp_path_factory.mktemp("iso") / "outputs.json", BUCKET,
                            {project.name: secret_arn})  # fmt: skip
    # From here on, every request is authenticated and authorized by moto's IAM.
    enforce = urllib.request.Request(  # noqa: S310 (moto on loopback)
        f"{moto.endpoint_url}/moto-api/reset-auth",
        data=b"0",  # raw, as moto's own client sends it (not a form)
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(enforce, timeout=10).close()  # noqa: S310
    return {"key": key, "project": project, "outputs": outputs, "secret_arn": secret_arn}
