"""Shared pieces of the benchmarks: databases, the three ways to run MLflow, /proc figures.

The three targets every bench compares side by side, on the same machine in the same run:

* ``stock``  (a): ``mlflow server`` with default flags; only the backend store, the artifact
  destination and the port are given (so: 4 workers, job execution on, pooled connections).
* ``tuned``  (b): the server as ``python -m helper serve --runtime process`` runs it, with the
  settings of ``mlflow_aws/server.env``. On MariaDB the helper itself is started with an outputs
  file; on SQLite (no stack outputs exist for it) ``mlflow server`` is started with the
  environment the helper builds (``helper.server_settings.server_environment``).
* ``direct`` (c): no server; the client uses the SQLAlchemy URI as ``MLFLOW_TRACKING_URI``.

Every database is fresh and already migrated, so server start-up is never part of a figure:
one template is migrated with ``mlflow db upgrade`` and copied (SQLite: the file; MariaDB:
``SHOW CREATE TABLE`` + rows, foreign keys included) for each target.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helper.mlflow_cli import URI_ARGUMENT, mlflow_argv, mlflow_environment
from helper.watchdog import stop_group
from tests.support.processes import alive, argv, cmdline, environ, process_tree
from tests.support.services import MariaDB, MotoServer, free_port

ROOT = Path(__file__).resolve().parent.parent

VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
MLFLOW = str(VENV_BIN / "mlflow") if (VENV_BIN / "mlflow").exists() else "mlflow"
BUCKET = "mlflow-aws-bench-artifacts"  # the stack's bucket prefix (helper/trust.py)
# The run secret of every helper this process starts (mlflow_aws.run_secret), made per process.
HELPER_SECRET = secrets.token_urlsafe(32)
GIB = 1024**3


# -- printing ---------------------------------------------------------------------------------


RUN_MARKER = (
    "BENCH_MLFLOW_AWS_RUN"  # every process a bench starts inherits it (not MLFLOW_*: filtered)
)


def marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command) of live processes whose environment carries ``RUN_MARKER=marker``."""
    needle = f"{RUN_MARKER}={marker}"
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]
    return [
        (pid, cmdline(pid)[:120])
        for pid in pids
        if needle in environ(pid).split("\n") and alive(pid)
    ]


@contextlib.contextmanager
def nothing_left_behind() -> Iterator[None]:
    """Mark every process the bench starts; at the end, report (and kill) any still running.

    A bench that leaves a server or database behind is a bug: it says so, loudly."""
    marker = secrets.token_hex(8)
    os.environ[RUN_MARKER] = marker
    try:
        yield
    finally:
        left = marked_processes(marker)
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            shown = "; ".join(f"{pid} {command}" for pid, command in left)
            print(f"LEFT RUNNING by this bench (killed now): {shown}", file=sys.stderr)
        else:
            print("left running afterwards: nothing", file=sys.stderr)


def log(message: str) -> None:
    """Progress goes to stderr; figures and tables go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into README.md as is)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -- databases --------------------------------------------------------------------------------


@dataclass
class Database:
    """One fresh, migrated MLflow database and how to reach it."""

    kind: str  # "sqlite" | "mariadb"
    uri: str  # SQLAlchemy URI (holds the password for MariaDB)
    schema: str = ""  # MariaDB schema / SQLite file stem
    user: str = ""  # MariaDB project user
    password: str = field(default="", repr=False)


def migrate(uri: str) -> None:
    """``mlflow db upgrade`` in a child process (so this process holds no connection after),
    the URI out of its argv (helper.mlflow_cli)."""
    result = subprocess.run(
        mlflow_argv("db", "upgrade", URI_ARGUMENT, python=PYTHON),
        env=mlflow_environment(uri, os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mlflow db upgrade failed: {result.stderr[-2000:]}")


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


class SqliteFactory:
    """Fresh migrated SQLite files: one migration, then file copies."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.template = directory / "template.db"
        log("migrating a template SQLite database")
        migrate(sqlite_uri(self.template))

    def fresh(self, name: str) -> Database:
        path = self.directory / f"{name}.db"
        shutil.copyfile(self.template, path)
        return Database("sqlite", sqlite_uri(path), schema=name)


def create_project_schema(db: MariaDB, schema: str, user: str, password: str) -> None:
    """What the MysqlSchema provider creates: a utf8mb4_bin schema and a user limited to it,
    with the privileges MLflow needs there and a connection limit (its own statements; TLS is
    required by the server, as on Aurora)."""
    from tests.support.stack_on_moto import project_statements

    for sql in project_statements(schema, user, password):
        db.query(sql)


