"""What the account holds decides what AWS accepts (infra/account.py): looked up before any
resource is registered, refused with the setting to change and the rule (issue 15, findings
4, 5, 6 and 9). The mock account (tests/support/pulumi_mocks.py MockAccount) answers the data
sources: a default VPC, a VPC of one's own with public, private and isolated subnets, one without an
internet gateway, public and private hosted zones, the engine versions a region offers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
import pytest

from tests.support.pulumi_mocks import (
    CUSTOM_VPC_CIDRS,
    CUSTOM_VPC_ID,
    ISOLATED_SUBNET,
    NO_IGW_SUBNETS,
    PRIVATE_SUBNETS,
    PUBLIC_SUBNETS,
    SECOND_PUBLIC_SUBNET_IN_A,
    MockAccount,
    ProgramRun,
    RecordingMocks,
    iter_strings,
    run_program,
)

DOMAIN = "mlflow.example.com"
ZONE = "Z0123456789ABCDEFGHIJ"
CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
SERVER = {"enabled": True, "domainName": DOMAIN, "hostedZoneId": ZONE}


def refused(config: dict[str, Any], account: MockAccount | None = None, stack: str = "dev") -> str:
    """The program's refusal, checked to come before any resource is registered."""
    recording = RecordingMocks(account)
    with pytest.raises(pulumi.RunError) as caught:  # shown without a traceback
        run_program(config, stack=stack, recording=recording)
    assert recording.resources == [], "resources were registered before the refusal"
    return str(caught.value)


def custom(server: dict[str, Any] | None = None, **db: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "mlflow-aws:projects": ["churn"],
        "mlflow-aws:db": {"vpcId": CUSTOM_VPC_ID, **db},
    }
    if server is not None:
        config["mlflow-aws:server"] = {
            "enabled": True,
            "domainName": DOMAIN,
            "certificateArn": CERT,
            **server,
        }
    return config


def service(r: ProgramRun, project: str = "churn") -> dict[str, Any]:
    [found] = [x for x in r.resources if x.name == f"tracking-{project}-service"]
    return dict(found.inputs["networkConfiguration"])


# ------------------------------------------------- finding 4: the load balancer's subnets


def test_every_subnet_of_a_vpc_is_refused_for_the_load_balancer_with_the_fix() -> None:
    # db.vpcId and nothing else: the load balancer would get every subnet of the VPC, two of
    # them in one zone ("A load balancer cannot be attached to multiple subnets in the same
    # Availability Zone") and private ones for an internet-facing load balancer.
    message = refused(custom(server={}))
    assert f"{PUBLIC_SUBNETS[0]}, {SECOND_PUBLIC_SUBNET_IN_A}" in message or (
        SECOND_PUBLIC_SUBNET_IN_A in message and "are all in eu-west-1a" in message
    )
    assert "exactly one subnet per availability zone" in message
    assert "list one per zone in server.subnetIds" in message
    assert "have no route to an internet gateway" in message  # the private ones
    assert (
        "server.subnetIds unset, so the database's subnets (db.subnetIds unset, so every subnet "
        "of vpc-0abc1234)" in message
    )


def test_a_public_load_balancer_needs_public_subnets() -> None:
    message = refused(custom(server={"subnetIds": PRIVATE_SUBNETS}))
    assert (
        f"mlflow-aws:server.subnetIds: subnets {', '.join(PRIVATE_SUBNETS)} have no route"
        in message
    )
    assert "or set server.internal true" in message
    # Internal: private subnets are right.
    r = run_program(custom(server={"subnetIds": PRIVATE_SUBNETS, "internal": True}))
    assert service(r)["subnets"] == PRIVATE_SUBNETS


def test_tasks_get_a_public_ip_exactly_when_their_subnets_are_public() -> None:
    public = run_program(custom(server={"subnetIds": PUBLIC_SUBNETS}))
    assert service(public) == {**service(public), "subnets": PUBLIC_SUBNETS, "assignPublicIp": True}
    behind_nat = run_program(
        custom(server={"subnetIds": PUBLIC_SUBNETS, "taskSubnetIds": PRIVATE_SUBNETS})
    )
    assert service(behind_nat)["subnets"] == PRIVATE_SUBNETS
    assert service(behind_nat)["assignPublicIp"] is False
    [lb] = [x for x in behind_nat.resources if x.typ == "aws:lb/loadBalancer:LoadBalancer"]
    assert lb.inputs["subnets"] == PUBLIC_SUBNETS


