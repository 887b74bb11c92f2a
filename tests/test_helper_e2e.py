"""The helper for real: ``python -m helper serve`` starts a real MLflow server against MariaDB
(TLS required, like Aurora) and a moto S3, then the tutorial's unmodified tracking.py logs a
run through it with nothing but ``MLFLOW_TRACKING_URI``.

Every wait is bounded; every server started here is stopped here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helper_run import (  # noqa: F401 (fixtures)
    AWS_SECRET_KEY,
    BUCKET,
    aws,
    fake_docker,
    helper_env,
    project_with_outputs,
    publish,
    record,
    role_arn,
    run_helper,
    run_tracking_script,
    serving,
    start_helper,
    stop_helper,
    wait_for_url,
)
from tests.support.processes import alive, cmdline, descendants, environ, rss_mib
from tests.support.services import MariaDB, free_port, running_mariadb
from tests.support.stack_on_moto import (
    IMAGE_URI,
    aws_client,
    create_project,
    image_uri,
    write_outputs,
)

pytestmark = pytest.mark.slow

REGION = "eu-west-1"


def installed_mlflow_version() -> str:
    from importlib import metadata

    return metadata.version("mlflow")


# -- a project as pulumi up leaves it (tests/support/stack_on_moto.py) ----------------------------


# -- running the helper -------------------------------------------------------------------------


# -- processes ----------------------------------------------------------------------------------


# -- tests --------------------------------------------------------------------------------------


def test_serve_process_runtime_end_to_end(
    mariadb: MariaDB, aws: dict[str, str], role_arn: str, tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, aws, "e2e-process", tmp_path)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs)]
    argv += ["--runtime", "process", "--port", str(port)]
    with serving(argv, helper_env(aws, tmp_dir), tmp_path, port) as running:
        uri = f"http://127.0.0.1:{port}"
        server = running.server_pids()
        mlflow = [pid for pid in server if "watchdog" not in cmdline(pid)]
        record(
            f"serve -> healthy, process runtime on MariaDB (first start migrates the schema): "
            f"{running.healthy_after:.1f}s; server processes: {len(mlflow)} (+ the watchdog); "
            f"server RSS: {rss_mib(mlflow):.0f} MiB"
        )
        assert len(mlflow) == 2  # mlflow server + one uvicorn worker process; no job runners

        run_tracking_script(uri, tmp_path / "work")

        # No secret in any command line of the helper's process tree; and the server holds
        # none of the teammate's credentials: only the way to its server role's.
        for pid in [running.process.pid, *server]:
            line = cmdline(pid)
            for secret in (project.password, mariadb.admin_password, AWS_SECRET_KEY):
                assert secret not in line, f"secret in argv of {pid}: {line}"
        for pid in mlflow:
            env = environ(pid)
            assert AWS_SECRET_KEY not in env and "AWS_ACCESS_KEY_ID=" not in env
            assert "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:" in env
            assert "ssl_ca=" in env  # the store is verified against the bundle's CAs

        helper_pid = running.process.pid
        assert stop_helper(running) == 0
    assert not [pid for pid in server if alive(pid)], "server processes left behind"
    assert not descendants(helper_pid)
    assert not list(tmp_dir.glob("mlflow-aws-*"))  # the CA file's private directory is gone
    assert "stopping the MLflow server" in running.stderr()

    # The run, its param and its three metric values are in the project's own schema.
    runs = project.query("SELECT run_uuid, status FROM runs")
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    run_id = runs[0][0]
    params = project.query("SELECT `key`, value FROM params WHERE run_uuid = %s", (run_id,))
    assert params[0][0] == "param1" and 0 <= int(params[0][1]) <= 100
    values = project.query(
        "SELECT value FROM metrics WHERE run_uuid = %s AND `key` = 'foo' ORDER BY step, timestamp",
        (run_id,),
    )
    assert len(values) == 3
    assert [int(v) for (v,) in values] == [0, 1, 2]  # random(), random() + 1, random() + 2
    # ... and the artifact went through the server to s3://bucket/<project>/.
    s3 = aws_client("s3", aws)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    artifact = [k for k in keys if k.endswith("/artifacts/test.txt")]
    assert len(artifact) == 1 and artifact[0].startswith(f"{project.name}/")
    assert run_id in artifact[0]
    assert s3.get_object(Bucket=BUCKET, Key=artifact[0])["Body"].read() == b"hello world!"


def test_serve_from_aws_end_to_end(mariadb: MariaDB, aws: dict[str, str], tmp_path: Path) -> None:
    project = create_project(mariadb, "e2e-fromaws")
    publish(aws, project)
    env = helper_env(aws, tmp_path)
    port = free_port()
    argv = ["serve", "--project", project.name, "--from-aws", "--runtime", "process"]
    with serving([*argv, "--port", str(port)], env, tmp_path, port) as running:
        record(f"serve --from-aws -> healthy (process runtime): {running.healthy_after:.1f}s")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/create",
            data=json.dumps({"name": "from-aws"}).encode(),
            headers={"Content-Type": "application/json", **running.auth()},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert response.status == 200
        # A page of another origin (or a rebinding DNS name) cannot use the server.
        for headers in ({"Host": f"evil.example:{port}"}, {"Host": f"192.168.1.5:{port}"},
                        {"Origin": "http://evil.example"}):  # fmt: skip
            forged = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/create",
                data=json.dumps({"name": "forged"}).encode(),
                headers={"Content-Type": "application/json", **running.auth(), **headers},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(forged, timeout=30)  # noqa: S310
            assert refused.value.code in (400, 403), headers
        assert stop_helper(running) == 0
    assert project.query("SELECT name FROM experiments WHERE name = 'from-aws'")
    assert not project.query("SELECT name FROM experiments WHERE name = 'forged'")

    listed = run_helper(["projects", "--from-aws"], env)
    assert (
        listed.returncode == 0 and f"{project.name}\tmlflow-aws/e2e/{project.name}" in listed.stdout
    )


def test_from_aws_with_several_stacks_needs_secret_id(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "e2e-twostacks")
    publish(aws, project, stack="dev")
    publish(aws, project, stack="prod")
    env = helper_env(aws, tmp_path)
    ambiguous = run_helper(["command", "--project", project.name, "--from-aws"], env)
    assert ambiguous.returncode == 1
    assert "several stacks have a project 'e2e-twostacks'" in ambiguous.stderr
    assert f"mlflow-aws/dev/{project.name}, mlflow-aws/prod/{project.name}" in ambiguous.stderr
    assert "--secret-id" in ambiguous.stderr
    chosen = run_helper(
        ["command", "--project", project.name, "--secret-id", f"mlflow-aws/prod/{project.name}"],
        env,
    )
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.strip().endswith(f"{image_uri('prod')} --app-name mlflow-aws-run-secret")
    assert project.password not in chosen.stdout + chosen.stderr
    missing = run_helper(["command", "--project", "e2e-nosuch", "--from-aws"], env)
    assert missing.returncode == 1 and "no connection secret tagged" in missing.stderr


def test_serve_local_end_to_end(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    port = free_port()
    argv = ["serve", "--local", "--data-dir", str(data_dir), "--port", str(port)]
    with serving(argv, env, tmp_path, port) as running:
        server = running.server_pids()
        record(
            f"serve --local -> healthy (new SQLite store): {running.healthy_after:.1f}s; "
            f"server processes: {len(server)}; server RSS: {rss_mib(server):.0f} MiB"
        )
        assert f"creating a new, empty local store for project default at {data_dir}" in (
            running.stderr()
        )
        run_tracking_script(f"http://127.0.0.1:{port}", tmp_path / "work")
        assert stop_helper(running) == 0
    assert not [pid for pid in server if alive(pid)]
    database = data_dir / "default" / "mlflow.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        runs = db.execute("SELECT run_uuid FROM runs").fetchall()
        assert len(runs) == 1
        assert db.execute("SELECT count(*) FROM metrics").fetchone()[0] == 3
    assert [p.read_text() for p in (data_dir / "default" / "artifacts").rglob("test.txt")] == [
        "hello world!"
    ]


def test_a_second_serve_on_a_live_helpers_port_is_refused_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    """Issue 15 item 11: the second helper found the first one's run record and stopped its
    server; a live helper's server is its own, the second one gets the port-in-use answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    port = free_port()
    first = ["serve", "--local", "--data-dir", str(tmp_path / "one"), "--port", str(port)]
    with serving(first, env, tmp_path, port) as running:
        server = running.server_pids()
        second = run_helper(
            ["serve", "--local", "--data-dir", str(tmp_path / "two"), "--port", str(port)], env
        )
        assert second.returncode == 1, second.stderr
        assert f"port {port} is in use by another helper serving project default" in second.stderr
        assert f"--port {port + 1}" in second.stderr
        assert [pid for pid in server if alive(pid)] == server
        assert running.process.poll() is None
        run_tracking_script(f"http://127.0.0.1:{port}", tmp_path / "work")
        assert stop_helper(running) == 0


