"""The central tracking server (optional): one HTTPS URL per project, for the team and CI.

``TrackingService`` runs each project's MLflow server on ECS Fargate behind one Application
Load Balancer, as ``https://<server.domainName>/<project>``:

* an ECS cluster; per project a Fargate service running the stack's image (``ImageUri``, the
  digest the helper runs) with one uvicorn worker per task, scaled by task count (target
  tracking on requests per target and on CPU), a deployment circuit breaker with rollback, and
  its logs in a CloudWatch log group with a retention period;
* the load balancer: HTTPS on 443 with the certificate and a TLS 1.3/1.2 policy, HTTP on 80
  only to redirect to HTTPS, per project a target group and the path rule ``/<project>`` and
  ``/<project>/*`` (MLflow serves the UI, the REST API and proxied artifacts under that prefix,
  ``MLFLOW_STATIC_PREFIX``), a 404 for every other path, health checks on
  ``/<project>/health`` (which never touches the database, so Aurora still pauses);
* security groups: the load balancer admits 443 and 80 from ``server.allowedCidrs`` (default:
  the internet for a public load balancer, where every request but health must sign in; the VPC
  for an internal one); the tasks admit only the load balancer; the database admits the tasks
  through its client group (``MetadataDatabase.client_security_group_id``);
* per project a task role of the tasks' own (``<p>-task-role``: the project's S3 prefix, and the
  sign-in's group lookup when it allows groups; only ECS tasks of this account and region may
  assume it, never a teammate) and an execution role that can pull the image, read the
  project's connection secret and write the project's logs. The backend store URI and the
  database's CA bundle reach the container through ECS ``secrets`` (references to keys of the
  connection secret), never as values in the task definition.

The certificate: with ``server.hostedZoneId`` the program requests one from ACM, validates it
with a DNS record and points an alias record at the load balancer; with
``server.certificateArn`` it uses that certificate and DNS is the operator's.
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
from infra.database import PORT as MYSQL_PORT
from infra.iam import image_pull_statements
from infra.upgrade import UpgradeGate, upgrade_gate
from mlflow_aws import environment as env_names
from mlflow_aws.auth.server import SSO_ENTRY, SSO_ROLE_PATH
from mlflow_aws.auth.token import MARKER_NAME
from mlflow_aws.bundle import KEY as BUNDLE_KEY
from mlflow_aws.server_settings import container_port

# The MLflow server app the tasks run: the AWS-IAM sign-in (mlflow_aws/auth/server.py;
# README.md "Central server: sign in with your AWS identity"). Always: there is no central
# server without sign-in, so a public load balancer is safe to have (every route but health
# needs a valid AWS identity).
AUTH_APP = "aws-iam"

CONTAINER_NAME = "mlflow"
# The container's root file system is read-only; these are its only writable places, each a
# task-local volume (Fargate ephemeral storage, gone with the task): /tmp for MLflow's
# spooled uploads, Python's and the entrypoint's temporary files (the database CA), and the
# user's home for anything MLflow or its libraries cache there (~/.cache, ~/.mlflow). The
# image declares both as VOLUME so ECS copies their ownership (the mlflow user) into the
# volumes; the helper's docker runtime mounts the same two (helper/runtimes.py).
WRITABLE_PATHS = {"tmp": "/tmp", "home": "/home/mlflow"}  # noqa: S108 (inside the container)
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"  # TLS 1.3 and 1.2 with forward secrecy
HSTS = "max-age=31536000"
LOG_RETENTION_DAYS = 30
# Proxied artifacts: the server reads a whole upload before it writes S3 (and downloads from
# S3 before it sends), so a connection can carry no bytes for a while. 10 minutes covers a few
# GB each way; the client's own MLFLOW_HTTP_REQUEST_TIMEOUT (120 s by default) may need raising.
IDLE_TIMEOUT_SECONDS = 600
# Tasks may wait up to MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS (540) for another task's migration.
HEALTH_CHECK_GRACE_SECONDS = 600
DEREGISTRATION_DELAY_SECONDS = 60
REQUESTS_PER_TASK_PER_MINUTE = 1200.0  # ~20 requests/s: a 0.5 vCPU task serves ~2x that
CPU_TARGET_PERCENT = 60.0
SCALE_OUT_COOLDOWN_SECONDS = 60
SCALE_IN_COOLDOWN_SECONDS = 300
MAX_RULE_PRIORITY = 50_000
HTTPS_PORT, HTTP_PORT = 443, 80
# A rollout must reach steady state for `pulumi up` to succeed: the first task may wait for
# another's migration (MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS, 540 s) and gets
# HEALTH_CHECK_GRACE_SECONDS to turn healthy; then the old tasks drain.
ROLLOUT_TIMEOUT = "30m"
# The image's server port, from mlflow_aws/server.env (the one definition the image bakes).
CONTAINER_PORT = container_port()


def rule_priorities(projects: Sequence[str]) -> dict[str, int]:
    """A listener rule priority per project, stable when other projects come and go: from a
    hash of the name, probing past collisions in name order."""
    import zlib

    taken: set[int] = set()
    priorities = {}
    for name in sorted(projects):
        priority = zlib.crc32(name.encode()) % (MAX_RULE_PRIORITY - 1) + 1
        while priority in taken:
            priority = priority % (MAX_RULE_PRIORITY - 1) + 1
        taken.add(priority)
        priorities[name] = priority
    return priorities


def path_patterns(project: str) -> list[str]:
    """The project's paths: its prefix alone and everything under it (``/churn2`` is not
    under ``/churn``)."""
    return [f"/{project}", f"/{project}/*"]


def marker_location(artifact_root: str) -> tuple[str, str]:
    """``s3://<bucket>/<prefix>`` -> the bucket and key of the project's sign-in marker."""
    bucket, _, prefix = artifact_root.removeprefix("s3://").partition("/")
    return bucket, f"{prefix.strip('/')}/{MARKER_NAME}"


