"""The scheduled gc (``gc`` in the stack config, off by default; the central server only).

``GcSchedule`` gives each project:

* ``<name>-<p>-task``: an ECS task definition of the stack's image whose command is ``gc``
  (``docker/entrypoint.sh gc`` -> ``python -m mlflow_aws.gc``), configured by
  ``MLFLOW_AWS_GC_OLDER_THAN`` / ``MLFLOW_AWS_GC_TRACE_RETENTION``; the backend store URI and the
  CA bundle come from the project's connection secret, as for the server. Its task role is the
  project's server role (read and delete under the project's prefix only, nothing else); its
  execution role the service's (pull the image, read that one secret, write its logs, to the
  project's log group under the stream prefix ``gc``);
* ``<name>-<p>-scheduler-role``: what EventBridge Scheduler runs the task as: trusted by
  ``scheduler.amazonaws.com`` for this account only (``aws:SourceAccount``), allowed
  ``ecs:RunTask`` of that task definition family in the stack's cluster and ``iam:PassRole``
  of exactly its two roles to ECS tasks;
* ``<name>-<p>-schedule``: the EventBridge Scheduler schedule (``gc.schedule``, UTC) whose
  target runs one Fargate task in the service's subnets and security groups.

A failed run exits 1 and logs ``mlflow-aws gc: failed``; infra/alarms.py turns that line into
the "gc failed" alarm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import GcConfig, ServerConfig, stack_slug
from infra.containers import container_secrets, fargate_task_definition_args, task_container
from infra.iam import ECS_TASKS, role_name_prefix, service_trust_policy
from infra.project_service import ServiceParts
from mlflow_aws import environment as env_names

SCHEDULE_NAME_MAX = 64  # EventBridge Scheduler: 1-64 of [0-9a-zA-Z-_.]
GC_STREAM_PREFIX = "gc"
# Each failure line of python -m mlflow_aws.gc (mlflow_aws/gc/__main__.py).
FAILURE_PATTERN = '?"mlflow-aws gc: failed" ?"mlflow-aws gc: not started"'


def schedule_name(stack: str, project: str) -> str:
    return f"mlflow-aws-{stack_slug(stack)}-{project}-gc"[:SCHEDULE_NAME_MAX].rstrip("-")


def gc_family(stack: str, project: str) -> str:
    return f"mlflow-aws-{stack_slug(stack)}-{project}-gc"


def gc_environment(project: str, artifact_root: str, region: str, gc: GcConfig) -> dict[str, str]:
    env = {
        "MLFLOW_ARTIFACTS_DESTINATION": artifact_root,
        env_names.PROJECT: project,
        env_names.GC_OLDER_THAN: gc.older_than,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    if gc.trace_retention:
        env[env_names.GC_TRACE_RETENTION] = gc.trace_retention
    return env


def gc_container_definitions(
    project: str,
    *,
    image_uri: str,
    secret_arn: str,
    log_group: str,
    region: str,
    artifact_root: str,
    gc: GcConfig,
) -> str:
    container = task_container(
        image_uri=image_uri,
        command=["gc"],
        environment=gc_environment(project, artifact_root, region, gc),
        secrets=container_secrets(secret_arn),
        log_group=log_group,
        region=region,
        stream_prefix=GC_STREAM_PREFIX,
    )
    return json.dumps([container], sort_keys=True)


def scheduler_trust_policy(account_id: str) -> str:
    return service_trust_policy(account_id, "scheduler.amazonaws.com")


def scheduler_policy(
    family_arn_prefix: str, cluster_arn: str, execution_role_arn: str, task_role_arn: str
) -> str:
    """Run that one task definition family in that cluster, passing exactly its two roles."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "RunTheGcTask",
                    "Effect": "Allow",
                    "Action": ["ecs:RunTask"],
                    "Resource": [f"{family_arn_prefix}:*"],
                    "Condition": {"ArnEquals": {"ecs:cluster": cluster_arn}},
                },
                {
                    "Sid": "PassItsRoles",
                    "Effect": "Allow",
                    "Action": ["iam:PassRole"],
                    "Resource": [execution_role_arn, task_role_arn],
                    "Condition": {"StringEquals": {"iam:PassedToService": ECS_TASKS}},
                },
            ],
        },
        sort_keys=True,
    )


