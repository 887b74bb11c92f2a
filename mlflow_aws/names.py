"""The project-name rule: one definition, used by stack config validation, by the MySQL schema
provider's ``check`` and by the helper.

A project name becomes a MySQL schema, a MySQL user, an S3 prefix, and parts of IAM and
Secrets Manager names, so it is restricted to what is safe and unambiguous in all of them, and
no name may map onto an account or schema that the stack or the database engine owns: project
``admin`` would otherwise be the cluster's master user ``mlflow_admin``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# MySQL 8 user names are at most 32 characters; the user is ``mlflow_<schema>``.
MAX_NAME_LENGTH = 24
USER_PREFIX = "mlflow_"

# What the stack owns on the cluster: its master user (infra/database.py creates it) and the
# schema where the schema provider records the accounts and schemas it manages.
MASTER_USERNAME = "mlflow_admin"
REGISTRY_SCHEMA = "mlflow_aws"
STACK_ACCOUNTS = frozenset({MASTER_USERNAME})
STACK_SCHEMAS = frozenset({REGISTRY_SCHEMA})

# What the engines own (MySQL 8, Aurora MySQL 3, MariaDB): accounts such as root, rdsadmin,
# rdsrepladmin, rdsproxyadmin, rds_superuser_role, mysql.sys, mysql.session, mysql.infoschema,
# mariadb.sys, and schemas such as mysql, sys, information_schema, performance_schema. A project
# user always starts with mlflow_, so only the schemas can meet these; the prefixes cover the
# families (rds*, mysql*, ...) documented and undocumented.
ENGINE_ACCOUNTS = frozenset(
    {"root", "rdsadmin", "rdsrepladmin", "rdsproxyadmin", "rds_superuser_role", "mysql.sys",
     "mysql.session", "mysql.infoschema", "mariadb.sys", "public"}
)  # fmt: skip
# (mysql, information_schema, performance_schema and rdsadmin are in the families below: a
# second entry for them would be a rule no test could tell apart.)
ENGINE_SCHEMAS = frozenset({"sys", "innodb", "tmp"})
ENGINE_PREFIXES = ("rds", "mysql", "mariadb", "performance_schema", "information_schema")

# The project-name slug, for every pattern that holds a project name (the helper's checks of
# secret names and artifact roots); ``name_problem`` adds the length and the reserved names.
PROJECT_NAME_PATTERN = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"
_SLUG = re.compile(PROJECT_NAME_PATTERN)

# Names that would confuse people. (The server's own schemas, mysql, sys, information_schema...,
# are refused above as the engine's, with the reason.)
RESERVED_NAMES = frozenset({"test", "aws", "mlflow"})

RULE = (
    "a project name is a lowercase ASCII slug: letters a-z, digits 0-9 and single hyphens, "
    f"starting with a letter, not ending with a hyphen, at most {MAX_NAME_LENGTH} characters"
)


class ProjectNameError(ValueError):
    """A project name that breaks the rule; the message names the value and the rule."""


@dataclass(frozen=True)
class ProjectIdentifiers:
    """Everything derived from one valid project name."""

    name: str
    schema: str  # MySQL schema (database) name
    username: str  # MySQL user name, <= 32 characters
    s3_prefix: str  # key prefix inside the artifact bucket, no slashes


def collision_key(raw: str) -> str:
    """The form two names are compared in: case, separators and surrounding space ignored."""
    return re.sub(r"[-_.\s]+", "-", raw.lower()).strip("-")


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid project name, or None when it is."""
    if not isinstance(name, str):
        return f"project name {name!r} must be a string; {RULE}"
    shown = repr(name)
    if name == "":
        return f"project name is empty; {RULE}"
    if not name.isascii():
        return f"project name {shown} contains non-ASCII characters; {RULE}"
    if len(name) > MAX_NAME_LENGTH:
        return (
            f"project name {shown} is {len(name)} characters, longer than {MAX_NAME_LENGTH} "
            f"(its MySQL user {USER_PREFIX}<name> must fit MySQL's 32); {RULE}"
        )
    if name != name.lower() and _SLUG.fullmatch(name.lower()):
        return f"project name {shown} must be lowercase (did you mean {name.lower()!r}?); {RULE}"
    if not _SLUG.fullmatch(name):
        return f"project name {shown} is not a valid slug; {RULE}"
    schema = name.replace("-", "_")
    owner = owned_by(schema, USER_PREFIX + schema)
    if owner is not None:
        return f"project name {shown} is reserved: {owner}; choose another name"
    if name in RESERVED_NAMES:  # a slug has no "_": its schema is reserved exactly when it is
        return (
            f"project name {shown} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))}); "
            "choose another name"
        )
    return None


