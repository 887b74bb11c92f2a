"""A benchmark leaves nothing running: after ``bench/tracking_throughput.py`` (the one that once
left its tuned MariaDB-backed server behind) and ``bench/artifact_throughput.py`` (its signing
proxy too), no process it started lives on.

Only what the bench itself started counts (issue 15, finding 16): it runs under a child
subreaper (tests/support/reaper.py), so whatever it leaves is re-parented there and nothing else on
the machine (another engineer's mlflow, a service of another test) is mistaken for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import alive

ROOT = Path(__file__).resolve().parent.parent
REAPER = ROOT / "tests" / "support" / "reaper.py"

pytestmark = pytest.mark.slow


def left_by(command: list[str], tmp_path: Path, timeout: float = 900) -> tuple[
    subprocess.CompletedProcess[str], list[list[object]]
]:  # fmt: skip
    report = tmp_path / "left.json"
    result = subprocess.run(
        [sys.executable, str(REAPER), str(report), "--", *command],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return result, json.loads(report.read_text())


def test_tracking_throughput_bench_leaves_nothing_running(tmp_path: Path) -> None:
    result, left = left_by(
        [sys.executable, "bench/tracking_throughput.py", "--backends", "mariadb", "--n", "5",
         "--batches", "1", "--reps", "1", "--warmup", "2"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left running afterwards: nothing" in result.stderr, result.stderr[-3000:]
    assert "LEFT RUNNING" not in result.stderr
    assert left == []


def test_artifact_throughput_bench_leaves_nothing_running(tmp_path: Path) -> None:
    """Its route through the signing proxy starts ``helper serve --remote`` next to the central
    server, moto and MariaDB: none of them lives on after the bench."""
    result, left = left_by(
        [sys.executable, "bench/artifact_throughput.py", "--quick", "--routes", "remote",
         "--threads", "0"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting the signing proxy" in result.stderr, result.stderr[-3000:]
    assert "left running afterwards: nothing" in result.stderr, result.stderr[-3000:]
    assert "LEFT RUNNING" not in result.stderr
    assert left == []


def test_only_what_the_command_started_is_counted(tmp_path: Path) -> None:
    """The reaper reports what a command leaves, and nothing that merely runs meanwhile."""
    bystander = subprocess.Popen(  # someone else's mlflow, started during the run
        [sys.executable, "-c", "import time; time.sleep(60)", "mlflow", "server"],
        start_new_session=True,
    )
    try:
        leaker = (
            "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)', 'mlflow-left-behind'], start_new_session=True)"
        )
        result, left = left_by([sys.executable, "-c", leaker], tmp_path, timeout=60)
        assert result.returncode == 0
        commands = [str(command) for _, command in left]
        assert len(commands) == 1 and "mlflow-left-behind" in commands[0], commands
        assert bystander.poll() is None  # never touched
        pid = int(str(left[0][0]))
        time.sleep(0.3)
        assert not alive(pid)  # gone, or a zombie nobody has reaped yet
    finally:
        bystander.kill()
        bystander.wait()


def test_the_tests_leave_no_temporary_files(tmp_path: Path) -> None:
    """Program runs under mocks write a CA bundle (db.caBundle) and provider servers a log: a
    test session leaves none of them in the temp directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_program.py::test_exports_exactly_the_design_outputs",
         "tests/test_provider_state.py::test_the_engine_loads_the_state_from_another_directory"],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("mlflow-aws-")) == []
