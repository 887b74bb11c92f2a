"""A project's MySQL schema, user and grants as a Pulumi dynamic resource.

``MysqlSchema`` (type token ``pulumi-python:dynamic/mysql:Schema``) gives one project:

* a schema ``CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`` (case-sensitive, so MLflow keys ``LR``
  and ``lr`` are distinct), adopted when it already exists (re-adding a removed project gets
  its data back);
* its own user with ``ALL PRIVILEGES`` on that schema only.

Deleting the resource drops the user (access revoked) and keeps the schema and its rows,
unless ``drop_data_on_remove`` is true.

The provider runs inside the SDK's provider server (``python -m pulumi.dynamic``), which
unpickles it by reference to this module. It keeps nothing on ``self``: every method opens
its own connection and closes it before returning. ``check`` never touches the database.

Secrets: the server tells the engine ``acceptSecrets: false``, so the engine sends plain
values; tests (and older engines) may send them wrapped in the secret signature. Both are
accepted. In outputs, ``password`` and ``admin_password`` are always returned wrapped as
secrets (and the resource also lists them in ``additional_secret_outputs``), so neither is
ever stored in plain text in the state. Passwords never appear in messages or logs.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import pulumi
import pymysql
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown
from pulumi.runtime import rpc

from mlflow_aws.names import RULE, ProjectNameError, validate_name

CHARSET = "utf8mb4"
COLLATION = "utf8mb4_bin"
ACCOUNT_HOST = "%"  # project users connect from anywhere the network allows (ECS, laptops)

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds per connection attempt
DEFAULT_CONNECT_RETRY_SECONDS = 30.0  # total budget: Aurora may be resuming from auto-pause

# Inputs, in the order they are documented.
INPUT_KEYS = (
    "project",
    "schema",
    "username",
    "password",
    "admin_host",
    "admin_port",
    "admin_username",
    "admin_password",
    "drop_data_on_remove",
    "ssl_ca",
    "connect_timeout",
    "connect_retry_seconds",
)
SECRET_KEYS = ("password", "admin_password")
REPLACE_KEYS = ("project", "schema", "username")  # a different schema or user is another thing
# Live state reported by create/update/read (outputs only).
STATE_KEYS = ("collation", "user_exists", "grants", "grants_ok", "adopted_schema")

# MySQL client error codes.
_ER_CANNOT_USER = 1396  # CREATE USER on an existing account
_ER_NONEXISTING_GRANT = 1141  # SHOW GRANTS for an unknown account
_ER_ACCESS_DENIED = 1045
_CONNECT_ERRORS = frozenset({2003, 2005, 2006, 2013})  # can't connect / host / gone / lost

Connection: TypeAlias = "pymysql.connections.Connection[Any]"

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,63}")


class SchemaProviderError(Exception):
    """A failure of the MySQL schema provider; messages never contain passwords."""


class DatabaseUnreachable(SchemaProviderError):
    pass


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


def _account(username: str) -> str:
    # ``%%``: every statement goes through the driver's parameter formatting (see ``_rows``).
    return f"{quote_identifier(username)}@'{ACCOUNT_HOST.replace('%', '%%')}'"


# -- property helpers -------------------------------------------------------------------------


def _is_unknown(value: Any) -> bool:
    return isinstance(value, Unknown) or value == rpc.UNKNOWN


def _plain(value: Any) -> Any:
    """The value inside a wrapped secret (or the value itself)."""
    return rpc.unwrap_rpc_secret(value)


def _secret(value: Any) -> Any:
    return rpc.wrap_rpc_secret(_plain(value))


@dataclass(frozen=True)
class _Target:
    """Everything one provider call needs, unwrapped. Lives only for that call."""

    project: str
    schema: str
    username: str
    password: str
    admin_host: str
    admin_port: int
    admin_username: str
    admin_password: str
    drop_data_on_remove: bool
    ssl_ca: str | None
    connect_timeout: float
    connect_retry_seconds: float

    def __repr__(self) -> str:  # never show passwords, even in a debugger or traceback
        return (
            f"_Target(project={self.project!r}, admin={self.admin_username!r}@"
            f"{self.admin_host}:{self.admin_port})"
        )

    @staticmethod
    def from_props(props: dict[str, Any]) -> _Target:
        """Re-validate state or checked inputs before any SQL is built from them."""
        ids = validate_name(_plain(props.get("project")))
        if _plain(props.get("schema", ids.schema)) != ids.schema or _plain(
            props.get("username", ids.username)
        ) != (ids.username):
            raise SchemaProviderError(
                f"schema/username in the properties do not match project {ids.name!r} "
                f"(expected {ids.schema!r} and {ids.username!r})"
            )
        ssl_ca = _plain(props.get("ssl_ca"))
        return _Target(
            project=ids.name,
            schema=ids.schema,
            username=ids.username,
            password=str(_plain(props["password"])),
            admin_host=str(_plain(props["admin_host"])),
            admin_port=int(_plain(props["admin_port"])),
            admin_username=str(_plain(props["admin_username"])),
            admin_password=str(_plain(props["admin_password"])),
            drop_data_on_remove=bool(_plain(props.get("drop_data_on_remove", False))),
            ssl_ca=str(ssl_ca) if ssl_ca else None,
            connect_timeout=float(_plain(props.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))),
            connect_retry_seconds=float(
                _plain(props.get("connect_retry_seconds", DEFAULT_CONNECT_RETRY_SECONDS))
            ),
        )

    def outputs(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "project": self.project,
            "schema": self.schema,
            "username": self.username,
            "password": _secret(self.password),
            "admin_host": self.admin_host,
            "admin_port": self.admin_port,
            "admin_username": self.admin_username,
            "admin_password": _secret(self.admin_password),
            "drop_data_on_remove": self.drop_data_on_remove,
            "ssl_ca": self.ssl_ca,
            "connect_timeout": self.connect_timeout,
            "connect_retry_seconds": self.connect_retry_seconds,
            **state,
        }


# -- connections ------------------------------------------------------------------------------


def unreachable_message(host: str, port: int, detail: str, waited: float) -> str:
    return (
        f"cannot reach the MySQL database at {host}:{port} after {waited:.0f}s ({detail}). "
        "If you run Pulumi from outside the VPC, allow your IP address with "
        f"`pulumi config set --path 'db.allowedCidrs[0]' <your-ip>/32` and run `pulumi up` "
        "again (db.allowedCidrs). An Aurora Serverless cluster with minCapacity 0 may also "
        "still be resuming from auto-pause (about 15 s): retry in a moment."
    )


@contextlib.contextmanager
def connect(target: _Target, as_admin: bool = True) -> Iterator[Connection]:
    """A TLS connection (verified when ``ssl_ca`` is set, else negotiated), closed on exit.

    Connection failures are retried with exponential backoff for ``connect_retry_seconds``
    (Aurora resuming from auto-pause); wrong credentials are not retried.
    """
    user = target.admin_username if as_admin else target.username
    password = target.admin_password if as_admin else target.password
    started = time.monotonic()
    delay = 0.25
    while True:
        try:
            conn = pymysql.connect(
                host=target.admin_host,
                port=target.admin_port,
                user=user,
                password=password,
                ssl={"ca": target.ssl_ca} if target.ssl_ca else None,
                connect_timeout=target.connect_timeout,
                autocommit=True,
                charset=CHARSET,
            )
            break
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else None
            waited = time.monotonic() - started
            if code == _ER_ACCESS_DENIED:
                reason = exc.args[1] if len(exc.args) > 1 else exc
                raise SchemaProviderError(
                    f"MySQL at {target.admin_host}:{target.admin_port} refused user {user!r} "
                    f"(wrong password or missing account): {reason}"
                ) from None
            if code not in _CONNECT_ERRORS:
                raise
            if waited + delay > target.connect_retry_seconds:
                detail = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
                raise DatabaseUnreachable(
                    unreachable_message(target.admin_host, target.admin_port, detail, waited)
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    with contextlib.closing(conn):
        yield conn


def _rows(conn: Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement. Values only ever travel in ``args``; ``sql`` is always formatted
    by the driver (so a literal ``%`` is written ``%%``), identifiers come from
    ``quote_identifier``."""
    with conn.cursor() as cur:
        cur.execute(sql, () if args is None else args)
        return list(cur.fetchall())


