"""``MlflowProject``: everything one project gets (README.md "Adding a project").

Children (all parented to the component, named ``<name>-…``):

* ``<name>-password``   ``random.RandomPassword`` (MySQL/URL-safe; bump ``password_version``
  in config to rotate it: a new password is set in place by the schema resource);
* ``<name>-schema``     ``MysqlSchema`` (schema ``utf8mb4_bin`` + user + grants on it only);
* ``<name>-connection`` ``aws.secretsmanager.Secret`` ``mlflow-aws/<stack>/<project>`` and its
  ``SecretVersion`` holding the connection bundle the helper's ``--from-aws`` reads;
* ``<name>-server-role`` ``aws.iam.Role`` a teammate's helper runs the project's MLflow server
  as: exactly the project's S3 prefix, nothing else; assumable only by principals holding the
  project policy (the central server's ECS tasks have a task role of their own, which only ECS
  can assume: infra/project_service.py);
* ``<name>-policy``     ``aws.iam.Policy`` allowing exactly the project's S3 prefix, its
  connection secret, assuming the server role and pulling the server image;
* ``<name>-group-<g>`` / ``<name>-role-<r>`` attachments of that policy.

``outputs`` is the project's entry of the ``Projects`` stack output (README.md "Stack outputs"):
names and ARNs, no password (the password lives only in the connection secret, which teammates
read with their own AWS credentials).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.config import ProjectConfig
from infra.iam import PolicyDocument, Statement, image_pull_statements, role_name_prefix
from mlflow_aws import passwords
from mlflow_aws.bundle import ConnectionBundle
from mlflow_aws.names import connection_secret_name, validate_name
from projects.schema_provider import MysqlSchema, MysqlSchemaArgs
from projects.schema_sql import DEFAULT_MAX_USER_CONNECTIONS

COMPONENT_TYPE = "mlflow-aws:projects:MlflowProject"
# Safe unquoted in MySQL, URLs, env files and shells (mlflow_aws/passwords.py).
PASSWORD_SPECIALS = passwords.SHELL_SAFE_SPECIALS
OUTPUT_KEYS = (
    "Database",
    "Username",
    "ArtifactRoot",
    "ConnectionSecretArn",
    "PolicyArn",
    "ServerRoleArn",
)
SERVER_ROLE_MAX_SESSION_SECONDS = 12 * 3600  # chained sessions (SSO -> role) are capped at 1 h


@dataclass
class MlflowProjectArgs:
    project: ProjectConfig
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    db_endpoint: pulumi.Input[str]  # for the connection bundle (servers connect there)
    db_port: int
    cluster_arn: pulumi.Input[str]  # the schema provider's SQL goes through its Data API
    admin_secret_arn: pulumi.Input[str]  # ... as the admin credentials in this secret
    repository_arn: pulumi.Input[str]
    account_id: pulumi.Input[str]
    stack: str
    protect: bool
    image_uri: pulumi.Input[str] | None = None  # for the connection bundle
    region: pulumi.Input[str] | None = None  # None: the region of the connection secret
    mlflow_version: str | None = None  # None: the version pinned in docker/requirements.txt
    # PEM of the CAs that sign the database's TLS certificate (AWS's RDS bundle of the region),
    # so every client of the bundle verifies the server; None only in tests of other parts.
    database_ca_bundle: pulumi.Input[str] | None = None
    aws_profile: str | None = None  # the stack's aws:profile: the provider's Data API calls use it
    # The project user's connection limit: room for the laptop servers and the central tasks.
    max_user_connections: int = DEFAULT_MAX_USER_CONNECTIONS
    # https://<domain>/<project> when the stack runs the central server (server.enabled): in
    # the bundle (null otherwise) and in the Projects entry (only then).
    tracking_uri: str | None = None
    partition: str = "aws"  # of every ARN written here (aws-cn, aws-us-gov: infra/account.py)
    # aws:assumeRoles: the provider's Data API calls run as the identity the AWS provider uses
    assume_roles: tuple[dict[str, Any], ...] = ()


OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
SECRET_ACTIONS = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]


def prefix_statements(bucket_arn: str, prefix: str) -> list[Statement]:
    """Objects under ``<prefix>/`` and listing exactly that prefix.

    ``s3:prefix`` is matched as a whole: ``<prefix>/`` and ``<prefix>/*`` only, so project
    ``a`` cannot list the keys of ``ab/`` or ``a-b/`` (a bare ``a`` or ``a*`` would let it).
    """
    return [
        {
            "Sid": "ProjectObjects",
            "Effect": "Allow",
            "Action": list(OBJECT_ACTIONS),
            "Resource": [f"{bucket_arn}/{prefix}/*"],
        },
        {
            "Sid": "ListProjectPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [bucket_arn],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}},
        },
    ]


def server_policy_document(bucket_arn: str, prefix: str) -> PolicyDocument:
    """What the project's MLflow server may do: its S3 prefix, nothing else."""
    return {"Version": "2012-10-17", "Statement": prefix_statements(bucket_arn, prefix)}


def server_trust_policy(account_id: str, partition: str = "aws") -> dict[str, Any]:
    """Who may become the server role: principals of this account that are allowed to (the
    project policy allows exactly this role). Not ECS: whatever the central tasks need besides
    the prefix (the sign-in's group lookup) must stay out of reach of every teammate, so they
    run as a task role of their own (infra/project_service.py)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HoldersOfTheProjectPolicy",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account_id}:root"},
                "Action": "sts:AssumeRole",
            },
        ],
    }


def policy_document(
    bucket_arn: str, prefix: str, secret_arn: str, repository_arn: str, server_role_arn: str
) -> PolicyDocument:
    """Exactly the project's prefix, its connection secret, becoming its server role, and
    pulling the server image."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            *prefix_statements(bucket_arn, prefix),
            {
                # The helper runs the teammate's server as this role, so the server holds the
                # project's prefix only, not the teammate's own rights.
                "Sid": "BecomeServerRole",
                "Effect": "Allow",
                "Action": ["sts:AssumeRole"],
                "Resource": [server_role_arn],
            },
            {
                "Sid": "ReadConnectionSecret",
                "Effect": "Allow",
                "Action": list(SECRET_ACTIONS),
                "Resource": [secret_arn],
            },
            {
                # `helper serve --from-aws` finds the project's secret by its tags. ListSecrets
                # has no resource-level permissions ("*" only) and returns names and tags,
                # never values, which stay limited to this project's secret above.
                "Sid": "FindConnectionSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:ListSecrets"],
                "Resource": ["*"],
            },
            *image_pull_statements(repository_arn),
        ],
    }


def backend_store_uri(user: str, password: str, endpoint: str, port: int, schema: str) -> str:
    return (
        f"mysql+pymysql://{quote(user, safe='')}:{quote(password, safe='')}@"
        f"{endpoint}:{port}/{schema}"
    )


def _default_mlflow_version() -> str | None:
    try:
        from infra.config import pinned_mlflow_version

        return pinned_mlflow_version()
    except (OSError, RuntimeError):
        return None


class MlflowProject(pulumi.ComponentResource):
    """One MLflow project: schema + user, S3 prefix policy, connection secret."""

    outputs: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        args: MlflowProjectArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        p = args.project
        ids = validate_name(p.name)
        stack = args.stack
        child = pulumi.ResourceOptions(parent=self)

        self.password = random.RandomPassword(
            f"{name}-password",
            random.RandomPasswordArgs(
                length=32,
                special=True,
                override_special=PASSWORD_SPECIALS,
                min_lower=2,
                min_upper=2,
                min_numeric=2,
                min_special=1,
                keepers={"version": str(p.password_version)},
            ),
            opts=child,
        )
        password: pulumi.Output[str] = pulumi.Output.secret(self.password.result)
        self.current_password = password

        # The schema needs a database that accepts statements and the admin secret the Data
        # API reads: forward the component's own depends_on (children do not inherit it).
        self.schema = MysqlSchema(
            f"{name}-schema",
            MysqlSchemaArgs(
                project=p.name,
                password=password,
                cluster_arn=args.cluster_arn,
                admin_secret_arn=args.admin_secret_arn,
                drop_data_on_remove=p.drop_data_on_remove,
                adopt_existing_schema=p.adopt_existing_schema,
                aws_profile=args.aws_profile,
                assume_roles=list(args.assume_roles),
                max_user_connections=args.max_user_connections,
                # A rotation keeps the previous password valid until the servers using it are
                # gone (project-<p>-password-retirement, __main__.py).
                retain_previous_password=True,
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=opts.depends_on if opts is not None else None,
                # Removing a project only drops its user (data stays), so the schema is left
                # unprotected; but on a protected stack a project that may DROP its data
                # must be unprotected by hand first (`pulumi state unprotect`).
                protect=True if (args.protect and p.drop_data_on_remove) else None,
                # retain_on_delete stays off: deleting must revoke the user's access.
            ),
        )

        tags = {"mlflow-aws:project": p.name, "mlflow-aws:stack": stack}
        self.server_role = aws.iam.Role(
            f"{name}-server-role",
            aws.iam.RoleArgs(
                name_prefix=role_name_prefix(f"mlflow-aws-{p.name}-"),
                description=f"MLflow server of project {p.name} (stack {stack}): its S3 prefix",
                assume_role_policy=pulumi.Output.from_input(args.account_id).apply(
                    lambda account: json.dumps(server_trust_policy(account, args.partition))
                ),
                max_session_duration=SERVER_ROLE_MAX_SESSION_SECONDS,
                tags=tags,
            ),
            opts=child,
        )
        # The prefix, as JSON: the server role's policy, and the central tasks' task role's.
        self.server_policy: pulumi.Output[str] = pulumi.Output.from_input(args.bucket_arn).apply(
            lambda arn: json.dumps(server_policy_document(arn, ids.s3_prefix))
        )
        self.server_role_policy = aws.iam.RolePolicy(
            f"{name}-server-role-policy",
            aws.iam.RolePolicyArgs(role=self.server_role.id, policy=self.server_policy),
            opts=child,
        )
        self.server_role_arn: pulumi.Output[str] = self.server_role.arn

        self.secret = aws.secretsmanager.Secret(
            f"{name}-connection",
            aws.secretsmanager.SecretArgs(
                name=connection_secret_name(stack, p.name),
                description=f"MLflow connection bundle of project {p.name} (stack {stack})",
                # Always 0: the bundle is rebuilt from state, and a 30-day recovery window
                # would block re-adding a removed project (its fixed name stays taken).
                recovery_window_in_days=0,
                tags=tags,
            ),
            opts=child,
        )

        self.policy = aws.iam.Policy(
            f"{name}-policy",
            aws.iam.PolicyArgs(
                name_prefix=f"mlflow-aws-{stack}-{p.name}-"[:96],
                description=f"MLflow project {p.name} (stack {stack}): its S3 prefix, its "
                "connection secret, its server role, pulling the server image",
                policy=pulumi.Output.all(
                    args.bucket_arn, self.secret.arn, args.repository_arn, self.server_role.arn
                ).apply(
                    lambda v: json.dumps(policy_document(v[0], ids.s3_prefix, v[1], v[2], v[3]))
                ),
                tags=tags,
            ),
            opts=child,
        )
        self.group_attachments = [
            aws.iam.GroupPolicyAttachment(
                f"{name}-group-{group}",
                aws.iam.GroupPolicyAttachmentArgs(group=group, policy_arn=self.policy.arn),
                opts=child,
            )
            for group in p.iam_groups
        ]
        self.role_attachments = [
            aws.iam.RolePolicyAttachment(
                f"{name}-role-{role}",
                aws.iam.RolePolicyAttachmentArgs(role=role, policy_arn=self.policy.arn),
                opts=child,
            )
            for role in p.iam_roles
            # sso:<PermissionSet>: Identity Center's roles take policies from the permission set
            if not role.startswith("sso:")
        ]

        artifact_root = pulumi.Output.concat("s3://", args.bucket_name, "/", ids.s3_prefix)
        self.artifact_root: pulumi.Output[str] = artifact_root
        uri = pulumi.Output.all(
            self.schema.username, password, args.db_endpoint, self.schema.schema
        ).apply(lambda v: backend_store_uri(v[0], v[1], v[2], args.db_port, v[3]))
        region = (
            args.region
            if args.region is not None
            else self.secret.arn.apply(lambda arn: arn.split(":")[3])
        )
        mlflow_version = args.mlflow_version or _default_mlflow_version()

        def bundle(resolved: dict[str, Any]) -> str:
            return ConnectionBundle(
                project=p.name,
                stack=stack,
                database_port=args.db_port,
                mlflow_version=mlflow_version,
                tracking_uri=args.tracking_uri,
                **resolved,
            ).to_json()

        self.secret_version = aws.secretsmanager.SecretVersion(
            f"{name}-connection-version",
            aws.secretsmanager.SecretVersionArgs(
                secret_id=self.secret.id,
                secret_string=pulumi.Output.secret(
                    pulumi.Output.all(
                        database=self.schema.schema,
                        username=self.schema.username,
                        password=password,
                        backend_store_uri=uri,
                        artifact_root=artifact_root,
                        database_endpoint=args.db_endpoint,
                        region=region,
                        image_uri=args.image_uri,
                        database_ca_bundle=args.database_ca_bundle,
                        server_role_arn=self.server_role.arn,
                    ).apply(bundle)
                ),
            ),
            # published once the user exists with this password
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.schema]),
        )

        self.outputs = pulumi.Output.all(
            self.schema.schema,
            self.schema.username,
            artifact_root,
            self.secret.arn,
            self.policy.arn,
            self.server_role.arn,
        ).apply(
            lambda v: {
                **dict(zip(OUTPUT_KEYS, v, strict=True)),
                **({"TrackingUri": args.tracking_uri} if args.tracking_uri else {}),
            }
        )
        self.register_outputs({"outputs": self.outputs})
