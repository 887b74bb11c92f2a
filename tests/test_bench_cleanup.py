"""A benchmark leaves nothing running: after ``bench/tracking_throughput.py`` (the one that once
left its tuned MariaDB-backed server behind), no server, database or moto it started lives on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("mariadbd", "mlflow", "moto.server", "uvicorn", "helper.watchdog")

pytestmark = pytest.mark.slow


def service_processes() -> set[tuple[int, str]]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and any(name in command for name in SERVICES):
            found.add((int(entry.name), command[:160]))
    return found


def test_tracking_throughput_bench_leaves_nothing_running() -> None:
    before = service_processes()
    result = subprocess.run(
        [sys.executable, "bench/tracking_throughput.py", "--backends", "mariadb", "--n", "5",
         "--batches", "1", "--reps", "1", "--warmup", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left running afterwards: nothing" in result.stderr, result.stderr[-3000:]
    assert "LEFT RUNNING" not in result.stderr
    assert service_processes() - before == set()
