"""What a new user trips over with the helper (issue 15, findings 13-15): each mistake is said
first and as itself, in the words of the command the user ran.

* input before environment: with the default docker runtime and no Docker, a reserved name, a
  missing or malformed outputs file, an unknown project and conflicting options are each
  reported as such (the missing-Docker error used to hide them all);
* ``serve --local --project ""`` is an error, not the default project;
* an unreadable ``--db-ca`` is reported before anything reaches AWS or the database;
* ``--help`` and the hints name the command that was run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mlflow-aws/dev/churn-AbCdEf"


def outputs_file(tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"Region": "eu-west-1", "Projects": {"churn": {
        "ArtifactRoot": "s3://b/churn", "ConnectionSecretArn": SECRET_ARN}}}))  # fmt: skip
    return path


def helper(*argv: str | Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m helper`` as a teammate runs it: no Docker on PATH, AWS unreachable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "AKIAX",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nobody answers
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    return subprocess.run(
        [sys.executable, "-m", "helper", *map(str, argv)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--project", "admin"], 2, ["mlflow_admin"]),
        (["--project", "churn", "--outputs", "{missing}"], 1, ["does not exist"]),
        (["--project", "churn", "--outputs", "{malformed}"], 1, ["is not JSON"]),
        (["--project", "fraud", "--outputs", "{good}"], 1, ["unknown project 'fraud'", "churn"]),
        (["--project", "churn", "--outputs", "{good}", "--secret-id", "x"], 2,
         ["--secret-id goes with --from-aws"]),
        (["--project", "churn", "--outputs", "{good}", "--db-ca", "{missing}"], 2,
         ["--db-ca", "cannot read it"]),
    ],
)  # fmt: skip
def test_input_errors_come_before_the_missing_docker(
    argv: list[str], code: int, words: list[str], tmp_path: Path
) -> None:
    malformed = tmp_path / "malformed.json"
    malformed.write_text("{ not json")
    places = {"{missing}": str(tmp_path / "nope.json"), "{malformed}": str(malformed),
              "{good}": str(outputs_file(tmp_path))}  # fmt: skip
    result = helper("serve", *[places.get(a, a) for a in argv], tmp_path=tmp_path)
    message = assert_one_line(result, code, *words)
    assert "docker" not in message.lower()


def test_with_valid_input_the_missing_docker_is_said(tmp_path: Path) -> None:
    result = helper("serve", "--project", "churn", "--outputs", outputs_file(tmp_path),
                    tmp_path=tmp_path)  # fmt: skip
    assert_one_line(result, 1, "docker is not installed", "--runtime process")


def test_an_empty_local_project_is_refused_not_served_as_default(tmp_path: Path) -> None:
    with socket.socket() as busy:  # were it served, this would be a port error, not a hang
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = helper("serve", "--local", "--project", "", "--port", str(port),
                        "--data-dir", tmp_path / "data", tmp_path=tmp_path)  # fmt: skip
    assert_one_line(result, 2, "project name is empty")
    assert not (tmp_path / "data" / "default").exists()
    for command in (["serve"], ["upgrade"], ["command"]):
        empty = helper(*command, "--project", "", tmp_path=tmp_path)
        assert_one_line(empty, 2, "project name is empty")


@pytest.mark.parametrize("command", ["serve", "upgrade"])
def test_an_unreadable_db_ca_is_said_before_aws_or_the_database(
    command: str, tmp_path: Path
) -> None:
    unreadable = tmp_path / "ca.pem"
    unreadable.write_text("-----BEGIN CERTIFICATE-----\n")
    unreadable.chmod(0)
    argv: list[str | Path] = [command, "--project", "churn", "--outputs",
                              outputs_file(tmp_path), "--db-ca", unreadable]  # fmt: skip
    if command == "serve":
        argv += ["--runtime", "process"]
    if os.geteuid() == 0:  # root reads anything: make it not a file instead
        unreadable.chmod(0o600)
        unreadable.unlink()
        unreadable.mkdir()
    result = helper(*argv, tmp_path=tmp_path)
    message = assert_one_line(result, 2, f"--db-ca {unreadable}: cannot read it")
    assert "AWS" not in message and "database at" not in message


def test_help_and_hints_name_the_command_that_was_run(tmp_path: Path) -> None:
    usage = helper("--help", tmp_path=tmp_path)
    assert usage.stdout.startswith("usage: python -m helper ")
    missing = helper("serve", "--runtime", "process", tmp_path=tmp_path)
    assert_one_line(missing, 2, "`python -m helper projects`")
    from helper.invocation import helper_command

    assert helper_command("/home/u/venv/bin/mlflow-aws") == "mlflow-aws"
    assert helper_command("/repo/helper/__main__.py") == "python -m helper"
