"""The MySQL schema provider, for real: the SDK's provider server over gRPC against MariaDB.

Every test drives ``python -u -m pulumi.dynamic`` (started as the engine starts it) through
``tests.grpc_provider`` and checks the database itself with the admin connection, or by
connecting as the project's user.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from mlflow_aws.names import RULE
from projects.schema_provider import (
    COLLATION,
    MysqlSchemaProvider,
    SchemaProviderError,
    quote_identifier,
)
from tests.grpc_provider import (
    UNKNOWN,
    ProviderCallError,
    ProviderClient,
    ProviderServer,
    is_secret,
    plain,
    provider_server,
    secret,
)
from tests.services import MariaDB, free_port

pytestmark = pytest.mark.slow

ACCESS_DENIED = {1044, 1045, 1142, 1227}  # db / login / table / privilege denied


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with provider_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ProviderServer) -> ProviderClient:
    """Secrets travel plain: what the engine sends a provider that answered acceptSecrets=false."""
    return server.client(MysqlSchemaProvider(), wrap_secrets=False)


@pytest.fixture(scope="module")
def wrapped_client(server: ProviderServer) -> ProviderClient:
    """Secrets travel wrapped in the secret signature."""
    return server.client(MysqlSchemaProvider(), wrap_secrets=True)


def news_for(
    db: MariaDB,
    project: str,
    password: str = "pw-Initial.1",  # noqa: S107 (test-only, loopback)
    **overrides: Any,
) -> dict[str, Any]:
    news: dict[str, Any] = {
        "project": project,
        "password": secret(password),
        "admin_host": db.host,
        "admin_port": db.port,
        "admin_username": db.admin_user,
        "admin_password": secret(db.admin_password),
        "ssl_ca": str(db.ca_path),
        "connect_timeout": 5,
        "connect_retry_seconds": 0,
    }
    news.update(overrides)
    return news


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


def counts(db: MariaDB) -> tuple[int, int]:
    schemata = db.query("SELECT COUNT(*) FROM information_schema.SCHEMATA")[0][0]
    users = db.query("SELECT COUNT(*) FROM mysql.user")[0][0]
    return int(schemata), int(users)


def ddl_counters(db: MariaDB) -> dict[str, int]:
    """Server-wide counts of statements that would change schemata, users or grants."""
    names = ("Com_create_db", "Com_drop_db", "Com_alter_db", "Com_create_user", "Com_drop_user",
             "Com_alter_user", "Com_grant", "Com_revoke", "Com_revoke_all")  # fmt: skip
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


@contextlib.contextmanager
def connection_trap() -> Iterator[tuple[int, list[Any]]]:
    """A listening loopback port that records every connection made to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    seen: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(addr)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(2)
        sock.close()