def _schema_collation(conn: Connection, schema: str) -> str | None:
    rows = _rows(
        conn,
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (schema,),
    )
    return str(rows[0][0]) if rows else None


_PASSWORD_CLAUSE = re.compile(r"\s+IDENTIFIED\s+(BY\s+PASSWORD|VIA|WITH)\s+.*$", re.I)


def _grants(conn: Connection, username: str) -> list[str] | None:
    """The account's grants (password hashes stripped), or None when the account is missing."""
    try:
        rows = _rows(conn, f"SHOW GRANTS FOR {_account(username)}")
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == _ER_NONEXISTING_GRANT:
            return None
        raise
    grants = []
    for (line,) in rows:
        text = _PASSWORD_CLAUSE.sub("", str(line))
        if text.startswith("GRANT USAGE ON *.*"):
            continue  # the account itself; carries no privilege
        grants.append(text)
    return sorted(grants)


def _grants_ok(grants: list[str] | None, schema: str, username: str) -> bool:
    expected = f"GRANT ALL PRIVILEGES ON {grant_pattern(schema)}.* TO `{username}`@`{ACCOUNT_HOST}`"
    return grants == [expected]


def _warn(message: str) -> None:
    # The provider server's stderr ends up in the engine's logs; no secrets ever go here.
    print(f"warning: mysql:Schema: {message}", file=sys.stderr, flush=True)


