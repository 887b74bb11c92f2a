"""Upgrading MLflow with every writer stopped (projects/upgrade_provider.py), for real.

The upgrade resource runs in the SDK's provider server (``python -u -m pulumi.dynamic``, driven
over gRPC as the engine drives it). Its SQL goes through the RDS Data API emulator to MariaDB;
its snapshots and auto-scaling calls to moto; its ECS calls to tests/support/ecs_fake.py, whose
tasks are real processes: the service's tasks are MLflow servers from the image's entrypoint (the
previous minor, 3.16.1, in its own venv, then the pinned MLflow in the image's venv) and the
migration task is ``entrypoint.sh migrate`` of the new image. moto's ECS runs nothing (a task
never stops and has no exit code), hence the fake.

A schema made and filled by MLflow 3.16.1 (a run with a metric and a param, a registered
model, a trace) is upgraded to the pinned MLflow while a teammate's 3.16.1 laptop server holds
a connection from another address (127.0.0.2): refused before anything changes, naming that
host; once it is gone the upgrade runs every step in order, and the data is intact.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import pytest

from helper.mlflow_cli import mlflow_environment
from mlflow_aws.task_container import CONTAINER_NAME
from projects.upgrade_provider import (
    SNAPSHOT_IDENTIFIER,
    MlflowUpgradeProvider,
    SchemaFacts,
    Session,
    describe_clients,
    foreign_sessions,
    needs_upgrade,
    snapshot_identifier,
)
from tests.support import image_server
from tests.support.data_api_emulator import (
    CLUSTER_ARN,
    REGION,
    DataApiEmulator,
    admin_secret,
    provider_environment,
)
from tests.support.ecs_fake import FakeEcs
from tests.support.gc_world import migrate
from tests.support.grpc_provider import ProviderCallError, ProviderClient, provider_server
from tests.support.image_server import task_env
from tests.support.image_venv import PREVIOUS, previous_mlflow
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import Project, create_project

__all__ = ["previous_mlflow"]
PINNED = metadata.version("mlflow")
STEPS = ["check-clients", "stop-writers", "check-clients", "restorable-point", "migrate",
         "start-writers"]  # fmt: skip
FILL = """
import os, mlflow
from mlflow import MlflowClient
uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
client = MlflowClient(uri)
experiment = client.create_experiment("made-by-3.16")
run = client.create_run(experiment).info.run_id
client.log_metric(run, "loss", 0.25, step=3)
client.log_param(run, "lr", "0.1")
client.set_terminated(run)
client.create_registered_model("churn")
mlflow.set_tracking_uri(uri)
mlflow.set_experiment(experiment_id=experiment)
with mlflow.start_span("predict") as span:
    span.set_inputs({"x": 1})
print(run, mlflow.get_last_active_trace_id())
"""


# -- pure parts -------------------------------------------------------------------------------


def test_a_snapshot_identifier_follows_rds_rules() -> None:
    when = datetime.datetime(2026, 12, 2, 4, 5, 6, tzinfo=datetime.UTC)
    name = snapshot_identifier("prod--EU_1", "churn-model", "3.17.2", when)
    assert name == "mlflow-aws-prod-eu-1-churn-model-to-3-17-2-20261202-040506"
    assert SNAPSHOT_IDENTIFIER.fullmatch(name)
    assert SNAPSHOT_IDENTIFIER.fullmatch(snapshot_identifier("9" * 300, "a", "3.17.2", when))
    for bad in ("1abc", "a--b", "a-", "a_b", "a" * 256):
        assert not SNAPSHOT_IDENTIFIER.fullmatch(bad), bad


def test_connected_clients_are_listed_by_host_with_the_longest_time() -> None:
    sessions = [
        Session(7, "10.0.3.4:50312", 45, "Sleep"),
        Session(9, "10.0.3.4:50320", 3000, "Sleep"),
        Session(3, "10.1.0.9:41000", 5, "Query"),
    ]
    assert describe_clients(sessions) == (
        "10.0.3.4: 2 session(s), connected at least 50 min (ids 7, 9); "
        "10.1.0.9: 1 session(s), connected at least 5 s (ids 3)"
    )
    assert foreign_sessions(sessions, ["10.0.3.4"]) == [sessions[2]]


def test_only_a_filled_schema_that_another_mlflow_owns_is_upgraded() -> None:
    assert not needs_upgrade(SchemaFacts(False, None, None), "3.17.2")  # new project
    assert not needs_upgrade(SchemaFacts(True, "abc", "3.17.2"), "3.17.2")
    assert needs_upgrade(SchemaFacts(True, "abc", "3.16.1"), "3.17.2")
    assert needs_upgrade(SchemaFacts(True, "abc", None), "3.17.2")  # a plain `mlflow db upgrade`


# -- for real ---------------------------------------------------------------------------------


@dataclass
class Handle:
    """A fake ECS task: the image's entrypoint in a process of its own."""

    server: image_server.ImageServer
    one_off: bool

    def poll(self) -> int | None:
        return self.server.process.poll()

    def healthy(self) -> bool:
        if self.one_off:
            return True
        health = f"{self.server.url}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as answer:  # noqa: S310
            return bool(answer.status == 200)
        return False

    def stop(self) -> None:
        image_server.stop(self.server)


