"""IAM policy documents, typed, and the statements more than one principal needs."""

from __future__ import annotations

import json
from typing import TypedDict

from mlflow_aws.auth.sign_in_app import SSO_ROLE_PATH

Condition = dict[str, dict[str, list[str]]]


class Statement(TypedDict, total=False):
    Sid: str
    Effect: str
    Action: list[str]
    Resource: list[str]
    Condition: Condition


class PolicyDocument(TypedDict):
    Version: str
    Statement: list[Statement]


# A role name is 1-64 characters; for a name_prefix the provider appends a 26-character unique
# suffix, so the prefix keeps at most 38.
ROLE_NAME_PREFIX_MAX = 38


def role_name_prefix(prefix: str) -> str:
    """A role's ``name_prefix``, cut to what IAM's 64-character name leaves for it."""
    return prefix[:ROLE_NAME_PREFIX_MAX]


ECS_TASKS = "ecs-tasks.amazonaws.com"  # the service principal of ECS tasks (aws-cn: its own)

PULL_ACTIONS = [
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchCheckLayerAvailability",
]


def image_pull_statements(repository_arn: str) -> list[Statement]:
    """Log in to ECR and pull the server image: teammates' helpers and the central tasks alike."""
    return [
        {
            # AWS defines no resource for this action: "*" is the only valid value.
            "Sid": "EcrLogin",
            "Effect": "Allow",
            "Action": ["ecr:GetAuthorizationToken"],
            "Resource": ["*"],
        },
        {
            "Sid": "PullServerImage",
            "Effect": "Allow",
            "Action": list(PULL_ACTIONS),
            "Resource": [repository_arn],
        },
    ]


# -- the central service's roles (infra/project_service.py) ---------------------------------


def group_lookup_policy(
    account_id: str, partition: str = "aws", groups: bool = True, sso: bool = False
) -> str:
    """The sign-in app asks IAM which groups an IAM user is in (iamGroups) and, for
    ``sso:<PermissionSet>`` entries of iamRoles, the path of an Identity Center role (only those
    roles: anyone may name a role AWSReservedSSO_…, only Identity Center puts it there)."""
    statements: list[Statement] = []
    if groups:
        statements.append({
            "Sid": "AllowedGroupsOfCallers",
            "Effect": "Allow",
            "Action": ["iam:ListGroupsForUser"],
            "Resource": [f"arn:{partition}:iam::{account_id}:user/*"],
        })  # fmt: skip
    if sso:
        statements.append({
            "Sid": "IdentityCenterRolePaths",
            "Effect": "Allow",
            "Action": ["iam:GetRole"],
            "Resource": [f"arn:{partition}:iam::{account_id}:role{SSO_ROLE_PATH}*"],
        })  # fmt: skip
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def execution_role_policy(
    repository_arn: str, secret_arn: str, log_group_arn: str, gateway_kek_arn: str | None = None
) -> str:
    """Pull the image, read the project's connection secret (and its gateway passphrase, with
    server.aiGateway), write the project's logs."""
    document: PolicyDocument = {
        "Version": "2012-10-17",
        "Statement": [
            *image_pull_statements(repository_arn),
            {
                "Sid": "ReadConnectionSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": [secret_arn, *([gateway_kek_arn] if gateway_kek_arn else [])],
            },
            {
                "Sid": "WriteLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [log_group_arn, f"{log_group_arn}:*"],
            },
        ],
    }
    return json.dumps(document, sort_keys=True)


def service_trust_policy(account_id: str, principal: str) -> str:
    """An AWS service may assume the role on behalf of this account only (aws:SourceAccount)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": principal},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
                }
            ],
        },
        sort_keys=True,
    )


def execution_trust_policy(account_id: str, principal: str = ECS_TASKS) -> str:
    """ECS may start tasks with the execution role for this account only."""
    return service_trust_policy(account_id, principal)


def task_trust_policy(
    account_id: str, region: str, partition: str = "aws", principal: str = ECS_TASKS
) -> str:
    """Only ECS tasks of this account and region may become a project's task role; the
    conditions are the confused-deputy guard the ECS task IAM role documentation gives
    (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "TasksOfThisAccount",
                    "Effect": "Allow",
                    "Principal": {"Service": principal},
                    "Action": "sts:AssumeRole",
                    "Condition": {
                        "ArnLike": {
                            "aws:SourceArn": f"arn:{partition}:ecs:{region}:{account_id}:*"
                        },
                        "StringEquals": {"aws:SourceAccount": account_id},
                    },
                }
            ],
        },
        sort_keys=True,
    )
