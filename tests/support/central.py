"""A central MLflow server with the ``aws-iam`` app, for tests and benchmarks, and the AWS
identities (moto IAM + STS) that sign in to it.

The server is ``mlflow server --app-name aws-iam`` of this interpreter, with the tuned settings of
``mlflow_aws/server.env``, serving one project under ``/<project>`` (``--static-prefix``, as the
central server's load balancer path) on MariaDB and a moto S3, its STS and IAM calls going to
moto through ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL_IAM``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import boto3

from helper.server_settings import server_environment
from helper.watchdog import stop_group
from mlflow_aws.auth.sign_in_app import APP_NAME
from mlflow_aws.auth.token import (
    MARKER_NAME,
    make_token,
    sts_endpoint_url,
)
from tests.support.services import MotoServer, free_port

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account
ALLOWED_ROLE = "ml-team"
OUTSIDER_ROLE = "outsider"
SSO_PERMISSION_SET = "DataScientist"
SSO_ROLE = f"AWSReservedSSO_{SSO_PERMISSION_SET}_0123456789abcdef"
SSO_PATH = "/aws-reserved/sso.amazonaws.com/eu-west-1/"  # where Identity Center puts its roles
# The same kind of name, made with iam:CreateRole by anyone who may (its path gives it away).
SSO_IMPOSTOR_ROLE = f"AWSReservedSSO_{SSO_PERMISSION_SET}_fedcba9876543210"
ALLOWED_GROUP = "ml-users"
GROUP_USER = "carol"  # in ALLOWED_GROUP
LONE_USER = "dave"  # in no group
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


@dataclass(frozen=True)
class Identities:
    """Credentials of callers, made in moto: roles assumed, users' access keys."""

    allowed_role: Credentials
    sso_role: Credentials
    sso_impostor: Credentials
    outsider_role: Credentials
    group_user: Credentials
    lone_user: Credentials


