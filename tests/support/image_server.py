"""The server as the image runs it, for tests and benchmarks: ``docker/entrypoint.sh`` with the
image's own packages (the lock, installed as the Dockerfile installs it, see
tests/test_image_requirements.py) and the environment an ECS task gets.

``task_environment`` mirrors ``infra/containers.py``'s container definition: the backend store URI
and the database's CA bundle as the task's ``secrets`` deliver them (plain environment variables
inside the container), the static prefix, allowed hosts and CORS origins, the artifact
destination. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from helper.watchdog import stop_group
from tests.support import image_server
from tests.support.processes import left_after, process_tree
from tests.support.stack_on_moto import Project

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SERVE_TIMEOUT = 180.0


def task_environment(
    *,
    backend_store_uri: str,
    ca_pem: str,
    artifacts_destination: str,
    port: int,
    prefix: str | None,
    allowed_hosts: str | None = None,
    cors_origins: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    env = {
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_AWS_DB_CA_BUNDLE": ca_pem,
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
    }
    if prefix:
        env["MLFLOW_STATIC_PREFIX"] = prefix
    if allowed_hosts:
        env["MLFLOW_SERVER_ALLOWED_HOSTS"] = allowed_hosts
    if cors_origins:
        env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = cors_origins
    return {**env, **(extra or {})}


@dataclass
class ImageServer:
    process: subprocess.Popen[bytes]
    port: int
    prefix: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start(
    venv: Path, env: Mapping[str, str], home: Path, log_path: Path, args: tuple[str, ...] = ()
) -> ImageServer:
    """``entrypoint.sh ARGS`` (a task's ``command``) in its own process group, with only the
    image's Python on PATH."""
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp)}
    full_env.update(env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ENTRYPOINT), *args],
            cwd=home,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prefix = env.get("MLFLOW_STATIC_PREFIX", "").rstrip("/")
    return ImageServer(process, int(env["MLFLOW_PORT"]), prefix, log_path)


def wait_healthy(server: ImageServer, timeout: float = SERVE_TIMEOUT) -> float:
    """Seconds until ``<prefix>/health`` answers 200; fails when the server exits first."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited {server.process.returncode}:\n{server.log()[-4000:]}"
            )
        health = f"{server.url}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=5) as response:  # noqa: S310
            if response.status == 200:
                return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"not healthy after {timeout:g}s:\n{server.log()[-4000:]}")
        time.sleep(0.2)


def stop(server: ImageServer) -> None:
    """SIGTERM the server's process group (SIGKILL after 30 s); asserts nothing is left."""
    tree = process_tree(server.process.pid)
    stop_group(server.process.pid, server.process, timeout=30)  # the helper's own group stop
    left = left_after(tree, 10)
    assert not left, f"server processes left: {left}"


@contextlib.contextmanager
def running(
    venv: Path, env: Mapping[str, str], home: Path, log_path: Path, args: tuple[str, ...] = ()
) -> Iterator[ImageServer]:
    server = start(venv, env, home, log_path, args)
    try:
        wait_healthy(server)
        yield server
    finally:
        stop(server)


def task_env(
    project: Project, port: int, tmp_path: Path, ca_pem: str | None = None
) -> dict[str, str]:
    return image_server.task_environment(
        backend_store_uri=project.backend_store_uri,  # as the connection bundle has it
        ca_pem=ca_pem if ca_pem is not None else project.mariadb.ca_path.read_text(),
        artifacts_destination=str(tmp_path / "artifacts"),
        port=port,
        prefix=f"/{project.name}",
    )
