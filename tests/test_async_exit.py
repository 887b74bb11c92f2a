"""MLflow's async logging at process exit, for real: an ``mlflow server`` (SQLite) behind the
delaying relay of ``bench/delay_relay.py``, a user's script logging with
``MLFLOW_ENABLE_ASYNC_LOGGING=true`` that exits right after its last step.

With the network fine, every metric arrives once and the script exits with 0. With the network
gone after the last step (the relay keeps the connections and forwards nothing), MLflow 3.17.2
holds the process for many minutes (each queued batch waits 120 s per try, 7 retries: mlflow
#20575); the mlflow-aws plugin's bound ends it after ``MLFLOW_AWS_ASYNC_EXIT_SECONDS``, saying
the queued metrics are lost, with exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlflow_aws import async_exit
from tests.support.services import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "bench" / "delay_relay.py"
SCRIPT = """
import os, signal, mlflow
run = mlflow.start_run()
print(run.info.run_id, flush=True)
for step in range(20):
    mlflow.log_metrics({f"m{i}": float(step) for i in range(10)}, step=step)
partition = bool(os.environ.get("PARTITION_AFTER_LAST_STEP"))
if partition:
    mlflow.flush_async_logging()  # the steps' metrics are sent
    os.kill(int(os.environ["RELAY_PID"]), signal.SIGUSR1)  # then the network goes
    mlflow.log_metrics({"late": 1.0}, step=99)  # queued, and never answered
print("last step", flush=True)
if not partition:
    mlflow.end_run()
"""


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("async-exit")


@pytest.fixture(scope="module")
def mlflow_server(server_dir: Path) -> Iterator[int]:
    directory = server_dir
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--default-artifact-root", str(directory / "artifacts"), "--workers", "1"]  # fmt: skip
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:  # uvicorn waits for the partitioned connections
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


@contextlib.contextmanager
def relay(target_port: int) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(RELAY), "--listen", f"127.0.0.1:{port}", "--target",
         f"127.0.0.1:{target_port}", "--delay-ms", "15"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def run_script(port: int, relay_pid: int, partition: bool, bound: str | None,
               cap: float) -> tuple[float | None, str, str, int | None]:  # fmt: skip
    """(seconds from the last step to the exit or None if still running at ``cap``, run id,
    stderr, exit code)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}", MLFLOW_ENABLE_ASYNC_LOGGING="true",
               RELAY_PID=str(relay_pid), PYTHONUNBUFFERED="1")  # fmt: skip
    if partition:
        env["PARTITION_AFTER_LAST_STEP"] = "1"
    if bound is not None:
        env["MLFLOW_AWS_ASYNC_EXIT_SECONDS"] = bound
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    run_id = process.stdout.readline().strip()
    assert process.stdout.readline().strip() == "last step", process.stderr.read()
    last_step = time.monotonic()
    try:
        process.wait(cap)
        took: float | None = time.monotonic() - last_step
    except subprocess.TimeoutExpired:
        took = None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    return took, run_id, process.stderr.read(), process.returncode if took is not None else None


