"""The migration lock wait and what must outlast it: one definition (server.env), the rest derived.

A starting server waits up to ``MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS`` for another's schema
migration before it serves. On ECS, the service's health check grace must outlast that wait (or
the load balancer's failing checks kill a task that is only waiting, and the circuit breaker
rolls back a good deployment), and ``pulumi up``'s rollout timeout (and the upgrade gate's wait
for the new tasks) must outlast the grace. Each test fails when one link is changed alone: a
restated number instead of the derived one, or a timeout left behind a longer wait.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from helper.upgrade import migration_lock_seconds as helper_lock_seconds
from infra import project_service
from mlflow_aws import environment as env_names
from mlflow_aws.server import prepare
from mlflow_aws.server_settings import SERVER_ENV_PATH, migration_lock_seconds
from projects.upgrade_provider import DEFAULT_START_TIMEOUT_SECONDS
from tests.support.pulumi_mocks import run_program


def lock_in_server_env() -> int:
    """Read straight from the file the image bakes, not through the parser under test."""
    text = SERVER_ENV_PATH.read_text(encoding="utf-8")
    found = re.findall(rf"^{env_names.DB_MIGRATION_LOCK_SECONDS}=(\d+)$", text, re.MULTILINE)
    assert len(found) == 1, "server.env defines the migration lock wait exactly once"
    return int(found[0])


def test_every_reader_of_the_lock_wait_takes_server_envs_value() -> None:
    lock = lock_in_server_env()
    assert migration_lock_seconds() == lock
    assert helper_lock_seconds({}) == lock  # helper upgrade holds the lock as long


def test_a_server_started_without_the_variable_waits_as_long_as_the_image_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prepare's own default is server.env's, not a second number."""
    waited: list[int] = []
    monkeypatch.setattr(prepare, "prepare", lambda uri, seconds: waited.append(seconds))
    env = {prepare.URI_VARIABLE: "mysql+pymysql://u:p@db/churn", prepare.MIGRATE_VARIABLE: "true"}
    assert prepare.main(env) == 0
    assert waited == [lock_in_server_env()]
    # An explicit setting still wins; a non-number is refused, naming the variable.
    assert prepare.main({**env, prepare.LOCK_SECONDS_VARIABLE: "7"}) == 0
    assert waited[-1] == 7
    assert prepare.main({**env, prepare.LOCK_SECONDS_VARIABLE: "soon"}) == 2


def test_the_health_grace_outlasts_the_lock_wait_by_the_time_to_start_serving() -> None:
    lock = lock_in_server_env()
    assert (
        lock + project_service.SERVE_AFTER_LOCK_SECONDS
    ) == project_service.HEALTH_CHECK_GRACE_SECONDS
    assert project_service.SERVE_AFTER_LOCK_SECONDS > 0


def test_the_rollout_and_the_upgrade_gate_wait_longer_than_the_grace() -> None:
    grace = project_service.HEALTH_CHECK_GRACE_SECONDS
    rollout = project_service.ROLLOUT_TIMEOUT_SECONDS
    assert rollout > grace + project_service.DEREGISTRATION_DELAY_SECONDS
    minutes = re.fullmatch(r"(\d+)m", project_service.ROLLOUT_TIMEOUT)
    assert minutes and int(minutes[1]) * 60 >= rollout
    # The gate's own default (projects/upgrade_provider.py, a dynamic provider that does not
    # import the program) must be kept equal by hand: this is the check that it was.
    assert rollout == DEFAULT_START_TIMEOUT_SECONDS


def test_the_deployed_service_gets_the_derived_grace_and_timeouts() -> None:
    r = run_program(
        {
            "mlflow-aws:projects": ["churn"],
            "mlflow-aws:server": {
                "enabled": True,
                "domainName": "mlflow.example.com",
                "hostedZoneId": "Z0123456789ABCDEFGHIJ",
            },
        }
    )
    service: Any = r.one("aws:ecs/service:Service")
    assert service.inputs["healthCheckGracePeriodSeconds"] == lock_in_server_env() + (
        project_service.SERVE_AFTER_LOCK_SECONDS
    )
    assert service.custom_timeouts == {
        "create": project_service.ROLLOUT_TIMEOUT,
        "update": project_service.ROLLOUT_TIMEOUT,
    }
