"""MLflow 3.17.2's own ``mlflow gc`` on MariaDB, reproduced, next to ``helper gc``.

Each test makes the same small scenario twice (two schemas), runs the stock command on one and
``helper gc`` on the other, and asserts both outcomes: the stock defect (if MLflow fixes one,
its assertion fails and says so) and what gc does instead.

Found on 3.17.2 with MariaDB:
* proxied artifacts (``mlflow-artifacts:`` URIs, how every mlflow-aws server stores them):
  without a running server as MLFLOW_TRACKING_URI the command dies on the first such run,
  having removed nothing, and so does every later run: nothing is ever collected;
* foreign keys: ``fk_logged_model_metrics_run_id`` cascades on delete, so collecting a deleted
  run silently deletes the metrics a live logged model holds from it;
* the ORM's ``cascade="all"`` from experiment to runs hard-deletes a run that was restored
  after its experiment was deleted (an active run, with its metrics);
* the files of a registered model version made from a deleted run's artifacts are deleted;
* rows that reference a run without a foreign key stay behind as orphans (``inputs``,
  ``input_tags``).
(The foreign-key *failures* of earlier releases, MLflow #20184 and #23109, no longer happen
on MariaDB: 3.17.2 deletes an experiment's children through the ORM first.)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helper.mlflow_cli import URI_ARGUMENT, mlflow_argv, mlflow_environment
from tests.support.gc_world import BUCKET, aws, gc, migrate, publish
from tests.support.helper_run import helper_env
from tests.support.services import MariaDB
from tests.support.stack_on_moto import Project, aws_client, create_project

pytestmark = pytest.mark.slow
__all__ = ["aws"]  # the module fixture used here

Scenario = Callable[[Any, Project, dict[str, str]], dict[str, str]]


def stock_gc(
    project: Project, env: dict[str, str], tracking_uri: str
) -> subprocess.CompletedProcess[str]:
    """``mlflow gc --backend-store-uri <the project's URI>``, the URI out of argv."""
    uri = project.mariadb.url(project.user, project.password, project.schema)
    return subprocess.run(
        mlflow_argv("gc", "--backend-store-uri", URI_ARGUMENT, "--artifacts-destination",
                    f"s3://{BUCKET}/{project.name}"),
        env=mlflow_environment(uri, {**os.environ, **env, "MLFLOW_TRACKING_URI": tracking_uri}),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def twice(
    mariadb: MariaDB, aws: dict[str, str], name: str, scenario: Scenario
) -> tuple[tuple[Project, dict[str, str]], tuple[Project, dict[str, str]]]:
    """The scenario in two fresh projects, ``<name>-stock`` and ``<name>-ours``."""
    from mlflow import MlflowClient

    made = []
    saved = {k: os.environ.get(k) for k in aws}
    os.environ.update(aws)  # the client writes artifacts to moto
    try:
        for which in ("stock", "ours"):
            project = create_project(mariadb, f"{name}-{which}")
            uri = mariadb.url(project.user, project.password, project.schema)
            migrate(uri)
            made.append((project, scenario(MlflowClient(uri), project, aws)))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return made[0], made[1]


def s3_experiment(client: Any, project: Project, name: str = "e") -> str:
    return str(
        client.create_experiment(name, artifact_location=f"s3://{BUCKET}/{project.name}/{name}")
    )


def keys(aws: dict[str, str], prefix: str) -> list[str]:
    listed = aws_client("s3", aws).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def ours(project: Project, aws: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    return gc(publish(aws, project, tmp_path), project.name, helper_env(aws, tmp_path))


def test_proxied_artifacts_stop_mlflow_gc_for_good(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    def scenario(client: Any, project: Project, env: dict[str, str]) -> dict[str, str]:
        experiment = client.create_experiment("e", artifact_location="mlflow-artifacts:/e")
        run_id = client.create_run(experiment).info.run_id
        key = f"{project.name}/e/{run_id}/artifacts/model.bin"
        aws_client("s3", env).put_object(Bucket=BUCKET, Key=key, Body=b"w")  # as the server did
        client.log_metric(run_id, "loss", 1.0)
        client.delete_run(run_id)
        return {"run": run_id, "key": key}

    (stock, a), (mine, b) = twice(mariadb, aws, "proxied", scenario)
    for _ in range(2):  # and again: the same failure, forever
        result = stock_gc(stock, aws, stock.mariadb.url(stock.user, stock.password, stock.schema))
        assert result.returncode != 0
        assert "mlflow-artifacts URI was supplied, the tracking URI must be a valid http" in (
            result.stderr
        )
    assert stock.query("SELECT COUNT(*) FROM runs") == [(1,)]
    assert keys(aws, a["key"]) == [a["key"]]

    report = ours(mine, aws, tmp_path)
    assert (report["runs"], report["objects"]) == (1, 1)
    assert mine.query("SELECT COUNT(*) FROM runs") == [(0,)]
    assert keys(aws, b["key"]) == []


def test_collecting_a_run_cascades_away_a_live_logged_models_metrics(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    def scenario(client: Any, project: Project, env: dict[str, str]) -> dict[str, str]:
        experiment = s3_experiment(client, project)
        evaluation = client.create_run(experiment).info.run_id
        model = client.create_logged_model(experiment, name="kept")
        client.log_metric(evaluation, "accuracy", 0.93, model_id=model.model_id)
        client.delete_run(evaluation)  # the evaluation run goes; the model stays
        return {"model": model.model_id, "run": evaluation}

    (stock, a), (mine, b) = twice(mariadb, aws, "cascade", scenario)
    model_metrics = "SELECT COUNT(*) FROM logged_model_metrics WHERE model_id = %s"
    assert stock.query(model_metrics, (a["model"],)) == [(1,)]
    result = stock_gc(stock, aws, "http://127.0.0.1:9")  # no proxied artifact: never called
    assert result.returncode == 0, result.stderr[-2000:]
    assert stock.query(model_metrics, (a["model"],)) == [(0,)]  # the live model lost it
    assert stock.query("SELECT lifecycle_stage FROM logged_models") == [("active",)]

    report = ours(mine, aws, tmp_path)
    assert report["runs"] == 0 and "holds metrics this run logged" in report["stdout"]
    assert mine.query(model_metrics, (b["model"],)) == [(1,)]


def test_a_run_restored_in_a_deleted_experiment_is_hard_deleted(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    def scenario(client: Any, project: Project, env: dict[str, str]) -> dict[str, str]:
        experiment = s3_experiment(client, project)
        restored = client.create_run(experiment).info.run_id
        client.log_metric(restored, "loss", 0.5)
        client.delete_experiment(experiment)
        client.restore_run(restored)  # the API allows it; the run is active again
        return {"run": restored}

    (stock, a), (mine, b) = twice(mariadb, aws, "restored", scenario)
    active = "SELECT COUNT(*) FROM runs WHERE run_uuid = %s AND lifecycle_stage = 'active'"
    assert stock.query(active, (a["run"],)) == [(1,)]
    result = stock_gc(stock, aws, "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert stock.query(active, (a["run"],)) == [(0,)]  # an active run, gone
    assert stock.query("SELECT COUNT(*) FROM metrics") == [(0,)]

    report = ours(mine, aws, tmp_path)
    assert report["experiments"] == 0 and "not deleted: restored" in report["stdout"]
    assert mine.query(active, (b["run"],)) == [(1,)]
    assert mine.query("SELECT COUNT(*) FROM metrics") == [(1,)]


def test_a_registered_model_versions_files_are_deleted(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    def scenario(client: Any, project: Project, env: dict[str, str]) -> dict[str, str]:
        experiment = s3_experiment(client, project)
        run_id = client.create_run(experiment).info.run_id
        artifact = tmp_path / f"model-{project.name}.txt"
        artifact.write_text("weights")
        client.log_artifact(run_id, str(artifact))
        client.create_registered_model("churn")
        client.create_model_version(
            "churn", f"{client.get_run(run_id).info.artifact_uri}/{artifact.name}", run_id=run_id
        )
        client.delete_run(run_id)  # the run goes; version 1 of churn stays
        return {"prefix": f"{project.name}/e/{run_id}/"}

    (stock, a), (mine, b) = twice(mariadb, aws, "registered", scenario)
    assert len(keys(aws, a["prefix"])) == 1
    result = stock_gc(stock, aws, "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert keys(aws, a["prefix"]) == []  # version 1's files are gone
    assert stock.query("SELECT COUNT(*) FROM model_versions") == [(1,)]

    report = ours(mine, aws, tmp_path)
    assert report["runs"] == 0 and "registered model 'churn' version 1" in report["stdout"]
    assert len(keys(aws, b["prefix"])) == 1


def test_rows_without_a_foreign_key_are_left_as_orphans(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    def scenario(client: Any, project: Project, env: dict[str, str]) -> dict[str, str]:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        experiment = s3_experiment(client, project)
        run_id = client.create_run(experiment).info.run_id
        dataset = Dataset(name="train", digest="d1", source_type="local", source="/d.csv")
        client.log_inputs(
            run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])]
        )
        client.delete_run(run_id)
        return {"run": run_id}

    (stock, a), (mine, b) = twice(mariadb, aws, "orphans", scenario)
    result = stock_gc(stock, aws, "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert stock.query("SELECT COUNT(*) FROM runs") == [(0,)]
    orphans = "SELECT COUNT(*) FROM inputs WHERE destination_id = %s"
    assert stock.query(orphans, (a["run"],)) == [(1,)]  # names a run that no longer exists
    assert stock.query("SELECT COUNT(*) FROM input_tags") == [(1,)]

    ours(mine, aws, tmp_path)
    assert mine.query(orphans, (b["run"],)) == [(0,)]
    assert mine.query("SELECT COUNT(*) FROM input_tags") == [(0,)]
