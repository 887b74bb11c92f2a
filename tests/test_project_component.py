"""``MlflowProject`` under Pulumi mocks: its resources, their exact scope, and secrecy.

The stock ``MockMonitor`` ignores ``additional_secret_outputs``; ``_SecretAwareMonitor``
wraps those outputs as secrets like the engine does, so secrecy is checked for real.
What a resource *receives* is checked on the wire: the mock sees secret inputs still
wrapped in the secret signature.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pulumi
from google.protobuf import struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.config import ProjectConfig
from mlflow_aws import passwords
from mlflow_aws.bundle import BUNDLE_KEYS
from projects.project import (
    COMPONENT_TYPE,
    OUTPUT_KEYS,
    MlflowProject,
    MlflowProjectArgs,
    backend_store_uri,
)
from projects.schema_sql import password_problem

ACCOUNT, REGION = "123456789012", "eu-west-1"
BUCKET = "mlflow-aws-dev-artifacts-0001"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
REPO_ARN = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/mlflow-aws-dev"
ENDPOINT = f"mlflow-dev.cluster-c0ffee.{REGION}.rds.amazonaws.com"
ADMIN_PASSWORD = "Admin-Pw.0123456789"
CLUSTER_ARN = f"arn:aws:rds:{REGION}:{ACCOUNT}:cluster:mlflow-aws-dev-0001"
ADMIN_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:mlflow-aws/dev/admin-x-Ab"
# Not what RandomPassword makes (only -_. specials), but it proves the URI quoting.
PROJECT_PASSWORD = "p@ss:w/rd%-X_1.y"
SCHEMA_TYPE = "pulumi-python:dynamic/mysql:Schema"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _is_secret(value: Any) -> bool:
    return rpc.is_rpc_secret(value)


@dataclass
class Reg:
    typ: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    urn: str = ""
    parent: str = ""
    protect: bool | None = None
    retain_on_delete: bool | None = None
    dependencies: tuple[str, ...] = ()
    secret_outputs: tuple[str, ...] = ()


@dataclass
class _Mocks(pulumi_mocks.Mocks):
    resources: list[Reg] = field(default_factory=list)
    local: threading.local = field(default_factory=threading.local)

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        if args.typ == "random:index/randomPassword:RandomPassword":
            state.update(result=PROJECT_PASSWORD, bcryptHash="$2a$10$mock")
        elif args.typ == "aws:secretsmanager/secret:Secret":
            rid = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{state['name']}-AbCdEf"
            state["arn"] = rid
        elif args.typ == "aws:iam/policy:Policy":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:policy/{args.name}"
        elif args.typ == "aws:iam/role:Role":
            rid = f"{state['namePrefix']}0001"
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{rid}"
        elif args.typ.startswith("aws:"):
            state.setdefault("arn", f"arn:aws:mock:::{args.name}")
        if args.custom:  # components are recorded by the monitor
            reg = Reg(args.typ, args.name, dict(args.inputs), state)
            self.resources.append(reg)
            self.local.reg = reg
        return rid, state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        raise AssertionError(f"MlflowProject should make no invokes, made {args.token}")


class _SecretAwareMonitor(pulumi_mocks.MockMonitor):
    """Honours ``additional_secret_outputs`` and records each registration's options."""

    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.recording = mocks
        self.components: list[Any] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        if not request.custom:
            self.components.append((request.type, request.name, response.urn))
            return response
        reg: Reg = self.recording.local.reg
        reg.urn, reg.parent = response.urn, request.parent
        reg.protect = request.protect if request.HasField("protect") else None
        reg.retain_on_delete = (
            request.retainOnDelete if request.HasField("retainOnDelete") else None
        )
        reg.dependencies = tuple(request.dependencies)
        reg.secret_outputs = tuple(request.additionalSecretOutputs)
        for key in request.additionalSecretOutputs:
            if key in response.object.fields:
                wrapped = struct_pb2.Struct()
                wrapped.fields[rpc._special_sig_key].string_value = rpc._special_secret_sig
                wrapped.fields["value"].CopyFrom(response.object.fields[key])
                response.object.fields[key].struct_value.CopyFrom(wrapped)
        return response