@dataclass
class GcScheduleArgs:
    stack: str
    gc: GcConfig
    server: ServerConfig
    projects: Mapping[str, ServiceParts]
    connection_secret_arns: Mapping[str, pulumi.Input[str]]
    artifact_roots: Mapping[str, pulumi.Input[str]]
    image_uri: pulumi.Input[str]
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    cluster_arn: pulumi.Input[str]
    task_subnets: Sequence[str]
    task_security_groups: Sequence[pulumi.Input[str]]
    assign_public_ip: bool
    tags: Mapping[str, str] = field(default_factory=dict)


class GcSchedule(pulumi.ComponentResource):
    schedule_names: dict[str, pulumi.Output[str]]
    task_definition_families: dict[str, str]

    def __init__(
        self, name: str, args: GcScheduleArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-aws:infra:GcSchedule", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.schedule_names = {}
        self.task_definition_families = {}
        for p, parts in args.projects.items():
            tags = {**args.tags, "mlflow-aws:project": p, "mlflow-aws:component": "gc"}
            family = gc_family(args.stack, p)
            self.task_definition_families[p] = family
            definitions = pulumi.Output.all(
                args.image_uri,
                args.connection_secret_arns[p],
                parts.log_group_name,
                args.region,
                args.artifact_roots[p],
            ).apply(self._definitions(p, args.gc))
            task = aws.ecs.TaskDefinition(
                f"{name}-{p}-task",
                fargate_task_definition_args(
                    family=family,
                    cpu=args.server.cpu,
                    memory=args.server.memory,
                    execution_role_arn=parts.execution_role_arn,
                    task_role_arn=parts.task_role_arn,
                    container_definitions=definitions,
                    tags=tags,
                ),
                child,
            )
            role = aws.iam.Role(
                f"{name}-{p}-scheduler-role",
                aws.iam.RoleArgs(
                    name_prefix=role_name_prefix(f"mlflow-aws-{p}-gc-"),
                    description=f"EventBridge Scheduler: run project {p}'s gc (stack {args.stack})",
                    assume_role_policy=pulumi.Output.from_input(args.account_id).apply(
                        scheduler_trust_policy
                    ),
                    tags=tags,
                ),
                child,
            )
            family_arn = task.arn.apply(lambda arn: arn.rsplit(":", 1)[0])
            policy = aws.iam.RolePolicy(
                f"{name}-{p}-scheduler-policy",
                aws.iam.RolePolicyArgs(
                    role=role.id,
                    policy=pulumi.Output.all(
                        family_arn, args.cluster_arn, parts.execution_role_arn, parts.task_role_arn
                    ).apply(lambda v: scheduler_policy(v[0], v[1], v[2], v[3])),
                ),
                child,
            )
            schedule = aws.scheduler.Schedule(
                f"{name}-{p}-schedule",
                aws.scheduler.ScheduleArgs(
                    name=schedule_name(args.stack, p),
                    description=f"mlflow-aws gc of project {p} (stack {args.stack})",
                    schedule_expression=args.gc.schedule,
                    schedule_expression_timezone="UTC",
                    flexible_time_window=aws.scheduler.ScheduleFlexibleTimeWindowArgs(mode="OFF"),
                    target=aws.scheduler.ScheduleTargetArgs(
                        arn=args.cluster_arn,
                        role_arn=role.arn,
                        ecs_parameters=aws.scheduler.ScheduleTargetEcsParametersArgs(
                            task_definition_arn=task.arn,
                            launch_type="FARGATE",
                            task_count=1,
                            network_configuration=aws.scheduler.ScheduleTargetEcsParametersNetworkConfigurationArgs(
                                subnets=list(args.task_subnets),
                                security_groups=list(args.task_security_groups),
                                assign_public_ip=args.assign_public_ip,
                            ),
                            tags={"mlflow-aws:project": p, "mlflow-aws:component": "gc"},
                        ),
                        # A run that fails is not retried: the next one comes on schedule, and
                        # the alarm says it failed.
                        retry_policy=aws.scheduler.ScheduleTargetRetryPolicyArgs(
                            maximum_retry_attempts=0
                        ),
                    ),
                ),
                pulumi.ResourceOptions(parent=self, depends_on=[policy]),
            )
            self.schedule_names[p] = schedule.name
        self.register_outputs({"schedule_names": self.schedule_names})

    @staticmethod
    def _definitions(project: str, gc: GcConfig) -> Callable[[list[Any]], str]:
        def build(v: list[Any]) -> str:
            return gc_container_definitions(
                project,
                image_uri=v[0],
                secret_arn=v[1],
                log_group=v[2],
                region=v[3],
                artifact_root=v[4],
                gc=gc,
            )

        return build
