"""The central tracking server (optional): one HTTPS URL per project, for the team and CI.

``TrackingService`` runs each project's MLflow server on ECS Fargate behind one Application
Load Balancer, as ``https://<server.domainName>/<project>``. This module holds what the projects
share; each project's own resources are a ``ProjectService`` child (infra/project_service.py:
its target group and path rule, roles, logs, task definition, upgrade gate, service, scaling),
and what its container runs is built in infra/containers.py, its policies in infra/iam.py.

Shared here:

* an ECS cluster (without Container Insights) and, for an account that never ran ECS, its
  service-linked role;
* the load balancer: HTTPS on 443 with the certificate and a TLS 1.3/1.2 policy, HTTP on 80
  only to redirect to HTTPS, a 404 for every path no project's rule (``/<project>``,
  ``/<project>/*``) takes; a listener rule priority per project (``rule_priorities``);
* security groups: the load balancer admits 443 and 80 from ``server.allowedCidrs`` (default:
  the internet for a public load balancer, where every request but health must sign in; the VPC
  for an internal one); the tasks admit only the load balancer; the database admits the tasks
  through its client group (``MetadataDatabase.client_security_group_id``).

The certificate: with ``server.hostedZoneId`` the program requests one from ACM, validates it
with a DNS record and points an alias record at the load balancer; with
``server.certificateArn`` it uses that certificate and DNS is the operator's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import ServerConfig
from infra.containers import CONTAINER_PORT, HTTPS_PORT
from infra.database import PORT as MYSQL_PORT
from infra.iam import ECS_TASKS
from infra.project_service import (
    ProjectService,
    ProjectServiceArgs,
    ServiceParts,
    ServiceProject,
)
from infra.upgrade import UpgradeGate
from mlflow_aws.load_balancer import IDLE_TIMEOUT_SECONDS

TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"  # TLS 1.3 and 1.2 with forward secrecy
HSTS = "max-age=31536000"
MAX_RULE_PRIORITY = 50_000
HTTP_PORT = 80


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
    ecs_tasks_principal: str = ECS_TASKS
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
        task_security_groups = [task_sg.id, args.database_client_security_group_id]
        self.service_names = {}
        self.services = {}
        self.parts = {}
        self.upgrade_reports = {}
        for project in args.projects:
            project_service = ProjectService(
                f"{name}-{project.name}",
                ProjectServiceArgs(
                    stack=args.stack,
                    server=server,
                    project=project,
                    domain=domain,
                    rule_priority=priorities[project.name],
                    image_uri=args.image_uri,
                    repository_arn=args.repository_arn,
                    region=args.region,
                    account_id=args.account_id,
                    vpc_id=args.vpc_id,
                    task_subnets=args.task_subnets,
                    assign_public_ip=args.assign_public_ip,
                    cluster_arn=cluster.arn,
                    cluster_name=cluster.name,
                    listener_arn=https.arn,
                    load_balancer_arn_suffix=lb.arn_suffix,
                    security_groups=task_security_groups,
                    tags=tags,
                    partition=args.partition,
                    ecs_tasks_principal=args.ecs_tasks_principal,
                    account_ready=[linked_role] if linked_role else [],
                    upgrade=args.upgrade,
                ),
                pulumi.ResourceOptions(parent=self),
                # Its resources were this component's own children before ProjectService.
                previous_parent=self,
            )
            self.services[project.name] = project_service.service
            self.service_names[project.name] = project_service.service_name
            self.parts[project.name] = project_service.parts
            if project_service.upgrade_report is not None:
                self.upgrade_reports[project.name] = project_service.upgrade_report

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
