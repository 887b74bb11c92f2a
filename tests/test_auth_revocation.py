"""Revocation ends sign-in (issue 14, Medium 2), with IAM evaluated for real by moto.

``sts:GetCallerIdentity`` succeeds even under an explicit deny (AWS documents it; moto does the
same, ``moto/iam/access_control.py``), so a sign-in that only asks STS who is calling lets a
revoked session in until its credentials expire. A token also carries a signed ``HEAD`` of the
project's sign-in marker, which S3 answers only while IAM lets the signer read the project's
prefix: here a moto server with request authorization on plays STS, IAM and S3, the project's
policy is the program's (``projects.project.policy_document``), attached to a group and to a
role as the program attaches it. The server's side is ``Authenticator`` with the real replays
(``StsReplay``, ``MarkerReplay``) and group lookups (``AwsLookups``), and a clock of the test's.

On the previous main ``Authenticator.decide`` asked STS only: every refusal below was a 200
(``test_the_revoked_session_still_passes_get_caller_identity`` is that control).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import boto3
import pytest

from mlflow_aws.auth.sign_in_app import (
    DECISION_TTL,
    Authenticator,
    AwsLookups,
    MarkerReplay,
    StsReplay,
    settings_from_environ,
)
from mlflow_aws.auth.token import MARKER_NAME, make_token, sts_endpoint_url
from projects.project import policy_document
from tests.support.central import Credentials
from tests.support.services import MotoServer, running_moto

pytestmark = pytest.mark.slow

REGION = "eu-west-1"
ACCOUNT = "123456789012"
BUCKET = "mlflow-aws-revocation"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
GROUP, ROLE = "churn-team", "churn-ml"
AUDIENCE = "mlflow.example.com/churn"
DENY_ALL = {"Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}  # fmt: skip


def client(service: str, moto: MotoServer, credentials: Credentials) -> Any:
    return boto3.client(
        service, endpoint_url=moto.endpoint_url, region_name=REGION,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )  # fmt: skip


def user_with_key(iam: Any, name: str, policy: dict[str, Any] | None = None) -> Credentials:
    iam.create_user(UserName=name)
    if policy is not None:
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    """The stack's pieces and the identities, made before moto starts enforcing IAM."""
    with running_moto() as moto:
        setup = Credentials("setup", "setup")
        iam, s3 = client("iam", moto, setup), client("s3", moto, setup)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=BUCKET, Key=f"churn/{MARKER_NAME}", Body=b"marker")
        s3.put_object(Bucket=BUCKET, Key=f"fraud/{MARKER_NAME}", Body=b"marker")
        project_policy = policy_document(
            BUCKET_ARN, "churn", f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:x",
            f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/x", f"arn:aws:iam::{ACCOUNT}:role/x",
        )  # fmt: skip
        arn = iam.create_policy(PolicyName="churn", PolicyDocument=json.dumps(project_policy))
        policy_arn = arn["Policy"]["Arn"]
        iam.create_group(GroupName=GROUP)
        iam.attach_group_policy(GroupName=GROUP, PolicyArn=policy_arn)
        admin = user_with_key(iam, "admin", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"}]})  # fmt: skip
        # The server's own identity: its account and group lookups (what the task role allows).
        server = user_with_key(iam, "server", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iam:ListGroupsForUser", "Resource": "*"}]})  # fmt: skip
        erin = user_with_key(iam, "erin")
        iam.add_user_to_group(GroupName=GROUP, UserName="erin")
        assumer = user_with_key(iam, "assumer")
        principal = {"AWS": f"arn:aws:iam::{ACCOUNT}:user/assumer"}
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                 "Action": "sts:AssumeRole", "Principal": principal}]}  # fmt: skip
        iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.attach_role_policy(RoleName=ROLE, PolicyArn=policy_arn)
        iam.put_user_policy(UserName="assumer", PolicyName="assume", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Resource": f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"}]}))  # fmt: skip
        found = client("sts", moto, assumer).assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{ROLE}", RoleSessionName="frank@example.com"
        )["Credentials"]
        session = Credentials(found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"])
        enforce = urllib.request.Request(  # noqa: S310 (moto on loopback)
            f"{moto.endpoint_url}/moto-api/reset-auth", data=b"0",
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        urllib.request.urlopen(enforce, timeout=10).close()  # noqa: S310
        yield {"moto": moto, "admin": admin, "server": server, "erin": erin, "session": session}


def marker_url(moto: MotoServer, project: str = "churn") -> str:
    return f"{moto.endpoint_url}/{BUCKET}/{project}/{MARKER_NAME}"


class Server:
    """The sign-in decisions of churn's server, with a clock the test moves."""

    def __init__(self, world: dict[str, Any]) -> None:
        moto: MotoServer = world["moto"]
        self.now = datetime.now(UTC)
        env = {"AWS_ENDPOINT_URL_STS": moto.endpoint_url, "AWS_ENDPOINT_URL_IAM": moto.endpoint_url,
               "AWS_ENDPOINT_URL_S3": moto.endpoint_url, "AWS_REGION": REGION,
               **world["server"].env()}  # fmt: skip
        self._env = mock.patch.dict(os.environ, env)
        self._env.start()
        settings = settings_from_environ({
            **env, "MLFLOW_AWS_IAM_AUDIENCE": AUDIENCE,
            "MLFLOW_AWS_IAM_MARKER_URL": marker_url(moto),
            "MLFLOW_AWS_IAM_ALLOWED_ROLES": ROLE, "MLFLOW_AWS_IAM_ALLOWED_GROUPS": GROUP,
        })  # fmt: skip
        lookups = AwsLookups(REGION)
        self.authenticator = Authenticator(
            settings, StsReplay(), lambda: ACCOUNT, lookups.groups_of, clock=lambda: self.now,
            read_marker=MarkerReplay(),
        )  # fmt: skip
        self.sts_url = sts_endpoint_url(REGION)
        self.moto = moto

    def close(self) -> None:
        self._env.stop()

    def token(self, who: Credentials, marker: str | None = None) -> str:
        return "Bearer " + make_token(
            who.access_key_id, who.secret_access_key, who.session_token, REGION, self.sts_url,
            AUDIENCE, marker or marker_url(self.moto),
        )  # fmt: skip

    def status(self, header: str) -> tuple[int, str]:
        decision = self.authenticator.decide(header)
        return decision.status, decision.reason


@pytest.fixture
def server(world: dict[str, Any]) -> Iterator[Server]:
    running = Server(world)
    yield running
    running.close()


def test_the_revoked_session_still_passes_get_caller_identity(world: dict[str, Any]) -> None:
    """The control: a deny-all on the role does not stop GetCallerIdentity (what main relied
    on), and it does stop the marker read (what sign-in relies on now)."""
    moto, session = world["moto"], world["session"]
    iam = client("iam", moto, world["admin"])
    s3 = client("s3", moto, session)
    s3.head_object(Bucket=BUCKET, Key=f"churn/{MARKER_NAME}")
    try:
        iam.put_role_policy(RoleName=ROLE, PolicyName="revoke", PolicyDocument=json.dumps(DENY_ALL))
        assert (
            client("sts", moto, session)
            .get_caller_identity()["Arn"]
            .endswith(f"assumed-role/{ROLE}/frank@example.com")
        )
        with pytest.raises(Exception, match=r"403|Forbidden|AccessDenied"):
            s3.head_object(Bucket=BUCKET, Key=f"churn/{MARKER_NAME}")
    finally:
        iam.delete_role_policy(RoleName=ROLE, PolicyName="revoke")


def test_a_deny_all_on_the_role_ends_its_sessions_sign_in(
    world: dict[str, Any], server: Server
) -> None:
    iam = client("iam", world["moto"], world["admin"])
    token = server.token(world["session"])
    assert server.status(token)[0] == 200
    iam.put_role_policy(RoleName=ROLE, PolicyName="revoke", PolicyDocument=json.dumps(DENY_ALL))
    try:
        # A token seen before stays allowed only until its decision lapses: at most DECISION_TTL.
        server.now += DECISION_TTL - timedelta(seconds=1)
        assert server.status(token)[0] == 200
        server.now += timedelta(seconds=2)
        status, reason = server.status(token)
        assert status == 403, reason
        assert reason.endswith("may not read this project's sign-in marker now: the project's "
                               "policy is not attached to this identity (any more), or a deny "
                               "applies")  # fmt: skip
        assert server.status(server.token(world["session"]))[0] == 403  # a new token: at once
    finally:
        iam.delete_role_policy(RoleName=ROLE, PolicyName="revoke")
    assert timedelta(minutes=5) >= DECISION_TTL
    server.now += DECISION_TTL
    assert server.status(token)[0] == 200  # the deny lifted: allowed again


def test_leaving_the_projects_group_ends_sign_in(world: dict[str, Any], server: Server) -> None:
    iam = client("iam", world["moto"], world["admin"])
    token = server.token(world["erin"])
    assert server.status(token)[0] == 200
    iam.remove_user_from_group(GroupName=GROUP, UserName="erin")
    try:
        server.now += DECISION_TTL + timedelta(seconds=1)
        status, reason = server.status(token)
        assert status == 403 and "user/erin" in reason, reason
    finally:
        iam.add_user_to_group(GroupName=GROUP, UserName="erin")


def test_a_read_of_another_projects_marker_is_refused(
    world: dict[str, Any], server: Server
) -> None:
    """fraud's marker, which the caller may not read: the server never replays it."""
    status, reason = server.status(server.token(world["erin"], marker_url(world["moto"], "fraud")))
    assert status == 401 and "this server's is" in reason, reason
