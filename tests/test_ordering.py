"""The order in which things become usable, from what the program registers: each consumer must
wait for the producers it reads, directly or transitively (the mock monitor records every
resource's dependencies, explicit and through its inputs, as the engine would use them).

The engine creates a resource as soon as its dependencies exist; one whose producer is not among
them races it. The ECS service of a project is the case that broke (issue 15, finding 2): its
tasks read the connection secret's value, which is written only after the schema, ~10 minutes
into the first `pulumi up`; the service was created long before, its first tasks failed, the
circuit breaker stopped the deployment and `pulumi up` reported success.
"""

from __future__ import annotations

import pytest

from tests.support.aws_constraints import Context
from tests.support.config_matrix import MATRIX, context
from tests.support.pulumi_mocks import Registered

# consumer (logical name, {p} for each project) -> the producers it must wait for, and why
WAITS_FOR: dict[str, dict[str, str]] = {
    "tracking-{p}-service": {
        "project-{p}-connection-version": "its tasks read the bundle's keys at start",
        "project-{p}-schema": "the backend URI's user must exist with its password",
        "tracking-{p}-task-policy": "the task role's S3 rights",
        "tracking-{p}-execution-policy": "pulling the image and reading the secret",
        "tracking-{p}-rule": "the target group must be attached to the load balancer",
        "tracking-{p}-tg": "its load balancer",
        "tracking-{p}-task": "what it runs",
        "tracking-{p}-logs": "the awslogs driver writes there",
        "server-image": "the image must be pushed",
        "tracking-cluster": "where it runs",
        "tracking-task-sg": "its network",
        "metadata-clients-sg": "reaching MySQL",
        "metadata-instance": "a database that answers",
        "tracking-https": "the listener of its rule",
        "tracking-{p}-sign-in-marker": "sign-in replays a read of it",
        "tracking-{p}-gateway-kek-version": "with server.aiGateway its tasks read the KEK",
        "tracking-{p}-upgrade": "an MLflow upgrade stops the old tasks and migrates first",
    },
    "gc-{p}-schedule": {
        "gc-{p}-scheduler-policy": "the scheduler's role must be allowed RunTask first",
        "gc-{p}-task": "what it runs",
        "tracking-cluster": "where it runs",
    },
    "gc-{p}-task": {
        "tracking-{p}-task-role": "the task role (its prefix only; only ECS may assume it)",
        "tracking-{p}-execution-role": "ECS starts the task as it",
        "tracking-{p}-logs": "the awslogs group",
        "server-image": "the image digest",
    },
    "alarms-{p}-gc-failures": {"tracking-{p}-logs": "the log group it filters"},
    "project-{p}-password-retirement": {
        "tracking-{p}-service": "no task may still use the old password (steady state)",
        "project-{p}-connection-version": "teammates' servers read the new password first",
        "project-{p}-schema": "the new password is set (the old one kept) first",
    },
    "tracking-{p}-upgrade": {
        "tracking-{p}-task": "the migration runs the new task definition",
        "tracking-cluster": "where the service and the migration task run",
        "project-{p}-schema": "it reads the schema's version through the Data API",
        "project-{p}-connection-version": "the migration task reads the bundle's keys",
        "tracking-{p}-execution-policy": "the migration task pulls the image, reads the secret",
        "metadata-admin-secret-value": "the Data API logs in with the secret's value",
    },
    "tracking-{p}-sign-in-marker": {"artifacts-bucket": "the bucket it is written to"},
    "project-{p}-schema": {
        "metadata-instance": "the Data API answers only once the writer runs",
        "metadata-admin-secret-value": "the Data API logs in with the secret's value",
        "metadata-cluster": "the cluster ARN",
        "project-{p}-password": "the user's password",
    },
    "project-{p}-connection-version": {
        "project-{p}-schema": "published once the user exists with this password",
        "project-{p}-connection": "its secret",
        "server-image": "ImageUri, by digest",
        "project-{p}-server-role": "ServerRoleArn",
    },
    "tracking-{p}-rule": {"tracking-https": "its listener", "tracking-{p}-tg": "its target"},
    "tracking-{p}-scaling": {"tracking-{p}-service": "the scalable service"},
    "tracking-{p}-scale-requests": {
        "tracking-{p}-scaling": "its scalable target",
        "tracking-lb": "the request count's resource label",
        "tracking-{p}-tg": "the request count's resource label",
    },
    "tracking-{p}-scale-cpu": {"tracking-{p}-scaling": "its scalable target"},
    "tracking-{p}-execution-policy": {
        "tracking-{p}-logs": "the log group ARN",
        "project-{p}-connection": "the secret ARN",
        "server-repo": "the repository ARN",
    },
    "tracking-{p}-task": {
        "tracking-{p}-execution-role": "ECS starts the task as it",
        "tracking-{p}-task-role": "the task role (only ECS may assume it)",
        "server-image": "the image digest",
        "tracking-{p}-logs": "the awslogs group",
    },
    "project-{p}-policy": {"project-{p}-connection": "secret ARN", "server-repo": "repo ARN"},
    "metadata-cluster": {
        "metadata-subnets": "its subnet group",
        "metadata-sg": "its security group",
        "metadata-params": "its parameter group",
    },
    "metadata-instance": {"metadata-cluster": "its cluster", "metadata-subnets": "its subnets"},
    "metadata-admin-secret-value": {"metadata-cluster": "the endpoint it records"},
    "artifacts-tls-only": {"artifacts-public-access": "S3 refuses policy writes meanwhile"},
    "artifacts-lifecycle": {"artifacts-versioning": "noncurrent-version rules need versioning"},
    "server-image": {"server-repo": "the repository it is pushed to"},
    "server-lifecycle": {"server-repo": "its repository"},
    "tracking-https": {
        "tracking-lb": "its load balancer",
        "tracking-certificate-validation": "a certificate ACM has issued",
    },
    "tracking-certificate-validation": {
        "tracking-certificate-validation-record": "the DNS record ACM looks for"
    },
    "tracking-alias": {"tracking-lb": "the alias target"},
    "tracking-lb": {"tracking-lb-sg": "its security group"},
}
# Only in an account that never ran ECS: the service-linked role comes first.
FRESH_ACCOUNT = {"tracking-{p}-service": {"tracking-ecs-service-linked-role": "ECS assumes it"}}


