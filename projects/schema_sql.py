"""What the schema provider says to MySQL, as plain data: statements, what it looks at, and the
decisions it takes from what it saw. No I/O here (``projects/data_api.py`` runs statements).

Every identifier enters SQL through ``quote_identifier``; every value travels as a named
parameter (``:name``), except the password in ``CREATE USER``/``ALTER USER``: MySQL takes only
a string literal after ``IDENTIFIED BY`` (a server-side prepared statement refuses a
placeholder there), so ``password_literal`` admits only ``mlflow_aws/passwords.py``'s characters
(what ``MlflowProject`` generates), which cannot end the literal or escape from it. Statements that
carry it are marked ``secret`` and never shown.

The guards of README.md "Adding a project" live in ``decide_create`` / ``decide_change``: the
provider never touches the account it runs as (the master user), never adopts an account that holds
a global privilege or that it did not record as its own, and never takes over an unrecorded schema
unless the project says ``adoptExistingSchema``. Each refusal happens after looking and before the
first statement that changes anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_aws import passwords
from mlflow_aws.names import REGISTRY_SCHEMA, ProjectIdentifiers
from mlflow_aws.server_settings import connections_per_server

CHARSET = "utf8mb4"
COLLATION = "utf8mb4_bin"  # case-sensitive: MLflow keys "LR" and "lr" are distinct
ACCOUNT_HOST = "%"  # project users connect from anywhere the network allows (ECS, laptops)
REGISTRY_TABLE = "managed_objects"

# What MLflow's store and its Alembic migrations need on their own schema, and no more (no
# GRANT OPTION, no routines, no EVENT or LOCK TABLES): tests run every migration with it.
# TRIGGER: MLflow 3 guards its secrets table with one.
PROJECT_PRIVILEGES = (
    "ALTER",
    "CREATE",
    "DELETE",
    "DROP",
    "INDEX",
    "INSERT",
    "REFERENCES",
    "SELECT",
    "TRIGGER",
    "UPDATE",
)
# One project's servers cannot take every connection of the cluster (or keep it awake with
# hundreds). Every server, a teammate's laptop one or a central task, pools at most
# ``connections_per_server()`` (server.env's pool size plus overflow, read from the file the image
# bakes); a project user has room for this many laptop servers, plus each central task
# (``max_user_connections``; infra/config.py adds the stack's tasks).
LAPTOP_SERVERS_PER_PROJECT = 5
CONNECTIONS_PER_SERVER = connections_per_server()


def max_user_connections(central_tasks: int = 0) -> int:
    """A project user's MySQL connection limit: its laptop servers' and central tasks' pools."""
    return (LAPTOP_SERVERS_PER_PROJECT + central_tasks) * CONNECTIONS_PER_SERVER


DEFAULT_MAX_USER_CONNECTIONS = max_user_connections()

SqlValue = str | int | float | bool | None

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,63}")
MIN_PASSWORD, MAX_PASSWORD = 12, 128
_PASSWORD = passwords.pattern(MIN_PASSWORD, MAX_PASSWORD)
PASSWORD_RULE = f"{MIN_PASSWORD} to {MAX_PASSWORD} characters from {passwords.SHOWN}"


class SchemaProviderError(Exception):
    """A failure of the MySQL schema provider; messages never contain passwords."""


class Refused(SchemaProviderError):
    """The provider will not do it (an account or schema it does not own); nothing changed."""


