"""mlflow-aws: shared MLflow experiment tracking on AWS.

Reads the stack config, builds the shared infrastructure and one MlflowProject per configured
project, and exports the outputs the helper reads (README.md "Stack outputs").
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from infra.account import survey
from infra.alarms import AlarmedProject, Alarms, AlarmsArgs
from infra.artifact_store import (
    LOAD_BALANCER_LOG_PREFIX,
    ArtifactStore,
    ArtifactStoreArgs,
    LoadBalancerLogDelivery,
)
from infra.config import load_stack_config, role_attachment_warnings
from infra.database import MetadataDatabase, MetadataDatabaseArgs
from infra.gc_schedule import GcSchedule, GcScheduleArgs
from infra.project_service import ServiceProject
from infra.server_image import ServerImage, ServerImageArgs
from infra.tracking_service import LoadBalancerAccessLogs, TrackingService, TrackingServiceArgs
from infra.upgrade import UpgradeGate
from projects.password_retirement import MysqlPasswordRetirement, MysqlPasswordRetirementArgs
from projects.project import MlflowProject, MlflowProjectArgs

REPO_ROOT = Path(__file__).resolve().parent  # the server image's build context

config = load_stack_config()  # raises before any resource is registered when invalid
# What the account holds (network, engine versions, hosted zone, ...): AWS's refusals of this
# config are raised here, before any resource is registered, too.
account = survey(config)
for warning in role_attachment_warnings(config.projects):
    pulumi.log.warn(warning)
tags = {"mlflow-aws:stack": config.stack}

store = ArtifactStore(
    "artifacts",
    ArtifactStoreArgs(
        stack=config.stack,
        protect=config.protect,
        tags=tags,
        # The central server's load balancer logs every request here (a prefix no project reads).
        load_balancer_logs=(
            LoadBalancerLogDelivery(account.account_id, account.region, account.partition)
            if config.server.enabled
            else None
        ),
    ),
)
database = MetadataDatabase(
    "metadata",
    MetadataDatabaseArgs(
        stack=config.stack,
        db=config.db,
        protect=config.protect,
        network=account.network,
        tags=tags,
        client_group=config.server.enabled,  # the central server's tasks reach MySQL
        engine_version=account.engine_version,
        parameter_group_family=account.parameter_group_family,
    ),
)
image = ServerImage(
    "server",
    ServerImageArgs(
        stack=config.stack,
        mlflow_version=config.mlflow_version,
        protect=config.protect,
        context_dir=REPO_ROOT,
        tags=tags,
    ),
)

region, account_id = account.region, account.account_id

# One MlflowProject per configured project; its outputs are its entry of the Projects output.
project_outputs: dict[str, pulumi.Output[dict]] = {}
mlflow_projects: dict[str, MlflowProject] = {}
service_projects: list[ServiceProject] = []
for p in config.projects:
    project = MlflowProject(
        f"project-{p.name}",
        MlflowProjectArgs(
            project=p,
            bucket_name=store.bucket_name,
            bucket_arn=store.bucket_arn,
            db_endpoint=database.endpoint,
            db_port=database.port,
            cluster_arn=database.cluster_arn,
            admin_secret_arn=database.admin_secret_arn,
            repository_arn=image.repository_arn,
            account_id=account_id,
            stack=config.stack,
            protect=config.protect,
            image_uri=image.image_uri,
            region=region,
            mlflow_version=config.mlflow_version,
            aws_profile=config.aws_profile,
            database_ca_bundle=database.ca_bundle,
            tracking_uri=config.server.tracking_uri(p.name),
            max_user_connections=config.max_user_connections,
            partition=account.partition,
            assume_roles=tuple(role.as_input() for role in config.assume_roles),
        ),
        # Schemas are made through the Data API once the writer runs and the admin secret holds
        # the credentials it logs in with.
        pulumi.ResourceOptions(depends_on=[database.instance, database.admin_secret_value]),
    )
    project_outputs[p.name] = project.outputs
    service_projects.append(
        ServiceProject(
            name=p.name,
            connection_secret_arn=project.secret.arn,
            task_policy=project.server_policy,  # its own task role's: the prefix only
            artifact_root=project.artifact_root,
            iam_roles=p.iam_roles,
            iam_groups=p.iam_groups,
            # A task starts only once its secret holds the bundle (the project's MySQL user
            # exists); the service also waits for its task role's policies.
            ready=[project.secret_version, project.schema],
            connection_version=project.secret_version.version_id,
        )
    )
    mlflow_projects[p.name] = project

# The central server (optional): one HTTPS URL per project on ECS Fargate, sign-in required.
if config.server.enabled:
    for p in config.projects:
        if not (p.iam_roles or p.iam_groups):
            pulumi.log.warn(
                f"project {p.name}: nobody may sign in to its central server (deny by default): "
                "list who may in its iamRoles or iamGroups"
            )
    assert database.client_security_group_id is not None
    service = TrackingService(
        "tracking",
        TrackingServiceArgs(
            stack=config.stack,
            server=config.server,
            projects=service_projects,
            image_uri=image.image_uri,
            repository_arn=image.repository_arn,
            region=region,
            account_id=account_id,
            vpc_id=account.network.vpc_id,
            vpc_cidrs=account.network.cidrs,
            load_balancer_subnets=account.network.load_balancer_subnets,
            task_subnets=account.network.task_subnets,
            assign_public_ip=account.network.assign_public_ip,
            database_client_security_group_id=database.client_security_group_id,
            protect=config.protect,
            tags=tags,
            partition=account.partition,
            ecs_tasks_principal=account.ecs_tasks_principal,
            ecs_service_linked_role=account.ecs_service_linked_role,
            access_logs=LoadBalancerAccessLogs(
                bucket=store.bucket_name,
                prefix=LOAD_BALANCER_LOG_PREFIX,
                bucket_policy=store.policy,
            ),
            upgrade=UpgradeGate(
                mlflow_version=config.mlflow_version,
                database_cluster_arn=database.cluster_arn,
                admin_secret_arn=database.admin_secret_arn,
                settings=config.upgrade,
                aws_profile=config.aws_profile,
                assume_roles=[role.as_input() for role in config.assume_roles],
            ),
        ),
    )
    pulumi.export("ServerUrl", service.url)
    # Each project's last MLflow upgrade: its steps and their times (none: nothing to do).
    pulumi.export("Upgrades", service.upgrade_reports)
    if config.gc.enabled:
        GcSchedule(
            "gc",
            GcScheduleArgs(
                stack=config.stack,
                gc=config.gc,
                server=config.server,
                projects=service.parts,
                connection_secret_arns={
                    sp.name: sp.connection_secret_arn for sp in service_projects
                },
                artifact_roots={sp.name: sp.artifact_root for sp in service_projects},
                image_uri=image.image_uri,
                region=region,
                account_id=account_id,
                cluster_arn=service.cluster_arn,
                task_subnets=account.network.task_subnets,
                task_security_groups=service.task_security_groups,
                assign_public_ip=account.network.assign_public_ip,
                tags=tags,
            ),
        )
    Alarms(
        "alarms",
        AlarmsArgs(
            stack=config.stack,
            alarms=config.alarms,
            projects={
                p: AlarmedProject(parts.target_group_arn_suffix, parts.log_group_name)
                for p, parts in service.parts.items()
            },
            load_balancer_arn_suffix=service.load_balancer_arn_suffix,
            cluster_identifier=database.cluster_identifier,
            region=region,
            min_tasks=config.server.min_tasks,
            max_capacity=config.db.max_capacity,
            gc_enabled=config.gc.enabled,
            tags=tags,
        ),
    )

# A rotated password's second half: only the new one stays valid, once nothing uses the old -
# the central service rolled to tasks with the new bundle (steady state), or, without it, the
# bundle was published.
for name, project in mlflow_projects.items():
    users = [service.services[name]] if config.server.enabled else [project.secret_version]
    MysqlPasswordRetirement(
        f"project-{name}-password-retirement",
        MysqlPasswordRetirementArgs(
            project=name,
            password=project.current_password,
            cluster_arn=database.cluster_arn,
            admin_secret_arn=database.admin_secret_arn,
            aws_profile=config.aws_profile,
            assume_roles=[role.as_input() for role in config.assume_roles],
        ),
        pulumi.ResourceOptions(parent=project, depends_on=[project.schema, *users]),
    )

pulumi.export("ArtifactRoot", store.artifact_root)
pulumi.export("DatabaseEndpoint", database.endpoint)
pulumi.export("DatabasePort", database.port)
pulumi.export("DatabaseUsername", database.admin_username)
pulumi.export("DatabasePassword", database.admin_password)
pulumi.export("DatabaseUrl", database.database_url)
pulumi.export("AdminSecretArn", database.admin_secret_arn)
pulumi.export("ImageUri", image.image_uri)
pulumi.export("Region", region)
pulumi.export("MlflowVersion", config.mlflow_version)
pulumi.export("Projects", project_outputs)