def test_tasks_that_could_not_pull_their_image_are_refused() -> None:
    no_ip = refused(custom(server={"subnetIds": PUBLIC_SUBNETS, "assignPublicIp": False}))
    assert "tasks without a public IP in subnet subnet-0c0a0001" in no_ip
    assert "cannot pull the image" in no_ip and "server.taskSubnetIds" in no_ip
    ip_to_nowhere = refused(
        custom(
            server={
                "subnetIds": PUBLIC_SUBNETS,
                "taskSubnetIds": PRIVATE_SUBNETS,
                "assignPublicIp": True,
            }
        )
    )
    assert "has no route to an internet gateway, so the IP reaches nothing" in ip_to_nowhere
    mixed = refused(
        custom(
            server={
                "subnetIds": PUBLIC_SUBNETS,
                "taskSubnetIds": [PUBLIC_SUBNETS[0], PRIVATE_SUBNETS[1]],
            }
        )
    )
    assert "mix public and private" in mixed


def test_subnets_of_another_vpc_or_that_do_not_exist_are_refused() -> None:
    message = refused(custom(server={"subnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"]}))
    assert (
        "subnet subnet-0aaa1111 is in vpc-0def4017, not in the database's VPC vpc-0abc1234"
        in message
    )
    missing = refused(custom(subnetIds=["subnet-0dead001", PRIVATE_SUBNETS[0]]))
    assert (
        "cannot look up subnet subnet-0dead001 in eu-west-1: no matching EC2 Subnet found"
        in missing
    )


def test_an_isolated_task_subnet_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    run_program(
        custom(
            server={
                "subnetIds": PUBLIC_SUBNETS,
                "internal": False,
                "taskSubnetIds": [ISOLATED_SUBNET, PRIVATE_SUBNETS[0]],
            }
        )
    )
    assert any(
        f"subnet {ISOLATED_SUBNET} has no route to the internet" in m and "VPC endpoints" in m
        for m in caplog.messages
    )


def test_the_database_needs_two_zones() -> None:
    message = refused(
        {"mlflow-aws:db": {"subnetIds": [PUBLIC_SUBNETS[0], SECOND_PUBLIC_SUBNET_IN_A]}}
    )
    assert "cover 1 availability zone(s); an Aurora subnet group needs at least 2" in message


# ------------------------------------------------------------- finding 5: the engine version


def test_the_cluster_gets_the_configured_long_term_support_version() -> None:
    r = run_program({})
    [cluster] = [x for x in r.resources if x.typ == "aws:rds/cluster:Cluster"]
    assert cluster.inputs["engineVersion"] == "8.0.mysql_aurora.3.10.0"
    assert "engine_version" in cluster.ignore_changes or "engineVersion" in cluster.ignore_changes
    [params] = [
        x for x in r.resources if x.typ == "aws:rds/clusterParameterGroup:ClusterParameterGroup"
    ]
    assert params.inputs["family"] == "aurora-mysql8.0"  # what the region says of the version
    other = run_program({"mlflow-aws:db": {"engineVersion": "8.0.mysql_aurora.3.09.0"}})
    [cluster] = [x for x in other.resources if x.typ == "aws:rds/cluster:Cluster"]
    assert cluster.inputs["engineVersion"] == "8.0.mysql_aurora.3.09.0"


def test_a_version_the_region_does_not_offer_is_refused_for_a_new_cluster() -> None:
    # 3.08.2, the version main pinned, withdrawn for new clusters as standard minors are.
    config = {"mlflow-aws:db": {"engineVersion": "8.0.mysql_aurora.3.08.2"}}
    message = refused(config)
    assert (
        "mlflow-aws:db.engineVersion = 8.0.mysql_aurora.3.08.2: eu-west-1 does not offer" in message
    )
    assert "aws rds describe-db-engine-versions --engine aurora-mysql" in message
    assert "--region eu-west-1" in message
    # An existing cluster keeps its version (Aurora upgrades it): no refusal then.
    existing = MockAccount(clusters=["mlflow-aws-dev-20250101000000000000000001"])
    r = run_program(config, account=existing)
    assert any(x.typ == "aws:rds/cluster:Cluster" for x in r.resources)


# ------------------------------------------------- finding 6: the ECS service-linked role


def slr(r: ProgramRun) -> list[Any]:
    return [x for x in r.resources if x.typ == "aws:iam/serviceLinkedRole:ServiceLinkedRole"]


