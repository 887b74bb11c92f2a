"""The server image's Python environment without docker: its pinned requirements
(docker/requirements.txt), the Dockerfile's Python and pip flags, venvs cached under .services/,
and the previous MLflow minor's venv (``previous_mlflow``) for the upgrade tests."""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
LOCK = DOCKER / "requirements.txt"
DOCKERFILE = DOCKER / "Dockerfile"
CACHE_DIR = ROOT / ".services"
INSTALL_TIMEOUT = 900.0


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock() -> dict[str, str]:
    """docker/requirements.txt as {normalized name: version}; every line must be name==version."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(LOCK.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
        assert match, f"{LOCK}:{number}: not a name==version pin: {raw!r}"
        name = normalize(match.group(1))
        assert name not in pins, f"{LOCK}:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def dockerfile_pip_flags() -> list[str]:
    """The options of the Dockerfile's pip install of the lock (the pinned mlflow's branch)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    [flags] = re.findall(r"pip install ((?:--?[a-z-]+ )+)-r /tmp/requirements\.txt", text)
    return flags.split()


def dockerfile_python() -> str:
    """``3.11`` of ``FROM python:3.11.14-slim-bookworm``."""
    match = re.search(r"^FROM python:(\d+\.\d+)\.\d+-slim", DOCKERFILE.read_text(), re.M)
    assert match, "the Dockerfile is not FROM python:X.Y.Z-slim"
    return match.group(1)


def python_for_image() -> str | None:
    """An interpreter of the image's Python minor version: this one, or pythonX.Y on PATH."""
    want = dockerfile_python()
    if f"{sys.version_info.major}.{sys.version_info.minor}" == want:
        return sys.executable
    return shutil.which(f"python{want}")


def cached_venv(prefix: str, python: str, pip_install_args: list[str]) -> Path:
    """``.services/<prefix>-<hash>``: a venv made by ``python`` with ``pip install <args>`` run in
    it, keyed by the args, the content of any file among them and the Python version. Built once;
    concurrent callers wait for the builder (a file lock) and reuse its result."""
    material = [python, dockerfile_python(), *pip_install_args]
    material += [Path(a).read_text() for a in pip_install_args if Path(a).is_file()]
    key = hashlib.sha256("\0".join(material).encode()).hexdigest()[:16]
    venv = CACHE_DIR / f"{prefix}-{key}"
    done = venv / ".installed"
    CACHE_DIR.mkdir(exist_ok=True)
    with (CACHE_DIR / f"{prefix}-{key}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)  # a build that did not finish
            started = time.monotonic()
            subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", *pip_install_args],
                check=True,
                timeout=INSTALL_TIMEOUT,
            )  # fmt: skip
            done.write_text(f"{time.monotonic() - started:.0f}s\n")
            print(f"\n[{prefix}] built in {time.monotonic() - started:.0f}s", file=sys.__stderr__)
    return venv


def image_venv_path(python: str) -> Path:
    """The image's packages, installed as the Dockerfile installs them: the lock (its pip flags,
    ``-r`` the lock), then mlflow-aws itself from the repository (``--no-deps
    --no-build-isolation``: the aws-iam app and the migration step). The lock's venv is cached;
    mlflow-aws is reinstalled whenever its sources change."""
    from infra.server_image import context_digest

    venv = cached_venv("image-venv", python, [*dockerfile_pip_flags(), "-r", str(LOCK)])
    stamp = venv / ".mlflow-aws-sources"
    digest = context_digest(ROOT)
    with (CACHE_DIR / "image-venv-package.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not stamp.exists() or stamp.read_text() != digest:
            with tempfile.TemporaryDirectory() as source:  # setuptools builds in the tree
                shutil.copy(ROOT / "pyproject.toml", source)
                for package in ("mlflow_aws", "helper"):
                    shutil.copytree(ROOT / package, Path(source) / package,
                                    ignore=shutil.ignore_patterns("__py*"))  # fmt: skip
                subprocess.run(
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                     "--disable-pip-version-check", "--no-cache-dir", "--no-deps",
                     "--no-build-isolation", "--force-reinstall", source],
                    check=True, timeout=INSTALL_TIMEOUT,
                )  # fmt: skip
            stamp.write_text(digest)
    return venv


PREVIOUS = "3.16.1"


@pytest.fixture(scope="session")
def previous_mlflow() -> Path:
    """A venv with mlflow 3.16.1 and the rest of the image's lock."""
    python = python_for_image()
    if python is None:
        pytest.skip("no python of the image's version")
    CACHE_DIR.mkdir(exist_ok=True)
    requirements = CACHE_DIR / f"mlflow-{PREVIOUS}-requirements.txt"
    pins = re.sub(
        r"^(mlflow(?:-skinny|-tracing)?)==\S+$", rf"\1=={PREVIOUS}", LOCK.read_text(), flags=re.M
    )
    if not requirements.exists() or requirements.read_text() != pins:
        requirements.write_text(pins)
    venv = cached_venv(
        f"mlflow-{PREVIOUS}", python, [*dockerfile_pip_flags(), "-r", str(requirements)]
    )
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    assert version == PREVIOUS
    return venv
