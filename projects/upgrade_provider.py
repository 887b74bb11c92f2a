"""Upgrading a project's MLflow (``mlflowVersion``) with every writer stopped, as a Pulumi
dynamic resource.

MLflow supports no mixed-version writers on a SQL store: its release notes ask for "a
coordinated schema upgrade with all writers stopped and a restorable backup". ``MlflowUpgrade``
(type token ``pulumi-python:dynamic/mlflow:Upgrade``) sits between a project's new task
definition and its ECS service (the service depends on it), and whenever the project's schema
does not yet belong to the target MLflow it does, in order, each step timed:

1. ``check-clients``  the project's MySQL user may have sessions only from the central
   service's own tasks (``information_schema.PROCESSLIST`` through the RDS Data API): a
   teammate's laptop server is refused before anything changes, listing each client host, its
   sessions and how long the oldest has been in its state;
2. ``stop-writers``   application auto scaling of the service suspended, the service set to 0
   tasks, and waited for until none runs;
3. ``check-clients``  again with nothing of ours running: any session of the project's user is
   a writer we do not control, so the service is started again (same tasks as before) and the
   upgrade refused, unless ``ignore_connected_clients`` (``upgrade.ignoreConnectedClients``);
4. ``restorable-point`` the time the writers were confirmed stopped (a point-in-time restore
   target, ``helper restore-plan --time``) and, with ``snapshot``, a manual cluster snapshot,
   waited for until available: it holds every write of the old servers;
5. ``migrate``        one ECS task of the *new* task definition with the command ``migrate``
   (``docker/entrypoint.sh migrate``: the image's own migration under its named lock, which
   records the new version), waited for until it stopped, its exit code checked;
6. ``start-writers``  the service on the new task definition at its earlier task count (at
   least ``min_tasks``), waited for until they run, auto scaling resumed.

The snapshot is taken after the writers stopped, not before: taken earlier it would miss their
last writes. An empty schema (a new project) or one the target MLflow already owns needs none
of this: the resource records that and changes nothing. A failed migration leaves the service
started on its old tasks, which refuse a schema that moved (mlflow_aws/schema_version.py), and
the error names the snapshot to restore.

The result is in the resource's ``report`` output (``pulumi stack output Upgrades``) and on the
provider's stderr (``pulumi up --logtostderr -v 3``).

STABLE CONTRACT, as for projects/schema_provider.py: stacks store the provider as a pickled
reference to ``projects.upgrade_provider.MlflowUpgradeProvider``; never rename or move it.
It keeps nothing on ``self``; ``check`` never talks to AWS. AWS endpoints come from the
environment boto3 reads (``AWS_ENDPOINT_URL_ECS``, ``_RDS``, ``_APPLICATION_AUTO_SCALING``,
``_RDS_DATA``), which is how the tests reach their fakes.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.runtime import rpc

from mlflow_aws.names import ProjectIdentifiers, stack_slug, validate_name
from mlflow_aws.schema_version import RECORD_TABLE
from mlflow_aws.start_timing import rollout_seconds
from mlflow_aws.task_container import CONTAINER_NAME, log_group_name, service_log_stream
from projects.data_api import DataApiExecutor, aws_session, region_of
from projects.schema_sql import SchemaProviderError, Statement, quote_identifier

PROVIDER_MODULE = "projects.upgrade_provider"
PROVIDER_CLASS = "MlflowUpgradeProvider"

INPUT_KEYS = (
    "project",
    "stack",
    "mlflow_version",
    "cluster_arn",  # the Aurora cluster: its Data API and its snapshots
    "admin_secret_arn",
    "ecs_cluster_arn",
    "task_definition_arn",  # the new one: the migration runs it, the service starts on it
    "subnets",
    "security_groups",
    "assign_public_ip",
    "min_tasks",
    "ignore_connected_clients",
    "snapshot",
    "poll_seconds",
    "stop_timeout_seconds",
    "migrate_timeout_seconds",
    "start_timeout_seconds",
    "aws_profile",
    "assume_roles",
)
MIGRATE_COMMAND = ["migrate"]  # docker/entrypoint.sh migrate
STARTED_BY = "mlflow-aws-upgrade"
DEFAULT_POLL_SECONDS = 5.0
# A service's tasks drain from the load balancer (60 s) and stop (30 s) before they are gone.
DEFAULT_STOP_TIMEOUT_SECONDS = 900.0
DEFAULT_MIGRATE_TIMEOUT_SECONDS = 3600.0  # a big schema's ALTER TABLEs
# As long as `pulumi up` waits for a rollout (mlflow_aws/start_timing.py, from server.env).
DEFAULT_START_TIMEOUT_SECONDS = float(rollout_seconds())
SNAPSHOT_TIMEOUT_SECONDS = 3600.0
_TASK_DEFINITION_ARN = re.compile(
    r"arn:aws[a-z-]*:ecs:[a-z0-9-]+:\d{12}:task-definition/(?P<family>[A-Za-z0-9_-]{1,255}):\d+"
)
_ECS_CLUSTER_ARN = re.compile(r"arn:aws[a-z-]*:ecs:[a-z0-9-]+:\d{12}:cluster/[A-Za-z0-9_-]{1,255}")
_RELEASE = re.compile(r"\d+\.\d+\.\d+")
# DBClusterSnapshotIdentifier (RDS API reference, CreateDBClusterSnapshot): 1-255 letters,
# digits and hyphens, a letter first, no two consecutive hyphens, no hyphen at the end.
SNAPSHOT_IDENTIFIER = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|-(?!-)){0,254}(?<!-)")


class UpgradeRefused(SchemaProviderError):
    """The upgrade will not run (or ran and failed); the message says why and what to do."""


def _say(message: str) -> None:
    print(f"mlflow:Upgrade: {message}", file=sys.stderr, flush=True)


# -- pure decisions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaFacts:
    tables: bool  # MLflow's tables exist (alembic_version)
    revision: str | None
    recorded_version: str | None  # the MLflow that last migrated it through mlflow-aws


def needs_upgrade(facts: SchemaFacts, target: str) -> bool:
    """Whether the schema must be migrated to ``target`` with the writers stopped: it holds
    MLflow's tables and mlflow-aws has not recorded ``target`` as its version (a schema of a
    plain ``mlflow db upgrade`` has no record: the migration step finds it current or not)."""
    return facts.tables and facts.recorded_version != target


@dataclass(frozen=True)
class Session:
    id: int
    host: str  # "ip:port" as PROCESSLIST shows it (the database resolves no names)
    seconds: int  # PROCESSLIST.TIME: in its current state (idle, for a pooled connection)
    command: str

    @property
    def client(self) -> str:
        host = self.host.rsplit(":", 1)[0] if self.host.count(":") == 1 else self.host
        return host.strip("[]") or "?"


def foreign_sessions(sessions: Sequence[Session], ours: Sequence[str]) -> list[Session]:
    """The sessions that are not from one of our own tasks (by client IP)."""
    mine = set(ours)
    return [s for s in sessions if s.client not in mine]


def describe_clients(sessions: Sequence[Session]) -> str:
    """One line per client host: its sessions and the longest time one has been in its state
    (MySQL records no connection start, so this is a lower bound of how long it is connected)."""
    by_host: dict[str, list[Session]] = {}
    for session in sessions:
        by_host.setdefault(session.client, []).append(session)
    lines = []
    for host in sorted(by_host):
        group = by_host[host]
        longest = max(s.seconds for s in group)
        lines.append(
            f"{host}: {len(group)} session(s), connected at least {_duration(longest)} "
            f"(ids {', '.join(str(s.id) for s in sorted(group, key=lambda s: s.id))})"
        )
    return "; ".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def snapshot_identifier(stack: str, project: str, version: str, when: datetime.datetime) -> str:
    """``mlflow-aws-<stack>-<project>-to-<version>-<yyyymmdd>-<hhmmss>`` within RDS's rules."""
    stack_part = stack_slug(stack)
    if not stack_part[0].isalpha():
        stack_part = f"s{stack_part}"
    name = (
        f"mlflow-aws-{stack_part}-{project}-to-{version.replace('.', '-')}-"
        f"{when.strftime('%Y%m%d-%H%M%S')}"
    )
    name = re.sub(r"-{2,}", "-", name)
    if len(name) > 255:  # keep the time (unique), shorten the stack
        name = re.sub(r"-{2,}", "-", f"mlflow-aws-{project}-{when.strftime('%Y%m%d-%H%M%S')}")
    assert SNAPSHOT_IDENTIFIER.fullmatch(name), name
    return name


