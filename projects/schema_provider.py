"""A project's MySQL schema, user and grants as a Pulumi dynamic resource.

``MysqlSchema`` (type token ``pulumi-python:dynamic/mysql:Schema``) gives one project:

* a schema ``CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`` (case-sensitive, so MLflow keys ``LR``
  and ``lr`` are distinct); an existing one is adopted only if mlflow-aws recorded it as its
  own (re-adding a removed project gets its data back) or the project sets
  ``adopt_existing_schema``;
* its own user with the privileges MLflow needs on that schema only, and a connection limit.

Deleting the resource drops the user (access revoked) and keeps the schema and its rows,
unless ``drop_data_on_remove`` is true.

Every statement goes through the RDS Data API (``projects/data_api.py``) as the cluster's admin
secret: ``pulumi up`` needs AWS credentials, not a network path to MySQL. What to run is
decided as plain data in ``projects/schema_sql.py`` from what the provider saw first, so a
refusal (an account or schema mlflow-aws does not own) happens before anything changes.

The provider runs inside the SDK's provider server (``python -m pulumi.dynamic``), which
unpickles it by reference to this module. It keeps nothing on ``self``: each method makes its
own Data API client. ``check`` never talks to AWS.

STABLE CONTRACT: every stack's state stores the provider as a pickled reference to
``projects.schema_provider.MysqlSchemaProvider`` (``PROVIDER_MODULE``, ``PROVIDER_CLASS``).
Renaming or moving this module or class, or a module it imports by name, breaks refresh,
update and destroy of every existing stack with ``ModuleNotFoundError``. The provider process
finds the module through the venv's ``mlflow-aws-program.pth`` (written by ``./dev setup``),
whatever its working directory (an Automation API ``work_dir``, another checkout):
tests/test_provider_state.py unpickles the state the SDK writes, from another directory, as
the engine does.

Secrets: the server tells the engine ``acceptSecrets: false``, so the engine sends plain
values; tests (and older engines) may send them wrapped in the secret signature. Both are
accepted. In outputs, ``password`` is always returned wrapped as a secret (the resource also
lists it in ``additional_secret_outputs``). Passwords never appear in messages or logs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import pulumi
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

from mlflow_aws.names import RULE, ProjectIdentifiers, ProjectNameError, validate_name
from projects.data_api import DEFAULT_RESUME_WAIT_SECONDS, DataApiExecutor
from projects.schema_sql import (
    COLLATION,
    DEFAULT_MAX_USER_CONNECTIONS,
    ENGINE_QUERY,
    Desired,
    Observed,
    SchemaProviderError,
    Step,
    decide_change,
    decide_create,
    decide_delete,
    engine_of,
    inspection,
    kill_session,
    observed_from,
    password_problem,
    registry_exists,
    registry_lookup,
    sessions_of,
)

__all__ = ["COLLATION", "MysqlSchema", "MysqlSchemaArgs", "MysqlSchemaProvider"]

# What every stack's state refers to (see the module docstring): never rename.
PROVIDER_MODULE = "projects.schema_provider"
PROVIDER_CLASS = "MysqlSchemaProvider"

# Inputs, in the order they are documented.
INPUT_KEYS = (
    "project",
    "schema",
    "username",
    "password",
    "cluster_arn",
    "admin_secret_arn",
    "drop_data_on_remove",
    "adopt_existing_schema",
    "max_user_connections",
    "resume_wait_seconds",
    "aws_profile",
    "assume_roles",
    "retain_previous_password",
)
SECRET_KEYS = ("password",)
REPLACE_KEYS = ("project", "schema", "username")  # a different schema or user is another thing
# Live state reported by create/update/read (outputs only).
STATE_KEYS = ("collation", "user_exists", "grants", "grants_ok", "adopted_schema")
# Inputs of the provider before the Data API (it connected to MySQL itself). Such a state is
# moved over by the next update; read and delete need that to have happened.
LEGACY_KEYS = ("admin_host", "admin_port", "admin_username", "admin_password", "ssl_ca")

_CLUSTER_ARN = re.compile(r"arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:cluster:[A-Za-z0-9-]{1,63}")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


# -- property helpers -------------------------------------------------------------------------


def _is_unknown(value: Any) -> bool:
    return isinstance(value, Unknown) or value == rpc.UNKNOWN


def _plain(value: Any) -> Any:
    """The value inside a wrapped secret (or the value itself)."""
    return rpc.unwrap_rpc_secret(value)


def _secret(value: Any) -> Any:
    return rpc.wrap_rpc_secret(_plain(value))


def _warn(message: str) -> None:
    # The provider server's stderr ends up in the engine's logs; no secrets ever go here.
    print(f"warning: mysql:Schema: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Target:
    """Everything one provider call needs, unwrapped. Lives only for that call."""

    ids: ProjectIdentifiers
    password: str
    cluster_arn: str
    admin_secret_arn: str
    drop_data_on_remove: bool
    adopt_existing_schema: bool
    max_user_connections: int
    resume_wait_seconds: float
    aws_profile: str | None
    assume_roles: tuple[dict[str, Any], ...] = ()
    # A password change keeps the old one valid until MysqlPasswordRetirement discards it.
    retain_previous_password: bool = False

    def __repr__(self) -> str:  # never show the password, even in a debugger or traceback
        return f"_Target(project={self.ids.name!r}, cluster={self.cluster_arn!r})"

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
        if not props.get("cluster_arn") or not props.get("admin_secret_arn"):
            if any(k in props for k in LEGACY_KEYS):
                raise SchemaProviderError(
                    f"the state of project {ids.name!r} was written by an older mlflow-aws that "
                    "connected to MySQL directly. Run `pulumi up` once with the project still "
                    "configured (it moves the state to the RDS Data API and changes nothing in "
                    "the database), then refresh or remove it"
                )
            raise SchemaProviderError(
                f"the properties of project {ids.name!r} name no cluster_arn/admin_secret_arn"
            )
        profile = _plain(props.get("aws_profile"))
        return _Target(
            ids=ids,
            password=str(_plain(props.get("password", ""))),
            cluster_arn=str(_plain(props["cluster_arn"])),
            admin_secret_arn=str(_plain(props["admin_secret_arn"])),
            drop_data_on_remove=bool(_plain(props.get("drop_data_on_remove", False))),
            adopt_existing_schema=bool(_plain(props.get("adopt_existing_schema", False))),
            max_user_connections=int(
                _plain(props.get("max_user_connections", DEFAULT_MAX_USER_CONNECTIONS))
            ),
            resume_wait_seconds=float(
                _plain(props.get("resume_wait_seconds", DEFAULT_RESUME_WAIT_SECONDS))
            ),
            aws_profile=str(profile) if profile else None,
            assume_roles=tuple(dict(r) for r in (_plain(props.get("assume_roles")) or [])),
            retain_previous_password=bool(_plain(props.get("retain_previous_password", False))),
        )

    def executor(self) -> DataApiExecutor:
        return DataApiExecutor(
            self.cluster_arn,
            self.admin_secret_arn,
            resume_wait_seconds=self.resume_wait_seconds,
            aws_profile=self.aws_profile,
            assume_roles=self.assume_roles,
        )

    @property
    def desired(self) -> Desired:
        return Desired(
            self.ids, self.password, self.max_user_connections, self.adopt_existing_schema
        )

    def outputs(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "project": self.ids.name,
            "schema": self.ids.schema,
            "username": self.ids.username,
            "password": _secret(self.password),
            "cluster_arn": self.cluster_arn,
            "admin_secret_arn": self.admin_secret_arn,
            "drop_data_on_remove": self.drop_data_on_remove,
            "adopt_existing_schema": self.adopt_existing_schema,
            "max_user_connections": self.max_user_connections,
            "resume_wait_seconds": self.resume_wait_seconds,
            "aws_profile": self.aws_profile,
            "assume_roles": [dict(r) for r in self.assume_roles],
            "retain_previous_password": self.retain_previous_password,
            **state,
        }


# -- talking to the database ------------------------------------------------------------------


def _observe(executor: DataApiExecutor, ids: ProjectIdentifiers) -> Observed:
    """Look (read-only queries only) at everything the decisions depend on."""
    rows = {key: executor.run(statement) for key, statement in inspection(ids).items()}
    recorded: list[str] = []
    if registry_exists(rows):
        recorded = [str(r[0]) for r in executor.run(registry_lookup(ids))]
    return observed_from(ids, rows, recorded)


def _apply(executor: DataApiExecutor, steps: list[Step]) -> None:
    """Run the steps in order. If one fails, undo what this call made (newest first) and
    re-raise; registry rows written together run in one Data API transaction."""
    done: list[Step] = []
    try:
        for transactional, group in itertools.groupby(steps, lambda s: s.statement.transactional):
            batch = list(group)
            if transactional:
                with executor.transaction() as tid:
                    for step in batch:
                        executor.run(step.statement, tid)
                done += batch
            else:
                for step in batch:
                    executor.run(step.statement)
                    done.append(step)
    except Exception:
        leftovers = []
        for step in reversed(done):
            if step.undo is None:
                continue
            try:
                executor.run(step.undo)
            except SchemaProviderError:
                leftovers.append(str(step.undo))
        if leftovers:
            _warn(f"could not undo a failed change; still to do by hand: {'; '.join(leftovers)}")
        raise


def _end_sessions(executor: DataApiExecutor, username: str) -> None:
    """Best effort: end the user's open sessions so a dropped user really loses access."""
    for (session_id,) in executor.run(sessions_of(username)):
        for statement in kill_session(int(session_id)):
            try:
                executor.run(statement)
                break
            except SchemaProviderError:
                continue


