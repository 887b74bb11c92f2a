"""A server of another MLflow version than the schema's refuses to start, saying which to use.

The previous MLflow minor (3.16.1) is installed in its own venv: the image's lock with only
the three mlflow pins changed, installed as the Dockerfile installs the lock (cached under
.services/ like the image's venv, tests/test_image_requirements.py). It makes and fills a
schema; then every path of the pinned MLflow is tried on it: the helper's process runtime,
``serve --local`` on an SQLite store, gc, and the image's entrypoint (a task) without and with
migrating on start; after the migration, a task of the old version is refused in turn.
"""

from __future__ import annotations

import os
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from helper.mlflow_cli import mlflow_environment
from tests.support import image_server
from tests.support.gc_world import aws, migrate, publish
from tests.support.helper_run import helper_env, run_helper
from tests.support.image_server import task_env
from tests.support.image_venv import (  # noqa: F401 (fixtures)
    CACHE_DIR,
    LOCK,
    PREVIOUS,
    cached_venv,
    dockerfile_pip_flags,
    previous_mlflow,
    python_for_image,
)
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import create_project

pytestmark = pytest.mark.slow
__all__ = ["aws"]
PINNED = metadata.version("mlflow")
FILL = """
import os
from mlflow import MlflowClient
client = MlflowClient(os.environ["MLFLOW_BACKEND_STORE_URI"])
experiment = client.create_experiment("made-by-3.16")
run = client.create_run(experiment).info.run_id
client.log_metric(run, "loss", 0.25, step=3)
client.log_param(run, "lr", "0.1")
client.create_registered_model("churn")
print(run)
"""


def test_a_schema_of_the_previous_minor_is_refused_until_upgraded_then_the_old_is(
    previous_mlflow: Path,
    image_venv: Path,
    mariadb: MariaDB,
    aws: dict[str, str],
    moto: MotoServer,
    tmp_path: Path,
) -> None:
    project = create_project(mariadb, "older")
    uri = mariadb.url(project.user, project.password, project.schema)
    migrate(uri, str(previous_mlflow / "bin" / "python"))  # made by 3.16.1…
    run_id = (
        subprocess.run(
            [str(previous_mlflow / "bin" / "python"), "-c", FILL],
            env=mlflow_environment(uri, os.environ),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        .stdout.strip()
        .splitlines()[-1]
    )  # fmt: skip  … and filled by it
    [(old_revision,)] = project.query("SELECT version_num FROM alembic_version")
    outputs = publish(aws, project, tmp_path)
    env = helper_env(aws, tmp_path)
    source = ["--project", project.name, "--outputs", str(outputs)]

    # The pinned MLflow's laptop server refuses it and says how to upgrade.
    port = free_port()
    refused = run_helper(["serve", *source, "--runtime", "process", "--port", str(port)], env)
    assert refused.returncode == 1
    assert f"is at revision {old_revision} of an older MLflow and this is mlflow {PINNED}" in (
        refused.stderr
    )
    assert f"python -m helper upgrade --project {project.name}" in refused.stderr
    # gc too: it must run the schema's own MLflow.
    gc = run_helper(["gc", *source], env)
    assert gc.returncode == 1 and "gc must run the schema's own MLflow" in gc.stderr

    # A task of the pinned image that is not to migrate refuses it as well.
    no_migrate = {**task_env(project, free_port(), tmp_path),
                  "MLFLOW_AWS_DB_MIGRATE_ON_START": "false"}  # fmt: skip
    task = image_server.start(image_venv, no_migrate, tmp_path / "t1", tmp_path / "t1.log")
    try:
        assert task.process.wait(120) == 1
    finally:
        image_server.stop(task)
    assert f"not starting: schema {project.schema} is at revision {old_revision}" in task.log()
    assert project.query("SELECT version_num FROM alembic_version") == [(old_revision,)]

    # While another server of the project is connected, the upgrade is refused, naming it.
    laptop = mariadb.connect(user=project.user, password=project.password)
    try:
        busy = run_helper(["upgrade", *source], env)
    finally:
        laptop.close()
    assert busy.returncode == 1, busy.stderr
    assert "while other servers use it: 127.0.0.1:" in busy.stderr and "connected at least" in (
        busy.stderr
    )
    assert "--despite-connections" in busy.stderr
    assert project.query("SELECT version_num FROM alembic_version") == [(old_revision,)]
    for _ in range(50):  # the server notices the closed session
        if not mariadb.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (project.user,)
        ):
            break
        time.sleep(0.1)

    # The upgrade (one writer, the helper) migrates it and records the pinned version …
    upgraded = run_helper(["upgrade", *source], env)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert project.query("SELECT mlflow_version FROM mlflow_aws_schema") == [(PINNED,)]
    assert project.query("SELECT value, step FROM metrics WHERE run_uuid = %s", (run_id,)) == [
        (0.25, 3)
    ]  # the old MLflow's data, intact
    assert project.query("SELECT name FROM registered_models") == [("churn",)]

    # … so now a task of the previous version is the one refused, told which to run.
    old_task = image_server.start(
        previous_mlflow,
        task_env(project, free_port(), tmp_path),
        tmp_path / "t2",
        tmp_path / "t2.log",
    )
    try:
        assert old_task.process.wait(120) == 1
    finally:
        image_server.stop(old_task)
    log = old_task.log()
    assert f"which mlflow {PREVIOUS} does not know: mlflow {PINNED} migrated it" in log, log
    assert f"use mlflow {PINNED}" in log
    assert "Uvicorn running" not in log and project.password not in log