def family_of(task_definition_arn: str) -> str:
    match = _TASK_DEFINITION_ARN.fullmatch(task_definition_arn)
    if not match:
        raise UpgradeRefused(f"{task_definition_arn!r} is not an ECS task definition ARN")
    return match["family"]


# -- the steps --------------------------------------------------------------------------------


@dataclass
class Report:
    steps: list[dict[str, Any]] = field(default_factory=list)

    def timed(self, step: str, action: Callable[[], str]) -> str:
        started = time.monotonic()
        detail = action()
        seconds = round(time.monotonic() - started, 2)
        self.steps.append({"step": step, "seconds": seconds, "detail": detail})
        _say(f"{step} ({seconds:.1f} s): {detail}")
        return detail


@dataclass(frozen=True)
class _Target:
    ids: ProjectIdentifiers
    stack: str
    version: str
    cluster_arn: str
    admin_secret_arn: str
    ecs_cluster_arn: str
    task_definition_arn: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool
    min_tasks: int
    ignore_connected_clients: bool
    snapshot: bool
    poll_seconds: float
    stop_timeout: float
    migrate_timeout: float
    start_timeout: float
    aws_profile: str | None
    assume_roles: tuple[dict[str, Any], ...]

    @staticmethod
    def from_props(props: dict[str, Any]) -> _Target:
        profile = props.get("aws_profile")
        return _Target(
            ids=validate_name(props["project"]),
            stack=str(props["stack"]),
            version=str(props["mlflow_version"]),
            cluster_arn=str(props["cluster_arn"]),
            admin_secret_arn=str(props["admin_secret_arn"]),
            ecs_cluster_arn=str(props["ecs_cluster_arn"]),
            task_definition_arn=str(props["task_definition_arn"]),
            subnets=tuple(str(s) for s in props.get("subnets") or ()),
            security_groups=tuple(str(s) for s in props.get("security_groups") or ()),
            assign_public_ip=bool(props.get("assign_public_ip", False)),
            min_tasks=int(props.get("min_tasks", 1)),
            ignore_connected_clients=bool(props.get("ignore_connected_clients", False)),
            snapshot=bool(props.get("snapshot", True)),
            poll_seconds=float(props.get("poll_seconds", DEFAULT_POLL_SECONDS)),
            stop_timeout=float(props.get("stop_timeout_seconds", DEFAULT_STOP_TIMEOUT_SECONDS)),
            migrate_timeout=float(
                props.get("migrate_timeout_seconds", DEFAULT_MIGRATE_TIMEOUT_SECONDS)
            ),
            start_timeout=float(props.get("start_timeout_seconds", DEFAULT_START_TIMEOUT_SECONDS)),
            aws_profile=str(profile) if profile else None,
            assume_roles=tuple(dict(r) for r in (props.get("assume_roles") or [])),
        )


