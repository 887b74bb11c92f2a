"""Reliability of the server as the helper runs it, for real (loopback only, bounded in time).

* Load: 8 concurrent clients, each logging 1,000 metrics one by one through
  ``python -m helper serve --runtime process`` on MariaDB: every row arrives in the project
  schema's ``metrics`` table and ``latest_metrics`` holds the right (last step) value per key.
* Faults: MariaDB is SIGKILLed and restarted (same port, same data directory) while clients
  log: with the client's default retries no metric is lost or duplicated, the recovery time is
  printed, and the helper-started server survives (same processes, healthy after).

Run with ``-s`` to see the figures (they are also recorded as junit properties).
"""

from __future__ import annotations

import itertools
import random
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.common import (
    HELPER_SECRET,
    Database,
    Server,
    create_project_schema,
    ensure_bucket,
    start_helper,
    write_outputs_file,
)
from tests.support.services import MariaDB, MotoServer, free_port

CLIENTS = 8
METRICS_PER_CLIENT = 1000
KEYS = 4  # per client; METRICS_PER_CLIENT / KEYS steps each, logged in shuffled order
DEADLINE_S = 900  # bound for any wait in this module


def project_database(db: MariaDB, project: str) -> Database:
    schema = project.replace("-", "_")
    user, password = f"mlflow_{schema}", "Pw-" + secrets.token_hex(12)
    create_project_schema(db, schema, user, password)
    return Database("mariadb", db.url(user, password, schema), schema, user, password)