def marker_url(artifact_root: str, region: str) -> str:
    """The marker's virtual-hosted HTTPS URL (path style for a bucket name with dots, which
    the wildcard certificate of ``*.s3.<region>.amazonaws.com`` does not cover)."""
    bucket, key = marker_location(artifact_root)
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    if "." in bucket:
        return f"https://s3.{region}.{suffix}/{bucket}/{key}"
    return f"https://{bucket}.s3.{region}.{suffix}/{key}"


def container_environment(
    project: ServiceProject, domain: str, region: str, artifact_root: str
) -> dict[str, str]:
    """The task's plain environment: nothing secret (the URI and the CA come as secrets)."""
    return {
        "MLFLOW_ARTIFACTS_DESTINATION": artifact_root,
        "MLFLOW_STATIC_PREFIX": f"/{project.name}",
        # Only the name the load balancer serves (browsers send it without :443). MLflow
        # exempts <prefix>/health from the check, so the load balancer's health checks, whose
        # Host is the task's IP, still pass.
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{domain},{domain}:{HTTPS_PORT}",
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"https://{domain}",
        # Each project's server accepts only tokens made for it (mlflow_aws/auth/token.py).
        env_names.IAM_AUDIENCE: f"{domain.lower()}/{project.name}",
        # Sign-in replays the caller's signed read of it: only the project policy's holders pass.
        env_names.IAM_MARKER_URL: marker_url(artifact_root, region),
        # A JSON array when a name holds a comma (IAM allows it in role names).
        env_names.IAM_ALLOWED_ROLES: (
            json.dumps(list(project.iam_roles))
            if any("," in role for role in project.iam_roles)
            else ",".join(project.iam_roles)
        ),
        env_names.IAM_ALLOWED_GROUPS: ",".join(project.iam_groups),
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }


def container_secrets(secret_arn: str) -> list[dict[str, str]]:
    """Keys of the project's connection secret, by reference: ECS reads them at task start."""
    return [
        {
            "name": "MLFLOW_BACKEND_STORE_URI",
            "valueFrom": f"{secret_arn}:{BUNDLE_KEY['backend_store_uri']}::",
        },
        {
            "name": env_names.DB_CA_BUNDLE,
            "valueFrom": f"{secret_arn}:{BUNDLE_KEY['database_ca_bundle']}::",
        },
    ]