def quote_identifier(value: object) -> str:
    """THE way a schema or user name enters SQL: re-validated, then backtick-quoted.

    Only lowercase ASCII letters, digits and underscores pass (what ``validate_name``
    derives), so the quoted form can never contain a backtick, quote or anything else.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise SchemaProviderError(
            f"refusing to use {value!r} as a MySQL identifier: only [a-z][a-z0-9_]{{0,63}} "
            "(derived from a valid project name) is allowed"
        )
    return f"`{value}`"


def grant_pattern(schema: str) -> str:
    """The schema as a GRANT database pattern: quoted, with ``_`` escaped.

    In ``GRANT … ON `db`.*`` the name is a LIKE pattern where ``_`` matches any character, so
    unescaped, project ``a-b`` (schema ``a_b``) would also be granted ``axb``'s schema.
    """
    return quote_identifier(schema).replace("_", "\\_")


def password_problem(password: object) -> str | None:
    if not isinstance(password, str) or not _PASSWORD.fullmatch(password):
        return f"the project password must be {PASSWORD_RULE} (it is written as a SQL literal)"
    return None


def password_literal(password: str) -> str:
    problem = password_problem(password)
    if problem is not None:
        raise SchemaProviderError(problem)
    return f"'{password}'"


def account(username: str) -> str:
    return f"{quote_identifier(username)}@'{ACCOUNT_HOST}'"


def grantee(username: str) -> str:
    """How information_schema names the account: ``'user'@'%'``."""
    quote_identifier(username)
    return f"'{username}'@'{ACCOUNT_HOST}'"


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its named parameters."""

    sql: str
    params: Mapping[str, SqlValue] = field(default_factory=dict)
    changes: bool = False  # DDL/DML that changes the server (inspection queries do not)
    secret: bool = False  # carries a password literal: never shown, never logged
    # Plain DML on the registry: consecutive ones run in one transaction (DDL cannot: MySQL
    # commits implicitly around it, so DDL steps are undone by their ``Step.undo`` instead).
    transactional: bool = False

    def __str__(self) -> str:
        if self.secret:
            masked = re.sub(r"IDENTIFIED BY '[^']*'", "IDENTIFIED BY '***'", self.sql)
            return re.sub(r"PASSWORD\('[^']*'\)", "PASSWORD('***')", masked)
        return self.sql

    def __repr__(self) -> str:
        return f"Statement({str(self)!r})"


def _query(sql: str, **params: SqlValue) -> Statement:
    return Statement(sql, params)


def _change(sql: str, secret: bool = False, **params: SqlValue) -> Statement:
    return Statement(sql, params, changes=True, secret=secret)


# -- looking ----------------------------------------------------------------------------------


def inspection(ids: ProjectIdentifiers) -> dict[str, Statement]:
    """The read-only queries whose answers make an ``Observed``: one row of facts, and the
    account's schema privileges (one Data API round trip each)."""
    g = grantee(ids.username)
    return {
        "summary": _query(
            "SELECT CURRENT_USER(), "
            "(SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = :schema), "
            "(SELECT COUNT(*) FROM mysql.user WHERE User = :user AND Host = :host), "
            "(SELECT GROUP_CONCAT(PRIVILEGE_TYPE ORDER BY PRIVILEGE_TYPE SEPARATOR ',') "
            "FROM information_schema.USER_PRIVILEGES "
            "WHERE GRANTEE = :global_grantee AND PRIVILEGE_TYPE <> 'USAGE'), "
            "(SELECT COUNT(*) FROM information_schema.TABLE_PRIVILEGES "
            "WHERE GRANTEE = :table_grantee)"
            " + (SELECT COUNT(*) FROM information_schema.COLUMN_PRIVILEGES "
            "WHERE GRANTEE = :column_grantee), "
            "(SELECT COUNT(*) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = :registry AND TABLE_NAME = :registry_table)",
            schema=ids.schema,
            user=ids.username,
            host=ACCOUNT_HOST,
            # One name per use: the Data API is not documented to bind a name twice.
            global_grantee=g,
            table_grantee=g,
            column_grantee=g,
            registry=REGISTRY_SCHEMA,
            registry_table=REGISTRY_TABLE,
        ),
        "schema_privileges": _query(
            "SELECT TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES "
            "WHERE GRANTEE = :grantee",
            grantee=g,
        ),
    }


def registry_lookup(ids: ProjectIdentifiers) -> Statement:
    return _query(
        f"SELECT object_type FROM {quote_identifier(REGISTRY_SCHEMA)}.{REGISTRY_TABLE} "
        "WHERE (object_type = 'schema' AND object_name = :schema) "
        "OR (object_type = 'user' AND object_name = :user)",
        schema=ids.schema,
        user=ids.username,
    )


def _unescape(pattern: str) -> str:
    return pattern.replace("\\_", "_").replace("\\%", "%")


