"""The stack config of mlflow-aws, read in one place into a typed, validated object.

Every key lives in the ``mlflow-aws:`` namespace and is documented in ``Pulumi.yaml``.
``parse_stack_config`` is pure (raw strings in, ``StackConfig`` out) so it can be tested
without Pulumi; ``load_stack_config`` feeds it the running stack's config. Invalid config
raises ``ConfigError`` (a ``pulumi.RunError``: shown without a traceback) listing every
problem with the key, the value and the rule, before any resource is registered.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from mlflow_aws import names as aws_names
from mlflow_aws.names import collisions, name_problem

NAMESPACE = "mlflow-aws"
DOCKER_REQUIREMENTS = Path(__file__).resolve().parent.parent / "docker" / "requirements.txt"

TOP_LEVEL_KEYS = (
    "projects",
    "mlflowVersion",
    "db",
    "server",
    "protect",
    "upgrade",
    "gc",
    "alarms",
)
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
    "engineVersion",
    "adminPasswordVersion",
)
UPGRADE_KEYS = ("ignoreConnectedClients", "snapshot")
GC_KEYS = ("enabled", "schedule", "olderThan", "traceRetention")
ALARMS_KEYS = ("email", "topicArn")
# EventBridge Scheduler's expressions (https://docs.aws.amazon.com/scheduler/latest/UserGuide/
# schedule-types.html): rate(value unit), cron(6 fields), at(yyyy-mm-ddThh:mm:ss).
_SCHEDULE = re.compile(
    # rate: a singular unit for 1, plural above
    r"rate\((?:1 (?:minute|hour|day)|(?:[2-9]|[1-9]\d+) (?:minutes|hours|days))\)"
    r"|cron\((?:\S+ ){5}\S+\)"
    r"|at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)"
)
_DURATION = re.compile(r"\d+[smhd]")
_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
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
    "taskSubnetIds",
    "assignPublicIp",
    "aiGateway",
)

# Surrounding ASCII whitespace is forgiven ("churn, fraud"); any other (a no-break space, say)
# stays part of the name and is refused as non-ASCII rather than silently removed.
ASCII_SPACE = " \t\r\n"

# A public range broader than this is a slice of the internet (two /1s are the internet).
MIN_ALLOWED_PREFIX = 8
# A security group holds at most 60 inbound rules, one per CIDR and port range (VPC quotas:
# https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html#vpc-limits-security-groups).
# The database's group also admits the VPC's CIDRs (up to 5) and the client group; the load
# balancer's admits each range on 443 and 80.
SECURITY_GROUP_RULES = 60
MAX_DB_ALLOWED_CIDRS = SECURITY_GROUP_RULES - 10
MAX_LB_ALLOWED_CIDRS = SECURITY_GROUP_RULES // 2 - 5
# IAM attaches at most 10 managed policies to a group (not adjustable) and 10 to a role by
# default, 20 at most (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html).
MAX_POLICIES_PER_GROUP = 10
DEFAULT_POLICIES_PER_ROLE, MAX_POLICIES_PER_ROLE = 10, 20
# ACM: the first domain name of a certificate (its Common Name) is at most 64 octets
# (RFC 5280; https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html).
MAX_CERTIFICATE_DOMAIN = 64

# The Aurora MySQL version a new cluster gets (db.engineVersion). 3.10 is a long-term-support
# minor (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/AuroraMySQL.Update.SpecialVersions.html):
# offered for new clusters for at least three years, where a standard minor is withdrawn about a
# year after its release. Pause at 0 ACU needs 3.08.0 or later, the Data API on Serverless v2
# 3.07 or later. The cluster ignores later changes of this value (Aurora upgrades it in place).
DEFAULT_ENGINE_VERSION = "8.0.mysql_aurora.3.10.0"
MIN_AUTO_PAUSE_ENGINE = (3, 8, 0)
MIN_DATA_API_ENGINE = (3, 7, 0)
_ENGINE_VERSION = re.compile(r"8\.0\.mysql_aurora\.3\.(\d{2})\.(\d+)")
ENGINE_VERSIONS_COMMAND = (
    "aws rds describe-db-engine-versions --engine aurora-mysql "
    "--query 'DBEngineVersions[].EngineVersion' --region <region>"
)

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
# One task holds at most server.env's pool size + overflow (10) MySQL connections
# (projects/schema_sql.py CONNECTIONS_PER_SERVER);
# 20 tasks of one project are 200, beyond what a small Aurora Serverless v2 cluster admits.
MAX_TASKS = 20
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOSTED_ZONE_ID = re.compile(r"Z[A-Z0-9]{1,32}")
_CERTIFICATE_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:acm:([a-z0-9-]+):\d{12}:certificate/[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"
)
_SUBNET_ID = re.compile(r"subnet-[0-9a-f]+")
# iamRoles entries naming an IAM Identity Center permission set (sso:DataScientist): the sign-in
# app allows its AWSReservedSSO_<name>_<hex> roles, and no policy is attached to them.
SSO_PREFIX = "sso:"
_PERMISSION_SET = re.compile(r"[\w+=,.@-]{1,32}")


class ConfigError(pulumi.RunError):
    """Invalid stack config; the message lists every problem found."""

    def __init__(self, problems: list[str], heading: str = "invalid stack config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{heading} ({len(problems)} problem(s)):\n{lines}")


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
    backup_retention_days: int = 1  # on a protected stack: PROTECTED_BACKUP_RETENTION_DAYS
    deletion_protection: bool = False
    vpc_id: str | None = None  # None: the account's default VPC
    subnet_ids: tuple[str, ...] = ()  # empty: the subnets of that VPC
    # PEM of the CAs of the database's certificate; None: AWS's bundle, fetched at deploy time
    ca_bundle: str | None = field(default=None, repr=False)
    engine_version: str = DEFAULT_ENGINE_VERSION  # for a new cluster (Aurora upgrades it later)
    admin_password_version: int = 1  # bump to rotate the master user's password

    @property
    def publicly_accessible(self) -> bool:
        return bool(self.allowed_cidrs)


# The defaults of each section: what an unset key means (Pulumi.yaml documents the same).
DB_DEFAULTS = DatabaseConfig()
PROTECTED_BACKUP_RETENTION_DAYS = 7


@dataclass(frozen=True)
class ServerConfig:
    """The ``server.*`` key: the central server (ECS Fargate behind an HTTPS load balancer,
    infra/tracking_service.py), optional. The key keeps its name: stacks set it."""

    enabled: bool = False
    domain_name: str | None = None  # https://<domain_name>/<project>
    hosted_zone_id: str | None = None  # set: the program issues the certificate and the alias
    certificate_arn: str | None = None  # set: an existing ACM certificate; DNS is yours
    internal: bool = False  # public (every request signs in), or only inside the VPC
    # Who may reach the load balancer; empty: the internet for a public one (sign-in required),
    # the VPC for an internal one.
    allowed_cidrs: tuple[str, ...] = ()
    cpu: int = 512  # Fargate CPU units per task
    memory: int = 1024  # MiB per task
    min_tasks: int = 1  # per project
    max_tasks: int = 3  # per project
    subnet_ids: tuple[str, ...] = ()  # the load balancer's; empty: derived (infra/account.py)
    task_subnet_ids: tuple[str, ...] = ()  # the tasks'; empty: the load balancer's
    # Tasks need a route to ECR, S3, Secrets Manager and CloudWatch Logs: a public IP in a
    # public subnet, or a NAT. None: decided from the task subnets' routes.
    assign_public_ip: bool | None = None
    # MLflow's AI Gateway on the central server (off: its passthrough routes forward callers'
    # Authorization headers; on: each project's gateway secrets get a KEK passphrase of its own).
    ai_gateway: bool = False

    @property
    def url(self) -> str | None:
        return f"https://{self.domain_name}" if self.enabled and self.domain_name else None

    def tracking_uri(self, project: str) -> str | None:
        """``https://<domain>/<project>`` when the server is enabled, else None."""
        return f"{self.url}/{project}" if self.url else None