def runner(venv: Path, project: Project, tmp_path: Path, label: str) -> Any:
    count = iter(range(1, 100))

    def run(command: list[str] | None) -> Handle:
        n = next(count)
        env = task_env(project, free_port(), tmp_path)
        home, log = tmp_path / f"{label}-{n}", tmp_path / f"{label}-{n}.log"
        server = image_server.start(venv, env, home, log, tuple(command or ()))
        return Handle(server, one_off=bool(command))

    return run


def aws(moto: MotoServer, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto.endpoint_url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def ensure_cluster(moto: MotoServer) -> None:
    """The "cluster" in moto's RDS, whose snapshots the upgrade takes."""
    rds = aws(moto, "rds")
    try:
        rds.describe_db_clusters(DBClusterIdentifier="mlflow-aws-test")
    except rds.exceptions.DBClusterNotFoundFault:
        rds.create_db_cluster(
            DBClusterIdentifier="mlflow-aws-test",
            Engine="aurora-mysql",
            MasterUsername="mlflow_admin",
            MasterUserPassword="x" * 12,
        )


@contextlib.contextmanager
def laptop_server(venv: Path, project: Project, tmp_path: Path) -> Iterator[str]:
    """A teammate's plain `mlflow server` of the old MLflow, connecting from 127.0.0.2."""
    port = free_port()
    uri = project.mariadb.url(project.user, project.password, project.schema)
    uri += "&bind_address=127.0.0.2"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "MLFLOW_BACKEND_STORE_URI": uri}  # fmt: skip
    log = (tmp_path / "laptop.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--artifacts-destination", str(tmp_path / "laptop-artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (tmp_path / "laptop.log").read_text()[-3000:]
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):  # noqa: S310
                break
            assert time.monotonic() < deadline, "the laptop server did not start"
            time.sleep(0.5)
        # One request, so its pool holds a connection to the project's schema.
        with urllib.request.urlopen(  # noqa: S310
            f"{url}/api/2.0/mlflow/experiments/search?max_results=5", timeout=30
        ) as answer:
            assert answer.status == 200
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
        log.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def props(admin_arn: str, ecs: FakeEcs, version: str, definition: str, **extra: Any) -> dict:
    return {
        "project": "upgraded",
        "stack": "test",
        "mlflow_version": version,
        "cluster_arn": CLUSTER_ARN,
        "admin_secret_arn": admin_arn,
        "ecs_cluster_arn": ecs.cluster_arn,
        "task_definition_arn": definition,
        "subnets": ["subnet-0123abcd"],
        "security_groups": ["sg-0123abcd"],
        "assign_public_ip": False,
        "min_tasks": 1,
        "ignore_connected_clients": False,
        "snapshot": True,
        "poll_seconds": 0.5,
        **extra,
    }


@pytest.mark.slow
def test_an_upgrade_from_the_previous_minor_stops_every_writer_and_keeps_the_data(
    previous_mlflow: Path,
    image_venv: Path,
    mariadb: MariaDB,
    moto: MotoServer,
    data_api: DataApiEmulator,
    tmp_path: Path,
) -> None:
    project = create_project(mariadb, "upgraded")
    uri = mariadb.url(project.user, project.password, project.schema)
    migrate(uri, str(previous_mlflow / "bin" / "python"))  # made by 3.16.1 ...
    filled = subprocess.run([str(previous_mlflow / "bin" / "python"), "-c", FILL],
                            env=mlflow_environment(uri, os.environ), capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert filled.returncode == 0, filled.stderr[-3000:]
    run_id, trace_id = filled.stdout.split()[-2:]  # ... and filled by it
    [(old_revision,)] = project.query("SELECT version_num FROM alembic_version")

    ensure_cluster(moto)
    admin_arn = admin_secret(moto, mariadb)
    ecs = FakeEcs().start()
    try:
        family = "mlflow-aws-test-upgraded"
        old = ecs.register(family, runner(previous_mlflow, project, tmp_path, "old"))
        new = ecs.register(family, runner(image_venv, project, tmp_path, "new"))
        service = ecs.create_service("tracking-upgraded-service", old, desired=1)
        ecs.wait_running(service)  # the old task migrates-on-start: it records 3.16.1
        assert project.query("SELECT mlflow_version FROM mlflow_aws_schema") == [(PREVIOUS,)]
        # Auto scaling is moto's, which looks the service up in its own ECS: a record of it.
        records = aws(moto, "ecs")
        records.create_cluster(clusterName="mlflow-aws-test")
        records.register_task_definition(
            family=family,
            containerDefinitions=[{"name": CONTAINER_NAME, "image": "mlflow", "memory": 512}],
        )
        records.create_service(
            cluster="mlflow-aws-test",
            serviceName=service.name,
            taskDefinition=family,
            desiredCount=1,
        )
        scaling = aws(moto, "application-autoscaling")
        resource = f"service/mlflow-aws-test/{service.name}"
        scaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=resource,
                                         ScalableDimension="ecs:service:DesiredCount",
                                         MinCapacity=1, MaxCapacity=3)  # fmt: skip

        env = {**provider_environment(data_api), "AWS_ENDPOINT_URL_ECS": ecs.endpoint_url,
               "AWS_ENDPOINT_URL_RDS": moto.endpoint_url,
               "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": moto.endpoint_url}  # fmt: skip
        with provider_server(env) as server:
            client: ProviderClient = server.client(MlflowUpgradeProvider(), wrap_secrets=False)
            client.timeout = 900.0
            before = props(admin_arn, ecs, PREVIOUS, old)
            inputs, failures = client.check(before)
            assert failures == []
            id_, state = client.create(inputs)  # the stack as it was: nothing to do
            assert [s["step"] for s in state["report"]] == ["none"]
            assert "already belongs to mlflow 3.16.1" in state["report"][0]["detail"]
            assert "UpdateService" not in ecs.operations()

            after = props(admin_arn, ecs, PINNED, new)
            inputs, failures = client.check(after)
            assert failures == []
            assert client.diff(id_, state, inputs).changes == "DIFF_SOME"

            # A teammate's 3.16.1 server is connected: refused before anything changes.
            with (
                laptop_server(previous_mlflow, project, tmp_path),
                pytest.raises(ProviderCallError) as refused,
            ):
                client.update(id_, state, inputs)
            message = refused.value.details.strip().splitlines()[-1]
            assert "not upgrading to mlflow" in message, message
            assert re.search(
                r"127\.0\.0\.2: \d+ session\(s\), connected at least \d+ s", message
            ), message
            assert "upgrade.ignoreConnectedClients" in message
            assert "127.0.0.1" not in message  # the service's own task is not a stranger
            assert "UpdateService" not in ecs.operations() and "RunTask" not in ecs.operations()
            assert project.query("SELECT version_num FROM alembic_version") == [(old_revision,)]
            assert service.task_definition == old and service.desired == 1

            # The laptop server is gone: every step, in order.
            wait_for(lambda: not mariadb.query(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE HOST LIKE '127.0.0.2:%%'"
            ), 30, "the laptop's sessions to end")  # fmt: skip
            started = len(ecs.calls)
            outputs = client.update(id_, state, inputs)
            # The new task serves the old data.
            [task] = [t for t in service.tasks if t.last_status == "RUNNING"]
            assert task.task_definition == new and isinstance(task.handle, Handle)
            url = f"{task.handle.server.url}/api/2.0/mlflow/runs/get?run_id={run_id}"
            with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310
                got = json.loads(answer.read())["run"]["data"]
            assert got["metrics"][0]["value"] == 0.25
    finally:
        ecs.stop()

    report = outputs["report"]
    assert [s["step"] for s in report] == STEPS, report
    (tmp_path.parent / "upgrade-timings.json").write_text(json.dumps(report, indent=1))
    print("\nupgrade steps on MariaDB:", *(f"{s['step']}: {s['seconds']} s" for s in report),
          sep="\n  ")  # fmt: skip
    calls = [
        (op, body) for _, op, body in ecs.calls[started:] if op in ("UpdateService", "RunTask")
    ]
    assert [(op, body.get("desiredCount"), body.get("taskDefinition")) for op, body in calls] == [
        ("UpdateService", 0, None),  # the writers stop first
        ("RunTask", None, new),  # one migration, of the new image
        ("UpdateService", 1, new),  # then the new tasks
    ]
    assert calls[1][1]["overrides"]["containerOverrides"] == [
        {"name": CONTAINER_NAME, "command": ["migrate"]}
    ]
    # The migration recorded the pinned MLflow; the old data is all there.
    assert project.query("SELECT mlflow_version FROM mlflow_aws_schema") == [(PINNED,)]
    assert outputs["schema_version"] == PINNED and outputs["upgraded_from"] == PREVIOUS
    assert project.query("SELECT value, step FROM metrics WHERE run_uuid = %s", (run_id,)) == [
        (0.25, 3)
    ]
    assert project.query("SELECT value FROM params WHERE run_uuid = %s", (run_id,)) == [("0.1",)]
    assert project.query("SELECT name FROM registered_models") == [("churn",)]
    assert project.query("SELECT request_id FROM trace_info") == [(trace_id,)]
    # A restorable point: a snapshot, tagged, taken with the writers stopped.
    snapshot = outputs["snapshot_identifier"]
    [described] = aws(moto, "rds").describe_db_cluster_snapshots(
        DBClusterSnapshotIdentifier=snapshot
    )["DBClusterSnapshots"]
    assert described["Status"] == "available" and f"-upgraded-to-{PINNED.replace('.', '-')}-" in (
        snapshot
    )
    assert outputs["restore_point"].endswith("Z")
    [target] = aws(moto, "application-autoscaling").describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[resource]
    )["ScalableTargets"]
    assert not any(target.get("SuspendedState", {}).values())  # resumed
    assert project.password not in json.dumps(outputs)


