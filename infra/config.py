"""The stack config of mlflow-aws, read in one place into a typed, validated object.

Every key lives in the ``mlflow-aws:`` namespace and is documented in ``Pulumi.yaml``.
``parse_stack_config`` is pure (raw strings in, ``StackConfig`` out) so it can be tested
without Pulumi; ``load_stack_config`` feeds it the running stack's config. Invalid config
raises ``ConfigError`` (a ``pulumi.RunError``: shown without a traceback) listing every
problem with the key, the value and the rule, before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlflow_aws.names import collisions, name_problem
from mlflow_aws.server_settings import connections_per_server

NAMESPACE = "mlflow-aws"
DOCKER_REQUIREMENTS = Path(__file__).resolve().parent.parent / "docker" / "requirements.txt"

TOP_LEVEL_KEYS = ("projects", "mlflowVersion", "db", "server", "protect")
DB_KEYS = (
    "minCapacity",
    "maxCapacity",
    "secondsUntilAutoPause",
    "allowedCidrs",
    "backupRetentionDays",
    "deletionProtection",
    "vpcId",
    "subnetIds",
    "caBundle",
)
PROJECT_KEYS = (
    "name",
    "dropDataOnRemove",
    "iamGroups",
    "iamRoles",
    "passwordVersion",
    "adoptExistingSchema",
)
SERVER_KEYS = (
    "enabled",
    "domainName",
    "hostedZoneId",
    "certificateArn",
    "internal",
    "allowedCidrs",
    "cpu",
    "memory",
    "minTasks",
    "maxTasks",
    "subnetIds",
    "assignPublicIp",
)

# Surrounding ASCII whitespace is forgiven ("churn, fraud"); any other (a no-break space, say)
# stays part of the name and is refused as non-ASCII rather than silently removed.
ASCII_SPACE = " \t\r\n"

# A public range broader than this is a slice of the internet (two /1s are the internet).
MIN_ALLOWED_PREFIX = 8

# The most MySQL connections one server holds (server.env's pool size + overflow: 10).
CONNECTIONS_PER_SERVER = connections_per_server()

# Aurora Serverless v2 limits (ACU) and auto-pause window (seconds).
MIN_ACU, MAX_ACU = 0.0, 256.0
AUTO_PAUSE_MIN_S, AUTO_PAUSE_MAX_S = 300, 86400

# Fargate (Linux) task sizes: CPU units -> the memory sizes (MiB) allowed with it.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}
# One task holds at most MLFLOW_SQLALCHEMYSTORE_POOL_SIZE + MAX_OVERFLOW (10) MySQL connections;
# 20 tasks of one project are 200, beyond what a small Aurora Serverless v2 cluster admits.
MAX_TASKS = 20
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOSTED_ZONE_ID = re.compile(r"Z[A-Z0-9]{1,32}")
_CERTIFICATE_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:acm:([a-z0-9-]+):\d{12}:certificate/[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"
)
_SUBNET_ID = re.compile(r"subnet-[0-9a-f]+")


class ConfigError(pulumi.RunError):
    """Invalid stack config; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack config ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class ProjectConfig:
    name: str
    drop_data_on_remove: bool = False  # consent to DROP the schema when the project is removed
    iam_groups: tuple[str, ...] = ()  # IAM groups the project's policy is attached to
    iam_roles: tuple[str, ...] = ()  # IAM roles the project's policy is attached to
    password_version: int = 1  # bump to rotate the project's MySQL password
    # consent to use a schema of that name that mlflow-aws did not create (its tables stay)
    adopt_existing_schema: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    min_capacity: float = 0.0  # ACU; 0 lets Aurora pause when idle
    max_capacity: float = 2.0
    seconds_until_auto_pause: int = 300
    allowed_cidrs: tuple[str, ...] = ()  # who may reach MySQL from outside the VPC
    backup_retention_days: int = 1
    deletion_protection: bool = False
    vpc_id: str | None = None  # None: the account's default VPC
    subnet_ids: tuple[str, ...] = ()  # empty: the subnets of that VPC
    # PEM of the CAs of the database's certificate; None: AWS's bundle, fetched at deploy time
    ca_bundle: str | None = field(default=None, repr=False)

    @property
    def publicly_accessible(self) -> bool:
        return bool(self.allowed_cidrs)


