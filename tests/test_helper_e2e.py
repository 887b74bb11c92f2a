"""The helper for real: ``python -m helper serve`` starts a real MLflow server against MariaDB
(TLS required, like Aurora) and a moto S3, then the tutorial's unmodified tracking.py logs a
run through it with nothing but ``MLFLOW_TRACKING_URI``.

Every wait is bounded; every server started here is stopped here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.services import MariaDB, MotoServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TRACKING_SCRIPT = Path(__file__).resolve().parent / "tracking_script.py"
AWS_SECRET_KEY = "moto-Secret-Key-5e4d3c2b1a"  # moto accepts any; distinctive, to look for leaks
BUCKET = "mlflow-aws-e2e"
REGION = "eu-west-1"
SERVE_TIMEOUT = 120.0


def installed_mlflow_version() -> str:
    from importlib import metadata

    return metadata.version("mlflow")


# -- a project, made by SQL as the schema provider would ----------------------------------------


@dataclass
class Project:
    name: str
    schema: str
    user: str
    password: str = field(repr=False)
    mariadb: MariaDB

    @property
    def backend_store_uri(self) -> str:
        # Plain pymysql URI: PyMySQL negotiates TLS when the server offers it (Aurora too).
        return (
            f"mysql+pymysql://{self.user}:{self.password}@"
            f"{self.mariadb.host}:{self.mariadb.port}/{self.schema}"
        )

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.mariadb.query(sql, args, database=self.schema)


def create_project(mariadb: MariaDB, name: str) -> Project:
    schema = name.replace("-", "_")
    user = f"mlflow_{schema}"
    password = f"Pw-{name}-7Hq2xV9c"
    mariadb.query(f"DROP DATABASE IF EXISTS `{schema}`")
    mariadb.query(f"DROP USER IF EXISTS '{user}'@'%'")
    mariadb.query(f"CREATE DATABASE `{schema}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    mariadb.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
    pattern = schema.replace("_", "\\_")  # "_" is a wildcard in a GRANT's database name
    mariadb.query(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{user}'@'%'")
    return Project(name, schema, user, password, mariadb)


def project_with_outputs(mariadb: MariaDB, name: str, tmp_path: Path) -> tuple[Project, Path]:
    """A fresh project schema and user, and an outputs file that points at them."""
    project = create_project(mariadb, name)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(outputs_for(mariadb, project)))
    return project, outputs


def outputs_for(mariadb: MariaDB, *projects: Project, port: int | None = None) -> dict[str, Any]:
    """A stack-outputs object pointing at the test MariaDB and the moto bucket."""
    db_port = port or mariadb.port
    return {
        "ArtifactRoot": f"s3://{BUCKET}",
        "DatabaseEndpoint": mariadb.host,
        "DatabasePort": db_port,
        "DatabaseUsername": mariadb.admin_user,
        "DatabasePassword": mariadb.admin_password,
        "DatabaseUrl": mariadb.admin_url(),
        "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws@sha256:" + "0" * 64,
        "Region": REGION,
        "MlflowVersion": installed_mlflow_version(),
        "Projects": {
            p.name: {
                "Database": p.schema,
                "Username": p.user,
                "Password": p.password,
                "BackendStoreUri": p.backend_store_uri.replace(f":{mariadb.port}/", f":{db_port}/"),
                "ArtifactRoot": f"s3://{BUCKET}/{p.name}",
                "ConnectionSecretArn": f"arn:aws:secretsmanager:{REGION}:1:secret:e2e/{p.name}",
                "PolicyArn": f"arn:aws:iam::1:policy/e2e-{p.name}",
            }
            for p in projects
        },
    }


def bundle_for(project: Project, stack: str) -> dict[str, Any]:
    return {
        "Project": project.name,
        "Stack": stack,
        "Database": project.schema,
        "Username": project.user,
        "Password": project.password,
        "BackendStoreUri": project.backend_store_uri,
        "ArtifactRoot": f"s3://{BUCKET}/{project.name}",
        "DatabaseEndpoint": project.mariadb.host,
        "DatabasePort": project.mariadb.port,
        "Region": REGION,
        "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws@sha256:" + "1" * 64,
        "MlflowVersion": installed_mlflow_version(),
    }


# -- running the helper -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(moto: MotoServer) -> dict[str, str]:
    env = {**moto.aws_env(), "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY}
    s3 = boto3.client("s3", **boto_args(env))
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return env


def boto_args(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "region_name": REGION,
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def helper_env(aws: dict[str, str], tmp_dir: Path) -> dict[str, str]:
    """The user's environment: no AWS or MLflow settings of the machine, moto's instead."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PULUMI_"))}
    return {**base, **aws, "TMPDIR": str(tmp_dir), "PYTHONUNBUFFERED": "1"}


