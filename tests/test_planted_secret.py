"""A planted connection secret cannot steer the helper (issue 14, Medium 1; helper/trust.py).

Someone who may create secrets in the account plants one the helper would find for a project:
it names their registry (the user's ECR token went there), a role of their account, a bucket
that is not the stack's, or it is simply named otherwise. With moto and the stand-in docker of
tests/test_helper_e2e.py, each is refused with a message naming the field and the rule, before
any ``docker login`` or ``docker run``; a secret first used is remembered, and one that
appears in its place later is refused until the user names it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.helper_run import AWS_SECRET_KEY, fake_docker, helper_env, run_helper
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import (
    ACCOUNT,
    REGION,
    Project,
    aws_client,
    bundle_for,
    create_project,
    ensure_bucket,
    put_connection_secret,
    server_role,
    write_outputs,
)

pytestmark = pytest.mark.slow

STACK = "e2e"
BUCKET = "mlflow-aws-e2e-artifacts"  # the stack's bucket (its name starts with the stack's prefix)
ATTACKER_IMAGE = "registry.attacker.example/mlflow@sha256:" + "1" * 64
PROD_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlflow-aws/prod/server@sha256:" + "2" * 64


@pytest.fixture(scope="module")
def aws(moto: MotoServer) -> dict[str, str]:
    env = {**moto.aws_env(), "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY}
    ensure_bucket(env, BUCKET)
    return env


def docker_env(aws: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir, state = fake_docker(tmp_path)
    env = helper_env(aws, tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_DOCKER_STATE"] = str(state)
    return env, state


def docker_calls(state: Path) -> list[str]:
    calls = state / "calls.jsonl"
    if not calls.exists():
        return []
    return [json.loads(line)["argv"][0] for line in calls.read_text().splitlines()]


def bundle(aws: dict[str, str], project: Project, **changes: Any) -> dict[str, Any]:
    """The bundle the program writes for the project (stack e2e), with ``changes``."""
    made = bundle_for(project, STACK, BUCKET, server_role(aws))
    made.update(changes)
    return made


def plant_secret(aws: dict[str, str], name: str, value: dict[str, Any]) -> str:
    """A secret of any name, tagged as the stack tags a project's."""
    client = aws_client("secretsmanager", aws)
    tags = [{"Key": "mlflow-aws:project", "Value": value["Project"]},
            {"Key": "mlflow-aws:stack", "Value": value["Stack"]}]  # fmt: skip
    return str(client.create_secret(Name=name, SecretString=json.dumps(value), Tags=tags)["ARN"])


def serve(project: Project, env: dict[str, str], mariadb: MariaDB, *source: str) -> Any:
    argv = ["serve", "--project", project.name, *(source or ("--from-aws",))]
    argv += ["--port", str(free_port()), "--db-ca", str(mariadb.ca_path)]
    return run_helper(argv, env, timeout=90)


