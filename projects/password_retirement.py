"""The second half of a project password rotation, as a Pulumi dynamic resource.

Bumping a project's ``passwordVersion`` makes a new password. ``MysqlSchema`` (with
``retain_previous_password``) sets it while keeping the previous one valid (MySQL's dual
passwords; on MariaDB two authentication methods joined by OR), the connection secret gets the
new bundle, and the central tasks roll: their task definition names the secret's version, so a
new version is a new deployment, whose tasks start with the new password while the old tasks
keep serving with the old one until the new are healthy. ``MysqlPasswordRetirement`` (type
``pulumi-python:dynamic/mysql:PasswordRetirement``) comes after all that (it depends on the
project's ECS service, or on the secret version without the central server) and leaves only the
new password valid. Teammates' laptop servers started before the rotation lose their next new
connection then: restart ``helper serve`` (it reads the new secret).

STABLE CONTRACT, as for projects/schema_provider.py: never rename or move the provider class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from projects.schema_provider import _plain, _secret, _Target
from projects.schema_sql import ENGINE_QUERY, engine_of, retire_previous_password

PROVIDER_MODULE = "projects.password_retirement"
PROVIDER_CLASS = "MysqlPasswordRetirementProvider"
INPUT_KEYS = (
    "project",
    "password",
    "cluster_arn",
    "admin_secret_arn",
    "resume_wait_seconds",
    "aws_profile",
    "assume_roles",
)


def _retire(props: dict[str, Any]) -> dict[str, Any]:
    t = _Target.from_props(props)
    executor = t.executor()
    [(version,)] = executor.run(ENGINE_QUERY)
    executor.run(retire_previous_password(t.ids.username, t.password, engine_of(str(version))))
    return {**props, "password": _secret(t.password)}


class MysqlPasswordRetirementProvider(ResourceProvider):
    """Create and update: only the current password stays valid. Delete: nothing."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in INPUT_KEYS if _plain(olds.get(k)) != _plain(news.get(k))]
        return DiffResult(changes=bool(changed), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{_plain(props['project'])}-password", _retire(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if _plain(olds.get("password")) == _plain(news.get("password")):
            return UpdateResult({**news, "password": _secret(news.get("password"))})
        return UpdateResult(_retire(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # the user belongs to MysqlSchema


@dataclass
class MysqlPasswordRetirementArgs:
    project: str
    password: pulumi.Input[str]  # the project's current password (a secret)
    cluster_arn: pulumi.Input[str]
    admin_secret_arn: pulumi.Input[str]
    aws_profile: str | None = None
    assume_roles: list[dict[str, Any]] | None = None


class MysqlPasswordRetirement(pulumi.dynamic.Resource, module="mysql", name="PasswordRetirement"):
    """Leaves only the project's current password valid (``...mysql:PasswordRetirement``)."""

    def __init__(
        self,
        resource_name: str,
        args: MysqlPasswordRetirementArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project": args.project,
            "password": pulumi.Output.secret(args.password),
            "cluster_arn": args.cluster_arn,
            "admin_secret_arn": args.admin_secret_arn,
            "resume_wait_seconds": 90.0,
            "aws_profile": args.aws_profile,
            "assume_roles": args.assume_roles or [],
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["password"])
        )
        super().__init__(MysqlPasswordRetirementProvider(), resource_name, props, opts)