@dataclass
class RunningHelper:
    process: subprocess.Popen[str]
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    healthy_after: float | None = None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def server_pids(self) -> list[int]:
        return descendants(self.process.pid)


def start_helper(argv: list[str], env: dict[str, str], log_dir: Path) -> RunningHelper:
    stderr_path = log_dir / f"helper-{time.monotonic_ns()}.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "helper", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    running = RunningHelper(process, stderr_path)
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            running.stdout_lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return running


def wait_for_url(running: RunningHelper, port: int, timeout: float = SERVE_TIMEOUT) -> str:
    want = f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while want not in running.stdout_lines:
        if running.process.poll() is not None:
            pytest.fail(f"helper exited {running.process.returncode}:\n{running.stderr()[-4000:]}")
        if time.monotonic() > deadline:
            stop_helper(running)
            pytest.fail(f"helper not serving after {timeout}s:\n{running.stderr()[-4000:]}")
        time.sleep(0.05)
    running.healthy_after = time.monotonic() - running.started
    return f"http://127.0.0.1:{port}"


def stop_helper(running: RunningHelper, sig: int = signal.SIGINT) -> int:
    if running.process.poll() is None:
        running.process.send_signal(sig)
    try:
        return running.process.wait(40)
    except subprocess.TimeoutExpired:
        running.process.kill()
        raise


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], log_dir: Path, port: int) -> Iterator[Any]:
    running = start_helper(argv, env, log_dir)
    try:
        wait_for_url(running, port)
        yield running
    finally:
        if running.process.poll() is None:
            pids = running.server_pids()
            stop_helper(running)
            for pid in pids:  # should be gone already; never leave a server behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_helper(argv: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "helper", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- processes ----------------------------------------------------------------------------------


def _ppids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The command name may contain spaces and parens: ppid follows the last ")".
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                parents[int(entry.name)] = int(stat[1])
    return parents