def test_upgrade_fresh_schema_then_out_of_date_schema_is_explained(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, aws, "e2e-upgrade", tmp_path)
    env = helper_env(aws, tmp_path)
    source = ["--project", project.name, "--outputs", str(outputs)]

    # --db-ca replaces the bundle's CAs: one that did not sign the certificate is refused...
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=not the database's CA", "-keyout", str(tmp_path / "other-ca.key"),
         "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    refused_tls = run_helper(["upgrade", *source, "--db-ca", str(other_ca)], env)
    assert refused_tls.returncode == 1
    assert f"not signed by a CA of --db-ca {other_ca}" in refused_tls.stderr
    assert "Traceback" not in refused_tls.stderr
    assert project.query("SHOW TABLES") == []  # nothing was migrated over an unverified link

    # ...and by default the bundle's own CAs verify it.
    upgraded = run_helper(["upgrade", *source], env)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    assert project.query("SELECT version_num FROM alembic_version") == [(head,)]

    # An older MLflow's schema (alembic says so): the server refuses; the helper says the fix.
    project.query("UPDATE alembic_version SET version_num = '451aebb31d03'")
    port = free_port()
    refused = run_helper(["serve", *source, "--runtime", "process", "--port", str(port)], env)
    assert refused.returncode == 1
    assert "is at revision 451aebb31d03 of an older MLflow and this is mlflow" in refused.stderr
    assert f"python -m helper upgrade --project {project.name} --outputs {outputs}" in (
        refused.stderr
    )
    assert "Traceback (most recent call last)" not in refused.stderr.split("error:")[-1]


