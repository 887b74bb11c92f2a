"""The matrix of stack configs the AWS-constraint checks and the ordering checks run the
program over (tests/support/aws_constraints.py holds the rules); ``context`` runs one, once."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from tests.support.aws_constraints import Context
from tests.support.pulumi_mocks import (
    CUSTOM_VPC_ID,
    PRIVATE_SUBNETS,
    PUBLIC_SUBNETS,
    MockAccount,
    run_program,
)

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "mlflow.example.com"
ZONE = "Z0123456789ABCDEFGHIJ"
CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
SERVER = {"enabled": True, "domainName": DOMAIN, "hostedZoneId": ZONE}
LONG_NAMES = ["a-very-long-project-name", "b-very-long-project-nam1", "c-very-long-project-na12"]
LONG_DOMAIN = "tracking-service-of-the-data-science-platform.eu.example.com"  # 59


def dev_stack() -> dict[str, Any]:
    """The committed example stack file's config, as `pulumi up` would see it."""
    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    return {k: v for k, v in config.items() if k.startswith("mlflow-aws:")}


def fifty_projects() -> list[dict[str, Any]]:
    # Five groups of ten: IAM attaches at most ten managed policies to a group.
    return [
        {
            "name": f"team{i // 10}-project{i}",
            "iamGroups": [f"group-{i // 10}"],
            "iamRoles": [f"ci-{i // 10}"],
        }
        for i in range(50)
    ]


MATRIX: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "empty": ({}, "dev", {}),
    "default (Pulumi.dev.yaml)": (dev_stack(), "dev", {}),
    "server on": (
        {
            "mlflow-aws:projects": [
                {"name": "churn", "iamRoles": ["ci"], "iamGroups": ["ds"]},
                "fraud",
            ],
            "mlflow-aws:server": SERVER,
        },
        "dev",
        {},
    ),
    "server on with the AI Gateway": (
        {"mlflow-aws:projects": ["churn"], "mlflow-aws:server": {**SERVER, "aiGateway": True}},
        "dev",
        {},
    ),
    "server on, an account that never ran ECS": (
        {"mlflow-aws:projects": ["churn"], "mlflow-aws:server": SERVER},
        "dev",
        {"ecs_service_linked_role": None},
    ),
    "custom VPC, own certificate, tasks behind a NAT": (
        {
            "mlflow-aws:projects": ["churn", "fraud"],
            "mlflow-aws:db": {"vpcId": CUSTOM_VPC_ID, "subnetIds": PRIVATE_SUBNETS},
            "mlflow-aws:server": {
                "enabled": True,
                "domainName": DOMAIN,
                "certificateArn": CERT,
                "subnetIds": PUBLIC_SUBNETS,
                "taskSubnetIds": PRIVATE_SUBNETS,
                "allowedCidrs": ["203.0.113.0/24"],
                "cpu": 1024,
                "memory": 4096,
            },
        },
        "staging",
        {},
    ),
    "internal server in private subnets": (
        {
            "mlflow-aws:projects": ["churn"],
            "mlflow-aws:db": {"subnetIds": PRIVATE_SUBNETS},
            "mlflow-aws:server": {
                "enabled": True,
                "domainName": DOMAIN,
                "certificateArn": CERT,
                "internal": True,
            },
        },
        "dev",
        {},
    ),
    "50 projects, protected": (
        {"mlflow-aws:projects": fifty_projects(), "mlflow-aws:server": SERVER},
        "prod",
        {},
    ),
    "long names": (
        {
            "mlflow-aws:projects": [
                {"name": n, "iamGroups": ["data-science-platform-users"]} for n in LONG_NAMES
            ],
            "mlflow-aws:server": {**SERVER, "domainName": LONG_DOMAIN},
            "mlflow-aws:db": {
                "allowedCidrs": ["198.51.100.0/24"],
                "minCapacity": 0.5,
                "maxCapacity": 256,
                "backupRetentionDays": 35,
            },
        },
        "production-europe-west-data-science-platform.v2",
        {},
    ),
    "scheduled gc, alarms to an email": (
        {
            "mlflow-aws:projects": ["churn", "fraud"],
            "mlflow-aws:server": SERVER,
            "mlflow-aws:gc": {
                "enabled": True,
                "schedule": "rate(12 hours)",
                "traceRetention": "90d",
            },
            "mlflow-aws:alarms": {"email": "ops@example.com"},
        },
        "dev",
        {},
    ),
    "alarms to an existing topic": (
        {
            "mlflow-aws:projects": ["churn"],
            "mlflow-aws:server": SERVER,
            "mlflow-aws:alarms": {"topicArn": "arn:aws:sns:eu-west-1:123456789012:ops"},
        },
        "dev",
        {},
    ),
    "laptops outside the VPC (public database)": (
        {"mlflow-aws:projects": ["churn"], "mlflow-aws:db": {"allowedCidrs": ["203.0.113.0/24"]}},
        "dev",
        {},
    ),
}


@functools.cache
def context(name: str) -> Context:
    config, stack, account = MATRIX[name]
    mock_account = MockAccount(**account)
    run = run_program(json.loads(json.dumps(config)), stack=stack, account=mock_account)
    return Context(run, mock_account)