SERVER_DEFAULTS = ServerConfig()
PROJECT_DEFAULTS = ProjectConfig(name="")  # the name has no default: it is required


@dataclass(frozen=True)
class UpgradeConfig:
    """How an ``mlflowVersion`` change upgrades each project (projects/upgrade_provider.py)."""

    # Upgrade even while servers other than the central tasks (teammates' laptop servers) are
    # connected to the project's database: their writes may be lost or break the migration.
    ignore_connected_clients: bool = False
    snapshot: bool = True  # a manual cluster snapshot before migrating (else a restore point)


@dataclass(frozen=True)
class GcConfig:
    """The scheduled gc of each project (infra/gc_schedule.py), with the central server only."""

    enabled: bool = False
    schedule: str = "cron(0 3 * * ? *)"  # EventBridge Scheduler, UTC: daily at 03:00
    older_than: str = "30d"  # only what MLflow marked deleted at least this long ago
    trace_retention: str | None = None  # also traces older than this; None: traces stay


@dataclass(frozen=True)
class AlarmsConfig:
    """Where the central server's alarms go (infra/alarms.py)."""

    email: str | None = None  # subscribed to the stack's topic (confirm the mail AWS sends)
    topic_arn: str | None = None  # an existing SNS topic instead of the stack's own


@dataclass(frozen=True)
class AssumeRole:
    """One role of ``aws:assumeRoles``, as the schema provider assumes it too."""

    role_arn: str
    session_name: str | None = None
    external_id: str | None = None
    duration_seconds: int | None = None
    policy: str | None = None
    policy_arns: tuple[str, ...] = ()
    source_identity: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    transitive_tag_keys: tuple[str, ...] = ()

    def as_input(self) -> dict[str, Any]:
        """The provider input (JSON-friendly, only what is set)."""
        values: dict[str, Any] = {
            "role_arn": self.role_arn,
            "session_name": self.session_name,
            "external_id": self.external_id,
            "duration_seconds": self.duration_seconds,
            "policy": self.policy,
            "policy_arns": list(self.policy_arns),
            "source_identity": self.source_identity,
            "tags": dict(self.tags),
            "transitive_tag_keys": list(self.transitive_tag_keys),
        }
        return {k: v for k, v in values.items() if v not in (None, [], {})}


