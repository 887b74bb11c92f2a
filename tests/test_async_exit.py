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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("async-exit")
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
