"""Splitting ``TrackingService`` into per-project ``ProjectService`` children replaces nothing.

A resource's URN names its parent's type; each project's resources were direct children of
``TrackingService`` and are now children of its ``ProjectService``, so without an alias an
existing stack's ``pulumi up`` would delete and recreate them: a new target group and listener
rule, new roles, a new ECS service (downtime while it rolls out). Each carries
``Alias(parent=<the TrackingService>)``; the engine matches a resource to the old state by any
alias. These tests resolve each registered alias spec the way the engine does (an unset name,
type or parent means the resource's own) and require every URN the program registered before
the split (``tests/data/tracking_urns_before_split.json``, recorded from main with these configs
under these mocks) to be the URN or an alias of exactly one resource now.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.support.pulumi_mocks import (
    MockAccount,
    ProgramRun,
    RecordingMocks,
    Registered,
    run_program,
)

BEFORE = json.loads(
    (Path(__file__).parent / "data" / "tracking_urns_before_split.json").read_text()
)
SERVER = {"enabled": True, "domainName": "mlflow.example.com"}
# Every optional per-project resource: a group lookup (groups and an Identity Center role), the
# AI Gateway's KEK, the upgrade gate, a certificate of the program's own, the gc schedule that
# uses the service's roles, and the service-linked role of a new account.
CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "full": (
        {
            "mlflow-aws:projects": [
                {
                    "name": "churn",
                    "iamRoles": ["ci-runner", "sso:DataScience"],
                    "iamGroups": ["ds"],
                },
                {"name": "fraud", "iamRoles": ["a,b"]},
                "plain",
            ],
            "mlflow-aws:server": {
                **SERVER, "hostedZoneId": "Z0123456789ABCDEFGHIJ", "aiGateway": True,
            },
            "mlflow-aws:gc": {
                "enabled": True, "schedule": "rate(12 hours)", "traceRetention": "90d",
            },
            "mlflow-aws:alarms": {"email": "ops@example.com"},
        },
        {"ecs_service_linked_role": None},
    ),
    "certarn": (
        {
            "mlflow-aws:projects": ["churn"],
            "mlflow-aws:server": {
                **SERVER,
                "certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/"
                "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
            },
        },
        {},
    ),
    # A stack of one's own VPC, protected, with a long name (the URNs name the stack).
    "own": (
        {
            "mlflow-aws:projects": ["churn", {"name": "fraud", "iamGroups": ["g1", "g2"]}],
            "mlflow-aws:db": {"vpcId": "vpc-0abc1234"},
            "mlflow-aws:protect": True,
            "mlflow-aws:server": {
                **SERVER,
                "certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/"
                "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
                "internal": True, "allowedCidrs": ["203.0.113.0/24"],
                "subnetIds": ["subnet-0c0a0001", "subnet-0c0b0002"],
                "taskSubnetIds": ["subnet-0c0a0004", "subnet-0c0b0005"],
                "cpu": 1024, "memory": 2048, "minTasks": 2, "maxTasks": 5,
            },
            "mlflow-aws:gc": {"enabled": True},
        },
        {},
    ),
}  # fmt: skip
STACKS = {"own": "production-europe-west-data-science-platform.v2"}
PROJECT_SERVICE = "mlflow-aws:infra:ProjectService"


@cache
def program(config: str) -> ProgramRun:
    values, account = CONFIGS[config]
    return run_program(
        values, stack=STACKS.get(config, "dev"), recording=RecordingMocks(MockAccount(**account))
    )


def urn_of(parent_urn: str, typ: str, name: str, stack: str, project: str) -> str:
    """A URN as the mocks' monitor makes it: the parent's own type, ``$``, the type."""
    if parent_urn:
        typ = parent_urn.split("::")[2].split("$")[-1] + "$" + typ
    return f"urn:pulumi:{stack}::{project}::{typ}::{name}"


def alias_urns(r: Registered) -> set[str]:
    """What the engine resolves each of ``r``'s aliases to (pulumi alias_pb2.Alias: a URN, or
    a spec whose unset fields mean the resource's own)."""
    head, project = r.urn.split("::")[:2]
    stack = head.removeprefix("urn:pulumi:")
    found = set()
    for alias in r.aliases:
        if alias.WhichOneof("alias") == "urn":
            found.add(alias.urn)
            continue
        spec = alias.spec
        parent = "" if spec.noParent else (spec.parentUrn or r.parent)
        found.add(
            urn_of(
                parent,
                spec.type or r.typ,
                spec.name or r.name,
                spec.stack or stack,
                spec.project or project,
            )
        )
    return found


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_alias_resolver_names_each_resource_as_the_monitor_did(config: str) -> None:
    """The resolver below is trusted only because it reproduces every URN the monitor made."""
    r = program(config)
    for res in r.resources:
        assert urn_of(res.parent, res.typ, res.name, STACKS.get(config, "dev"), "mlflow-aws") == (
            res.urn
        )


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_an_existing_stack_keeps_every_resource_of_the_central_server(config: str) -> None:
    """Every URN of the old layout is still the URN, or an alias, of exactly one resource: an
    existing stack updates in place (no new load balancer, target groups or ECS services)."""
    r = program(config)
    names = {res.urn: res for res in r.resources}
    claims: dict[str, list[str]] = {}
    for res in r.resources:
        for urn in {res.urn} | alias_urns(res):
            claims.setdefault(urn, []).append(res.name)
    missing = [urn for urn in BEFORE[config] if urn not in claims]
    assert not missing, f"resources a `pulumi up` would replace: {missing}"
    shared = {urn: who for urn, who in claims.items() if len(who) > 1}
    assert not shared, f"one old resource claimed twice: {shared}"
    # And nothing of the server is new to the stack but the grouping components themselves.
    tracking = next(res for res in r.resources if res.typ == "mlflow-aws:infra:TrackingService")
    new = [
        res.name
        for res in r.resources
        if res.urn not in BEFORE[config]
        and not (alias_urns(res) & set(BEFORE[config]))
        and res.typ != PROJECT_SERVICE
        and _under(res, tracking, names)
    ]
    assert not new, f"resources the split would create on an existing stack: {new}"


