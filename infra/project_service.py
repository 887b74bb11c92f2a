"""One project's service on the central cluster: ``ProjectService``, a child of ``TrackingService``.

For project ``<p>`` (children named ``tracking-<p>-…``):

* ``-tg`` and ``-rule``: its target group (health checks on ``/<p>/health``, which never touches
  the database, so Aurora still pauses) and the HTTPS listener's rule for ``/<p>`` and ``/<p>/*``;
* ``-logs``: its log group, with a retention period;
* ``-execution-role`` (pull the image, read the project's connection secret and its gateway
  passphrase, write the logs) and ``-task-role``, the tasks' own (the project's S3 prefix, and
  the sign-in's group lookup when it allows groups or Identity Center roles; only ECS tasks of
  this account and region may assume it, never a teammate);
* ``-sign-in-marker``: the object a token's signed read proves access to (mlflow_aws/auth);
* ``-task``: the task definition (infra/containers.py builds its container); the backend store
  URI and the database's CA reach the container as ECS ``secrets``, never as values;
* ``-upgrade``: the MLflow upgrade gate (infra/upgrade.py) the service waits for;
* ``-service``: the Fargate service (circuit breaker with rollback, a steady state before
  ``pulumi up`` succeeds) and its scaling on requests per target and on CPU.

Identity: these resources were children of ``TrackingService`` before this component existed;
each carries ``Alias(parent=<the TrackingService>)`` so an existing stack keeps them (no new load
balancer target group, no new ECS service). tests/test_service_identity.py checks every old URN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra.config import ServerConfig, stack_slug
from infra.containers import (
    CONTAINER_PORT,
    WRITABLE_PATHS,
    fargate_task_definition_args,
    marker_location,
    service_container_definitions,
)
from infra.iam import (
    ECS_TASKS,
    execution_role_policy,
    execution_trust_policy,
    group_lookup_policy,
    role_name_prefix,
    task_trust_policy,
)
from infra.upgrade import UpgradeGate, upgrade_gate
from mlflow_aws.auth.sign_in_app import SSO_ENTRY
from mlflow_aws.start_timing import health_check_grace_seconds, rollout_seconds
from mlflow_aws.task_container import CONTAINER_NAME, log_group_name

LOG_RETENTION_DAYS = 30
DEREGISTRATION_DELAY_SECONDS = 60
REQUESTS_PER_TASK_PER_MINUTE = 1200.0  # ~20 requests/s: a 0.5 vCPU task serves ~2x that
CPU_TARGET_PERCENT = 60.0
SCALE_OUT_COOLDOWN_SECONDS = 60
SCALE_IN_COOLDOWN_SECONDS = 300
# Derived from server.env's migration lock wait (mlflow_aws/start_timing.py): a task waiting for
# another's migration is not yet failing its health checks, and `pulumi up` waits for the rollout.
HEALTH_CHECK_GRACE_SECONDS = health_check_grace_seconds()
ROLLOUT_TIMEOUT_SECONDS = rollout_seconds()
ROLLOUT_TIMEOUT = f"{-(-ROLLOUT_TIMEOUT_SECONDS // 60)}m"


def path_patterns(project: str) -> list[str]:
    """The project's paths: its prefix alone and everything under it (``/churn2`` is not
    under ``/churn``)."""
    return [f"/{project}", f"/{project}/*"]


@dataclass
class ServiceProject:
    """What the service of one project needs from its ``MlflowProject``."""

    name: str
    connection_secret_arn: pulumi.Input[str]
    # The policy of the tasks' own role (only ECS may assume it): the project's S3 prefix,
    # what the project's server role holds (projects/project.py).
    task_policy: pulumi.Input[str]
    artifact_root: pulumi.Input[str]  # s3://<bucket>/<project>
    iam_roles: tuple[str, ...] = ()
    iam_groups: tuple[str, ...] = ()
    # What a task reads when it starts: the connection secret's value (written once the
    # project's MySQL user exists). The service waits for them.
    ready: Sequence[pulumi.Resource] = ()
    # The connection secret's current version id: part of the task definition (a rotation
    # rolls the tasks); None leaves it out (tests of other parts).
    connection_version: pulumi.Input[str] | None = None


@dataclass
class ServiceParts:
    """What a project's other central jobs (the scheduled gc, the alarms) share with its
    service: the roles, the logs, the target group."""

    execution_role_arn: pulumi.Output[str]
    task_role_arn: pulumi.Input[str]  # the tasks' own role (only ECS may assume it): the prefix
    log_group_name: pulumi.Output[str]
    log_group_arn: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    service_name: pulumi.Output[str]


@dataclass
class ProjectServiceArgs:
    """What one project's service takes from the shared ``TrackingService``."""

    stack: str
    server: ServerConfig
    project: ServiceProject
    domain: str  # server.domainName
    rule_priority: int  # its listener rule's (infra/tracking_service.py rule_priorities)
    image_uri: pulumi.Input[str]
    repository_arn: pulumi.Input[str]
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    vpc_id: str
    task_subnets: Sequence[str]
    assign_public_ip: bool
    cluster_arn: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    listener_arn: pulumi.Input[str]  # the load balancer's HTTPS listener
    load_balancer_arn_suffix: pulumi.Input[str]
    # The tasks' security groups: the load balancer's tasks group and the database's clients.
    security_groups: Sequence[pulumi.Input[str]]
    tags: Mapping[str, str] = field(default_factory=dict)
    partition: str = "aws"
    ecs_tasks_principal: str = ECS_TASKS
    # What must exist before the first tasks (the ECS service-linked role of a new account).
    account_ready: Sequence[pulumi.Resource] = ()
    # An mlflowVersion change stops the writers and migrates once (infra/upgrade.py); None
    # leaves the gate out (tests of other parts).
    upgrade: UpgradeGate | None = None