class _Aws:
    """The AWS clients of one provider call."""

    def __init__(self, t: _Target) -> None:
        region = region_of(t.cluster_arn)
        session = aws_session(region, t.aws_profile, t.assume_roles)
        self.ecs = session.client("ecs")
        self.rds = session.client("rds")
        self.scaling = session.client("application-autoscaling")
        self.sql = DataApiExecutor(
            t.cluster_arn,
            t.admin_secret_arn,
            aws_profile=t.aws_profile,
            assume_roles=t.assume_roles,
        )


def _schema_facts(sql: DataApiExecutor, ids: ProjectIdentifiers) -> SchemaFacts:
    schema = quote_identifier(ids.schema)
    tables = {
        str(name)
        for (name,) in sql.run(
            Statement(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = :schema "
                "AND TABLE_NAME IN ('alembic_version', :record)",
                {"schema": ids.schema, "record": RECORD_TABLE},
            )
        )
    }
    revision = recorded = None
    if "alembic_version" in tables:
        rows = sql.run(Statement(f"SELECT version_num FROM {schema}.alembic_version"))
        revision = str(rows[0][0]) if rows else None
    if RECORD_TABLE in tables:
        rows = sql.run(
            Statement(f"SELECT mlflow_version FROM {schema}.{RECORD_TABLE} WHERE id = 1")
        )
        recorded = str(rows[0][0]) if rows else None
    return SchemaFacts("alembic_version" in tables, revision, recorded)