def descendants(pid: int) -> list[int]:
    parents = _ppids()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_tracking_script(uri: str, work_dir: Path) -> None:
    """The tutorial's tracking.py, unmodified, with only MLFLOW_TRACKING_URI (no AWS keys)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(TRACKING_SCRIPT, work_dir / "tracking.py")
    env = {"PATH": os.environ["PATH"], "HOME": str(work_dir), "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(
        [sys.executable, "tracking.py"],
        cwd=work_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def record(figure: str) -> None:
    print(f"\n[helper figures] {figure}", file=sys.__stdout__, flush=True)


# -- tests --------------------------------------------------------------------------------------


def test_serve_process_runtime_end_to_end(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, "e2e-process", tmp_path)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs)]
    argv += ["--runtime", "process", "--port", str(port)]
    with serving(argv, helper_env(aws, tmp_dir), tmp_path, port) as running:
        uri = f"http://127.0.0.1:{port}"
        server = running.server_pids()
        record(
            f"serve -> healthy, process runtime on MariaDB (first start migrates the schema): "
            f"{running.healthy_after:.1f}s; server processes: {len(server)}; "
            f"server RSS: {rss_mib(server):.0f} MiB"
        )
        assert len(server) == 2  # mlflow server + one uvicorn worker process; no job runners

        run_tracking_script(uri, tmp_path / "work")

        # No secret in any command line of the helper's process tree.
        for pid in [running.process.pid, *running.server_pids()]:
            line = cmdline(pid)
            for secret in (project.password, mariadb.admin_password, AWS_SECRET_KEY):
                assert secret not in line, f"secret in argv of {pid}: {line}"

        helper_pid = running.process.pid
        assert stop_helper(running) == 0
    assert not [pid for pid in server if alive(pid)], "server processes left behind"
    assert not descendants(helper_pid)
    assert not list(tmp_dir.glob("mlflow-aws-*.env"))
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
    s3 = boto3.client("s3", **boto_args(aws))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    artifact = [k for k in keys if k.endswith("/artifacts/test.txt")]
    assert len(artifact) == 1 and artifact[0].startswith(f"{project.name}/")
    assert run_id in artifact[0]
    assert s3.get_object(Bucket=BUCKET, Key=artifact[0])["Body"].read() == b"hello world!"


def put_bundle_secret(aws: dict[str, str], project: Project, stack: str) -> str:
    client = boto3.client("secretsmanager", **boto_args(aws))
    name = f"mlflow-aws/{stack}/{project.name}"
    with contextlib.suppress(client.exceptions.ResourceExistsException):
        client.create_secret(
            Name=name,
            SecretString=json.dumps(bundle_for(project, stack)),
            Tags=[{"Key": "mlflow-aws:project", "Value": project.name}],
        )
    return name


def test_serve_from_aws_end_to_end(mariadb: MariaDB, aws: dict[str, str], tmp_path: Path) -> None:
    project = create_project(mariadb, "e2e-fromaws")
    put_bundle_secret(aws, project, "e2e")
    env = helper_env(aws, tmp_path)
    port = free_port()
    argv = ["serve", "--project", project.name, "--from-aws", "--runtime", "process"]
    with serving([*argv, "--port", str(port)], env, tmp_path, port) as running:
        record(f"serve --from-aws -> healthy (process runtime): {running.healthy_after:.1f}s")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/create",
            data=json.dumps({"name": "from-aws"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert response.status == 200
        assert stop_helper(running) == 0
    assert project.query("SELECT name FROM experiments WHERE name = 'from-aws'")

    listed = run_helper(["projects", "--from-aws"], env)
    assert (
        listed.returncode == 0 and f"{project.name}\tmlflow-aws/e2e/{project.name}" in listed.stdout
    )


def test_from_aws_with_several_stacks_needs_secret_id(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "e2e-twostacks")
    put_bundle_secret(aws, project, "dev")
    put_bundle_secret(aws, project, "prod")
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
    assert "sha256:" + "1" * 64 in chosen.stdout
    assert project.password not in chosen.stdout + chosen.stderr
    missing = run_helper(["command", "--project", "e2e-nosuch", "--from-aws"], env)
    assert missing.returncode == 1 and "no connection secret tagged" in missing.stderr


def test_serve_local_end_to_end(aws: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    port = free_port()
    argv = ["serve", "--local", "--data-dir", str(data_dir), "--port", str(port)]
    with serving(argv, env, tmp_path, port) as running:
        server = running.server_pids()
        record(
            f"serve --local -> healthy (new SQLite store): {running.healthy_after:.1f}s; "
            f"server processes: {len(server)}; server RSS: {rss_mib(server):.0f} MiB"
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


def test_upgrade_fresh_schema_then_out_of_date_schema_is_explained(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, "e2e-upgrade", tmp_path)
    env = helper_env(aws, tmp_path)
    source = ["--project", project.name, "--outputs", str(outputs)]

    # --db-ca verifies the server's certificate: a CA that did not sign it is refused...
    other_ca = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=not the database's CA", "-keyout", str(tmp_path / "other-ca.key"),
         "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    refused_tls = run_helper(["upgrade", *source, "--db-ca", str(other_ca)], env)
    assert refused_tls.returncode == 1
    assert f"not signed by the CA bundle {other_ca}" in refused_tls.stderr
    assert "Traceback" not in refused_tls.stderr
    assert project.query("SHOW TABLES") == []  # nothing was migrated over an unverified link

    # ...and the CA that did sign it is accepted.
    upgraded = run_helper(["upgrade", *source, "--db-ca", str(mariadb.ca_path)], env)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    assert project.query("SELECT version_num FROM alembic_version") == [(head,)]

    # An older MLflow's schema (alembic says so): the server refuses; the helper says the fix.
    project.query("UPDATE alembic_version SET version_num = '451aebb31d03'")
    port = free_port()
    refused = run_helper(["serve", *source, "--runtime", "process", "--port", str(port)], env)
    assert refused.returncode == 1
    assert "out-of-date database schema" in refused.stderr
    assert f"python -m helper upgrade --project {project.name} --outputs {outputs}" in (
        refused.stderr
    )
    assert "Traceback (most recent call last)" not in refused.stderr.split("error:")[-1]


def test_port_in_use_and_unreachable_database(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, "e2e-errors", tmp_path)
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
    unreachable = tmp_path / "unreachable.json"
    unreachable.write_text(json.dumps(outputs_for(mariadb, project, port=closed_port)))
    started = time.monotonic()
    down = run_helper(
        ["serve", "--project", project.name, "--outputs", str(unreachable), "--runtime", "process",
         "--port", str(free_port())],
        env,
    )  # fmt: skip
    assert down.returncode == 1
    assert f"cannot reach the database at 127.0.0.1:{closed_port}" in down.stderr
    assert "db.allowedCidrs" in down.stderr and "auto-pause" in down.stderr
    assert time.monotonic() - started < 30
    assert project.password not in down.stderr + taken.stderr


# -- the docker runtime, with a stand-in docker client ------------------------------------------

# No Docker engine here: this stand-in records what the helper asks of docker and plays the
# container with a tiny /health server on the published port, so everything around the engine
# (ECR login via moto, pull, env file, publish address, stop on Ctrl-C) runs for real.
FAKE_DOCKER = r"""
import http.server, json, os, signal, stat, sys
state = os.environ["FAKE_DOCKER_STATE"]
args = sys.argv[1:]