def moto_clients(moto: MotoServer, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=moto.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def make_identities(moto: MotoServer) -> Identities:
    iam, sts = moto_clients(moto, "iam"), moto_clients(moto, "sts")

    def role(name: str, path: str = "/") -> Credentials:
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument="{}")
        found = sts.assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role{path}{name}",
            RoleSessionName="someone@example.com",
        )["Credentials"]
        return Credentials(found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"])

    def user(name: str, group: str | None) -> Credentials:
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_user(UserName=name)
        if group is not None:
            with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
                iam.create_group(GroupName=group)
            iam.add_user_to_group(GroupName=group, UserName=name)
        # IAM allows two access keys per user, and the moto server outlives one test module:
        # a fresh key each time, the earlier ones deleted.
        for old in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
            iam.delete_access_key(UserName=name, AccessKeyId=old["AccessKeyId"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    return Identities(
        allowed_role=role(ALLOWED_ROLE),
        sso_role=role(SSO_ROLE, SSO_PATH),
        sso_impostor=role(SSO_IMPOSTOR_ROLE),
        outsider_role=role(OUTSIDER_ROLE),
        group_user=user(GROUP_USER, ALLOWED_GROUP),
        lone_user=user(LONE_USER, None),
    )


def client_aws_env(moto: MotoServer, credentials: Credentials) -> dict[str, str]:
    """A caller's AWS environment: its own credentials, STS (to sign for) and Secrets Manager
    (the helper reads the project's connection secret) at moto, nothing else of moto's."""
    return {
        **credentials.env(),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_STS": moto.endpoint_url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto.endpoint_url,
        # S3's endpoint only as the place of the sign-in marker the token's read is signed for.
        "AWS_ENDPOINT_URL_S3": moto.endpoint_url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without its AWS, MLflow and Pulumi settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PULUMI_"))}
    return {**base, **extra}


def get(url: str, headers: Mapping[str, str] | None = None, method: str = "GET",
        data: bytes | None = None) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class CentralServer:
    process: subprocess.Popen[bytes]
    port: int
    project: str
    log_path: Path
    marker_url: str = ""  # the project's sign-in marker (auth on)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tracking_uri(self) -> str:
        return f"{self.root}/{self.project}"

    @property
    def audience(self) -> str:
        """What tokens for this server are bound to: ``<host>/<project>`` of its tracking URI."""
        return audience(self.port, self.project)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        from tests.support.processes import descendants

        return [self.process.pid, *descendants(self.process.pid)]


def audience(port: int, project: str) -> str:
    return f"127.0.0.1:{port}/{project}"


def marker_url(moto: MotoServer, artifact_root: str) -> str:
    """The project's sign-in marker in moto's S3, path style (what the program writes)."""
    bucket, _, prefix = artifact_root.removeprefix("s3://").partition("/")
    return f"{moto.endpoint_url}/{bucket}/{prefix}/{MARKER_NAME}"


def put_marker(moto: MotoServer, artifact_root: str) -> None:
    bucket, _, prefix = artifact_root.removeprefix("s3://").partition("/")
    moto_clients(moto, "s3").put_object(
        Bucket=bucket, Key=f"{prefix}/{MARKER_NAME}", Body=b"mlflow-aws sign-in marker\n"
    )


def server_env(
    moto: MotoServer, backend_store_uri: str, artifact_root: str, project: str, port: int,
    auth: bool = True, public_port: int | None = None,
) -> dict[str, str]:  # fmt: skip
    env = clean_env(
        **server_environment(
            backend_store_uri=backend_store_uri,
            artifacts_destination=artifact_root,
            host="127.0.0.1",
            port=port,
        ),
        **moto.aws_env(),  # the server's own identity (moto's default user) and its S3
        MLFLOW_STATIC_PREFIX=f"/{project}",
        PYTHONUNBUFFERED="1",
    )
    if public_port is not None:  # clients come through a relay (bench/delay_relay.py)
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] += f",127.0.0.1:{public_port}"
    env.pop("AWS_ENDPOINT_URL")  # only the endpoints a central server would be given
    env["AWS_ENDPOINT_URL_STS"] = env["AWS_ENDPOINT_URL_IAM"] = moto.endpoint_url
    env["AWS_ENDPOINT_URL_S3"] = moto.endpoint_url
    if auth:
        env.update(
            MLFLOW_AWS_IAM_AUDIENCE=audience(public_port or port, project),
            MLFLOW_AWS_IAM_MARKER_URL=marker_url(moto, artifact_root),
            MLFLOW_AWS_IAM_ALLOWED_ROLES=f"{ALLOWED_ROLE},sso:{SSO_PERMISSION_SET}",
            MLFLOW_AWS_IAM_ALLOWED_GROUPS=ALLOWED_GROUP,
        )
    return env


@contextlib.contextmanager
def running_central_server(
    moto: MotoServer, backend_store_uri: str, artifact_root: str, project: str, log_dir: Path,
    auth: bool = True, public_port: int | None = None,
) -> Iterator[CentralServer]:  # fmt: skip
    """``mlflow server --app-name aws-iam`` (or the plain server, ``auth=False``), stopped after;
    ``public_port``: the port clients reach it on (a relay's), for its Host check and audience."""
    port = free_port()
    env = server_env(moto, backend_store_uri, artifact_root, project, port, auth, public_port)
    if auth:
        put_marker(moto, artifact_root)  # what the program writes with the project's service
    argv = [sys.executable, "-m", "mlflow", "server", *(["--app-name", APP_NAME] if auth else [])]
    log_path = log_dir / f"central-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = CentralServer(
        process, port, project, log_path, marker_url(moto, artifact_root) if auth else ""
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"central server exited:\n{server.log()[-4000:]}")
            with contextlib.suppress(OSError):
                if get(f"{server.tracking_uri}/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"central server not healthy:\n{server.log()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        stop_group(process.pid, process, timeout=30)  # the helper's own group stop


def outputs_with_tracking_uri(moto: MotoServer, project: Any, bucket: str, uri: str | None) -> str:
    """The project published as pulumi up publishes it, its bundle naming ``uri`` as its
    TrackingUri (None: no central server), and the outputs JSON (no password) naming that."""
    from tests.support.stack_on_moto import (
        bundle_for,
        outputs_document,
        put_connection_secret,
        server_role,
    )

    env = {**moto.aws_env(), "AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}
    bundle = bundle_for(project, "central", bucket, server_role(env))
    bundle["TrackingUri"] = uri
    arn = put_connection_secret(env, bundle)
    return json.dumps(outputs_document(bucket, {project.name: arn}))


PROJECT = "central"


# Its own (other tests list their bucket whole), with the stack's prefix (helper/trust.py).
BUCKET = "mlflow-aws-central-artifacts"


def sts_url(moto: MotoServer) -> str:
    with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL_STS": moto.endpoint_url}):
        return sts_endpoint_url(REGION)


def token_for(
    moto: MotoServer, credentials: Credentials, audience: str, marker_url: str | None = None
) -> str:
    """A token for ``audience`` reading the marker ``marker_url`` (default: the central one)."""
    return make_token(
        credentials.access_key_id, credentials.secret_access_key, credentials.session_token,
        REGION, sts_url(moto), audience,
        marker_url or central_marker(moto),
    )  # fmt: skip


def central_marker(moto: MotoServer) -> str:
    return marker_url(moto, f"s3://{BUCKET}/{PROJECT}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