class MariaDBFactory:
    """Fresh migrated schemas on one MariaDB: one migration, then structure-and-rows copies."""

    def __init__(self, db: MariaDB) -> None:
        self.db = db
        self.template = self._new("bench_template")
        log("migrating a template MariaDB schema")
        migrate(self.template.uri)
        self._tables = [
            str(row[0])
            for row in db.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s "
                "AND table_type='BASE TABLE' ORDER BY table_name",
                (self.template.schema,),
            )
        ]

    def _new(self, schema: str) -> Database:
        user = f"mlflow_{schema}"[:32]
        password = "Pw-" + secrets.token_hex(12)
        create_project_schema(self.db, schema, user, password)
        return Database("mariadb", self.db.url(user, password, schema), schema, user, password)

    def fresh(self, schema: str) -> Database:
        target = self._new(schema)
        src = self.template.schema
        with contextlib.closing(self.db.connect(database=schema)) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks=0")
            for table_name in self._tables:
                cur.execute(f"SHOW CREATE TABLE `{src}`.`{table_name}`")
                cur.execute(str(cur.fetchone()[1]))  # unqualified: created in `schema`
                cur.execute(f"INSERT INTO `{table_name}` SELECT * FROM `{src}`.`{table_name}`")
        return target


# -- processes (tests/support/processes.py reads /proc) --------------------------------------


def is_mlflow_server(pid: int) -> bool:
    """``mlflow server`` itself (not the helper's watchdog, whose argv names it too)."""
    args = argv(pid)
    watchdog = any(a.endswith(".watchdog") for a in args)
    return any(a.endswith("mlflow") for a in args) and "server" in args and not watchdog


@dataclass
class Server:
    """An MLflow server (or the helper that runs one) started in its own session."""

    label: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float  # time.monotonic() just before Popen
    healthy_after: float = float("nan")  # seconds from Popen to the first 200 from /health
    how: str = ""  # how it was started, for the tables
    healthy_wall: float = float("nan")  # time.time() at the first 200 from /health
    temp_files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tree(self) -> list[int]:
        return process_tree(self.process.pid)

    def server_tree(self) -> list[int]:
        """The MLflow server's own processes: the tree below (and including) ``mlflow server``,
        without a wrapper such as the helper."""
        pids = self.tree()
        roots = [p for p in pids if is_mlflow_server(p)]
        if not roots:
            return pids
        return max((process_tree(p) for p in roots), key=len)

    def wait_healthy(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        self.healthy_wall = time.time()
                        self.healthy_after = time.monotonic() - self.started
                        return self.healthy_after
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{self.label} not healthy after {timeout:g}s: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole session (the server's workers too), SIGKILL after ``timeout``."""
        # The helper's own group stop: workers that outlived their parent are in the group too.
        stop_group(self.process.pid, self.process, timeout)
        for path in self.temp_files:
            with contextlib.suppress(OSError):
                path.unlink()


def _spawn(
    label: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    workdir: Path,
    cwd: Path | None = None,
) -> Server:
    log_path = workdir / f"{label}.log"
    with log_path.open("ab") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # setsid: the server's workers stop with it
        )
    how = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(argv))  # no temp paths
    how = how.replace(str(workdir) + "/", "")
    return Server(label, process, port, log_path, started, how=how)


def _base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_stock(label: str, database: Database, workdir: Path, port: int | None = None) -> Server:
    """(a) ``mlflow server`` with default flags: backend (its option's envvar: the password stays
    out of argv), artifact destination and port only."""
    port = port or free_port()
    artifacts = workdir / f"{label}-artifacts"
    argv = [MLFLOW, "server", "--artifacts-destination", str(artifacts), "--port", str(port)]
    return _spawn(label, argv, mlflow_environment(database.uri, _base_env()), port, workdir)


def helper_available() -> bool:
    return (ROOT / "helper" / "cli.py").exists()


def write_outputs_file(
    path: Path, db: MariaDB, projects: dict[str, Database], moto: MotoServer, bucket: str = BUCKET
) -> Path:
    """The stack as ``pulumi up`` leaves it for ``projects`` on ``db``: each project's connection
    secret and the server role in moto, and a stack-outputs file naming the secrets."""
    from tests.support.stack_on_moto import (
        Project,
        bundle_for,
        put_connection_secret,
        server_role,
        write_outputs,
    )

    env = moto.aws_env()
    role = server_role(env)
    secrets = {}
    for name, d in projects.items():
        project = Project(name, d.schema, d.user, d.password, db)
        secrets[name] = put_connection_secret(env, bundle_for(project, "bench", bucket, role))
    return write_outputs(path, bucket, secrets)


def ensure_bucket(moto: MotoServer, bucket: str = BUCKET) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto.endpoint_url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )


def _spawn_helper_env_server(label: str, database: Database, workdir: Path, port: int) -> Server:
    from helper.server_settings import server_environment

    env = server_environment(
        backend_store_uri=database.uri,
        artifacts_destination=str(workdir / f"{label}-artifacts"),
        host="127.0.0.1",
        port=port,
        inherited=_base_env(),
    )
    return _spawn(label, [MLFLOW, "server"], env, port, workdir)


