"""``restore-plan``, ``restore-schema``, ``restore-artifacts``: one project back to a time.

``restore-plan`` prints the whole sequence for one project and time as commands (AWS CLI, and
this helper's two tools for the parts the CLI cannot do), with the stack's identifiers from its
outputs and no secret: the admin password is read by ``restore-schema`` itself from the
stack's admin secret. The tools run with the platform engineer's own AWS credentials (reading
the admin secret; listing, reading and writing object versions of the project's prefix).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow_aws.names import CONNECTION_SECRET_NAME, PROJECT_NAME_PATTERN

from .errors import HelperError
from .invocation import helper_command
from .outputs import OutputsError, read_outputs_file, read_stack_outputs

# <cluster-id>.cluster-<hash>.<region>.rds.amazonaws.com (Aurora's cluster endpoint)
_CLUSTER_ENDPOINT = re.compile(r"([a-z][a-z0-9-]{0,62})\.cluster-[a-z0-9]+\.([a-z0-9-]+)\.rds\.")
_SECRET_NAME = re.compile(rf":secret:{CONNECTION_SECRET_NAME.pattern}-[A-Za-z0-9]{{6}}$")
_ARTIFACT_ROOT = re.compile(rf"s3://([a-z0-9.-]+)/({PROJECT_NAME_PATTERN})")
NONCURRENT_DAYS_NOTE = "30 days (the bucket's lifecycle, NONCURRENT_VERSION_DAYS)"


@dataclass(frozen=True)
class StackFacts:
    """What the plan needs of the stack outputs (no secret among them)."""

    region: str
    stack: str
    project: str
    bucket: str
    prefix: str
    endpoint: str
    port: int
    cluster_id: str | None  # None when DatabaseEndpoint is not an Aurora cluster endpoint
    admin_secret_arn: str
    central_server: bool


def stack_facts(data: object, project: str, source: str) -> StackFacts:
    if not isinstance(data, dict):
        raise OutputsError(f"{source}: the outputs must be a JSON object")

    def field(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value or value == "[secret]":
            raise OutputsError(f"{source}: missing field {key} (a stack from before it?)")
        return value

    projects = data.get("Projects")
    if not isinstance(projects, dict) or project not in projects:
        raise OutputsError(f"{source}: no project {project!r} in Projects")
    entry = projects[project]
    root = str(entry.get("ArtifactRoot", ""))
    match = _ARTIFACT_ROOT.fullmatch(root)
    if not match:
        raise OutputsError(f"{source}: Projects.{project}.ArtifactRoot is not s3://bucket/prefix")
    endpoint = field("DatabaseEndpoint")
    cluster = _CLUSTER_ENDPOINT.match(endpoint)
    secret = _SECRET_NAME.search(str(entry.get("ConnectionSecretArn", "")))
    return StackFacts(
        region=field("Region"),
        stack=secret["stack"] if secret else "?",
        project=project,
        bucket=match.group(1),
        prefix=match.group(2),
        endpoint=endpoint,
        port=int(data.get("DatabasePort") or 3306),
        cluster_id=cluster.group(1) if cluster else None,
        admin_secret_arn=field("AdminSecretArn"),
        central_server=bool(data.get("ServerUrl")),
    )


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC (said in the plan)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HelperError(
            f"--time {text!r} is not an ISO 8601 time, e.g. 2026-11-30T14:00:00Z", 2
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    if value > datetime.now(UTC):
        raise HelperError(f"--time {text} is in the future", 2)
    return value


def _source_args(args: argparse.Namespace) -> list[str]:
    if args.stack:
        return ["--stack", args.stack]
    return ["--outputs", str(args.outputs)]


def facts_from_args(args: argparse.Namespace) -> StackFacts:
    if args.stack:
        data, source = read_stack_outputs(args.stack), f"stack {args.stack!r}"
    elif args.outputs:
        data, source = read_outputs_file(args.outputs), f"outputs file {args.outputs}"
    else:
        raise HelperError(f"{args.command} needs --outputs FILE or --stack S", 2)
    return stack_facts(data, args.project, source)


def plan(facts: StackFacts, at: datetime, source_args: list[str]) -> list[str]:
    """The restore, step by step, as shell lines (comments say what and why)."""
    assert facts.cluster_id is not None
    when = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = at.strftime("%Y%m%d%H%M")
    temporary = f"{facts.cluster_id}-restore-{stamp}"[:63]
    r = ["--region", facts.region]
    project = ["--project", facts.project, *source_args]
    j = shlex.join
    helper = helper_command().split()  # as the user ran it
    lines = [
        f"# Restore project {facts.project} of stack {facts.stack} to {when} (UTC), without "
        "touching the other projects.",
        f"# Live cluster {facts.cluster_id} (from DatabaseEndpoint), bucket {facts.bucket}, "
        f"prefix {facts.prefix}/. No secret below: restore-schema reads the admin password "
        "from AdminSecretArn.",
        "set -euo pipefail",
        "",
        "# 1. Can the cluster go back that far? (it keeps db.backupRetentionDays of history)",
        j(
            [
                "aws",
                "rds",
                "describe-db-clusters",
                *r,
                "--db-cluster-identifier",
                facts.cluster_id,
                "--query",
                "DBClusters[0].[EarliestRestorableTime,LatestRestorableTime]",
                "--output",
                "text",
            ]
        ),
        "",
        "# 2. A temporary cluster at that time, in the live cluster's subnets and security "
        "groups (the live cluster is not touched):",
        "SUBNET_GROUP=$("
        + j(
            [
                "aws",
                "rds",
                "describe-db-clusters",
                *r,
                "--db-cluster-identifier",
                facts.cluster_id,
                "--query",
                "DBClusters[0].DBSubnetGroup",
                "--output",
                "text",
            ]
        )
        + ")",
        "SECURITY_GROUPS=$("
        + j(
            [
                "aws",
                "rds",
                "describe-db-clusters",
                *r,
                "--db-cluster-identifier",
                facts.cluster_id,
                "--query",
                "DBClusters[0].VpcSecurityGroups[].VpcSecurityGroupId",
                "--output",
                "text",
            ]
        )
        + ")",
        j(
            [
                "aws",
                "rds",
                "restore-db-cluster-to-point-in-time",
                *r,
                "--source-db-cluster-identifier",
                facts.cluster_id,
                "--db-cluster-identifier",
                temporary,
                "--restore-to-time",
                when,
                "--restore-type",
                "copy-on-write",
            ]
        )
        + ' --db-subnet-group-name "$SUBNET_GROUP" --vpc-security-group-ids $SECURITY_GROUPS '
        + j(
            [
                "--serverless-v2-scaling-configuration",
                "MinCapacity=0.5,MaxCapacity=4",
                "--tags",
                f"Key=mlflow-aws:restore-of,Value={facts.project}",
            ]
        ),
        j(
            [
                "aws",
                "rds",
                "create-db-instance",
                *r,
                "--db-instance-identifier",
                f"{temporary}-1",
                "--db-cluster-identifier",
                temporary,
                "--engine",
                "aurora-mysql",
                "--db-instance-class",
                "db.serverless",
            ]
        ),
        j(
            [
                "aws",
                "rds",
                "wait",
                "db-instance-available",
                *r,
                "--db-instance-identifier",
                f"{temporary}-1",
            ]
        ),
        "RESTORED=$("
        + j(
            [
                "aws",
                "rds",
                "describe-db-clusters",
                *r,
                "--db-cluster-identifier",
                temporary,
                "--query",
                "DBClusters[0].Endpoint",
                "--output",
                "text",
            ]
        )
        + ")",
        "",
        "# 3. Stop every writer of the project (restore-schema refuses while its MySQL user "
        "has connections, and lists them):",
    ]
    if facts.central_server:
        lines += [
            "SERVICE=$("
            + j(
                [
                    "aws",
                    "resourcegroupstaggingapi",
                    "get-resources",
                    *r,
                    "--resource-type-filters",
                    "ecs:service",
                    "--tag-filters",
                    f"Key=mlflow-aws:project,Values={facts.project}",
                    f"Key=mlflow-aws:stack,Values={facts.stack}",
                    "--query",
                    "ResourceTagMappingList[0].ResourceARN",
                    "--output",
                    "text",
                ]
            )
            + ")",
            'CLUSTER=$(echo "$SERVICE" | cut -d/ -f2)',
            "DESIRED=$(aws ecs describe-services --region "
            + facts.region
            + ' --cluster "$CLUSTER" --services "$SERVICE" --query "services[0].desiredCount")',
            "aws ecs update-service --region "
            + facts.region
            + ' --cluster "$CLUSTER" --service "$SERVICE" --desired-count 0 > /dev/null',
            "aws ecs wait services-stable --region "
            + facts.region
            + ' --cluster "$CLUSTER" --services "$SERVICE"',
        ]
    lines += [
        "#    and ask teammates to stop their laptop servers of the project.",
        "",
        f"# 4. The schema back from the temporary cluster (the live one is kept as "
        f"{facts.prefix.replace('-', '_')}__before_{stamp}):",
        j([*helper, "restore-schema", *project, "--from-endpoint"])
        + ' "$RESTORED" '
        + j(["--stamp", stamp, "--dry-run"]),
        j([*helper, "restore-schema", *project, "--from-endpoint"])
        + ' "$RESTORED" '
        + j(["--stamp", stamp]),
        "",
        f"# 5. The artifacts under s3://{facts.bucket}/{facts.prefix}/ as they were then, from "
        f"noncurrent versions (kept {NONCURRENT_DAYS_NOTE}):",
        j([*helper, "restore-artifacts", *project, "--time", when, "--dry-run"]),
        j([*helper, "restore-artifacts", *project, "--time", when]),
        "",
        "# 6. Writers back on:",
    ]
    if facts.central_server:
        lines.append(
            "aws ecs update-service --region "
            + facts.region
            + ' --cluster "$CLUSTER" --service "$SERVICE" --desired-count "$DESIRED" > /dev/null'
        )
    lines += [
        "#    (teammates start their servers again).",
        "",
        "# 7. When satisfied: the temporary cluster goes (it is billed while it exists).",
        j(["aws", "rds", "delete-db-instance", *r, "--db-instance-identifier", f"{temporary}-1"]),
        j(
            [
                "aws",
                "rds",
                "wait",
                "db-instance-deleted",
                *r,
                "--db-instance-identifier",
                f"{temporary}-1",
            ]
        ),
        j(
            [
                "aws",
                "rds",
                "delete-db-cluster",
                *r,
                "--db-cluster-identifier",
                temporary,
                "--skip-final-snapshot",
            ]
        ),
    ]
    return lines


# -- the commands -------------------------------------------------------------------------------


def cmd_restore_plan(args: argparse.Namespace) -> int:
    facts = facts_from_args(args)
    if facts.cluster_id is None:
        raise OutputsError(
            f"DatabaseEndpoint {facts.endpoint} is not an Aurora cluster endpoint "
            "(<cluster>.cluster-<id>.<region>.rds.amazonaws.com): no cluster to restore"
        )
    for line in plan(facts, parse_time(args.time), _source_args(args)):
        print(line)
    return 0


def _admin_credentials(facts: StackFacts) -> tuple[str, str]:
    import json

    from .aws import aws_errors, client

    with aws_errors(f"reading the stack's admin secret {facts.admin_secret_arn}"):
        value = client("secretsmanager", facts.region).get_secret_value(
            SecretId=facts.admin_secret_arn
        )
    try:
        secret = json.loads(value["SecretString"])
        return str(secret["username"]), str(secret["password"])
    except (KeyError, TypeError, ValueError):
        raise HelperError("the admin secret holds no username and password") from None


def _endpoint(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.strip().partition(":")
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host) or (port and not port.isdigit()):
        raise HelperError(f"--from-endpoint {text!r} is not HOST or HOST:PORT", 2)
    return host, int(port) if port else default_port


def cmd_restore_schema(args: argparse.Namespace) -> int:
    from mlflow_aws.names import name_problem
    from mlflow_aws.restore import Endpoint, RestoreError, copy_schema

    from . import tls
    from .aws import load_connection_from_aws

    if name_problem(args.project):
        raise HelperError(str(name_problem(args.project)), 2)
    facts = facts_from_args(args)
    if not re.fullmatch(r"[0-9a-z]{1,20}", args.stamp):
        raise HelperError("--stamp must be 1-20 lowercase letters and digits", 2)
    # The project's bundle names its schema, user and the CAs that sign both clusters.
    connection = load_connection_from_aws(args.project, facts.region, _secret_arn(args))
    user, password = _admin_credentials(facts)
    pem, _ = tls.ca_bundle_text(connection, args.db_ca)
    host, port = _endpoint(args.from_endpoint, facts.port)
    with tls.ca_file(pem) as ca:
        source = Endpoint(host, port, user, password, str(ca))
        target = Endpoint(facts.endpoint, facts.port, user, password, str(ca))
        try:
            report = copy_schema(
                source,
                target,
                connection.database,
                _username(connection),
                args.stamp,
                _say,
                dry_run=args.dry_run,
                despite_connections=args.despite_connections,
            )
        except RestoreError as exc:
            raise HelperError(str(exc)) from None
        except Exception as exc:  # pymysql: one line, never the password
            detail = str(exc).replace(password, "***")
            raise HelperError(f"restoring schema {connection.database} failed: {detail}") from None
    print(
        f"{'dry run: ' if args.dry_run else ''}schema {report.schema}: {report.tables} tables, "
        f"{report.rows:,} rows{'' if args.dry_run else f'; the previous one is {report.kept_as}'}"
    )
    return 0


def _secret_arn(args: argparse.Namespace) -> str | None:
    data = read_stack_outputs(args.stack) if args.stack else read_outputs_file(args.outputs)
    try:
        return str(data["Projects"][args.project]["ConnectionSecretArn"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def _username(connection: Any) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(connection.backend_store_uri).username)


def _say(message: str) -> None:
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def cmd_restore_artifacts(args: argparse.Namespace) -> int:
    from mlflow_aws.restore import RestoreError, restore_versions

    from .aws import aws_errors, client

    facts = facts_from_args(args)
    at = parse_time(args.time)
    s3 = client("s3", facts.region)
    try:
        with aws_errors(f"restoring s3://{facts.bucket}/{facts.prefix}/ to {at.isoformat()}"):
            report = restore_versions(s3, facts.bucket, facts.prefix, at, _say, args.dry_run)
    except RestoreError as exc:
        raise HelperError(str(exc)) from None
    for key in report.keys:
        print(key)
    return 0


def add_restore_commands(commands: Any, add_db_ca: Any) -> None:
    """The three subcommands (cli.py calls this: its parser stays one place)."""

    def sources(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument(
            "--stack", metavar="S", help="read stack S's outputs with the pulumi CLI"
        )
        group.add_argument(
            "--outputs", metavar="FILE", type=Path, help="a `pulumi stack output --json` file"
        )

    restore_plan = commands.add_parser(
        "restore-plan",
        help="print the exact steps to bring one project back to a point in time",
    )
    restore_plan.add_argument("--project", metavar="NAME", required=True)
    restore_plan.add_argument("--time", required=True, help="ISO 8601, e.g. 2026-11-30T14:00:00Z")
    sources(restore_plan)

    schema = commands.add_parser(
        "restore-schema",
        help="copy the project's schema back from a restored cluster (the current one is kept)",
    )
    schema.add_argument("--project", metavar="NAME", required=True)
    sources(schema)
    schema.add_argument(
        "--from-endpoint", metavar="HOST[:PORT]", required=True, help="the restored cluster"
    )
    schema.add_argument(
        "--stamp", required=True, help="names the kept schema <schema>__before_<stamp>"
    )
    schema.add_argument("--dry-run", action="store_true", help="check and count; copy nothing")
    schema.add_argument(
        "--despite-connections",
        action="store_true",
        help="swap even while the project's MySQL user is connected (its writers lose the "
        "tables under them)",
    )
    add_db_ca(schema)

    artifacts = commands.add_parser(
        "restore-artifacts",
        help="set the project's S3 prefix back to a point in time from noncurrent versions",
    )
    artifacts.add_argument("--project", metavar="NAME", required=True)
    artifacts.add_argument("--time", required=True, help="ISO 8601, e.g. 2026-11-30T14:00:00Z")
    sources(artifacts)
    artifacts.add_argument("--dry-run", action="store_true", help="report; change nothing")
