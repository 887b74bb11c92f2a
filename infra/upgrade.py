"""The MLflow upgrade gate of each central service (projects/upgrade_provider.py).

Per project, ``tracking-<p>-upgrade`` stands between the project's task definition and its ECS
service: the service depends on it, so a new ``mlflowVersion`` reaches the service only after
the gate stopped the old tasks, found no other client of the project's database, took a
restorable point and ran one migration task of the new image. Settings: ``upgrade`` in the
stack config (infra/config.py, ``UpgradeConfig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.config import UpgradeConfig
from projects.upgrade_provider import MlflowUpgrade, MlflowUpgradeArgs


@dataclass
class UpgradeGate:
    """What every project's gate shares: the target MLflow and how to reach the database."""

    mlflow_version: str
    database_cluster_arn: pulumi.Input[str]
    admin_secret_arn: pulumi.Input[str]
    settings: UpgradeConfig = field(default_factory=UpgradeConfig)
    aws_profile: str | None = None
    assume_roles: Sequence[dict[str, Any]] = ()


def upgrade_gate(
    name: str,
    *,
    project: str,
    stack: str,
    gate: UpgradeGate,
    ecs_cluster_arn: pulumi.Input[str],
    task_definition_arn: pulumi.Input[str],
    subnets: Sequence[str],
    security_groups: Sequence[pulumi.Input[str]],
    assign_public_ip: bool,
    min_tasks: int,
    opts: pulumi.ResourceOptions,
) -> MlflowUpgrade:
    return MlflowUpgrade(
        name,
        MlflowUpgradeArgs(
            project=project,
            stack=stack,
            mlflow_version=gate.mlflow_version,
            cluster_arn=gate.database_cluster_arn,
            admin_secret_arn=gate.admin_secret_arn,
            ecs_cluster_arn=ecs_cluster_arn,
            task_definition_arn=task_definition_arn,
            subnets=subnets,
            security_groups=security_groups,
            assign_public_ip=assign_public_ip,
            min_tasks=min_tasks,
            ignore_connected_clients=gate.settings.ignore_connected_clients,
            snapshot=gate.settings.snapshot,
            aws_profile=gate.aws_profile,
            assume_roles=[dict(r) for r in gate.assume_roles],
        ),
        opts,
    )
