"""Bring one project back to a point in time without touching the other projects.

Two tools, each usable on its own (``python -m helper restore-plan`` prints the whole sequence):

* ``copy_schema``: the project's schema from a cluster restored to that time (a temporary
  cluster, see the plan) back into the live cluster. The copy is loaded into a staging schema
  ``<schema>__restore`` first (foreign-key checks off, rows streamed in batches), its row counts
  checked against the source, then swapped in with one atomic ``RENAME TABLE`` of every table;
  the live tables move to ``<schema>__before_<stamp>``, so nothing is lost (drop it when
  satisfied). The project's grants name the schema, so its user and servers see the restored
  tables at once; triggers are re-created on the swapped-in tables (MySQL moves no trigger
  across schemas). It refuses while the project's MySQL user has connections (its writers
  must be stopped), listing them, unless told ``despite_connections``.
* ``restore_versions``: every object under ``s3://<bucket>/<prefix>/`` as it was at that time,
  from the bucket's noncurrent versions: the version current then is copied back as the
  current one where it differs, objects created since are deleted (which keeps them as
  noncurrent versions, so this too can be undone while the bucket's lifecycle keeps them).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

COPY_BATCH_ROWS = 2000
_NAME = re.compile(r"[a-z0-9_]{1,40}")


class RestoreError(Exception):
    """Refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    ca_file: str  # TLS required, certificate and host name verified against it

    def connect(self, database: str | None = None) -> Any:
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            ssl={"ca": self.ca_file},
            connect_timeout=15,
            autocommit=True,
            charset="utf8mb4",
        )


def quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass
class CopyReport:
    schema: str
    kept_as: str
    tables: int = 0
    rows: int = 0


def _tables(cursor: Any, schema: str) -> list[str]:
    cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND "
        "table_type = 'BASE TABLE' ORDER BY table_name",
        (schema,),
    )
    return [str(row[0]) for row in cursor.fetchall()]


def _schema_exists(cursor: Any, schema: str) -> bool:
    cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,))
    return cursor.fetchone() is not None


def connected(cursor: Any, user: str) -> list[str]:
    """``host (N s)`` of every session the user holds (the writers that must stop first)."""
    cursor.execute(
        "SELECT host, time FROM information_schema.processlist WHERE user = %s ORDER BY time DESC",
        (user,),
    )
    return [f"{host} ({seconds} s)" for host, seconds in cursor.fetchall()]


def _triggers(cursor: Any, schema: str) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER without its DEFINER) of the schema's triggers."""
    cursor.execute(
        "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = %s",
        (schema,),
    )
    found = []
    for (name,) in cursor.fetchall():
        cursor.execute(f"SHOW CREATE TRIGGER {quoted(schema)}.{quoted(name)}")
        statement = str(cursor.fetchone()[2])
        statement = re.sub(r"DEFINER\s*=\s*\S+@\S+\s+", "", statement, count=1)
        found.append((str(name), statement))
    return found