def container_definitions(
    project: ServiceProject,
    *,
    image_uri: str,
    secret_arn: str,
    log_group: str,
    domain: str,
    region: str,
    artifact_root: str,
    connection_version: str | None = None,
    gateway_kek_arn: str | None = None,
) -> str:
    environment = container_environment(project, domain, region, artifact_root)
    secrets = container_secrets(secret_arn)
    if gateway_kek_arn:
        # server.aiGateway: on (server.env turns it off), its stored API keys encrypted with a
        # passphrase of the project's own, never MLflow's default one.
        environment["MLFLOW_ENABLE_AI_GATEWAY"] = "true"
        secrets.append(
            {"name": "MLFLOW_CRYPTO_KEK_PASSPHRASE", "valueFrom": f"{gateway_kek_arn}:Passphrase::"}
        )
    if connection_version:
        # ECS reads the secret once, at task start: naming its version makes a new bundle (a
        # rotated password) a new task definition, so a new deployment rolls the tasks.
        environment[env_names.CONNECTION_VERSION] = connection_version
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image_uri,
        "essential": True,
        "portMappings": [
            {"containerPort": CONTAINER_PORT, "hostPort": CONTAINER_PORT, "protocol": "tcp"}
        ],
        # ECS drops variables with an empty value, which would make every update a diff.
        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items()) if v],
        "secrets": secrets,
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": CONTAINER_NAME,
            },
        },
        "linuxParameters": {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True},
        "readonlyRootFilesystem": True,
        "mountPoints": [
            {"sourceVolume": volume, "containerPath": path, "readOnly": False}
            for volume, path in sorted(WRITABLE_PATHS.items())
        ],
        "stopTimeout": 30,
        # The entrypoint passes its arguments to `mlflow server`.
        "command": ["--app-name", AUTH_APP],
    }
    return json.dumps([container], sort_keys=True)


def group_lookup_policy(
    account_id: str, partition: str = "aws", groups: bool = True, sso: bool = False
) -> str:
    """The sign-in app asks IAM which groups an IAM user is in (iamGroups) and, for
    ``sso:<PermissionSet>`` entries of iamRoles, the path of an Identity Center role (only those
    roles: anyone may name a role AWSReservedSSO_…, only Identity Center puts it there)."""
    statements: list[dict[str, Any]] = []
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
    return json.dumps(
        {
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
        },
        sort_keys=True,
    )


def execution_trust_policy(account_id: str, principal: str = "ecs-tasks.amazonaws.com") -> str:
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