def _sessions(sql: DataApiExecutor, username: str) -> list[Session]:
    rows = sql.run(
        Statement(
            "SELECT ID, HOST, TIME, COMMAND FROM information_schema.PROCESSLIST WHERE USER = :user",
            {"user": username},
        )
    )
    return [Session(int(r[0]), str(r[1] or ""), int(r[2] or 0), str(r[3] or "")) for r in rows]


@dataclass
class _Service:
    arn: str
    name: str
    desired: int
    task_definition: str


def _find_service(aws: _Aws, t: _Target) -> _Service | None:
    """The project's service in the stack's cluster: the one running a revision of the
    project's task definition family (found by family, so the service need not exist first)."""
    family = family_of(t.task_definition_arn)
    arns: list[str] = []
    for page in aws.ecs.get_paginator("list_services").paginate(cluster=t.ecs_cluster_arn):
        arns += page.get("serviceArns", [])
    for start in range(0, len(arns), 10):
        described = aws.ecs.describe_services(
            cluster=t.ecs_cluster_arn, services=arns[start : start + 10]
        )
        for service in described.get("services", []):
            current = str(service.get("taskDefinition", ""))
            match = _TASK_DEFINITION_ARN.fullmatch(current)
            if service.get("status") == "ACTIVE" and match and match["family"] == family:
                return _Service(
                    str(service["serviceArn"]),
                    str(service["serviceName"]),
                    int(service.get("desiredCount", 0)),
                    current,
                )
    return None


def _task_ips(aws: _Aws, t: _Target, service: _Service) -> list[str]:
    arns = aws.ecs.list_tasks(cluster=t.ecs_cluster_arn, serviceName=service.name).get(
        "taskArns", []
    )
    if not arns:
        return []
    ips = []
    for task in aws.ecs.describe_tasks(cluster=t.ecs_cluster_arn, tasks=arns).get("tasks", []):
        for attachment in task.get("attachments", []):
            for detail in attachment.get("details", []):
                if detail.get("name") == "privateIPv4Address" and detail.get("value"):
                    ips.append(str(detail["value"]))
    return ips


def _scaling_resource(t: _Target, service: _Service) -> str:
    return f"service/{t.ecs_cluster_arn.rsplit('/', 1)[-1]}/{service.name}"


def _set_scaling_suspended(aws: _Aws, t: _Target, service: _Service, suspended: bool) -> bool:
    """Suspend (or resume) the service's auto scaling, which would otherwise bring the stopped
    service back to minTasks. False when the service has no scalable target."""
    resource = _scaling_resource(t, service)
    found = aws.scaling.describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[resource], ScalableDimension="ecs:service:DesiredCount"
    ).get("ScalableTargets", [])
    if not found:
        return False
    aws.scaling.register_scalable_target(
        ServiceNamespace="ecs",
        ResourceId=resource,
        ScalableDimension="ecs:service:DesiredCount",
        SuspendedState={
            "DynamicScalingInSuspended": suspended,
            "DynamicScalingOutSuspended": suspended,
            "ScheduledScalingSuspended": suspended,
        },
    )
    return True


