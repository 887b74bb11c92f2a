"""The servers' migration lock (mlflow_aws/migration/prepare.py) on real MariaDB: one project's
database user cannot hold it for another project, and two servers of the same project still
migrate one after the other.

The attack (issue 14, Medium 4): the lock used to be the server-wide named lock
``GET_LOCK('mlflow-aws:migrate:<schema>')``, which any user may take without a privilege, so
``fraud``'s user holding ``mlflow-aws:migrate:churn`` made every new ``churn`` server wait its
whole budget and exit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from mlflow_aws.migration import prepare
from tests.support.services import MariaDB
from tests.support.stack_on_moto import Project, create_project

pytestmark = pytest.mark.slow


def environment(project: Project, lock_seconds: int) -> dict[str, str]:
    return {
        prepare.URI_VARIABLE: project.mariadb.url(project.user, project.password, project.schema),
        prepare.MIGRATE_VARIABLE: "true",
        prepare.LOCK_SECONDS_VARIABLE: str(lock_seconds),
    }


def connect_as(project: Project) -> Any:
    conn = project.mariadb.connect(project.user, project.password, project.schema)
    conn.autocommit(False)
    return conn


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    elapsed: list[float] = []
    started = time.monotonic()
    yield elapsed
    elapsed.append(time.monotonic() - started)


@pytest.fixture(scope="module")
def churn(mariadb: MariaDB) -> Project:
    """A project whose schema a first server has created (MLflow's tables, at head)."""
    project = create_project(mariadb, "lock-churn")
    assert prepare.main(environment(project, 60)) == 0
    return project


def test_another_projects_user_cannot_block_the_migration(
    mariadb: MariaDB, churn: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    fraud = create_project(mariadb, "lock-fraud")
    attacker = fraud.mariadb.connect(fraud.user, fraud.password, fraud.schema)
    with contextlib.closing(attacker), attacker.cursor() as cursor:
        # The named lock the servers used to take, held by fraud's user (no privilege needed).
        cursor.execute("SELECT GET_LOCK(%s, 0)", (f"mlflow-aws:migrate:{churn.schema}",))
        assert cursor.fetchone() == (1,)
        capsys.readouterr()
        with timed() as elapsed:
            code = prepare.main(environment(churn, 5))
        log = capsys.readouterr().err
        assert code == 0, log
        assert "another server holds the migration lock" not in log
        assert f"schema {churn.schema} is up to date" in log
        assert elapsed[0] < 4, f"churn's server waited {elapsed[0]:.1f} s for fraud's lock"

        # Nor can fraud's user lock the row the servers take now: it has no right on the table.
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cursor.execute(
                f"SELECT id FROM `{churn.schema}`.{prepare.LOCK_TABLE} WHERE id = 1 FOR UPDATE"
            )
        assert refused.value.args[0] == 1142  # ER_TABLEACCESS_DENIED_ERROR


def test_two_migrations_of_the_same_project_still_take_turns(
    churn: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = connect_as(churn)  # another server of churn, migrating
    with contextlib.closing(holder):
        prepare.take_migration_lock(holder, 1)

        capsys.readouterr()
        with timed() as elapsed:
            code = prepare.main(environment(churn, 2))
        log = capsys.readouterr().err
        assert code == 1
        assert "another server holds the migration lock; waiting up to 2 s" in log
        assert "gave up after 2 s waiting for another server's migration" in log
        assert elapsed[0] >= 2

        # The holder finishes after ~2 s: the waiting server goes on then, not before.
        released_at: list[float] = []

        def finish() -> None:
            time.sleep(2)
            released_at.append(time.monotonic())
            holder.rollback()

        finisher = threading.Thread(target=finish)
        finisher.start()
        try:
            code = prepare.main(environment(churn, 60))
        finally:
            finisher.join()
        done_at = time.monotonic()
        log = capsys.readouterr().err
        assert code == 0, log
        assert "another server holds the migration lock; waiting up to 60 s" in log
        assert released_at and done_at >= released_at[0]


def test_the_lock_table_leaves_a_new_schema_empty_for_mlflow(
    mariadb: MariaDB, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock row exists before MLflow's first table: the schema still counts as empty, so
    the first server creates MLflow's tables (and does not try to upgrade nothing)."""
    project = create_project(mariadb, "lock-new")
    holder = connect_as(project)
    with contextlib.closing(holder):
        prepare.take_migration_lock(holder, 1)  # a server that died before creating anything
    capsys.readouterr()
    assert prepare.main(environment(project, 30)) == 0
    log = capsys.readouterr().err
    assert f"schema {project.schema} is empty: creating MLflow's tables" in log
    tables = {row[0] for row in project.query("SHOW TABLES")}
    assert {"experiments", "alembic_version", prepare.LOCK_TABLE} <= tables
