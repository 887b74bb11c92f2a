"""IAM policy documents, typed, and the statements more than one principal needs."""

from __future__ import annotations

from typing import TypedDict

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
