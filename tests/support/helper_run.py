"""The helper as a teammate runs it, against the test services: moto's credentials (the
``aws`` fixture), a project with its connection secret and outputs file, ``python -m helper``
run to completion or serving, and the tutorial's tracking script through a server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.support.processes import descendants
from tests.support.services import MariaDB, MotoServer
from tests.support.stack_on_moto import (
    Project,
    bundle_for,
    create_project,
    ensure_bucket,
    put_connection_secret,
    server_role,
    write_outputs,
)

ROOT = Path(__file__).resolve().parents[2]
TRACKING_SCRIPT = Path(__file__).resolve().parent / "tracking_script.py"
AWS_SECRET_KEY = "moto-Secret-Key-5e4d3c2b1a"  # moto accepts any; distinctive, to look for leaks
BUCKET = "mlflow-aws-e2e-artifacts"  # the stack's bucket prefix (helper/trust.py)
SERVE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def aws(moto: MotoServer) -> dict[str, str]:
    env = {**moto.aws_env(), "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY}
    ensure_bucket(env, BUCKET)
    return env


@pytest.fixture(scope="module")
def role_arn(aws: dict[str, str]) -> str:
    return server_role(aws)


def publish(aws: dict[str, str], project: Project, stack: str = "e2e", **bundle: Any) -> str:
    """The project's connection secret (ARN), as the program writes it."""
    bucket = BUCKET if stack == "e2e" else f"mlflow-aws-{stack}-artifacts"  # the stack's own
    return put_connection_secret(
        aws, bundle_for(project, stack, bucket, server_role(aws), **bundle)
    )


def project_with_outputs(
    mariadb: MariaDB, aws: dict[str, str], name: str, tmp_path: Path, **bundle: Any
) -> tuple[Project, Path]:
    """A fresh project schema and user, its connection secret, and an outputs file naming it."""
    project = create_project(mariadb, name)
    arn = publish(aws, project, **bundle)
    return project, write_outputs(tmp_path / f"outputs-{name}.json", BUCKET, {name: arn})


def helper_env(aws: dict[str, str], tmp_dir: Path) -> dict[str, str]:
    """The user's environment: no AWS or MLflow settings of the machine, moto's instead."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PULUMI_"))}
    return {**base, **aws, "TMPDIR": str(tmp_dir), "XDG_RUNTIME_DIR": str(tmp_dir),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


@dataclass
class RunningHelper:
    process: subprocess.Popen[str]
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    healthy_after: float | None = None
    secret: str = ""  # the run's secret, from the export line the helper printed

    def auth(self) -> dict[str, str]:
        """The header the MLflow client sends with MLFLOW_TRACKING_TOKEN set."""
        return {"Authorization": f"Bearer {self.secret}"}

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def server_pids(self) -> list[int]:
        return descendants(self.process.pid)


def start_helper(argv: list[str], env: dict[str, str], log_dir: Path) -> RunningHelper:
    stderr_path = log_dir / f"helper-{time.monotonic_ns()}.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "helper", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    running = RunningHelper(process, stderr_path)
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            running.stdout_lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return running


def export_secret(lines: list[str], port: int) -> str | None:
    """The secret of ``export MLFLOW_TRACKING_URI=<url> MLFLOW_TRACKING_TOKEN=<secret>``."""
    want = f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port} MLFLOW_TRACKING_TOKEN="
    for line in lines:
        if line.startswith(want):
            return line.removeprefix(want)
    return None


def wait_for_url(running: RunningHelper, port: int, timeout: float = SERVE_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while (secret := export_secret(list(running.stdout_lines), port)) is None:
        if running.process.poll() is not None:
            pytest.fail(f"helper exited {running.process.returncode}:\n{running.stderr()[-4000:]}")
        if time.monotonic() > deadline:
            stop_helper(running)
            pytest.fail(f"helper not serving after {timeout}s:\n{running.stderr()[-4000:]}")
        time.sleep(0.05)
    running.healthy_after = time.monotonic() - running.started
    running.secret = secret
    url = f"http://127.0.0.1:{port}"
    # ... and the browser's one-time URL, with the same secret, just before it.
    assert f"{url}/?token={secret}" in "\n".join(running.stdout_lines)
    return url


def stop_helper(running: RunningHelper, sig: int = signal.SIGINT) -> int:
    if running.process.poll() is None:
        running.process.send_signal(sig)
    try:
        return running.process.wait(40)
    except subprocess.TimeoutExpired:
        running.process.kill()
        raise


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], log_dir: Path, port: int) -> Iterator[Any]:
    """The helper serving; for the block, this process's MLflow clients hold the run's secret
    (MLFLOW_TRACKING_TOKEN, as the teammate's shell after pasting the export line)."""
    running = start_helper(argv, env, log_dir)
    try:
        wait_for_url(running, port)
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_TOKEN": running.secret}):
            yield running
    finally:
        if running.process.poll() is None:
            pids = running.server_pids()
            stop_helper(running)
            for pid in pids:  # should be gone already; never leave a server behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_helper(argv: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "helper", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_tracking_script(uri: str, work_dir: Path) -> None:
    """The tutorial's tracking.py, unmodified, with only the export line's MLFLOW_TRACKING_URI
    and MLFLOW_TRACKING_TOKEN (the run's secret, when serving) (no AWS keys)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(TRACKING_SCRIPT, work_dir / "tracking.py")
    env = {"PATH": os.environ["PATH"], "HOME": str(work_dir), "MLFLOW_TRACKING_URI": uri}
    if "MLFLOW_TRACKING_TOKEN" in os.environ:
        env["MLFLOW_TRACKING_TOKEN"] = os.environ["MLFLOW_TRACKING_TOKEN"]
    result = subprocess.run(
        [sys.executable, "tracking.py"],
        cwd=work_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def record(figure: str) -> None:
    print(f"\n[helper figures] {figure}", file=sys.__stdout__, flush=True)


# No Docker engine here: this stand-in records what the helper asks of docker and plays the
# container with a tiny /health server on the published port, so everything around the engine
# (ECR login via moto, pull, the -e values, publish address, stop on Ctrl-C) runs for real.
FAKE_DOCKER = r"""
import http.server, json, os, signal, sys
state = os.environ["FAKE_DOCKER_STATE"]
args = sys.argv[1:]

def log(**entry):
    with open(os.path.join(state, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, **entry}) + "\n")

if args[0] == "version":
    print("27.0.0")
elif args[0] == "login":
    log(stdin=sys.stdin.read())
    print("Login Succeeded")
elif args[0] == "pull":
    log()
    print("sha256:0000: Pull complete")
elif args[0] == "run":
    names = [args[i + 1] for i, a in enumerate(args) if a == "-e"]
    env = {name: os.environ[name] for name in names if name in os.environ}  # as docker does
    name = args[args.index("--name") + 1]
    host, port, _ = args[args.index("-p") + 1].split(":")
    log(env=env, pid=os.getpid())
    with open(os.path.join(state, name + ".pid"), "w") as f:
        f.write(str(os.getpid()))

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

    server = http.server.HTTPServer((host, int(port)), Health)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("container listening", flush=True)
    server.serve_forever()
elif args[0] == "stop":
    log()
    with open(os.path.join(state, args[-1] + ".pid")) as f:
        os.kill(int(f.read()), signal.SIGTERM)
"""


def fake_docker(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    for directory in (bin_dir, state):
        directory.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    docker.chmod(0o755)
    return bin_dir, state
