"""``python -m helper gc``: the image's gc (``mlflow_aws.gc``) run here, with the project's
rights only: the database as the project's MySQL user (TLS verified), S3 as the project's
server role (its prefix only; renewed while a long gc runs), never the teammate's own S3
rights. The embedded default (``--local``) collects its SQLite store and artifact directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checks
from .errors import HelperError
from .outputs import ProjectConnection

if TYPE_CHECKING:
    from mlflow_aws.gc import Options, Report

    from .runtimes import LocalStore


def say(message: str) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def server_role_s3(connection: ProjectConnection) -> Any:
    """An S3 client holding the project's server role, refreshed before it expires."""
    import boto3
    import botocore.session
    from botocore.credentials import RefreshableCredentials

    from .credentials import RoleCredentialSource
    from .runtimes import server_role_arn

    source = RoleCredentialSource(
        server_role_arn(connection), connection.region, connection.project
    )

    def metadata() -> dict[str, str]:
        current = source.current()
        return {
            "access_key": current.access_key_id,
            "secret_key": current.secret_access_key,
            "token": current.session_token,
            "expiry_time": current.expiration.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=metadata(), refresh_using=metadata, method="assume-role"
    )
    core = botocore.session.get_session()
    core._credentials = credentials
    return boto3.Session(botocore_session=core, region_name=connection.region).client("s3")


def _finish(report: Report, as_json: bool) -> int:
    for line in report.lines():
        print(line)
    if as_json:
        import json

        print(json.dumps({"mlflow_aws_gc": report.as_dict()}, sort_keys=True))
    return 0


def gc_connection(
    connection: ProjectConnection, db_ca: Path | None, options: Options, as_json: bool = False
) -> int:
    from mlflow_aws.gc import GcError, S3Store, run_gc

    from .aws import aws_errors
    from .runtimes import verified_store

    checks.check_mlflow_version(connection.mlflow_version)
    with verified_store(connection, db_ca) as verified:
        store = S3Store(server_role_s3(connection), connection.artifact_root)
        try:
            with aws_errors(f"collecting the artifacts of project {connection.project}"):
                report = run_gc(verified.uri, store, options, connection.project, say)
        except (GcError, PermissionError) as exc:
            raise HelperError(f"gc of project {connection.project}: {exc}") from None
    return _finish(report, as_json)


def gc_local(store: LocalStore, options: Options, as_json: bool = False) -> int:
    from mlflow_aws.gc import GcError, LocalStore, run_gc

    if not store.database_path.exists():
        raise HelperError(f"no local database at {store.database_path}: nothing to collect")
    try:
        report = run_gc(
            store.backend_store_uri,
            LocalStore(store.artifacts_directory),
            options,
            store.project,
            say,
        )
    except GcError as exc:
        raise HelperError(f"gc of local project {store.project}: {exc}") from None
    return _finish(report, as_json)
