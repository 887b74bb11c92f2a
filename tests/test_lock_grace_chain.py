"""The migration lock wait and what must outlast it: one definition (server.env), the rest derived.

A starting server waits up to ``MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS`` for another's schema
migration before it serves. On ECS, the service's health check grace must outlast that wait (or
the load balancer's failing checks kill a task that is only waiting, and the circuit breaker
rolls back a good deployment), and ``pulumi up``'s rollout timeout (and the upgrade gate's wait
for the new tasks) must outlast the grace. Each test fails when one link is changed alone: a
restated number instead of the derived one, or a timeout left behind a longer wait.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helper.upgrade import migration_lock_seconds as helper_lock_seconds
from infra import project_service
from mlflow_aws import environment as env_names
from mlflow_aws import start_timing
from mlflow_aws.migration import prepare
from mlflow_aws.server_settings import SERVER_ENV_PATH, migration_lock_seconds
from projects.upgrade_provider import DEFAULT_START_TIMEOUT_SECONDS
from tests.support.pulumi_mocks import run_program

ROOT = Path(__file__).resolve().parent.parent


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
        lock + start_timing.SERVE_AFTER_LOCK_SECONDS
    ) == project_service.HEALTH_CHECK_GRACE_SECONDS
    assert start_timing.SERVE_AFTER_LOCK_SECONDS > 0


def test_the_rollout_and_the_upgrade_gate_wait_longer_than_the_grace() -> None:
    grace = project_service.HEALTH_CHECK_GRACE_SECONDS
    rollout = project_service.ROLLOUT_TIMEOUT_SECONDS
    assert rollout > grace + project_service.DEREGISTRATION_DELAY_SECONDS
    minutes = re.fullmatch(r"(\d+)m", project_service.ROLLOUT_TIMEOUT)
    assert minutes and int(minutes[1]) * 60 >= rollout
    # The upgrade gate waits as long for the service's new tasks.
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
        start_timing.SERVE_AFTER_LOCK_SECONDS
    )
    assert service.custom_timeouts == {
        "create": project_service.ROLLOUT_TIMEOUT,
        "update": project_service.ROLLOUT_TIMEOUT,
    }


# server.env's lock wait, changed alone (as an edit of the file would), in a fresh interpreter.
_OTHER_LOCK = """
import json
import mlflow_aws.server_settings as settings
baked = settings.server_env_defaults
settings.server_env_defaults = lambda path=settings.SERVER_ENV_PATH: {
    **baked(path), "MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS": "900",
}
from infra import project_service
from mlflow_aws.migration import prepare
from projects.upgrade_provider import DEFAULT_START_TIMEOUT_SECONDS
from helper.upgrade import migration_lock_seconds
waited = []
prepare.prepare = lambda uri, seconds: waited.append(seconds)
prepare.main({prepare.URI_VARIABLE: "mysql+pymysql://u:p@db/churn",
              prepare.MIGRATE_VARIABLE: "true"})
print(json.dumps([project_service.HEALTH_CHECK_GRACE_SECONDS, project_service.ROLLOUT_TIMEOUT,
                  DEFAULT_START_TIMEOUT_SECONDS, waited, migration_lock_seconds({})]))
"""


def test_a_lock_wait_changed_in_server_env_alone_moves_every_timeout_with_it() -> None:
    """A number typed out anywhere in the chain would stay behind when the wait grows."""
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_LOCK], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    grace, rollout, gate, waited, helper = json.loads(done.stdout.splitlines()[-1])
    assert waited == [900] and helper == 900
    assert grace == 900 + start_timing.SERVE_AFTER_LOCK_SECONDS
    rollout_seconds = grace + start_timing.ROLLOUT_SLACK_SECONDS
    assert gate == rollout_seconds and rollout == f"{-(-rollout_seconds // 60)}m"
