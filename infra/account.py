"""What the account and region hold, looked up before anything is registered.

AWS refuses combinations the mocks accept: a load balancer with two subnets in one AZ, an
internet-facing one in private subnets, tasks without a public IP behind an internet gateway,
a publicly accessible database in subnets with no internet gateway, ACM DNS validation in a
private hosted zone, an engine version the region no longer offers for new clusters.
``survey`` reads what decides each of these (data sources, as blocking invokes, so nothing is
registered yet), and raises ``AccountError`` listing every problem with the setting to change
and the rule; the components then take the plain values it found.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pulumi
import pulumi_aws as aws

from infra.config import (
    ENGINE_VERSIONS_COMMAND,
    ConfigError,
    StackConfig,
    database_identifier,
)

T = TypeVar("T")

INTERNET_GATEWAY, OTHER_ROUTE, NO_ROUTE = "internet gateway", "nat", "none"
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"
ECS_SERVICE = "ecs.amazonaws.com"
SERVICE_LINKED_ROLE_COMMAND = f"aws iam create-service-linked-role --aws-service-name {ECS_SERVICE}"
STACK_TAG = "mlflow-aws:stack"
PARAMETER_GROUP_FAMILY = "aurora-mysql8.0"  # every Aurora MySQL 3 (8.0) version
MAX_TASK_SUBNETS = 16  # ECS AwsVpcConfiguration.subnets


class AccountError(ConfigError):
    """The account or region cannot take the stack as configured; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, "the AWS account cannot take this stack as configured")


@dataclass(frozen=True)
class Subnet:
    id: str
    vpc_id: str
    availability_zone: str
    route: str  # where 0.0.0.0/0 goes: INTERNET_GATEWAY, OTHER_ROUTE (NAT, TGW, ...) or NO_ROUTE

    @property
    def public(self) -> bool:
        return self.route == INTERNET_GATEWAY


@dataclass(frozen=True)
class Network:
    vpc_id: str
    cidrs: tuple[str, ...]  # the VPC's IPv4 CIDRs: the primary and every associated one
    database_subnets: tuple[str, ...]
    load_balancer_subnets: tuple[str, ...] = ()  # the central server's (empty when it is off)
    task_subnets: tuple[str, ...] = ()
    assign_public_ip: bool = False


@dataclass(frozen=True)
class Account:
    account_id: str
    region: str
    partition: str  # aws, aws-cn, aws-us-gov: every ARN the program writes uses it
    ecs_tasks_principal: str  # the ECS tasks service principal of this region
    network: Network
    engine_version: str
    parameter_group_family: str
    # Create the ECS service-linked role (none in the account yet, or this stack made it).
    ecs_service_linked_role: bool = False
    warnings: tuple[str, ...] = field(default=())


_INVOKE_PREFIX = re.compile(
    r"^(?:invoke of|invocation of|invoking) \S+?(?: failed| returned an error)?: "
)


def _short(exc: BaseException) -> str:
    """The data source's own reason, without the SDK's and the provider's wrapping."""
    lines = [line.strip(" *\t") for line in str(exc).splitlines() if line.strip(" *\t")]
    text = lines[-1] if lines else type(exc).__name__
    while _INVOKE_PREFIX.match(text):
        text = _INVOKE_PREFIX.sub("", text, count=1)
    return text.removesuffix(" ()")


