"""Bringing one project back to a point in time (helper restore-plan / -schema / -artifacts).

The schema copy runs for real between two MariaDB servers (TLS required, like Aurora): a
"restored" one playing the temporary cluster at the chosen time, and the live one, which also
holds another project that must not move. The artifacts part runs on a versioned moto bucket.
The plan itself needs AWS (it prints commands): its identifiers and the absence of secrets
are checked here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.support.gc_world import migrate, table_rows, versioned_bucket
from tests.support.helper_run import helper_env, run_helper
from tests.support.services import MariaDB, MotoServer, running_mariadb
from tests.support.stack_on_moto import (
    REGION,
    Project,
    aws_client,
    bundle_for,
    create_project,
    put_connection_secret,
    server_role,
)

BUCKET = "mlflow-aws-restore-artifacts"  # the stack's bucket prefix (helper/trust.py)
ENDPOINT = "mlflow-aws-dev-x1.cluster-c0ffee123456.eu-west-1.rds.amazonaws.com"


def outputs_for(
    path: Path, endpoint: str, port: int, admin_arn: str, secrets: dict[str, str], server: bool
) -> Path:
    document: dict[str, Any] = {
        "Region": REGION,
        "ArtifactRoot": f"s3://{BUCKET}",
        "DatabaseEndpoint": endpoint,
        "DatabasePort": port,
        "DatabasePassword": "[secret]",
        "AdminSecretArn": admin_arn,
        "Projects": {
            name: {"ArtifactRoot": f"s3://{BUCKET}/{name}", "ConnectionSecretArn": arn}
            for name, arn in secrets.items()
        },
    }
    if server:
        document["ServerUrl"] = "https://mlflow.example.com"
    path.write_text(json.dumps(document))
    return path


def test_the_plan_names_the_stacks_resources_and_no_secret(tmp_path: Path) -> None:
    secret = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:mlflow-aws/dev/churn-AbC123"
    admin = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:mlflow-aws/dev/admin-x-Zz9Yy8"
    outputs = outputs_for(tmp_path / "o.json", ENDPOINT, 3306, admin, {"churn": secret}, True)
    argv = ["restore-plan", "--project", "churn", "--outputs", str(outputs), "--time"]
    result = run_helper([*argv, "2026-11-30T14:00:00+01:00"], helper_env({}, tmp_path))
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "to 2026-11-30T13:00:00Z (UTC)" in plan  # the zone given, said in UTC
    assert "--source-db-cluster-identifier mlflow-aws-dev-x1 " in plan
    assert "--db-cluster-identifier mlflow-aws-dev-x1-restore-202611301300 " in plan
    assert "--restore-to-time 2026-11-30T13:00:00Z" in plan
    assert "Key=mlflow-aws:project,Values=churn Key=mlflow-aws:stack,Values=dev" in plan
    assert "s3://mlflow-aws-restore-artifacts/churn/" in plan
    assert "restore-schema --project churn --outputs" in plan and "--stamp 202611301300" in plan
    assert "churn__before_202611301300" in plan
    assert "delete-db-cluster --region eu-west-1 --db-cluster-identifier mlflow-aws-dev-x1-" in plan
    assert "password" not in plan.lower().replace("admin password", "")

    for bad, says in (("yesterday", "not an ISO 8601 time"), ("2999-01-01T00:00:00Z", "future")):
        refused = run_helper(["restore-plan", "--project", "churn", "--outputs", str(outputs),
                              "--time", bad], helper_env({}, tmp_path))  # fmt: skip
        assert refused.returncode == 2 and says in refused.stderr
    no_aurora = outputs_for(tmp_path / "p.json", "10.0.0.5", 3306, admin, {"churn": secret}, False)
    refused = run_helper(["restore-plan", "--project", "churn", "--outputs", str(no_aurora),
                          "--time", "2026-11-30T14:00:00Z"], helper_env({}, tmp_path))  # fmt: skip
    assert refused.returncode == 1 and "not an Aurora cluster endpoint" in refused.stderr


# -- the schema, for real -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restored_cluster() -> Iterator[MariaDB]:
    """The temporary cluster restored to the chosen time: another server, same admin."""
    with running_mariadb() as server:
        yield server


def fill(project: Project, runs: int, metrics: int) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(project.mariadb.url(project.user, project.password, project.schema))
    experiment = client.create_experiment(f"e-{time.monotonic_ns()}")
    ids = []
    for _ in range(runs):
        run_id = client.create_run(experiment).info.run_id
        for step in range(metrics):
            client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
        ids.append(str(run_id))
    client._tracking_client.store.engine.dispose()  # hold no connection: writers are counted
    return ids


@pytest.mark.slow
def test_restore_schema_copies_one_project_back_and_keeps_the_rest(
    mariadb: MariaDB, restored_cluster: MariaDB, moto: MotoServer, tmp_path: Path
) -> None:
    aws = moto.aws_env()
    # Then (the restored cluster): project churn with its runs as they were.
    then = create_project(restored_cluster, "churn")
    migrate(restored_cluster.url(then.user, then.password, then.schema))
    kept_runs = fill(then, 3, 5)
    # Now (the live cluster): churn has lost runs and gained others; another project lives.
    live = create_project(mariadb, "churn", password=then.password)
    migrate(mariadb.url(live.user, live.password, live.schema))
    later_runs = fill(live, 1, 2)
    other = create_project(mariadb, "other-team")
    migrate(mariadb.url(other.user, other.password, other.schema))
    fill(other, 2, 3)
    other_before = table_rows(mariadb, other.schema)
    live_before = table_rows(mariadb, live.schema)
    then_rows = table_rows(restored_cluster, then.schema)

    admin = aws_client("secretsmanager", aws).create_secret(
        Name=f"mlflow-aws/restore/admin-{time.monotonic_ns()}",
        SecretString=json.dumps({"username": mariadb.admin_user,
                                 "password": mariadb.admin_password}),
    )["ARN"]  # fmt: skip
    both_cas = tmp_path / "cas.pem"  # two test CAs; on AWS both clusters have the RDS CA
    both_cas.write_text(mariadb.ca_path.read_text() + restored_cluster.ca_path.read_text())
    secret = put_connection_secret(aws, bundle_for(live, "restore", BUCKET, server_role(aws)))
    outputs = outputs_for(tmp_path / "o.json", mariadb.host, mariadb.port, admin,
                          {"churn": secret}, False)  # fmt: skip
    env = helper_env(aws, tmp_path)
    argv = ["restore-schema", "--project", "churn", "--outputs", str(outputs), "--from-endpoint",
            f"{restored_cluster.host}:{restored_cluster.port}", "--stamp", "202611301400",
            "--db-ca", str(both_cas)]  # fmt: skip

    # A writer is still connected: refused, naming it; nothing changed.
    writer = mariadb.connect(live.user, live.password, live.schema)
    with contextlib.closing(writer):
        refused = run_helper(argv, env)
    assert refused.returncode == 1
    assert "user mlflow_churn has 1 connection(s) to the live cluster: 127.0.0.1:" in refused.stderr
    assert table_rows(mariadb, live.schema) == live_before

    dry = run_helper([*argv, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert table_rows(mariadb, live.schema) == live_before

    restored = run_helper(argv, env)
    assert restored.returncode == 0, restored.stderr
    assert "the previous one is churn__before_202611301400" in restored.stdout
    assert mariadb.admin_password not in restored.stdout + restored.stderr
    assert table_rows(mariadb, live.schema) == then_rows  # churn as it was then, row for row
    assert table_rows(mariadb, "churn__before_202611301400") == live_before  # nothing lost
    assert table_rows(mariadb, other.schema) == other_before  # the other project untouched
    [(staging,)] = mariadb.query(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'churn__restore'"
    )
    assert staging == 0
    # The trigger MLflow keeps on secrets came along with its table.
    assert mariadb.query(
        "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = 'churn'"
    ) == [("prevent_secrets_aad_mutation",)]

    # The project's own user and MLflow see the restored runs; the later run is gone.
    from mlflow import MlflowClient

    client = MlflowClient(mariadb.url(live.user, live.password, live.schema))
    found = {r.info.run_id for e in client.search_experiments() for r in
             client.search_runs([e.experiment_id])}  # fmt: skip
    assert found == set(kept_runs) and not found & set(later_runs)
    # …but not the kept copy: its grants name the project's schema only.
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=mariadb.host, port=mariadb.port, user=live.user,
                        password=live.password, database="churn__before_202611301400",
                        ssl=mariadb.ssl).close()  # fmt: skip


# -- the artifacts --------------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_artifacts_sets_the_prefix_back_from_noncurrent_versions(
    moto: MotoServer, tmp_path: Path
) -> None:
    aws = moto.aws_env()
    versioned_bucket(aws, BUCKET)
    s3 = aws_client("s3", aws)
    put = lambda key, body: s3.put_object(Bucket=BUCKET, Key=key, Body=body)  # noqa: E731
    put("churn/1/a/artifacts/kept.txt", b"same")
    put("churn/1/a/artifacts/changed.txt", b"v1")
    put("churn/1/b/artifacts/deleted.txt", b"was here")
    put("other/1/x/artifacts/theirs.txt", b"v1")
    time.sleep(1.5)
    at = datetime.now(UTC)
    time.sleep(1.5)
    put("churn/1/a/artifacts/changed.txt", b"v2")
    s3.delete_object(Bucket=BUCKET, Key="churn/1/b/artifacts/deleted.txt")  # e.g. by gc
    put("churn/1/c/artifacts/new.txt", b"made later")
    put("other/1/x/artifacts/theirs.txt", b"v2")

    secret = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:mlflow-aws/dev/churn-AbC123"
    outputs = outputs_for(tmp_path / "o.json", ENDPOINT, 3306, "arn:admin", {"churn": secret},
                          False)  # fmt: skip
    env = helper_env(aws, tmp_path)
    argv = ["restore-artifacts", "--project", "churn", "--outputs", str(outputs),
            "--time", at.isoformat()]  # fmt: skip

    def current() -> dict[str, bytes]:
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}

    before = current()
    dry = run_helper([*argv, "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert "would set 2 objects back" in dry.stderr and "would delete 1 made since" in dry.stderr
    assert current() == before
    done = run_helper(argv, env)
    assert done.returncode == 0, done.stderr
    assert current() == {
        "churn/1/a/artifacts/kept.txt": b"same",
        "churn/1/a/artifacts/changed.txt": b"v1",
        "churn/1/b/artifacts/deleted.txt": b"was here",
        "other/1/x/artifacts/theirs.txt": b"v2",  # another project's prefix is not touched
    }
    # Undoable: what it replaced or deleted is a noncurrent version now.
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="churn/1/c/")
    assert [v["IsLatest"] for v in versions["Versions"]] == [False]