ATTACKS = {
    "registry": (
        {"ImageUri": ATTACKER_IMAGE},
        f"ImageUri '{ATTACKER_IMAGE}' is not in the stack's repository "
        f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlflow-aws/e2e/server",
    ),
    "role of another account": (
        {"ServerRoleArn": "arn:aws:iam::999999999999:role/mlflow-aws-collector"},
        "ServerRoleArn 'arn:aws:iam::999999999999:role/mlflow-aws-collector' is not a role of "
        f"account {ACCOUNT}",
    ),
    "bucket not the stack's": (
        {"ArtifactRoot": "s3://collector-bucket/{project}"},
        "ArtifactRoot 's3://collector-bucket/{project}' is not the project's prefix in the "
        "stack's bucket (s3://mlflow-aws-e2e-<suffix>/{project})",
    ),
    "another stack's image": (
        {"ImageUri": PROD_IMAGE},
        "is not in the stack's repository",
    ),
    "another region": (
        {"Region": "us-east-1"},
        "Region is 'us-east-1', not the secret's eu-west-1",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_bundle_naming_what_is_not_the_stacks_is_refused_before_docker(
    attack: str, mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    name = "plant-" + "".join(c for c in attack if c.isalpha())[:12]
    project = create_project(mariadb, name)
    changes, message = ATTACKS[attack]
    changes = {k: v.format(project=project.name) for k, v in changes.items()}
    put_connection_secret(aws, bundle(aws, project, **changes))
    env, state = docker_env(aws, tmp_path)
    result = serve(project, env, mariadb)
    assert result.returncode == 1, result.stderr[-3000:]
    assert message.format(project=project.name) in result.stderr
    assert f"connection secret mlflow-aws/{STACK}/{project.name} does not describe" in (
        result.stderr
    )
    assert "no docker login" in result.stderr and "Traceback" not in result.stderr
    assert docker_calls(state) == []  # no login (no ECR token anywhere), no pull, no run


def test_a_secret_named_otherwise_is_never_read(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "plant-named")
    planted = plant_secret(aws, f"collector/{project.name}", bundle(aws, project))
    env, state = docker_env(aws, tmp_path)

    found = serve(project, env, mariadb)  # tagged for the project, but not its name
    assert found.returncode == 1
    assert f"no connection secret tagged mlflow-aws:project={project.name} and named " in (
        found.stderr
    )
    listed = run_helper(["projects", "--from-aws"], env)
    assert f"collector/{project.name}" not in listed.stdout

    named = serve(project, env, mariadb, "--from-aws", "--secret-id", f"collector/{project.name}")
    assert named.returncode == 1
    assert f"secret 'collector/{project.name}' is not the connection secret of project" in (
        named.stderr
    )
    assert f"named mlflow-aws/<stack>/{project.name}" in named.stderr

    outputs = write_outputs(tmp_path / "outputs.json", BUCKET, {project.name: planted})
    from_file = serve(project, env, mariadb, "--outputs", str(outputs))
    assert from_file.returncode == 1
    assert "is not the connection secret of project" in from_file.stderr
    assert docker_calls(state) == []


def test_an_outputs_file_that_disagrees_with_its_secret_is_refused(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "plant-outputs")
    arn = put_connection_secret(aws, bundle(aws, project))
    env, state = docker_env(aws, tmp_path)
    path = write_outputs(tmp_path / "outputs.json", BUCKET, {project.name: arn})
    outputs = json.loads(path.read_text())
    outputs["Projects"][project.name]["ServerRoleArn"] = "arn:aws:iam::999999999999:role/x"
    path.write_text(json.dumps(outputs))
    result = serve(project, env, mariadb, "--outputs", str(path))
    assert result.returncode == 1
    assert f"Projects.{project.name}.ServerRoleArn is 'arn:aws:iam::999999999999:role/x'" in (
        result.stderr
    )
    outputs["Region"] = "us-east-1"  # the secret ARN it names is in eu-west-1
    path.write_text(json.dumps(outputs))
    result = serve(project, env, mariadb, "--outputs", str(path))
    assert result.returncode == 1
    assert "is in eu-west-1, but the outputs' Region is us-east-1" in result.stderr
    assert docker_calls(state) == []


def test_the_secret_first_used_is_remembered_and_a_replacement_refused(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "plant-pinned")
    real = put_connection_secret(aws, bundle(aws, project))
    env = helper_env(aws, tmp_path)
    command = ["command", "--project", project.name, "--from-aws"]
    first = run_helper(command, env)
    assert first.returncode == 0, first.stderr
    pins = Path(env["XDG_STATE_HOME"]) / "mlflow-aws" / "connection-secrets.json"
    assert json.loads(pins.read_text())[f"{ACCOUNT}/{REGION}/{project.name}"]["arn"] == real
    assert oct(pins.stat().st_mode & 0o777) == "0o600"
    assert oct(pins.parent.stat().st_mode & 0o777) == "0o700"

    # A well-formed look-alike of another "stack", with a bundle that passes every check of
    # its own (its stack's bucket prefix, image and role): the remembered secret still wins.
    lookalike_stack = "e2e-x"
    lookalike = bundle_for(project, lookalike_stack, "mlflow-aws-e2e-x-data", server_role(aws))
    planted = plant_secret(aws, f"mlflow-aws/{lookalike_stack}/{project.name}", lookalike)
    again = run_helper(command, env)
    assert again.returncode == 0, again.stderr
    assert f"using mlflow-aws/{STACK}/{project.name}, the one you used before" in again.stderr
    assert "/mlflow-aws/e2e/server@sha256:" in again.stdout

    # The real one gone (or never there for this user): the look-alike is refused, not used.
    aws_client("secretsmanager", aws).delete_secret(SecretId=real, ForceDeleteWithoutRecovery=True)
    replaced = run_helper(command, env)
    assert replaced.returncode == 1
    assert f"the connection secret of project {project.name} has changed: you used {real}" in (
        replaced.stderr
    )
    assert "confirm with --secret-id" in replaced.stderr and "planted" in replaced.stderr

    # Naming it is the user's confirmation: used, said, remembered.
    confirmed = run_helper([*command, "--secret-id", planted], env)
    assert confirmed.returncode == 0, confirmed.stderr
    assert f"is now {planted} (you used {real}" in confirmed.stderr
    assert run_helper(command, env).returncode == 0