class _Survey:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def lookup(self, what: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except Exception as exc:  # an invoke error: the data source's own message
            self.problems.append(f"cannot look up {what}: {_short(exc)}")
            return None


# -- rules (pure: the facts in, the problems out) ------------------------------------------------


def outside_the_vpc(vpc_id: str, subnets: Sequence[Subnet], source: str) -> list[str]:
    return [
        f"{source}: subnet {s.id} is in {s.vpc_id}, not in the database's VPC {vpc_id}"
        for s in subnets
        if s.vpc_id != vpc_id
    ]


def database_network_problems(
    config: StackConfig, vpc_id: str, subnets: Sequence[Subnet], source: str
) -> list[str]:
    problems = outside_the_vpc(vpc_id, subnets, source)
    zones = {s.availability_zone for s in subnets}
    if len(zones) < 2:
        problems.append(
            f"{source}: the database's subnets ({', '.join(s.id for s in subnets) or 'none'}) "
            f"cover {len(zones)} availability zone(s); an Aurora subnet group needs at least 2"
        )
    if config.db.publicly_accessible:
        private = [s.id for s in subnets if not s.public]
        if private:
            problems.append(
                f"mlflow-aws:db.allowedCidrs: the database would be publicly accessible, but "
                f"its subnets {', '.join(private)} have no route to an internet gateway (RDS "
                "refuses a publicly accessible instance in a VPC without one, and nobody "
                "outside could reach it): list public subnets in db.subnetIds, or drop "
                "db.allowedCidrs and reach MySQL from inside the VPC"
            )
    return problems


def load_balancer_problems(
    config: StackConfig, vpc_id: str, subnets: Sequence[Subnet], source: str
) -> list[str]:
    problems = outside_the_vpc(vpc_id, subnets, source)
    by_zone: dict[str, list[str]] = {}
    for s in subnets:
        by_zone.setdefault(s.availability_zone, []).append(s.id)
    for zone, ids in sorted(by_zone.items()):
        if len(ids) > 1:
            problems.append(
                f"{source}: subnets {', '.join(ids)} are all in {zone}; a load balancer takes "
                "exactly one subnet per availability zone: list one per zone in "
                "server.subnetIds"
            )
    if len(by_zone) < 2:
        problems.append(
            f"{source}: the load balancer's subnets cover {len(by_zone)} availability "
            "zone(s); an Application Load Balancer needs at least 2"
        )
    if not config.server.internal:
        private = [s.id for s in subnets if not s.public]
        if private:
            problems.append(
                f"{source}: subnets {', '.join(private)} have no route to an internet gateway, "
                "so an internet-facing load balancer there is unreachable: list public subnets "
                "in server.subnetIds, or set server.internal true"
            )
    return problems


def task_network_problems(
    vpc_id: str, subnets: Sequence[Subnet], assign_public_ip: bool, source: str
) -> tuple[list[str], list[str]]:
    """Problems and warnings for the tasks' subnets: they must reach ECR, S3, Secrets Manager
    and CloudWatch Logs to start at all."""
    problems = outside_the_vpc(vpc_id, subnets, source)
    warnings = []
    if len(subnets) > MAX_TASK_SUBNETS:
        problems.append(f"{source}: ECS takes at most {MAX_TASK_SUBNETS} subnets per service")
    for s in subnets:
        if assign_public_ip and not s.public:
            problems.append(
                f"{source}: tasks get a public IP (server.assignPublicIp), but subnet {s.id} "
                "has no route to an internet gateway, so the IP reaches nothing: set "
                "server.assignPublicIp false (a NAT routes them) or pick public subnets"
            )
        elif not assign_public_ip and s.public:
            problems.append(
                f"{source}: tasks without a public IP in subnet {s.id}, whose route to the "
                "internet is an internet gateway, cannot pull the image or read their secret: "
                "set server.assignPublicIp true, or put the tasks behind a NAT "
                "(server.taskSubnetIds)"
            )
        elif s.route == NO_ROUTE:
            warnings.append(
                f"{source}: subnet {s.id} has no route to the internet: the tasks start only "
                "with VPC endpoints for ECR (api, dkr), S3, Secrets Manager, CloudWatch Logs "
                "and STS"
            )
    return problems, warnings


def hosted_zone_problems(domain: str, zone_id: str, zone_name: str, private: bool) -> list[str]:
    problems = []
    zone = zone_name.rstrip(".").lower()
    if private:
        problems.append(
            f"mlflow-aws:server.hostedZoneId = {zone_id}: {zone} is a private hosted zone; ACM "
            "validates certificates only through public DNS, so the certificate would never be "
            "issued: use the public zone of the domain, or server.certificateArn"
        )
    if domain != zone and not domain.endswith(f".{zone}"):
        problems.append(
            f"mlflow-aws:server.hostedZoneId = {zone_id}: the zone is {zone}, which cannot hold "
            f"records for server.domainName {domain}"
        )
    return problems


def default_route(routes: Sequence[Any]) -> str:
    """Where a route table sends 0.0.0.0/0."""
    for route in routes:
        if _get(route, "cidr_block") != "0.0.0.0/0":
            continue
        if str(_get(route, "gateway_id") or "").startswith("igw-"):
            return INTERNET_GATEWAY
        targets = ("nat_gateway_id", "transit_gateway_id", "network_interface_id",
                   "vpc_peering_connection_id", "instance_id", "gateway_id")  # fmt: skip
        if any(_get(route, t) for t in targets):
            return OTHER_ROUTE
    return NO_ROUTE


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)


