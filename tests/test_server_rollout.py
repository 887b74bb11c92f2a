"""A rollout of the central server, for real: the image's entrypoint (docker/entrypoint.sh) with the
image's own packages, on MariaDB (TLS required, like Aurora), as ECS tasks start it.

* Two servers started together on a schema at an older MLflow revision: the schema is upgraded
  exactly once (the MySQL named lock of mlflow_aws.migration.prepare), and both serve.
* A migration that cannot succeed, or a database whose certificate the CA bundle does not
  vouch for, keeps the server from starting (on ECS: the task fails, the circuit breaker rolls
  back), without printing the password.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import image_server
from tests.support.image_server import task_env
from tests.support.services import MariaDB, _make_tls_files, free_port
from tests.support.stack_on_moto import Project, create_project

# Puts a fresh schema at the MLflow revision N steps before head (with this environment's
# mlflow, the same version as the image's), the way an older MLflow would have left it.
OLD_SCHEMA = r"""
import os, sys
import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory
from mlflow.store.db import utils
from mlflow.store.tracking.dbmodels.initial_models import Base

engine = sqlalchemy.create_engine(os.environ["URI"])
config = utils._get_alembic_config("")
revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()]
old = revisions[int(sys.argv[1])]
Base.metadata.create_all(engine)
with engine.begin() as connection:
    config.attributes["connection"] = connection
    command.upgrade(config, old)
engine.dispose()
print(old, revisions[0])
"""
STEPS_BACK = 8


def schema_at_old_revision(project: Project) -> tuple[str, str]:
    uri = project.mariadb.url(project.user, project.password, project.schema)
    result = subprocess.run(
        [sys.executable, "-c", OLD_SCHEMA, str(STEPS_BACK)],
        env={"PATH": "/usr/bin:/bin", "URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    old, head = result.stdout.split()
    assert old != head
    return old, head


def revision(project: Project) -> str:
    return str(project.query("SELECT version_num FROM alembic_version")[0][0])


def post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return dict(json.loads(response.read()))


@pytest.mark.slow
def test_servers_starting_together_migrate_an_old_schema_exactly_once(
    image_venv: Path, mariadb: MariaDB, tmp_path: Path
) -> None:
    project = create_project(mariadb, "rollout")
    old, head = schema_at_old_revision(project)
    assert revision(project) == old

    servers = [
        image_server.start(
            image_venv,
            task_env(project, free_port(), tmp_path),
            tmp_path / f"task{i}",
            tmp_path / f"task{i}.log",
        )
        for i in (1, 2)
    ]  # started together, as a rollout of 2 tasks is
    try:
        for server in servers:
            image_server.wait_healthy(server)
        logs = [server.log() for server in servers]
        upgraded = [
            log
            for log in logs
            if f"upgrading schema {project.schema} from revision {old} to {head}" in log
        ]
        assert len(upgraded) == 1, "\n----\n".join(logs)
        [other] = [log for log in logs if log is not upgraded[0]]
        assert f"schema {project.schema} is up to date (revision {head})" in other
        # The second really waited for the first (they did start together).
        assert "another server holds the migration lock" in other, other
        assert revision(project) == head
        for log in logs:
            assert project.password not in log

        # Both serve the same store: what one writes, the other reads.
        api = "/api/2.0/mlflow"
        created = post_json(f"{servers[0].url}{api}/experiments/create", {"name": "rollout"})
        found = post_json(f"{servers[1].url}{api}/experiments/search", {"max_results": 10})
        experiments = found["experiments"]
        assert isinstance(experiments, list)
        assert created["experiment_id"] in [e["experiment_id"] for e in experiments]
    finally:
        for server in servers:
            image_server.stop(server)


@pytest.mark.slow
def test_a_migration_that_fails_keeps_the_server_from_starting(
    image_venv: Path, mariadb: MariaDB, tmp_path: Path
) -> None:
    project = create_project(mariadb, "rollout-fail")
    schema_at_old_revision(project)
    # A revision this MLflow does not know: a newer MLflow migrated the schema (a rollback of
    # the image after a rollout), or someone edited it.
    project.query("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    server = image_server.start(
        image_venv, task_env(project, free_port(), tmp_path), tmp_path / "t", tmp_path / "t.log"
    )
    try:
        assert server.process.wait(120) == 1
    finally:
        image_server.stop(server)
    log = server.log()
    assert "not starting: schema rollout_fail is at revision ffffffffffff" in log
    assert "Uvicorn running" not in log and "Listening" not in log
    assert project.password not in log


@pytest.mark.slow
def test_a_database_certificate_the_ca_bundle_does_not_vouch_for_is_refused(
    image_venv: Path, mariadb: MariaDB, tmp_path: Path
) -> None:
    project = create_project(mariadb, "rollout-tls")
    other_ca, _, _ = _make_tls_files(tmp_path)  # a CA that did not sign MariaDB's certificate
    env = task_env(project, free_port(), tmp_path, ca_pem=other_ca.read_text())
    started = time.monotonic()
    server = image_server.start(image_venv, env, tmp_path / "t", tmp_path / "t.log")
    try:
        assert server.process.wait(120) == 1
    finally:
        image_server.stop(server)
    log = server.log()
    assert "not starting" in log and "CERTIFICATE_VERIFY_FAILED" in log, log[-3000:]
    assert project.password not in log
    assert time.monotonic() - started < 60  # a certificate error is not retried
    assert project.query("SHOW TABLES") == []  # nothing was created over the untrusted link
