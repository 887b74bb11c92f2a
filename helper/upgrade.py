"""``helper upgrade``: migrate one project's schema to this MLflow.

A MySQL schema is migrated by the image's own step, ``mlflow_aws.migration.prepare`` (what
``entrypoint.sh`` runs before a server starts): under the schema's migration lock, so a central
task or a teammate's server starting at the same time waits instead of migrating alongside, with
its refusals (a schema of a newer MLflow) and its record of the schema's version. It waits for
the lock as long as a server would (``MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS``, server.env).

The local SQLite store has no lock and no other writer: ``mlflow db upgrade``, its URI out of
argv (``helper.mlflow_cli``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from .errors import HelperError
from .mlflow_cli import URI_ARGUMENT, mlflow_argv, mlflow_environment


def upgrade_argv() -> list[str]:
    return mlflow_argv("db", "upgrade", URI_ARGUMENT)


def upgrade_environment(backend_store_uri: str, inherited: Mapping[str, str]) -> dict[str, str]:
    return mlflow_environment(backend_store_uri, inherited)


def migration_lock_seconds(environ: Mapping[str, str]) -> int:
    """How long to wait for another server's migration: the environment's, else server.env's."""
    from mlflow_aws.migration.prepare import LOCK_SECONDS_VARIABLE
    from mlflow_aws.server_settings import server_env_defaults

    text = environ.get(LOCK_SECONDS_VARIABLE) or server_env_defaults()[LOCK_SECONDS_VARIABLE]
    try:
        return int(text)
    except ValueError:
        raise HelperError(f"{LOCK_SECONDS_VARIABLE} must be a whole number of seconds") from None


def run_upgrade(backend_store_uri: str, what: str) -> int:
    sys.stderr.write(f"upgrading the MLflow schema of {what}...\n")
    sys.stderr.flush()
    if backend_store_uri.startswith("mysql"):
        return _run_image_migration(backend_store_uri, what)
    result = subprocess.run(
        upgrade_argv(),
        env=upgrade_environment(backend_store_uri, os.environ),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,  # mlflow's migration log is progress, not the command's result
        check=False,
    )
    if result.returncode != 0:
        raise HelperError(
            f"the schema upgrade of {what} failed (exit {result.returncode}); see above"
        )
    record_this_mlflow(backend_store_uri)
    print(f"the schema of {what} is up to date")
    return 0


def _run_image_migration(backend_store_uri: str, what: str) -> int:
    from mlflow_aws.migration import prepare

    seconds = migration_lock_seconds(os.environ)
    try:
        prepare.prepare(backend_store_uri, seconds)
    except prepare.PrepareError as exc:
        raise HelperError(
            f"the schema upgrade of {what} failed: {prepare._scrub(str(exc), backend_store_uri)}"
        ) from None
    except Exception as exc:
        detail = prepare._scrub(f"{type(exc).__name__}: {exc}", backend_store_uri)
        raise HelperError(f"the schema upgrade of {what} failed: {detail}") from None
    print(f"the schema of {what} is up to date")
    return 0


def record_this_mlflow(backend_store_uri: str) -> None:
    """Record this MLflow as the schema's (servers of other versions then refuse it)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from mlflow_aws.schema_version import record, this_mlflow

    mine = this_mlflow()
    engine = sqlalchemy.create_engine(backend_store_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            record(connection, mine.version, mine.head)
    finally:
        engine.dispose()