def metric_rows(port: int, run_id: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    return sum(len(client.get_metric_history(run_id, f"m{i}")) for i in range(10))


def test_async_logging_sends_every_metric_once_and_exits(mlflow_server: int) -> None:
    with relay(mlflow_server) as (port, process):
        took, run_id, stderr, code = run_script(port, process.pid, False, None, 120)
    # (How fast is the bench's business, bench/training_loop.py; here: it ends, and cleanly.)
    assert took is not None, stderr
    assert code == 0 and "did not finish" not in stderr, stderr
    assert metric_rows(mlflow_server, run_id) == 200


def test_with_the_network_gone_at_exit_mlflow_hangs_and_the_bound_ends_it(
    mlflow_server: int,
) -> None:
    # MLflow's own behaviour (the bound off): still running after 20 s.
    with relay(mlflow_server) as (port, process):
        took, _, stderr, _ = run_script(port, process.pid, True, "0", 20)
    assert took is None, f"exited after {took} s: {stderr}"
    # The plugin's bound: out after 3 s (plus start-up of the exit), saying what was lost.
    with relay(mlflow_server) as (port, process):
        took, run_id, stderr, code = run_script(port, process.pid, True, "3", 30)
    assert took is not None and took < 15.0, stderr
    assert code == 1 and "did not finish within 3 s" in stderr and "lost" in stderr
    assert metric_rows(mlflow_server, run_id) == 200  # those flushed before the partition


def test_a_dead_weak_proxy_in_the_process_does_not_break_the_exit_hook() -> None:
    """The hook scans every object for MLflow's queues; a weak proxy whose referent is gone
    (the gc task's process held one) made isinstance() raise ReferenceError at exit, printing
    a traceback after gc's JSON summary. It must be skipped, and live queues still found."""
    import weakref

    import mlflow.utils.async_logging.async_logging_queue  # noqa: F401 (what the hook looks for)

    from mlflow_aws import async_exit

    class Referent:
        pass

    referent = Referent()
    held = [weakref.proxy(referent)]
    del referent
    assert async_exit._active_queues() == []
    assert held  # the dead proxy was there to scan


# A user's script that leaves it all to the exit: async logging buffered as the helper prints it,
# no end_run (MLflow's atexit handler ends the run), files left open. gc.freeze is spied on: at
# the moment mlflow-aws freezes, MLflow must have ended the run and every metric must be in the
# server's database.
FREEZE_SCRIPT = """
import gc, json, os, sqlite3, sys, tempfile

def record(event, **facts):
    print(json.dumps({"event": event, **facts}), flush=True)

real_freeze = gc.freeze

def spy_freeze():
    from mlflow.utils.async_logging.async_logging_queue import AsyncLoggingQueue
    queues = [q for q in gc.get_objects() if isinstance(q, AsyncLoggingQueue)]
    queued = sum(q._queue.qsize() for q in queues)
    sending = sum(1 for q in queues if getattr(q, "_batch_logging_thread", None)
                  and q._batch_logging_thread.is_alive())
    with sqlite3.connect(os.environ["SERVER_DB"]) as db:
        [(rows,)] = db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run_id,))
    record("freeze", rows=rows, queued=queued, sending=sending,
           run_open=mlflow.active_run() is not None)
    real_freeze()

gc.freeze = spy_freeze
import mlflow
import mlflow.tracking.fluent as fluent

real_end_run = fluent.end_run

def spy_end_run(*args, **kwargs):
    record("end_run")
    return real_end_run(*args, **kwargs)

fluent.end_run = spy_end_run  # what MLflow's atexit handler calls
out = os.environ["OUT_DIR"]
log = open(os.path.join(out, "train.log"), "w")  # never closed, as scripts do
scratch = tempfile.NamedTemporaryFile(dir=out, suffix=".scratch")

class Trainer:  # a reference cycle holding an open file
    def __init__(self):
        self.on_step = self.step
        self.file = open(os.path.join(out, "trainer.log"), "w")

    def step(self, step):
        self.file.write(f"{step}\\n")

trainer = Trainer()
run_id = mlflow.start_run().info.run_id
print(run_id, flush=True)
for step in range(STEPS):
    mlflow.log_metrics({f"m{i}": float(step) for i in range(10)}, step=step)
    log.write(f"step {step}\\n")
    trainer.on_step(step)
print("last step", flush=True)
"""
FREEZE_STEPS = 30


@pytest.mark.parametrize("fast_exit", ["on", "bound-off", "off"])
def test_the_exit_freezes_the_heap_only_after_mlflow_flushed_every_metric(
    mlflow_server: int, server_dir: Path, tmp_path: Path, fast_exit: str
) -> None:
    """With the bound off, MLflow's own atexit handler drains the queue (and leaves it marked
    active): the freeze must still come after it. (MLflow then stores none of this script's
    metrics: its queue hands them to a thread pool that concurrent.futures already shut for the
    interpreter's exit; the bound drains the queue before that.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_server}", PYTHONUNBUFFERED="1",
               MLFLOW_ENABLE_ASYNC_LOGGING="true", MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS="1",
               SERVER_DB=str(server_dir / "mlflow.db"), OUT_DIR=str(tmp_path))  # fmt: skip
    if fast_exit == "off":
        env[async_exit.FAST_EXIT_ENV] = "0"
    if fast_exit == "bound-off":
        env[async_exit.EXIT_SECONDS_ENV] = "0"
    script = FREEZE_SCRIPT.replace("STEPS", str(FREEZE_STEPS))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_id, events = lines[0], [json.loads(x) for x in lines if x.startswith("{")]
    assert "last step" in lines
    want = FREEZE_STEPS * 10
    with sqlite3.connect(server_dir / "mlflow.db") as db:
        [(rows, distinct)] = db.execute(
            "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT key, step FROM metrics "
            "WHERE run_uuid = ?1)) FROM metrics WHERE run_uuid = ?1",
            (run_id,),
        )
    if fast_exit != "bound-off":
        assert (rows, distinct) == (want, want)  # every metric, exactly once
    if fast_exit == "off":
        assert [e["event"] for e in events] == ["end_run"]
    else:
        # MLflow's atexit end of the run first, then the freeze: nothing left queued or being
        # sent, and every metric that will ever be stored already is.
        assert [e["event"] for e in events] == ["end_run", "freeze"]
        assert events[1] == {"event": "freeze", "rows": rows, "queued": 0, "sending": 0,
                             "run_open": False}  # fmt: skip
    # What the teardown would have finalized still is: the files' buffered tails are written
    # (the one held in a cycle too), the temporary file is deleted.
    expected = "".join(f"step {s}\n" for s in range(FREEZE_STEPS))
    assert (tmp_path / "train.log").read_text() == expected
    assert (tmp_path / "trainer.log").read_text() == "".join(f"{s}\n" for s in range(FREEZE_STEPS))
    assert list(tmp_path.glob("*.scratch")) == []