# -- looking -----------------------------------------------------------------------------------


def _route_tables(vpc_id: str, subnet_id: str | None) -> list[str]:
    """The route table associated with ``subnet_id``, or (None) the VPC's main one."""
    if subnet_id is not None:
        name, value, vpc = "association.subnet-id", subnet_id, None
    else:
        name, value, vpc = "association.main", "true", vpc_id
    found = aws.ec2.get_route_tables(
        vpc_id=vpc, filters=[aws.ec2.GetRouteTablesFilterArgs(name=name, values=[value])]
    )
    return [str(i) for i in found.ids]


def _subnet_facts(survey: _Survey, ids: Sequence[str], region: str) -> dict[str, Subnet]:
    facts: dict[str, Subnet] = {}
    route_of_table: dict[str, str] = {}
    for subnet_id in dict.fromkeys(ids):
        found = survey.lookup(
            f"subnet {subnet_id} in {region}", functools.partial(aws.ec2.get_subnet, id=subnet_id)
        )
        if found is None:
            continue
        vpc_id = str(found.vpc_id)
        tables = survey.lookup(
            f"the route table of {subnet_id}", functools.partial(_route_tables, vpc_id, subnet_id)
        )
        if not tables:  # no explicit association: the VPC's main route table
            tables = survey.lookup(
                f"the main route table of {vpc_id}", functools.partial(_route_tables, vpc_id, None)
            )
        route = NO_ROUTE
        if tables:
            table = tables[0]
            if table not in route_of_table:
                found_table = survey.lookup(
                    f"the routes of {table}",
                    functools.partial(aws.ec2.get_route_table, route_table_id=table),
                )
                route_of_table[table] = default_route(found_table.routes if found_table else [])
            route = route_of_table[table]
        facts[subnet_id] = Subnet(subnet_id, vpc_id, str(found.availability_zone), route)
    return facts


def _subnet_ids(vpc_id: str, default_for_az: bool = False) -> list[str]:
    filters = [aws.ec2.GetSubnetsFilterArgs(name="vpc-id", values=[vpc_id])]
    if default_for_az:
        filters.append(aws.ec2.GetSubnetsFilterArgs(name="default-for-az", values=["true"]))
    return sorted(str(i) for i in aws.ec2.get_subnets(filters=filters).ids)


def _vpc(survey: _Survey, config: StackConfig, region: str) -> Any:
    db = config.db
    if db.vpc_id:
        return survey.lookup(
            f"VPC {db.vpc_id} (db.vpcId) in {region}", lambda: aws.ec2.get_vpc(id=db.vpc_id)
        )
    if db.subnet_ids:
        first = survey.lookup(
            f"subnet {db.subnet_ids[0]} (db.subnetIds) in {region}",
            lambda: aws.ec2.get_subnet(id=db.subnet_ids[0]),
        )
        if first is None:
            return None
        return survey.lookup(f"VPC {first.vpc_id}", lambda: aws.ec2.get_vpc(id=first.vpc_id))
    vpc = survey.lookup(f"the default VPC of {region}", lambda: aws.ec2.get_vpc(default=True))
    if vpc is None:
        survey.problems.append(
            f"{region} has no default VPC (or it cannot be read): set db.vpcId and db.subnetIds "
            "to the VPC and subnets the stack should use"
        )
    return vpc


