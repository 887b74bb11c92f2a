"""Where a project's connection comes from, validated into typed objects.

Three sources, one result (``ProjectConnection``):

* ``--outputs FILE``: the JSON of ``pulumi stack output --json --show-secrets``;
* ``--stack S``: the same object through Pulumi's Automation API (needs the pulumi CLI);
* ``--from-aws``: the project's connection secret in Secrets Manager (AWS credentials only).

Validation errors name the field by its path (``Projects.churn.DatabasePort``) and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HelperError
from .server_settings import REPO_ROOT

# What ``pulumi stack output --json`` prints for a secret unless --show-secrets is given.
SECRET_PLACEHOLDER = "[secret]"  # noqa: S105 (a placeholder, not a password)
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
    # The project on the stack's central server (https://<domain>/<project>); None without one.
    tracking_uri: str | None = None

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Values that must never appear in argv or output."""
        return (self.password, self.backend_store_uri)


@dataclass(frozen=True)
class ProjectOutputs:
    name: str
    database: str
    username: str
    password: str = field(repr=False)
    backend_store_uri: str = field(repr=False)
    artifact_root: str
    connection_secret_arn: str
    policy_arn: str
    tracking_uri: str | None = None


@dataclass(frozen=True)
class StackOutputs:
    """The stack outputs of DESIGN.md the helper needs, typed. The admin credentials
    (DatabaseUsername/Password/Url) are deliberately not read: a file shared with teammates
    should not carry them (see README, "Teammate flow")."""

    artifact_root: str
    database_endpoint: str
    database_port: int
    image_uri: str
    region: str
    mlflow_version: str
    projects: Mapping[str, ProjectOutputs]

    def connection(self, project: str) -> ProjectConnection:
        found = self.projects.get(project)
        if found is None:
            raise unknown_project(project, sorted(self.projects))
        return ProjectConnection(
            project=project,
            database=found.database,
            backend_store_uri=found.backend_store_uri,
            password=found.password,
            artifact_root=found.artifact_root,
            database_endpoint=self.database_endpoint,
            database_port=self.database_port,
            region=self.region,
            image_uri=self.image_uri,
            mlflow_version=self.mlflow_version,
            tracking_uri=found.tracking_uri,
        )


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
        if value == SECRET_PLACEHOLDER:
            raise OutputsError(
                f"{self.source}: {self._where(key)} is {SECRET_PLACEHOLDER!r}: the outputs were "
                "saved without --show-secrets. Save them again with "
                "`pulumi stack output --json --show-secrets > FILE` (keep FILE private), "
                "or use --stack or --from-aws"
            )
        if not isinstance(value, str) or not value:
            raise OutputsError(
                f"{self.source}: {self._where(key)} must be a non-empty string, got {_kind(value)}"
            )
        return value

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
            database=one.string("Database"),
            username=one.string("Username"),
            password=one.string("Password"),
            backend_store_uri=one.string("BackendStoreUri"),
            artifact_root=one.string("ArtifactRoot"),
            connection_secret_arn=one.string("ConnectionSecretArn"),
            policy_arn=one.string("PolicyArn"),
            tracking_uri=one.optional_url("TrackingUri"),
        )
    return StackOutputs(
        artifact_root=top.string("ArtifactRoot"),
        database_endpoint=top.string("DatabaseEndpoint"),
        database_port=top.port("DatabasePort"),
        image_uri=top.string("ImageUri"),
        region=top.string("Region"),
        mlflow_version=top.string("MlflowVersion"),
        projects=projects,
    )


def parse_connection_bundle(data: object, source: str) -> ProjectConnection:
    """Validate a project's connection secret (its SecretString, decoded) into a connection."""
    bundle = _Fields(data, "", source)
    return ProjectConnection(
        project=bundle.string("Project"),
        database=bundle.string("Database"),
        backend_store_uri=bundle.string("BackendStoreUri"),
        password=bundle.string("Password"),
        artifact_root=bundle.string("ArtifactRoot"),
        database_endpoint=bundle.string("DatabaseEndpoint"),
        database_port=bundle.port("DatabasePort"),
        region=bundle.string("Region"),
        image_uri=bundle.string("ImageUri"),
        mlflow_version=bundle.string("MlflowVersion"),
        tracking_uri=bundle.optional_url("TrackingUri"),
    )


# -- sources ----------------------------------------------------------------------------------


def load_outputs_file(path: Path) -> StackOutputs:
    source = f"outputs file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OutputsError(
            f"{source} does not exist; create it with "
            f"`pulumi stack output --json --show-secrets > {path}`"
        ) from None
    except OSError as exc:
        raise OutputsError(f"cannot read {source}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputsError(
            f"{source} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "it must be the output of `pulumi stack output --json --show-secrets`"
        ) from None
    return parse_stack_outputs(data, source)


def pulumi_project_dir() -> Path:
    """The Pulumi project: this repository, or (helper installed with pip) the current directory."""
    return REPO_ROOT if (REPO_ROOT / "Pulumi.yaml").is_file() else Path.cwd()


def load_stack_outputs(stack: str, work_dir: Path | None = None) -> StackOutputs:
    """The outputs of stack ``stack`` through Pulumi's Automation API (runs the pulumi CLI)."""
    import shutil

    if shutil.which("pulumi") is None:
        raise OutputsError(
            "the pulumi CLI is not installed (needed by --stack). Install it "
            "(https://www.pulumi.com/docs/install/), or use --outputs FILE with a file saved by "
            "someone who has it, or --from-aws with your AWS credentials"
        )
    try:
        from pulumi import automation
    except ImportError:
        raise OutputsError(
            "--stack needs the pulumi Python package (the repository's .venv has it); "
            "here use --outputs FILE or --from-aws"
        ) from None

    source = f"stack {stack!r}"
    try:
        # `stack output --stack S`: unlike select_stack, this does not change the user's
        # current stack (a later plain `pulumi up` must not land on the stack read here).
        workspace = automation.LocalWorkspace(work_dir=str(work_dir or pulumi_project_dir()))
        outputs = workspace.stack_outputs(stack)
    except automation.CommandError as exc:
        # str(exc) is "code: … stdout: … stderr: …"; only stderr explains (stdout may hold values).
        stderr = str(exc).rpartition("stderr:")[2].strip().splitlines()
        raise OutputsError(
            f"cannot read the outputs of {source}: {stderr[-1] if stderr else 'pulumi failed'}. "
            "Check `pulumi login` and the stack name (`pulumi stack ls`)"
        ) from None
    return parse_stack_outputs({key: out.value for key, out in outputs.items()}, source)
