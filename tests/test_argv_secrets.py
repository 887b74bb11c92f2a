"""No database password in any argv: every way this project runs MLflow's CLI or server with a
backend-store URI, for real, while /proc is read.

While each command runs, a thread reads /proc/<pid>/cmdline of every descendant of this process
(what ``ps`` shows, the child's own children included) every 50 ms (each child lives seconds);
the password must be in none, the command must have run (its argv was seen) and done its work
(the schema migrated, the deleted run collected, the experiment made through the server).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helper.mlflow_cli import PROGRAM, URI_ARGUMENT, mlflow_argv, mlflow_environment
from tests.support.processes import argv, descendants
from tests.support.services import MariaDB
from tests.support.stack_on_moto import Project, create_project


@contextlib.contextmanager
def argv_seen(poll: float = 0.05) -> Iterator[list[list[str]]]:
    """Every argv of this process's descendants seen while the block runs (filled at its end)."""
    seen: dict[tuple[str, ...], None] = {}
    stop = threading.Event()

    def sweep() -> None:
        for pid in descendants(os.getpid()):
            if found := argv(pid):
                seen[tuple(found)] = None

    def watch() -> None:
        while not stop.is_set():
            sweep()
            stop.wait(poll)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    result: list[list[str]] = []
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.extend(list(a) for a in seen)


def assert_hidden(seen: list[list[str]], secret: str, *command: str) -> None:
    """``command`` (a run of its words, e.g. ``db upgrade``) was seen, ``secret`` in no argv."""
    n = len(command)
    ran = [a for a in seen if any(a[i : i + n] == list(command) for i in range(len(a)))]
    assert ran, f"no process ran {' '.join(command)!r}; seen: {seen}"
    leaked = [a for a in seen if any(secret in part for part in a)]
    assert not leaked, f"the password is in the argv of {leaked}"


def project_with_secret(mariadb: MariaDB, name: str) -> tuple[Project, str]:
    """A fresh project whose password is recognisable (hex only: the URI holds it verbatim)."""
    project = create_project(mariadb, name, password=f"ArgvSecret{secrets.token_hex(8)}")
    uri = mariadb.url(project.user, project.password, project.schema)
    assert project.password in uri
    return project, uri


def revision(project: Project) -> str:
    [(version,)] = project.query("SELECT version_num FROM alembic_version")
    return str(version)