@dataclass
class Built:
    resources: list[Reg]
    components: list[Any]
    outputs: dict[str, Any]
    outputs_secret: bool
    password_secret: bool

    def one(self, typ: str) -> Reg:
        found = [r for r in self.resources if r.typ == typ]
        assert len(found) == 1, (typ, [r.name for r in found])
        return found[0]

    def of(self, typ: str) -> list[Reg]:
        return [r for r in self.resources if r.typ == typ]


def build(
    project: ProjectConfig | None = None,
    stack: str = "dev",
    protect: bool = False,
    with_dependency: bool = False,
    **extra: Any,
) -> Built:
    mocks = _Mocks()
    monitor = _SecretAwareMonitor(mocks)
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project="mlflow-aws", stack=stack, preview=False,
                             monitor=monitor)  # fmt: skip
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    made: list[MlflowProject] = []

    def program() -> None:
        opts = None
        if with_dependency:
            instance = pulumi.CustomResource("aws:rds/clusterInstance:ClusterInstance", "db-1", {})
            opts = pulumi.ResourceOptions(depends_on=[instance])
        p = project or ProjectConfig(name="churn")
        made.append(
            MlflowProject(
                f"project-{p.name}",
                MlflowProjectArgs(
                    project=p,
                    bucket_name=BUCKET,
                    bucket_arn=BUCKET_ARN,
                    db_endpoint=ENDPOINT,
                    db_port=3306,
                    cluster_arn=CLUSTER_ARN,
                    admin_secret_arn=ADMIN_SECRET_ARN,
                    repository_arn=REPO_ARN,
                    account_id=ACCOUNT,
                    stack=stack,
                    protect=protect,
                    **extra,
                ),
                opts,
            )
        )

    _sync_await(run_pulumi_func(program))
    component = made[0]
    outputs = _sync_await(component.outputs.future())
    assert outputs is not None
    return Built(
        resources=mocks.resources,
        components=monitor.components,
        outputs=outputs,
        outputs_secret=bool(_sync_await(component.outputs.is_secret())),
        password_secret=bool(_sync_await(component.password.result.is_secret())),
    )


# -- resources --------------------------------------------------------------------------------


def test_children_are_the_expected_resources_parented_to_the_component() -> None:
    b = build()
    assert [(t, n) for t, n, _ in b.components] == [(COMPONENT_TYPE, "project-churn")]
    component_urn = b.components[0][2]
    assert sorted((r.typ, r.name) for r in b.resources) == sorted(
        [
            ("random:index/randomPassword:RandomPassword", "project-churn-password"),
            (SCHEMA_TYPE, "project-churn-schema"),
            ("aws:secretsmanager/secret:Secret", "project-churn-connection"),
            ("aws:secretsmanager/secretVersion:SecretVersion", "project-churn-connection-version"),
            ("aws:iam/policy:Policy", "project-churn-policy"),
            ("aws:iam/role:Role", "project-churn-server-role"),
            ("aws:iam/rolePolicy:RolePolicy", "project-churn-server-role-policy"),
        ]
    )
    assert all(r.parent == component_urn for r in b.resources)


def test_password_is_mysql_safe_and_rotates_with_its_version() -> None:
    pw = build().one("random:index/randomPassword:RandomPassword").inputs
    assert pw["length"] >= 32 and pw["special"] is True
    assert set(pw["overrideSpecial"]) <= set(passwords.SHELL_SAFE_SPECIALS)
    # Every character RandomPassword may draw passes the SQL literal's check (and a password
    # of them needs no quoting in the bundle's URI): generator and check share one alphabet.
    drawn = "AZaz09" + pw["overrideSpecial"]
    assert password_problem((drawn * 4)[: int(pw["length"])]) is None
    assert quote(drawn, safe="") == drawn
    assert pw["keepers"] == {"version": "1"}
    rotated = build(ProjectConfig(name="churn", password_version=3))
    assert rotated.one("random:index/randomPassword:RandomPassword").inputs["keepers"] == {
        "version": "3"
    }


