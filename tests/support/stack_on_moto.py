"""A project as ``pulumi up`` leaves it, on the test services: its schema and user in MariaDB
(made by SQL as the schema provider makes them), its connection secret in Secrets Manager and
its server role in IAM (moto), and the stack outputs that point at them.

Shared by the helper's end-to-end tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3

from mlflow_aws.bundle import ConnectionBundle
from mlflow_aws.names import REGISTRY_SCHEMA, ProjectIdentifiers, validate_name
from projects.schema_sql import Desired, Observed, account, decide_create, quote_identifier
from tests.support.services import MariaDB

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account


def image_uri(stack: str) -> str:
    """The server image of ``stack`` as the program names it: its ECR repository, by digest."""
    return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlflow-aws/{stack}/server@sha256:" + "0" * 64


IMAGE_URI = image_uri("e2e")
SERVER_ROLE_NAME = "mlflow-aws-test-server"


def aws_client(service: str, env: dict[str, str]) -> Any:
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass
class Project:
    name: str
    schema: str
    user: str
    password: str = field(repr=False)
    mariadb: MariaDB

    @property
    def backend_store_uri(self) -> str:
        """As the bundle holds it: no ``ssl_ca`` (each runtime adds its own CA file)."""
        return (
            f"mysql+pymysql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
            f"{self.mariadb.host}:{self.mariadb.port}/{self.schema}"
        )

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.mariadb.query(sql, args, database=self.schema)


def project_statements(schema: str, user: str, password: str) -> list[str]:
    """The SQL the schema provider runs for a new project on a server that holds none of it
    (``projects/schema_sql.py`` ``decide_create``: schema, user with its connection limit,
    grants), without its registry bookkeeping (the tests' projects are not recorded there)."""
    ids = ProjectIdentifiers(name=schema, schema=schema, username=user, s3_prefix=schema)
    nothing = Observed(
        current_user="root", collation=None, user_exists=False, global_privileges=(),
        schema_privileges=(), object_privileges=0, recorded_schema=False, recorded_user=False,
        registry=True,
    )  # fmt: skip
    steps = decide_create(Desired(ids, password), nothing)
    return [s.statement.sql for s in steps if REGISTRY_SCHEMA not in s.statement.sql]


def create_project(mariadb: MariaDB, name: str, password: str | None = None) -> Project:
    """A fresh schema and user, as the schema provider makes them."""
    ids = validate_name(name)  # the one names rule (mlflow_aws/names.py)
    schema, user = ids.schema, ids.username
    password = password or f"Pw-{name}-7Hq2xV9c"
    run = mariadb.socket_query  # works for the variants without (good) TLS too
    run(f"DROP DATABASE IF EXISTS {quote_identifier(schema)}")
    run(f"DROP USER IF EXISTS {account(user)}")
    for sql in project_statements(schema, user, password):
        run(sql)  # no arguments: PyMySQL formats nothing (the account's '%' stays as it is)
    return Project(name, schema, user, password, mariadb)


def server_role(
    env: dict[str, str], name: str = SERVER_ROLE_NAME, policy: str | None = None
) -> str:
    """The server role (its ARN); with ``policy``, that inline policy (what the program gives)."""
    iam = aws_client("iam", env)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}]}  # fmt: skip
    try:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
            "Arn"
        ]
    except iam.exceptions.EntityAlreadyExistsException:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    if policy is not None:
        iam.put_role_policy(RoleName=name, PolicyName="prefix", PolicyDocument=policy)
    return str(arn)


def bundle_for(
    project: Project,
    stack: str,
    bucket: str,
    role_arn: str,
    *,
    ca_pem: str | None = None,
    port: int | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """The connection bundle the program writes into the project's secret."""
    uri = project.backend_store_uri
    if password is not None:
        uri = uri.replace(quote(project.password, safe=""), quote(password, safe=""))
    if port is not None:
        uri = uri.replace(f":{project.mariadb.port}/", f":{port}/")
    return ConnectionBundle(
        project=project.name,
        stack=stack,
        database=project.schema,
        username=project.user,
        password=password or project.password,
        backend_store_uri=uri,
        artifact_root=f"s3://{bucket}/{project.name}",
        database_endpoint=project.mariadb.host,
        database_port=port or project.mariadb.port,
        region=REGION,
        image_uri=image_uri(stack),
        mlflow_version=metadata.version("mlflow"),
        database_ca_bundle=ca_pem if ca_pem is not None else project.mariadb.ca_path.read_text(),
        server_role_arn=role_arn,
        tracking_uri=None,
    ).as_dict()


def put_connection_secret(env: dict[str, str], bundle: dict[str, Any]) -> str:
    """The secret ``mlflow-aws/<stack>/<project>`` holding ``bundle`` (made or replaced); ARN."""
    client = aws_client("secretsmanager", env)
    name = f"mlflow-aws/{bundle['Stack']}/{bundle['Project']}"
    tags = [{"Key": "mlflow-aws:project", "Value": bundle["Project"]},
            {"Key": "mlflow-aws:stack", "Value": bundle["Stack"]}]  # fmt: skip
    try:
        return str(
            client.create_secret(Name=name, SecretString=json.dumps(bundle), Tags=tags)["ARN"]
        )
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=json.dumps(bundle))
        return str(client.describe_secret(SecretId=name)["ARN"])


def outputs_document(bucket: str, secrets: dict[str, str]) -> dict[str, Any]:
    """``pulumi stack output --json`` for projects -> their secret ARNs (no password in it)."""
    return {
        "ArtifactRoot": f"s3://{bucket}",
        "DatabasePassword": "[secret]",
        "DatabaseUrl": "[secret]",
        "ImageUri": IMAGE_URI,
        "Region": REGION,
        "Projects": {
            name: {"ArtifactRoot": f"s3://{bucket}/{name}", "ConnectionSecretArn": arn}
            for name, arn in secrets.items()
        },
    }


def write_outputs(path: Path, bucket: str, secrets: dict[str, str]) -> Path:
    path.write_text(json.dumps(outputs_document(bucket, secrets), indent=2))
    return path


def ensure_bucket(env: dict[str, str], bucket: str) -> None:
    s3 = aws_client("s3", env)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