@dataclass(frozen=True)
class StackConfig:
    stack: str
    mlflow_version: str
    protect: bool
    db: DatabaseConfig
    projects: tuple[ProjectConfig, ...] = field(default_factory=tuple)
    aws_profile: str | None = None  # aws:profile, for the schema provider's own AWS calls
    server: ServerConfig = field(default_factory=ServerConfig)
    # aws:assumeRoles, in order: the schema provider assumes them as the AWS provider does
    assume_roles: tuple[AssumeRole, ...] = ()
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)

    @property
    def max_user_connections(self) -> int:
        """Each project user's MySQL connection limit: the laptop servers' share, plus every
        central task's pool at its largest (projects/schema_sql.py ``max_user_connections``)."""
        from projects.schema_sql import max_user_connections

        return max_user_connections(self.server.max_tasks if self.server.enabled else 0)


def stack_slug(stack: str) -> str:
    """The stack's name in AWS names (mlflow_aws/names.py: the helper checks bundles by it)."""
    return aws_names.stack_slug(stack)


# cluster_identifier_prefix plus the provider's 26-character suffix must fit RDS's 63.
_MAX_IDENTIFIER_PREFIX = 37


def database_identifier(stack: str) -> str:
    """The stack's RDS identifiers' stem: a letter first, then letters, digits, single hyphens."""
    return f"mlflow-aws-{stack_slug(stack)}"[: _MAX_IDENTIFIER_PREFIX - 1].rstrip("-")


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
    lo, hi = (
        _as_number(db.get(key), f"db.{key}", problems, default, least, MAX_ACU)
        for key, default, least in (
            ("minCapacity", DB_DEFAULTS.min_capacity, MIN_ACU),
            ("maxCapacity", DB_DEFAULTS.max_capacity, 1.0),
        )
    )
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
    most: int = MAX_DB_ALLOWED_CIDRS,
) -> tuple[str, ...]:
    cidrs = _as_str_list(value, key, problems)
    if len(cidrs) > most:
        problems.add(
            key,
            list(cidrs),
            f"lists {len(cidrs)} ranges; at most {most} fit the security group (AWS allows "
            f"{SECURITY_GROUP_RULES} inbound rules per group, one per range and port): "
            "summarise them into fewer, wider ranges",
        )
        return ()
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
    engine_version = _parse_engine_version(db.get("engineVersion"), lo, problems)
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
            DB_DEFAULTS.seconds_until_auto_pause,
            AUTO_PAUSE_MIN_S,
            AUTO_PAUSE_MAX_S,
        ),
        allowed_cidrs=_parse_cidrs(db.get("allowedCidrs"), problems),
        backup_retention_days=_as_int(
            db.get("backupRetentionDays"),
            "db.backupRetentionDays",
            problems,
            PROTECTED_BACKUP_RETENTION_DAYS if protect else DB_DEFAULTS.backup_retention_days,
            1,
            35,
        ),
        deletion_protection=_as_bool(
            db.get("deletionProtection"), "db.deletionProtection", problems, protect
        ),
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        ca_bundle=ca_bundle,
        engine_version=engine_version,
        admin_password_version=_as_int(
            db.get("adminPasswordVersion"),
            "db.adminPasswordVersion",
            problems,
            DB_DEFAULTS.admin_password_version,
            1,
            1_000_000,
        ),
    )


