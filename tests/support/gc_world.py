"""A project with everything gc must tell apart, made through a real MLflow server.

``mlflow server`` (the pinned MLflow) on the project's MariaDB schema with proxied artifacts in
``s3://<bucket>/<project>/`` (moto), as the helper's and the central servers run it; the stock
client then logs, deletes and restores. ``build_world`` returns what was made and which of it
gc must remove, keep, or never touch. Snapshots of every table and every object compare the
states before and after.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helper.mlflow_cli import URI_ARGUMENT, mlflow_argv, mlflow_environment
from helper.watchdog import stop_group
from projects.project import server_policy_document
from tests.support.helper_run import run_helper
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import (
    REGION,
    Project,
    aws_client,
    bundle_for,
    put_connection_secret,
    server_role,
    write_outputs,
)

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def migrate(uri: str, python: str = sys.executable) -> None:
    """``mlflow db upgrade`` by ``python``'s MLflow, the URI out of argv (helper.mlflow_cli)."""
    result = subprocess.run(
        mlflow_argv("db", "upgrade", URI_ARGUMENT, python=python),
        env=mlflow_environment(uri, os.environ),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def versioned_bucket(env: dict[str, str], bucket: str) -> None:
    """The artifact bucket as the stack makes it: versioned (deletes leave noncurrent versions)."""
    s3 = aws_client("s3", env)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


@contextlib.contextmanager
def mlflow_server(uri: str, destination: str, env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A plain proxied-artifacts MLflow server; yields its URL. The URI reaches it as its
    ``--backend-store-uri`` envvar, out of argv."""
    port = free_port()
    log = (log_dir / f"mlflow-server-{port}.log").open("wb")
    process = subprocess.Popen(
        [MLFLOW, "server", "--artifacts-destination", destination,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=mlflow_environment(uri, {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (log_dir / f"mlflow-server-{port}.log").read_text()
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):  # noqa: S310
                break
            assert time.monotonic() < deadline, "mlflow server not healthy"
            time.sleep(0.2)
        yield url
    finally:
        stop_group(process.pid, process, timeout=30)  # the helper's own group stop
        log.close()


@dataclass
class World:
    """Ids of what the scenario made, by what gc must do with it."""

    gone_runs: list[str] = field(default_factory=list)
    kept_runs: dict[str, str] = field(default_factory=dict)  # run -> why it stays
    live_runs: list[str] = field(default_factory=list)
    gone_models: list[str] = field(default_factory=list)
    live_models: list[str] = field(default_factory=list)
    gone_experiments: list[int] = field(default_factory=list)
    kept_experiments: list[int] = field(default_factory=list)
    live_experiments: list[int] = field(default_factory=list)
    gone_traces: list[str] = field(default_factory=list)
    live_traces: list[str] = field(default_factory=list)
    outside_key: str = ""  # another project's object a crafted run points at

    @property
    def gone_ids(self) -> list[str]:
        return [*self.gone_runs, *self.gone_models, *self.gone_traces]


def build_world(url: str, project: Project, env: dict[str, str], bucket: str) -> World:
    """Make the scenario through the server at ``url`` (the stock client, as a user would)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    world = World()
    work = Path(tempfile.mkdtemp(prefix="gc-world-"))
    try:
        (work / "model.txt").write_text("weights")
        (work / "sub").mkdir()
        (work / "sub" / "data.bin").write_bytes(os.urandom(3000))

        def run(experiment: str, name: str, metrics: int = 20) -> str:
            run_id = client.create_run(experiment, run_name=name).info.run_id
            client.log_batch(
                run_id,
                metrics=[Metric("loss", 1.0 / (i + 1), 1_700_000_000_000 + i, i)
                         for i in range(metrics)],
                params=[Param("lr", "0.1"), Param("name", name)],
                tags=[RunTag("team", "churn")],
            )  # fmt: skip
            client.log_artifacts(run_id, str(work))
            dataset = Dataset(name=f"ds-{name}", digest=f"d-{name}", source_type="local",
                              source="/data/x.csv")  # fmt: skip
            context = InputTag("mlflow.data.context", "training")
            client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
            return str(run_id)

        live = client.create_experiment("live")
        world.live_experiments.append(int(live))
        world.live_runs.append(run(live, "live"))
        gone = run(live, "gone")
        world.gone_runs.append(gone)
        registered = run(live, "registered")
        model_metrics = run(live, "model-metrics")

        # A logged model that stays, with a metric logged by a run that is deleted.
        kept_model = client.create_logged_model(live, name="kept", source_run_id=model_metrics,
                                                params={"depth": "3"}, tags={"t": "v"})  # fmt: skip
        client.log_model_artifacts(kept_model.model_id, str(work))
        client.log_metric(model_metrics, "accuracy", 0.9, model_id=kept_model.model_id)
        world.live_models.append(kept_model.model_id)
        # A deleted logged model (artifacts, params, tags, a metric from a live run).
        gone_model = client.create_logged_model(live, name="gone", params={"depth": "9"},
                                                tags={"t": "w"})  # fmt: skip
        client.log_model_artifacts(gone_model.model_id, str(work))
        client.log_metric(world.live_runs[0], "accuracy", 0.1, model_id=gone_model.model_id)
        client.delete_logged_model(gone_model.model_id)
        world.gone_models.append(gone_model.model_id)

        # A registered model version made from a run's own artifacts.
        client.create_registered_model("churn-model")
        client.create_model_version(
            "churn-model",
            source=f"{client.get_run(registered).info.artifact_uri}/model.txt",
            run_id=registered,
        )
        for run_id in (gone, registered, model_metrics):
            client.delete_run(run_id)
        world.kept_runs[registered] = "registered model"
        world.kept_runs[model_metrics] = "logged model"

        # Traces: one in the live experiment (old: past a 30-day retention), one new.
        mlflow.set_experiment(experiment_id=live)
        for _ in range(2):
            with mlflow.start_span("predict") as span:
                span.set_inputs({"x": 1})
                span.set_outputs({"y": 2})
        mlflow.flush_trace_async_logging()
        traces = sorted(t.info.trace_id for t in client.search_traces(locations=[live]))

        # A deleted experiment with everything in it.
        doomed = client.create_experiment("doomed")
        world.gone_experiments.append(int(doomed))
        client.set_experiment_tag(doomed, "owner", "someone")
        doomed_run = run(doomed, "doomed")
        world.gone_runs.append(doomed_run)
        doomed_model = client.create_logged_model(doomed, name="doomed", source_run_id=doomed_run,
                                                  params={"p": "1"})  # fmt: skip
        client.log_model_artifacts(doomed_model.model_id, str(work))
        client.log_metric(doomed_run, "accuracy", 0.5, model_id=doomed_model.model_id)
        world.gone_models.append(doomed_model.model_id)
        mlflow.set_experiment(experiment_id=doomed)
        with mlflow.start_span("doomed") as span:
            span.set_inputs({"x": 3})
        mlflow.flush_trace_async_logging()
        world.gone_traces += [t.info.trace_id for t in client.search_traces(locations=[doomed])]
        mlflow.set_experiment(experiment_id=live)
        client.delete_experiment(doomed)

        # A deleted experiment with a run restored after it: the experiment and run stay.
        restored = client.create_experiment("restored")
        world.kept_experiments.append(int(restored))
        restored_run = run(restored, "restored")
        world.live_runs.append(restored_run)
        restored_gone = run(restored, "restored-gone")
        world.gone_runs.append(restored_gone)
        client.delete_experiment(restored)
        client.restore_run(restored_run)

        # A crafted experiment whose location is another project's prefix.
        world.outside_key = "other/planted/artifacts/keep.txt"
        s3 = aws_client("s3", env)
        s3.put_object(Bucket=bucket, Key=world.outside_key, Body=b"another project's")
        crafted = client.create_experiment("crafted", artifact_location=f"s3://{bucket}/other")
        world.live_experiments.append(int(crafted))
        crafted_run = client.create_run(crafted).info.run_id
        client.log_metric(crafted_run, "m", 1.0)
        client.delete_run(crafted_run)
        world.gone_runs.append(str(crafted_run))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # The first live trace becomes old (past a 30-day retention); the other stays new.
    old, new = traces
    project.query(
        "UPDATE trace_info SET timestamp_ms = timestamp_ms - %s WHERE request_id = %s",
        (40 * 86_400_000, old),
    )
    world.gone_traces.append(old)
    world.live_traces.append(new)
    return world


# -- snapshots ----------------------------------------------------------------------------------


def table_rows(mariadb: MariaDB, schema: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table of the schema (values as the driver returns them)."""
    listed = mariadb.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    )
    tables = [str(t) for (t,) in listed]
    return {t: set(mariadb.query(f"SELECT * FROM `{t}`", database=schema)) for t in tables}


def objects(env: dict[str, str], bucket: str) -> dict[str, tuple[str, bytes]]:
    """Current objects: key -> (version id, content)."""
    s3 = aws_client("s3", env)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = (str(body.get("VersionId")), body["Body"].read())
    return found


def mentions(row: tuple[Any, ...], ids: set[str]) -> bool:
    return any(isinstance(v, str) and any(i in v for i in ids) for v in row)


BUCKET = "mlflow-aws-gc-artifacts"  # the stack's bucket prefix (helper/trust.py)
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"


@pytest.fixture(scope="module")
def aws(moto: MotoServer) -> dict[str, str]:
    env = moto.aws_env()
    versioned_bucket(env, BUCKET)
    return env


def publish(aws: dict[str, str], project: Project, tmp_path: Path) -> Path:
    """The project as pulumi up leaves it: its secret, server role (its prefix only), outputs."""
    policy = json.dumps(server_policy_document(BUCKET_ARN, project.name))
    role = server_role(aws, f"{project.name}-server", policy)
    bundle = bundle_for(project, "gc", BUCKET, role)
    arn = put_connection_secret(aws, bundle)
    return write_outputs(tmp_path / f"outputs-{project.name}.json", BUCKET, {project.name: arn})


def gc(outputs: Path, project: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """``helper gc --json``; the figures it printed."""
    result = run_helper(
        ["gc", "--project", project, "--outputs", str(outputs), "--json", *extra], env, 300
    )
    assert result.returncode == 0, result.stderr[-4000:] + result.stdout[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])["mlflow_aws_gc"]
    figures["stdout"] = result.stdout
    return dict(figures)