def test_upgrade_is_the_images_migration_step_under_its_lock(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    """``helper upgrade`` migrates as a starting server does (mlflow_aws.migration.prepare): while
    another server holds the schema's migration lock it waits, and gives up without touching
    the schema; once the lock is free it migrates and records this MLflow as the schema's."""
    from mlflow_aws.migration.prepare import LOCK_TABLE, take_migration_lock

    project, outputs = project_with_outputs(mariadb, aws, "e2e-upgrade-lock", tmp_path)
    env = {**helper_env(aws, tmp_path), "MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS": "2"}
    source = ["--project", project.name, "--outputs", str(outputs)]
    holder = mariadb.connect(project.user, project.password, project.schema)
    holder.autocommit(False)
    try:
        take_migration_lock(holder, 1)  # another server of the project, migrating
        # Its session is another client of the schema: upgrade refuses that first (issue 16);
        # past that check (--despite-connections) the lock still holds it back.
        started = time.monotonic()
        waited = run_helper(["upgrade", *source, "--despite-connections"], env)
        assert waited.returncode == 1, waited.stderr[-3000:]
        assert time.monotonic() - started >= 2, waited.stderr[-3000:]
        assert "another server holds the migration lock; waiting up to 2 s" in waited.stderr
        assert "gave up after 2 s waiting for another server's migration" in waited.stderr
        assert project.password not in waited.stderr and "Traceback" not in waited.stderr
        assert project.query("SHOW TABLES") == [(LOCK_TABLE,)]  # no MLflow table yet
    finally:
        holder.close()  # the lock goes with its session
    upgraded = run_helper(["upgrade", *source], env)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert "creating MLflow's tables" in upgraded.stderr
    tables = {row[0] for row in project.query("SHOW TABLES")}
    assert {"alembic_version", "experiments", "runs"} <= tables
    from mlflow_aws.schema_version import RECORD_TABLE, this_mlflow

    assert project.query(f"SELECT mlflow_version FROM {RECORD_TABLE}") == [(this_mlflow().version,)]


@pytest.fixture(scope="module")
def plaintext_mariadb() -> Iterator[MariaDB]:
    """A server that offers no TLS at all (a downgrade, or the wrong endpoint)."""
    with running_mariadb(tls=False) as server:
        yield server


@pytest.fixture(scope="module")
def misnamed_mariadb() -> Iterator[MariaDB]:
    """A server whose certificate (signed by its own CA) names another host."""
    with running_mariadb(cert_names="DNS:db.example.internal") as server:
        yield server


@pytest.mark.parametrize("case", ["no TLS offered", "certificate for another host",
                                  "certificate from another CA"])  # fmt: skip
def test_a_database_that_cannot_prove_itself_is_refused_on_every_path(
    case: str,
    mariadb: MariaDB,
    plaintext_mariadb: MariaDB,
    misnamed_mariadb: MariaDB,
    aws: dict[str, str],
    tmp_path: Path,
) -> None:
    if case == "no TLS offered":
        server, ca, expected = plaintext_mariadb, mariadb.ca_path.read_text(), "does not offer TLS"
    elif case == "certificate for another host":
        server, ca = misnamed_mariadb, misnamed_mariadb.ca_path.read_text()
        expected = "not for the host name 127.0.0.1"
    else:
        server, ca = mariadb, misnamed_mariadb.ca_path.read_text()  # a real CA, not its one
        expected = "not signed by a CA of the stack's RDS CA bundle"
    name = "e2e-tls-" + "".join(w[0] for w in case.lower().split())
    project, outputs = project_with_outputs(server, aws, name, tmp_path, ca_pem=ca)
    env = helper_env(aws, tmp_path)
    source = ["--project", project.name, "--outputs", str(outputs)]
    serve = ["serve", *source, "--runtime", "process", "--port", str(free_port())]
    for argv in (["upgrade", *source], serve):
        result = run_helper(argv, env)
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"cannot log in to the database at 127.0.0.1:{server.port}: " in result.stderr
        assert expected in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and project.password not in result.stderr
        assert "healthy" not in result.stderr  # no server was started
    assert server.socket_query(f"SHOW TABLES FROM `{project.schema}`") == []


def test_port_in_use_and_unreachable_database(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, aws, "e2e-errors", tmp_path)
    env = helper_env(aws, tmp_path)
    source = ["--project", project.name, "--outputs", str(outputs), "--runtime", "process"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_helper(["serve", *source, "--port", str(port)], env)
    assert taken.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in taken.stderr

    closed_port = free_port()  # nothing listens there: like a firewalled or paused endpoint
    _, unreachable = project_with_outputs(mariadb, aws, "e2e-errors-2", tmp_path, port=closed_port)
    started = time.monotonic()
    down = run_helper(
        ["serve", "--project", "e2e-errors-2", "--outputs", str(unreachable), "--runtime",
         "process", "--port", str(free_port())],
        env,
    )  # fmt: skip
    assert down.returncode == 1
    assert f"cannot reach the database at 127.0.0.1:{closed_port}" in down.stderr
    assert "db.allowedCidrs" in down.stderr and "auto-pause" in down.stderr
    assert time.monotonic() - started < 30
    assert project.password not in down.stderr + taken.stderr


# -- the docker runtime, with a stand-in docker client ------------------------------------------


def test_serve_docker_runtime_with_a_stand_in_docker(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, aws, "e2e-docker", tmp_path)
    bin_dir, state = fake_docker(tmp_path)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    env = helper_env(aws, tmp_dir)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_DOCKER_STATE"] = str(state)
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--port", str(port)]
    argv += ["--db-ca", str(mariadb.ca_path)]
    with serving(argv, env, tmp_path, port) as running:
        for pid in [running.process.pid, *running.server_pids()]:
            for secret in (project.password, AWS_SECRET_KEY, "auth-token"):
                assert secret not in cmdline(pid)
        assert "the server's AWS credentials (the project's server role) expire at" in (
            running.stderr()
        )
        assert stop_helper(running) == 0

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    login, pull, run, stop = calls
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert login["argv"] == ["login", "--username", "AWS", "--password-stdin", registry]
    assert login["stdin"] == "123456789012-auth-token"  # moto's ECR token, on stdin only
    assert pull["argv"] == ["pull", IMAGE_URI]
    name = f"mlflow-{project.name}-{port}"
    assert run["argv"][:6] == ["run", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000"]
    for flag in ("--read-only", "no-new-privileges", "ALL"):
        assert flag in run["argv"]
    # The image's server behind the run's secret, which only the environment carries.
    assert run["argv"][-3:] == [IMAGE_URI, "--app-name", "mlflow-aws-run-secret"]
    assert run["env"]["MLFLOW_AWS_RUN_SECRET"] == running.secret
    assert run["env"]["MLFLOW_AWS_PUBLIC_PORT"] == str(port)
    assert running.secret not in json.dumps(run["argv"]) + running.stderr()
    assert not [a for a in run["argv"] if "=" in a and a.split("=")[0] in run["env"]]
    values = run["env"]
    assert values["MLFLOW_BACKEND_STORE_URI"] == (
        f"{project.backend_store_uri}?init_command=SET%20SESSION%20wait_timeout%3D30"
    )  # the image's entrypoint adds ssl_ca for MLFLOW_AWS_DB_CA_BUNDLE
    assert values["MLFLOW_AWS_DB_CA_BUNDLE"] == mariadb.ca_path.read_text()
    assert values["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{BUCKET}/{project.name}"
    # The server role's credentials (moto's STS), not the teammate's.
    assert values["AWS_SECRET_ACCESS_KEY"] != AWS_SECRET_KEY
    assert values["AWS_SESSION_TOKEN"] and values["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert values["AWS_REGION"] == REGION
    assert values["MLFLOW_WORKERS"] == "1" and values["MLFLOW_HOST"] == "0.0.0.0"
    assert values["MLFLOW_SERVER_ALLOWED_HOSTS"] == f"127.0.0.1:{port},localhost:{port}"
    assert stop["argv"] == ["stop", "--time", "10", name]
    assert not alive(run["pid"])
    assert not [p for p in tmp_dir.rglob("*") if p.suffix == ".env"]  # no env file, ever


def test_a_killed_helpers_container_is_stopped(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL the helper: its watchdog runs docker stop (a container outlives its client)."""
    project, outputs = project_with_outputs(mariadb, aws, "e2e-orphan", tmp_path)
    bin_dir, state = fake_docker(tmp_path)
    env = helper_env(aws, tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_DOCKER_STATE"] = str(state)
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--port", str(port)]
    running = start_helper(argv, env, tmp_path)
    wait_for_url(running, port)
    container = [json.loads(x) for x in (state / "calls.jsonl").read_text().splitlines()][-1]
    running.process.kill()
    running.process.wait(10)
    deadline = time.monotonic() + 30
    while alive(container["pid"]):
        assert time.monotonic() < deadline, "the container outlived its helper"
        time.sleep(0.2)
    calls = [json.loads(x) for x in (state / "calls.jsonl").read_text().splitlines()]
    assert calls[-1]["argv"] == ["stop", "--time", "10", f"mlflow-{project.name}-{port}"]


def test_missing_aws_credentials_are_named_with_the_fix(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, aws, "e2e-nocreds", tmp_path)
    env = helper_env(aws, tmp_path)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[key]
    # Nothing else to fall back on: no shared files, no instance metadata.
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--runtime", "process"]
    result = run_helper([*argv, "--port", str(free_port())], env)
    assert result.returncode == 1
    assert "no usable AWS credentials" in result.stderr and "aws sso login" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_project_password_fails_fast_without_echoing_it(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    # A password that does not match the database (rotated meanwhile) is caught by one login
    # before MLflow starts, which would otherwise retry its engine silently for ~100 s.
    wrong = "Stale-password-0123456789"
    project = create_project(mariadb, "e2e-stale-pw")
    arn = publish(aws, project, password=wrong)
    outputs = write_outputs(tmp_path / "outputs.json", BUCKET, {project.name: arn})
    source = ["--project", project.name, "--outputs", str(outputs)]
    env = helper_env(aws, tmp_path)

    for argv in (
        ["upgrade", *source],
        ["serve", *source, "--runtime", "process", "--port", str(free_port())],
    ):
        started = time.monotonic()
        result = run_helper(argv, env)
        assert result.returncode == 1, result.stderr[-2000:]
        assert time.monotonic() - started < 30
        assert f"user {project.user} was refused" in result.stderr
        assert "start the helper again" in result.stderr
        assert wrong not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_server_pools_while_busy_and_holds_no_connection_when_idle(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    # Aurora Serverless v2 pauses only with no open connection: the helper's server keeps a
    # pool while people log, and the database closes it after MLFLOW_AWS_DB_IDLE_SECONDS idle
    # (30 by default; 2 here to keep the test short).
    from mlflow import MlflowClient

    project, outputs = project_with_outputs(mariadb, aws, "e2e-idle", tmp_path)
    port = free_port()
    env = {**helper_env(aws, tmp_path), "MLFLOW_AWS_DB_IDLE_SECONDS": "2"}
    argv = ["serve", "--project", project.name, "--outputs", str(outputs)]
    argv += ["--runtime", "process", "--port", str(port)]

    def open_connections() -> int:
        sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s"
        return int(mariadb.query(sql, (project.user,))[0][0])

    # Migrate first: a first start's migration pauses longer than 2 s between statements here.
    upgraded = run_helper(["upgrade", "--project", project.name, "--outputs", str(outputs)], env)
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    with serving(argv, env, tmp_path, port):
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run_id = client.create_run(client.create_experiment("idle")).info.run_id
        for step in range(20):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        assert 1 <= open_connections() <= 10  # pooled (NullPool would show 0 here)

        deadline = time.monotonic() + 15
        while open_connections() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert open_connections() == 0  # closed by the database while idle

        # The next request finds its pooled connection gone and replaces it, unnoticed.
        client.log_metric(run_id, "loss", 0.01, step=20)
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(21))