def engine_version_numbers(version: str) -> tuple[int, int, int] | None:
    """``8.0.mysql_aurora.3.10.0`` -> (3, 10, 0); None for anything else."""
    match = _ENGINE_VERSION.fullmatch(version)
    return (3, int(match.group(1)), int(match.group(2))) if match else None


def _parse_engine_version(value: Any, min_capacity: float, problems: _Problems) -> str:
    if value is None:
        return DB_DEFAULTS.engine_version
    numbers = engine_version_numbers(value) if isinstance(value, str) else None
    if numbers is None:
        problems.add(
            "db.engineVersion",
            value,
            "must be an Aurora MySQL 3 version like 8.0.mysql_aurora.3.10.0 (list the current "
            f"ones with `{ENGINE_VERSIONS_COMMAND}`)",
        )
        return DEFAULT_ENGINE_VERSION
    if numbers < MIN_DATA_API_ENGINE:
        problems.add(
            "db.engineVersion",
            value,
            "is older than 3.07: the RDS Data API (how pulumi up creates each project's schema) "
            "needs Aurora MySQL 3.07 or later on Serverless v2",
        )
    elif min_capacity == 0 and numbers < MIN_AUTO_PAUSE_ENGINE:
        problems.add(
            "db.engineVersion",
            value,
            "is older than 3.08.0, which pausing at 0 ACU (db.minCapacity 0) needs: pick "
            "3.08.0 or later, or set db.minCapacity to 0.5 or more",
        )
    return str(value)


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
    defaults = SERVER_DEFAULTS
    enabled = _as_bool(server.get("enabled"), "server.enabled", problems, defaults.enabled)
    internal = _as_bool(server.get("internal"), "server.internal", problems, defaults.internal)
    ai_gateway = _as_bool(
        server.get("aiGateway"), "server.aiGateway", problems, defaults.ai_gateway
    )
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

    cpu = _as_int(server.get("cpu"), "server.cpu", problems, defaults.cpu, 256, 16384)
    memory = _as_int(server.get("memory"), "server.memory", problems, defaults.memory, 512, 122880)
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
    min_tasks = _as_int(
        server.get("minTasks"), "server.minTasks", problems, defaults.min_tasks, 1, MAX_TASKS
    )
    max_tasks = _as_int(
        server.get("maxTasks"), "server.maxTasks", problems, defaults.max_tasks, 1, MAX_TASKS
    )
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
    task_subnet_ids = _as_subnet_ids(server.get("taskSubnetIds"), "server.taskSubnetIds", problems)
    if len(set(task_subnet_ids)) != len(task_subnet_ids):
        problems.add("server.taskSubnetIds", list(task_subnet_ids), "lists a subnet twice")
    # Unset: decided from the task subnets' routes (infra/account.py): a public IP in a public
    # subnet (the default VPC), none behind a NAT.
    assign_public_ip = (
        defaults.assign_public_ip
        if server.get("assignPublicIp") is None
        else _as_bool(server.get("assignPublicIp"), "server.assignPublicIp", problems, False)
    )
    # Everyone may reach the load balancer (0.0.0.0/0) only because every request must sign in.
    allowed_cidrs = _parse_cidrs(
        server.get("allowedCidrs"),
        problems,
        "server.allowedCidrs",
        "the load balancer",
        internet=True,
        most=MAX_LB_ALLOWED_CIDRS,
    )
    if zone is not None and domain is not None and len(domain) > MAX_CERTIFICATE_DOMAIN:
        problems.add(
            "server.domainName",
            domain,
            f"is {len(domain)} characters; ACM issues a certificate only for a name of at most "
            f"{MAX_CERTIFICATE_DOMAIN} (its Common Name): pick a shorter name, or bring your "
            "own certificate (server.certificateArn)",
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
        task_subnet_ids=task_subnet_ids,
        assign_public_ip=assign_public_ip,
        ai_gateway=ai_gateway,
    )