def log(**entry):
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, **entry}) + "\n")

if args[0] == "version":
    print("27.0.0")
elif args[0] == "login":
    log(stdin=sys.stdin.read())
    print("Login Succeeded")
elif args[0] == "pull":
    log()
    print("sha256:0000: Pull complete")
elif args[0] == "run":
    env_file = args[args.index("--env-file") + 1]
    mode = stat.S_IMODE(os.stat(env_file).st_mode)
    env = dict(line.split("=", 1) for line in open(env_file).read().splitlines())
    # `-e NAME` without a value: docker copies NAME from its own environment.
    passed = {args[i + 1]: os.environ.get(args[i + 1]) for i, a in enumerate(args) if a == "-e"}
    name = args[args.index("--name") + 1]
    host, port, _ = args[args.index("-p") + 1].split(":")
    log(env=env, passed=passed, mode=mode, pid=os.getpid())
    with open(os.path.join(state, name + ".pid"), "w") as f:
        f.write(str(os.getpid()))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

    server = http.server.HTTPServer((host, int(port)), Health)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("container listening", flush=True)
    server.serve_forever()
elif args[0] == "stop":
    log()
    with open(os.path.join(state, args[-1] + ".pid")) as f:
        os.kill(int(f.read()), signal.SIGTERM)
