"""The MySQL schema provider, for real: the SDK's provider server over gRPC, its SQL through the
RDS Data API protocol (the provider's own boto3 client) to the Data API emulator, backed by a
real MariaDB (TLS required, like Aurora), with the admin secret read from moto.

Every test drives ``python -u -m pulumi.dynamic`` (started as the engine starts it) through
``tests.support.grpc_provider`` and checks the database itself with the admin connection, or by
connecting as the project's user; the emulator's request log shows what the provider sent.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import boto3
import pymysql
import pytest

from mlflow_aws.names import RULE, validate_name
from projects.schema_provider import COLLATION, MysqlSchemaProvider
from projects.schema_sql import (
    PROJECT_PRIVILEGES,
    Desired,
    Observed,
    Refused,
    SchemaProviderError,
    decide_change,
    decide_create,
    decide_delete,
    quote_identifier,
)
from tests.support.data_api_emulator import (
    CLUSTER_ARN,
    REGION,
    DataApiEmulator,
    admin_secret,
    provider_environment,
)
from tests.support.grpc_provider import (
    UNKNOWN,
    ProviderCallError,
    ProviderClient,
    ProviderServer,
    is_secret,
    plain,
    provider_server,
    secret,
)
from tests.support.services import MariaDB, MotoServer

pytestmark = pytest.mark.slow

ACCESS_DENIED = {1044, 1045, 1142, 1227}  # db / login / table / privilege denied
PW = "pw-Initial.1-abc"


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin_arn(moto: MotoServer, mariadb: MariaDB) -> str:
    return admin_secret(moto, mariadb)


@pytest.fixture(scope="module")
def server(data_api: DataApiEmulator) -> Iterator[ProviderServer]:
    with provider_server(provider_environment(data_api)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ProviderServer) -> ProviderClient:
    """Secrets travel plain: what the engine sends a provider that answered acceptSecrets=false."""
    return server.client(MysqlSchemaProvider(), wrap_secrets=False)


@pytest.fixture(scope="module")
def wrapped_client(server: ProviderServer) -> ProviderClient:
    """Secrets travel wrapped in the secret signature."""
    return server.client(MysqlSchemaProvider(), wrap_secrets=True)


@pytest.fixture
def news(admin_arn: str) -> Any:
    def make(project: str, password: str = PW, **overrides: Any) -> dict[str, Any]:
        props: dict[str, Any] = {
            "project": project,
            "password": secret(password),
            "cluster_arn": CLUSTER_ARN,
            "admin_secret_arn": admin_arn,
            "resume_wait_seconds": 5,
        }
        props.update(overrides)
        return props

    return make


def checked(client: ProviderClient, news: dict[str, Any]) -> dict[str, Any]:
    inputs, failures = client.check(news)
    assert failures == [], failures
    return inputs


def create(client: ProviderClient, news: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return client.create(checked(client, news))


def schema_collation(db: MariaDB, schema: str) -> str | None:
    rows = db.query(
        "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (schema,),
    )
    return rows[0][0] if rows else None


def user_exists(db: MariaDB, user: str) -> bool:
    return bool(db.query("SELECT 1 FROM mysql.user WHERE User = %s", (user,)))


def recorded(db: MariaDB) -> set[tuple[str, str]]:
    if not db.query("SHOW DATABASES LIKE 'mlflow\\_aws'"):
        return set()
    return {(str(k), str(n)) for k, n in db.query("SELECT object_type, object_name FROM "
                                                   "mlflow_aws.managed_objects")}  # fmt: skip


def counts(db: MariaDB) -> tuple[int, int]:
    schemata = db.query("SELECT COUNT(*) FROM information_schema.SCHEMATA")[0][0]
    users = db.query("SELECT COUNT(*) FROM mysql.user")[0][0]
    return int(schemata), int(users)


def ddl_counters(db: MariaDB) -> dict[str, int]:
    """Server-wide counts of statements that would change schemata, users or grants."""
    names = ("Com_create_db", "Com_drop_db", "Com_alter_db", "Com_create_user", "Com_drop_user",
             "Com_alter_user", "Com_grant", "Com_revoke", "Com_revoke_all", "Com_insert",
             "Com_delete")  # fmt: skip
    rows = db.query("SHOW GLOBAL STATUS WHERE Variable_name IN %s", (names,))
    return {str(k): int(v) for k, v in rows}


def user_connect(db: MariaDB, user: str, password: str, database: str | None = None) -> Any:
    return db.connect(user=user, password=password, database=database)


def login_error(db: MariaDB, user: str, password: str, database: str | None = None) -> int | None:
    """None when the login works, else the MySQL error code."""
    try:
        with contextlib.closing(user_connect(db, user, password, database)):
            return None
    except pymysql.err.MySQLError as exc:
        return int(exc.args[0])


def no_plain_secrets(outs: dict[str, Any], *values: str) -> None:
    """Each secret value occurs only inside a secret wrapper."""
    visible = {k: v for k, v in outs.items() if not is_secret(v)}
    text = json.dumps(visible)
    for value in values:
        assert value not in text


def sent_since(data_api: DataApiEmulator, mark: int) -> list[str]:
    return [body.get("sql", op) for op, body in data_api.requests[mark:]]


def changing(statements: list[str]) -> list[str]:
    """The statements among ``statements`` that change something (anything but a SELECT)."""
    return [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "SHOW"))]


# -- lifecycle --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["engine-plain", "secret-wrapped"])
def test_full_lifecycle(
    mariadb: MariaDB,
    client: ProviderClient,
    wrapped_client: ProviderClient,
    data_api: DataApiEmulator,
    news: Any,
    wrapped: bool,
) -> None:
    c = wrapped_client if wrapped else client
    project = "life-wrapped" if wrapped else "life-plain"
    schema, user = project.replace("-", "_"), "mlflow_" + project.replace("-", "_")
    props = news(project, "pw-One.1-abcdef")

    # check: derives schema/username, normalises, keeps secrets as given, sends nothing
    mark = len(data_api.requests)
    inputs, failures = c.check(props)
    assert failures == []
    assert len(data_api.requests) == mark
    assert (inputs["schema"], inputs["username"]) == (schema, user)
    assert inputs["drop_data_on_remove"] is False and inputs["adopt_existing_schema"] is False
    assert inputs["max_user_connections"] == 50
    assert is_secret(inputs["password"]) == wrapped

    # create, through the Data API only
    id_, outs = c.create(inputs)
    assert id_ == schema
    assert schema_collation(mariadb, schema) == COLLATION
    assert outs["collation"] == COLLATION and outs["user_exists"] is True
    assert outs["grants"] == sorted(f"{schema}.*: {p}" for p in PROJECT_PRIVILEGES)
    assert outs["grants_ok"] is True and outs["adopted_schema"] is False
    assert {("schema", schema), ("user", user)} <= recorded(mariadb)
    assert {op for op, _ in data_api.requests[mark:]} <= {
        "ExecuteStatement", "BeginTransaction", "CommitTransaction"}  # fmt: skip
    # the password is a secret in the state whatever the engine sent; no admin password at all
    assert is_secret(outs["password"])
    assert not {"admin_password", "admin_host"} & set(outs)
    no_plain_secrets(outs, "pw-One.1-abcdef", mariadb.admin_password)
    assert login_error(mariadb, user, "pw-One.1-abcdef", schema) is None
    # the password travelled only inside CREATE USER's literal: never as a parameter value
    bodies = [body for _, body in data_api.requests[mark:]]
    assert all("pw-One.1-abcdef" not in json.dumps(b.get("parameters", [])) for b in bodies)
    carrying = [b["sql"] for b in bodies if "pw-One.1-abcdef" in b.get("sql", "")]
    assert carrying and all(s.startswith(("CREATE USER", "ALTER USER")) for s in carrying)

    # read (refresh) reports the live state
    read_id, read_outs = c.read(id_, outs)
    assert read_id == id_
    assert read_outs["collation"] == COLLATION and read_outs["grants_ok"] is True
    assert is_secret(read_outs["password"])

    # diff: nothing changed
    assert c.diff(id_, outs, inputs).changes == "DIFF_NONE"
    # password, cluster, admin secret, flags, limit -> in-place update
    for change in (
        {"password": secret("pw-Two.2-abcdef")},
        {"cluster_arn": CLUSTER_ARN.replace("mlflow-aws-test", "other")},
        {"admin_secret_arn": inputs["admin_secret_arn"] + "x"},
        {"drop_data_on_remove": True},
        {"adopt_existing_schema": True},
        {"max_user_connections": 20},
    ):
        d = c.diff(id_, outs, dict(inputs, **change))
        assert (d.changes, d.replaces) == ("DIFF_SOME", []), change
    # another project (so another schema and user) -> replace, deleting first
    other = checked(c, news("life-other"))
    d = c.diff(id_, outs, other)
    assert d.changes == "DIFF_SOME"
    assert set(d.replaces) == {"project", "schema", "username"}
    assert d.delete_before_replace is True

    # update rotates the password in place and applies the connection limit
    new_inputs = checked(c, dict(props, password=secret("pw-Two.2-abcdef"), max_user_connections=7))
    outs2 = c.update(id_, outs, new_inputs)
    assert login_error(mariadb, user, "pw-One.1-abcdef", schema) == 1045
    assert login_error(mariadb, user, "pw-Two.2-abcdef", schema) is None
    assert mariadb.query("SELECT max_user_connections FROM mysql.user WHERE User = %s",
                         (user,)) == [(7,)]  # fmt: skip
    assert is_secret(outs2["password"]) and plain(outs2["password"]) == "pw-Two.2-abcdef"
    no_plain_secrets(outs2, "pw-One.1-abcdef", "pw-Two.2-abcdef", mariadb.admin_password)
    assert c.diff(id_, outs2, new_inputs).changes == "DIFF_NONE"

    # delete: user gone (and forgotten), schema kept (and still recorded); twice is fine
    c.delete(id_, outs2)
    assert not user_exists(mariadb, user)
    assert schema_collation(mariadb, schema) == COLLATION
    assert ("user", user) not in recorded(mariadb) and ("schema", schema) in recorded(mariadb)
    c.delete(id_, outs2)


def test_password_rotation_ends_old_sessions_on_delete(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    props = news("rotate", "pw-Old.1-abcdef")
    id_, outs = create(client, props)
    outs = client.update(id_, outs, checked(client, dict(props, password="pw-New.2-abcdef")))
    assert login_error(mariadb, "mlflow_rotate", "pw-Old.1-abcdef") == 1045
    assert login_error(mariadb, "mlflow_rotate", "pw-New.2-abcdef", "rotate") is None
    # an open session of the user does not survive the project's removal
    session = user_connect(mariadb, "mlflow_rotate", "pw-New.2-abcdef", "rotate")
    try:
        client.delete(id_, outs)
        with pytest.raises(pymysql.err.MySQLError), session.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            session.close()


def test_the_connection_limit_holds(mariadb: MariaDB, client: ProviderClient, news: Any) -> None:
    id_, outs = create(client, news("limited", max_user_connections=2))
    sessions = [user_connect(mariadb, "mlflow_limited", PW, "limited") for _ in range(2)]
    try:
        assert login_error(mariadb, "mlflow_limited", PW, "limited") == 1226  # too many
    finally:
        for session in sessions:
            session.close()
    client.delete(id_, outs)


# -- the guards: what the provider will not touch -------------------------------------------


def test_an_unrecorded_existing_account_is_never_adopted(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    """Someone else's account named like a project's user keeps its password and grants."""
    mariadb.query("CREATE USER mlflow_squat@'%' IDENTIFIED BY 'their-Own.Pw-1'")
    mariadb.query("CREATE SCHEMA IF NOT EXISTS theirs")
    mariadb.query("GRANT SELECT ON theirs.* TO mlflow_squat@'%'")
    try:
        before, mark = ddl_counters(mariadb), len(data_api.requests)
        with pytest.raises(ProviderCallError) as info:
            create(client, news("squat"))
        assert "refusing to adopt MySQL user mlflow_squat" in info.value.details
        assert "did not create it" in info.value.details
        assert changing(sent_since(data_api, mark)) == []  # it looked, and changed nothing
        assert ddl_counters(mariadb) == before
        assert login_error(mariadb, "mlflow_squat", "their-Own.Pw-1", "theirs") is None
        assert schema_collation(mariadb, "squat") is None
    finally:
        mariadb.query("DROP USER IF EXISTS mlflow_squat@'%'")


def test_an_account_with_global_privileges_is_never_adopted_even_if_recorded(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    id_, outs = create(client, news("powerful"))  # ours, recorded...
    mariadb.query("GRANT PROCESS, RELOAD ON *.* TO mlflow_powerful@'%'")  # ...then escalated
    try:
        client.delete(id_, outs)  # refused: an mlflow-aws user never has global privileges
    except ProviderCallError as exc:
        assert "holds global privileges (PROCESS, RELOAD)" in exc.details
    else:
        raise AssertionError("delete dropped an account holding global privileges")
    before, mark = ddl_counters(mariadb), len(data_api.requests)
    for call in (
        lambda: create(client, news("powerful")),
        lambda: client.update(id_, outs, checked(client, news("powerful", "pw-Other.9-abcd"))),
    ):
        with pytest.raises(ProviderCallError, match="holds global privileges"):
            call()
    assert changing(sent_since(data_api, mark)) == []
    assert ddl_counters(mariadb) == before
    assert login_error(mariadb, "mlflow_powerful", PW) is None  # its password untouched
    mariadb.query("DROP USER mlflow_powerful@'%'")
    client.delete(id_, outs)


def test_an_unrecorded_schema_needs_adopt_existing_schema(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, server: ProviderServer,
    news: Any
) -> None:  # fmt: skip
    mariadb.query("CREATE SCHEMA legacy CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    mariadb.query("CREATE TABLE legacy.t (k VARCHAR(20) PRIMARY KEY, v INT)")
    mariadb.query("INSERT INTO legacy.t VALUES ('a', 1), ('b', 2)")

    before, mark = ddl_counters(mariadb), len(data_api.requests)
    with pytest.raises(ProviderCallError) as info:
        create(client, news("legacy"))
    assert "refusing to take over schema legacy" in info.value.details
    assert "adoptExistingSchema: true" in info.value.details
    assert changing(sent_since(data_api, mark)) == [] and ddl_counters(mariadb) == before
    assert not user_exists(mariadb, "mlflow_legacy")

    id_, outs = create(client, news("legacy", adopt_existing_schema=True))
    assert outs["adopted_schema"] is True
    assert outs["previous_collation"] == "utf8mb4_general_ci"
    assert schema_collation(mariadb, "legacy") == COLLATION  # fixed with ALTER SCHEMA
    assert "had default collation utf8mb4_general_ci" in server.stderr()
    assert mariadb.query("SELECT k, v FROM legacy.t ORDER BY k") == [("a", 1), ("b", 2)]
    assert ("schema", "legacy") in recorded(mariadb)  # adopted once, ours from now on
    client.delete(id_, outs)
    assert mariadb.query("SELECT COUNT(*) FROM legacy.t") == [(2,)]


def test_the_provider_never_touches_the_account_it_runs_as(
    mariadb: MariaDB, moto: MotoServer, client: ProviderClient, data_api: DataApiEmulator,
    news: Any
) -> None:  # fmt: skip
    """The Data API runs as the admin secret's user; a project mapping onto it (here a second
    admin, mlflow_guard, so the name rule does not stop it first) is refused before anything."""
    mariadb.query("CREATE USER mlflow_guard@'%' IDENTIFIED BY 'guard-Admin.Pw-1'")
    mariadb.query("GRANT ALL PRIVILEGES ON *.* TO mlflow_guard@'%' WITH GRANT OPTION")
    secrets = boto3.client("secretsmanager", endpoint_url=moto.endpoint_url, region_name=REGION,
                           aws_access_key_id="t", aws_secret_access_key="t")  # fmt: skip
    guard_arn = secrets.create_secret(
        Name="mlflow-aws/test/guard-admin",
        SecretString=json.dumps({"username": "mlflow_guard", "password": "guard-Admin.Pw-1"}),
    )["ARN"]
    try:
        before, mark = ddl_counters(mariadb), len(data_api.requests)
        props = news("guard", admin_secret_arn=guard_arn)
        state = {**checked(client, props), "user_exists": True, "grants_ok": True}
        for call in (
            lambda: client.create(checked(client, props)),
            lambda: client.update("guard", state, checked(client, props)),
            lambda: client.delete("guard", {**state, "drop_data_on_remove": True}),
        ):
            with pytest.raises(ProviderCallError, match="the account the provider itself runs as"):
                call()
        assert changing(sent_since(data_api, mark)) == []
        assert ddl_counters(mariadb) == before
        assert login_error(mariadb, "mlflow_guard", "guard-Admin.Pw-1") is None
    finally:
        mariadb.query("DROP USER IF EXISTS mlflow_guard@'%'")


def _observed(**overrides: Any) -> Observed:
    fields: dict[str, Any] = dict(
        current_user="mlflow_admin", collation=None, user_exists=False,
        global_privileges=(), schema_privileges=(), object_privileges=0, recorded_schema=False,
        recorded_user=False,
    )  # fmt: skip
    fields.update(overrides)
    return Observed(**fields)


def test_no_decision_alters_revokes_or_drops_the_master_user() -> None:
    """Invariant over every decision and every state the provider can see: no statement ever
    names the account it runs as, or an account holding global privileges."""
    situations = [
        _observed(**{"user_exists": u, "recorded_user": ru, "collation": c, "recorded_schema": rs,
                     "global_privileges": g})
        for u in (False, True) for ru in (False, True) for c in (None, COLLATION, "latin1_bin")
        for rs in (False, True) for g in ((), ("SUPER",))
    ]  # fmt: skip
    for name in ("churn", "fraud-v2", "admin-2"):
        ids = validate_name(name)
        as_itself = validate_name("x")  # the provider connected as mlflow_x
        for seen in situations:
            for decide in (
                partial(decide_create, Desired(ids, PW)),
                partial(decide_change, Desired(ids, PW)),
                partial(decide_delete, ids, drop_data=True),
            ):
                try:
                    steps = decide(seen)
                except Refused:
                    continue
                assert not seen.global_privileges or not seen.user_exists
                for step in steps:
                    sql = step.statement.sql + (step.undo.sql if step.undo else "")
                    assert "mlflow_admin`" not in sql and "'mlflow_admin'" not in sql
            mine = _observed(current_user="mlflow_x", user_exists=seen.user_exists)
            for refuse in (
                partial(decide_create, Desired(as_itself, PW), mine),
                partial(decide_change, Desired(as_itself, PW), mine),
                partial(decide_delete, as_itself, mine, True),
            ):
                with pytest.raises(Refused, match="runs as"):
                    refuse()


def test_the_stacks_assumed_roles_sign_every_data_api_call(
    data_api: DataApiEmulator, moto: MotoServer, news: Any, mariadb: MariaDB
) -> None:
    """Issue 15, finding 7: with aws:assumeRoles the AWS provider runs as the assumed role; the
    schema provider (its own boto3 client) ran its Data API calls as the environment's identity
    instead. Now it assumes the same roles first: no call is signed with the deployer's key."""
    env = {**provider_environment(data_api), "AWS_ENDPOINT_URL_STS": moto.endpoint_url}
    roles = [{"role_arn": "arn:aws:iam::123456789012:role/deployer", "session_name": "pulumi-up",
              "duration_seconds": 900.0}]  # fmt: skip
    with provider_server(env) as srv:
        client = srv.client(MysqlSchemaProvider(), wrap_secrets=False)
        inputs, failures = client.check(news("assumed", assume_roles=roles))
        assert failures == []
        mark = len(data_api.requests)
        id_, outs = client.create(inputs)
        assert user_exists(mariadb, "mlflow_assumed")
        client.delete(id_, outs)
        keys = set(data_api.access_keys[mark:])
    deployer = provider_environment(data_api)["AWS_ACCESS_KEY_ID"]
    assert keys and deployer not in keys, keys
    assert all(k.startswith("ASIA") for k in keys), keys  # STS session credentials