@pytest.fixture
def helper_server(
    request: pytest.FixtureRequest, moto: MotoServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:  # fmt: skip
    """A factory: ``helper_server(db, project)`` starts the helper-run server for a new
    project schema on ``db`` and stops it after the test; this process's clients hold the
    run's secret meanwhile."""
    started: list[Server] = []
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", HELPER_SECRET)

    def start(db: MariaDB, project: str) -> tuple[Server, Database]:
        database = project_database(db, project)
        ensure_bucket(moto)
        outputs = write_outputs_file(
            tmp_path / f"{project}-outputs.json", db, {project: database}, moto
        )
        options = ["--project", project, "--outputs", str(outputs), "--runtime", "process"]
        server = start_helper(project, options, tmp_path, moto.aws_env(), free_port())
        started.append(server)
        server.wait_healthy(300)  # the first start migrates the empty schema
        return server, database

    yield start
    for server in started:
        server.stop()


def healthy(server: Server) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Logger:
    """One client thread: its own run, ``KEYS`` keys, steps in a shuffled order."""

    index: int
    tracking_uri: str
    experiment_id: str
    count: int
    successes: list[float] = field(default_factory=list)  # time.monotonic() per logged metric
    error: BaseException | None = None
    run_id: str = ""

    def __post_init__(self) -> None:
        steps = self.count // KEYS
        self.plan = [(k, s) for k in range(KEYS) for s in range(steps)]
        random.Random(self.index).shuffle(self.plan)  # latest must be max step, not last sent

    @staticmethod
    def value(index: int, key: int, step: int) -> float:
        return float(index * 1_000_000 + key * 10_000 + step)

    def expected_latest(self) -> dict[str, float]:
        last = self.count // KEYS - 1
        return {f"m{k}": self.value(self.index, k, last) for k in range(KEYS)}

    def __call__(self) -> None:
        from mlflow import MlflowClient

        try:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = client.create_run(self.experiment_id).info.run_id
            for key, step in self.plan:
                client.log_metric(self.run_id, f"m{key}", self.value(self.index, key, step),
                                  step=step)  # fmt: skip
                self.successes.append(time.monotonic())
        except BaseException as exc:  # reported by the test
            self.error = exc


def run_loggers(server: Server, clients: int, count: int) -> tuple[list[Logger], list[Any]]:
    from mlflow import MlflowClient

    experiment_id = MlflowClient(server.url).create_experiment(f"load-{secrets.token_hex(4)}")
    loggers = [Logger(i, server.url, experiment_id, count) for i in range(clients)]
    threads = [threading.Thread(target=lg, name=f"logger-{lg.index}") for lg in loggers]
    for thread in threads:
        thread.start()
    return loggers, threads


def join_all(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"clients still logging at the deadline: {stuck}"


def assert_every_metric_arrived(db: MariaDB, database: Database, loggers: list[Logger]) -> None:
    errors = [f"client {lg.index}: {lg.error!r}" for lg in loggers if lg.error is not None]
    assert not errors, "\n".join(errors)
    runs = tuple(lg.run_id for lg in loggers)
    rows = db.query(
        "SELECT run_uuid, COUNT(*), COUNT(DISTINCT `key`, step) FROM metrics "
        "WHERE run_uuid IN %s GROUP BY run_uuid",
        (runs,),
        database=database.schema,
    )
    counts = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    for lg in loggers:
        assert counts.get(lg.run_id) == (lg.count, lg.count), (
            f"client {lg.index}: (rows, distinct key/step) = {counts.get(lg.run_id)}, "
            f"expected ({lg.count}, {lg.count})"
        )
    latest = db.query(
        "SELECT run_uuid, `key`, step, value FROM latest_metrics WHERE run_uuid IN %s",
        (runs,),
        database=database.schema,
    )
    got: dict[str, dict[str, tuple[int, float]]] = {}
    for run_uuid, key, step, value in latest:
        got.setdefault(str(run_uuid), {})[str(key)] = (int(step), float(value))
    for lg in loggers:
        last = lg.count // KEYS - 1
        want = {k: (last, v) for k, v in lg.expected_latest().items()}
        assert got.get(lg.run_id) == want, f"client {lg.index}: latest_metrics {got.get(lg.run_id)}"


def report(request: pytest.FixtureRequest, **figures: float) -> None:
    for name, value in figures.items():
        request.node.user_properties.append((name, round(value, 3)))
    text = ", ".join(f"{k}={v:.2f}" for k, v in figures.items())
    print(f"\n[{request.node.name}] {text}", file=sys.stderr)


# -- load --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_clients_every_metric_arrives(
    request: pytest.FixtureRequest, mariadb: MariaDB, helper_server: Any
) -> None:
    server, database = helper_server(mariadb, "load-test")
    processes = server.tree()
    started = time.monotonic()
    loggers, threads = run_loggers(server, CLIENTS, METRICS_PER_CLIENT)
    join_all(threads, started + DEADLINE_S)
    elapsed = time.monotonic() - started
    assert_every_metric_arrived(mariadb, database, loggers)

    # The same answer through MLflow's API.
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    for lg in loggers:
        assert client.get_run(lg.run_id).data.metrics == lg.expected_latest()
    assert server.tree() == processes and healthy(server)
    report(request, clients=CLIENTS, metrics=CLIENTS * METRICS_PER_CLIENT, seconds=elapsed,
           metrics_per_s=CLIENTS * METRICS_PER_CLIENT / elapsed)  # fmt: skip


# -- faults ------------------------------------------------------------------------------------

FAULT_CLIENTS = 4
FAULT_METRICS_PER_CLIENT = 200
OUTAGE_S = 3.0


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of this test's own: killing the session one would break other tests."""
    db = MariaDB()
    try:
        yield db.start()
    finally:
        db.cleanup()


@pytest.mark.slow
def test_database_killed_and_restarted_while_logging(
    request: pytest.FixtureRequest, own_mariadb: MariaDB, helper_server: Any
) -> None:
    db = own_mariadb
    server, database = helper_server(db, "fault-test")
    helper_pid, processes = server.process.pid, server.tree()
    deadline = time.monotonic() + DEADLINE_S

    loggers, threads = run_loggers(server, FAULT_CLIENTS, FAULT_METRICS_PER_CLIENT)
    total = FAULT_CLIENTS * FAULT_METRICS_PER_CLIENT
    while sum(len(lg.successes) for lg in loggers) < total // 4:  # a quarter logged
        assert time.monotonic() < deadline, "clients made no progress before the fault"
        assert all(lg.error is None for lg in loggers), [lg.error for lg in loggers]
        time.sleep(0.05)

    killed_at = time.monotonic()
    db.kill()  # SIGKILL, as a crash
    logged_before_kill = sum(len(lg.successes) for lg in loggers)
    time.sleep(OUTAGE_S)
    db.start()  # same port, same data directory; returns once it accepts connections
    back_at = time.monotonic()

    join_all(threads, deadline)
    assert_every_metric_arrived(db, database, loggers)

    after_restart = sorted(t for lg in loggers for t in lg.successes if t > back_at)
    assert after_restart, "nothing was logged after the restart"
    recovery = after_restart[0] - back_at
    stamps = sorted(t for lg in loggers for t in lg.successes)
    stall = max(b - a for a, b in itertools.pairwise(stamps) if b > killed_at)

    # The helper-started server rode it out: same processes, healthy, and logging works.
    assert server.process.poll() is None, f"the helper exited: {server.tail()}"
    assert server.process.pid == helper_pid and server.tree() == processes
    assert healthy(server)
    from mlflow import MlflowClient

    MlflowClient(server.url).log_metric(loggers[0].run_id, "after", 1.0)
    # The fault did reach the clients: the server answered some log-metric calls with 5xx
    # (its access log), which the clients' default retries then repeated.
    failed = [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if "/runs/log-metric" in line and (" 503 " in line or " 500 " in line)
    ]
    assert failed, "no request failed during the outage: the fault was not exercised"
    report(
        request,
        failed_requests_retried=float(len(failed)),
        outage_s=back_at - killed_at,
        restart_to_first_metric_s=recovery,
        longest_client_stall_s=stall,
        logged_before_kill=float(logged_before_kill),
        metrics=float(total),
    )