"""


def test_serve_docker_runtime_with_a_stand_in_docker(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, "e2e-docker", tmp_path)
    bin_dir, state, tmp_dir = tmp_path / "bin", tmp_path / "state", tmp_path / "tmp"
    for directory in (bin_dir, state, tmp_dir):
        directory.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    docker.chmod(0o755)
    env = helper_env(aws, tmp_dir)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_DOCKER_STATE"] = str(state)
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--port", str(port)]
    argv += ["--db-ca", str(mariadb.ca_path)]
    with serving(argv, env, tmp_path, port) as running:
        calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
        run = calls[-1]
        env_file = Path(run["argv"][run["argv"].index("--env-file") + 1])
        assert not env_file.exists()  # docker has read it; it is removed once the server is up
        for pid in [running.process.pid, *running.server_pids()]:
            for secret in (project.password, AWS_SECRET_KEY, "auth-token"):
                assert secret not in cmdline(pid)
        assert stop_helper(running) == 0

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    login, pull, run, stop = calls
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert login["argv"] == ["login", "--username", "AWS", "--password-stdin", registry]
    assert login["stdin"] == "123456789012-auth-token"  # moto's ECR token, on stdin only
    assert pull["argv"] == ["pull", outputs_for(mariadb, project)["ImageUri"]]
    name = f"mlflow-{project.name}-{port}"
    assert run["argv"] == [
        "run", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5000",
        "--env-file", str(env_file), "-e", "MLFLOW_AWS_DB_CA_BUNDLE", pull["argv"][1],
    ]  # fmt: skip
    assert run["mode"] == 0o600
    # The image's entrypoint turns the CA bundle into ssl_ca (tests/test_dockerfile.py).
    assert run["env"]["MLFLOW_BACKEND_STORE_URI"] == (
        f"{project.backend_store_uri}?init_command=SET%20SESSION%20wait_timeout%3D30"
    )
    assert run["passed"] == {"MLFLOW_AWS_DB_CA_BUNDLE": mariadb.ca_path.read_text()}
    assert run["env"]["MLFLOW_ARTIFACTS_DESTINATION"] == f"s3://{BUCKET}/{project.name}"
    assert run["env"]["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET_KEY
    assert run["env"]["AWS_REGION"] == REGION
    assert run["env"]["MLFLOW_WORKERS"] == "1" and run["env"]["MLFLOW_HOST"] == "0.0.0.0"
    assert stop["argv"] == ["stop", "--time", "10", name]
    assert not alive(run["pid"])
    assert not list(tmp_dir.glob("mlflow-aws-*.env"))


def test_missing_aws_credentials_are_named_with_the_fix(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project, outputs = project_with_outputs(mariadb, "e2e-nocreds", tmp_path)
    env = helper_env(aws, tmp_path)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[key]
    # Nothing else to fall back on: no shared files, no instance metadata.
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--runtime", "process"]
    result = run_helper([*argv, "--port", str(free_port())], env)
    assert result.returncode == 1
    assert "no AWS credentials found" in result.stderr and "aws sso login" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_project_password_fails_fast_without_echoing_it(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    # A rotated password (stale outputs) is caught by one login before MLflow starts, which
    # would otherwise retry its engine silently for ~100 s.
    project = create_project(mariadb, "e2e-stale-pw")
    stale = outputs_for(mariadb, project)
    entry = stale["Projects"][project.name]
    wrong = "Stale-password-0123456789"
    entry["Password"] = wrong
    entry["BackendStoreUri"] = entry["BackendStoreUri"].replace(project.password, wrong)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(stale))
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
        assert "fetch the stack's outputs again" in result.stderr
        assert wrong not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_server_pools_while_busy_and_holds_no_connection_when_idle(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    # Aurora Serverless v2 pauses only with no open connection: the helper's server keeps a
    # pool while people log, and the database closes it after MLFLOW_AWS_DB_IDLE_SECONDS idle
    # (30 by default; 2 here to keep the test short).
    from mlflow import MlflowClient

    project, outputs = project_with_outputs(mariadb, "e2e-idle", tmp_path)
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