def copy_schema(
    source: Endpoint,
    target: Endpoint,
    schema: str,
    project_user: str,
    stamp: str,
    say: Callable[[str], None],
    *,
    dry_run: bool = False,
    despite_connections: bool = False,
) -> CopyReport:
    """Copy ``schema`` from ``source`` (the restored cluster) into ``target`` (the live one)."""
    import pymysql

    if not _NAME.fullmatch(schema) or not re.fullmatch(r"[0-9a-z]{1,20}", stamp):
        raise RestoreError(f"refusing schema {schema!r} / stamp {stamp!r}: not a plain name")
    staging, kept_as = f"{schema}__restore", f"{schema}__before_{stamp}"
    report = CopyReport(schema, kept_as)
    with contextlib.closing(source.connect()) as src, contextlib.closing(target.connect()) as dst:
        s, d = src.cursor(), dst.cursor()
        if not _schema_exists(s, schema):
            raise RestoreError(f"the restored cluster at {source.host} has no schema {schema}")
        if not _schema_exists(d, schema):
            raise RestoreError(f"the live cluster at {target.host} has no schema {schema}")
        if _schema_exists(d, kept_as):
            raise RestoreError(f"{kept_as} exists already on the live cluster: pick another stamp")
        tables = _tables(s, schema)
        if not tables:
            raise RestoreError(f"schema {schema} on the restored cluster has no tables")
        sessions = connected(d, project_user)
        if sessions and not despite_connections:
            raise RestoreError(
                f"user {project_user} has {len(sessions)} connection(s) to the live cluster: "
                f"{', '.join(sessions)}. Stop every writer of the project first (the central "
                "service, teammates' servers), or pass --despite-connections"
            )
        counts = {}
        for table in tables:
            s.execute(f"SELECT COUNT(*) FROM {quoted(schema)}.{quoted(table)}")
            counts[table] = int(s.fetchone()[0])
        say(
            f"restored cluster: schema {schema} has {len(tables)} tables, "
            f"{sum(counts.values()):,} rows"
        )
        report.tables = len(tables)
        report.rows = sum(counts.values())
        if dry_run:
            say(f"dry run: nothing copied; {schema} would be kept as {kept_as}")
            return report

        d.execute(f"DROP DATABASE IF EXISTS {quoted(staging)}")  # a failed earlier attempt
        d.execute(f"CREATE DATABASE {quoted(staging)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        d.execute("SET SESSION foreign_key_checks = 0")
        # MLflow's Default experiment has id 0 in an AUTO_INCREMENT column: without this mode,
        # inserting 0 makes a new id (as mysqldump knows; the restore test found it).
        d.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')")
        for table in tables:
            s.execute(f"SHOW CREATE TABLE {quoted(schema)}.{quoted(table)}")
            d.execute(f"USE {quoted(staging)}")
            d.execute(str(s.fetchone()[1]))
            copied = _copy_rows(src, dst, schema, staging, table)
            if copied != counts[table]:
                raise RestoreError(
                    f"{table}: copied {copied:,} rows of {counts[table]:,}; the live schema "
                    f"is untouched (staging left in {staging})"
                )
            say(f"copied {table}: {copied:,} rows")
        triggers = _triggers(s, schema)
        live_triggers = _triggers(d, schema)
        live_tables = _tables(d, schema)

        # The swap: the live tables out, the copies in, in one atomic statement.
        d.execute(f"CREATE DATABASE {quoted(kept_as)} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        for name, _ in live_triggers:  # MySQL moves no trigger to another schema
            d.execute(f"DROP TRIGGER {quoted(schema)}.{quoted(name)}")
        moves = [
            f"{quoted(schema)}.{quoted(t)} TO {quoted(kept_as)}.{quoted(t)}" for t in live_tables
        ] + [f"{quoted(staging)}.{quoted(t)} TO {quoted(schema)}.{quoted(t)}" for t in tables]
        try:
            d.execute("RENAME TABLE " + ", ".join(moves))
        except pymysql.err.MySQLError:
            d.execute(f"USE {quoted(schema)}")
            for _, statement in live_triggers:  # put back what was there
                d.execute(statement)
            raise
        d.execute(f"USE {quoted(schema)}")
        for _, statement in triggers:
            d.execute(statement)
        d.execute(f"DROP DATABASE {quoted(staging)}")
        say(
            f"schema {schema} restored ({len(tables)} tables, {report.rows:,} rows); what it "
            f"held before is kept in {kept_as} (drop it when satisfied)"
        )
    return report


def _copy_rows(src: Any, dst: Any, schema: str, staging: str, table: str) -> int:
    import pymysql

    with contextlib.closing(src.cursor(pymysql.cursors.SSCursor)) as reader:
        reader.execute(f"SELECT * FROM {quoted(schema)}.{quoted(table)}")
        columns = ", ".join(quoted(c[0]) for c in reader.description)
        marks = ", ".join(["%s"] * len(reader.description))
        insert = f"INSERT INTO {quoted(staging)}.{quoted(table)} ({columns}) VALUES ({marks})"
        copied = 0
        with dst.cursor() as writer:
            while True:
                rows = reader.fetchmany(COPY_BATCH_ROWS)
                if not rows:
                    return copied
                writer.executemany(insert, rows)
                copied += len(rows)


# -- S3 ---------------------------------------------------------------------------------------


@dataclass
class VersionsReport:
    restored: int = 0  # objects set back to the version current at the time
    deleted: int = 0  # objects created since (now noncurrent versions)
    unchanged: int = 0
    keys: list[str] = field(default_factory=list)  # changed keys (the first ones)


def _key_versions(s3: Any, bucket: str, prefix: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(key, its versions and delete markers, newest first), one key at a time."""
    current_key: str | None = None
    versions: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        entries = [{**v, "marker": False} for v in page.get("Versions", [])]
        entries += [{**m, "marker": True} for m in page.get("DeleteMarkers", [])]
        for entry in sorted(entries, key=lambda e: (e["Key"], -e["LastModified"].timestamp())):
            if entry["Key"] != current_key:
                if current_key is not None:
                    yield current_key, versions
                current_key, versions = entry["Key"], []
            versions.append(entry)
    if current_key is not None:
        yield current_key, versions


def restore_versions(
    s3: Any,
    bucket: str,
    prefix: str,
    at: datetime,
    say: Callable[[str], None],
    dry_run: bool = False,
) -> VersionsReport:
    """Every object under ``prefix/`` as it was at ``at`` (timezone-aware)."""
    if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise RestoreError(f"refusing prefix {prefix!r}")
    report = VersionsReport()
    for key, versions in _key_versions(s3, bucket, prefix.rstrip("/") + "/"):
        then = next((v for v in versions if v["LastModified"] <= at), None)
        now = versions[0]
        wanted = None if then is None or then["marker"] else then
        if wanted is None:
            if now["marker"]:
                report.unchanged += 1
                continue
            report.deleted += 1
            if not dry_run:
                s3.delete_object(Bucket=bucket, Key=key)
        elif now.get("VersionId") == wanted.get("VersionId"):
            report.unchanged += 1
            continue
        else:
            report.restored += 1
            if not dry_run:
                s3.copy_object(
                    Bucket=bucket,
                    Key=key,
                    CopySource={"Bucket": bucket, "Key": key, "VersionId": wanted["VersionId"]},
                )
        if len(report.keys) < 20:
            report.keys.append(key)
    verb = "would set" if dry_run else "set"
    say(
        f"s3://{bucket}/{prefix}/: {verb} {report.restored:,} objects back to their version "
        f"at {at.isoformat()}, {'would delete' if dry_run else 'deleted'} {report.deleted:,} "
        f"made since, {report.unchanged:,} unchanged"
    )
    return report
