"""Before the server serves: its MySQL schema created or upgraded, exactly once per rollout.

``docker/entrypoint.sh`` runs ``python -m mlflow_aws.migration.prepare`` with the backend store URI
in ``MLFLOW_BACKEND_STORE_URI`` (never in argv). A server of another MLflow version than the
schema's never starts (mlflow_aws/schema_version.py): with ``MLFLOW_AWS_DB_MIGRATE_ON_START``
other than ``true`` that is all it checks; with ``true`` it may first upgrade an older schema,
and then records its version as the schema's. Several servers starting together (the tasks of
a Fargate rollout, or two teammates' containers) each take the migration lock, a row lock on
the one row of ``mlflow_aws_migration_lock`` in the project's own schema (``SELECT … FOR
UPDATE``): the first creates or upgrades the schema the way ``mlflow db upgrade`` does, the
others wait for it and then find the schema at this MLflow's head revision. Only users with
rights on the schema can take that lock; a MySQL named lock (``GET_LOCK``) would not do: it is
server-wide, needs no privilege, and any project's user could hold another project's name.
A failure exits 1, so the server never starts on a half-migrated schema (on ECS the task fails
and the deployment circuit breaker keeps the old tasks).

Only the schema name and revisions are printed: never the URI, the user's password or the
driver's connection arguments.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_aws import environment as env_names
from mlflow_aws.server_settings import migration_lock_seconds

URI_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
LOCK_SECONDS_VARIABLE = env_names.DB_MIGRATION_LOCK_SECONDS
MIGRATE_VARIABLE = env_names.DB_MIGRATE_ON_START
# A paused Aurora Serverless v2 takes ~15 s to resume; connecting is retried this long.
CONNECT_BUDGET_SECONDS = 120.0
# The migration's sessions must outlive the server's short idle wait_timeout (init_command):
# a lock held on a connection the database closed would be released mid-migration.
MIGRATION_SESSION_SECONDS = 8 * 3600
# In the project's schema, so only its own users can lock it (mlflow_aws/schema_version.py and
# the emptiness check below ignore it).
LOCK_TABLE = "mlflow_aws_migration_lock"
LOCK_WAIT_TIMEOUT_ERROR = 1205  # ER_LOCK_WAIT_TIMEOUT (MySQL and MariaDB)

Outcome = str  # "initialised" | "upgraded" | "current"


class PrepareError(Exception):
    """A failure explained in one line (no URI in it)."""


def say(message: str) -> None:
    print(f"mlflow-aws: {message}", file=sys.stderr, flush=True)


class MigrationLockBusy(Exception):
    """Another session of the project holds the migration lock past the wait."""


def take_migration_lock(connection: Any, wait_seconds: int) -> None:
    """Lock the one row of ``LOCK_TABLE`` on ``connection`` (a pymysql or SQLAlchemy DBAPI
    connection, autocommit off) until it commits, rolls back or closes; ``MigrationLockBusy``
    after ``wait_seconds`` (at least 1: InnoDB's smallest wait) if another session holds it."""
    import pymysql

    with connection.cursor() as cursor:
        # CREATE TABLE commits implicitly: no row is locked yet at this point.
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (id INTEGER NOT NULL PRIMARY KEY)")
        cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, int(wait_seconds))}")
        try:
            # INSERT IGNORE waits on the row too when another session has it locked.
            cursor.execute(f"INSERT IGNORE INTO {LOCK_TABLE} (id) VALUES (1)")
            cursor.execute(f"SELECT id FROM {LOCK_TABLE} WHERE id = 1 FOR UPDATE")
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == LOCK_WAIT_TIMEOUT_ERROR:
                connection.rollback()
                raise MigrationLockBusy from None
            raise