@dataclass
class _Ensured:
    created_schema: bool = False
    created_user: bool = False
    previous_collation: str | None = None


def _ensure(conn: Connection, t: _Target, done: _Ensured) -> None:
    """Make the schema, user and grants what they should be; record what this call created."""
    schema_q = quote_identifier(t.schema)
    collation = _schema_collation(conn, t.schema)
    if collation is None:
        _rows(
            conn,
            f"CREATE SCHEMA IF NOT EXISTS {schema_q} CHARACTER SET {CHARSET} COLLATE {COLLATION}",
        )
        done.created_schema = True
    elif collation != COLLATION:
        done.previous_collation = collation
        _rows(conn, f"ALTER SCHEMA {schema_q} CHARACTER SET {CHARSET} COLLATE {COLLATION}")
        _warn(
            f"schema {t.schema} had default collation {collation}; changed to {COLLATION}. "
            "Tables created before keep their own collation (ALTER TABLE … CONVERT TO "
            f"CHARACTER SET {CHARSET} COLLATE {COLLATION} fixes them)."
        )
    account = _account(t.username)
    try:
        _rows(conn, f"CREATE USER {account} IDENTIFIED BY %s", (t.password,))
        done.created_user = True
    except pymysql.err.OperationalError as exc:
        if not (exc.args and exc.args[0] == _ER_CANNOT_USER):
            raise
        # Adopt the existing account: new password, and nothing but this schema. When its
        # grants are already exactly right (an update), leave them: revoking first would
        # fail running servers' requests for a moment.
        _rows(conn, f"ALTER USER {account} IDENTIFIED BY %s", (t.password,))
        if _grants_ok(_grants(conn, t.username), t.schema, t.username):
            return
        _rows(conn, f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account}")
    _rows(conn, f"GRANT ALL PRIVILEGES ON {grant_pattern(t.schema)}.* TO {account}")


def _state(conn: Connection, t: _Target) -> dict[str, Any]:
    grants = _grants(conn, t.username)
    return {
        "collation": _schema_collation(conn, t.schema),
        "user_exists": grants is not None,
        "grants": grants or [],
        "grants_ok": _grants_ok(grants, t.schema, t.username),
    }


def _kill_sessions(conn: Connection, username: str) -> None:
    """Best effort: end the user's open sessions so a dropped user really loses access."""
    ids = _rows(conn, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (username,))
    for (session_id,) in ids:
        for statement in ("KILL CONNECTION %s", "CALL mysql.rds_kill(%s)"):  # RDS: no SUPER
            try:
                _rows(conn, statement, (int(session_id),))
                break
            except pymysql.err.MySQLError:
                continue


# -- check ------------------------------------------------------------------------------------