@dataclass(frozen=True)
class Observed:
    """What the server holds for one project, and who the provider is connected as."""

    current_user: str  # the user part of CURRENT_USER(): the account the Data API runs as
    collation: str | None  # the schema's default collation; None: no such schema
    user_exists: bool
    global_privileges: tuple[str, ...]  # anything beyond USAGE on *.*
    schema_privileges: tuple[tuple[str, str], ...]  # (schema, privilege), patterns unescaped
    object_privileges: int  # table or column grants anywhere
    recorded_schema: bool
    recorded_user: bool
    registry: bool = False  # the registry table exists (else it is made first)

    @property
    def schema_exists(self) -> bool:
        return self.collation is not None

    @property
    def collation_differs(self) -> bool:
        """The schema exists with another default collation than ``COLLATION``."""
        return self.schema_exists and self.collation != COLLATION

    def grants_ok(self, ids: ProjectIdentifiers) -> bool:
        expected = {(ids.schema, p) for p in PROJECT_PRIVILEGES}
        return (
            self.user_exists
            and not self.global_privileges
            and self.object_privileges == 0
            and set(self.schema_privileges) == expected
        )

    def grants(self) -> list[str]:
        """The account's privileges as sorted ``schema: PRIVILEGE`` lines (for the state)."""
        lines = [f"*.*: {p}" for p in self.global_privileges]
        lines += [f"{schema}.*: {p}" for schema, p in self.schema_privileges]
        if self.object_privileges:
            lines.append(f"tables or columns: {self.object_privileges} grant(s)")
        return sorted(lines)


def registry_exists(rows: Mapping[str, list[tuple[Any, ...]]]) -> bool:
    return bool(int(rows["summary"][0][5] or 0))


def observed_from(
    ids: ProjectIdentifiers, rows: Mapping[str, list[tuple[Any, ...]]], recorded: Iterable[str]
) -> Observed:
    """Build ``Observed`` from the answers to ``inspection`` (and ``registry_lookup``)."""
    who, collation, users, global_privileges, object_privileges, _ = rows["summary"][0]
    kinds = set(recorded)
    return Observed(
        current_user=str(who).rpartition("@")[0] if "@" in str(who) else str(who),
        collation=str(collation) if collation is not None else None,
        user_exists=bool(int(users or 0)),
        global_privileges=tuple(sorted(p for p in str(global_privileges or "").split(",") if p)),
        schema_privileges=tuple(
            sorted((_unescape(str(r[0])), str(r[1])) for r in rows["schema_privileges"])
        ),
        object_privileges=int(object_privileges or 0),
        recorded_schema="schema" in kinds,
        recorded_user="user" in kinds,
        registry=registry_exists(rows),
    )


# -- deciding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Desired:
    ids: ProjectIdentifiers
    password: str = field(repr=False)
    max_user_connections: int = DEFAULT_MAX_USER_CONNECTIONS
    adopt_existing_schema: bool = False
    # A rotation that keeps the previous password valid too, until ``retire_previous_password``
    # (the central tasks still connect with it until their replacements are healthy).
    previous_password: str | None = field(default=None, repr=False)
    engine: str = "mysql"  # "mysql" (Aurora MySQL 3) or "mariadb": their dual-password syntax


def engine_of(version: str) -> str:
    """``SELECT VERSION()`` -> the dialect of dual passwords."""
    return "mariadb" if "mariadb" in version.lower() else "mysql"


ENGINE_QUERY = Statement("SELECT VERSION()")


def set_password(
    acct: str, password: str, limit: int, previous: str | None, engine: str
) -> Statement:
    """``ALTER USER`` to ``password``, keeping ``previous`` valid as well when given.

    MySQL 8.0.14+ (Aurora MySQL 3) keeps one secondary password: ``RETAIN CURRENT PASSWORD``
    (https://dev.mysql.com/doc/refman/8.0/en/password-management.html#dual-passwords), so the
    account's current password must be ``previous``. MariaDB has no secondary password but
    takes several authentication methods joined by OR (MariaDB 10.4+, ``IDENTIFIED VIA ... OR``).
    """
    new = password_literal(password)
    if previous is None or previous == password:
        sql = f"ALTER USER {acct} IDENTIFIED BY {new} WITH MAX_USER_CONNECTIONS {limit}"
    elif engine == "mariadb":
        old = password_literal(previous)
        sql = (
            f"ALTER USER {acct} IDENTIFIED VIA mysql_native_password USING PASSWORD({new}) "
            f"OR mysql_native_password USING PASSWORD({old}) WITH MAX_USER_CONNECTIONS {limit}"
        )
    else:
        sql = (
            f"ALTER USER {acct} IDENTIFIED BY {new} RETAIN CURRENT PASSWORD "
            f"WITH MAX_USER_CONNECTIONS {limit}"
        )
    return _change(sql, secret=True)


