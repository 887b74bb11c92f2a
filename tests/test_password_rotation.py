"""Rotating a project's password without a failed request, for real.

The rotation as ``pulumi up`` runs it after a ``passwordVersion`` bump: the schema provider
(over gRPC, its SQL through the Data API emulator to MariaDB) sets the new password keeping the
old one valid; a new central task starts with the new bundle and turns healthy; the load
balancer moves to it and the old task drains and stops; then the retirement resource leaves
only the new password. A client logs metrics throughout, through a stand-in for the load
balancer (round robin over the registered tasks). The database closes idle connections (every
~30 s on the central tasks: ``MLFLOW_AWS_DB_IDLE_SECONDS``); here after 1 s, and the client
waits longer than that between requests, so every request logs in again with the password its
server started with.

With the previous behaviour (the old password replaced at once: ``retain_previous_password``
false) the same sequence fails requests: the old task cannot log in again.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from projects.password_retirement import MysqlPasswordRetirementProvider
from projects.schema_provider import MysqlSchemaProvider
from projects.schema_sql import Desired, engine_of, retire_previous_password, set_password
from tests.support import image_server
from tests.support.data_api_emulator import (
    CLUSTER_ARN,
    DataApiEmulator,
    admin_secret,
    provider_environment,
)
from tests.support.grpc_provider import ProviderServer, provider_server, secret
from tests.support.image_server import task_env
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import Project

OLD, NEW = "Rotate-old.1-Aaaa", "Rotate-new.2-Bbbb"
IDLE_SECONDS = 1  # the tasks' MLFLOW_AWS_DB_IDLE_SECONDS (30 on AWS): the database's wait_timeout


# -- the statements ---------------------------------------------------------------------------


def test_each_engine_keeps_the_previous_password_in_its_own_syntax() -> None:
    acct = "`mlflow_churn`@'%'"
    mysql = set_password(acct, NEW, 50, OLD, "mysql")
    assert mysql.sql == (
        f"ALTER USER {acct} IDENTIFIED BY '{NEW}' RETAIN CURRENT PASSWORD "
        "WITH MAX_USER_CONNECTIONS 50"
    )
    mariadb = set_password(acct, NEW, 50, OLD, "mariadb")
    assert "USING PASSWORD('" in mariadb.sql and " OR mysql_native_password " in mariadb.sql
    assert set_password(acct, NEW, 50, None, "mysql").sql == (
        f"ALTER USER {acct} IDENTIFIED BY '{NEW}' WITH MAX_USER_CONNECTIONS 50"
    )
    assert retire_previous_password("mlflow_churn", NEW, "mysql").sql == (
        f"ALTER USER {acct} DISCARD OLD PASSWORD"
    )
    for statement in (mysql, mariadb, retire_previous_password("mlflow_churn", NEW, "mariadb")):
        assert statement.secret and OLD not in str(statement) and NEW not in str(statement)
    assert engine_of("10.11.19-MariaDB-0+deb12u1") == "mariadb"
    assert engine_of("8.0.mysql_aurora.3.10.0") == "mysql"
    assert Desired.__dataclass_fields__["previous_password"].repr is False


# -- for real ---------------------------------------------------------------------------------


class Client:
    """Logs a metric (POST) and reads the run back (GET), round robin over ``targets``."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.targets: list[str] = []
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> Client:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _loop(self) -> None:
        step = 0
        while not self._stop.is_set():
            with self._lock:
                targets = list(self.targets)
            base = targets[step % len(targets)]
            step += 1
            body = {"run_id": self.run_id, "key": "loss", "value": step, "timestamp": 0,
                    "step": step}  # fmt: skip
            try:
                post = urllib.request.Request(  # noqa: S310 (loopback)
                    f"{base}/api/2.0/mlflow/runs/log-metric", json.dumps(body).encode(),
                    {"Content-Type": "application/json"}, method="POST",
                )  # fmt: skip
                with urllib.request.urlopen(post, timeout=30):  # noqa: S310
                    pass
                url = f"{base}/api/2.0/mlflow/runs/get?run_id={self.run_id}"
                with urllib.request.urlopen(url, timeout=30):  # noqa: S310
                    pass
                self.ok += 1
            except (urllib.error.URLError, OSError) as exc:
                detail = (
                    exc.read().decode()[:200] if isinstance(exc, urllib.error.HTTPError) else ""
                )
                self.failures.append(f"{base}: {exc} {detail}")
            # Longer than the database lets a connection idle (MLFLOW_AWS_DB_IDLE_SECONDS=1
            # below): every request finds its pooled connection closed and logs in again.
            time.sleep(IDLE_SECONDS + 0.3)

    def route(self, targets: list[str]) -> None:
        with self._lock:
            self.targets = targets


def can_log_in(mariadb: MariaDB, user: str, password: str) -> bool:
    try:
        with contextlib.closing(mariadb.connect(user=user, password=password)):
            return True
    except pymysql.err.OperationalError as exc:
        assert exc.args[0] == 1045, exc
        return False


