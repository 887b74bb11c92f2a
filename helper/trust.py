"""What the helper believes of a connection bundle, and why: every name in it is checked against
the secret it came from, before Docker, AWS or the database is asked anything with it.

Anyone who may create a secret in the account could plant one tagged ``mlflow-aws:project``;
without these checks the helper would log in to the registry its ``ImageUri`` names (handing
over the user's ECR token), run that image with the project role's credentials, and trust its
``ServerRoleArn``, ``ArtifactRoot`` and ``TrackingUri``. So:

* only secrets named ``mlflow-aws/<stack>/<project>`` (projects/project.py) are read; their
  ARN, as AWS returns it, gives the partition, region, account and stack;
* every ARN, bucket, image and URL of the bundle (and of an outputs file) must belong to that
  account, region and stack (``check_bundle``, ``check_outputs_entry``), and ``docker login``
  goes only to ``<account>.dkr.ecr.<region>.<suffix>`` of the secret's own ARN;
* the secret a user first reads for a project is remembered (``SecretPins``); a different one
  found later is refused until the user names it with ``--secret-id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from mlflow_aws.names import (
    CONNECTION_SECRET_NAME,
    bucket_prefix,
    connection_secret_name,
    server_repository_name,
)

from . import private
from .outputs import OutputsError, ProjectConnection, ProjectOutputs

# The DNS suffix of each partition's service endpoints (ECR registries, S3).
PARTITION_DNS_SUFFIX = {"aws": "amazonaws.com", "aws-us-gov": "amazonaws.com",
                        "aws-cn": "amazonaws.com.cn"}  # fmt: skip
_SECRET_ARN = re.compile(
    r"arn:(?P<partition>aws(?:-[a-z]+)*):secretsmanager:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):"
    r"(?P<account>\d{12}):secret:(?P<name>[A-Za-z0-9/_+=.@-]+)-[A-Za-z0-9]{6}"
)
_ROLE_ARN = re.compile(r"arn:(?P<partition>[a-z-]+):iam::(?P<account>\d{12}):role/(?P<name>.+)")
_ROLE_NAME = re.compile(r"[\w+=,.@-]{1,64}")
_IMAGE = re.compile(r"(?P<registry>[^/@]+)/(?P<repository>[a-z0-9._/-]+)@sha256:[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class SecretIdentity:
    """Where a connection secret lives, from its ARN (as AWS returned it) and its name."""

    arn: str
    partition: str
    region: str
    account: str
    stack: str
    project: str

    @property
    def ecr_registry(self) -> str:
        """The only registry the helper logs in to: the secret's own account and region."""
        return f"{self.account}.dkr.ecr.{self.region}.{PARTITION_DNS_SUFFIX[self.partition]}"


def is_connection_secret_name(name: str, project: str | None = None) -> bool:
    match = CONNECTION_SECRET_NAME.fullmatch(name)
    return match is not None and (project is None or match["project"] == project)


def secret_identity(arn: str, project: str, source: str) -> SecretIdentity:
    """The identity of the secret ``arn`` for ``project``, or an error saying which rule the
    ARN breaks (a secret named otherwise is not a project's connection secret)."""
    match = _SECRET_ARN.fullmatch(arn)
    if match is None:
        raise OutputsError(f"{source}: {arn!r} is not the ARN of a Secrets Manager secret")
    if match["partition"] not in PARTITION_DNS_SUFFIX:
        raise OutputsError(
            f"{source}: partition {match['partition']} of {arn} is not one the helper knows "
            f"({', '.join(sorted(PARTITION_DNS_SUFFIX))})"
        )
    name = CONNECTION_SECRET_NAME.fullmatch(match["name"])
    if name is None or name["project"] != project:
        raise OutputsError(
            f"{source}: secret {match['name']!r} is not the connection secret of project "
            f"{project}: those are named {connection_secret_name('<stack>', project)} "
            "(the stack writes no other), so the helper does not read it. If someone made it "
            "to look like one, tell the platform engineer"
        )
    return SecretIdentity(
        arn, match["partition"], match["region"], match["account"], name["stack"], project
    )


