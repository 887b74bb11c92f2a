"""Where a project's connection comes from, validated into typed objects.

Whatever the source, the connection itself (``ProjectConnection``, with the project's
password) is the project's connection secret in Secrets Manager, read with the teammate's own
AWS credentials (helper/aws.py). The sources only say where that secret is:

* ``--outputs FILE``: the JSON of ``pulumi stack output --json`` (no ``--show-secrets``
  needed: the file carries no password, so sharing it hands out none);
* ``--stack S``: the same, read with the pulumi CLI (it decrypts nothing);
* ``--from-aws`` (default): the secret found by its ``mlflow-aws:project`` tag.

Validation errors name the field by its path (``Projects.churn.ConnectionSecretArn``) and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_aws.bundle import KEY

from .errors import HelperError
from .server_settings import REPO_ROOT

PROJECT_TAG_KEY = "mlflow-aws:project"


class OutputsError(HelperError):
    """Outputs or a connection bundle that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ProjectConnection:
    """What serving and upgrading one project needs, whatever the source."""

    project: str
    database: str
    backend_store_uri: str = field(repr=False)  # holds the project user's password
    password: str = field(repr=False)
    artifact_root: str  # s3://<bucket>/<project>
    database_endpoint: str
    database_port: int
    region: str
    image_uri: str
    mlflow_version: str
    # PEM of the CAs that sign the database's certificate; None in bundles of older stacks.
    database_ca_bundle: str | None = field(default=None, repr=False)
    server_role_arn: str | None = None  # the role the project's server runs as
    stack: str | None = None
    # https://<domain>/<project> when the stack runs the central server, else None.
    tracking_uri: str | None = None
    # The ARN of the secret the bundle was read from, as AWS returned it (helper/trust.py:
    # the only registry docker logs in to is this ARN's account and region).
    secret_arn: str | None = None


@dataclass(frozen=True)
class ProjectOutputs:
    name: str
    artifact_root: str
    connection_secret_arn: str
    # In the outputs of current stacks; checked against the secret's bundle when present.
    server_role_arn: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class StackOutputs:
    """What the helper reads of the stack outputs: where each project's connection secret is.
    No password is read (nor needed) from them."""

    region: str
    projects: Mapping[str, ProjectOutputs]

    def project(self, name: str) -> ProjectOutputs:
        found = self.projects.get(name)
        if found is None:
            raise unknown_project(name, sorted(self.projects))
        return found


def unknown_project(project: str, known: list[str]) -> OutputsError:
    listed = ", ".join(known) if known else "none"
    return OutputsError(
        f"unknown project {project!r}; the stack has: {listed}. "
        "Pick one of those, or ask the platform engineer to add it to the stack's "
        "`projects` config."
    )


# -- validation -------------------------------------------------------------------------------


class _Fields:
    """Reads required, typed fields out of one JSON object, naming each by its path."""

    def __init__(self, obj: object, path: str, source: str) -> None:
        if not isinstance(obj, dict):
            where = path or "the top level"
            raise OutputsError(f"{source}: {where} must be a JSON object, got {_kind(obj)}")
        self.obj: dict[str, Any] = obj
        self.path = path
        self.source = source

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> object:
        if key not in self.obj:
            raise OutputsError(f"{self.source}: missing field {self._where(key)}")
        return self.obj[key]

    def string(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise OutputsError(
                f"{self.source}: {self._where(key)} must be a non-empty string, got {_kind(value)}"
            )
        return value

    def optional_string(self, key: str) -> str | None:
        """A string field that older stacks do not have (absent or null: None)."""
        if self.obj.get(key) is None:
            return None
        return self.string(key)

    def port(self, key: str) -> int:
        value = self.raw(key)
        # Pulumi numbers may arrive as floats (3306.0) or strings; anything else is a mistake.
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and value.strip().isdigit()
        ):
            number = int(value)
        if number is None or not 1 <= number <= 65535:
            raise OutputsError(
                f"{self.source}: {self._where(key)} must be a TCP port (1-65535), got {value!r}"
            )
        return number

    def optional_url(self, key: str) -> str | None:
        """An http(s) URL, or None when the field is absent or null."""
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise OutputsError(
                f"{self.source}: {self._where(key)} must be an http(s) URL or null, got "
                f"{_kind(value)}"
            )
        return value

    def nested(self, key: str) -> _Fields:
        return _Fields(self.raw(key), self._where(key), self.source)