def retire_previous_password(username: str, password: str, engine: str) -> Statement:
    """Only ``password`` stays valid: the rotation's second half, once nothing uses the old."""
    acct = account(username)
    if engine == "mariadb":
        return _change(f"ALTER USER {acct} IDENTIFIED BY {password_literal(password)}", secret=True)
    return _change(f"ALTER USER {acct} DISCARD OLD PASSWORD")


@dataclass(frozen=True)
class Step:
    """A statement and what undoes it if a later step fails (None: nothing to undo)."""

    statement: Statement
    undo: Statement | None = None


def _never_the_connected_account(ids: ProjectIdentifiers, seen: Observed) -> None:
    if ids.username == seen.current_user:
        raise Refused(
            f"refusing to manage MySQL user {ids.username}: it is the account the provider "
            "itself runs as (the cluster's master user); no project may use it"
        )


def _no_global_privileges(ids: ProjectIdentifiers, seen: Observed, doing: str) -> None:
    if seen.global_privileges:
        raise Refused(
            f"refusing to {doing} MySQL user {ids.username}: it holds global privileges "
            f"({', '.join(seen.global_privileges)}), which no mlflow-aws project user has, so "
            "it is not ours. Rename the project, or have a DBA drop or rename that account"
        )


def decide_create(want: Desired, seen: Observed) -> list[Step]:
    """The steps that give a new project resource its schema and user, or ``Refused``.

    Adopts only what the registry says mlflow-aws made (re-adding a removed project), or an
    unrecorded schema when the project explicitly allows it; never an unrecorded account.
    """
    ids = want.ids
    _never_the_connected_account(ids, seen)
    if seen.user_exists:
        _no_global_privileges(ids, seen, "adopt")
        if not seen.recorded_user:
            raise Refused(
                f"refusing to adopt MySQL user {ids.username}@'%': it exists but mlflow-aws did "
                f"not create it (it is not in {REGISTRY_SCHEMA}.{REGISTRY_TABLE}). Rename the "
                "project, or have a DBA drop that account if it is a leftover"
            )
    if seen.schema_exists and not seen.recorded_schema and not want.adopt_existing_schema:
        raise Refused(
            f"refusing to take over schema {ids.schema}: it exists but mlflow-aws did not "
            f"create it. To use its tables for project {ids.name}, set adoptExistingSchema: "
            "true on that project (pulumi config) and run pulumi up again; otherwise rename "
            "the project"
        )
    return _converge(want, seen, new=True)


def decide_change(want: Desired, seen: Observed) -> list[Step]:
    """Steps for a resource that is already ours (it is in the state): rotate the password,
    repair drift, record it in the registry if an older mlflow-aws did not."""
    _never_the_connected_account(want.ids, seen)
    if seen.user_exists:
        _no_global_privileges(want.ids, seen, "change")
    return _converge(want, seen, new=False)


