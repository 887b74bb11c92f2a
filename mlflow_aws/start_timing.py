"""How long a starting server may take: derived from the one wait server.env defines.

A starting server waits up to ``MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS`` (server.env) for another
server's schema migration (mlflow_aws/migration/prepare.py) before it serves. On ECS the service's
health check grace (infra/project_service.py) must outlast that wait, or the load balancer's
failed checks stop a task that is only waiting; ``pulumi up``'s rollout timeout and the upgrade
gate's wait for the new tasks (projects/upgrade_provider.py) must outlast the grace. Each is
computed here from the lock wait, so changing server.env moves all of them.
"""

from __future__ import annotations

from mlflow_aws.server_settings import migration_lock_seconds

# After the wait: connect (a paused Aurora resumes in ~15 s), check the schema, start uvicorn.
SERVE_AFTER_LOCK_SECONDS = 60
# Around the grace: placing the tasks and pulling the image, two passing health checks, the old
# tasks draining (deregistration delay) and stopping.
ROLLOUT_SLACK_SECONDS = 1200


def health_check_grace_seconds() -> int:
    """The ECS service's healthCheckGracePeriodSeconds."""
    return migration_lock_seconds() + SERVE_AFTER_LOCK_SECONDS


def rollout_seconds() -> int:
    """How long a rollout may take to reach steady state (the service's create/update timeout,
    the upgrade gate's wait for the service's tasks)."""
    return health_check_grace_seconds() + ROLLOUT_SLACK_SECONDS
