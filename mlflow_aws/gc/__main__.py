"""``python -m mlflow_aws.gc``: one project's gc, configured by the environment (a task).

The server image runs it as ``entrypoint.sh gc`` (the entrypoint verifies the database's TLS
first, as for the server): a scheduled ECS task of the project's own image, task role = the
project's server role (its prefix only), database user = the project's.

    MLFLOW_BACKEND_STORE_URI        the project's store (required; TLS verified, see below)
    MLFLOW_ARTIFACTS_DESTINATION    s3://<bucket>/<project> (required; the server's own)
    MLFLOW_AWS_PROJECT              the project's name, for the report (default: the root's
                                    last path segment)
    MLFLOW_AWS_GC_OLDER_THAN        only what was deleted this long ago: 30d, 12h, … (default 0)
    MLFLOW_AWS_GC_TRACE_RETENTION   also traces older than this (default: none)
    MLFLOW_AWS_GC_DRY_RUN           true: count only, change nothing (default false)
    MLFLOW_AWS_GC_BATCH_ROWS        rows per DELETE (default 5000)

A MySQL URI must carry ``ssl_ca`` (the entrypoint adds it from MLFLOW_AWS_DB_CA_BUNDLE) unless
MLFLOW_AWS_DB_TLS_INSECURE=1 (tests only). Progress goes to stderr; the report to stdout, last
as one JSON line ``{"mlflow_aws_gc": {...}}`` for log-based metrics. Exit status: 0 done,
1 failed (the alarm's signal), 2 configuration error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mlflow_aws import environment as env_names
from mlflow_aws.migration.prepare import _scrub

from . import GcError, LocalStore, Options, S3Store, batch_rows_from, parse_duration, run_gc

PREFIX = "mlflow-aws gc"


def say(message: str) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr, flush=True)


def options_from(environ: Mapping[str, str]) -> Options:
    retention = environ.get(env_names.GC_TRACE_RETENTION, "").strip()
    dry_run = environ.get(env_names.GC_DRY_RUN, "false").strip().lower()
    if dry_run not in ("true", "false", "1", "0", ""):
        raise GcError(f"MLFLOW_AWS_GC_DRY_RUN must be true or false, got {dry_run!r}")
    return Options(
        older_than_ms=parse_duration(
            environ.get(env_names.GC_OLDER_THAN, "0"), env_names.GC_OLDER_THAN
        ),
        trace_retention_ms=(
            parse_duration(retention, env_names.GC_TRACE_RETENTION) if retention else None
        ),
        dry_run=dry_run in ("true", "1"),
        batch_rows=batch_rows_from(environ),
    )


def main(environ: Mapping[str, str] = os.environ) -> int:
    uri = environ.get("MLFLOW_BACKEND_STORE_URI", "")
    root = environ.get("MLFLOW_ARTIFACTS_DESTINATION", "").rstrip("/")
    try:
        if not uri or not root:
            raise GcError("MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION are required")
        if (
            uri.startswith("mysql")
            and "ssl_ca=" not in uri
            and environ.get(env_names.DB_TLS_INSECURE) != "1"
        ):
            raise GcError(
                "refusing a MySQL store whose TLS certificate cannot be verified: run through "
                "the image's entrypoint (`entrypoint.sh gc`) with MLFLOW_AWS_DB_CA_BUNDLE set"
            )
        options = options_from(environ)
        project = environ.get(env_names.PROJECT) or root.rsplit("/", 1)[-1]
        if root.startswith("s3://"):
            import boto3

            store: S3Store | LocalStore = S3Store(boto3.client("s3"), root)
        else:
            store = LocalStore(Path(root))
    except (GcError, ValueError) as exc:
        say(f"not started: {exc}")
        return 2
    try:
        report = run_gc(uri, store, options, project, say)
    except GcError as exc:
        say(f"failed: {_scrub(str(exc), uri)}")
        return 1
    except Exception as exc:
        say(f"failed: {_scrub(f'{type(exc).__name__}: {exc}', uri)}")
        return 1
    for line in report.lines():
        print(line)
    print(json.dumps({"mlflow_aws_gc": report.as_dict()}, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