def closure(ctx: Context) -> dict[str, set[str]]:
    """Logical name -> the logical names of everything it waits for, transitively."""
    by_urn = {r.urn: r for r in ctx.resources}
    direct = {
        r.name: {by_urn[d].name for d in r.dependencies if d in by_urn} for r in ctx.resources
    }
    # Depending on a component waits for its children.
    children: dict[str, set[str]] = {}
    for r in ctx.resources:
        parent = by_urn.get(r.parent)
        if parent is not None:
            children.setdefault(parent.name, set()).add(r.name)
    for deps in direct.values():
        for dep in list(deps):
            deps |= children.get(dep, set())
    result: dict[str, set[str]] = {}

    def walk(name: str) -> set[str]:
        if name not in result:
            result[name] = set()
            found: set[str] = set()
            for dep in direct.get(name, set()):
                found |= {dep} | walk(dep)
            result[name] = found
        return result[name]

    for name in direct:
        walk(name)
    return result


def projects(ctx: Context) -> list[str]:
    return [
        r.name.removeprefix("project-")
        for r in ctx.resources
        if r.typ == "mlflow-aws:projects:MlflowProject"
    ]


def missing_waits(ctx: Context, waits: dict[str, dict[str, str]]) -> list[str]:
    names = {r.name for r in ctx.resources}
    waits_for = closure(ctx)
    problems = []
    for p in projects(ctx) or [""]:
        for consumer, producers in waits.items():
            consumer_name = consumer.format(p=p)
            if consumer_name not in names:
                continue
            for producer, why in producers.items():
                producer_name = producer.format(p=p)
                if producer_name in names and producer_name not in waits_for[consumer_name]:
                    problems.append(f"{consumer_name} does not wait for {producer_name} ({why})")
    return problems


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_consumer_waits_for_what_it_reads(name: str) -> None:
    ctx = context(name)
    waits = dict(WAITS_FOR)
    if MATRIX[name][2].get("ecs_service_linked_role", {}) is None:
        waits = {
            **waits,
            "tracking-{p}-service": {
                **waits["tracking-{p}-service"],
                **FRESH_ACCOUNT["tracking-{p}-service"],
            },
        }
    assert missing_waits(ctx, waits) == []


def test_the_consumers_are_registered() -> None:
    """The table above names resources that exist (a rename would silently skip a check)."""
    ctx = context("server on, an account that never ran ECS")
    names = {r.name for r in ctx.resources}
    names |= {r.name for r in context("scheduled gc, alarms to an email").resources}
    names |= {r.name for r in context("server on with the AI Gateway").resources}
    consumers = {c.format(p="churn") for c in {**WAITS_FOR, **FRESH_ACCOUNT}}
    producers = {
        p.format(p="churn")
        for waits in (*WAITS_FOR.values(), *FRESH_ACCOUNT.values())
        for p in waits
    }
    assert (consumers | producers) - names == set()


def test_a_missing_wait_is_reported() -> None:
    """The check can fail: the service as it was registered before (its rule and execution
    policy only, besides its inputs) misses the secret version and the MySQL user."""
    ctx = context("server on").copy()
    service: Registered = next(r for r in ctx.resources if r.name == "tracking-churn-service")
    by_name = {r.name: r for r in ctx.resources}
    dropped = {
        by_name[n].urn
        for n in (
            "project-churn-connection-version",
            "project-churn-schema",
            "tracking-churn-task-policy",
            "tracking-churn-upgrade",  # which waits for them too
        )
    }
    service.dependencies = tuple(d for d in service.dependencies if d not in dropped)
    # ... and its task definition named no secret version then.
    task = by_name["tracking-churn-task"]
    task.dependencies = tuple(d for d in task.dependencies if d not in dropped)
    found = missing_waits(ctx, WAITS_FOR)
    assert (
        "tracking-churn-service does not wait for project-churn-connection-version "
        "(its tasks read the bundle's keys at start)" in found
    )
    assert any(
        "project-churn-schema" in f and f.startswith("tracking-churn-service") for f in found
    )
