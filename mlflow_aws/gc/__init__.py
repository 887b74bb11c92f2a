"""Garbage collection of what MLflow marked deleted, for one project (collect.py says what).

Two entry points run the same code: ``python -m helper gc`` on a laptop, with the project's
server role and MySQL user, and ``python -m mlflow_aws.gc`` in the server image (a scheduled
task; __main__.py reads the task's environment).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_aws import environment as env_names

from .artifacts import ArtifactStore, LocalStore, S3Store
from .collect import DEFAULT_BATCH_ROWS, TABLES, GcError, Options, Report

__all__ = [
    "ArtifactStore",
    "GcError",
    "LocalStore",
    "Options",
    "Report",
    "S3Store",
    "batch_rows_from",
    "gc_engine",
    "parse_duration",
    "run_gc",
]

_DURATION = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?"
)
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}


def parse_duration(text: str, what: str = "--older-than") -> int:
    """Milliseconds of ``30d``, ``12h``, ``1d2h30m``, ``90s`` or ``0`` (MLflow gc's format)."""
    value = text.strip()
    if value == "0":
        return 0
    match = _DURATION.fullmatch(value)
    if not value or match is None or not any(match.groupdict().values()):
        raise GcError(
            f"{what} {text!r} is not a duration: use days, hours, minutes and seconds such as "
            "30d, 12h, 1d12h or 90m (or 0 for everything deleted)"
        )
    return int(sum(float(n) * _UNIT_MS[unit] for unit, n in match.groupdict().items() if n))


BATCH_ROWS_VARIABLE = env_names.GC_BATCH_ROWS


def batch_rows_from(environ: Mapping[str, str]) -> int:
    """Rows per DELETE (one short transaction each): the default unless the environment says."""
    batch = environ.get(BATCH_ROWS_VARIABLE, str(DEFAULT_BATCH_ROWS)).strip()
    if not batch.isdigit() or not 1 <= int(batch) <= 100_000:
        raise GcError(f"{BATCH_ROWS_VARIABLE} must be a whole number 1-100000, got {batch!r}")
    return int(batch)


def gc_engine(uri: str) -> Any:
    """One connection, checked before use (the database may close it while S3 works), and
    READ COMMITTED on MySQL so the deletes take no gap locks that would stall live writers."""
    import sqlalchemy

    options: dict[str, Any] = {"pool_pre_ping": True}
    if uri.startswith("mysql"):
        options.update(pool_size=1, max_overflow=0, isolation_level="READ COMMITTED")
    return sqlalchemy.create_engine(uri, **options)


def run_gc(
    uri: str,
    store: ArtifactStore,
    options: Options,
    project: str,
    say: Callable[[str], None],
) -> Report:
    """Check that this MLflow is the schema's, then collect."""
    import sqlalchemy

    from mlflow_aws.schema_version import problem, read_state, this_mlflow

    engine = gc_engine(uri)
    try:
        with engine.connect() as connection:
            state = read_state(connection)
            tables = set(sqlalchemy.inspect(connection).get_table_names())
        if state.revision is None:
            say(f"project {project}: the schema has no MLflow tables yet; nothing to collect")
            return Report(project, options.dry_run)
        mine = this_mlflow()
        refused = problem(state, mine, may_migrate=False, what=f"the schema of project {project}")
        if refused:
            raise GcError(f"{refused}; gc must run the schema's own MLflow")
        missing = sorted(TABLES - tables)
        if missing:
            raise GcError(
                f"the schema of project {project} lacks tables gc knows ({', '.join(missing)})"
            )
        from .collect import Collector

        return Collector(engine, store, options, project, say).run()
    finally:
        engine.dispose()