def _vpc_cidrs(vpc: Any) -> tuple[str, ...]:
    cidrs = [str(vpc.cidr_block)]
    for association in vpc.cidr_block_associations or []:
        if _get(association, "state") in (None, "associated"):
            cidrs.append(str(_get(association, "cidr_block")))
    return tuple(dict.fromkeys(cidrs))


def _network(survey: _Survey, config: StackConfig, region: str) -> Network | None:
    vpc = _vpc(survey, config, region)
    if vpc is None:
        return None
    vpc_id = str(vpc.id)
    db, server = config.db, config.server
    own_network = bool(db.vpc_id or db.subnet_ids)
    if db.subnet_ids:
        database_subnets, db_source = list(db.subnet_ids), "mlflow-aws:db.subnetIds"
    elif own_network:
        database_subnets = (
            survey.lookup(f"the subnets of {vpc_id}", lambda: _subnet_ids(vpc_id)) or []
        )
        db_source = f"db.subnetIds unset, so every subnet of {vpc_id}"
    else:  # the default VPC: its default subnets, one per AZ, public
        database_subnets = (
            survey.lookup(
                f"the default subnets of {vpc_id}",
                lambda: _subnet_ids(vpc_id, default_for_az=True),
            )
            or []
        )
        db_source = f"db.subnetIds unset, so the default subnets of {vpc_id}"
    lb_subnets: list[str] = []
    task_subnets: list[str] = []
    lb_source = task_source = ""
    if server.enabled:
        if server.subnet_ids:
            lb_subnets, lb_source = list(server.subnet_ids), "mlflow-aws:server.subnetIds"
        elif own_network:
            lb_subnets = database_subnets
            lb_source = f"server.subnetIds unset, so the database's subnets ({db_source})"
        else:  # the default VPC: its default subnets are one per AZ and public
            lb_subnets = database_subnets
            lb_source = f"server.subnetIds unset, so the default subnets of {vpc_id}"
        if server.task_subnet_ids:
            task_subnets, task_source = (
                list(server.task_subnet_ids),
                "mlflow-aws:server.taskSubnetIds",
            )
        else:
            task_subnets = lb_subnets
            task_source = f"server.taskSubnetIds unset, so the load balancer's ({lb_source})"
    facts = _subnet_facts(survey, [*database_subnets, *lb_subnets, *task_subnets], region)
    if survey.problems:
        return None

    def known(ids: Sequence[str]) -> list[Subnet]:
        return [facts[i] for i in ids if i in facts]

    survey.problems += database_network_problems(config, vpc_id, known(database_subnets), db_source)
    assign_public_ip = False
    if server.enabled:
        survey.problems += load_balancer_problems(config, vpc_id, known(lb_subnets), lb_source)
        tasks = known(task_subnets)
        if server.assign_public_ip is not None:
            assign_public_ip = server.assign_public_ip
        else:  # a public IP exactly where the way out is an internet gateway
            assign_public_ip = bool(tasks) and all(s.public for s in tasks)
        if survey.problems:
            pass  # the load balancer's subnets are wrong: the tasks' follow from them
        elif (
            server.assign_public_ip is None
            and any(s.public for s in tasks)
            and not assign_public_ip
        ):
            survey.problems.append(
                f"{task_source}: the tasks' subnets mix public and private ones; list one kind "
                "in server.taskSubnetIds (public with server.assignPublicIp true, or private "
                "behind a NAT)"
            )
        else:
            problems, warnings = task_network_problems(vpc_id, tasks, assign_public_ip, task_source)
            survey.problems += problems
            survey.warnings += warnings
    return Network(
        vpc_id=vpc_id,
        cidrs=_vpc_cidrs(vpc),
        database_subnets=tuple(database_subnets),
        load_balancer_subnets=tuple(lb_subnets),
        task_subnets=tuple(task_subnets),
        assign_public_ip=assign_public_ip,
    )


