"""The run records (helper/supervise.py): a record planted by someone else never makes the helper
run a command or stop a process (issue 14, Low: a record planted in a shared
``XDG_RUNTIME_DIR`` ran its ``on_orphan`` command as root).

Each attack plants a record whose ``on_orphan`` would create a marker file, then lets the next
start on that port reclaim it; the marker must never appear.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from helper import supervise
from helper.errors import HelperError
from tests.support.services import free_port


def plant(run_dir: Path, port: int, command: list[str], project: str = "churn") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / f"port-{port}.json"
    record.write_text(json.dumps({"pgid": 0, "project": project, "on_orphan": command}))
    record.chmod(0o600)
    return record


def marker_command(marker: Path) -> list[str]:
    return [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "runtime"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    return base


def test_a_record_in_a_shared_runtime_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create mlflow-aws/run/port-N.json in it
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    port, marker = free_port(), tmp_path / "pwned"
    run_dir = shared / "mlflow-aws" / "run"
    plant(run_dir, port, marker_command(marker))
    (shared / "mlflow-aws").chmod(0o700)
    run_dir.chmod(0o700)
    with pytest.raises(HelperError) as refused:
        supervise.reclaim_port(port, io.StringIO())
    assert f"{shared}, where the helper records the servers it runs, has mode 1777" in str(
        refused.value
    )
    assert "XDG_RUNTIME_DIR" in str(refused.value)
    assert not marker.exists()


def test_a_run_directory_others_may_write_is_refused(runtime_dir: Path, tmp_path: Path) -> None:
    port, marker = free_port(), tmp_path / "pwned"
    run_dir = runtime_dir / "mlflow-aws" / "run"
    plant(run_dir, port, marker_command(marker))
    (runtime_dir / "mlflow-aws").chmod(0o700)
    run_dir.chmod(0o777)
    with pytest.raises(HelperError, match=r"mlflow-aws/run, .* has mode 0777"):
        supervise.reclaim_port(port, io.StringIO())
    assert not marker.exists()


def test_a_symlinked_run_directory_is_refused(runtime_dir: Path, tmp_path: Path) -> None:
    port, marker = free_port(), tmp_path / "pwned"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    plant(elsewhere / "run", port, marker_command(marker))
    (elsewhere / "run").chmod(0o700)
    (runtime_dir / "mlflow-aws").symlink_to(elsewhere)
    with pytest.raises(HelperError, match="is a symbolic link"):
        supervise.reclaim_port(port, io.StringIO())
    assert not marker.exists()


def test_a_symlinked_record_is_not_followed(runtime_dir: Path, tmp_path: Path) -> None:
    port, marker = free_port(), tmp_path / "pwned"
    planted = plant(tmp_path / "attacker", port, marker_command(marker))
    run_dir = supervise.run_directory()
    (run_dir / f"port-{port}.json").symlink_to(planted)
    with pytest.raises(HelperError, match="a symbolic link is refused"):
        supervise.reclaim_port(port, io.StringIO())
    assert not marker.exists()


def test_a_record_readable_by_others_is_refused(runtime_dir: Path, tmp_path: Path) -> None:
    port, marker = free_port(), tmp_path / "pwned"
    record = plant(supervise.run_directory(), port, marker_command(marker))
    record.chmod(0o644)
    with pytest.raises(HelperError, match="is not a private file of yours"):
        supervise.reclaim_port(port, io.StringIO())
    assert not marker.exists()


def test_only_the_helpers_own_docker_stop_is_run(
    runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the user's own private directory, a record is still only data: any command but the
    exact ``docker stop`` of that port's container is ignored, with a message."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\nimport sys\nopen({str(calls)!r}, 'a').write("
                      "' '.join(sys.argv[1:]) + '\\n')\n")  # fmt: skip
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run_dir = supervise.run_directory()
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    port, marker = free_port(), tmp_path / "pwned"
    for command in (
        marker_command(marker),
        [str(docker), "stop", "--time", "10", f"mlflow-churn-{port}", "; touch x"],
        [str(docker), "stop", "--time", "10", f"mlflow-fraud-{port + 1}"],  # not this port's
        [str(tmp_path / "docker"), "stop", "--time", "10", f"mlflow-churn-{port}"],
    ):
        plant(run_dir, port, command)
        err = io.StringIO()
        supervise.reclaim_port(port, err)
        assert "ignoring the command in the run record" in err.getvalue()
        assert not (run_dir / f"port-{port}.json").exists()
    assert not marker.exists() and not calls.exists()

    # The record the helper writes itself is honoured: its container is stopped.
    plant(run_dir, port, [str(docker), "stop", "--time", "10", f"mlflow-churn-{port}"])
    err = io.StringIO()
    supervise.reclaim_port(port, err)
    assert err.getvalue() == ""
    assert calls.read_text() == f"stop --time 10 mlflow-churn-{port}\n"


def test_a_directory_an_earlier_helper_made_0755_is_tightened_not_refused(
    runtime_dir: Path,
) -> None:
    """Helpers before the run-record checks made ``mlflow-aws`` with mkdir's default 0755
    (a teammate upgrading keeps it): nobody else could write there, so the helper makes it
    0700 and goes on; one that others may write to is still refused (above)."""
    (runtime_dir / "mlflow-aws").mkdir(mode=0o755)
    (runtime_dir / "mlflow-aws").chmod(0o755)
    run_dir = supervise.run_directory()
    assert stat.S_IMODE((runtime_dir / "mlflow-aws").stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    supervise.reclaim_port(free_port(), io.StringIO())  # nothing recorded: silent


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        (0o2755, "has mode 2755"),  # setgid: files made there get another group
        (0o1755, "has mode 1755"),  # sticky: not a mode the helper made
    ],
)
def test_a_run_directory_with_special_bits_is_refused_not_tightened(
    runtime_dir: Path, mode: int, what: str
) -> None:
    (runtime_dir / "mlflow-aws").mkdir()
    (runtime_dir / "mlflow-aws").chmod(mode)
    try:
        with pytest.raises(HelperError, match=f"mlflow-aws, where the helper .* {what}"):
            supervise.run_directory()
        assert stat.S_IMODE((runtime_dir / "mlflow-aws").stat().st_mode) == mode
    finally:
        (runtime_dir / "mlflow-aws").chmod(0o700)


def test_a_pin_file_others_may_read_is_refused_by_the_same_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pinned connection secrets (helper/trust.py) follow the run records' rule."""
    from helper import trust
    from helper.outputs import OutputsError

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    pins = trust.pins()
    pins.put(pins.key("123456789012", "eu-west-1", "churn"), "arn:aws:secretsmanager:x")
    assert stat.S_IMODE(pins.path.stat().st_mode) == 0o600
    pins.path.chmod(0o640)
    with pytest.raises(OutputsError, match=r"is not a private file of yours \(it has mode 0640"):
        pins.get(pins.key("123456789012", "eu-west-1", "churn"))
    pins.path.chmod(0o600)
    pins.path.parent.chmod(0o750)
    with pytest.raises(OutputsError, match=r"not a private directory of yours \(it has mode 0750"):
        pins.put(pins.key("123456789012", "eu-west-1", "fraud"), "arn:aws:secretsmanager:y")