def start_tuned(
    label: str,
    database: Database,
    workdir: Path,
    db: MariaDB | None = None,
    moto: MotoServer | None = None,
    port: int | None = None,
) -> Server:
    """(b) the tuned server, started by the helper when it is there.

    MariaDB: ``python -m helper serve --project L --outputs F --runtime process``;
    SQLite: ``python -m helper serve --local --project L --data-dir D`` with the fresh,
    migrated database moved to where the local default keeps it. Without the helper:
    ``mlflow server`` with the environment the helper builds from server.env.
    """
    port = port or free_port()
    if not helper_available():
        return _spawn_helper_env_server(label, database, workdir, port)
    if database.kind == "mariadb":
        if db is None or moto is None:
            raise ValueError("a MariaDB database needs its server and moto for the outputs")
        outputs = write_outputs_file(workdir / f"{label}-outputs.json", db, {label: database}, moto)
        argv = ["--project", label, "--outputs", str(outputs), "--runtime", "process"]
        env = moto.aws_env() if moto else None
    else:
        data_dir = workdir / "local-data"
        target = data_dir / label / "mlflow.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(database.uri.removeprefix("sqlite:///"), target)
        database.uri = sqlite_uri(target)
        argv = ["--local", "--project", label, "--data-dir", str(data_dir)]
        env = None
    return start_helper(label, argv, workdir, env, port)


def start_helper(
    label: str, options: list[str], workdir: Path, env: dict[str, str] | None, port: int
) -> Server:
    """Literally ``python -m helper serve OPTIONS --port P`` (cwd: the repository), with this
    process's run secret in MLFLOW_TRACKING_TOKEN on both sides: the helper takes it as its
    run's secret and this process's MLflow clients send it (servers without one ignore it)."""
    argv = [PYTHON, "-m", "helper", "serve", *options, "--port", str(port)]
    server_env = _base_env(env)
    server_env["PYTHONPATH"] = str(ROOT)
    server_env["MLFLOW_TRACKING_TOKEN"] = HELPER_SECRET
    os.environ["MLFLOW_TRACKING_TOKEN"] = HELPER_SECRET
    return _spawn(label, argv, server_env, port, workdir, cwd=ROOT)


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block (servers not being measured: their background work must
    not take CPU from the one that is), SIGCONT them after."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def workdir(prefix: str = "mlflow-aws-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def stopping(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


# -- MariaDB per-user figures -----------------------------------------------------------------


def enable_userstat(db: MariaDB) -> None:
    """Per-user counters in information_schema.USER_STATISTICS (a dynamic MariaDB setting)."""
    db.query("SET GLOBAL userstat=ON")


@dataclass(frozen=True)
class UserCounters:
    connections_open: int  # rows in PROCESSLIST for the user right now
    connections_made: int  # USER_STATISTICS.TOTAL_CONNECTIONS (cumulative)
    statements: int  # SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS (cumulative)

    def minus(self, before: UserCounters) -> UserCounters:
        return UserCounters(
            self.connections_open,
            self.connections_made - before.connections_made,
            self.statements - before.statements,
        )


def user_counters(db: MariaDB, user: str) -> UserCounters:
    open_now = db.query(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER=%s", (user,)
    )
    stats = db.query(
        "SELECT TOTAL_CONNECTIONS, SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS "
        "FROM information_schema.USER_STATISTICS WHERE USER=%s",
        (user,),
    )
    made, statements = (int(stats[0][0]), int(stats[0][1])) if stats else (0, 0)
    return UserCounters(int(open_now[0][0]), made, statements)


# -- the tracking workload --------------------------------------------------------------------


def new_run(tracking_uri: str, label: str) -> tuple[Any, str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment(f"{label}-{secrets.token_hex(4)}")
    run = client.create_run(experiment)
    return client, run.info.run_id


def log_one_by_one(
    client: Any, run_id: str, n: int, key: str = "loss", first_step: int = 0
) -> float:
    """``n`` single ``log_metric`` calls; returns metrics/s."""
    started = time.perf_counter()
    for i in range(n):
        client.log_metric(run_id, key, float(i) / (n or 1), step=first_step + i)
    return n / (time.perf_counter() - started)


def log_batches(
    client: Any, run_id: str, batches: int, size: int = 1000, keys: int = 10, first_step: int = 0
) -> float:
    """``batches`` ``log_batch`` calls of ``size`` metrics each; returns metrics/s."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    prepared = [
        [
            Metric(
                key=f"batch_{j % keys}",
                value=float(j),
                timestamp=now,
                step=first_step + b * size + j,
            )
            for j in range(size)
        ]
        for b in range(batches)
    ]
    started = time.perf_counter()
    for metrics in prepared:
        client.log_batch(run_id, metrics=metrics)
    return batches * size / (time.perf_counter() - started)