def test_schema_resource_gets_the_project_the_cluster_and_no_admin_password() -> None:
    b = build(
        ProjectConfig(name="fraud-v2", drop_data_on_remove=True, adopt_existing_schema=True),
        with_dependency=True,
        aws_profile="deployer",
    )
    schema = b.one(SCHEMA_TYPE)
    i = schema.inputs
    assert (i["project"], i["schema"], i["username"]) == ("fraud-v2", "fraud_v2", "mlflow_fraud_v2")
    # The Data API logs in with the admin secret itself: the resource holds only its ARN.
    assert (i["cluster_arn"], i["admin_secret_arn"]) == (CLUSTER_ARN, ADMIN_SECRET_ARN)
    assert not {"admin_host", "admin_port", "admin_username", "admin_password"} & set(i)
    assert i["drop_data_on_remove"] is True and i["adopt_existing_schema"] is True
    assert i["aws_profile"] == "deployer"
    assert _is_secret(i["password"]) and i["password"]["value"] == PROJECT_PASSWORD
    assert "password" in schema.secret_outputs
    # the serialized provider: pickled by reference to this repo's module, carrying no state
    blob = base64.b64decode(rpc.unwrap_rpc_secret(i["__provider"]))
    assert b"projects.schema_provider" in blob and b"MysqlSchemaProvider" in blob
    assert len(blob) < 2000
    for secret in (PROJECT_PASSWORD, ADMIN_PASSWORD, ENDPOINT):
        assert secret.encode() not in blob
    # the component's depends_on (the DB instance) reaches the schema: it needs a live DB
    instance = b.one("aws:rds/clusterInstance:ClusterInstance")
    assert instance.urn in schema.dependencies


def test_schema_protection_follows_the_stack_and_the_drop_consent() -> None:
    def schema_protect(protect: bool, drop: bool) -> bool | None:
        b = build(ProjectConfig(name="churn", drop_data_on_remove=drop), protect=protect)
        reg = b.one(SCHEMA_TYPE)
        assert not reg.retain_on_delete  # deleting must revoke the user's access
        return reg.protect

    assert schema_protect(protect=True, drop=True) is True
    assert not schema_protect(protect=True, drop=False)  # removal keeps data anyway
    assert not schema_protect(protect=False, drop=True)


# -- IAM ---------------------------------------------------------------------------------------


PREFIX_GRANTS = {
    (
        ("s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"),
        (f"{BUCKET_ARN}/churn/*",),
    ): None,
    # Exactly "churn/" and "churn/*": "churn" or "churn*" would also list "churn2/…".
    (("s3:ListBucket",), (BUCKET_ARN,)): {"StringLike": {"s3:prefix": ["churn/", "churn/*"]}},
}


def granted_by(doc: dict[str, Any]) -> dict[tuple[Any, Any], Any]:
    assert doc["Version"] == "2012-10-17"
    granted = {}
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}  # no NotAction
        granted[(tuple(sorted(st["Action"])), tuple(sorted(st["Resource"])))] = st.get("Condition")
    return granted


def test_server_role_holds_exactly_the_prefix() -> None:
    b = build()
    role = b.one("aws:iam/role:Role")
    inline = b.one("aws:iam/rolePolicy:RolePolicy")
    assert inline.inputs["role"] == "mlflow-aws-churn-0001"  # the role's id: its name
    assert granted_by(json.loads(inline.inputs["policy"])) == PREFIX_GRANTS
    assert not b.of("aws:iam/rolePolicyAttachment:RolePolicyAttachment")  # no managed extras
    assert role.inputs["maxSessionDuration"] == 12 * 3600
    assert role.inputs["tags"] == {"mlflow-aws:project": "churn", "mlflow-aws:stack": "dev"}