def _problems(connection: ProjectConnection, who: SecretIdentity) -> list[str]:
    problems = []
    if connection.project != who.project:
        problems.append(f"Project is {connection.project!r}, not {who.project!r}")
    if connection.stack != who.stack:
        problems.append(f"Stack is {connection.stack!r}, not the secret's stack {who.stack!r}")
    if connection.region != who.region:
        problems.append(f"Region is {connection.region!r}, not the secret's {who.region}")

    image = _IMAGE.fullmatch(connection.image_uri)
    repository = server_repository_name(who.stack)
    if image is None:
        problems.append(
            f"ImageUri {connection.image_uri!r} is not an image pinned by digest "
            "(<registry>/<repository>@sha256:<64 hex>)"
        )
    elif image["registry"] != who.ecr_registry or image["repository"] != repository:
        problems.append(
            f"ImageUri {connection.image_uri!r} is not in the stack's repository "
            f"{who.ecr_registry}/{repository}"
        )

    if connection.server_role_arn is not None:
        role = _ROLE_ARN.fullmatch(connection.server_role_arn)
        if (
            role is None
            or role["partition"] != who.partition
            or role["account"] != who.account
            or not _ROLE_NAME.fullmatch(role["name"])
        ):
            problems.append(
                f"ServerRoleArn {connection.server_role_arn!r} is not a role of account "
                f"{who.account} (arn:{who.partition}:iam::{who.account}:role/<name>)"
            )

    root = connection.artifact_root
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    wanted = bucket_prefix(who.stack)
    if (
        not root.startswith("s3://")
        or prefix != who.project
        or not _BUCKET.fullmatch(bucket)
        or not bucket.startswith(wanted)
    ):
        problems.append(
            f"ArtifactRoot {root!r} is not the project's prefix in the stack's bucket "
            f"(s3://{wanted}<suffix>/{who.project})"
        )

    if connection.tracking_uri is not None:
        url = urlsplit(connection.tracking_uri)
        # http only to this machine (a server the user runs here), as the plugin allows.
        loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
        if (
            (url.scheme != "https" and not (url.scheme == "http" and loopback))
            or not url.hostname
            or url.username is not None
            or url.password is not None
            or url.path.rstrip("/") != f"/{who.project}"
            or url.query
            or url.fragment
        ):
            problems.append(
                f"TrackingUri {connection.tracking_uri!r} is not https://<domain>/{who.project}"
                " (http only on loopback)"
            )
    return problems


def check_bundle(connection: ProjectConnection, who: SecretIdentity, source: str) -> None:
    """Refuse a bundle any of whose names is not the secret's account, region and stack."""
    problems = _problems(connection, who)
    if problems:
        raise OutputsError(
            f"{source} does not describe project {who.project} of stack {who.stack} in account "
            f"{who.account} ({who.region}): " + "; ".join(problems) + ". The helper uses none "
            "of it (no docker login, no image, no role): tell the platform engineer, the secret "
            "may have been altered"
        )


def check_outputs_entry(
    outputs_region: str, entry: ProjectOutputs, connection: ProjectConnection, source: str
) -> None:
    """An outputs file's entry for the project must say what the secret's bundle says."""
    problems = []
    if outputs_region != connection.region:
        problems.append(f"Region is {outputs_region!r}, the bundle's {connection.region!r}")
    fields = (
        ("ArtifactRoot", entry.artifact_root, connection.artifact_root),
        ("ServerRoleArn", entry.server_role_arn, connection.server_role_arn),
        ("TrackingUri", entry.tracking_uri, connection.tracking_uri),
    )
    for key, theirs, bundle in fields:
        if theirs is not None and theirs != bundle:
            problems.append(f"Projects.{entry.name}.{key} is {theirs!r}, the bundle's {bundle!r}")
    if problems:
        raise OutputsError(
            f"{source} does not match the connection secret it names: "
            + "; ".join(problems)
            + ". Save the outputs again (`pulumi stack output --json > FILE`)"
        )


# -- the secret remembered per project --------------------------------------------------------


def state_directory(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mlflow-aws"


@dataclass(frozen=True)
class Pin:
    arn: str
    since: str  # when it was first used (UTC)


class SecretPins:
    """The connection secret this user read first for each (account, region, project), in a
    private file (0600 in a 0700 directory of theirs), so a secret that appears later in its
    place is noticed."""

    FILE = "connection-secrets.json"

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.FILE

    @staticmethod
    def key(account: str, region: str, project: str) -> str:
        return f"{account}/{region}/{project}"

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise OutputsError(
                f"cannot read {self.path}, where the helper remembers the projects' connection "
                f"secrets ({exc.strerror}; a symbolic link is refused)"
            ) from None
        with os.fdopen(fd, encoding="utf-8") as handle:
            problem = private.problem(os.fstat(handle.fileno()), directory=False)
            if problem is not None:
                raise OutputsError(
                    f"{self.path} is not a private file of yours (it {problem}): remove it, "
                    "the helper makes a new one"
                )
            try:
                data = json.load(handle)
            except ValueError:
                return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Pin | None:
        entry = self._read().get(key)
        if isinstance(entry, dict) and isinstance(entry.get("arn"), str):
            return Pin(entry["arn"], str(entry.get("since", "?")))
        return None

    def put(self, key: str, arn: str) -> None:
        data = self._read()
        data[key] = {"arn": arn, "since": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")}
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=private.PRIVATE_DIRECTORY_MODE)
            problem = private.problem(directory.lstat(), directory=True)
            if problem is not None:
                raise OutputsError(
                    f"{directory} is not a private directory of yours (it {problem}; it must be "
                    "yours, mode 0700, not a symbolic link); set XDG_STATE_HOME to one that is"
                )
            temporary = directory / f".{self.FILE}.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                private.PRIVATE_FILE_MODE,
            )
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(temporary, self.path)
        except OSError as exc:
            raise OutputsError(
                f"cannot remember the connection secret in {self.path} ({exc.strerror}); set "
                "XDG_STATE_HOME to a directory of yours"
            ) from None


def pins(environ: Mapping[str, str] = os.environ) -> SecretPins:
    return SecretPins(state_directory(environ))
