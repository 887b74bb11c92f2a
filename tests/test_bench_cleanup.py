"""A benchmark leaves nothing running: after ``bench/tracking_throughput.py`` (the one that once
left its tuned MariaDB-backed server behind), no server, database or moto it started lives on."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("mariadbd", "mlflow", "moto.server", "uvicorn", "helper.watchdog")

pytestmark = pytest.mark.slow


MARK = "MLFLOW_AWS_BENCH_CLEANUP_TEST"  # inherited by everything the bench starts


def service_processes(mark: str) -> set[tuple[int, str]]:
    """Live service processes started under ``mark`` (only this test's: other engineers'
    servers and benches on the same machine do not count)."""
    needle = f"{MARK}={mark}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            marked = needle in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marked and state != "Z" and any(name in command for name in SERVICES):
            found.add((int(entry.name), command[:160]))
    return found


def test_tracking_throughput_bench_leaves_nothing_running() -> None:
    mark = secrets.token_hex(8)
    result = subprocess.run(
        [sys.executable, "bench/tracking_throughput.py", "--backends", "mariadb", "--n", "5",
         "--batches", "1", "--reps", "1", "--warmup", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, MARK: mark},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left running afterwards: nothing" in result.stderr, result.stderr[-3000:]
    assert "LEFT RUNNING" not in result.stderr
    assert service_processes(mark) == set()