@dataclass(frozen=True)
class ServerConfig:
    """The central tracking server (ECS Fargate behind an HTTPS load balancer), optional."""

    enabled: bool = False
    domain_name: str | None = None  # https://<domain_name>/<project>
    hosted_zone_id: str | None = None  # set: the program issues the certificate and the alias
    certificate_arn: str | None = None  # set: an existing ACM certificate; DNS is yours
    internal: bool = False  # public (every request signs in), or only inside the VPC
    allowed_cidrs: tuple[str, ...] = ()  # who may reach the load balancer; empty: the VPC
    cpu: int = 512  # Fargate CPU units per task
    memory: int = 1024  # MiB per task
    min_tasks: int = 1  # per project
    max_tasks: int = 3  # per project
    subnet_ids: tuple[str, ...] = ()  # empty: the database's subnets
    assign_public_ip: bool = True  # default VPC only: tasks need a route to ECR/S3/Secrets/Logs

    @property
    def url(self) -> str | None:
        return f"https://{self.domain_name}" if self.enabled and self.domain_name else None

    def tracking_uri(self, project: str) -> str | None:
        """``https://<domain>/<project>`` when the server is enabled, else None."""
        return f"{self.url}/{project}" if self.url else None


@dataclass(frozen=True)
class StackConfig:
    stack: str
    mlflow_version: str
    protect: bool
    db: DatabaseConfig
    projects: tuple[ProjectConfig, ...] = field(default_factory=tuple)
    aws_profile: str | None = None  # aws:profile, for the schema provider's own AWS calls
    server: ServerConfig = field(default_factory=ServerConfig)

    @property
    def max_user_connections(self) -> int:
        """Each project user's MySQL connection limit: the laptop servers' share, plus every
        central task's pool at its largest (server.env: pool size + overflow)."""
        from projects.schema_sql import DEFAULT_MAX_USER_CONNECTIONS

        tasks = self.server.max_tasks if self.server.enabled else 0
        return DEFAULT_MAX_USER_CONNECTIONS + tasks * CONNECTIONS_PER_SERVER


def stack_slug(stack: str) -> str:
    """The stack's name in AWS names: lowercase letters and digits, single hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", stack.lower()).strip("-") or "stack"


def pinned_mlflow_version(requirements: Path = DOCKER_REQUIREMENTS) -> str:
    """The mlflow version pinned in the server image's requirements."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*mlflow==([0-9][0-9A-Za-z.+-]*)\s*(#.*)?", line)
        if match:
            return match.group(1)
    raise RuntimeError(f"{requirements} does not pin mlflow==<version>")


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, value: Any, rule: str) -> None:
        self.items.append(f"{_key(key)} = {json.dumps(value)}: {rule}")


def _parse_json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw


def _as_bool(value: Any, key: str, problems: _Problems, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    problems.add(key, value, "must be true or false")
    return default


def _as_number(
    value: Any, key: str, problems: _Problems, default: float, lo: float, hi: float
) -> float:
    if value is None:
        return default
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or number != number:  # NaN
        problems.add(key, value, f"must be a number from {lo:g} to {hi:g}")
        return default
    if not lo <= number <= hi:
        problems.add(key, value, f"must be from {lo:g} to {hi:g}")
        return default
    return number


def _as_int(value: Any, key: str, problems: _Problems, default: int, lo: int, hi: int) -> int:
    number = _as_number(value, key, problems, float(default), lo, hi)
    if number != int(number):
        problems.add(key, value, "must be a whole number")
        return default
    return int(number)


def _as_str_list(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = _parse_json_or_text(value)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(key, value, "must be a list of non-empty strings")
        return ()
    return tuple(value)


def _parse_capacity(db: Mapping[str, Any], problems: _Problems) -> tuple[float, float]:
    lo = _as_number(db.get("minCapacity"), "db.minCapacity", problems, 0.0, MIN_ACU, MAX_ACU)
    hi = _as_number(db.get("maxCapacity"), "db.maxCapacity", problems, 2.0, 1.0, MAX_ACU)
    for key, value in (("db.minCapacity", lo), ("db.maxCapacity", hi)):
        if (value * 2) != int(value * 2):
            problems.add(key, value, "must be a multiple of 0.5 ACU")
    if lo > hi:
        problems.add("db.minCapacity", lo, f"must not exceed db.maxCapacity ({hi:g})")
    return lo, hi


def _parse_cidrs(
    value: Any,
    problems: _Problems,
    key: str = "db.allowedCidrs",
    what: str = "MySQL",
    internet: bool = False,
) -> tuple[str, ...]:
    cidrs = _as_str_list(value, key, problems)
    normalised = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=True)
        except ValueError as exc:
            problems.add(key, cidr, f"is not a valid CIDR such as 203.0.113.7/32 ({exc})")
            continue
        if network.prefixlen == 0 and not internet:
            problems.add(
                key,
                cidr,
                f"opens {what} to the whole internet and is refused; list your office or VPN "
                "ranges instead",
            )
            continue
        if network.version == 6:
            problems.add(
                key,
                cidr,
                f"is IPv6, but {what} is reached over IPv4 only; list the IPv4 ranges",
            )
            continue
        if internet:  # up to the whole internet: every request must sign in
            normalised.append(str(network))
            continue
        if network.prefixlen < MIN_ALLOWED_PREFIX:
            problems.add(
                key,
                cidr,
                f"is broader than /{MIN_ALLOWED_PREFIX} ({network.num_addresses:,} addresses: "
                "a slice of the internet, not an office or VPN) and is refused",
            )
            continue
        normalised.append(str(network))
    return tuple(dict.fromkeys(normalised))


def _as_section(
    raw: str | None, key: str, known: tuple[str, ...], example: str, problems: _Problems
) -> dict[str, Any] | None:
    """The object under ``key`` (empty when unset), its unknown keys reported; None if it is
    not an object."""
    section: Any = {} if raw is None else _parse_json_or_text(raw)
    if not isinstance(section, dict):
        problems.add(key, section, f"must be an object, e.g. pulumi config set --path {example}")
        return None
    for unknown in sorted(set(section) - set(known)):
        problems.add(
            f"{key}.{unknown}", section[unknown], f"unknown key; known: {', '.join(known)}"
        )
    return section


def _as_subnet_ids(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    subnet_ids = _as_str_list(value, key, problems)
    for subnet in subnet_ids:
        if not _SUBNET_ID.fullmatch(subnet):
            problems.add(key, subnet, "must be subnet ids like subnet-0123abcd")
    return subnet_ids


def _parse_db(raw: str | None, protect: bool, problems: _Problems) -> DatabaseConfig:
    db = _as_section(raw, "db", DB_KEYS, "db.maxCapacity 4", problems)
    if db is None:
        return DatabaseConfig(deletion_protection=protect)
    lo, hi = _parse_capacity(db, problems)
    vpc_id = db.get("vpcId")
    if vpc_id is not None and not (
        isinstance(vpc_id, str) and re.fullmatch(r"vpc-[0-9a-f]+", vpc_id)
    ):
        problems.add("db.vpcId", vpc_id, "must be a VPC id like vpc-0123abcd")
        vpc_id = None
    subnet_ids = _as_subnet_ids(db.get("subnetIds"), "db.subnetIds", problems)
    if subnet_ids and len(subnet_ids) < 2:
        problems.add("db.subnetIds", list(subnet_ids), "Aurora needs subnets in at least 2 AZs")
    ca_bundle = None
    if db.get("caBundle") is not None:
        from infra.rds_ca import CaBundleError, read_ca_bundle_file

        try:
            ca_bundle = read_ca_bundle_file(str(db["caBundle"]))
        except CaBundleError as exc:
            problems.add(
                "db.caBundle", db["caBundle"], f"must be a PEM file of CA certificates: {exc}"
            )
    return DatabaseConfig(
        min_capacity=lo,
        max_capacity=hi,
        seconds_until_auto_pause=_as_int(
            db.get("secondsUntilAutoPause"),
            "db.secondsUntilAutoPause",
            problems,
            300,
            AUTO_PAUSE_MIN_S,
            AUTO_PAUSE_MAX_S,
        ),
        allowed_cidrs=_parse_cidrs(db.get("allowedCidrs"), problems),
        backup_retention_days=_as_int(
            db.get("backupRetentionDays"),
            "db.backupRetentionDays",
            problems,
            7 if protect else 1,
            1,
            35,
        ),
        deletion_protection=_as_bool(
            db.get("deletionProtection"), "db.deletionProtection", problems, protect
        ),
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        ca_bundle=ca_bundle,
    )


def _as_domain(value: Any, key: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    labels = value.split(".") if isinstance(value, str) else []
    if not (
        isinstance(value, str)
        and len(value) <= 253
        and len(labels) >= 2
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        problems.add(
            key,
            value,
            "must be a lowercase DNS name such as mlflow.example.com (no scheme, port, path, "
            "wildcard or trailing dot)",
        )
        return None
    return str(value)


def _parse_server(
    raw: str | None, region: str | None, db: DatabaseConfig, problems: _Problems
) -> ServerConfig:
    server = _as_section(raw, "server", SERVER_KEYS, "server.enabled true", problems)
    if server is None:
        return ServerConfig()
    enabled = _as_bool(server.get("enabled"), "server.enabled", problems, False)
    internal = _as_bool(server.get("internal"), "server.internal", problems, False)
    domain = _as_domain(server.get("domainName"), "server.domainName", problems)

    zone = server.get("hostedZoneId")
    if zone is not None and not (isinstance(zone, str) and _HOSTED_ZONE_ID.fullmatch(zone)):
        problems.add("server.hostedZoneId", zone, "must be a Route 53 hosted zone id like Z0123ABC")
        zone = None
    certificate = server.get("certificateArn")
    if certificate is not None:
        match = _CERTIFICATE_ARN.fullmatch(certificate) if isinstance(certificate, str) else None
        if match is None:
            problems.add(
                "server.certificateArn",
                certificate,
                "must be an ACM certificate ARN like "
                "arn:aws:acm:eu-west-1:123456789012:certificate/<uuid>",
            )
            certificate = None
        elif region and match.group(1) != region:
            problems.add(
                "server.certificateArn",
                certificate,
                f"is in {match.group(1)}, but a load balancer only uses certificates of its own "
                f"region ({region})",
            )
            certificate = None
    if zone is not None and certificate is not None:
        problems.add(
            "server.certificateArn",
            certificate,
            "set either hostedZoneId (the program issues the certificate) or certificateArn "
            "(your certificate, your DNS), not both",
        )

    cpu = _as_int(server.get("cpu"), "server.cpu", problems, 512, 256, 16384)
    memory = _as_int(server.get("memory"), "server.memory", problems, 1024, 512, 122880)
    if cpu not in FARGATE_SIZES:
        problems.add("server.cpu", cpu, f"must be a Fargate CPU size: {sorted(FARGATE_SIZES)}")
    elif memory not in FARGATE_SIZES[cpu]:
        allowed = FARGATE_SIZES[cpu]
        problems.add(
            "server.memory",
            memory,
            f"is not a Fargate size for cpu {cpu}: {allowed[0]}-{allowed[-1]} MiB in steps of "
            f"{allowed[1] - allowed[0] if len(allowed) > 1 else allowed[0]}",
        )
    min_tasks = _as_int(server.get("minTasks"), "server.minTasks", problems, 1, 1, MAX_TASKS)
    max_tasks = _as_int(server.get("maxTasks"), "server.maxTasks", problems, 3, 1, MAX_TASKS)
    if min_tasks > max_tasks:
        problems.add("server.minTasks", min_tasks, f"must not exceed server.maxTasks ({max_tasks})")

    subnet_ids = _as_subnet_ids(server.get("subnetIds"), "server.subnetIds", problems)
    if len(set(subnet_ids)) != len(subnet_ids):
        problems.add("server.subnetIds", list(subnet_ids), "lists a subnet twice")
    if subnet_ids and len(set(subnet_ids)) < 2:
        problems.add(
            "server.subnetIds",
            list(subnet_ids),
            "a load balancer needs subnets in at least 2 availability zones",
        )
    # The account's default VPC has public subnets and no NAT: tasks there need a public IP to
    # reach ECR, S3, Secrets Manager and CloudWatch. Your own VPC: your NAT or VPC endpoints.
    default_vpc = not (subnet_ids or db.subnet_ids or db.vpc_id)
    assign_public_ip = _as_bool(
        server.get("assignPublicIp"), "server.assignPublicIp", problems, default_vpc
    )
    # Everyone may reach the load balancer (0.0.0.0/0) only because every request must sign in.
    allowed_cidrs = _parse_cidrs(
        server.get("allowedCidrs"),
        problems,
        "server.allowedCidrs",
        "the load balancer",
        internet=True,
    )

    if enabled:
        if domain is None and "domainName" not in server:
            problems.add(
                "server.domainName",
                None,
                "is required when server.enabled: the tracking URIs are https://<domainName>/<project>",
            )
        has_certificate = zone is not None or certificate is not None
        if not has_certificate and "hostedZoneId" not in server and "certificateArn" not in server:
            if not internal:
                problems.add(
                    "server.internal",
                    False,
                    "a public load balancer without HTTPS is refused (passwords, tokens and "
                    "artifacts would cross the internet in clear text): set server.hostedZoneId "
                    "or server.certificateArn",
                )
            else:
                problems.add(
                    "server.hostedZoneId",
                    None,
                    "the load balancer serves HTTPS only and needs a certificate: set "
                    "server.hostedZoneId (the program issues one) or server.certificateArn",
                )
    return ServerConfig(
        enabled=enabled,
        domain_name=domain,
        hosted_zone_id=zone,
        certificate_arn=certificate,
        internal=internal,
        allowed_cidrs=allowed_cidrs,
        cpu=cpu,
        memory=memory,
        min_tasks=min_tasks,
        max_tasks=max_tasks,
        subnet_ids=subnet_ids,
        assign_public_ip=assign_public_ip,
    )


def _parse_project(item: Any, index: int, problems: _Problems) -> ProjectConfig | None:
    key = f"projects[{index}]"
    if isinstance(item, str):
        item = {"name": item.strip(ASCII_SPACE)}
    if not isinstance(item, dict):
        problems.add(key, item, "must be a project name or an object with a name")
        return None
    for unknown in sorted(set(item) - set(PROJECT_KEYS)):
        problems.add(
            f"{key}.{unknown}", item[unknown], f"unknown key; known: {', '.join(PROJECT_KEYS)}"
        )
    name = item.get("name")
    problem = name_problem(name)
    if problem is not None:
        problems.add(f"{key}.name", name, problem)
        return None
    assert isinstance(name, str)
    return ProjectConfig(
        name=name,
        drop_data_on_remove=_as_bool(
            item.get("dropDataOnRemove"), f"{key}.dropDataOnRemove", problems, False
        ),
        iam_groups=_as_str_list(item.get("iamGroups"), f"{key}.iamGroups", problems),
        iam_roles=_as_str_list(item.get("iamRoles"), f"{key}.iamRoles", problems),
        password_version=_as_int(
            item.get("passwordVersion"), f"{key}.passwordVersion", problems, 1, 1, 1_000_000
        ),
        adopt_existing_schema=_as_bool(
            item.get("adoptExistingSchema"), f"{key}.adoptExistingSchema", problems, False
        ),
    )


def _parse_projects(raw: str | None, problems: _Problems) -> tuple[ProjectConfig, ...]:
    if raw is None or not raw.strip():
        return ()
    items: Any = _parse_json_or_text(raw)
    if isinstance(items, str):  # "churn, fraud"
        items = [part.strip(ASCII_SPACE) for part in items.split(",")]
    if not isinstance(items, list):
        problems.add(
            "projects", items, "must be a list, a JSON list or a comma-separated string of names"
        )
        return ()
    raw_names = [
        item if isinstance(item, str) else item.get("name") if isinstance(item, dict) else None
        for item in items
    ]
    for message in collisions([n.strip(ASCII_SPACE) for n in raw_names if isinstance(n, str)]):
        problems.items.append(f"{_key('projects')}: {message}")
    parsed = [_parse_project(item, i, problems) for i, item in enumerate(items)]
    return tuple(p for p in parsed if p is not None)


def parse_stack_config(values: Mapping[str, str], stack: str) -> StackConfig:
    """Parse the stack's raw config (full keys such as ``mlflow-aws:db`` to raw strings)."""
    problems = _Problems()
    ours = {k[len(NAMESPACE) + 1 :]: v for k, v in values.items() if k.startswith(f"{NAMESPACE}:")}
    for unknown in sorted(set(ours) - set(TOP_LEVEL_KEYS)):
        problems.add(unknown, ours[unknown], f"unknown key; known: {', '.join(TOP_LEVEL_KEYS)}")

    protect = _as_bool(ours.get("protect"), "protect", problems, stack.lower().startswith("prod"))
    version = ours.get("mlflowVersion") or pinned_mlflow_version()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        problems.add("mlflowVersion", version, "must be a release version such as 3.17.2")
    db = _parse_db(ours.get("db"), protect, problems)
    config = StackConfig(
        stack=stack,
        mlflow_version=version,
        protect=protect,
        db=db,
        projects=_parse_projects(ours.get("projects"), problems),
        aws_profile=values.get("aws:profile") or None,
        server=_parse_server(ours.get("server"), values.get("aws:region"), db, problems),
    )
    if problems.items:
        raise ConfigError(problems.items)
    return config


def load_stack_config() -> StackConfig:
    """The running stack's config, validated."""
    from pulumi.runtime import config as runtime_config

    values = {k: str(v) for k, v in runtime_config.get_config_env().items()}
    values.update({k: str(v) for k, v in runtime_config.CONFIG.get().items()})
    return parse_stack_config(values, pulumi.get_stack())