def _check(news: dict[str, Any]) -> tuple[dict[str, Any], list[CheckFailure]]:
    failures: list[CheckFailure] = []
    inputs = dict(news)

    def fail(prop: str, reason: str) -> None:
        failures.append(CheckFailure(prop, reason))

    for key in sorted(set(news) - set(INPUT_KEYS) - {"__provider"}):
        fail(key, f"unknown property {key!r}; known: {', '.join(INPUT_KEYS)}")

    project = _plain(news.get("project"))
    if not _is_unknown(project):
        try:
            ids = validate_name(project)
        except ProjectNameError as exc:
            fail("project", str(exc))
        else:
            for key, derived in (("schema", ids.schema), ("username", ids.username)):
                given = news.get(key)
                if given is None:
                    inputs[key] = derived
                elif not _is_unknown(given) and _plain(given) != derived:
                    fail(
                        key,
                        f"{key} {_plain(given)!r} does not match project {ids.name!r}: it must be "
                        f"{derived!r} (derived from the name; {RULE})",
                    )

    for key in ("password", "admin_password"):
        value = _plain(news.get(key))
        if value is None:
            fail(key, f"{key} is required")
        elif not _is_unknown(value) and (not isinstance(value, str) or not value):
            fail(key, f"{key} must be a non-empty string")

    for key in ("admin_host", "admin_username"):
        value = _plain(news.get(key))
        if value is None:
            fail(key, f"{key} is required")
        elif not _is_unknown(value) and (
            not isinstance(value, str) or not value or any(c.isspace() for c in value)
        ):
            fail(key, f"{key} {value!r} must be a non-empty string without spaces")

    port = _plain(news.get("admin_port"))
    if port is None:
        fail("admin_port", "admin_port is required")
    elif not _is_unknown(port):
        number = port if isinstance(port, (int, float)) and not isinstance(port, bool) else None
        if number is None or not math.isfinite(number) or number != int(number):
            fail("admin_port", f"admin_port {port!r} must be a whole number from 1 to 65535")
        elif not 1 <= int(number) <= 65535:
            fail("admin_port", f"admin_port {int(number)} must be from 1 to 65535")
        else:
            inputs["admin_port"] = int(number)

    drop = news.get("drop_data_on_remove")
    if drop is None:
        inputs["drop_data_on_remove"] = False
    elif not _is_unknown(drop) and not isinstance(drop, bool):
        fail("drop_data_on_remove", f"drop_data_on_remove {drop!r} must be true or false")

    ssl_ca = news.get("ssl_ca")
    if ssl_ca is not None and not _is_unknown(ssl_ca) and not isinstance(ssl_ca, str):
        fail("ssl_ca", f"ssl_ca {ssl_ca!r} must be a path to a PEM file")

    for key, default, hi in (
        ("connect_timeout", DEFAULT_CONNECT_TIMEOUT, 300.0),
        ("connect_retry_seconds", DEFAULT_CONNECT_RETRY_SECONDS, 900.0),
    ):
        value = news.get(key)
        if value is None:
            inputs[key] = default
        elif not _is_unknown(value):
            low = 0.0 if key == "connect_retry_seconds" else 0.001
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not low <= value <= hi
            ):
                fail(key, f"{key} {value!r} must be a number of seconds from {low:g} to {hi:g}")
            else:
                inputs[key] = float(value)
    return inputs, failures


# -- the provider -----------------------------------------------------------------------------