# -- lifecycle --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["engine-plain", "secret-wrapped"])
def test_full_lifecycle(
    mariadb: MariaDB, client: ProviderClient, wrapped_client: ProviderClient, wrapped: bool
) -> None:
    c = wrapped_client if wrapped else client
    project = "life-wrapped" if wrapped else "life-plain"
    schema, user = project.replace("-", "_"), "mlflow_" + project.replace("-", "_")
    news = news_for(mariadb, project, "pw-One.1")

    # check: derives schema/username, normalises, keeps secrets as given, runs no SQL
    inputs, failures = c.check(news)
    assert failures == []
    assert (inputs["schema"], inputs["username"]) == (schema, user)
    assert inputs["drop_data_on_remove"] is False
    assert is_secret(inputs["password"]) == wrapped

    # create
    id_, outs = c.create(inputs)
    assert id_ == schema
    assert schema_collation(mariadb, schema) == COLLATION
    assert outs["collation"] == COLLATION and outs["user_exists"] is True
    # "_" escaped: in a GRANT's database name it would otherwise match any character
    pattern = schema.replace("_", "\\_")
    assert outs["grants"] == [f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO `{user}`@`%`"]
    assert outs["adopted_schema"] is False
    # passwords in the state are secrets whatever the engine sent, never plain
    assert is_secret(outs["password"]) and is_secret(outs["admin_password"])
    no_plain_secrets(outs, "pw-One.1", mariadb.admin_password)
    assert login_error(mariadb, user, "pw-One.1", schema) is None

    # read (refresh) reports the live state
    read_id, read_outs = c.read(id_, outs)
    assert read_id == id_
    assert read_outs["collation"] == COLLATION and read_outs["grants_ok"] is True
    assert is_secret(read_outs["password"]) and is_secret(read_outs["admin_password"])

    # diff: nothing changed
    assert c.diff(id_, outs, inputs).changes == "DIFF_NONE"
    # password → in-place update; admin endpoint/credentials and drop flag → update too
    for change in (
        {"password": secret("pw-Two.2")},
        {"admin_host": "localhost"},
        {"admin_port": 3307},
        {"admin_username": "other_admin"},
        {"admin_password": secret("another")},
        {"drop_data_on_remove": True},
    ):
        d = c.diff(id_, outs, dict(inputs, **change))
        assert (d.changes, d.replaces) == ("DIFF_SOME", []), change
    # another project (so another schema and user) → replace, deleting first
    other = checked(c, news_for(mariadb, "life-other"))
    d = c.diff(id_, outs, other)
    assert d.changes == "DIFF_SOME"
    assert set(d.replaces) == {"project", "schema", "username"}
    assert d.delete_before_replace is True

    # update rotates the password in place
    new_inputs = checked(c, dict(news, password=secret("pw-Two.2")))
    outs2 = c.update(id_, outs, new_inputs)
    assert login_error(mariadb, user, "pw-One.1", schema) == 1045
    assert login_error(mariadb, user, "pw-Two.2", schema) is None
    assert is_secret(outs2["password"]) and plain(outs2["password"]) == "pw-Two.2"
    no_plain_secrets(outs2, "pw-One.1", "pw-Two.2", mariadb.admin_password)
    assert c.diff(id_, outs2, new_inputs).changes == "DIFF_NONE"

    # delete: user gone, schema kept; twice is fine
    c.delete(id_, outs2)
    assert not user_exists(mariadb, user)
    assert schema_collation(mariadb, schema) == COLLATION
    c.delete(id_, outs2)


def test_password_rotation_ends_old_sessions_on_delete_and_old_password(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    news = news_for(mariadb, "rotate", "pw-Old.1")
    id_, outs = create(client, news)
    outs = client.update(id_, outs, checked(client, dict(news, password=secret("pw-New.2"))))
    assert login_error(mariadb, "mlflow_rotate", "pw-Old.1") == 1045
    assert login_error(mariadb, "mlflow_rotate", "pw-New.2", "rotate") is None
    # an open session of the user does not survive the project's removal
    session = user_connect(mariadb, "mlflow_rotate", "pw-New.2", "rotate")
    try:
        client.delete(id_, outs)
        with pytest.raises(pymysql.err.MySQLError), session.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        with contextlib.suppress(Exception):
            session.close()


# -- check ------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "churn; DROP DATABASE mysql; --",
    "churn`; DROP USER `mlflow_admin",
    "a`b",
    "x'y",
    'x"y',
    "churn' OR '1'='1",
    "churn/*",
    "churn\\",
    "сhurn",  # Cyrillic с
    "churn\u200b",  # zero-width space
    "ｃhurn",  # fullwidth c
    "churn\x00",
    "churn\n",
    " churn",
    "Churn",
    "CHURN",
    "churn_x",
    "churn-",
    "-churn",
    "churn--x",
    "1churn",
    "../etc",
    "%",
    "mysql",
    "information-schema",
    "performance_schema",
    "sys",
    "a" * 25,
    "",
]


def test_hostile_names_refused_by_check_without_any_sql(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    before_counts, before_ddl = counts(mariadb), ddl_counters(mariadb)
    with connection_trap() as (trap_port, connections):
        for name in HOSTILE_NAMES:
            for port in (mariadb.port, trap_port):  # a reachable database, and a trap
                _, failures = client.check(news_for(mariadb, name, admin_port=port))
                assert [p for p, _ in failures] == ["project"], (name, failures)
                reason = failures[0][1]
                assert RULE in reason or "reserved" in reason, reason
        # a non-string name too
        _, failures = client.check(dict(news_for(mariadb, "x"), project=42))
        assert [p for p, _ in failures] == ["project"]
        # and a valid one: check still connects to nothing
        _, failures = client.check(news_for(mariadb, "fine", admin_port=trap_port))
        assert failures == []
        time.sleep(0.2)
        assert connections == [], "check opened a connection"
    assert counts(mariadb) == before_counts
    assert ddl_counters(mariadb) == before_ddl


def test_tampered_state_is_refused_before_sql(mariadb: MariaDB, client: ProviderClient) -> None:
    """Create/Delete re-validate names themselves: a hostile name that skipped check
    (hand-edited state, a buggy caller) never reaches SQL."""
    before = counts(mariadb), ddl_counters(mariadb)
    props = news_for(mariadb, "x`; DROP DATABASE mysql; --", schema="x", username="mlflow_x")
    for call in (lambda: client.create(props), lambda: client.delete("x", props)):
        with pytest.raises(ProviderCallError) as info:
            call()
        assert RULE in info.value.details
    mismatch = news_for(mariadb, "ok", schema="mysql", username="mlflow_ok")
    with pytest.raises(ProviderCallError, match="do not match project"):
        client.create(mismatch)
    assert (counts(mariadb), ddl_counters(mariadb)) == before
    for bad in ("a`b", "A", "a-b", "", "a" * 65, "x'y", None, 1):
        with pytest.raises(SchemaProviderError):
            quote_identifier(bad)
    assert quote_identifier("churn_v2") == "`churn_v2`"


def test_check_validates_and_normalises(mariadb: MariaDB, client: ProviderClient) -> None:
    inputs, failures = client.check(news_for(mariadb, "norm", admin_port=3306.0))
    assert failures == []
    assert inputs["admin_port"] == 3306  # whole number (floats on the wire)
    assert inputs["connect_retry_seconds"] == 0

    cases: list[tuple[dict[str, Any], str]] = [
        ({"admin_port": 0}, "admin_port"),
        ({"admin_port": 65536}, "admin_port"),
        ({"admin_port": 3306.5}, "admin_port"),
        ({"admin_port": "3306"}, "admin_port"),
        ({"admin_port": True}, "admin_port"),
        ({"schema": "other"}, "schema"),
        ({"username": "root"}, "username"),
        ({"password": secret("")}, "password"),
        ({"admin_host": "db host"}, "admin_host"),
        ({"drop_data_on_remove": "yes"}, "drop_data_on_remove"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"surprise": 1}, "surprise"),
    ]
    for override, prop in cases:
        _, failures = client.check(news_for(mariadb, "norm", **override))
        assert [p for p, _ in failures] == [prop], (override, failures)
    missing = news_for(mariadb, "norm")
    del missing["admin_password"]
    _, failures = client.check(missing)
    assert [p for p, _ in failures] == ["admin_password"]


def test_check_tolerates_unknowns_during_preview(mariadb: MariaDB, client: ProviderClient) -> None:
    news = news_for(
        mariadb,
        "preview",
        admin_host=UNKNOWN,
        admin_port=UNKNOWN,
        admin_password=UNKNOWN,
        password=UNKNOWN,
        schema=UNKNOWN,
    )
    inputs, failures = client.check(news)
    assert failures == []
    assert inputs["admin_host"] == UNKNOWN and inputs["admin_port"] == UNKNOWN
    # an unknown new value may change anything: diff says so
    _, outs = create(client, news_for(mariadb, "preview"))
    d = client.diff("preview", outs, dict(checked(client, news_for(mariadb, "preview")),
                                          schema=UNKNOWN))  # fmt: skip
    assert d.changes == "DIFF_SOME" and d.replaces == ["schema"]
    client.delete("preview", outs)


# -- adoption and removal ---------------------------------------------------------------------


def test_create_adopts_existing_schema_and_user(
    mariadb: MariaDB, client: ProviderClient, server: ProviderServer
) -> None:
    mariadb.query("CREATE SCHEMA adopt CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    mariadb.query("CREATE TABLE adopt.t (k VARCHAR(20) PRIMARY KEY, v INT)")
    mariadb.query("INSERT INTO adopt.t VALUES ('a', 1), ('b', 2)")
    mariadb.query("CREATE USER mlflow_adopt@'%' IDENTIFIED BY 'stale-Pw.9'")
    mariadb.query("CREATE SCHEMA IF NOT EXISTS elsewhere")
    mariadb.query("GRANT SELECT ON elsewhere.* TO mlflow_adopt@'%'")

    id_, outs = create(client, news_for(mariadb, "adopt", "pw-Adopt.1"))
    assert outs["adopted_schema"] is True
    assert outs["previous_collation"] == "utf8mb4_general_ci"
    assert schema_collation(mariadb, "adopt") == COLLATION  # fixed with ALTER SCHEMA
    assert "had default collation utf8mb4_general_ci" in server.stderr()
    assert mariadb.query("SELECT k, v FROM adopt.t ORDER BY k") == [("a", 1), ("b", 2)]
    assert login_error(mariadb, "mlflow_adopt", "stale-Pw.9") == 1045
    assert login_error(mariadb, "mlflow_adopt", "pw-Adopt.1", "adopt") is None
    assert outs["grants"] == ["GRANT ALL PRIVILEGES ON `adopt`.* TO `mlflow_adopt`@`%`"]
    assert login_error(mariadb, "mlflow_adopt", "pw-Adopt.1", "elsewhere") == 1044
    client.delete(id_, outs)
    assert mariadb.query("SELECT COUNT(*) FROM adopt.t") == [(2,)]


def test_removal_keeps_mlflow_data_and_readding_adopts_it(
    mariadb: MariaDB, client: ProviderClient, tmp_path: Any
) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    id_, outs = create(client, news_for(mariadb, "keep", "pw-Keep.1"))
    store = SqlAlchemyStore(
        mariadb.url("mlflow_keep", "pw-Keep.1", "keep"), str(tmp_path / "artifacts")
    )
    upper = store.create_experiment("LR")
    lower = store.create_experiment("lr")  # distinct only with a case-sensitive collation
    run = store.create_run(upper, "u", 0, [], "r1")
    from mlflow.entities import Metric

    store.log_metric(run.info.run_id, Metric("loss", 0.25, 1, 0))
    store.engine.dispose()

    client.delete(id_, outs)  # the project is removed from config
    assert not user_exists(mariadb, "mlflow_keep")
    assert login_error(mariadb, "mlflow_keep", "pw-Keep.1", "keep") == 1045
    assert sorted(r[0] for r in mariadb.query("SELECT name FROM keep.experiments")) == [
        "Default",
        "LR",
        "lr",
    ]

    id_, outs = create(client, news_for(mariadb, "keep", "pw-Back.2"))  # re-added
    assert outs["adopted_schema"] is True
    store = SqlAlchemyStore(
        mariadb.url("mlflow_keep", "pw-Back.2", "keep"), str(tmp_path / "artifacts")
    )
    try:
        assert store.get_experiment(upper).name == "LR"
        assert store.get_experiment(lower).name == "lr"
        history = store.get_metric_history(run.info.run_id, "loss")
        assert [m.value for m in history] == [0.25]
    finally:
        store.engine.dispose()
    client.delete(id_, outs)


def test_drop_data_on_remove_drops_the_schema(mariadb: MariaDB, client: ProviderClient) -> None:
    id_, outs = create(client, news_for(mariadb, "dropme", drop_data_on_remove=True))
    mariadb.query("CREATE TABLE dropme.t (k INT)")
    mariadb.query("INSERT INTO dropme.t VALUES (1)")
    client.delete(id_, outs)
    assert schema_collation(mariadb, "dropme") is None
    assert not user_exists(mariadb, "mlflow_dropme")
    client.delete(id_, outs)  # idempotent


def test_delete_is_idempotent_even_after_out_of_band_changes(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    id_, outs = create(client, news_for(mariadb, "twice"))
    mariadb.query("DROP USER mlflow_twice@'%'")
    client.delete(id_, outs)
    client.delete(id_, outs)
    assert schema_collation(mariadb, "twice") == COLLATION


def test_read_reports_gone_after_out_of_band_drop(mariadb: MariaDB, client: ProviderClient) -> None:
    id_, outs = create(client, news_for(mariadb, "vanish"))
    mariadb.query("DROP SCHEMA vanish")
    read_id, read_outs = client.read(id_, outs)
    assert read_id == ""
    assert set(read_outs) == {"__provider"}  # outs={}; the server adds only the provider
    client.delete(id_, outs)
    assert not user_exists(mariadb, "mlflow_vanish")


def test_refresh_sees_drift_and_update_repairs_it(mariadb: MariaDB, client: ProviderClient) -> None:
    news = news_for(mariadb, "drift", "pw-Drift.1")
    id_, outs = create(client, news)
    inputs = checked(client, news)
    mariadb.query("REVOKE ALL PRIVILEGES ON drift.* FROM mlflow_drift@'%'")
    mariadb.query("ALTER SCHEMA drift COLLATE utf8mb4_general_ci")
    _, refreshed = client.read(id_, outs)
    assert refreshed["grants_ok"] is False and refreshed["collation"] == "utf8mb4_general_ci"
    assert client.diff(id_, refreshed, inputs).changes == "DIFF_SOME"
    repaired = client.update(id_, refreshed, inputs)
    assert repaired["grants_ok"] is True and repaired["collation"] == COLLATION
    assert login_error(mariadb, "mlflow_drift", "pw-Drift.1", "drift") is None
    mariadb.query("DROP USER mlflow_drift@'%'")
    _, refreshed = client.read(id_, repaired)
    assert refreshed["user_exists"] is False
    assert client.diff(id_, refreshed, inputs).changes == "DIFF_SOME"
    repaired = client.update(id_, refreshed, inputs)
    assert login_error(mariadb, "mlflow_drift", "pw-Drift.1", "drift") is None
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
    mariadb: MariaDB, client: ProviderClient, mine: str, theirs: str
) -> None:
    my_schema, their_schema = mine.replace("-", "_"), theirs.replace("-", "_")
    my_user = f"mlflow_{my_schema}"
    id_a, outs_a = create(client, news_for(mariadb, mine, "pw-A.1"))
    id_b, outs_b = create(client, news_for(mariadb, theirs, "pw-B.1"))
    mariadb.query(f"CREATE TABLE {their_schema}.secrets (k VARCHAR(10) PRIMARY KEY)")
    mariadb.query(f"INSERT INTO {their_schema}.secrets VALUES ('b-only')")
    conn = user_connect(mariadb, my_user, "pw-A.1", my_schema)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("CREATE TABLE mine (k INT)")  # its own schema: everything
        cur.execute("INSERT INTO mine VALUES (1)")
        for sql in (
            f"SELECT * FROM {their_schema}.secrets",
            f"INSERT INTO {their_schema}.secrets VALUES ('a-was-here')",
            f"DELETE FROM {their_schema}.secrets",
            f"CREATE TABLE {their_schema}.intruder (k INT)",
            f"DROP TABLE {their_schema}.secrets",
            f"USE {their_schema}",
            "SELECT * FROM mysql.user",
            "CREATE DATABASE sneaky",
        ):
            with pytest.raises(pymysql.err.MySQLError) as info:
                cur.execute(sql)
            assert info.value.args[0] in ACCESS_DENIED, (sql, info.value)
        cur.execute("SHOW DATABASES")
        visible = {r[0] for r in cur.fetchall()}
        assert their_schema not in visible and my_schema in visible
    assert login_error(mariadb, my_user, "pw-A.1", their_schema) == 1044
    assert mariadb.query(f"SELECT k FROM {their_schema}.secrets") == [("b-only",)]
    # read sees the (escaped) grant as the right one: no drift reported, nothing to repair
    assert client.read(id_a, outs_a)[1]["grants_ok"] is True
    client.delete(id_a, outs_a)
    client.delete(id_b, outs_b)


def test_keys_differing_only_in_case_are_distinct(mariadb: MariaDB, client: ProviderClient) -> None:
    id_, outs = create(client, news_for(mariadb, "cases", "pw-Case.1"))
    assert schema_collation(mariadb, "cases") == "utf8mb4_bin"
    conn = user_connect(mariadb, "mlflow_cases", "pw-Case.1", "cases")
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("CREATE TABLE params (k VARCHAR(250) PRIMARY KEY, v TEXT)")  # default coll.
        cur.execute("INSERT INTO params VALUES ('LR', 'upper'), ('lr', 'lower')")
        cur.execute("SELECT v FROM params WHERE k = 'lr'")
        assert cur.fetchall() == (("lower",),)
    # control: the server's default collation would have refused the second key
    mariadb.query("CREATE SCHEMA IF NOT EXISTS cases_ci CHARACTER SET utf8mb4")
    mariadb.query("CREATE TABLE cases_ci.params (k VARCHAR(250) PRIMARY KEY)")
    with pytest.raises(pymysql.err.IntegrityError):
        mariadb.query("INSERT INTO cases_ci.params VALUES ('LR'), ('lr')")
    client.delete(id_, outs)


# -- failures ---------------------------------------------------------------------------------


def test_unreachable_database_names_host_port_and_allowed_cidrs(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    closed = free_port()
    news = news_for(mariadb, "nowhere", "pw-Nowhere.1", admin_port=closed, connect_retry_seconds=1)
    inputs = checked(client, news)
    for call in (
        lambda: client.create(inputs),
        lambda: client.read("nowhere", inputs),
        lambda: client.delete("nowhere", inputs),
    ):
        started = time.monotonic()
        with pytest.raises(ProviderCallError) as info:
            call()
        assert time.monotonic() - started < 10
        details = info.value.details
        assert f"127.0.0.1:{closed}" in details
        assert "db.allowedCidrs" in details and "auto-pause" in details
        assert "pw-Nowhere.1" not in details and mariadb.admin_password not in details


def test_wrong_admin_password_is_clear_and_not_echoed(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    news = news_for(mariadb, "badadmin", admin_password=secret("Wrong-Admin.7"))
    with pytest.raises(ProviderCallError) as info:
        create(client, news)
    assert f"{mariadb.host}:{mariadb.port}" in info.value.details
    assert "refused user 'mlflow_admin'" in info.value.details
    assert "Wrong-Admin.7" not in info.value.details


def test_create_waits_for_a_database_that_is_resuming(
    mariadb: MariaDB, client: ProviderClient
) -> None:
    """Aurora resuming from auto-pause: connections fail for a while, then work."""
    mariadb.stop()
    starter = threading.Timer(1.5, mariadb.start)
    starter.start()
    try:
        started = time.monotonic()
        id_, outs = create(client, news_for(mariadb, "resume", connect_retry_seconds=30))
        assert time.monotonic() - started >= 1.0
    finally:
        starter.join(60)
        if mariadb.process is None:
            mariadb.start()
    assert schema_collation(mariadb, "resume") == COLLATION
    client.delete(id_, outs)


def test_tls_is_negotiated_without_a_ca(mariadb: MariaDB, client: ProviderClient) -> None:
    # the server requires secure transport (like Aurora): success means TLS was used
    news = news_for(mariadb, "noca")
    del news["ssl_ca"]
    id_, outs = create(client, news)
    assert outs["user_exists"] is True
    client.delete(id_, outs)


@pytest.fixture
def limited_admin(mariadb: MariaDB) -> Iterator[tuple[str, str]]:
    """An admin that can create schemas and users but lacks GRANT OPTION."""
    user, password = "half_admin", "half-Admin.1"
    mariadb.query("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
    mariadb.query(f"GRANT CREATE, DROP, CREATE USER ON *.* TO `{user}`@'%'")
    try:
        yield user, password
    finally:
        mariadb.query(f"DROP USER IF EXISTS `{user}`@'%'")


def test_failed_create_leaves_nothing_behind(
    mariadb: MariaDB, client: ProviderClient, limited_admin: tuple[str, str]
) -> None:
    user, password = limited_admin
    before = counts(mariadb)
    news = news_for(mariadb, "half", admin_username=user, admin_password=secret(password))
    with pytest.raises(ProviderCallError) as info:
        create(client, news)
    assert "GRANT" in info.value.details  # it got as far as the grant
    assert schema_collation(mariadb, "half") is None
    assert not user_exists(mariadb, "mlflow_half")
    assert counts(mariadb) == before


def test_failed_create_never_drops_an_adopted_schema(
    mariadb: MariaDB, client: ProviderClient, limited_admin: tuple[str, str]
) -> None:
    user, password = limited_admin
    mariadb.query("CREATE SCHEMA halfkeep CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    mariadb.query("CREATE TABLE halfkeep.runs (k INT)")
    mariadb.query("INSERT INTO halfkeep.runs VALUES (1), (2), (3)")
    news = news_for(mariadb, "halfkeep", admin_username=user, admin_password=secret(password))
    with pytest.raises(ProviderCallError):
        create(client, news)
    assert mariadb.query("SELECT COUNT(*) FROM halfkeep.runs") == [(3,)]
    assert not user_exists(mariadb, "mlflow_halfkeep")