@contextlib.contextmanager
def task(venv: Path, project: Project, tmp_path: Path, label: str) -> Iterator[Any]:
    env = {
        **task_env(project, free_port(), tmp_path),
        "MLFLOW_AWS_DB_IDLE_SECONDS": str(IDLE_SECONDS),
    }
    server = image_server.start(venv, env, tmp_path / label, tmp_path / f"{label}.log")
    try:
        image_server.wait_healthy(server)
        yield server
    finally:
        image_server.stop(server)


@pytest.fixture(scope="module")
def rotation_server(data_api: DataApiEmulator) -> Iterator[ProviderServer]:
    with provider_server(provider_environment(data_api)) as srv:
        yield srv


@pytest.mark.slow
@pytest.mark.parametrize("retain", [True, False], ids=["rotation", "replacing-at-once"])
def test_a_rotation_rolls_the_tasks_without_a_failed_request(
    retain: bool,
    image_venv: Path,
    mariadb: MariaDB,
    moto: MotoServer,
    rotation_server: ProviderServer,
    tmp_path: Path,
) -> None:
    name = "rotate" if retain else "replace"
    schema = rotation_server.client(MysqlSchemaProvider(), wrap_secrets=False)
    retirement = rotation_server.client(MysqlPasswordRetirementProvider(), wrap_secrets=False)
    admin_arn = admin_secret(moto, mariadb)

    def props(password: str) -> dict[str, Any]:
        return {"project": name, "password": secret(password), "cluster_arn": CLUSTER_ARN,
                "admin_secret_arn": admin_arn, "resume_wait_seconds": 5,
                "retain_previous_password": retain}  # fmt: skip

    mariadb.socket_query(f"DROP DATABASE IF EXISTS `{name}`")
    mariadb.socket_query(f"DROP USER IF EXISTS 'mlflow_{name}'@'%'")
    before, _ = schema.check(props(OLD))
    id_, state = schema.create(before)
    user = f"mlflow_{name}"
    old_project = Project(name, name, user, OLD, mariadb)
    new_project = Project(name, name, user, NEW, mariadb)

    with task(image_venv, old_project, tmp_path, "old") as old:
        created = json.loads(urllib.request.urlopen(urllib.request.Request(  # noqa: S310
            f"{old.url}/api/2.0/mlflow/runs/create", json.dumps({"experiment_id": "0"}).encode(),
            {"Content-Type": "application/json"}, method="POST"), timeout=30).read())  # fmt: skip
        client = Client(created["run"]["info"]["run_id"])
        client.route([old.url])
        client.start()
        try:
            time.sleep(2)
            # pulumi up: the schema resource sets the new password (the old one kept, or not)
            after, failures = schema.check(props(NEW), olds=state)
            assert failures == []
            state = schema.update(id_, state, after)
            time.sleep(4)  # the old task logs in again for each request (idle connections end)
            if not retain:
                assert not can_log_in(mariadb, user, OLD)
                assert client.failures, "replacing the password at once failed no request"
                return
            assert can_log_in(mariadb, user, OLD) and can_log_in(mariadb, user, NEW)
            # ... the task definition names the new secret version: a new task, new bundle
            with task(image_venv, new_project, tmp_path, "new") as new:
                client.route([old.url, new.url])  # registered once healthy
                time.sleep(3)
                client.route([new.url])  # the old task is deregistered, drains ...
                time.sleep(1)
                image_server.stop(old)  # ... and stops: the service is steady
                # ... then the old password is retired
                retired, failures = retirement.check(props(NEW))
                assert failures == []
                retirement.create(retired)
                assert not can_log_in(mariadb, user, OLD) and can_log_in(mariadb, user, NEW)
                time.sleep(4)  # the new task logs in again and again, with the new password
                client.stop()
        finally:
            client.stop()
    assert client.failures == [], client.failures[:5]
    assert client.ok > 8, client.ok
    assert OLD not in rotation_server.stderr() and NEW not in rotation_server.stderr()


# -- the admin password -----------------------------------------------------------------------


def test_db_admin_password_version_rotates_the_master_password_then_the_admin_secret() -> None:
    """Under mocks: a bump is a new master password for the cluster (Aurora applies it in place)
    and the admin secret holds it once the cluster took it; version 1 adds no keeper, so a stack
    made before the setting keeps its password."""
    from tests.support.aws_constraints import plain
    from tests.support.pulumi_mocks import run_program

    def admin(version: int | None) -> tuple[str, str, Any]:
        config: dict[str, Any] = {"mlflow-aws:projects": ["churn"]}
        if version is not None:
            config["mlflow-aws:db"] = {"adminPasswordVersion": version}
        r = run_program(config)
        cluster = r.by_name("metadata-cluster")
        value = r.by_name("metadata-admin-secret-value")
        password = r.by_name("metadata-admin-password")
        assert cluster.urn in value.dependencies  # the secret changes after the cluster
        return (
            plain(cluster.inputs["masterPassword"]),
            json.loads(plain(value.inputs["secretString"]))["password"],
            password.inputs.get("keepers"),
        )

    unset, one, two = admin(None), admin(1), admin(2)
    assert unset == one and one[2] is None
    assert two[0] != one[0] and two[1] == two[0] and two[2] == {"version": "2"}