def _engine(survey: _Survey, config: StackConfig, region: str) -> str:
    """The parameter group family of the configured version; refuses a version the region
    does not offer for a new cluster (an existing cluster keeps its own version)."""
    version = config.db.engine_version
    prefix = f"{database_identifier(config.stack)}-"
    existing = survey.lookup(
        "the Aurora MySQL clusters of the account",
        lambda: (
            aws.rds.get_clusters(
                filters=[aws.rds.GetClustersFilterArgs(name="engine", values=["aurora-mysql"])]
            ).cluster_identifiers
        ),
    )
    try:
        found = aws.rds.get_engine_version(engine="aurora-mysql", version=version)
    except Exception as exc:
        if not any(str(c).startswith(prefix) for c in existing or []):
            survey.problems.append(
                f"mlflow-aws:db.engineVersion = {version}: {region} does not offer this version "
                f"for new Aurora MySQL clusters ({_short(exc)}); list the ones it offers with "
                f"`{ENGINE_VERSIONS_COMMAND.replace('<region>', region)}`"
            )
        return PARAMETER_GROUP_FAMILY
    return str(found.parameter_group_family or PARAMETER_GROUP_FAMILY)


def _ecs_service_linked_role(survey: _Survey, stack: str) -> bool:
    """Whether this stack declares the ECS service-linked role: when the account has none (an
    account that never used ECS: the first service fails with "Unable to assume the service
    linked role"), or when this stack created it. Never deleted (retain_on_delete)."""
    try:
        names = aws.iam.get_roles(path_prefix=f"/aws-service-role/{ECS_SERVICE}/").names
        if ECS_SERVICE_LINKED_ROLE not in names:
            return True
        tags = aws.iam.get_role(name=ECS_SERVICE_LINKED_ROLE).tags or {}
    except Exception as exc:
        survey.warnings.append(
            f"cannot check for the ECS service-linked role ({_short(exc)}); if this account "
            f"never ran ECS, create it once: {SERVICE_LINKED_ROLE_COMMAND}"
        )
        return False
    return tags.get(STACK_TAG) == stack


def survey(config: StackConfig) -> Account:
    """Everything the program needs to know of the account before registering a resource."""
    check = _Survey()
    region = str(aws.get_region().region)
    account_id = str(aws.get_caller_identity().account_id)
    partition = str(aws.get_partition().partition)
    principal = check.lookup(
        "the ECS tasks service principal",
        lambda: str(aws.get_service_principal(service_name="ecs-tasks", region=region).name),
    )
    network = _network(check, config, region)
    family = _engine(check, config, region)
    server = config.server
    if server.enabled and server.hosted_zone_id and server.domain_name:
        zone = check.lookup(
            f"hosted zone {server.hosted_zone_id} (server.hostedZoneId)",
            lambda: aws.route53.get_zone(zone_id=server.hosted_zone_id),
        )
        if zone is not None:
            check.problems += hosted_zone_problems(
                server.domain_name, server.hosted_zone_id, str(zone.name), bool(zone.private_zone)
            )
    linked_role = _ecs_service_linked_role(check, config.stack) if server.enabled else False
    if check.problems or network is None or principal is None:
        raise AccountError(check.problems)
    for warning in check.warnings:
        pulumi.log.warn(warning)
    return Account(
        account_id=account_id,
        region=region,
        partition=partition,
        ecs_tasks_principal=principal,
        network=network,
        engine_version=config.db.engine_version,
        parameter_group_family=family,
        ecs_service_linked_role=linked_role,
        warnings=tuple(check.warnings),
    )
