"""Which MLflow a project's schema belongs to, and whether a server of this MLflow may use it.

MLflow 3.17 supports no mixed-version writers on a SQL store: every server, laptop or central,
must run the MLflow that migrated the schema. Two facts say which one that is:

* the schema's Alembic revision (``alembic_version``): a revision this MLflow does not know
  was made by a newer MLflow; a known revision other than this MLflow's head, by an older one;
* the version recorded in ``mlflow_aws_schema`` by whoever last migrated the schema through
  mlflow-aws (the image's entrypoint, ``helper upgrade``). Patch releases share a revision, so
  only the record tells 3.17.1 from 3.17.2. Schemas migrated by plain ``mlflow db upgrade``
  have no record; the revision rule alone applies to them.

``problem`` returns the refusal (naming the version to use) or None; the callers add their own
fix (the helper's upgrade command, the image to run). ``read_state`` and ``record`` work on
MySQL and SQLite alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

RECORD_TABLE = "mlflow_aws_schema"


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  # None: no MLflow tables yet (an empty schema)
    recorded_version: str | None  # the MLflow that last migrated it through mlflow-aws


@dataclass(frozen=True)
class Mlflow:
    """The MLflow of this interpreter: its version and the schema revisions it knows."""

    version: str
    head: str
    revisions: frozenset[str]


def this_mlflow() -> Mlflow:
    from importlib import metadata

    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils as db_utils

    script = ScriptDirectory.from_config(db_utils._get_alembic_config(""))
    revisions = frozenset(r.revision for r in script.walk_revisions())
    return Mlflow(metadata.version("mlflow"), db_utils._get_latest_schema_revision(), revisions)


def read_state(connection: Any) -> SchemaState:
    """The schema's revision and record, read on an open SQLAlchemy connection."""
    import sqlalchemy

    tables = set(sqlalchemy.inspect(connection).get_table_names())
    revision = None
    if "alembic_version" in tables:
        revision = connection.execute(
            sqlalchemy.text("SELECT version_num FROM alembic_version")
        ).scalar()
    recorded = None
    if RECORD_TABLE in tables:
        recorded = connection.execute(
            sqlalchemy.text(f"SELECT mlflow_version FROM {RECORD_TABLE} WHERE id = 1")
        ).scalar()
    return SchemaState(revision, recorded)


def record(connection: Any, version: str, revision: str) -> None:
    """Remember that MLflow ``version`` (schema ``revision``) migrated the schema."""
    import sqlalchemy

    connection.execute(
        sqlalchemy.text(
            f"CREATE TABLE IF NOT EXISTS {RECORD_TABLE} (id INTEGER NOT NULL PRIMARY KEY, "
            "mlflow_version VARCHAR(64) NOT NULL, revision VARCHAR(64) NOT NULL, "
            "migrated_at_ms BIGINT NOT NULL)"
        )
    )
    connection.execute(sqlalchemy.text(f"DELETE FROM {RECORD_TABLE} WHERE id = 1"))
    connection.execute(
        sqlalchemy.text(
            f"INSERT INTO {RECORD_TABLE} (id, mlflow_version, revision, migrated_at_ms) "
            "VALUES (1, :version, :revision, :now)"
        ),
        {"version": version, "revision": revision, "now": int(time.time() * 1000)},
    )
    connection.commit()


def newer(a: str, b: str) -> bool:
    """Is version ``a`` newer than ``b``?"""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return False


@dataclass(frozen=True)
class Refusal:
    message: str
    older: bool  # the schema is older than this MLflow (an upgrade would fix it)

    def __str__(self) -> str:
        return self.message


def problem(state: SchemaState, mine: Mlflow, may_migrate: bool, what: str) -> Refusal | None:
    """Why a server of ``mine`` must not use the schema ``what`` (None: it may; with
    ``may_migrate`` it may first bring an older schema up to its own head)."""
    if state.revision is None:
        return None  # empty: this MLflow creates it
    recorded = state.recorded_version
    if recorded == mine.version and state.revision != mine.head:
        recorded = None  # a record this revision contradicts (edited, or a partial migration)
    use = f"use mlflow {recorded}" if recorded else "use the MLflow version that migrated it"
    if state.revision not in mine.revisions:
        made_by = f"mlflow {recorded}" if recorded else f"an MLflow newer than {mine.version}"
        return Refusal(
            f"{what} is at revision {state.revision}, which mlflow {mine.version} does not "
            f"know: {made_by} migrated it; {use}",
            older=False,
        )
    if recorded and recorded != mine.version and newer(recorded, mine.version):
        return Refusal(
            f"{what} belongs to mlflow {recorded} (its last migration) and this is mlflow "
            f"{mine.version}: servers of mixed versions must not write one schema; {use}",
            older=False,
        )
    older = state.revision != mine.head or (recorded is not None and recorded != mine.version)
    if older and not may_migrate:
        made_by = f"mlflow {recorded}" if recorded else "an older MLflow"
        return Refusal(
            f"{what} is at revision {state.revision} of {made_by} and this is mlflow "
            f"{mine.version} (revision {mine.head}); {use}, or upgrade the schema to "
            f"mlflow {mine.version} once, with every writer stopped",
            older=True,
        )
    return None
