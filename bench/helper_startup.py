"""How long ``python -m helper serve`` takes to a healthy server, and what that server costs.

    .venv/bin/python bench/helper_startup.py [--starts 3]

For the process runtime on MariaDB (TLS required, like Aurora; S3 on moto) and for the local
default (SQLite): the first start on an empty store (it migrates the schema) and warm starts
on the migrated one; the server's process count and total RSS once healthy (VmRSS summed over
the helper's descendants, the helper itself excluded); and ``python -m helper --help``.
Seconds run from spawning the helper to its ``export MLFLOW_TRACKING_URI=`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import descendants, rss_mib
from tests.support.services import free_port, running_mariadb, running_moto

ROOT = Path(__file__).resolve().parent.parent

PROJECT = "bench-startup"
BUCKET = "mlflow-aws-bench-startup"


@contextlib.contextmanager
def served(options: list[str], env: dict[str, str]) -> Iterator[tuple[float, list[int]]]:
    port = free_port()
    started = time.monotonic()
    helper = subprocess.Popen(
        [sys.executable, "-m", "helper", "serve", *options, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert helper.stdout is not None
        for line in helper.stdout:
            if line.startswith("export MLFLOW_TRACKING_URI="):
                break
        else:
            raise RuntimeError(f"helper exited {helper.wait()} before serving")
        seconds = time.monotonic() - started
        time.sleep(1)  # let the worker finish importing before its RSS is read
        yield seconds, descendants(helper.pid)
    finally:
        helper.send_signal(signal.SIGINT)
        helper.wait(60)


def measure(label: str, options: list[str], env: dict[str, str], starts: int) -> list[str]:
    rows = []
    with served(options, env) as (seconds, pids):
        rows.append(f"{label}, first start (migrates)  {seconds:6.1f} s   "
                    f"{len(pids)} processes  {rss_mib(pids):5.0f} MiB")  # fmt: skip
    warm = []
    for _ in range(starts):
        with served(options, env) as (seconds, pids):
            warm.append(seconds)
    rows.append(f"{label}, warm start (median of {starts})  {statistics.median(warm):6.1f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    starts = parser.parse_args().starts
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "helper", "--help"], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    rows = [f"python -m helper --help  {time.monotonic() - started:6.2f} s"]

    with running_mariadb() as db, running_moto() as moto, tempfile.TemporaryDirectory() as tmp:
        from tests.support.stack_on_moto import (
            bundle_for,
            create_project,
            ensure_bucket,
            put_connection_secret,
            server_role,
            write_outputs,
        )

        aws = moto.aws_env()
        ensure_bucket(aws, BUCKET)
        bundle = bundle_for(create_project(db, PROJECT), "bench", BUCKET, server_role(aws))
        arn = put_connection_secret(aws, bundle)
        outputs = write_outputs(Path(tmp) / "outputs.json", BUCKET, {PROJECT: arn})
        remote = ["--project", PROJECT, "--outputs", str(outputs), "--runtime", "process"]
        rows += measure("process runtime, MariaDB", remote, {**clean, **moto.aws_env()}, starts)
        local = ["--local", "--data-dir", str(Path(tmp) / "local")]
        rows += measure("local default, SQLite   ", local, clean, starts)
    print("\n".join(rows))


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        main()