def test_an_account_that_never_ran_ecs_gets_the_service_linked_role_first() -> None:
    config = {"mlflow-aws:projects": ["churn", "fraud"], "mlflow-aws:server": SERVER}
    r = run_program(config, account=MockAccount(ecs_service_linked_role=None))
    [role] = slr(r)
    assert role.inputs["awsServiceName"] == "ecs.amazonaws.com"
    assert role.inputs["tags"]["mlflow-aws:stack"] == "dev"
    assert role.retain_on_delete  # other ECS users of the account need it
    for project in ("churn", "fraud"):
        [svc] = [x for x in r.resources if x.name == f"tracking-{project}-service"]
        assert role.urn in svc.dependencies
    # The stack that made it keeps declaring it (no diff, no delete); others leave it alone.
    assert slr(
        run_program(
            config, account=MockAccount(ecs_service_linked_role={"mlflow-aws:stack": "dev"})
        )
    )
    assert not slr(run_program(config, account=MockAccount(ecs_service_linked_role={})))
    assert not slr(
        run_program(
            config, account=MockAccount(ecs_service_linked_role={"mlflow-aws:stack": "prod"})
        )
    )
    assert not slr(
        run_program(
            {"mlflow-aws:projects": ["churn"]}, account=MockAccount(ecs_service_linked_role=None)
        )
    )


# ------------------------------------------------------------------- finding 9: partitions


def arns(r: ProgramRun) -> list[str]:
    found = []
    for res in r.resources:
        for text in iter_strings(res.inputs):
            found += re.findall(r"arn:[a-z-]+:[a-z0-9-]*:", text)
    return found


@pytest.mark.parametrize(
    ("partition", "region"), [("aws-cn", "cn-north-1"), ("aws-us-gov", "us-gov-west-1")]
)
def test_every_arn_the_program_writes_is_of_the_accounts_partition(
    partition: str, region: str
) -> None:
    account = MockAccount(partition=partition, region=region)
    uuid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    cert = f"arn:{partition}:acm:{region}:123456789012:certificate/{uuid}"
    config = {
        "mlflow-aws:projects": [{"name": "churn", "iamGroups": ["ds"], "iamRoles": ["ci"]}],
        "mlflow-aws:server": {"enabled": True, "domainName": DOMAIN, "certificateArn": cert},
    }
    r = run_program(config, region=region, account=account)
    found = arns(r)
    assert found and all(a.startswith(f"arn:{partition}:") for a in found), sorted(set(found))
    trust = [
        json.loads(x.inputs["assumeRolePolicy"])
        for x in r.resources
        if x.typ == "aws:iam/role:Role"
    ]
    principals = {json.dumps(s["Principal"]) for t in trust for s in t["Statement"]}
    assert f'{{"AWS": "arn:{partition}:iam::123456789012:root"}}' in principals


# ------------------------------------------- finding 9: the VPC's CIDRs, zones, internet


def test_every_cidr_of_the_vpc_reaches_mysql() -> None:
    r = run_program(
        custom(
            subnetIds=PRIVATE_SUBNETS,
            server={"subnetIds": PUBLIC_SUBNETS, "taskSubnetIds": PRIVATE_SUBNETS},
        )
    )
    [db_sg] = [x for x in r.resources if x.name == "metadata-sg"]
    [inside] = [
        rule
        for rule in db_sg.inputs["ingress"]
        if rule["description"] == "MySQL from inside the VPC"
    ]
    assert inside["cidrBlocks"] == CUSTOM_VPC_CIDRS  # the primary and the associated one
    [task_sg] = [x for x in r.resources if x.name == "tracking-task-sg"]
    [mysql] = [e for e in task_sg.inputs["egress"] if e["fromPort"] == 3306]
    assert mysql["cidrBlocks"] == CUSTOM_VPC_CIDRS


def test_a_private_hosted_zone_is_refused() -> None:
    message = refused(
        {
            "mlflow-aws:projects": ["churn"],
            "mlflow-aws:server": {**SERVER, "hostedZoneId": "Z0PRIVATE0ZONE0000001"},
        }
    )
    assert (
        "mlflow-aws:server.hostedZoneId = Z0PRIVATE0ZONE0000001: example.com is a private"
        in message
    )
    assert "ACM validates certificates only through public DNS" in message
    other = refused({"mlflow-aws:server": {**SERVER, "domainName": "mlflow.example.org"}})
    assert "the zone is example.com, which cannot hold records for server.domainName" in other


def test_laptop_access_in_a_vpc_without_an_internet_gateway_is_refused() -> None:
    config = {"mlflow-aws:db": {"subnetIds": NO_IGW_SUBNETS, "allowedCidrs": ["203.0.113.0/24"]}}
    message = refused(config)
    assert "mlflow-aws:db.allowedCidrs: the database would be publicly accessible" in message
    assert "no route to an internet gateway" in message and "drop db.allowedCidrs" in message
    # Without allowedCidrs the same VPC is fine: the database stays private.
    run_program({"mlflow-aws:db": {"subnetIds": NO_IGW_SUBNETS}})