class ProjectService(pulumi.ComponentResource):
    service: aws.ecs.Service  # steady once created
    service_name: pulumi.Output[str]
    parts: ServiceParts  # what the project's gc task and alarms use
    upgrade_report: pulumi.Output[Any] | None  # the last upgrade's steps (None: no gate)

    def __init__(
        self,
        name: str,
        args: ProjectServiceArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        previous_parent: pulumi.Resource | None = None,
    ) -> None:
        """``name``: ``<tracking>-<project>``; ``previous_parent``: the ``TrackingService``
        whose direct children these resources were before (their aliases)."""
        super().__init__("mlflow-aws:infra:ProjectService", name, None, opts)
        server = args.server
        project = args.project
        p = project.name
        aliases = [pulumi.Alias(parent=previous_parent)] if previous_parent is not None else []
        child = pulumi.ResourceOptions(parent=self, aliases=aliases)
        tags = {**args.tags, "mlflow-aws:project": p}

        target_group = aws.lb.TargetGroup(
            f"{name}-tg",
            aws.lb.TargetGroupArgs(
                name_prefix="mlflow",
                port=CONTAINER_PORT,
                protocol="HTTP",
                target_type="ip",  # awsvpc tasks
                vpc_id=args.vpc_id,
                deregistration_delay=DEREGISTRATION_DELAY_SECONDS,
                health_check=aws.lb.TargetGroupHealthCheckArgs(
                    enabled=True,
                    path=f"/{p}/health",  # MLflow's health: no database query
                    protocol="HTTP",
                    port="traffic-port",
                    matcher="200",
                    interval=30,
                    timeout=5,
                    healthy_threshold=2,
                    unhealthy_threshold=3,
                ),
                tags=tags,
            ),
            child,
        )
        rule = aws.lb.ListenerRule(
            f"{name}-rule",
            aws.lb.ListenerRuleArgs(
                listener_arn=args.listener_arn,
                priority=args.rule_priority,
                actions=[
                    aws.lb.ListenerRuleActionArgs(type="forward", target_group_arn=target_group.arn)
                ],
                conditions=[
                    aws.lb.ListenerRuleConditionArgs(
                        path_pattern=aws.lb.ListenerRuleConditionPathPatternArgs(
                            values=path_patterns(p)
                        )
                    )
                ],
                tags=tags,
            ),
            child,
        )

        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            aws.cloudwatch.LogGroupArgs(
                name=log_group_name(args.stack, p),
                retention_in_days=LOG_RETENTION_DAYS,
                tags=tags,
            ),
            child,
        )
        execution_role = aws.iam.Role(
            f"{name}-execution-role",
            aws.iam.RoleArgs(
                name_prefix=role_name_prefix(f"mlflow-aws-{p}-exec-"),
                description=f"ECS: start project {p}'s MLflow tasks (stack {args.stack})",
                assume_role_policy=pulumi.Output.from_input(args.account_id).apply(
                    lambda account: execution_trust_policy(account, args.ecs_tasks_principal)
                ),
                tags=tags,
            ),
            child,
        )
        gateway_ready: list[pulumi.Resource] = []
        gateway_kek_arn: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if server.ai_gateway:
            passphrase = random.RandomPassword(
                f"{name}-gateway-kek-passphrase",
                random.RandomPasswordArgs(length=48, special=False),
                child,
            )
            kek = aws.secretsmanager.Secret(
                f"{name}-gateway-kek",
                aws.secretsmanager.SecretArgs(
                    name_prefix=f"mlflow-aws-{stack_slug(args.stack)}-{p}-gateway-kek-"[:128],
                    description=f"MLflow AI Gateway KEK passphrase of project {p} "
                    f"(stack {args.stack}): encrypts the gateway's stored API keys",
                    tags=tags,
                ),
                child,
            )
            kek_version = aws.secretsmanager.SecretVersion(
                f"{name}-gateway-kek-version",
                aws.secretsmanager.SecretVersionArgs(
                    secret_id=kek.id,
                    secret_string=pulumi.Output.secret(
                        passphrase.result.apply(lambda v: json.dumps({"Passphrase": v}))
                    ),
                ),
                child,
            )
            gateway_ready.append(kek_version)
            gateway_kek_arn = kek.arn
        execution_policy = aws.iam.RolePolicy(
            f"{name}-execution-policy",
            aws.iam.RolePolicyArgs(
                role=execution_role.id,
                policy=pulumi.Output.all(
                    args.repository_arn, project.connection_secret_arn, log_group.arn,
                    gateway_kek_arn,
                ).apply(lambda v: execution_role_policy(v[0], v[1], v[2], v[3])),
            ),
            child,
        )  # fmt: skip

        # The tasks' own role: the project's prefix, plus (allowed groups) the sign-in's group
        # lookup. Only ECS can assume it; teammates become the project's server role, which
        # holds the prefix alone, so they never get the lookup.
        task_role = aws.iam.Role(
            f"{name}-task-role",
            aws.iam.RoleArgs(
                name_prefix=role_name_prefix(f"mlflow-aws-{p}-task-"),
                description=f"ECS: project {p}'s MLflow tasks (stack {args.stack}): its S3 prefix",
                assume_role_policy=pulumi.Output.all(args.account_id, args.region).apply(
                    lambda v: task_trust_policy(
                        v[0], v[1], args.partition, args.ecs_tasks_principal
                    )
                ),
                tags=tags,
            ),
            child,
        )
        task_policies = [
            aws.iam.RolePolicy(
                f"{name}-task-policy",
                aws.iam.RolePolicyArgs(role=task_role.id, policy=project.task_policy),
                child,
            )
        ]
        sso = any(role.startswith(SSO_ENTRY) for role in project.iam_roles)
        if project.iam_groups or sso:
            # The sign-in app reads group membership for the allowed groups (and Identity
            # Center roles' paths): on the task role only, never on the role teammates become.
            task_policies.append(
                aws.iam.RolePolicy(
                    f"{name}-group-lookup",
                    aws.iam.RolePolicyArgs(
                        role=task_role.id,
                        policy=pulumi.Output.from_input(args.account_id).apply(
                            lambda account: group_lookup_policy(
                                account, args.partition, bool(project.iam_groups), sso
                            )
                        ),
                    ),
                    child,
                )
            )

        definitions = pulumi.Output.all(
            args.image_uri,
            project.connection_secret_arn,
            log_group.name,
            args.region,
            project.artifact_root,
            project.connection_version,
            gateway_kek_arn,
        ).apply(
            lambda v: service_container_definitions(
                p,
                image_uri=v[0],
                secret_arn=v[1],
                log_group=v[2],
                domain=args.domain,
                region=v[3],
                artifact_root=v[4],
                iam_roles=project.iam_roles,
                iam_groups=project.iam_groups,
                connection_version=v[5],
                gateway_kek_arn=v[6],
            )
        )
        # What a token's marker read reads (mlflow_aws/auth/token.py): under the project's prefix,
        # so exactly the holders of the project's policy (and its server role) may read it.
        location = pulumi.Output.from_input(project.artifact_root).apply(marker_location)
        marker = aws.s3.BucketObjectv2(
            f"{name}-sign-in-marker",
            aws.s3.BucketObjectv2Args(
                bucket=location.apply(lambda v: v[0]),
                key=location.apply(lambda v: v[1]),
                content=f"mlflow-aws sign-in marker of project {p}: a token's signed read of it "
                "proves its signer may read the project's prefix now. Do not delete.\n",
                content_type="text/plain; charset=utf-8",
            ),
            child,
        )
        task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            fargate_task_definition_args(
                family=f"mlflow-aws-{stack_slug(args.stack)}-{p}",
                cpu=server.cpu,
                memory=server.memory,
                execution_role_arn=execution_role.arn,
                task_role_arn=task_role.arn,
                volumes=list(WRITABLE_PATHS),
                container_definitions=definitions,
                tags=tags,
            ),
            child,
        )
        security_groups = list(args.security_groups)
        gate = []
        self.upgrade_report = None
        if args.upgrade is not None:
            upgrade = upgrade_gate(
                f"{name}-upgrade",
                project=p,
                stack=args.stack,
                gate=args.upgrade,
                ecs_cluster_arn=args.cluster_arn,
                task_definition_arn=task_definition.arn,
                subnets=list(args.task_subnets),
                security_groups=security_groups,
                assign_public_ip=args.assign_public_ip,
                min_tasks=server.min_tasks,
                # The migration task reads the secret and runs as the execution role.
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=[execution_policy, *project.ready])
                ),
            )
            self.upgrade_report = upgrade.report
            gate = [upgrade]
        service = aws.ecs.Service(
            f"{name}-service",
            aws.ecs.ServiceArgs(
                cluster=args.cluster_arn,
                task_definition=task_definition.arn,
                desired_count=server.min_tasks,
                launch_type="FARGATE",
                platform_version="LATEST",
                network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                    subnets=list(args.task_subnets),
                    security_groups=security_groups,
                    assign_public_ip=args.assign_public_ip,
                ),
                load_balancers=[
                    aws.ecs.ServiceLoadBalancerArgs(
                        target_group_arn=target_group.arn,
                        container_name=CONTAINER_NAME,
                        container_port=CONTAINER_PORT,
                    )
                ],
                # New tasks must become healthy before old ones stop; a rollout whose tasks
                # keep failing (a failed migration exits the container) is rolled back.
                deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(
                    enable=True, rollback=True
                ),
                deployment_minimum_healthy_percent=100,
                deployment_maximum_percent=200,
                health_check_grace_period_seconds=HEALTH_CHECK_GRACE_SECONDS,
                enable_ecs_managed_tags=True,
                propagate_tags="SERVICE",
                enable_execute_command=False,
                # `pulumi up` fails unless the rollout reaches steady state: without this a
                # first deployment whose tasks all fail (the circuit breaker stops it, with no
                # earlier one to roll back to) reports success and leaves 0 tasks.
                wait_for_steady_state=True,
                tags=tags,
            ),
            pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    # The target group must be attached to the load balancer first; the first
                    # tasks must be able to pull the image, read the secret's value (written
                    # once the project's MySQL user exists) and use their task role's rights.
                    # An MLflow upgrade (the gate) completes before the service takes the new
                    # tasks.
                    depends_on=[
                        rule,
                        execution_policy,
                        *task_policies,
                        marker,
                        *gateway_ready,
                        *project.ready,
                        *args.account_ready,
                        *gate,
                    ],
                    # Autoscaling owns the task count between minTasks and maxTasks.
                    ignore_changes=["desiredCount"],
                    # Past this, `pulumi up` fails naming the service: its events (aws ecs
                    # describe-services) and its tasks' log group say why (README,
                    # Troubleshooting).
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=ROLLOUT_TIMEOUT, update=ROLLOUT_TIMEOUT
                    ),
                ),
            ),
        )
        scaling = aws.appautoscaling.Target(
            f"{name}-scaling",
            aws.appautoscaling.TargetArgs(
                service_namespace="ecs",
                scalable_dimension="ecs:service:DesiredCount",
                resource_id=pulumi.Output.concat("service/", args.cluster_name, "/", service.name),
                min_capacity=server.min_tasks,
                max_capacity=server.max_tasks,
                tags=tags,
            ),
            child,
        )
        for metric, target, label in (
            (
                "ALBRequestCountPerTarget",
                REQUESTS_PER_TASK_PER_MINUTE,
                pulumi.Output.concat(args.load_balancer_arn_suffix, "/", target_group.arn_suffix),
            ),
            ("ECSServiceAverageCPUUtilization", CPU_TARGET_PERCENT, None),
        ):
            aws.appautoscaling.Policy(
                f"{name}-scale-{'requests' if label is not None else 'cpu'}",
                aws.appautoscaling.PolicyArgs(
                    policy_type="TargetTrackingScaling",
                    service_namespace=scaling.service_namespace,
                    scalable_dimension=scaling.scalable_dimension,
                    resource_id=scaling.resource_id,
                    target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                        target_value=target,
                        predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                            predefined_metric_type=metric, resource_label=label
                        ),
                        scale_out_cooldown=SCALE_OUT_COOLDOWN_SECONDS,
                        scale_in_cooldown=SCALE_IN_COOLDOWN_SECONDS,
                    ),
                ),
                child,
            )

        self.service = service
        self.service_name = service.name
        self.parts = ServiceParts(
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            log_group_name=log_group.name,
            log_group_arn=log_group.arn,
            target_group_arn_suffix=target_group.arn_suffix,
            service_name=service.name,
        )
        self.register_outputs(
            {
                "service_name": self.service_name,
                "task_role_arn": task_role.arn,
                "log_group_name": log_group.name,
                "target_group_arn_suffix": target_group.arn_suffix,
                **({"upgrade_report": self.upgrade_report} if self.upgrade_report else {}),
            }
        )