class MysqlSchemaProvider(ResourceProvider):
    """CRUD for one project's schema + user + grants. Stateless: nothing on ``self``."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = _check(news)
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        def changed(key: str) -> bool:
            new = news.get(key)
            if _is_unknown(new) or _is_unknown(_plain(new)):
                return True
            old, new = _plain(olds.get(key)), _plain(new)
            if isinstance(old, (int, float)) and isinstance(new, (int, float)):
                return float(old) != float(new)
            return bool(old != new)

        replaces = [k for k in REPLACE_KEYS if changed(k)]
        changes = [k for k in INPUT_KEYS if changed(k)]
        # Drift seen by `pulumi refresh` (read): an update puts things right.
        drift = (
            olds.get("user_exists") is False
            or olds.get("grants_ok") is False
            or olds.get("collation") not in (None, COLLATION)
        )
        return DiffResult(
            changes=bool(changes or replaces or drift),
            replaces=replaces,
            delete_before_replace=True,  # never two resources owning one user at once
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        t = _Target.from_props(props)
        done = _Ensured()
        with connect(t) as conn:
            try:
                _ensure(conn, t, done)
                state = _state(conn, t)
            except Exception:
                self._undo(conn, t, done)
                raise
        state["adopted_schema"] = not done.created_schema
        if done.previous_collation:
            state["previous_collation"] = done.previous_collation
        return CreateResult(t.schema, t.outputs(state))

    @staticmethod
    def _undo(conn: Connection, t: _Target, done: _Ensured) -> None:
        """Remove only what this create made; an adopted schema is never dropped."""
        leftovers = []
        if done.created_user:
            try:
                _rows(conn, f"DROP USER IF EXISTS {_account(t.username)}")
            except pymysql.err.MySQLError:
                leftovers.append(f"user {t.username}")
        if done.created_schema:
            try:
                _rows(conn, f"DROP SCHEMA IF EXISTS {quote_identifier(t.schema)}")
            except pymysql.err.MySQLError:
                leftovers.append(f"schema {t.schema}")
        if leftovers:
            _warn(f"could not undo a failed create; left behind: {', '.join(leftovers)}")

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        t = _Target.from_props(props)
        with connect(t) as conn:
            state = _state(conn, t)
        if state["collation"] is None:
            return ReadResult("", {})  # the schema is gone: the engine drops it from the state
        outs = t.outputs(state)
        outs["adopted_schema"] = props.get("adopted_schema", False)
        return ReadResult(id_ or t.schema, outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        t = _Target.from_props(news)
        done = _Ensured()
        with connect(t) as conn:
            _ensure(conn, t, done)  # idempotent: rotates the password, re-grants, fixes drift
            state = _state(conn, t)
        state["adopted_schema"] = olds.get("adopted_schema", False)
        return UpdateResult(t.outputs(state))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        t = _Target.from_props(props)
        with connect(t) as conn:
            _kill_sessions(conn, t.username)
            _rows(conn, f"DROP USER IF EXISTS {_account(t.username)}")
            if t.drop_data_on_remove:
                _rows(conn, f"DROP SCHEMA IF EXISTS {quote_identifier(t.schema)}")


# -- the resource -----------------------------------------------------------------------------


@dataclass
class MysqlSchemaArgs:
    project: pulumi.Input[str]
    password: pulumi.Input[str]  # a Pulumi secret
    admin_host: pulumi.Input[str]
    admin_port: pulumi.Input[int]
    admin_username: pulumi.Input[str]
    admin_password: pulumi.Input[str]  # a Pulumi secret
    drop_data_on_remove: pulumi.Input[bool] = False
    ssl_ca: pulumi.Input[str] | None = None  # PEM path; None: TLS negotiated, not verified
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    connect_retry_seconds: float = DEFAULT_CONNECT_RETRY_SECONDS
    schema: pulumi.Input[str] | None = None  # derived from project when None
    username: pulumi.Input[str] | None = None  # derived from project when None


class MysqlSchema(pulumi.dynamic.Resource, module="mysql", name="Schema"):
    """One project's schema, user and grants (type ``pulumi-python:dynamic/mysql:Schema``)."""

    project: pulumi.Output[str]
    schema: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]
    admin_host: pulumi.Output[str]
    admin_port: pulumi.Output[int]
    admin_username: pulumi.Output[str]
    admin_password: pulumi.Output[str]
    drop_data_on_remove: pulumi.Output[bool]
    collation: pulumi.Output[str]
    user_exists: pulumi.Output[bool]
    grants: pulumi.Output[list[str]]
    adopted_schema: pulumi.Output[bool]

    def __init__(
        self,
        resource_name: str,
        args: MysqlSchemaArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        ids = validate_name(args.project) if isinstance(args.project, str) else None
        props: dict[str, Any] = {
            "project": args.project,
            "schema": args.schema if args.schema is not None else (ids and ids.schema),
            "username": args.username if args.username is not None else (ids and ids.username),
            "password": pulumi.Output.secret(args.password),
            "admin_host": args.admin_host,
            "admin_port": args.admin_port,
            "admin_username": args.admin_username,
            "admin_password": pulumi.Output.secret(args.admin_password),
            "drop_data_on_remove": args.drop_data_on_remove,
            "ssl_ca": args.ssl_ca,
            "connect_timeout": args.connect_timeout,
            "connect_retry_seconds": args.connect_retry_seconds,
            # outputs only
            **{key: None for key in STATE_KEYS},
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_KEYS))
        )
        super().__init__(MysqlSchemaProvider(), resource_name, props, opts)