def test_assumed_roles_are_checked_before_any_request(
    client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    mark = len(data_api.requests)
    for roles, reason in (
        ([{"role_arn": "deployer"}], "is not a role ARN"),
        ([{"role_arn": "arn:aws:iam::123456789012:role/d", "mfa_serial": "x"}], "unknown field"),
        ("arn:aws:iam::123456789012:role/d", "must be a list"),
    ):
        _, failures = client.check(news("roles", assume_roles=roles))
        assert [(prop, reason in text) for prop, text in failures] == [("assume_roles", True)]
    assert data_api.requests[mark:] == []


def every_statement() -> list[Any]:
    """Every statement the provider can send, over every state it can see."""
    from projects.schema_sql import (
        ensure_registry,
        forget,
        inspection,
        kill_session,
        record,
        registry_lookup,
        sessions_of,
    )

    ids = validate_name("fraud-v2")
    found = [*inspection(ids).values(), registry_lookup(ids), sessions_of(ids.username),
             *kill_session(7), record(ids, "user", ids.username), forget("user", ids.username),
             *(step.statement for step in ensure_registry())]  # fmt: skip
    situations = [
        _observed(user_exists=u, recorded_user=u, collation=c, recorded_schema=c is not None)
        for u in (False, True) for c in (None, COLLATION, "latin1_bin")
    ]  # fmt: skip
    for seen in situations:
        for steps in (decide_create(Desired(ids, PW), seen), decide_change(Desired(ids, PW), seen),
                      decide_delete(ids, seen, drop_data=True)):  # fmt: skip
            found += [s.statement for s in steps] + [s.undo for s in steps if s.undo]
    return found


def test_each_named_parameter_is_used_once_and_bound() -> None:
    """Issue 15, finding 10: the RDS Data API documents named parameters (SqlParameter) but not
    one name bound at several places in a statement, so each use gets its own name (the
    inspection query used :grantee three times). The emulator refuses a reused name too."""
    from tests.support.data_api_emulator import placeholders

    for statement in every_statement():
        _, names, _ = placeholders(statement.sql)
        assert len(names) == len(set(names)), f"{names} in {statement}"
        assert set(names) == set(statement.params), statement


# -- check ------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "churn; DROP DATABASE mysql; --",
    "churn`; DROP USER `mlflow_admin",
    "a`b",
    "x'y",
    "churn' OR '1'='1",
    "сhurn",  # Cyrillic с
    "churn\u200b",  # zero-width space
    "churn\x00",
    "Churn",
    "churn_x",
    "../etc",
    "%",
    "mysql",
    "information-schema",
    "admin",  # the master user mlflow_admin
    "mlflow-aws",  # the registry schema
    "rdsadmin",
    "root",
    "a" * 25,
    "",
]