def owned_by(schema: str, username: str) -> str | None:
    """Who owns ``schema`` or ``username`` if not a project (a sentence), or None."""
    if username in STACK_ACCOUNTS:
        return f"its MySQL user {username} is the cluster's master user, owned by the stack"
    if schema in STACK_SCHEMAS:
        return f"its schema {schema} is the stack's own (the provider's registry)"
    if username.lower() in ENGINE_ACCOUNTS or schema in ENGINE_ACCOUNTS:
        return f"its MySQL user or schema ({username}, {schema}) is an account of the engine"
    if schema in ENGINE_SCHEMAS or schema.startswith(ENGINE_PREFIXES):
        return f"its schema {schema} belongs to the database engine (mysql*, rds*, sys, ...)"
    return None


def validate_name(name: object) -> ProjectIdentifiers:
    """Return the identifiers for a valid name, or raise ``ProjectNameError``."""
    problem = name_problem(name)
    if problem is not None:
        raise ProjectNameError(problem)
    assert isinstance(name, str)
    schema = name.replace("-", "_")
    return ProjectIdentifiers(
        name=name, schema=schema, username=USER_PREFIX + schema, s3_prefix=name
    )


def collisions(names: list[str]) -> list[str]:
    """Messages for names that are duplicates or collide once case and separators are ignored."""
    seen: dict[str, str] = {}
    problems = []
    for name in names:
        key = collision_key(name)
        if key in seen:
            first = seen[key]
            what = "is listed twice" if first == name else f"collides with {first!r}"
            problems.append(
                f"project name {name!r} {what} (names must stay distinct ignoring case and "
                "separators, because each becomes a MySQL schema and an S3 prefix)"
            )
        else:
            seen[key] = name
    return problems


# -- what a stack names in AWS: one rule for the program and the helper's checks of a bundle --

# S3 allows 63 characters and the provider appends a 26-character unique suffix.
_MAX_BUCKET_PREFIX = 37


# Pulumi stack names: letters, digits, hyphens, underscores and periods.
STACK_NAME_PATTERN = r"[A-Za-z0-9._-]{1,100}"


def _slug(text: str, keep: str = "") -> str:
    """THE slug rule: ``text`` lowercased, each run of characters other than a-z, 0-9 (and
    ``keep``) one hyphen, none at either end; ``stack`` when nothing is left."""
    return re.sub(f"[^a-z0-9{re.escape(keep)}]+", "-", text.lower()).strip("-") or "stack"


def stack_slug(stack: str) -> str:
    """The stack's name in AWS names: lowercase letters and digits, single hyphens."""
    return _slug(stack)


def bucket_prefix(stack: str) -> str:
    """A valid S3 bucket-name prefix that names the stack (stack names allow more than S3)."""
    # The bucket's slug keeps a stack name's own hyphens (``a--b``, ``a-.b`` -> ``a--b``): the
    # name was fixed so before stack_slug, and a bucket cannot be renamed, only replaced.
    slug = _slug(stack, keep="-")
    return f"mlflow-aws-{slug}"[: _MAX_BUCKET_PREFIX - 1].rstrip("-") + "-"


def server_repository_name(stack: str) -> str:
    """The stack's ECR repository of the server image."""
    return f"mlflow-aws/{stack_slug(stack)}/server"


def connection_secret_name(stack: str, project: str) -> str:
    """The Secrets Manager name of a project's connection secret (projects/project.py)."""
    return f"mlflow-aws/{stack}/{project}"


# What ``connection_secret_name`` makes, as the helper recognises it (fullmatch; in an ARN, the
# name is followed by Secrets Manager's -<6 characters>).
CONNECTION_SECRET_NAME = re.compile(
    rf"mlflow-aws/(?P<stack>{STACK_NAME_PATTERN})/(?P<project>{PROJECT_NAME_PATTERN})"
)
