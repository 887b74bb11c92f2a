"""The central tasks' container and its logs, as the program and the upgrade gate name them.

infra/containers.py names the container of every central task (the service's and the gc's)
``CONTAINER_NAME`` and infra/project_service.py names the project's log group
``log_group_name``; the upgrade gate (projects/upgrade_provider.py) overrides that container's
command to run the migration, reads its exit code and, when it fails, points at its log stream.
Standard library only: the gate is a Pulumi dynamic provider, and its process imports this
module without pulumi_aws.
"""

from __future__ import annotations

from mlflow_aws.names import stack_slug

CONTAINER_NAME = "mlflow"
# The service's awslogs stream prefix; ECS names each stream <prefix>/<container>/<task id>.
SERVICE_STREAM_PREFIX = CONTAINER_NAME


def log_group_name(stack: str, project: str) -> str:
    """The CloudWatch log group of a project's central tasks (service and gc)."""
    return f"/mlflow-aws/{stack_slug(stack)}/{project}"


def service_log_stream(task_id: str) -> str:
    """The log stream of one task that runs the service's task definition."""
    return f"{SERVICE_STREAM_PREFIX}/{CONTAINER_NAME}/{task_id}"