def test_the_local_store_of_another_mlflow_is_refused(
    previous_mlflow: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    store = data / "default" / "mlflow.db"
    store.parent.mkdir(parents=True)
    migrate(f"sqlite:///{store}", str(previous_mlflow / "bin" / "python"))
    env = helper_env({}, tmp_path)
    port = free_port()
    refused = run_helper(["serve", "--local", "--data-dir", str(data), "--port", str(port)], env)
    assert refused.returncode == 1
    assert "the local store of project default is at revision" in refused.stderr
    assert f"python -m helper upgrade --local --project default --data-dir {data}" in refused.stderr
    upgraded = run_helper(["upgrade", "--local", "--data-dir", str(data)], env)
    assert upgraded.returncode == 0, upgraded.stderr
    dry = run_helper(["gc", "--local", "--dry-run", "--data-dir", str(data)], env)
    assert dry.returncode == 0 and "would remove 0 runs" in dry.stdout, dry.stderr
    gc = run_helper(["gc", "--local", "--data-dir", str(data)], env)
    assert gc.returncode == 0 and "removed 0 runs" in gc.stdout, gc.stderr


def test_the_docker_runtime_refuses_a_schema_of_a_newer_mlflow_than_its_image(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    """The helper compares the image's version (the bundle's) with the schema's record before
    pulling anything; the entrypoint would refuse it again inside."""
    from tests.support.helper_run import fake_docker

    project = create_project(mariadb, "newer")
    migrate(mariadb.url(project.user, project.password, project.schema))
    project.query(
        "CREATE TABLE mlflow_aws_schema (id INTEGER PRIMARY KEY, mlflow_version VARCHAR(64), "
        "revision VARCHAR(64), migrated_at_ms BIGINT)"
    )
    project.query("INSERT INTO mlflow_aws_schema VALUES (1, '9.9.0', 'x', 0)")
    outputs = publish(aws, project, tmp_path)
    docker_dir, state = fake_docker(tmp_path)
    env = {**helper_env(aws, tmp_path), "PATH": f"{docker_dir}:{os.environ['PATH']}",
           "FAKE_DOCKER_STATE": str(state)}  # fmt: skip
    refused = run_helper(["serve", "--project", project.name, "--outputs", str(outputs),
                          "--port", str(free_port())], env)  # fmt: skip
    assert refused.returncode == 1
    assert "belongs to mlflow 9.9.0 (its last migration)" in refused.stderr, refused.stderr
    assert "use mlflow 9.9.0" in refused.stderr
    calls = state / "calls.jsonl"
    assert not calls.exists() or "pull" not in calls.read_text()  # refused before pulling
