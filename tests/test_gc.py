"""``python -m helper gc`` on MariaDB (TLS, as Aurora) and a versioned moto bucket.

The scenario (tests/support/gc_world.py) is made through a real MLflow server with proxied
artifacts, as teammates' and the central servers run it. gc must remove exactly what MLflow marked
deleted, keep (and name) what something that stays still uses, never touch another project's
prefix, report the same figures in a dry run without changing anything, and finish the job
when run again after being SIGKILLed half-way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gc_world import (  # noqa: F401 (fixtures)
    BUCKET,
    World,
    aws,
    build_world,
    gc,
    mentions,
    migrate,
    mlflow_server,
    objects,
    publish,
    table_rows,
    versioned_bucket,
)
from tests.support.helper_run import helper_env, run_helper
from tests.support.services import MariaDB
from tests.support.stack_on_moto import (
    Project,
    aws_client,
    create_project,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Project, World, Path, dict[str, str]]]:
    project = create_project(mariadb, "churn")
    migrate(mariadb.url(project.user, project.password, project.schema))
    with mlflow_server(
        mariadb.url(project.user, project.password, project.schema),
        f"s3://{BUCKET}/{project.name}",
        {**os.environ, **aws},
        tmp_path,
    ) as url:
        made = build_world(url, project, aws, BUCKET)
    yield project, made, publish(aws, project, tmp_path), helper_env(aws, tmp_path)


def without_report(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k not in ("dry_run", "stdout")}


def test_gc_removes_exactly_what_was_deleted(
    world: tuple[Project, World, Path, dict[str, str]], mariadb: MariaDB, aws: dict[str, str]
) -> None:
    project, made, outputs, env = world
    rows_before = table_rows(mariadb, project.schema)
    objects_before = objects(aws, BUCKET)
    live = {*made.live_runs, *made.kept_runs, *made.live_models, *made.live_traces}
    owned_before = owned_rows(mariadb, project.schema, live)

    dry = gc(outputs, project.name, env, "--dry-run", "--trace-retention", "30d")
    assert dry["dry_run"] is True
    assert table_rows(mariadb, project.schema) == rows_before  # nothing changed
    assert objects(aws, BUCKET) == objects_before

    real = gc(outputs, project.name, env, "--trace-retention", "30d")
    assert without_report(real) == without_report(dry)  # the dry run said exactly this
    assert real["runs"] == len(made.gone_runs)
    assert real["logged_models"] == len(made.gone_models)
    assert real["experiments"] == len(made.gone_experiments)
    assert real["traces"] == len(made.gone_traces)
    assert real["artifacts_outside_root"] == 1  # the crafted experiment's run

    rows_after = table_rows(mariadb, project.schema)
    gone = set(made.gone_ids)
    # Every row of every run, model and trace that stays is there, byte for byte.
    assert owned_rows(mariadb, project.schema, live) == owned_before
    removed = 0
    # An input's tags name the input, not the run: they go with the inputs that name the run.
    gone_inputs = {row[0] for row in rows_before["inputs"] - rows_after["inputs"]}
    for table, before in rows_before.items():
        after = rows_after[table]
        assert after <= before, f"{table}: gc changed or added rows"
        for row in before - after:
            removed += 1
            # Every removed row belongs to something deleted: it names a removed run, model or
            # trace, or it belongs to the removed experiment.
            assert (
                mentions(row, gone)
                or _experiment_row(table, row, made)
                or (table == "input_tags" and row[0] in gone_inputs)
            ), (table, row)
        # Nothing left names a removed run, model or trace, except a live logged model's
        # link to the run it came from, and a trace's metadata naming the run that made it.
        for row in after:
            if mentions(row, gone):
                assert table in ("logged_models", "trace_request_metadata"), (table, row)
    assert removed == real["rows"]  # every row removed was counted, none twice
    assert all(rows_before[t] == rows_after[t] for t in ("model_versions", "registered_models"))

    objects_after = objects(aws, BUCKET)
    for key, value in objects_before.items():
        if any(f"/{i}/" in key for i in gone) or key.startswith(
            tuple(f"churn/{e}/" for e in made.gone_experiments)
        ):
            assert key not in objects_after, key
        else:
            assert objects_after.get(key) == value, key  # byte-identical, same version
    assert objects_after[made.outside_key] == objects_before[made.outside_key]
    assert len(objects_before) - len(objects_after) == real["objects"]

    for run_id, why in made.kept_runs.items():
        assert run_id in real["stdout"] and why in real["stdout"], real["stdout"]
    again = gc(outputs, project.name, env, "--trace-retention", "30d")
    assert (again["runs"], again["rows"], again["objects"]) == (0, 0, 0)


OWNERS = (
    ("runs", "run_uuid"), ("metrics", "run_uuid"), ("latest_metrics", "run_uuid"),
    ("params", "run_uuid"), ("tags", "run_uuid"), ("inputs", "destination_id"),
    ("logged_models", "model_id"), ("logged_model_metrics", "model_id"),
    ("logged_model_params", "model_id"), ("logged_model_tags", "model_id"),
    ("trace_info", "request_id"), ("spans", "trace_id"), ("trace_tags", "request_id"),
    ("trace_request_metadata", "request_id"),
)  # fmt: skip


def owned_rows(mariadb: MariaDB, schema: str, ids: set[str]) -> dict[str, set[Any]]:
    """The rows each of ``ids`` owns (its own table's row and its children's)."""
    marks = ", ".join(["%s"] * len(ids))
    return {
        table: set(mariadb.query(
            f"SELECT * FROM `{table}` WHERE `{column}` IN ({marks})", tuple(ids), database=schema))
        for table, column in OWNERS
    }  # fmt: skip


def _experiment_row(table: str, row: tuple[Any, ...], made: World) -> bool:
    """A row of a removed experiment that names no run, model or trace (its tags, datasets)."""
    return table in ("experiments", "experiment_tags", "datasets") and any(
        value in made.gone_experiments for value in row if isinstance(value, int)
    )


# -- killed half-way ------------------------------------------------------------------------------


def many_metric_runs(
    mariadb: MariaDB, aws: dict[str, str], name: str, runs: int, metrics: int
) -> tuple[Project, list[str], str]:
    """A project with ``runs`` deleted runs of ``metrics`` metrics and 3 objects each, and one
    live run like them; made straight in the database and the bucket (fast)."""
    from mlflow import MlflowClient

    project = create_project(mariadb, name)
    uri = mariadb.url(project.user, project.password, project.schema)
    migrate(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("big", artifact_location="mlflow-artifacts:/big")
    s3 = aws_client("s3", aws)
    ids = []
    for _ in range(runs + 1):
        run_id = client.create_run(experiment).info.run_id
        client.log_param(run_id, "p", "v")
        project.query(
            "INSERT INTO metrics (`key`, value, timestamp, run_uuid, step, is_nan) "
            f"SELECT CONCAT('k', seq %% 7), seq, seq, %s, seq, 0 FROM seq_1_to_{metrics}",
            (run_id,),
        )
        for i in range(3):
            s3.put_object(Bucket=BUCKET, Key=f"{name}/big/{run_id}/artifacts/f{i}", Body=b"x" * i)
        ids.append(str(run_id))
    live, *gone = ids
    for run_id in gone:
        client.delete_run(run_id)
    return project, gone, live


@pytest.mark.parametrize("kill_after", [1, 25])
def test_a_gc_killed_half_way_and_run_again_leaves_no_orphan(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path, kill_after: int
) -> None:
    name = f"killed{kill_after}"
    project, gone, live = many_metric_runs(mariadb, aws, name, runs=3, metrics=20_000)
    outputs = publish(aws, project, tmp_path)
    env = {**helper_env(aws, tmp_path), "MLFLOW_AWS_GC_BATCH_ROWS": "1000"}
    live_rows = owned_rows(mariadb, project.schema, {live})
    live_objects = {k: v for k, v in objects(aws, BUCKET).items() if live in k}

    process = subprocess.Popen(
        [sys.executable, "-m", "helper", "gc", "--project", name, "--outputs", str(outputs)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    seen = 0
    deadline = time.monotonic() + 300
    for line in process.stderr:
        seen += "deleted so far" in line
        if seen >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    assert process.wait(30) == -signal.SIGKILL, "gc finished before it could be killed"
    # Killed mid-way: something is gone, not everything.
    [(left,)] = project.query("SELECT COUNT(*) FROM metrics")
    assert 20_000 < left < 4 * 20_000

    again = gc(outputs, name, env)
    assert again["runs"] == 3 - (kill_after > 20)  # the run finished before the kill is gone
    marks = ", ".join(["%s"] * len(gone))
    for table, column in OWNERS:
        found = project.query(f"SELECT COUNT(*) FROM `{table}` WHERE `{column}` IN ({marks})",
                              tuple(gone))  # fmt: skip
        assert found == [(0,)], f"orphan rows in {table}"
    remaining = objects(aws, BUCKET)
    assert not [k for k in remaining if any(run in k for run in gone)], "orphan objects"
    assert owned_rows(mariadb, project.schema, {live}) == live_rows
    assert {k: v for k, v in remaining.items() if live in k} == live_objects


def test_the_image_runs_gc_as_a_task(
    image_venv: Path, mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    """``entrypoint.sh gc`` with a task's environment (URI and CA bundle as the task's secrets
    deliver them, the task role's credentials), the image's own packages."""
    from tests.support import image_server

    project, _, live = many_metric_runs(mariadb, aws, "task", runs=2, metrics=300)
    env = {
        "MLFLOW_BACKEND_STORE_URI": project.backend_store_uri,
        "MLFLOW_AWS_DB_CA_BUNDLE": mariadb.ca_path.read_text(),
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/{project.name}",
        "MLFLOW_AWS_GC_OLDER_THAN": "0",
        "MLFLOW_PORT": "0",
        **aws,
    }
    task = image_server.start(image_venv, env, tmp_path / "home", tmp_path / "gc.log", ("gc",))
    try:
        assert task.process.wait(180) == 0, task.log()
    finally:
        image_server.stop(task)
    log = task.log()
    figures = json.loads(log.strip().splitlines()[-1])["mlflow_aws_gc"]
    assert (figures["runs"], figures["objects"], figures["rows_by_table"]["metrics"]) == (
        2, 6, 600
    )  # fmt: skip
    assert project.password not in log
    assert project.query("SELECT run_uuid FROM runs") == [(live,)]

    # Without a verifiable database it never starts.
    insecure = {k: v for k, v in env.items() if k != "MLFLOW_AWS_DB_CA_BUNDLE"}
    refused = image_server.start(image_venv, insecure, tmp_path / "h2", tmp_path / "r.log", ("gc",))
    try:
        assert refused.process.wait(60) == 2
    finally:
        image_server.stop(refused)
    assert "cannot be verified" in refused.log()


def test_older_than_leaves_recent_deletions_for_later(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, gone, _ = many_metric_runs(mariadb, aws, "recent", runs=2, metrics=10)
    outputs = publish(aws, project, tmp_path)
    env = helper_env(aws, tmp_path)
    # One run was deleted 40 days ago, the other just now.
    project.query(
        "UPDATE runs SET deleted_time = deleted_time - %s WHERE run_uuid = %s",
        (40 * 86_400_000, gone[0]),
    )
    report = gc(outputs, project.name, env, "--older-than", "30d")
    assert report["runs"] == 1
    assert project.query("SELECT run_uuid FROM runs WHERE lifecycle_stage = 'deleted'") == [
        (gone[1],)
    ]
    refused = run_helper(["gc", "--project", project.name, "--outputs", str(outputs),
                          "--older-than", "a month"], env)  # fmt: skip
    assert refused.returncode == 2 and "is not a duration" in refused.stderr