def task_trust_policy(
    account_id: str, region: str, partition: str = "aws", principal: str = "ecs-tasks.amazonaws.com"
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
class TrackingServiceArgs:
    stack: str
    server: ServerConfig
    projects: Sequence[ServiceProject]
    image_uri: pulumi.Input[str]
    repository_arn: pulumi.Input[str]
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    vpc_id: str
    vpc_cidrs: Sequence[str]  # every IPv4 CIDR of the VPC
    load_balancer_subnets: Sequence[str]  # one per AZ (infra/account.py checked them)
    task_subnets: Sequence[str]
    assign_public_ip: bool
    database_client_security_group_id: pulumi.Input[str]
    protect: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    partition: str = "aws"
    ecs_tasks_principal: str = "ecs-tasks.amazonaws.com"
    # Create the ECS service-linked role: an account that never ran ECS has none.
    ecs_service_linked_role: bool = False
    # An mlflowVersion change stops the writers and migrates once (infra/upgrade.py); None
    # leaves the gate out (tests of other parts).
    upgrade: UpgradeGate | None = None
    # The load balancer's access logs: the artifact bucket, a prefix no project can read, and
    # the bucket policy that lets the load balancer write there (AWS checks it at enable time).
    access_logs: LoadBalancerAccessLogs | None = None


@dataclass
class LoadBalancerAccessLogs:
    bucket: pulumi.Input[str]
    prefix: str
    bucket_policy: pulumi.Resource


class TrackingService(pulumi.ComponentResource):
    url: pulumi.Output[str]  # https://<domain>
    load_balancer_dns_name: pulumi.Output[str]
    certificate_arn: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    service_names: dict[str, pulumi.Output[str]]
    services: dict[str, aws.ecs.Service]  # project -> its ECS service (steady once created)
    parts: dict[str, ServiceParts]  # project -> what its gc task and alarms use
    cluster_arn: pulumi.Output[str]
    load_balancer_arn_suffix: pulumi.Output[str]
    task_security_groups: list[pulumi.Output[str]]
    upgrade_reports: dict[str, pulumi.Output[Any]]  # project -> the last upgrade's steps
    load_balancer_security_group_id: pulumi.Output[str]
    task_security_group_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: TrackingServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-aws:infra:TrackingService", name, None, opts)
        server = args.server
        if not server.domain_name:
            raise ValueError("TrackingService needs server.domainName (infra/config.py checks it)")
        domain = server.domain_name
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "mlflow-aws:component": "tracking-service"}
        vpc_cidrs = list(args.vpc_cidrs)
        # Default: the VPC for an internal load balancer, the internet for a public one (every
        # request but health must sign in with an allowed AWS identity).
        allowed = list(server.allowed_cidrs) or (None if server.internal else ["0.0.0.0/0"])

        # -- network ------------------------------------------------------------------------
        lb_sg = aws.ec2.SecurityGroup(
            f"{name}-lb-sg",
            aws.ec2.SecurityGroupArgs(
                vpc_id=args.vpc_id,
                description="mlflow-aws central server load balancer: HTTPS (and the redirect)",
                ingress=[
                    aws.ec2.SecurityGroupIngressArgs(
                        description=f"{what} from server.allowedCidrs",
                        protocol="tcp",
                        from_port=port,
                        to_port=port,
                        cidr_blocks=allowed or vpc_cidrs,
                    )
                    for what, port in (("HTTPS", HTTPS_PORT), ("HTTP (redirected)", HTTP_PORT))
                ],
                egress=[
                    aws.ec2.SecurityGroupEgressArgs(
                        description="MLflow tasks and their health checks",
                        protocol="tcp",
                        from_port=CONTAINER_PORT,
                        to_port=CONTAINER_PORT,
                        cidr_blocks=vpc_cidrs,
                    )
                ],
                tags=tags,
            ),
            child,
        )
        task_sg = aws.ec2.SecurityGroup(
            f"{name}-task-sg",
            aws.ec2.SecurityGroupArgs(
                vpc_id=args.vpc_id,
                description="mlflow-aws central server tasks: reached only by the load balancer",
                ingress=[
                    aws.ec2.SecurityGroupIngressArgs(
                        description="MLflow from the load balancer only",
                        protocol="tcp",
                        from_port=CONTAINER_PORT,
                        to_port=CONTAINER_PORT,
                        security_groups=[lb_sg.id],
                    )
                ],
                egress=[
                    aws.ec2.SecurityGroupEgressArgs(
                        description="AWS APIs: ECR, S3, Secrets Manager, CloudWatch Logs, STS",
                        protocol="tcp",
                        from_port=HTTPS_PORT,
                        to_port=HTTPS_PORT,
                        cidr_blocks=["0.0.0.0/0"],
                    ),
                    aws.ec2.SecurityGroupEgressArgs(
                        description="MySQL (Aurora, in the VPC)",
                        protocol="tcp",
                        from_port=MYSQL_PORT,
                        to_port=MYSQL_PORT,
                        cidr_blocks=vpc_cidrs,
                    ),
                ],
                tags=tags,
            ),
            child,
        )

        # -- certificate --------------------------------------------------------------------
        certificate_arn: pulumi.Output[str]
        if server.hosted_zone_id:
            certificate = aws.acm.Certificate(
                f"{name}-certificate",
                aws.acm.CertificateArgs(domain_name=domain, validation_method="DNS", tags=tags),
                child,
            )
            option = certificate.domain_validation_options.apply(lambda options: options[0])
            validation_record = aws.route53.Record(
                f"{name}-certificate-validation-record",
                aws.route53.RecordArgs(
                    zone_id=server.hosted_zone_id,
                    name=option.apply(lambda o: str(o.resource_record_name)),
                    type=option.apply(lambda o: str(o.resource_record_type)),
                    records=[option.apply(lambda o: str(o.resource_record_value))],
                    ttl=300,
                    allow_overwrite=True,
                ),
                child,
            )
            validation = aws.acm.CertificateValidation(
                f"{name}-certificate-validation",
                aws.acm.CertificateValidationArgs(
                    certificate_arn=certificate.arn,
                    validation_record_fqdns=[validation_record.fqdn],
                ),
                child,
            )
            certificate_arn = validation.certificate_arn
        else:
            assert server.certificate_arn, "infra/config.py requires a certificate source"
            certificate_arn = pulumi.Output.from_input(server.certificate_arn)

        # -- load balancer ------------------------------------------------------------------
        lb = aws.lb.LoadBalancer(
            f"{name}-lb",
            aws.lb.LoadBalancerArgs(
                name_prefix="mlflow",
                load_balancer_type="application",
                internal=server.internal,
                security_groups=[lb_sg.id],
                subnets=list(args.load_balancer_subnets),
                idle_timeout=IDLE_TIMEOUT_SECONDS,
                drop_invalid_header_fields=True,
                enable_deletion_protection=args.protect,
                access_logs=(
                    aws.lb.LoadBalancerAccessLogsArgs(
                        bucket=args.access_logs.bucket,
                        prefix=args.access_logs.prefix,
                        enabled=True,
                    )
                    if args.access_logs
                    else None
                ),
                tags=tags,
            ),
            pulumi.ResourceOptions(
                parent=self,
                protect=args.protect,
                depends_on=[args.access_logs.bucket_policy] if args.access_logs else [],
            ),
        )
        https = aws.lb.Listener(
            f"{name}-https",
            aws.lb.ListenerArgs(
                load_balancer_arn=lb.arn,
                port=HTTPS_PORT,
                protocol="HTTPS",
                certificate_arn=certificate_arn,
                ssl_policy=TLS_POLICY,
                routing_http_response_strict_transport_security_header_value=HSTS,
                default_actions=[
                    aws.lb.ListenerDefaultActionArgs(
                        type="fixed-response",
                        fixed_response=aws.lb.ListenerDefaultActionFixedResponseArgs(
                            content_type="text/plain",
                            status_code="404",
                            message_body="no MLflow project here: use https://"
                            f"{domain}/<project>/\n",
                        ),
                    )
                ],
                tags=tags,
            ),
            child,
        )
        aws.lb.Listener(
            f"{name}-http-redirect",
            aws.lb.ListenerArgs(
                load_balancer_arn=lb.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=[
                    aws.lb.ListenerDefaultActionArgs(
                        type="redirect",
                        redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                            protocol="HTTPS", port=str(HTTPS_PORT), status_code="HTTP_301"
                        ),
                    )
                ],
                tags=tags,
            ),
            child,
        )
        if server.hosted_zone_id:
            aws.route53.Record(
                f"{name}-alias",
                aws.route53.RecordArgs(
                    zone_id=server.hosted_zone_id,
                    name=domain,
                    type="A",
                    aliases=[
                        aws.route53.RecordAliasArgs(
                            name=lb.dns_name, zone_id=lb.zone_id, evaluate_target_health=True
                        )
                    ],
                ),
                child,
            )

        # -- ECS ----------------------------------------------------------------------------
        cluster = aws.ecs.Cluster(
            f"{name}-cluster",
            aws.ecs.ClusterArgs(
                # Container Insights bills metrics per task; the load balancer's and the
                # service's own CloudWatch metrics are enough to scale and to watch.
                settings=[aws.ecs.ClusterSettingArgs(name="containerInsights", value="disabled")],
                tags=tags,
            ),
            child,
        )

        # An account that never ran ECS has no service-linked role; the first service would
        # fail with "Unable to assume the service linked role". Kept when the stack goes: other
        # ECS users of the account need it.
        linked_role = (
            aws.iam.ServiceLinkedRole(
                f"{name}-ecs-service-linked-role",
                aws.iam.ServiceLinkedRoleArgs(
                    aws_service_name="ecs.amazonaws.com", tags={"mlflow-aws:stack": args.stack}
                ),
                pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
            if args.ecs_service_linked_role
            else None
        )

        priorities = rule_priorities([p.name for p in args.projects])
        self.service_names = {}
        self.services = {}
        self.parts = {}
        self.upgrade_reports = {}
        for project in args.projects:
            self.services[project.name] = self._project_service(
                name, project, args, cluster, lb, https, task_sg, priorities, domain, tags,
                [linked_role] if linked_role else [],
            )  # fmt: skip
            self.service_names[project.name] = self.services[project.name].name

        self.url = pulumi.Output.from_input(f"https://{domain}")
        self.load_balancer_dns_name = lb.dns_name
        self.certificate_arn = certificate_arn
        self.cluster_name = cluster.name
        self.cluster_arn = cluster.arn
        self.load_balancer_arn_suffix = lb.arn_suffix
        self.task_security_groups = [
            task_sg.id,
            pulumi.Output.from_input(args.database_client_security_group_id),
        ]
        self.load_balancer_security_group_id = lb_sg.id
        self.task_security_group_id = task_sg.id
        self.register_outputs(
            {
                "url": self.url,
                "load_balancer_dns_name": self.load_balancer_dns_name,
                "certificate_arn": self.certificate_arn,
                "cluster_name": self.cluster_name,
                "service_names": self.service_names,
                "upgrade_reports": self.upgrade_reports,
                "load_balancer_security_group_id": self.load_balancer_security_group_id,
                "task_security_group_id": self.task_security_group_id,
            }
        )

    def _project_service(
        self,
        name: str,
        project: ServiceProject,
        args: TrackingServiceArgs,
        cluster: aws.ecs.Cluster,
        lb: aws.lb.LoadBalancer,
        https: aws.lb.Listener,
        task_sg: aws.ec2.SecurityGroup,
        priorities: Mapping[str, int],
        domain: str,
        tags: Mapping[str, str],
        account_ready: Sequence[pulumi.Resource],
    ) -> aws.ecs.Service:
        """One project's target group, path rule, roles, logs, task definition, service and
        scaling; returns the service."""
        server = args.server
        p = project.name
        child = pulumi.ResourceOptions(parent=self)
        tags = {**tags, "mlflow-aws:project": p}
        prefix = f"{name}-{p}"

        target_group = aws.lb.TargetGroup(
            f"{prefix}-tg",
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
            f"{prefix}-rule",
            aws.lb.ListenerRuleArgs(
                listener_arn=https.arn,
                priority=priorities[p],
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
            f"{prefix}-logs",
            aws.cloudwatch.LogGroupArgs(
                name=f"/mlflow-aws/{stack_slug(args.stack)}/{p}",
                retention_in_days=LOG_RETENTION_DAYS,
                tags=tags,
            ),
            child,
        )
        execution_role = aws.iam.Role(
            f"{prefix}-execution-role",
            aws.iam.RoleArgs(
                name_prefix=f"mlflow-aws-{p}-exec-"[:38],
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
                f"{prefix}-gateway-kek-passphrase",
                random.RandomPasswordArgs(length=48, special=False),
                child,
            )
            kek = aws.secretsmanager.Secret(
                f"{prefix}-gateway-kek",
                aws.secretsmanager.SecretArgs(
                    name_prefix=f"mlflow-aws-{stack_slug(args.stack)}-{p}-gateway-kek-"[:128],
                    description=f"MLflow AI Gateway KEK passphrase of project {p} "
                    f"(stack {args.stack}): encrypts the gateway's stored API keys",
                    tags=tags,
                ),
                child,
            )
            kek_version = aws.secretsmanager.SecretVersion(
                f"{prefix}-gateway-kek-version",
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
            f"{prefix}-execution-policy",
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
            f"{prefix}-task-role",
            aws.iam.RoleArgs(
                name_prefix=f"mlflow-aws-{p}-task-"[:38],
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
                f"{prefix}-task-policy",
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
                    f"{prefix}-group-lookup",
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
            lambda v: container_definitions(
                project,
                image_uri=v[0],
                secret_arn=v[1],
                log_group=v[2],
                domain=domain,
                region=v[3],
                artifact_root=v[4],
                connection_version=v[5],
                gateway_kek_arn=v[6],
            )
        )
        # What a token's marker read reads (mlflow_aws/auth/token.py): under the project's prefix,
        # so exactly the holders of the project's policy (and its server role) may read it.
        location = pulumi.Output.from_input(project.artifact_root).apply(marker_location)
        marker = aws.s3.BucketObjectv2(
            f"{prefix}-sign-in-marker",
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
            f"{prefix}-task",
            aws.ecs.TaskDefinitionArgs(
                family=f"mlflow-aws-{stack_slug(args.stack)}-{p}",
                requires_compatibilities=["FARGATE"],
                network_mode="awsvpc",
                cpu=str(server.cpu),
                memory=str(server.memory),
                runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                    operating_system_family="LINUX", cpu_architecture="X86_64"
                ),
                execution_role_arn=execution_role.arn,
                task_role_arn=task_role.arn,
                volumes=[
                    aws.ecs.TaskDefinitionVolumeArgs(name=volume)
                    for volume in sorted(WRITABLE_PATHS)
                ],
                container_definitions=definitions,
                tags=tags,
            ),
            child,
        )
        security_groups = [task_sg.id, args.database_client_security_group_id]
        gate = []
        if args.upgrade is not None:
            upgrade = upgrade_gate(
                f"{prefix}-upgrade",
                project=p,
                stack=args.stack,
                gate=args.upgrade,
                ecs_cluster_arn=cluster.arn,
                task_definition_arn=task_definition.arn,
                subnets=list(args.task_subnets),
                security_groups=security_groups,
                assign_public_ip=args.assign_public_ip,
                min_tasks=server.min_tasks,
                # The migration task reads the secret and runs as the execution role.
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[execution_policy, *project.ready]
                ),
            )
            self.upgrade_reports[p] = upgrade.report
            gate = [upgrade]
        service = aws.ecs.Service(
            f"{prefix}-service",
            aws.ecs.ServiceArgs(
                cluster=cluster.arn,
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
            pulumi.ResourceOptions(
                parent=self,
                # The target group must be attached to the load balancer first; the first
                # tasks must be able to pull the image, read the secret's value (written once
                # the project's MySQL user exists) and use their task role's rights.
                # An MLflow upgrade (the gate) completes before the service takes the new tasks.
                depends_on=[
                    rule,
                    execution_policy,
                    *task_policies,
                    marker,
                    *gateway_ready,
                    *project.ready,
                    *account_ready,
                    *gate,
                ],
                # Autoscaling owns the task count between minTasks and maxTasks.
                ignore_changes=["desiredCount"],
                # Past this, `pulumi up` fails naming the service: its events (aws ecs
                # describe-services) and its tasks' log group say why (README, Troubleshooting).
                custom_timeouts=pulumi.CustomTimeouts(
                    create=ROLLOUT_TIMEOUT, update=ROLLOUT_TIMEOUT
                ),
            ),
        )

        self.parts[p] = ServiceParts(
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            log_group_name=log_group.name,
            log_group_arn=log_group.arn,
            target_group_arn_suffix=target_group.arn_suffix,
            service_name=service.name,
        )
        scaling = aws.appautoscaling.Target(
            f"{prefix}-scaling",
            aws.appautoscaling.TargetArgs(
                service_namespace="ecs",
                scalable_dimension="ecs:service:DesiredCount",
                resource_id=pulumi.Output.concat("service/", cluster.name, "/", service.name),
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
                pulumi.Output.concat(lb.arn_suffix, "/", target_group.arn_suffix),
            ),
            ("ECSServiceAverageCPUUtilization", CPU_TARGET_PERCENT, None),
        ):
            aws.appautoscaling.Policy(
                f"{prefix}-scale-{'requests' if label is not None else 'cpu'}",
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
        return service
