"""Every user mistake and broken environment gets a one-line cause and fix, never a traceback.

Each helper subcommand runs as a teammate would run it (``python -m helper``), under a matrix
of broken environments: a profile that does not exist, no credentials, an AWS endpoint nobody
answers, a corrupt AWS config file, a nonsense region, an unwritable run directory, a data
directory that is a file, an outputs "file" that is a directory, no docker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port

ROOT = Path(__file__).resolve().parent.parent

AWS_COMMANDS = ("serve-process", "serve-docker", "serve-from-aws", "command", "upgrade", "projects")
LOCAL_COMMANDS = ("serve-local", "upgrade-local")
COMMANDS = {
    "serve-process": ["serve", "--project", "churn", "--runtime", "process", "--outputs", "{o}"],
    "serve-docker": ["serve", "--project", "churn", "--outputs", "{o}"],
    "serve-from-aws": ["serve", "--project", "churn", "--runtime", "process"],
    "command": ["command", "--project", "churn", "--outputs", "{o}"],
    "upgrade": ["upgrade", "--project", "churn", "--outputs", "{o}"],
    "projects": ["projects", "--from-aws"],
    "serve-local": ["serve", "--local", "--data-dir", "{d}"],
    "upgrade-local": ["upgrade", "--local", "--data-dir", "{d}"],
}


def broken_environments(tmp: Path) -> dict[str, tuple[dict[str, str], dict[str, str], tuple]]:
    """name -> (environment overrides, placeholder overrides, the commands it concerns)."""
    empty = tmp / "empty-config"
    empty.write_text("")
    corrupt = tmp / "corrupt-config"
    corrupt.write_text("[default\nregion = = eu-west-1\n")
    a_file = tmp / "a-file"
    a_file.write_text("not a directory")
    no_files = {"AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    keys = {"AWS_ACCESS_KEY_ID": "AKIAX", "AWS_SECRET_ACCESS_KEY": "s"}
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "profile that does not exist": ({"AWS_PROFILE": "nosuch", **no_files}, {}, AWS_COMMANDS),
        "no credentials": ({**no_files, "AWS_EC2_METADATA_DISABLED": "true"}, {}, AWS_COMMANDS),
        "unreachable endpoint": ({"AWS_ENDPOINT_URL": closed, "AWS_MAX_ATTEMPTS": "1", **keys},
                                 {}, AWS_COMMANDS),
        "corrupt AWS config": ({"AWS_CONFIG_FILE": str(corrupt)}, {}, AWS_COMMANDS),
        "nonsense region": ({"AWS_REGION": "not a region!", **keys}, {}, AWS_COMMANDS),
        "unwritable run directory": ({"XDG_RUNTIME_DIR": "/proc/no-such-dir"}, {},
                                     ("serve-local",)),
        "data dir is a file": ({}, {"{d}": str(a_file)}, LOCAL_COMMANDS),
        "outputs is a directory": ({}, {"{o}": str(tmp)}, ("serve-process", "command", "upgrade")),
        "no docker": ({"PATH": str(Path(sys.executable).parent)}, {}, ("serve-docker",)),
    }  # fmt: skip


@pytest.mark.slow
def test_no_subcommand_shows_a_traceback_in_a_broken_environment(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        '{"Region": "eu-west-1", "Projects": {"churn": {"ArtifactRoot": "s3://b/churn", '
        '"ConnectionSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x"}}}'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    base.update(XDG_RUNTIME_DIR=str(tmp_path), AWS_REGION="eu-west-1")
    failures, runs = [], 0
    for env_name, (overrides, places, concerned) in broken_environments(tmp_path).items():
        env = {**base, **overrides}
        for name in concerned:
            template = COMMANDS[name]
            values = {"{o}": str(outputs), "{d}": str(tmp_path / "data"), **places}
            argv = [values.get(arg, arg) for arg in template]
            argv += ["--port", str(free_port())] if template[0] == "serve" else []
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "helper", *argv], cwd=ROOT, env=env,
                    capture_output=True, text=True, timeout=90, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                failures.append(f"{env_name} / {name}: no answer within 90 s")
                continue
            runs += 1
            where = f"{env_name} / {name} (exit {result.returncode})"
            if "Traceback" in result.stderr:
                failures.append(f"{where}: traceback\n{result.stderr[-1500:]}")
            elif result.returncode == 0:
                failures.append(f"{where}: succeeded in a broken environment?\n{result.stderr}")
            elif not result.stderr.lstrip().startswith(("error:", "usage:")):
                failures.append(f"{where}: no one-line error\n{result.stderr[-1500:]}")
    assert runs >= 35
    assert not failures, "\n\n".join(failures)