def test_hostile_names_refused_by_check_without_any_request(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    before_counts, before_ddl, mark = counts(mariadb), ddl_counters(mariadb), len(data_api.requests)
    for name in HOSTILE_NAMES:
        _, failures = client.check(news(name))
        assert [p for p, _ in failures] == ["project"], (name, failures)
        reason = failures[0][1]
        assert RULE in reason or "reserved" in reason, reason
    _, failures = client.check(dict(news("x"), project=42))
    assert [p for p, _ in failures] == ["project"]
    assert data_api.requests[mark:] == []  # check never calls AWS
    assert counts(mariadb) == before_counts
    assert ddl_counters(mariadb) == before_ddl


def test_tampered_state_is_refused_before_any_request(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    """Create/Delete re-validate names themselves: a hostile name that skipped check
    (hand-edited state, a buggy caller) never reaches the Data API."""
    before, mark = (counts(mariadb), ddl_counters(mariadb)), len(data_api.requests)
    for name in ("x`; DROP DATABASE mysql; --", "admin"):
        props = news(name, schema="x", username="mlflow_x")
        for call in (partial(client.create, props), partial(client.delete, "x", props)):
            with pytest.raises(ProviderCallError) as info:
                call()
            assert RULE in info.value.details or "reserved" in info.value.details
    mismatch = news("ok", schema="mysql", username="mlflow_ok")
    with pytest.raises(ProviderCallError, match="do not match project"):
        client.create(mismatch)
    assert data_api.requests[mark:] == []
    assert (counts(mariadb), ddl_counters(mariadb)) == before
    for bad in ("a`b", "A", "a-b", "", "a" * 65, "x'y", None, 1):
        with pytest.raises(SchemaProviderError):
            quote_identifier(bad)
    assert quote_identifier("churn_v2") == "`churn_v2`"


def test_check_validates_and_normalises(client: ProviderClient, news: Any) -> None:
    inputs, failures = client.check(news("norm", max_user_connections=20.0))
    assert failures == []
    assert inputs["max_user_connections"] == 20  # a whole number (floats on the wire)
    assert inputs["resume_wait_seconds"] == 5

    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_user_connections": 0}, "max_user_connections"),
        ({"max_user_connections": 2.5}, "max_user_connections"),
        ({"max_user_connections": True}, "max_user_connections"),
        ({"schema": "other"}, "schema"),
        ({"username": "root"}, "username"),
        ({"password": secret("")}, "password"),
        ({"password": secret("short-1")}, "password"),
        ({"password": secret("has'quote-1234567")}, "password"),  # it becomes a SQL literal
        ({"password": secret("has\\backslash-123")}, "password"),
        ({"cluster_arn": "arn:aws:rds:eu-west-1:123456789012:db:instance"}, "cluster_arn"),
        ({"admin_secret_arn": "mlflow-aws/dev/admin"}, "admin_secret_arn"),
        ({"drop_data_on_remove": "yes"}, "drop_data_on_remove"),
        ({"adopt_existing_schema": 1}, "adopt_existing_schema"),
        ({"resume_wait_seconds": -1}, "resume_wait_seconds"),
        ({"aws_profile": 7}, "aws_profile"),
        ({"admin_host": "db.example"}, "admin_host"),  # the old inputs are not inputs any more
        ({"surprise": 1}, "surprise"),
    ]
    for override, prop in cases:
        _, failures = client.check(news("norm", **override))
        assert [p for p, _ in failures] == [prop], (override, failures)
    missing = news("norm")
    del missing["admin_secret_arn"]
    _, failures = client.check(missing)
    assert [p for p, _ in failures] == ["admin_secret_arn"]


def test_check_tolerates_unknowns_during_preview(client: ProviderClient, news: Any) -> None:
    props = news("preview", cluster_arn=UNKNOWN, admin_secret_arn=UNKNOWN, password=UNKNOWN,
                 schema=UNKNOWN)  # fmt: skip
    inputs, failures = client.check(props)
    assert failures == []
    assert inputs["cluster_arn"] == UNKNOWN
    _, outs = create(client, news("preview"))
    d = client.diff("preview", outs, dict(checked(client, news("preview")), schema=UNKNOWN))
    assert d.changes == "DIFF_SOME" and d.replaces == ["schema"]
    client.delete("preview", outs)


# -- from the previous main (the provider connected to MySQL itself) --------------------------


def test_a_stack_from_before_the_data_api_updates_in_place(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    """The state of a project made by the old provider: pulumi up diffs it against the new
    inputs as an in-place update (no replace, so no drop), and the update takes it over."""
    mariadb.query("CREATE SCHEMA oldmain CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    mariadb.query("CREATE TABLE oldmain.runs (k INT)")
    mariadb.query("INSERT INTO oldmain.runs VALUES (1)")
    mariadb.query("CREATE USER mlflow_oldmain@'%' IDENTIFIED BY 'pw-Old.Main-123'")
    mariadb.query("GRANT ALL PRIVILEGES ON `oldmain`.* TO mlflow_oldmain@'%'")
    old_state = {  # exactly what the previous provider's create returned
        "project": "oldmain", "schema": "oldmain", "username": "mlflow_oldmain",
        "password": secret("pw-Old.Main-123"), "admin_host": "db.example", "admin_port": 3306,
        "admin_username": "mlflow_admin", "admin_password": secret("old-Admin.Pw"),
        "drop_data_on_remove": False, "ssl_ca": None, "connect_timeout": 10.0,
        "connect_retry_seconds": 30.0, "collation": COLLATION, "user_exists": True,
        "grants": ["GRANT ALL PRIVILEGES ON `oldmain`.* TO `mlflow_oldmain`@`%`"],
        "grants_ok": True, "adopted_schema": False,
    }  # fmt: skip
    new_inputs = checked(client, news("oldmain", "pw-Old.Main-123"))
    d = client.diff("oldmain", old_state, new_inputs)
    assert (d.changes, d.replaces) == ("DIFF_SOME", [])

    # refresh or removal before that update: a clear message, nothing sent
    mark = len(data_api.requests)
    for call in (lambda: client.read("oldmain", old_state),
                 lambda: client.delete("oldmain", old_state)):  # fmt: skip
        with pytest.raises(ProviderCallError, match="Run `pulumi up` once"):
            call()
    assert data_api.requests[mark:] == []

    outs = client.update("oldmain", old_state, new_inputs)
    assert outs["grants_ok"] is True and not {"admin_password", "admin_host"} & set(outs)
    assert {("schema", "oldmain"), ("user", "mlflow_oldmain")} <= recorded(mariadb)
    assert mariadb.query("SELECT k FROM oldmain.runs") == [(1,)]
    assert login_error(mariadb, "mlflow_oldmain", "pw-Old.Main-123", "oldmain") is None
    client.delete("oldmain", outs)


# -- adoption and removal ---------------------------------------------------------------------


def test_removal_keeps_mlflow_data_and_readding_adopts_it(
    mariadb: MariaDB, client: ProviderClient, news: Any, tmp_path: Any
) -> None:
    """Also proves the project user's privileges are enough for every MLflow migration."""
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    id_, outs = create(client, news("keep", "pw-Keep.1-abcdef"))
    store = SqlAlchemyStore(
        mariadb.url("mlflow_keep", "pw-Keep.1-abcdef", "keep"), str(tmp_path / "artifacts")
    )
    upper = store.create_experiment("LR")
    lower = store.create_experiment("lr")  # distinct only with a case-sensitive collation
    run = store.create_run(upper, "u", 0, [], "r1")
    store.log_metric(run.info.run_id, Metric("loss", 0.25, 1, 0))
    store.engine.dispose()

    client.delete(id_, outs)  # the project is removed from config
    assert not user_exists(mariadb, "mlflow_keep")
    assert login_error(mariadb, "mlflow_keep", "pw-Keep.1-abcdef", "keep") == 1045
    assert sorted(r[0] for r in mariadb.query("SELECT name FROM keep.experiments")) == [
        "Default",
        "LR",
        "lr",
    ]

    id_, outs = create(client, news("keep", "pw-Back.2-abcdef"))  # re-added: recorded schema
    assert outs["adopted_schema"] is True
    store = SqlAlchemyStore(
        mariadb.url("mlflow_keep", "pw-Back.2-abcdef", "keep"), str(tmp_path / "artifacts")
    )
    try:
        assert store.get_experiment(upper).name == "LR"
        assert store.get_experiment(lower).name == "lr"
        history = store.get_metric_history(run.info.run_id, "loss")
        assert [m.value for m in history] == [0.25]
    finally:
        store.engine.dispose()
    client.delete(id_, outs)


def test_drop_data_on_remove_drops_the_schema(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    id_, outs = create(client, news("dropme", drop_data_on_remove=True))
    mariadb.query("CREATE TABLE dropme.t (k INT)")
    mariadb.query("INSERT INTO dropme.t VALUES (1)")
    client.delete(id_, outs)
    assert schema_collation(mariadb, "dropme") is None
    assert not user_exists(mariadb, "mlflow_dropme")
    assert not {("schema", "dropme"), ("user", "mlflow_dropme")} & recorded(mariadb)
    client.delete(id_, outs)  # idempotent


def test_delete_is_idempotent_even_after_out_of_band_changes(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    id_, outs = create(client, news("twice"))
    mariadb.query("DROP USER mlflow_twice@'%'")
    client.delete(id_, outs)
    client.delete(id_, outs)
    assert schema_collation(mariadb, "twice") == COLLATION


def test_read_reports_gone_after_out_of_band_drop(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    id_, outs = create(client, news("vanish"))
    mariadb.query("DROP SCHEMA vanish")
    read_id, read_outs = client.read(id_, outs)
    assert read_id == ""
    assert set(read_outs) == {"__provider"}  # outs={}; the server adds only the provider
    client.delete(id_, outs)
    assert not user_exists(mariadb, "mlflow_vanish")


def test_refresh_sees_drift_and_update_repairs_it(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    props = news("drift", "pw-Drift.1-abcdef")
    id_, outs = create(client, props)
    inputs = checked(client, props)
    mariadb.query("REVOKE ALL PRIVILEGES ON drift.* FROM mlflow_drift@'%'")
    mariadb.query("GRANT SELECT ON mysql.* TO mlflow_drift@'%'")  # and a grant elsewhere
    mariadb.query("ALTER SCHEMA drift COLLATE utf8mb4_general_ci")
    _, refreshed = client.read(id_, outs)
    assert refreshed["grants_ok"] is False and refreshed["collation"] == "utf8mb4_general_ci"
    assert "mysql.*: SELECT" in refreshed["grants"]
    assert client.diff(id_, refreshed, inputs).changes == "DIFF_SOME"
    repaired = client.update(id_, refreshed, inputs)
    assert repaired["grants_ok"] is True and repaired["collation"] == COLLATION
    assert login_error(mariadb, "mlflow_drift", "pw-Drift.1-abcdef", "drift") is None
    assert login_error(mariadb, "mlflow_drift", "pw-Drift.1-abcdef", "mysql") == 1044
    mariadb.query("DROP USER mlflow_drift@'%'")
    _, refreshed = client.read(id_, repaired)
    assert refreshed["user_exists"] is False
    assert client.diff(id_, refreshed, inputs).changes == "DIFF_SOME"
    repaired = client.update(id_, refreshed, inputs)
    assert login_error(mariadb, "mlflow_drift", "pw-Drift.1-abcdef", "drift") is None
    client.delete(id_, repaired)


# -- isolation and collation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        ("iso-a", "iso-b"),
        # Schema "us_x": in GRANT ... ON `us_x`.* an unescaped "_" matches any character,
        # which would hand project "us-x" the schema of the valid project "us1x".
        ("us-x", "us1x"),
    ],
)
def test_project_users_cannot_touch_each_others_schemas(
    mariadb: MariaDB, client: ProviderClient, news: Any, mine: str, theirs: str
) -> None:
    my_schema, their_schema = mine.replace("-", "_"), theirs.replace("-", "_")
    my_user = f"mlflow_{my_schema}"
    id_a, outs_a = create(client, news(mine, "pw-A.1-abcdefgh"))
    id_b, outs_b = create(client, news(theirs, "pw-B.1-abcdefgh"))
    mariadb.query(f"CREATE TABLE {their_schema}.secrets (k VARCHAR(10) PRIMARY KEY)")
    mariadb.query(f"INSERT INTO {their_schema}.secrets VALUES ('b-only')")
    conn = user_connect(mariadb, my_user, "pw-A.1-abcdefgh", my_schema)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("CREATE TABLE mine (k INT)")  # its own schema: what MLflow needs
        cur.execute("INSERT INTO mine VALUES (1)")
        for sql in (
            f"SELECT * FROM {their_schema}.secrets",
            f"INSERT INTO {their_schema}.secrets VALUES ('a-was-here')",
            f"DELETE FROM {their_schema}.secrets",
            f"CREATE TABLE {their_schema}.intruder (k INT)",
            f"DROP TABLE {their_schema}.secrets",
            f"USE {their_schema}",
            "SELECT * FROM mysql.user",
            "SELECT * FROM mlflow_aws.managed_objects",
            "CREATE DATABASE sneaky",
            "CREATE PROCEDURE p() SELECT 1",  # no routines, events or triggers either
        ):
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute(sql)
            assert info.value.args[0] in ACCESS_DENIED, (sql, info.value)
        cur.execute("SHOW DATABASES")
        visible = {r[0] for r in cur.fetchall()}
        assert their_schema not in visible and my_schema in visible
    assert login_error(mariadb, my_user, "pw-A.1-abcdefgh", their_schema) == 1044
    assert mariadb.query(f"SELECT k FROM {their_schema}.secrets") == [("b-only",)]
    # read sees the (escaped) grant as the right one: no drift reported, nothing to repair
    assert client.read(id_a, outs_a)[1]["grants_ok"] is True
    client.delete(id_a, outs_a)
    client.delete(id_b, outs_b)


def test_keys_differing_only_in_case_are_distinct(
    mariadb: MariaDB, client: ProviderClient, news: Any
) -> None:
    id_, outs = create(client, news("cases"))
    assert schema_collation(mariadb, "cases") == "utf8mb4_bin"
    conn = user_connect(mariadb, "mlflow_cases", PW, "cases")
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("CREATE TABLE params (k VARCHAR(250) PRIMARY KEY, v TEXT)")  # default coll.
        cur.execute("INSERT INTO params VALUES ('LR', 'upper'), ('lr', 'lower')")
        cur.execute("SELECT v FROM params WHERE k = 'lr'")
        assert cur.fetchall() == (("lower",),)
    # control: the server's default collation would have refused the second key
    mariadb.query("CREATE SCHEMA IF NOT EXISTS cases_ci CHARACTER SET utf8mb4")
    mariadb.query("CREATE TABLE IF NOT EXISTS cases_ci.params (k VARCHAR(250) PRIMARY KEY)")
    with pytest.raises(pymysql.err.IntegrityError):
        mariadb.query("INSERT INTO cases_ci.params VALUES ('LR'), ('lr')")
    client.delete(id_, outs)


# -- the Data API: resuming, errors, failures half-way ---------------------------------------


def test_create_waits_for_a_cluster_that_is_resuming(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, server: ProviderServer,
    news: Any
) -> None:  # fmt: skip
    """Aurora resuming from auto-pause: DatabaseResumingException for a while, then service."""
    data_api.pause(2.5)
    mark = len(data_api.requests)
    id_, outs = create(client, news("resume", resume_wait_seconds=30))
    assert sum(1 for op, _ in data_api.requests[mark:] if op == "ExecuteStatement") > 1
    assert "waiting for the Aurora cluster to resume from auto-pause" in server.stderr()
    assert schema_collation(mariadb, "resume") == COLLATION
    client.delete(id_, outs)


def test_a_cluster_that_does_not_resume_in_time_fails_clearly_and_changes_nothing(
    mariadb: MariaDB, client: ProviderClient, data_api: DataApiEmulator, news: Any
) -> None:
    data_api.pause(30)
    try:
        before = ddl_counters(mariadb)
        with pytest.raises(ProviderCallError) as info:
            create(client, news("asleep", resume_wait_seconds=2))
        assert "did not become available within 2s" in info.value.details
        assert "DatabaseResumingException" in info.value.details
        assert ddl_counters(mariadb) == before
    finally:
        data_api.pause(0)


def test_data_api_errors_are_named(client: ProviderClient, news: Any, admin_arn: str) -> None:
    wrong_cluster = news("nowhere", cluster_arn=CLUSTER_ARN.replace("mlflow-aws-test", "gone"))
    with pytest.raises(ProviderCallError) as info:
        create(client, wrong_cluster)
    assert "NotFoundException" in info.value.details and PW not in info.value.details
    missing_secret = news("nowhere", admin_secret_arn=admin_arn[:-6] + "ZZZZZZ")
    with pytest.raises(ProviderCallError) as info:
        create(client, missing_secret)
    assert "could not use the admin secret" in info.value.details


def test_the_emulator_refuses_what_aws_would() -> None:
    """The request checks of the emulator are real: they fail on what botocore never sends."""
    from tests.support.data_api_emulator import ApiError, placeholders, validate

    model = boto3.client("rds-data", region_name=REGION).meta.service_model
    shape = model.operation_model("ExecuteStatement").input_shape
    base = {"resourceArn": CLUSTER_ARN, "secretArn": "arn:aws:secretsmanager:x", "sql": "SELECT 1"}
    validate(shape, base, "ExecuteStatement")
    for bad in (
        {**base, "surprise": 1},
        {k: v for k, v in base.items() if k != "sql"},
        {**base, "parameters": [{"name": "a", "value": {"stringValue": "x", "longValue": 1}}]},
        {**base, "continueAfterTimeout": "yes"},
    ):
        with pytest.raises(ApiError):
            validate(shape, bad, "ExecuteStatement")
    assert placeholders("SELECT ':not' FROM t WHERE a = :a AND b = :b") == (
        "SELECT ':not' FROM t WHERE a = ? AND b = ?",
        ["a", "b"],
        False,
    )
    assert placeholders("SELECT 1; DROP TABLE t")[2] is True


def test_a_placeholder_where_mysql_takes_none_fails_as_on_aurora(
    data_api: DataApiEmulator, admin_arn: str
) -> None:
    """Why the password is a literal: IDENTIFIED BY takes no parameter in a prepared statement."""
    rds = boto3.client("rds-data", endpoint_url=data_api.endpoint_url, region_name=REGION,
                       aws_access_key_id="t", aws_secret_access_key="t")  # fmt: skip
    with pytest.raises(rds.exceptions.DatabaseErrorException, match="error code: 1064"):
        rds.execute_statement(
            resourceArn=CLUSTER_ARN,
            secretArn=admin_arn,
            sql="CREATE USER 'mlflow_param'@'%' IDENTIFIED BY :pw",
            parameters=[{"name": "pw", "value": {"stringValue": "pw-Param.1-abcdef"}}],
        )


@pytest.fixture
def limited_admin(mariadb: MariaDB, moto: MotoServer) -> Iterator[str]:
    """The ARN of an admin secret whose user can create schemas and users but lacks GRANT
    OPTION (and so fails half-way, at the GRANT)."""
    user, password = "half_admin", "half-Admin.1-abcdef"
    mariadb.query("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
    mariadb.query(f"GRANT CREATE, DROP, CREATE USER, PROCESS, SELECT ON *.* TO `{user}`@'%'")
    mariadb.query(f"GRANT INSERT, DELETE ON mlflow_aws.* TO `{user}`@'%'")
    secrets = boto3.client("secretsmanager", endpoint_url=moto.endpoint_url, region_name=REGION,
                           aws_access_key_id="t", aws_secret_access_key="t")  # fmt: skip
    arn = secrets.create_secret(
        Name=f"mlflow-aws/test/half-admin-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps({"username": user, "password": password}),
    )["ARN"]
    try:
        yield str(arn)
    finally:
        mariadb.query(f"DROP USER IF EXISTS `{user}`@'%'")


def test_failed_create_leaves_nothing_behind(
    mariadb: MariaDB, client: ProviderClient, news: Any, limited_admin: str
) -> None:
    before_counts, before_recorded = counts(mariadb), recorded(mariadb)
    with pytest.raises(ProviderCallError) as info:
        create(client, news("half", admin_secret_arn=limited_admin))
    assert "GRANT" in info.value.details  # it got as far as the grant
    assert PW not in info.value.details
    assert schema_collation(mariadb, "half") is None
    assert not user_exists(mariadb, "mlflow_half")
    assert counts(mariadb) == before_counts
    assert recorded(mariadb) == before_recorded


def test_failed_create_never_drops_an_adopted_schema(
    mariadb: MariaDB, client: ProviderClient, news: Any, limited_admin: str
) -> None:
    mariadb.query("CREATE SCHEMA halfkeep CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    mariadb.query("CREATE TABLE halfkeep.runs (k INT)")
    mariadb.query("INSERT INTO halfkeep.runs VALUES (1), (2), (3)")
    with pytest.raises(ProviderCallError):
        create(client, news("halfkeep", admin_secret_arn=limited_admin,
                            adopt_existing_schema=True))  # fmt: skip
    assert mariadb.query("SELECT COUNT(*) FROM halfkeep.runs") == [(3,)]
    assert not user_exists(mariadb, "mlflow_halfkeep")
