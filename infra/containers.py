"""The central tasks' containers: pure builders of what ECS runs (no resources registered here).

The service of each project (infra/project_service.py) and its scheduled gc (infra/gc_schedule.py)
run the same image as the same container, with the project's connection secret by reference and
the logs in the project's log group: ``task_container`` and ``fargate_task_definition_args``
are that shared part, once; each caller adds only what it runs differently (its environment,
its command, the service's read-only root file system and port).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from mlflow_aws import environment as env_names
from mlflow_aws.auth.sign_in_app import APP_NAME, GATEWAY_ENV
from mlflow_aws.auth.token import MARKER_NAME
from mlflow_aws.bundle import KEY as BUNDLE_KEY
from mlflow_aws.server_settings import container_port
from mlflow_aws.task_container import CONTAINER_NAME, SERVICE_STREAM_PREFIX

# The MLflow server app the tasks run: the AWS-IAM sign-in (mlflow_aws/auth/sign_in_app.py;
# README.md "Central server: sign in with your AWS identity"). Always: there is no central
# server without sign-in, so a public load balancer is safe to have (every route but health
# needs a valid AWS identity).
AUTH_APP = APP_NAME

# The container's root file system is read-only; these are its only writable places, each a
# task-local volume (Fargate ephemeral storage, gone with the task): /tmp for MLflow's
# spooled uploads, Python's and the entrypoint's temporary files (the database CA), and the
# user's home for anything MLflow or its libraries cache there (~/.cache, ~/.mlflow). The
# image declares both as VOLUME so ECS copies their ownership (the mlflow user) into the
# volumes; the helper's docker runtime mounts the same two (helper/runtimes.py).
WRITABLE_PATHS = {"tmp": "/tmp", "home": "/home/mlflow"}  # noqa: S108 (inside the container)
# The image's server port, from mlflow_aws/server.env (the one definition the image bakes).
CONTAINER_PORT = container_port()
HTTPS_PORT = (
    443  # the load balancer's (infra/tracking_service.py): browsers send the name without it
)
STOP_TIMEOUT_SECONDS = 30


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
    project: str,
    *,
    domain: str,
    region: str,
    artifact_root: str,
    iam_roles: Sequence[str] = (),
    iam_groups: Sequence[str] = (),
) -> dict[str, str]:
    """The service task's plain environment: nothing secret (the URI and the CA come as
    secrets)."""
    return {
        "MLFLOW_ARTIFACTS_DESTINATION": artifact_root,
        "MLFLOW_STATIC_PREFIX": f"/{project}",
        # Only the name the load balancer serves (browsers send it without :443). MLflow
        # exempts <prefix>/health from the check, so the load balancer's health checks, whose
        # Host is the task's IP, still pass.
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"{domain},{domain}:{HTTPS_PORT}",
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"https://{domain}",
        # Each project's server accepts only tokens made for it (mlflow_aws/auth/token.py).
        env_names.IAM_AUDIENCE: f"{domain.lower()}/{project}",
        # Sign-in replays the caller's signed read of it: only the project policy's holders pass.
        env_names.IAM_MARKER_URL: marker_url(artifact_root, region),
        # A JSON array when a name holds a comma (IAM allows it in role names).
        env_names.IAM_ALLOWED_ROLES: (
            json.dumps(list(iam_roles))
            if any("," in role for role in iam_roles)
            else ",".join(iam_roles)
        ),
        env_names.IAM_ALLOWED_GROUPS: ",".join(iam_groups),
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


def task_container(
    *,
    image_uri: str,
    command: Sequence[str],
    environment: Mapping[str, str],
    secrets: Sequence[Mapping[str, str]],
    log_group: str,
    region: str,
    stream_prefix: str,
) -> dict[str, Any]:
    """What every central task's container is: the stack's image as ``mlflow``, all
    capabilities dropped, an init process (signals reach the server), its logs in the
    project's log group under ``stream_prefix``."""
    return {
        "name": CONTAINER_NAME,
        "image": image_uri,
        "essential": True,
        # The entrypoint passes its arguments to `mlflow server` (or runs `gc`).
        "command": list(command),
        # ECS drops variables with an empty value, which would make every update a diff.
        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items()) if v],
        "secrets": [dict(s) for s in secrets],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": log_group,
                "awslogs-region": region,
                "awslogs-stream-prefix": stream_prefix,
            },
        },
        "linuxParameters": {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True},
    }


def service_container_definitions(
    project: str,
    *,
    image_uri: str,
    secret_arn: str,
    log_group: str,
    domain: str,
    region: str,
    artifact_root: str,
    iam_roles: Sequence[str] = (),
    iam_groups: Sequence[str] = (),
    connection_version: str | None = None,
    gateway_kek_arn: str | None = None,
) -> str:
    """The service task's ``containerDefinitions`` JSON: the sign-in server on its port."""
    environment = container_environment(
        project,
        domain=domain,
        region=region,
        artifact_root=artifact_root,
        iam_roles=iam_roles,
        iam_groups=iam_groups,
    )
    secrets = container_secrets(secret_arn)
    if gateway_kek_arn:
        # server.aiGateway: on (server.env turns it off), its stored API keys encrypted with a
        # passphrase of the project's own, never MLflow's default one.
        environment[GATEWAY_ENV] = "true"
        secrets.append(
            {"name": "MLFLOW_CRYPTO_KEK_PASSPHRASE", "valueFrom": f"{gateway_kek_arn}:Passphrase::"}
        )
    if connection_version:
        # ECS reads the secret once, at task start: naming its version makes a new bundle (a
        # rotated password) a new task definition, so a new deployment rolls the tasks.
        environment[env_names.CONNECTION_VERSION] = connection_version
    container = task_container(
        image_uri=image_uri,
        command=["--app-name", AUTH_APP],
        environment=environment,
        secrets=secrets,
        log_group=log_group,
        region=region,
        stream_prefix=SERVICE_STREAM_PREFIX,
    )
    container.update({
        "portMappings": [
            {"containerPort": CONTAINER_PORT, "hostPort": CONTAINER_PORT, "protocol": "tcp"}
        ],
        "readonlyRootFilesystem": True,
        "mountPoints": [
            {"sourceVolume": volume, "containerPath": path, "readOnly": False}
            for volume, path in sorted(WRITABLE_PATHS.items())
        ],
        "stopTimeout": STOP_TIMEOUT_SECONDS,
    })  # fmt: skip
    return json.dumps([container], sort_keys=True)


def fargate_task_definition_args(
    *,
    family: str,
    cpu: int,
    memory: int,
    execution_role_arn: pulumi.Input[str],
    task_role_arn: pulumi.Input[str],
    container_definitions: pulumi.Input[str],
    tags: Mapping[str, str],
    volumes: Sequence[str] | None = None,
) -> aws.ecs.TaskDefinitionArgs:
    """A Fargate task definition of the project's size (server.cpu, server.memory) on x86-64
    Linux, in the VPC (awsvpc), with the two roles; ``volumes`` names task-local volumes."""
    return aws.ecs.TaskDefinitionArgs(
        family=family,
        requires_compatibilities=["FARGATE"],
        network_mode="awsvpc",
        cpu=str(cpu),
        memory=str(memory),
        runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
            operating_system_family="LINUX", cpu_architecture="X86_64"
        ),
        execution_role_arn=execution_role_arn,
        task_role_arn=task_role_arn,
        volumes=(
            [aws.ecs.TaskDefinitionVolumeArgs(name=volume) for volume in sorted(volumes)]
            if volumes is not None
            else None
        ),
        container_definitions=container_definitions,
        tags=dict(tags),
    )