def _state(seen: Observed, ids: ProjectIdentifiers) -> dict[str, Any]:
    return {
        "collation": seen.collation,
        "user_exists": seen.user_exists,
        "grants": seen.grants(),
        "grants_ok": seen.grants_ok(ids),
    }


def _converge(
    t: _Target, new: bool, previous_password: str | None = None
) -> tuple[Observed, dict[str, Any]]:
    executor = t.executor()
    seen = _observe(executor, t.ids)
    desired = t.desired
    if previous_password is not None:
        [(version,)] = executor.run(ENGINE_QUERY)
        desired = dataclasses.replace(
            desired, previous_password=previous_password, engine=engine_of(str(version))
        )
    steps = (decide_create if new else decide_change)(desired, seen)
    _apply(executor, steps)
    if seen.collation_differs:
        _warn(
            f"schema {t.ids.schema} had default collation {seen.collation}; changed to "
            f"{COLLATION}. Tables created before keep their own collation (ALTER TABLE … "
            f"CONVERT TO CHARACTER SET utf8mb4 COLLATE {COLLATION} fixes them)."
        )
    return seen, _state(_observe(executor, t.ids), t.ids)


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

    password = _plain(news.get("password"))
    if password is None:
        fail("password", "password is required")
    elif not _is_unknown(password):
        problem = password_problem(password)
        if problem is not None:
            fail("password", problem)

    for key, pattern, example in (
        ("cluster_arn", _CLUSTER_ARN, "arn:aws:rds:eu-west-1:123456789012:cluster:name"),
        ("admin_secret_arn", _SECRET_ARN, "arn:aws:secretsmanager:eu-west-1:123456789012:…"),
    ):
        value = _plain(news.get(key))
        if value is None:
            fail(key, f"{key} is required")
        elif not _is_unknown(value) and not (isinstance(value, str) and pattern.fullmatch(value)):
            fail(key, f"{key} {value!r} must be an ARN like {example}")

    for key in ("drop_data_on_remove", "adopt_existing_schema", "retain_previous_password"):
        value = news.get(key)
        if value is None:
            inputs[key] = False
        elif not _is_unknown(value) and not isinstance(value, bool):
            fail(key, f"{key} {value!r} must be true or false")

    limit = news.get("max_user_connections")
    if limit is None:
        inputs["max_user_connections"] = DEFAULT_MAX_USER_CONNECTIONS
    elif not _is_unknown(limit):
        # Numbers arrive as floats over gRPC.
        number = limit if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None
        if number is None or not math.isfinite(number) or number != int(number):
            fail("max_user_connections", f"max_user_connections {limit!r} must be whole")
        elif not 1 <= int(number) <= 10_000:
            fail("max_user_connections", f"max_user_connections {int(number)} must be 1-10000")
        else:
            inputs["max_user_connections"] = int(number)

    wait = news.get("resume_wait_seconds")
    if wait is None:
        inputs["resume_wait_seconds"] = DEFAULT_RESUME_WAIT_SECONDS
    elif not _is_unknown(wait):
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 900:
            fail("resume_wait_seconds", f"resume_wait_seconds {wait!r} must be 0 to 900 seconds")
        else:
            inputs["resume_wait_seconds"] = float(wait)

    profile = news.get("aws_profile")
    if profile is not None and not _is_unknown(profile) and not isinstance(profile, str):
        fail("aws_profile", f"aws_profile {profile!r} must be a profile name")

    roles = news.get("assume_roles")
    if roles is None:
        inputs["assume_roles"] = []
    elif not _is_unknown(roles):
        problem = _assume_roles_problem(roles)
        if problem is not None:
            fail("assume_roles", problem)
    return inputs, failures


