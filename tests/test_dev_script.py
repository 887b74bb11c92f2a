"""``./dev``, the README's entry point: its usage text is exactly the comment at its top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dev_without_a_command_prints_its_usage_and_nothing_else() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "dev")], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "mlflow-aws developer entry point."
    assert [line.split()[1] for line in lines if line.startswith("  ./dev")] == [
        "local",
        "test",
        "setup",
        "mutate",
        "smoke-aws",
    ]
    assert all(line.startswith(("mlflow-aws", "  ")) for line in lines), lines
    assert "set -" not in result.stdout and "#" not in result.stdout


# -- ./dev setup with the wrong Python (issue 15, finding 15) ---------------------------------


def dev_copy(tmp_path: Path) -> Path:
    """A repository with the real ./dev and trivial pins, to run setup quickly."""
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    (repo / "dev").write_text((ROOT / "dev").read_text())
    (repo / "dev").chmod(0o755)
    for name in ("requirements.txt", "constraints.txt", "docker/requirements.txt"):
        (repo / name).write_text("")
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools==80.9.0"]\n'
        'build-backend = "setuptools.build_meta"\n'
        '[project]\nname = "dev-setup-check"\nversion = "0"\n'
        "[tool.setuptools]\npy-modules = []\n"
    )
    return repo


def old_python(tmp_path: Path) -> Path:
    """A stand-in for Python 3.9: answers the version, fails at anything else."""
    fake = tmp_path / "python3.9"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *print*version_info*) echo 3.9 ;; *exit*version_info*) exit 1 ;;\n'
        '  *) echo "ERROR: Could not find a version that satisfies" >&2; exit 1 ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    return fake


def setup(repo: Path, python: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "dev"), "setup"], cwd=repo, env={**os.environ, "PYTHON": str(python)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_setup_refuses_a_python_older_than_3_11_before_making_anything(tmp_path: Path) -> None:
    repo = dev_copy(tmp_path)
    result = setup(repo, old_python(tmp_path))
    assert result.returncode == 1
    assert "needs Python 3.11 or newer" in result.stderr and "is Python 3.9" in result.stderr
    assert "PYTHON=python3.11 ./dev setup" in result.stderr
    assert not (repo / ".venv").exists()


@pytest.mark.slow
def test_setup_rebuilds_a_venv_another_python_made(tmp_path: Path) -> None:
    repo = dev_copy(tmp_path)
    broken = repo / ".venv" / "bin"
    broken.mkdir(parents=True)
    (broken / "python").symlink_to(old_python(tmp_path))  # a venv left by a failed 3.9 setup
    python = Path(sys.base_prefix) / "bin" / "python3"
    result = setup(repo, python)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rebuilding .venv: it was made by another Python (3.9)" in result.stderr
    version = subprocess.run([repo / ".venv" / "bin" / "python", "-c", "import sys; "
                              "print(sys.version_info >= (3, 11))"], capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert version.stdout.strip() == "True"


@pytest.mark.slow
def test_setup_leaves_no_build_output_in_the_tree(tmp_path: Path) -> None:
    """The editable install's egg-info and a build/ from an in-tree build are removed: the
    repository holds its sources once."""
    repo = dev_copy(tmp_path)
    (repo / "build" / "lib").mkdir(parents=True)
    (repo / "build" / "lib" / "stale.py").write_text("")
    result = setup(repo, Path(sys.base_prefix) / "bin" / "python3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in repo.iterdir()) == [
        ".venv",
        "constraints.txt",
        "dev",
        "docker",
        "pyproject.toml",
        "requirements.txt",
    ]