def _parse_upgrade(raw: str | None, problems: _Problems) -> UpgradeConfig:
    section = _as_section(
        raw, "upgrade", UPGRADE_KEYS, "upgrade.ignoreConnectedClients true", problems
    )
    if section is None:
        return UpgradeConfig()
    return UpgradeConfig(
        ignore_connected_clients=_as_bool(
            section.get("ignoreConnectedClients"),
            "upgrade.ignoreConnectedClients",
            problems,
            UpgradeConfig.ignore_connected_clients,
        ),
        snapshot=_as_bool(
            section.get("snapshot"), "upgrade.snapshot", problems, UpgradeConfig.snapshot
        ),
    )


def _as_optional_str(value: Any, key: str, problems: _Problems) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(key, value, "must be a non-empty string")
        return None
    return value.strip()


def _parse_gc(raw: str | None, server_enabled: bool, problems: _Problems) -> GcConfig:
    section = _as_section(raw, "gc", GC_KEYS, "gc.enabled true", problems)
    if section is None:
        return GcConfig()
    defaults = GcConfig()
    enabled = _as_bool(section.get("enabled"), "gc.enabled", problems, defaults.enabled)
    schedule = _as_optional_str(section.get("schedule"), "gc.schedule", problems)
    if schedule is not None and not _SCHEDULE.fullmatch(schedule):
        problems.add(
            "gc.schedule",
            schedule,
            "must be an EventBridge Scheduler expression: cron(minutes hours day-of-month month "
            "day-of-week year), rate(N minutes|hours|days) or at(yyyy-mm-ddThh:mm:ss)",
        )
    durations = {}
    for key, default in (("olderThan", defaults.older_than), ("traceRetention", None)):
        value = _as_optional_str(section.get(key), f"gc.{key}", problems)
        if value is not None and not _DURATION.fullmatch(value):
            problems.add(f"gc.{key}", value, "must be a duration such as 30d, 12h, 90m or 0s")
        durations[key] = value if value is not None else default
    if enabled and not server_enabled:
        problems.add(
            "gc.enabled",
            True,
            "the scheduled gc runs as a task of the central server's ECS cluster: set "
            "server.enabled, or run python -m helper gc --project P yourself",
        )
    return GcConfig(
        enabled=enabled,
        schedule=schedule or defaults.schedule,
        older_than=str(durations["olderThan"]),
        trace_retention=durations["traceRetention"],
    )