def _engine(uri: str) -> Any:
    """A pool-less engine for the migration, without the server's short session timeout."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    url = sqlalchemy.engine.make_url(uri)
    query = {k: v for k, v in url.query.items() if k != "init_command"}
    return sqlalchemy.create_engine(
        url.set(query=query),
        poolclass=NullPool,
        connect_args={
            "init_command": f"SET SESSION wait_timeout={MIGRATION_SESSION_SECONDS}",
            "connect_timeout": 10,
        },
    )


def _connect(engine: Any, schema: str) -> Any:
    import sqlalchemy

    deadline = time.monotonic() + CONNECT_BUDGET_SECONDS
    while True:
        try:
            return engine.connect()
        except sqlalchemy.exc.OperationalError as exc:
            # 1045 (access denied), 1044/1049 (no such schema or no right to it) and a TLS
            # failure (an unverifiable certificate) do not heal by waiting.
            code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
            tls = "SSL" in str(exc.orig) or "certificate" in str(exc.orig).lower()
            if code in (1044, 1045, 1049) or tls or time.monotonic() > deadline:
                raise
            reason = type(exc.orig).__name__
            say(f"schema {schema}: database not reachable yet ({reason}); retrying")
            time.sleep(5)


def check_version(engine: Any, schema: str, may_migrate: bool) -> None:
    """Refuse a schema that belongs to another MLflow (mlflow_aws/schema_version.py)."""
    from mlflow_aws.schema_version import problem, read_state, this_mlflow

    with engine.connect() as connection:
        state = read_state(connection)
    refused = problem(state, this_mlflow(), may_migrate, f"schema {schema}")
    if refused:
        raise PrepareError(f"{refused} (the image of that version)")


def _record(engine: Any) -> None:
    from mlflow_aws.schema_version import record, this_mlflow

    mine = this_mlflow()
    with engine.connect() as connection:
        record(connection, mine.version, mine.head)


def _is_empty(engine: Any) -> bool:
    """No table but mlflow-aws's own (the lock table exists before MLflow's first table)."""
    import sqlalchemy

    from mlflow_aws.schema_version import RECORD_TABLE

    tables = set(sqlalchemy.inspect(engine).get_table_names())
    return not tables - {LOCK_TABLE, RECORD_TABLE}


def _migrate(engine: Any, schema: str) -> Outcome:
    """What ``mlflow db upgrade`` does, plus refusing a schema newer than this MLflow."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils as db_utils

    check_version(engine, schema, may_migrate=True)
    head = db_utils._get_latest_schema_revision()
    if _is_empty(engine):
        say(f"schema {schema} is empty: creating MLflow's tables (revision {head})")
        db_utils._initialize_tables(engine)
        return "initialised"
    current = db_utils._get_schema_version(engine)
    if current == head:
        say(f"schema {schema} is up to date (revision {head})")
        return "current"
    script = ScriptDirectory.from_config(db_utils._get_alembic_config(""))
    try:
        known = current is None or script.get_revision(current) is not None
    except Exception:
        known = False
    if not known:
        raise PrepareError(
            f"schema {schema} is at revision {current}, which this MLflow does not know (its "
            f"head is {head}): a newer MLflow has migrated it; run that version's image"
        )
    say(f"upgrading schema {schema} from revision {current} to {head}")
    db_utils._upgrade_db(engine)
    return "upgraded"


def prepare(uri: str, lock_seconds: int) -> Outcome:
    """Create or upgrade the schema of ``uri`` under the schema's migration lock."""
    engine = _engine(uri)
    schema = engine.url.database or "?"
    try:
        with _connect(engine, schema) as lock_connection:
            # The DBAPI connection itself: its transaction (the row lock) stays open while the
            # migration runs on the engine's other connections.
            raw = lock_connection.connection.dbapi_connection
            try:
                take_migration_lock(raw, 1)
            except MigrationLockBusy:
                say(
                    f"schema {schema}: another server holds the migration lock; waiting up to "
                    f"{lock_seconds} s"
                )
                try:
                    take_migration_lock(raw, lock_seconds)
                except MigrationLockBusy:
                    raise PrepareError(
                        f"schema {schema}: gave up after {lock_seconds} s waiting for another "
                        "server's migration (MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS)"
                    ) from None
            try:
                started = time.monotonic()
                outcome = _migrate(engine, schema)
                _record(engine)  # this MLflow now owns the schema
                if outcome != "current":
                    say(f"schema {schema} {outcome} in {time.monotonic() - started:.1f} s")
                return outcome
            finally:
                raw.rollback()  # releases the row lock (nothing was written under it)
    finally:
        engine.dispose()


def _scrub(text: str, uri: str) -> str:
    """``text`` without the URI's password (driver errors rarely hold it; never print it)."""
    import sqlalchemy

    try:
        password = sqlalchemy.engine.make_url(uri).password
    except Exception:
        password = None
    for secret in filter(None, (uri, password)):
        text = text.replace(str(secret), "***")
    return text


def check_only(uri: str) -> None:
    """Without migrating on start: only refuse a schema of another MLflow version."""
    engine = _engine(uri)
    try:
        schema = engine.url.database or "?"
        with _connect(engine, schema):
            pass  # reachable (a paused Aurora resumes), then checked
        check_version(engine, schema, may_migrate=False)
    finally:
        engine.dispose()


def _step(run: Callable[[], object], what: str, uri: str) -> int:
    """0 once ``run`` returns; 1, with one line naming ``what`` failed (the URI's password
    scrubbed), if it raises."""
    try:
        run()
    except PrepareError as exc:
        say(f"not starting: {_scrub(str(exc), uri)}")
        return 1
    except Exception as exc:
        detail = _scrub(f"{type(exc).__name__}: {exc}", uri)
        say(f"not starting: {what} failed: {detail}")
        return 1
    return 0


def main(environ: Mapping[str, str] = os.environ) -> int:
    uri = environ.get(URI_VARIABLE, "")
    if not uri.startswith("mysql"):
        return 0  # SQLite and the rest: the server initialises its own store
    if environ.get(MIGRATE_VARIABLE, "false") != "true":
        return _step(lambda: check_only(uri), "checking the schema", uri)
    try:
        # Unset (the image's entrypoint always sets it): server.env's, as the entrypoint would.
        raw = environ.get(LOCK_SECONDS_VARIABLE)
        lock_seconds = int(raw) if raw is not None else migration_lock_seconds()
    except ValueError:
        say(f"{LOCK_SECONDS_VARIABLE} must be a whole number of seconds")
        return 2
    return _step(lambda: prepare(uri, lock_seconds), "preparing the schema", uri)


if __name__ == "__main__":
    sys.exit(main())