# -- refusals and failures, with stand-in tasks -----------------------------------------------

SERVE_HEALTH = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@dataclass
class StandIn:
    """A task that is a small process: a health endpoint, or a command's exit code."""

    process: subprocess.Popen[bytes]
    port: int | None

    def poll(self) -> int | None:
        return self.process.poll()

    def healthy(self) -> bool:
        if self.port is None:
            return True
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1) as answer,
        ):
            return bool(answer.status == 200)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)


def stand_in(exit_code: int) -> Any:
    def run(command: list[str] | None) -> StandIn:
        if command:
            code = f"import time, sys; time.sleep(1); sys.exit({exit_code})"
            return StandIn(subprocess.Popen([sys.executable, "-c", code]), None)
        port = free_port()
        return StandIn(subprocess.Popen([sys.executable, "-c", SERVE_HEALTH, str(port)]), port)

    return run


def old_schema(mariadb: MariaDB, name: str) -> Project:
    """A schema with MLflow's revision table, recorded as 3.16.1's (no MLflow needed)."""
    project = create_project(mariadb, name)
    project.query("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    project.query("INSERT INTO alembic_version VALUES ('0123456789ab')")
    project.query(
        "CREATE TABLE mlflow_aws_schema (id INTEGER PRIMARY KEY, mlflow_version VARCHAR(64), "
        "revision VARCHAR(64), migrated_at_ms BIGINT)"
    )
    project.query("INSERT INTO mlflow_aws_schema VALUES (1, '3.16.1', '0123456789ab', 0)")
    return project


@contextlib.contextmanager
def gate(
    mariadb: MariaDB, moto: MotoServer, data_api: DataApiEmulator, name: str, exit_code: int
) -> Iterator[tuple[ProviderClient, FakeEcs, dict[str, Any], str, str]]:
    ensure_cluster(moto)
    admin_arn = admin_secret(moto, mariadb)
    ecs = FakeEcs().start()
    try:
        family = f"mlflow-aws-test-{name}"
        old = ecs.register(family, stand_in(0))
        new = ecs.register(family, stand_in(exit_code))
        service = ecs.create_service(f"tracking-{name}-service", old, desired=1)
        ecs.wait_running(service)
        env = {**provider_environment(data_api), "AWS_ENDPOINT_URL_ECS": ecs.endpoint_url,
               "AWS_ENDPOINT_URL_RDS": moto.endpoint_url,
               "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": moto.endpoint_url}  # fmt: skip
        with provider_server(env) as server:
            client = server.client(MlflowUpgradeProvider(), wrap_secrets=False)
            client.timeout = 300.0
            inputs = {**props(admin_arn, ecs, PINNED, new), "project": name}
            checked, failures = client.check(inputs)
            assert failures == []
            yield client, ecs, checked, old, new
    finally:
        ecs.stop()


@pytest.mark.slow
def test_a_failed_migration_starts_the_old_tasks_again_and_names_the_snapshot(
    mariadb: MariaDB, moto: MotoServer, data_api: DataApiEmulator
) -> None:
    project = old_schema(mariadb, "failing")
    with gate(mariadb, moto, data_api, "failing", exit_code=3) as (client, ecs, inputs, old, _):
        with pytest.raises(ProviderCallError) as failed:
            client.create(inputs)
        message = failed.value.details.strip().splitlines()[-1]
        assert "exited 3" in message and "mlflow-aws-test-failing-to-" in message, message
        assert "python -m helper restore-plan --project failing --time " in message
        [service] = ecs.services.values()
        assert service.task_definition == old and service.desired == 1  # the old tasks again
        ecs.wait_running(service, timeout=30)
    assert project.query("SELECT mlflow_version FROM mlflow_aws_schema") == [("3.16.1",)]


@pytest.mark.slow
def test_a_client_still_connected_once_the_writers_stopped_is_refused_and_they_restart(
    mariadb: MariaDB, moto: MotoServer, data_api: DataApiEmulator
) -> None:
    """A session from a task's own address passes the first check (it may be the task's), but
    once the service runs nothing it is a stranger: refused, the old tasks started again."""
    project = old_schema(mariadb, "lingering")
    stranger = mariadb.connect(user=project.user, password=project.password)  # from 127.0.0.1
    try:
        with gate(mariadb, moto, data_api, "lingering", exit_code=0) as (
            client, ecs, inputs, old, _
        ):  # fmt: skip
            with pytest.raises(ProviderCallError) as refused:
                client.create(inputs)
            message = refused.value.details.strip().splitlines()[-1]
            assert "127.0.0.1: 1 session(s)" in message, message
            assert "RunTask" not in ecs.operations()  # no migration
            [service] = ecs.services.values()
            assert service.task_definition == old and service.desired == 1
            ops = [(op, b.get("desiredCount")) for op, b in
                   ((op, b) for _, op, b in ecs.calls) if op == "UpdateService"]  # fmt: skip
            assert ops == [("UpdateService", 0), ("UpdateService", 1)]
            # With the override, the same upgrade proceeds (and says it ignored them).
            ignoring = {**inputs, "ignore_connected_clients": True}
            _, outputs = client.create(ignoring)
            checks = [s for s in outputs["report"] if s["step"] == "check-clients"]
            assert "IGNORED (upgrade.ignoreConnectedClients): 127.0.0.1" in checks[1]["detail"]
            assert [s["step"] for s in outputs["report"]] == STEPS
    finally:
        stranger.close()
    assert project.query("SELECT mlflow_version FROM mlflow_aws_schema") == [("3.16.1",)]