def _wait(what: str, timeout: float, poll: float, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise UpgradeRefused(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _counts(aws: _Aws, t: _Target, service: _Service) -> tuple[int, int, str]:
    [described] = aws.ecs.describe_services(cluster=t.ecs_cluster_arn, services=[service.arn]).get(
        "services", []
    )
    deployments = described.get("deployments", [])
    running = sum(int(d.get("runningCount", 0)) for d in deployments)
    pending = sum(int(d.get("pendingCount", 0)) for d in deployments)
    running = max(running, int(described.get("runningCount", 0)))
    pending = max(pending, int(described.get("pendingCount", 0)))
    return running, pending, str(described.get("taskDefinition", ""))


def _stop(aws: _Aws, t: _Target, service: _Service) -> str:
    scaled = _set_scaling_suspended(aws, t, service, True)
    aws.ecs.update_service(cluster=t.ecs_cluster_arn, service=service.arn, desiredCount=0)

    def stopped() -> bool:
        running, pending, _ = _counts(aws, t, service)
        return running == 0 and pending == 0

    _wait(f"service {service.name} to stop its tasks", t.stop_timeout, t.poll_seconds, stopped)
    return f"service {service.name}: {service.desired} task(s) -> 0" + (
        "; auto scaling suspended" if scaled else ""
    )


def _start(aws: _Aws, t: _Target, service: _Service, task_definition: str, count: int) -> str:
    aws.ecs.update_service(
        cluster=t.ecs_cluster_arn,
        service=service.arn,
        taskDefinition=task_definition,
        desiredCount=count,
    )

    def running() -> bool:
        ran, pending, current = _counts(aws, t, service)
        return current == task_definition and ran >= count and pending == 0

    _wait(
        f"service {service.name} to run {count} task(s)", t.start_timeout, t.poll_seconds, running
    )
    resumed = _set_scaling_suspended(aws, t, service, False)
    revision = task_definition.rsplit("/", 1)[-1]
    return f"service {service.name}: {count} task(s) of {revision} running" + (
        "; auto scaling resumed" if resumed else ""
    )


def _restorable_point(aws: _Aws, t: _Target) -> tuple[str, str | None]:
    when = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    point = when.isoformat().replace("+00:00", "Z")
    if not t.snapshot:
        return point, None
    cluster = t.cluster_arn.rsplit(":", 1)[-1]
    name = snapshot_identifier(t.stack, t.ids.name, t.version, when)
    aws.rds.create_db_cluster_snapshot(
        DBClusterSnapshotIdentifier=name,
        DBClusterIdentifier=cluster,
        Tags=[
            {"Key": "mlflow-aws:stack", "Value": t.stack},
            {"Key": "mlflow-aws:project", "Value": t.ids.name},
            {"Key": "mlflow-aws:before-mlflow", "Value": t.version},
        ],
    )

    def available() -> bool:
        [snap] = aws.rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=name)[
            "DBClusterSnapshots"
        ]
        if snap.get("Status") in ("failed", "deleted"):
            raise UpgradeRefused(f"cluster snapshot {name} is {snap.get('Status')}")
        return snap.get("Status") == "available"

    _wait(f"cluster snapshot {name}", SNAPSHOT_TIMEOUT_SECONDS, t.poll_seconds, available)
    return point, name


def _migrate(aws: _Aws, t: _Target) -> str:
    network: dict[str, Any] = {
        "awsvpcConfiguration": {
            "subnets": list(t.subnets),
            "securityGroups": list(t.security_groups),
            "assignPublicIp": "ENABLED" if t.assign_public_ip else "DISABLED",
        }
    }
    started = aws.ecs.run_task(
        cluster=t.ecs_cluster_arn,
        taskDefinition=t.task_definition_arn,
        launchType="FARGATE",
        count=1,
        startedBy=STARTED_BY,
        networkConfiguration=network,
        overrides={"containerOverrides": [{"name": CONTAINER_NAME, "command": MIGRATE_COMMAND}]},
    )
    if started.get("failures") or not started.get("tasks"):
        raise UpgradeRefused(f"the migration task did not start: {started.get('failures')}")
    task_arn = str(started["tasks"][0]["taskArn"])
    final: dict[str, Any] = {}

    def stopped() -> bool:
        [task] = aws.ecs.describe_tasks(cluster=t.ecs_cluster_arn, tasks=[task_arn])["tasks"]
        final.update(task)
        return task.get("lastStatus") == "STOPPED"

    _wait(f"migration task {task_arn}", t.migrate_timeout, t.poll_seconds, stopped)
    container: dict[str, Any] = next(
        (c for c in final.get("containers", []) if c.get("name") == CONTAINER_NAME), {}
    )
    code = container.get("exitCode")
    task_id = task_arn.rsplit("/", 1)[-1]
    if code != 0:
        reason = container.get("reason") or final.get("stoppedReason") or "no reason given"
        raise UpgradeRefused(
            f"the migration task {task_id} of project {t.ids.name} exited {code} ({reason}): "
            f"its log is in {log_group_name(t.stack, t.ids.name)}, "
            f"stream {service_log_stream(task_id)}"
        )
    return f"task {task_id} migrated schema {t.ids.schema} to mlflow {t.version} (exit 0)"


def upgrade(t: _Target) -> dict[str, Any]:
    """Every step in order; the report (outputs ``report`` and ``schema_version``)."""
    aws = _Aws(t)
    report = Report()
    facts = _schema_facts(aws.sql, t.ids)
    if not needs_upgrade(facts, t.version):
        why = (
            "empty: the first task creates MLflow's tables"
            if not facts.tables
            else f"already belongs to mlflow {t.version}"
        )
        report.steps.append({"step": "none", "seconds": 0.0, "detail": f"schema {why}"})
        return {"report": report.steps, "schema_version": facts.recorded_version}

    before = facts.recorded_version or f"revision {facts.revision}"
    _say(f"project {t.ids.name}: upgrading schema {t.ids.schema} from {before} to {t.version}")
    service = _find_service(aws, t)
    restore: dict[str, Any] = {}

    def check(ours: Sequence[str], stage: str) -> str:
        sessions = _sessions(aws.sql, t.ids.username)
        others = foreign_sessions(sessions, ours)
        if not others:
            return f"no other client of {t.ids.username} ({stage})"
        listing = describe_clients(others)
        if t.ignore_connected_clients:
            return f"IGNORED (upgrade.ignoreConnectedClients): {listing}"
        raise UpgradeRefused(
            f"project {t.ids.name}: not upgrading to mlflow {t.version} while other servers use "
            f"its database ({t.ids.username}): {listing}. Stop those servers (a teammate's "
            "`python -m helper serve` of the old version), or set "
            "`pulumi config set --path upgrade.ignoreConnectedClients true` to upgrade anyway "
            "(their writes during the migration may be lost or break it), then run pulumi up "
            "again"
        )

    ours = _task_ips(aws, t, service) if service else []
    report.timed("check-clients", lambda: check(ours, "before stopping"))
    if service is not None:
        report.timed("stop-writers", lambda: _stop(aws, t, service))
    try:
        report.timed("check-clients", lambda: check([], "writers stopped"))
        point: dict[str, Any] = {}

        def restorable() -> str:
            point["time"], point["snapshot"] = _restorable_point(aws, t)
            if point["snapshot"]:
                return (
                    f"cluster snapshot {point['snapshot']} available; restore point {point['time']}"
                )
            return f"restore point {point['time']} (point-in-time; upgrade.snapshot is off)"

        report.timed("restorable-point", restorable)
        restore.update(point)
        report.timed("migrate", lambda: _migrate(aws, t))
    except Exception as exc:
        if service is not None:
            # The old tasks again: on an unchanged schema they serve, on a moved one they
            # refuse to start (the version check), so nothing writes a half-migrated schema.
            try:
                _start(aws, t, service, service.task_definition, max(service.desired, t.min_tasks))
            except Exception as start_exc:
                _say(f"could not start the old tasks again: {start_exc}")
        if restore.get("snapshot") and not isinstance(exc, UpgradeRefused):
            raise UpgradeRefused(
                f"{exc}; snapshot {restore['snapshot']} holds the schema before the upgrade"
            ) from exc
        if restore.get("snapshot"):
            raise UpgradeRefused(
                f"{exc}; snapshot {restore['snapshot']} holds the schema before the upgrade "
                f"(python -m helper restore-plan --project {t.ids.name} --time {restore['time']})"
            ) from None
        raise
    if service is not None:
        count = max(service.desired, t.min_tasks)
        report.timed("start-writers", lambda: _start(aws, t, service, t.task_definition_arn, count))
    return {
        "report": report.steps,
        "schema_version": t.version,
        "restore_point": restore.get("time"),
        "snapshot_identifier": restore.get("snapshot"),
        "upgraded_from": before,
    }


# -- check ------------------------------------------------------------------------------------


def _check(news: dict[str, Any]) -> tuple[dict[str, Any], list[CheckFailure]]:
    failures: list[CheckFailure] = []
    inputs = dict(news)
    for key in sorted(set(news) - set(INPUT_KEYS) - set(STATE_KEYS) - {"__provider"}):
        failures.append(CheckFailure(key, f"unknown property {key!r}"))
    # Unknown values (a task definition not registered yet, in a preview) are checked later.
    news = {k: v for k, v in news.items() if v != rpc.UNKNOWN}
    version = news.get("mlflow_version")
    if isinstance(version, str) and not _RELEASE.fullmatch(version):
        failures.append(CheckFailure("mlflow_version", f"{version!r} is not a release like 3.17.2"))
    arn = news.get("task_definition_arn")
    if isinstance(arn, str) and not _TASK_DEFINITION_ARN.fullmatch(arn):
        failures.append(
            CheckFailure("task_definition_arn", f"{arn!r} is not a task definition ARN")
        )
    cluster = news.get("ecs_cluster_arn")
    if isinstance(cluster, str) and not _ECS_CLUSTER_ARN.fullmatch(cluster):
        failures.append(CheckFailure("ecs_cluster_arn", f"{cluster!r} is not an ECS cluster ARN"))
    for key in ("ignore_connected_clients", "snapshot", "assign_public_ip"):
        value = news.get(key)
        if value is not None and not isinstance(value, bool):
            failures.append(CheckFailure(key, f"{key} {value!r} must be true or false"))
    project = news.get("project")
    if isinstance(project, str):
        try:
            validate_name(project)
        except Exception as exc:
            failures.append(CheckFailure("project", str(exc)))
    return inputs, failures


# -- the provider -----------------------------------------------------------------------------

# Inputs whose change means a new MLflow or new tasks; the rest (timeouts, the override) are
# settings of the next upgrade.
TRIGGER_KEYS = ("mlflow_version", "task_definition_arn", "project")
STATE_KEYS = ("report", "schema_version", "restore_point", "snapshot_identifier", "upgraded_from")


class MlflowUpgradeProvider(ResourceProvider):
    """Runs the upgrade sequence on create and update; never deletes anything."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = _check(news)
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in INPUT_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[])

    def create(self, props: dict[str, Any]) -> CreateResult:
        t = _Target.from_props(props)
        return CreateResult(f"{t.ids.name}-upgrade", {**props, **upgrade(t)})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        t = _Target.from_props(news)
        if not any(olds.get(k) != news.get(k) for k in TRIGGER_KEYS):
            # Only settings changed: keep the last report rather than run the sequence again.
            return UpdateResult({**news, **{k: olds.get(k) for k in STATE_KEYS}})
        return UpdateResult({**news, **upgrade(t)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # the schema and the service are not this resource's


# -- the resource -----------------------------------------------------------------------------


@dataclass
class MlflowUpgradeArgs:
    project: str
    stack: str
    mlflow_version: str
    cluster_arn: pulumi.Input[str]
    admin_secret_arn: pulumi.Input[str]
    ecs_cluster_arn: pulumi.Input[str]
    task_definition_arn: pulumi.Input[str]
    subnets: Sequence[str]
    security_groups: Sequence[pulumi.Input[str]]
    assign_public_ip: bool
    min_tasks: int
    ignore_connected_clients: bool = False
    snapshot: bool = True
    aws_profile: str | None = None
    assume_roles: list[dict[str, Any]] | None = None
    poll_seconds: float = DEFAULT_POLL_SECONDS


class MlflowUpgrade(pulumi.dynamic.Resource, module="mlflow", name="Upgrade"):
    """A project's MLflow upgrade gate (type ``pulumi-python:dynamic/mlflow:Upgrade``)."""

    report: pulumi.Output[list[dict[str, Any]]]
    schema_version: pulumi.Output[str | None]
    restore_point: pulumi.Output[str | None]
    snapshot_identifier: pulumi.Output[str | None]

    def __init__(
        self,
        resource_name: str,
        args: MlflowUpgradeArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "project": args.project,
            "stack": args.stack,
            "mlflow_version": args.mlflow_version,
            "cluster_arn": args.cluster_arn,
            "admin_secret_arn": args.admin_secret_arn,
            "ecs_cluster_arn": args.ecs_cluster_arn,
            "task_definition_arn": args.task_definition_arn,
            "subnets": list(args.subnets),
            "security_groups": list(args.security_groups),
            "assign_public_ip": args.assign_public_ip,
            "min_tasks": args.min_tasks,
            "ignore_connected_clients": args.ignore_connected_clients,
            "snapshot": args.snapshot,
            "poll_seconds": args.poll_seconds,
            "aws_profile": args.aws_profile,
            "assume_roles": args.assume_roles or [],
            **{key: None for key in STATE_KEYS},
        }
        super().__init__(MlflowUpgradeProvider(), resource_name, props, opts)