def _under(res: Registered, ancestor: Registered, by_urn: dict[str, Registered]) -> bool:
    while res.parent in by_urn:
        res = by_urn[res.parent]
        if res.urn == ancestor.urn:
            return True
    return False


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_each_projects_resources_are_grouped_under_its_project_service(config: str) -> None:
    """``pulumi up`` shows a project's resources under ``tracking-<p>``; the shared ones (load
    balancer, listeners, cluster, security groups, certificate) stay under ``tracking``."""
    r = program(config)
    tracking = r.one("mlflow-aws:infra:TrackingService")
    services = {res.name: res for res in r.of_type(PROJECT_SERVICE)}
    projects = [
        p if isinstance(p, str) else p["name"] for p in CONFIGS[config][0]["mlflow-aws:projects"]
    ]
    assert set(services) == {f"tracking-{p}" for p in projects}
    for name, component in services.items():
        assert component.parent == tracking.urn
        children = r.children_of(component)
        assert children and all(c.name.startswith(f"{name}-") for c in children)
        assert {c.typ for c in children} >= {
            "aws:ecs/service:Service", "aws:ecs/taskDefinition:TaskDefinition",
            "aws:lb/targetGroup:TargetGroup", "aws:lb/listenerRule:ListenerRule",
            "pulumi-python:dynamic/mlflow:Upgrade",
        }  # fmt: skip
        # Each of them keeps its old identity: the TrackingService as its parent before.
        for c in children:
            old = urn_of(tracking.urn, c.typ, c.name, STACKS.get(config, "dev"), "mlflow-aws")
            assert old in alias_urns(c)
    shared = {c.typ for c in r.children_of(tracking)} - {PROJECT_SERVICE}
    assert "aws:lb/loadBalancer:LoadBalancer" in shared
    assert "aws:ecs/service:Service" not in shared