def test_server_role_trusts_this_accounts_project_policy_holders_only() -> None:
    """Not ECS (issue 14): the central tasks run as a task role of their own, so what they
    need beyond the prefix (the sign-in's group lookup) is never on the role teammates become."""
    trust = json.loads(build().one("aws:iam/role:Role").inputs["assumeRolePolicy"])
    principals = [(st["Principal"], st["Action"], st.get("Condition")) for st in trust["Statement"]]
    assert principals == [
        # Any principal of the account whose own policy allows it: the project policy does.
        ({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "sts:AssumeRole", None),
    ]


def test_policy_allows_exactly_the_prefix_the_secret_the_role_and_the_image() -> None:
    b = build()
    secret_arn = b.one("aws:secretsmanager/secret:Secret").state["arn"]
    role_arn = b.one("aws:iam/role:Role").state["arn"]
    doc = json.loads(b.one("aws:iam/policy:Policy").inputs["policy"])
    assert granted_by(doc) == {
        **PREFIX_GRANTS,
        (("sts:AssumeRole",), (role_arn,)): None,
        (
            ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
            (secret_arn,),
        ): None,
        (("secretsmanager:ListSecrets",), ("*",)): None,
        (("ecr:GetAuthorizationToken",), ("*",)): None,
        (
            (
                "ecr:BatchCheckLayerAvailability",
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
            ),
            (REPO_ARN,),
        ): None,
    }
    actions = [a for st in doc["Statement"] for a in st["Action"]]
    assert not any("*" in a for a in actions)  # no s3:*, no wildcards at all
    resources = [r for st in doc["Statement"] for r in st["Resource"]]
    assert f"{BUCKET_ARN}/*" not in resources  # no bucket-wide object access
    star = [st["Action"] for st in doc["Statement"] if "*" in st["Resource"]]
    # Only actions AWS cannot scope: finding secrets by tag (names, no values) and ECR login.
    assert star == [["secretsmanager:ListSecrets"], ["ecr:GetAuthorizationToken"]]


def test_policy_prefix_is_the_project_name_even_with_hyphens() -> None:
    doc = json.loads(build(ProjectConfig(name="fraud-v2")).one("aws:iam/policy:Policy").inputs[
        "policy"])  # fmt: skip
    objects = next(st for st in doc["Statement"] if "s3:GetObject" in st["Action"])
    assert objects["Resource"] == [f"{BUCKET_ARN}/fraud-v2/*"]


def test_policy_is_attached_to_the_configured_groups_and_roles() -> None:
    b = build(
        ProjectConfig(name="churn", iam_groups=("data-science", "ml+ops"), iam_roles=("Trainer",))
    )
    policy_arn = b.one("aws:iam/policy:Policy").state["arn"]
    groups = b.of("aws:iam/groupPolicyAttachment:GroupPolicyAttachment")
    roles = b.of("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert sorted((g.inputs["group"], g.inputs["policyArn"]) for g in groups) == [
        ("data-science", policy_arn),
        ("ml+ops", policy_arn),
    ]
    assert [(r.inputs["role"], r.inputs["policyArn"]) for r in roles] == [("Trainer", policy_arn)]
    assert not build().of("aws:iam/groupPolicyAttachment:GroupPolicyAttachment")


# -- connection secret ------------------------------------------------------------------------


def test_connection_secret_name_tags_and_recovery_window() -> None:
    secret = build(stack="dev").one("aws:secretsmanager/secret:Secret").inputs
    assert secret["name"] == "mlflow-aws/dev/churn"
    assert secret["tags"] == {"mlflow-aws:project": "churn", "mlflow-aws:stack": "dev"}
    assert secret["recoveryWindowInDays"] == 0
    prod = build(stack="prod", protect=True).one("aws:secretsmanager/secret:Secret").inputs
    assert prod["name"] == "mlflow-aws/prod/churn"
    # Even when protected: re-adding a removed project must be able to take the name again
    # (AWS's default 30-day window would keep it), and the bundle is rebuilt from state.
    assert prod["recoveryWindowInDays"] == 0


def test_connection_bundle_has_what_the_helper_reads_and_is_secret() -> None:
    b = build(
        image_uri=f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlflow-aws-dev@sha256:abc",
        mlflow_version="3.17.2",
        region="us-east-2",
        database_ca_bundle=CA_PEM,
    )
    version = b.one("aws:secretsmanager/secretVersion:SecretVersion")
    secret = b.one("aws:secretsmanager/secret:Secret")
    assert version.inputs["secretId"] == secret.state["arn"]
    assert _is_secret(version.inputs["secretString"])
    bundle = json.loads(version.inputs["secretString"]["value"])
    assert set(bundle) == set(BUNDLE_KEYS)
    assert bundle == {
        "Project": "churn",
        "Stack": "dev",
        "Database": "churn",
        "Username": "mlflow_churn",
        "Password": PROJECT_PASSWORD,
        "BackendStoreUri": backend_store_uri(
            "mlflow_churn", PROJECT_PASSWORD, ENDPOINT, 3306, "churn"
        ),
        "ArtifactRoot": f"s3://{BUCKET}/churn",
        "DatabaseEndpoint": ENDPOINT,
        "DatabasePort": 3306,
        "Region": "us-east-2",
        "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlflow-aws-dev@sha256:abc",
        "MlflowVersion": "3.17.2",
        "DatabaseCaBundle": CA_PEM,
        "ServerRoleArn": b.one("aws:iam/role:Role").state["arn"],
        "TrackingUri": None,  # JSON null: no central server on this stack
    }
    schema = b.one(SCHEMA_TYPE)
    assert schema.urn in version.dependencies  # published once the user exists


def test_central_server_url_reaches_bundle_and_outputs() -> None:
    uri = "https://mlflow.example.com/churn"
    b = build(tracking_uri=uri)
    version = b.one("aws:secretsmanager/secretVersion:SecretVersion")
    assert json.loads(version.inputs["secretString"]["value"])["TrackingUri"] == uri
    assert b.outputs["TrackingUri"] == uri
    assert tuple(b.outputs) == (*OUTPUT_KEYS, "TrackingUri")


def test_bundle_region_defaults_to_the_secrets_region() -> None:
    version = build().one("aws:secretsmanager/secretVersion:SecretVersion")
    assert json.loads(version.inputs["secretString"]["value"])["Region"] == REGION


# -- outputs and secrecy ----------------------------------------------------------------------


def test_outputs_are_the_design_entry_without_any_password() -> None:
    b = build()
    # Nothing secret in it, so it is not a secret: sharing the stack's outputs (or an outputs
    # file) hands out no project's password; teammates read their project's secret instead.
    assert not b.outputs_secret
    assert tuple(b.outputs) == OUTPUT_KEYS
    assert b.outputs == {
        "Database": "churn",
        "Username": "mlflow_churn",
        "ArtifactRoot": f"s3://{BUCKET}/churn",
        "ConnectionSecretArn": b.one("aws:secretsmanager/secret:Secret").state["arn"],
        "PolicyArn": b.one("aws:iam/policy:Policy").state["arn"],
        "ServerRoleArn": b.one("aws:iam/role:Role").state["arn"],
    }
    text = json.dumps(b.outputs)
    assert PROJECT_PASSWORD not in text and quote(PROJECT_PASSWORD, safe="") not in text
    assert b.password_secret  # RandomPassword.result, via additional_secret_outputs


def test_no_resource_receives_a_password_in_plain_text() -> None:
    b = build()

    def plain_strings(value: Any) -> list[str]:
        if _is_secret(value):
            return []
        if isinstance(value, dict):
            return [s for v in value.values() for s in plain_strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in plain_strings(v)]
        return [value] if isinstance(value, str) else []

    quoted = quote(PROJECT_PASSWORD, safe="")
    for reg in b.resources:
        for text in plain_strings(reg.inputs):
            for secret in (PROJECT_PASSWORD, quoted, ADMIN_PASSWORD):
                assert secret not in text, (reg.name, text[:80])


def test_backend_store_uri_quotes_user_and_password() -> None:
    uri = backend_store_uri("mlflow_a", "p@:/?#%", "db.example", 3306, "a")
    assert uri == "mysql+pymysql://mlflow_a:p%40%3A%2F%3F%23%25@db.example:3306/a"
