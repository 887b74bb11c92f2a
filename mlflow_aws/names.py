"""The project-name rule: one definition, used by stack config validation and by the
MySQL schema provider's ``check``.

A project name becomes a MySQL schema, a MySQL user, an S3 prefix, and parts of IAM and
Secrets Manager names, so it is restricted to what is safe and unambiguous in all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# MySQL 8 user names are at most 32 characters; the user is ``mlflow_<schema>``.
MAX_NAME_LENGTH = 24
USER_PREFIX = "mlflow_"

_SLUG = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

# Schemas that belong to the server (MySQL, MariaDB, Aurora) or would confuse people.
RESERVED_NAMES = frozenset(
    {
        "mysql",
        "information-schema",
        "performance-schema",
        "sys",
        "test",
        "tmp",
        "innodb",
        "rdsadmin",
        "aws",
        "mlflow",
    }
)

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
    return re.sub(r"[-_.\s]+", "-", raw.strip().lower()).strip("-")


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
    if name in RESERVED_NAMES or name.replace("-", "_") in {
        r.replace("-", "_") for r in RESERVED_NAMES
    }:
        return (
            f"project name {shown} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))}); "
            "choose another name"
        )
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