def deleted_run(uri: str, artifacts: Path) -> str:
    """A run with a metric and an artifact, deleted (what gc collects); its id."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment("doomed", artifact_location=artifacts.as_uri())
    run_id = str(client.create_run(experiment).info.run_id)
    client.log_metric(run_id, "loss", 0.5)
    client.log_text(run_id, "weights", "model.txt")
    client.delete_run(run_id)
    return run_id


def assert_collected(project: Project, run_id: str) -> None:
    assert project.query("SELECT COUNT(*) FROM runs WHERE run_uuid = %s", (run_id,)) == [(0,)]
    assert project.query("SELECT COUNT(*) FROM metrics WHERE run_uuid = %s", (run_id,)) == [(0,)]


# -- mlflow_argv: the one definition ---------------------------------------------------------


def test_mlflow_argv_hands_the_uri_from_the_environment_to_mlflows_cli_not_the_cwds(
    tmp_path: Path,
) -> None:
    """Stand-in ``mlflow`` packages print what the CLI got: the one on PYTHONPATH is run with
    the placeholder argument (whole arguments only) replaced; the one in the working directory
    is not imported (``-P``)."""
    for name in ("path", "cwd"):
        (tmp_path / name / "mlflow").mkdir(parents=True)
        (tmp_path / name / "mlflow" / "__init__.py").write_text("")
        (tmp_path / name / "mlflow" / "cli.py").write_text(
            "import json\n"
            "class cli:\n"
            "    @staticmethod\n"
            "    def main(args, prog_name):\n"
            f"        print(json.dumps([{name!r}, prog_name, args]))\n"
        )
    uri = "mysql+pymysql://u:NotInArgv1@h/s"
    args = ("gc", "--backend-store-uri", URI_ARGUMENT, f"x{URI_ARGUMENT}", f"{URI_ARGUMENT}x")
    command = mlflow_argv(*args)
    assert command == [sys.executable, "-P", "-c", PROGRAM, *args]
    assert "NotInArgv1" not in " ".join(command)
    inherited = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "path")}
    env = mlflow_environment(uri, inherited)
    assert env == {**inherited, "MLFLOW_BACKEND_STORE_URI": uri}
    out = subprocess.run(command, env=env, cwd=tmp_path / "cwd", capture_output=True, text=True,
                         timeout=60, check=True).stdout  # fmt: skip
    given = ["gc", "--backend-store-uri", uri, f"x{URI_ARGUMENT}", f"{URI_ARGUMENT}x"]
    assert json.loads(out) == ["path", "mlflow", given]


@pytest.mark.slow
def test_mlflow_argv_migrates_a_mariadb_schema_without_the_password_in_argv(
    mariadb: MariaDB,
) -> None:
    project, uri = project_with_secret(mariadb, "argv-direct")
    with argv_seen() as seen:
        result = subprocess.run(
            mlflow_argv("db", "upgrade", URI_ARGUMENT),
            env=mlflow_environment(uri, os.environ),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert project.password not in result.stdout + result.stderr
    assert_hidden(seen, project.password, "db", "upgrade")
    assert revision(project)


@pytest.mark.slow
def test_helper_upgrade_local_keeps_the_store_uri_out_of_argv(tmp_path: Path) -> None:
    """SQLite holds no password, but the path is the same: the URI reaches mlflow by the
    environment (the data directory itself is the helper's own argument)."""
    from tests.support.helper_run import helper_env, run_helper

    data = tmp_path / "data"
    store = data / "default" / "mlflow.db"
    store.parent.mkdir(parents=True)
    sqlite3.connect(store).close()  # an empty store: helper upgrade --local creates the tables
    with argv_seen() as seen:
        result = run_helper(
            ["upgrade", "--local", "--data-dir", str(data)], helper_env({}, tmp_path)
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_hidden(seen, f"sqlite:///{store}", "db", "upgrade")
    with contextlib.closing(sqlite3.connect(store)) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall()


# -- the tests' and the benches' MLflow commands ------------------------------------------


@pytest.mark.slow
def test_bench_migrate_keeps_the_password_out_of_argv(mariadb: MariaDB) -> None:
    from bench.common import migrate

    project, uri = project_with_secret(mariadb, "argv-bench-migrate")
    with argv_seen() as seen:
        migrate(uri)
    assert_hidden(seen, project.password, "db", "upgrade")
    assert revision(project)


@pytest.mark.slow
def test_gc_world_migrate_keeps_the_password_out_of_argv(mariadb: MariaDB) -> None:
    from tests.support.gc_world import migrate

    project, uri = project_with_secret(mariadb, "argv-world-migrate")
    with argv_seen() as seen:
        migrate(uri)
    assert_hidden(seen, project.password, "db", "upgrade")
    assert revision(project)


@pytest.mark.slow
def test_bench_gc_stock_run_keeps_the_password_out_of_argv(
    mariadb: MariaDB, tmp_path: Path
) -> None:
    from bench.gc import measure, stock_gc_command
    from tests.support.gc_world import migrate

    project, uri = project_with_secret(mariadb, "argv-bench-gc")
    migrate(uri)
    run_id = deleted_run(uri, tmp_path / "artifacts")
    assert (tmp_path / "artifacts" / run_id / "artifacts" / "model.txt").exists()
    with argv_seen() as seen:
        measure(*stock_gc_command(uri, dict(os.environ)), "(a) mlflow gc")
    assert_hidden(seen, project.password, "gc", "--backend-store-uri")
    assert_collected(project, run_id)
    assert not (tmp_path / "artifacts" / run_id / "artifacts").exists()


@pytest.mark.slow
def test_stock_gc_keeps_the_password_out_of_argv(mariadb: MariaDB, tmp_path: Path) -> None:
    from tests.support.gc_world import migrate
    from tests.test_gc_mlflow_defects import stock_gc

    project, uri = project_with_secret(mariadb, "argv-stock-gc")
    migrate(uri)
    run_id = deleted_run(uri, tmp_path / "artifacts")
    with argv_seen() as seen:
        result = stock_gc(project, {}, uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_hidden(seen, project.password, "gc", "--backend-store-uri")
    assert_collected(project, run_id)


def made_experiment(url: str, project: Project) -> None:
    """An experiment made through the server at ``url`` is in the project's schema."""
    request = urllib.request.Request(  # noqa: S310 (a local server)
        f"{url}/api/2.0/mlflow/experiments/create",
        data=b'{"name": "through-the-server"}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        assert response.status == 200
    rows = project.query("SELECT COUNT(*) FROM experiments WHERE name = 'through-the-server'")
    assert rows == [(1,)]


@pytest.mark.slow
def test_gc_worlds_mlflow_server_keeps_the_password_out_of_argv(
    mariadb: MariaDB, tmp_path: Path
) -> None:
    from tests.support.gc_world import migrate, mlflow_server

    project, uri = project_with_secret(mariadb, "argv-world-server")
    migrate(uri)
    artifacts = str(tmp_path / "artifacts")
    with argv_seen() as seen, mlflow_server(uri, artifacts, dict(os.environ), tmp_path) as url:
        made_experiment(url, project)
    assert_hidden(seen, project.password, "server")
    assert any("uvicorn" in part for a in seen for part in a), seen  # its workers were seen too


@pytest.mark.slow
def test_bench_stock_server_keeps_the_password_out_of_argv(
    mariadb: MariaDB, tmp_path: Path
) -> None:
    from bench.common import Database, start_stock
    from tests.support.gc_world import migrate

    project, uri = project_with_secret(mariadb, "argv-bench-server")
    migrate(uri)
    database = Database("mariadb", uri, project.schema, project.user, project.password)
    with argv_seen() as seen:
        server = start_stock("stock", database, tmp_path)
        try:
            server.wait_healthy()
            made_experiment(server.url, project)
        finally:
            server.stop()
    assert_hidden(seen, project.password, "server")
    assert any("uvicorn" in part for a in seen for part in a), seen
    assert project.password not in server.how