def _converge(want: Desired, seen: Observed, new: bool) -> list[Step]:
    ids = want.ids
    schema_q = quote_identifier(ids.schema)
    acct = account(ids.username)
    steps = [] if seen.registry else list(ensure_registry())
    if not seen.schema_exists:
        steps.append(
            Step(
                _change(f"CREATE SCHEMA {schema_q} CHARACTER SET {CHARSET} COLLATE {COLLATION}"),
                undo=_change(f"DROP SCHEMA IF EXISTS {schema_q}") if new else None,
            )
        )
    elif seen.collation != COLLATION:
        steps.append(
            Step(_change(f"ALTER SCHEMA {schema_q} CHARACTER SET {CHARSET} COLLATE {COLLATION}"))
        )
    password = password_literal(want.password)
    limit = int(want.max_user_connections)
    # An existing user gets the password and the limit set in place (rotation, repair); a
    # rotation may keep the previous password valid too (set_password).
    if seen.user_exists:
        statement = set_password(acct, want.password, limit, want.previous_password, want.engine)
    else:
        statement = _change(
            f"CREATE USER {acct} IDENTIFIED BY {password} WITH MAX_USER_CONNECTIONS {limit}",
            secret=True,
        )
    steps.append(
        Step(
            statement,
            undo=_change(f"DROP USER IF EXISTS {acct}") if new and not seen.user_exists else None,
        )
    )
    grants_ok = seen.grants_ok(ids)  # false without the user
    # Revoking first would fail running servers' requests for a moment: only when wrong.
    if seen.user_exists and not grants_ok:
        steps.append(Step(_change(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {acct}")))
    if not grants_ok:
        privileges = ", ".join(PROJECT_PRIVILEGES)
        on = f"{grant_pattern(ids.schema)}.*"
        steps.append(Step(_change(f"GRANT {privileges} ON {on} TO {acct}")))
    for kind, name, recorded in (
        ("schema", ids.schema, seen.recorded_schema),
        ("user", ids.username, seen.recorded_user),
    ):
        if not recorded:
            steps.append(
                Step(
                    record(ids, kind, name),
                    undo=forget(kind, name) if new else None,
                )
            )
    return steps


def ensure_registry() -> list[Step]:
    registry = quote_identifier(REGISTRY_SCHEMA)
    return [
        Step(
            _change(
                f"CREATE SCHEMA IF NOT EXISTS {registry} CHARACTER SET {CHARSET} "
                f"COLLATE {COLLATION}"
            )
        ),
        Step(
            _change(
                f"CREATE TABLE IF NOT EXISTS {registry}.{REGISTRY_TABLE} ("
                "object_type VARCHAR(16) NOT NULL, "
                "object_name VARCHAR(64) NOT NULL, "
                "project VARCHAR(64) NOT NULL, "
                "recorded_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
                "PRIMARY KEY (object_type, object_name)"
                f") ENGINE=InnoDB DEFAULT CHARSET={CHARSET} COLLATE={COLLATION}"
            )
        ),
    ]


def _registry_change(sql: str, **params: SqlValue) -> Statement:
    return Statement(sql, params, changes=True, transactional=True)


def record(ids: ProjectIdentifiers, kind: str, name: str) -> Statement:
    return _registry_change(
        f"INSERT IGNORE INTO {quote_identifier(REGISTRY_SCHEMA)}.{REGISTRY_TABLE} "
        "(object_type, object_name, project) VALUES (:kind, :name, :project)",
        kind=kind,
        name=name,
        project=ids.name,
    )


def forget(kind: str, name: str) -> Statement:
    return _registry_change(
        f"DELETE FROM {quote_identifier(REGISTRY_SCHEMA)}.{REGISTRY_TABLE} "
        "WHERE object_type = :kind AND object_name = :name",
        kind=kind,
        name=name,
    )


def sessions_of(username: str) -> Statement:
    return _query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = :user", user=username)


def kill_session(session_id: int) -> list[Statement]:
    """Ways to end one session, best first (Aurora's master user has no SUPER: rds_kill)."""
    sid = int(session_id)
    return [_change(f"KILL CONNECTION {sid}"), _change(f"CALL mysql.rds_kill({sid})")]


def decide_delete(ids: ProjectIdentifiers, seen: Observed, drop_data: bool) -> list[Step]:
    """Drop the user (access revoked), and the schema only with the project's consent."""
    _never_the_connected_account(ids, seen)
    steps: list[Step] = []
    if seen.user_exists:
        _no_global_privileges(ids, seen, "drop")
        steps.append(Step(_change(f"DROP USER IF EXISTS {account(ids.username)}")))
    if seen.recorded_user:
        steps.append(Step(forget("user", ids.username)))
    if drop_data:
        if seen.schema_exists:
            steps.append(Step(_change(f"DROP SCHEMA IF EXISTS {quote_identifier(ids.schema)}")))
        if seen.recorded_schema:
            steps.append(Step(forget("schema", ids.schema)))
    return steps