def _kind(value: object) -> str:
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return {
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def parse_stack_outputs(data: object, source: str) -> StackOutputs:
    """Validate the outputs object (already decoded from JSON) into ``StackOutputs``."""
    top = _Fields(data, "", source)
    projects_field = top.nested("Projects")
    projects = {}
    for name in projects_field.obj:
        one = projects_field.nested(name)
        projects[name] = ProjectOutputs(
            name=name,
            artifact_root=one.string("ArtifactRoot"),
            connection_secret_arn=one.string("ConnectionSecretArn"),
            server_role_arn=one.optional_string("ServerRoleArn"),
            tracking_uri=one.optional_url("TrackingUri"),
        )
    return StackOutputs(region=top.string("Region"), projects=projects)


def parse_connection_bundle(data: object, source: str) -> ProjectConnection:
    """Validate a project's connection secret (its SecretString, decoded) into a connection."""
    bundle = _Fields(data, "", source)
    return ProjectConnection(
        project=bundle.string(KEY["project"]),
        database=bundle.string(KEY["database"]),
        backend_store_uri=bundle.string(KEY["backend_store_uri"]),
        password=bundle.string(KEY["password"]),
        artifact_root=bundle.string(KEY["artifact_root"]),
        database_endpoint=bundle.string(KEY["database_endpoint"]),
        database_port=bundle.port(KEY["database_port"]),
        region=bundle.string(KEY["region"]),
        image_uri=bundle.string(KEY["image_uri"]),
        mlflow_version=bundle.string(KEY["mlflow_version"]),
        database_ca_bundle=bundle.optional_string(KEY["database_ca_bundle"]),
        server_role_arn=bundle.optional_string(KEY["server_role_arn"]),
        stack=bundle.optional_string(KEY["stack"]),
        tracking_uri=bundle.optional_url(KEY["tracking_uri"]),
    )


# -- sources ----------------------------------------------------------------------------------


def load_outputs_file(path: Path) -> StackOutputs:
    return parse_stack_outputs(read_outputs_file(path), f"outputs file {path}")


def read_outputs_file(path: Path) -> object:
    """The decoded JSON of an outputs file (not validated)."""
    source = f"outputs file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OutputsError(
            f"{source} does not exist; create it with `pulumi stack output --json > {path}`"
        ) from None
    except OSError as exc:
        raise OutputsError(f"cannot read {source}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputsError(
            f"{source} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "it must be the output of `pulumi stack output --json`"
        ) from None
    return data


def pulumi_project_dir() -> Path:
    """The Pulumi project: this repository, or (helper installed with pip) the current directory."""
    return REPO_ROOT if (REPO_ROOT / "Pulumi.yaml").is_file() else Path.cwd()


def load_stack_outputs(stack: str) -> StackOutputs:
    return parse_stack_outputs(read_stack_outputs(stack), f"stack {stack!r}")


def read_stack_outputs(stack: str) -> object:
    """The outputs of stack ``stack`` (decoded, not validated), read with the pulumi CLI.

    ``pulumi stack output --json --stack S``: it does not switch the user's current stack, and
    without ``--show-secrets`` it decrypts nothing (the admin outputs stay ``[secret]``; the
    helper needs none of them)."""
    import shutil
    import subprocess

    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise OutputsError(
            "the pulumi CLI is not installed (needed by --stack). Install it "
            "(https://www.pulumi.com/docs/install/), or use --outputs FILE with a file saved by "
            "someone who has it, or --from-aws with your AWS credentials"
        )
    source = f"stack {stack!r}"
    try:
        result = subprocess.run(
            [pulumi, "stack", "output", "--json", "--stack", stack, "--non-interactive"],
            cwd=pulumi_project_dir(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OutputsError(f"pulumi did not answer within 120 s reading {source}") from None
    if result.returncode != 0:
        stderr = result.stderr.strip().splitlines()
        raise OutputsError(
            f"cannot read the outputs of {source}: {stderr[-1] if stderr else 'pulumi failed'}. "
            "Check `pulumi login` and the stack name (`pulumi stack ls`)"
        )
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise OutputsError(f"pulumi printed no JSON for the outputs of {source}") from None
    return data