def _parse_alarms(raw: str | None, problems: _Problems) -> AlarmsConfig:
    section = _as_section(raw, "alarms", ALARMS_KEYS, "alarms.email ops@example.com", problems)
    if section is None:
        return AlarmsConfig()
    email = _as_optional_str(section.get("email"), "alarms.email", problems)
    if email is not None and not _EMAIL.fullmatch(email):
        problems.add("alarms.email", email, "must be an email address")
    topic = _as_optional_str(section.get("topicArn"), "alarms.topicArn", problems)
    if topic is not None and not _TOPIC_ARN.fullmatch(topic):
        problems.add("alarms.topicArn", topic, "must be an SNS topic ARN (arn:aws:sns:...)")
    if email and topic:
        problems.add(
            "alarms", {"email": email, "topicArn": topic}, "set email or topicArn, not both"
        )
    return AlarmsConfig(email=email, topic_arn=topic)


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
            item.get("dropDataOnRemove"),
            f"{key}.dropDataOnRemove",
            problems,
            PROJECT_DEFAULTS.drop_data_on_remove,
        ),
        iam_groups=_as_str_list(item.get("iamGroups"), f"{key}.iamGroups", problems),
        iam_roles=_checked_roles(item.get("iamRoles"), f"{key}.iamRoles", problems),
        password_version=_as_int(
            item.get("passwordVersion"),
            f"{key}.passwordVersion",
            problems,
            PROJECT_DEFAULTS.password_version,
            1,
            1_000_000,
        ),
        adopt_existing_schema=_as_bool(
            item.get("adoptExistingSchema"),
            f"{key}.adoptExistingSchema",
            problems,
            PROJECT_DEFAULTS.adopt_existing_schema,
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
    parsed = [p for p in (_parse_project(item, i, problems) for i, item in enumerate(items)) if p]
    _check_attachments(parsed, problems)
    return tuple(parsed)


def attached_roles(project: ProjectConfig) -> tuple[str, ...]:
    """The iamRoles the project's policy is attached to: all but ``sso:<PermissionSet>`` entries
    (Identity Center's roles get their policies from the permission set)."""
    return tuple(role for role in project.iam_roles if not role.startswith(SSO_PREFIX))


def _checked_roles(value: Any, key: str, problems: _Problems) -> tuple[str, ...]:
    roles = _as_str_list(value, key, problems)
    for role in roles:
        if role.startswith(SSO_PREFIX) and not _PERMISSION_SET.fullmatch(role[len(SSO_PREFIX) :]):
            problems.add(key, role, "sso:<PermissionSetName>: 1-32 of letters, digits and "
                         "+=,.@_- (IAM Identity Center's CreatePermissionSet)")  # fmt: skip
    return roles


def _check_attachments(projects: list[ProjectConfig], problems: _Problems) -> None:
    """Each project attaches its own managed policy to each of its groups and roles: IAM's
    per-group and per-role limits bound how many projects may share one."""
    for kind, most in (("iamGroups", MAX_POLICIES_PER_GROUP), ("iamRoles", MAX_POLICIES_PER_ROLE)):
        sharing: dict[str, list[str]] = {}
        for p in projects:
            for principal in p.iam_groups if kind == "iamGroups" else attached_roles(p):
                sharing.setdefault(principal, []).append(p.name)
        for principal, names in sorted(sharing.items()):
            if len(names) > most:
                what = "group" if kind == "iamGroups" else "role"
                problems.items.append(
                    f"{_key('projects')}: {len(names)} projects list {what} {principal!r} in "
                    f"{kind} ({', '.join(names)}), but IAM attaches at most {most} managed "
                    f"policies to a {what}, and each project attaches its own: spread them over "
                    f"several {what}s"
                )


def role_attachment_warnings(projects: tuple[ProjectConfig, ...]) -> list[str]:
    """Roles that get more project policies than IAM's default quota (10; up to 20 on request)."""
    counts: dict[str, int] = {}
    for p in projects:
        for role in attached_roles(p):
            counts[role] = counts.get(role, 0) + 1
    return [
        f"role {role!r} gets the policies of {n} projects; IAM attaches at most "
        f"{DEFAULT_POLICIES_PER_ROLE} managed policies to a role unless the quota 'Managed "
        "policies per role' was raised (Service Quotas, IAM): raise it first, or spread the "
        "projects over several roles"
        for role, n in sorted(counts.items())
        if n > DEFAULT_POLICIES_PER_ROLE
    ]


# Settings of the AWS provider that choose who its calls run as. The schema provider is a
# dynamic provider: its own boto3 client sees the environment, aws:profile and aws:assumeRoles
# (passed to it), nothing else, so these would silently make its RDS Data API calls run as
# another identity than every other resource's: refused, with where to put them instead.
_UNPASSED_IDENTITY_SETTINGS = {
    "aws:accessKey": "the environment (AWS_ACCESS_KEY_ID) or a profile (aws:profile)",
    "aws:secretKey": "the environment (AWS_SECRET_ACCESS_KEY) or a profile (aws:profile)",
    "aws:token": "the environment (AWS_SESSION_TOKEN) or a profile (aws:profile)",
    "aws:assumeRoleWithWebIdentity": "a profile with web_identity_token_file (aws:profile)",
    "aws:sharedCredentialsFiles": "the environment (AWS_SHARED_CREDENTIALS_FILE)",
    "aws:sharedConfigFiles": "the environment (AWS_CONFIG_FILE)",
}
_ASSUME_ROLE_KEYS = {
    "roleArn": "role_arn",
    "sessionName": "session_name",
    "externalId": "external_id",
    "duration": "duration_seconds",
    "policy": "policy",
    "policyArns": "policy_arns",
    "sourceIdentity": "source_identity",
    "tags": "tags",
    "transitiveTagKeys": "transitive_tag_keys",
}
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_GO_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
MIN_ROLE_SESSION_S, MAX_ROLE_SESSION_S = 900, 43200  # STS AssumeRole DurationSeconds


def _seconds(duration: Any) -> int | None:
    """A Go duration the AWS provider takes ("1h", "15m", "1h30m", "900s") in seconds."""
    match = _GO_DURATION.fullmatch(duration) if isinstance(duration, str) and duration else None
    if match is None:
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _parse_assume_roles(raw: str | None, problems: _Problems) -> tuple[AssumeRole, ...]:
    if raw is None:
        return ()
    key = "aws:assumeRoles"
    items: Any = _parse_json_or_text(raw)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        problems.items.append(f"{key}: must be a list of objects with roleArn")
        return ()
    roles = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        unknown = sorted(set(item) - set(_ASSUME_ROLE_KEYS))
        if unknown:
            problems.items.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        arn = item.get("roleArn")
        if not (isinstance(arn, str) and _ROLE_ARN.fullmatch(arn)):
            problems.items.append(
                f"{where}.roleArn = {json.dumps(arn)}: must be a role ARN like "
                "arn:aws:iam::123456789012:role/deployer"
            )
            continue
        duration = None
        if item.get("duration") is not None:
            duration = _seconds(item["duration"])
            if duration is None or not MIN_ROLE_SESSION_S <= duration <= MAX_ROLE_SESSION_S:
                problems.items.append(
                    f"{where}.duration = {json.dumps(item['duration'])}: must be a duration "
                    "from 15m to 12h (like 1h)"
                )
                duration = None
        tags = item.get("tags") or {}
        roles.append(
            AssumeRole(
                role_arn=arn,
                session_name=item.get("sessionName") or None,
                external_id=item.get("externalId") or None,
                duration_seconds=duration,
                policy=item.get("policy") or None,
                policy_arns=tuple(item.get("policyArns") or ()),
                source_identity=item.get("sourceIdentity") or None,
                tags=tuple(sorted((str(k), str(v)) for k, v in dict(tags).items())),
                transitive_tag_keys=tuple(item.get("transitiveTagKeys") or ()),
            )
        )
    return tuple(roles)


def _check_provider_identity(values: Mapping[str, str], problems: _Problems) -> None:
    for setting, instead in _UNPASSED_IDENTITY_SETTINGS.items():
        if values.get(setting):
            # The value may be a secret: never repeated here.
            problems.items.append(
                f"{setting} is set in the stack config, but the schema provider (a dynamic "
                "provider, its own AWS client) does not see it: its RDS Data API calls would "
                f"run as another identity than the rest of pulumi up. Put it in {instead} "
                "instead, or use aws:assumeRoles, which the schema provider follows"
            )
    endpoints = _parse_json_or_text(values.get("aws:endpoints") or "[]")
    named = {
        str(k) for item in endpoints if isinstance(item, dict) for k, v in item.items() if v
    } if isinstance(endpoints, list) else set()  # fmt: skip
    for service, variable in (
        ("rdsdata", "AWS_ENDPOINT_URL_RDS_DATA"),
        ("sts", "AWS_ENDPOINT_URL_STS"),
    ):
        if service in named:
            problems.items.append(
                f"aws:endpoints sets {service}, which the schema provider does not see: set "
                f"{variable} in the environment pulumi runs in instead"
            )


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
        assume_roles=_parse_assume_roles(values.get("aws:assumeRoles"), problems),
        upgrade=_parse_upgrade(ours.get("upgrade"), problems),
        alarms=_parse_alarms(ours.get("alarms"), problems),
    )
    config = dataclasses.replace(
        config, gc=_parse_gc(ours.get("gc"), config.server.enabled, problems)
    )
    _check_provider_identity(values, problems)
    if problems.items:
        raise ConfigError(problems.items)
    return config


def load_stack_config() -> StackConfig:
    """The running stack's config, validated."""
    from pulumi.runtime import config as runtime_config

    values = {k: str(v) for k, v in runtime_config.get_config_env().items()}
    values.update({k: str(v) for k, v in runtime_config.CONFIG.get().items()})
    return parse_stack_config(values, pulumi.get_stack())