ASSUME_ROLE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "role_arn": str,
    "session_name": str,
    "external_id": str,
    "duration_seconds": (int, float),
    "policy": str,
    "policy_arns": list,
    "source_identity": str,
    "tags": dict,
    "transitive_tag_keys": list,
}


def _assume_roles_problem(roles: Any) -> str | None:
    """The roles the stack's AWS provider assumes (aws:assumeRoles), in order."""
    if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
        return "assume_roles must be a list of {role_arn, ...} objects (aws:assumeRoles)"
    for index, role in enumerate(roles):
        unknown = sorted(set(role) - set(ASSUME_ROLE_FIELDS))
        if unknown:
            return f"assume_roles[{index}]: unknown field(s) {', '.join(unknown)}"
        for key, kind in ASSUME_ROLE_FIELDS.items():
            if key in role and not isinstance(role[key], kind):
                return f"assume_roles[{index}].{key} has the wrong type"
        if not (isinstance(role.get("role_arn"), str) and _ROLE_ARN.fullmatch(role["role_arn"])):
            return f"assume_roles[{index}].role_arn {role.get('role_arn')!r} is not a role ARN"
    return None


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
        # Drift seen by `pulumi refresh` (read), or a state from before the Data API: an
        # update puts things right.
        drift = (
            olds.get("user_exists") is False
            or olds.get("grants_ok") is False
            or olds.get("collation") not in (None, COLLATION)
            or any(key in olds for key in LEGACY_KEYS)
        )
        return DiffResult(
            changes=bool(changes or replaces or drift),
            replaces=replaces,
            delete_before_replace=True,  # never two resources owning one user at once
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        t = _Target.from_props(props)
        seen, state = _converge(t, new=True)
        state["adopted_schema"] = seen.schema_exists
        if seen.collation_differs:
            state["previous_collation"] = seen.collation
        return CreateResult(t.ids.schema, t.outputs(state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        t = _Target.from_props(props)
        seen = _observe(t.executor(), t.ids)
        if not seen.schema_exists:
            return ReadResult("", {})  # the schema is gone: the engine drops it from the state
        outs = t.outputs(_state(seen, t.ids))
        outs["adopted_schema"] = props.get("adopted_schema", False)
        return ReadResult(id_ or t.ids.schema, outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        t = _Target.from_props(news)
        old_password = _plain(olds.get("password"))
        previous = None
        if t.retain_previous_password and old_password and str(old_password) != t.password:
            previous = str(old_password)  # valid too, until the retirement resource runs
        # idempotent: rotates, repairs drift, records
        _, state = _converge(t, new=False, previous_password=previous)
        state["adopted_schema"] = olds.get("adopted_schema", False)
        return UpdateResult(t.outputs(state))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        t = _Target.from_props(props)
        executor = t.executor()
        seen = _observe(executor, t.ids)
        steps = decide_delete(t.ids, seen, t.drop_data_on_remove)  # refusals before any change
        if seen.user_exists:
            _end_sessions(executor, t.ids.username)
        _apply(executor, steps)


# -- the resource -----------------------------------------------------------------------------


@dataclass
class MysqlSchemaArgs:
    project: pulumi.Input[str]
    password: pulumi.Input[str]  # a Pulumi secret
    cluster_arn: pulumi.Input[str]  # the Aurora cluster (its Data API)
    admin_secret_arn: pulumi.Input[str]  # the admin credentials the Data API runs as
    drop_data_on_remove: pulumi.Input[bool] = False
    adopt_existing_schema: pulumi.Input[bool] = False
    max_user_connections: int = DEFAULT_MAX_USER_CONNECTIONS
    resume_wait_seconds: float = DEFAULT_RESUME_WAIT_SECONDS
    aws_profile: pulumi.Input[str] | None = None  # the stack's aws:profile, if any
    # The stack's aws:assumeRoles (AssumeRole.as_input), assumed in order before any call.
    assume_roles: list[dict[str, Any]] | None = None
    schema: pulumi.Input[str] | None = None  # derived from project when None
    username: pulumi.Input[str] | None = None  # derived from project when None
    # A password change keeps the previous one valid until MysqlPasswordRetirement runs.
    retain_previous_password: bool = False


class MysqlSchema(pulumi.dynamic.Resource, module="mysql", name="Schema"):
    """One project's schema, user and grants (type ``pulumi-python:dynamic/mysql:Schema``)."""

    project: pulumi.Output[str]
    schema: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]
    cluster_arn: pulumi.Output[str]
    admin_secret_arn: pulumi.Output[str]
    drop_data_on_remove: pulumi.Output[bool]
    adopt_existing_schema: pulumi.Output[bool]
    collation: pulumi.Output[str]
    user_exists: pulumi.Output[bool]
    grants: pulumi.Output[list[str]]
    grants_ok: pulumi.Output[bool]
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
            "cluster_arn": args.cluster_arn,
            "admin_secret_arn": args.admin_secret_arn,
            "drop_data_on_remove": args.drop_data_on_remove,
            "adopt_existing_schema": args.adopt_existing_schema,
            "max_user_connections": args.max_user_connections,
            "resume_wait_seconds": args.resume_wait_seconds,
            "aws_profile": args.aws_profile,
            "assume_roles": args.assume_roles or [],
            "retain_previous_password": args.retain_previous_password,
            # outputs only
            **{key: None for key in STATE_KEYS},
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_KEYS))
        )
        super().__init__(MysqlSchemaProvider(), resource_name, props, opts)
