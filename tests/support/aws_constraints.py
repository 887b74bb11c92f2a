"""What AWS enforces on the inputs the program registers, as a table: one row per rule, each
with its source, checked against every resource of a program run under mocks.

A mock accepts anything; AWS refuses a security-group rule description with an apostrophe, a
load balancer with two subnets in one zone, a name prefix one character too long. Each ``Rule``
states one such rule, cites where AWS (or the pulumi-aws provider, for its own prefixes and
suffixes) documents it, checks a ``Context`` (the run, and the mock account its data sources
described), and says how to break it (``breaks``: the table's own tests prove every row can
fail). ``TYPES`` lists every resource type a row covers: a type the program registers without
a row fails ``tests/test_aws_constraints.py``.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_aws.passwords import CHARACTER_CLASS, UNRESERVED_SPECIALS
from projects.schema_sql import MAX_PASSWORD, MIN_PASSWORD, PASSWORD_RULE
from tests.support.pulumi_mocks import MockAccount, ProgramRun, Registered

SECRET_SIG = "4dabf18193072939515e22adb298388d"


def plain(value: Any) -> Any:
    if isinstance(value, dict) and SECRET_SIG in value:
        return value.get("value")
    return value


@dataclass
class Context:
    run: ProgramRun
    account: MockAccount
    resources: list[Registered] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.resources:
            self.resources = self.run.resources

    def of(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def by_urn(self, urn: str) -> Registered | None:
        return next((r for r in self.resources if r.urn == urn), None)

    def copy(self) -> Context:
        return Context(self.run, copy.deepcopy(self.account), copy.deepcopy(self.resources))


Check = Callable[[Context], list[str]]
Break = Callable[[Context], None]


@dataclass(frozen=True)
class Rule:
    typ: str  # the resource type the rule constrains ("*": every type with tags)
    rule: str  # what AWS enforces, in words
    source: str  # where that is documented
    check: Check
    breaks: Break  # makes the rule fail on a context that has the type


# -- reading inputs -----------------------------------------------------------------------------


def at(value: Any, path: str) -> list[Any]:
    """Every value at ``path`` ("a.b[].c"; JSON strings are parsed where a path goes on)."""
    found = [value]
    for part in path.split(".") if path else []:
        many = part.endswith("[]")
        key = part[:-2] if many else part
        step: list[Any] = []
        for item in found:
            item = plain(item)
            if isinstance(item, str) and item[:1] in "[{":
                item = json.loads(item)
            if key:
                if not isinstance(item, Mapping) or key not in item:
                    continue
                item = plain(item[key])
                if isinstance(item, str) and many and item[:1] == "[":
                    item = json.loads(item)
            if many:
                step += list(item) if isinstance(item, list) else []
            else:
                step.append(item)
        found = step
    return [plain(v) for v in found]


def set_at(inputs: dict[str, Any], path: str, value: Any) -> None:
    """Set the first value at ``path`` (a dotted path without JSON strings) to ``value``."""
    *parents, last = path.split(".")
    target: Any = inputs
    for part in parents:
        if part.endswith("[]"):
            items = target.setdefault(part[:-2], [])
            if not items:
                items.append({})
            target = items[0]
        else:
            target = target.setdefault(part, {})
    if last.endswith("[]"):
        items = target.setdefault(last[:-2], [])
        items[:1] = [value]
    else:
        target[last] = value


def physical_name(r: Registered, prefix_suffix: int = 26) -> str:
    """The name AWS will see: ``name``, ``namePrefix`` plus the provider's unique suffix (26
    characters), or Pulumi's autoname: the logical name, a hyphen and 7 random characters."""
    inputs = r.inputs
    if isinstance(plain(inputs.get("name")), str):
        return str(plain(inputs["name"]))
    if isinstance(plain(inputs.get("namePrefix")), str):
        return str(plain(inputs["namePrefix"])) + "0" * prefix_suffix
    return f"{r.name}-abcdef0"


def each(
    typ: str,
    path: str,
    ok: Callable[[Any], bool],
    rule: str,
    source: str,
    bad: Any,
) -> Rule:
    """Every value at ``path`` of every resource of ``typ`` satisfies ``ok``."""

    def check(ctx: Context) -> list[str]:
        return [
            f"{r.name}.{path} = {v!r}: {rule}"
            for r in ctx.of(typ)
            for v in at(r.inputs, path)
            if not ok(v)
        ]

    def breaks(ctx: Context) -> None:
        having = [r for r in ctx.of(typ) if at(r.inputs, path)] or ctx.of(typ)
        set_at(having[0].inputs, path, bad)

    return Rule(typ, f"{path}: {rule}", source, check, breaks)


def named(typ: str, ok: Callable[[str], bool], rule: str, source: str, bad: str) -> Rule:
    """The physical name of every resource of ``typ`` satisfies ``ok``."""

    def check(ctx: Context) -> list[str]:
        return [
            f"{r.name}: name {physical_name(r)!r}: {rule}"
            for r in ctx.of(typ)
            if not ok(physical_name(r))
        ]

    def breaks(ctx: Context) -> None:
        r = ctx.of(typ)[0]
        r.inputs.pop("namePrefix", None)
        r.inputs["name"] = bad

    return Rule(typ, f"name: {rule}", source, check, breaks)


def whole(
    typ: str,
    ok: Callable[[Registered, Context], list[str]],
    rule: str,
    source: str,
    breaks: Callable[[Registered, Context], None],
) -> Rule:
    """A rule over each resource of ``typ`` and what it refers to."""

    def check(ctx: Context) -> list[str]:
        return [f"{r.name}: {p}" for r in ctx.of(typ) for p in ok(r, ctx)]

    def break_first(ctx: Context) -> None:
        breaks(ctx.of(typ)[0], ctx)

    return Rule(typ, rule, source, check, break_first)


def matches(pattern: str, flags: int = 0) -> Callable[[Any], bool]:
    compiled = re.compile(pattern, flags)
    return lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None


def between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def no_whitespace_length(text: str) -> int:
    return len(re.sub(r"\s", "", text))


def policy_size(most: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and no_whitespace_length(v) <= most


# -- sources ------------------------------------------------------------------------------------

EC2_SG = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html"
EC2_IP_RANGE = (
    "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html "
    "(hashicorp/terraform-provider-aws#18874)"
)
EC2_PERMISSION = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpPermission.html"
VPC_QUOTAS = "https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html#vpc-limits-security-groups"
TAGS = "https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html#tag-conventions"
IAM_TAGS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_tags.html#id_tags_rules"
S3_NAMES = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html"
S3_PREFIX = "https://www.pulumi.com/registry/packages/aws/api-docs/s3/bucket/#bucketprefix_python"
S3_SSE = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_ServerSideEncryptionByDefault.html"
S3_VERSIONING = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_VersioningConfiguration.html"
S3_BLOCK = (
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/access-control-block-public-access.html"
)
S3_POLICY = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-policies.html"
S3_LIFECYCLE = "https://docs.aws.amazon.com/AmazonS3/latest/API/API_LifecycleRule.html"
ELB_ACCESS_LOGS = (
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html"
)
S3_ABORT_MPU = (
    "https://docs.aws.amazon.com/AmazonS3/latest/API/API_AbortIncompleteMultipartUpload.html; "
    "https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpu-abort-incomplete-mpu-lifecycle-config.html"
)
RDS_CLUSTER = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBCluster.html"
RDS_INSTANCE = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBInstance.html"
RDS_DELETE = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_DeleteDBCluster.html"
RDS_SUBNETS = (
    "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBSubnetGroup.html"
)
RDS_PARAMS = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBClusterParameterGroup.html"
RDS_PARAM_LIST = "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/AuroraMySQL.Reference.ParameterGroups.html"
RDS_VPC = "https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_VPC.WorkingWithRDSInstanceinaVPC.html"
RDS_SV2 = "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_ServerlessV2ScalingConfiguration.html"
RDS_PREFIX = "https://www.pulumi.com/registry/packages/aws/api-docs/rds/cluster/#clusteridentifierprefix_python"
AURORA_VERSIONS = "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/AuroraMySQL.Update.SpecialVersions.html"
DATA_API = "https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/Concepts.Aurora_Fea_Regions_DB-eng.Feature.Data_API.html"
SECRET = "https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_CreateSecret.html"
SECRET_DELETE = (
    "https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_DeleteSecret.html"
)
SECRET_VALUE = (
    "https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_PutSecretValue.html"
)
IAM_ROLE = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html"
IAM_POLICY = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreatePolicy.html"
IAM_ROLE_POLICY = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_PutRolePolicy.html"
IAM_QUOTAS = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html"
IAM_CONFUSED_DEPUTY = "https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html"
ECS_TASK_ROLE = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html"
IAM_SID = "https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_sid.html"
IAM_ATTACH_GROUP = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_AttachGroupPolicy.html"
IAM_ATTACH_ROLE = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_AttachRolePolicy.html"
IAM_SLR = "https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateServiceLinkedRole.html"
ECS_SLR = (
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using-service-linked-roles.html"
)
ECR_REPO = "https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_CreateRepository.html"
ECR_MUTABILITY = "https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-tag-mutability.html"
ECR_LIFECYCLE = (
    "https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_parameters.html"
)
ECR_LIFECYCLE_API = (
    "https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_PutLifecyclePolicy.html"
)
DOCKER_TAG = "https://docs.docker.com/reference/cli/docker/image/tag/"
ACM = "https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html"
ACM_DNS = "https://docs.aws.amazon.com/acm/latest/userguide/dns-validation.html"
R53 = "https://docs.aws.amazon.com/Route53/latest/APIReference/API_ResourceRecordSet.html"
R53_ALIAS = "https://docs.aws.amazon.com/Route53/latest/APIReference/API_AliasTarget.html"
ELB_LB = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html"
ELB_PREFIX = (
    "https://www.pulumi.com/registry/packages/aws/api-docs/lb/loadbalancer/#nameprefix_python"
)
ELB_TG_PREFIX = (
    "https://www.pulumi.com/registry/packages/aws/api-docs/lb/targetgroup/#nameprefix_python"
)
ELB_AZ = "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/application-load-balancers.html#availability-zones"
ELB_ATTRIBUTES = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_LoadBalancerAttribute.html"
ELB_LISTENER = (
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateListener.html"
)
ELB_POLICIES = (
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/describe-ssl-policies.html"
)
ELB_FIXED = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_FixedResponseActionConfig.html"
ELB_REDIRECT = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_RedirectActionConfig.html"
ELB_RULE = (
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateRule.html"
)
ELB_CONDITIONS = "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/rule-condition-types.html#path-conditions"
ELB_QUOTAS = (
    "https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-limits.html"
)
ELB_TG = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateTargetGroup.html"
ELB_TG_ATTRIBUTES = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_TargetGroupAttribute.html"
ECS_CLUSTER = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateCluster.html"
ECS_SETTING = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ClusterSetting.html"
ECS_TASKDEF = (
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html"
)
ECS_CONTAINER = (
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_ContainerDefinition.html"
)
ECS_SIZES = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size"
ECS_AWSVPC = (
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-networking-awsvpc.html"
)
ECS_SECRETS = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/secrets-envvar-secrets-manager.html"
ECS_QUOTAS = "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-quotas.html"
ECS_SERVICE = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_CreateService.html"
ECS_VPC_CONFIG = (
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_AwsVpcConfiguration.html"
)
ECS_DEPLOYMENT = (
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_DeploymentConfiguration.html"
)
ECS_PULL = (
    "https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-task-networking.html"
)
LOGS_GROUP = (
    "https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html"
)
LOGS_RETENTION = "https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutRetentionPolicy.html"
AAS_TARGET = "https://docs.aws.amazon.com/autoscaling/application/APIReference/API_RegisterScalableTarget.html"
AAS_POLICY = (
    "https://docs.aws.amazon.com/autoscaling/application/APIReference/API_PutScalingPolicy.html"
)
AAS_METRIC = "https://docs.aws.amazon.com/autoscaling/application/APIReference/API_PredefinedMetricSpecification.html"
AURORA_PASSWORD = RDS_CLUSTER + " (MasterUserPassword)"
RANDOM_ID = "https://www.pulumi.com/registry/packages/random/api-docs/randomid/"
MYSQL_IDENTIFIERS = "https://dev.mysql.com/doc/refman/8.0/en/identifier-length.html"
MYSQL_USERS = "https://dev.mysql.com/doc/refman/8.0/en/user-names.html"
MYSQL_PASSWORD = "projects/schema_sql.py PASSWORD_RULE (the literal after IDENTIFIED BY)"
PULUMI_AUTONAME = "https://www.pulumi.com/docs/iac/concepts/resources/names/#autonaming"

# -- types --------------------------------------------------------------------------------------

BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
SG = "aws:ec2/securityGroup:SecurityGroup"
SUBNET_GROUP = "aws:rds/subnetGroup:SubnetGroup"
PARAMS = "aws:rds/clusterParameterGroup:ClusterParameterGroup"
PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM = "random:index/randomId:RandomId"
CLUSTER = "aws:rds/cluster:Cluster"
INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
SECRET_T = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
POLICY = "aws:iam/policy:Policy"
GROUP_ATTACH = "aws:iam/groupPolicyAttachment:GroupPolicyAttachment"
ROLE_ATTACH = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
SLR = "aws:iam/serviceLinkedRole:ServiceLinkedRole"
REPO = "aws:ecr/repository:Repository"
ECR_POLICY = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
IMAGE = "docker:index/image:Image"
CERT = "aws:acm/certificate:Certificate"
CERT_VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
RECORD = "aws:route53/record:Record"
LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
LISTENER_RULE = "aws:lb/listenerRule:ListenerRule"
TG = "aws:lb/targetGroup:TargetGroup"
ECS_CLUSTER_T = "aws:ecs/cluster:Cluster"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
TASK = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
SCALING_TARGET = "aws:appautoscaling/target:Target"
SCALING_POLICY = "aws:appautoscaling/policy:Policy"
SCHEMA = "pulumi-python:dynamic/mysql:Schema"
UPGRADE = "pulumi-python:dynamic/mlflow:Upgrade"
RETIREMENT = "pulumi-python:dynamic/mysql:PasswordRetirement"
SCHEDULE = "aws:scheduler/schedule:Schedule"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
METRIC_FILTER = "aws:cloudwatch/logMetricFilter:LogMetricFilter"
TOPIC = "aws:sns/topic:Topic"
TOPIC_POLICY = "aws:sns/topicPolicy:TopicPolicy"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"

# -- shared rules -------------------------------------------------------------------------------

EC2_TEXT = r"[a-zA-Z0-9. _\-:/()#,@\[\]+=&;{}!$*]{0,255}"
IAM_NAME = r"[\w+=,.@-]"
IAM_TEXT = r"[\u0009\u000A\u000D\u0020-\u007E\u00A1-\u00FF]{0,1000}"
TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*", re.UNICODE)
RDS_ID = r"[a-z][a-z0-9]*(-[a-z0-9]+)*"
CLUSTER_RETENTION_DAYS = {
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
}
FARGATE = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
TLS_POLICIES = {
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-2016-08",
    "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
}


def tagged(ctx: Context) -> Iterator[tuple[Registered, dict[str, Any]]]:
    for r in ctx.resources:
        tags = plain(r.inputs.get("tags"))
        if isinstance(tags, dict):
            yield r, tags


def tag_problems(ctx: Context) -> list[str]:
    problems = []
    for r, tags in tagged(ctx):
        if len(tags) > 50:
            problems.append(f"{r.name}: {len(tags)} tags, AWS allows 50 per resource")
        for key, value in tags.items():
            if not 1 <= len(key) <= 128 or len(str(value)) > 256:
                problems.append(f"{r.name}: tag {key!r}: key 1-128, value at most 256 characters")
            if key.lower().startswith("aws:"):
                problems.append(f"{r.name}: tag {key!r}: the aws: prefix is reserved")
            if not TAG_TEXT.fullmatch(key) or not TAG_TEXT.fullmatch(str(value)):
                problems.append(f"{r.name}: tag {key}={value!r}: letters, digits, spaces, _.:/=+-@")
    return problems


def break_tags(ctx: Context) -> None:
    r = next(r for r, _ in tagged(ctx))
    r.inputs["tags"] = {**r.inputs["tags"], "aws:owner": "team's"}


def sg_rule_count(r: Registered, ctx: Context) -> list[str]:
    problems = []
    for direction in ("ingress", "egress"):
        entries = sum(
            len(rule.get("cidrBlocks") or []) + len(rule.get("securityGroups") or [])
            for rule in plain(r.inputs.get(direction)) or []
        )
        if entries > 60:
            problems.append(f"{entries} {direction} rule entries; a security group holds 60")
    return problems


def break_sg_rules(r: Registered, ctx: Context) -> None:
    r.inputs["ingress"] = [
        {
            "protocol": "tcp",
            "fromPort": 1,
            "toPort": 1,
            "cidrBlocks": [f"10.0.{i}.0/24" for i in range(61)],
        }
    ]


def valid_cidr(value: Any) -> bool:
    try:
        return ipaddress.ip_network(value, strict=True).version == 4
    except (TypeError, ValueError):
        return False


def ports_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    for direction in ("ingress", "egress"):
        for rule in plain(r.inputs.get(direction)) or []:
            lo, hi = rule.get("fromPort"), rule.get("toPort")
            if not (0 <= lo <= hi <= 65535):
                problems.append(f"{direction} ports {lo}-{hi}: 0 <= from <= to <= 65535")
    return problems


def break_ports(r: Registered, ctx: Context) -> None:
    r.inputs["ingress"] = [{"protocol": "tcp", "fromPort": 443, "toPort": 80, "cidrBlocks": []}]


def zones_of(ids: Iterable[str], ctx: Context) -> list[str]:
    return [ctx.account.subnets[i].zone for i in ids if i in ctx.account.subnets]


def public(subnet_id: str, ctx: Context) -> bool:
    subnet = ctx.account.subnets.get(subnet_id)
    return subnet is not None and ctx.account.routes.get(subnet.table, "").startswith("igw-")


def subnet_group_zones(r: Registered, ctx: Context) -> list[str]:
    ids = plain(r.inputs.get("subnetIds")) or []
    zones = zones_of(ids, ctx)
    problems = [f"subnet {i} does not exist" for i in ids if i not in ctx.account.subnets]
    if len(set(zones)) < 2:
        problems.append(f"subnets in {len(set(zones))} AZ(s); a DB subnet group needs 2")
    vpcs = {ctx.account.subnets[i].vpc for i in ids if i in ctx.account.subnets}
    if len(vpcs) > 1:
        problems.append(f"subnets of several VPCs {sorted(vpcs)}")
    return problems


def break_subnet_group(r: Registered, ctx: Context) -> None:
    r.inputs["subnetIds"] = [r.inputs["subnetIds"][0]]


def instance_reachable(r: Registered, ctx: Context) -> list[str]:
    if not r.inputs.get("publiclyAccessible"):
        return []
    [group] = ctx.of(SUBNET_GROUP)
    private = [i for i in group.inputs["subnetIds"] if not public(i, ctx)]
    return (
        [f"publicly accessible in subnets without an internet gateway: {private}"]
        if private
        else []
    )


def break_instance(r: Registered, ctx: Context) -> None:
    r.inputs["publiclyAccessible"] = True
    [group] = ctx.of(SUBNET_GROUP)
    for subnet_id in group.inputs["subnetIds"]:
        ctx.account.routes[ctx.account.subnets[subnet_id].table] = ""


def scaling_ok(r: Registered, ctx: Context) -> list[str]:
    config = r.inputs.get("serverlessv2ScalingConfiguration") or {}
    lo, hi = float(config.get("minCapacity", -1)), float(config.get("maxCapacity", -1))
    pause = config.get("secondsUntilAutoPause")
    problems = []
    if not (
        0 <= lo <= 256
        and 1 <= hi <= 256
        and lo <= hi
        and lo * 2 == int(lo * 2)
        and hi * 2 == int(hi * 2)
    ):
        problems.append(f"capacity {lo}-{hi}: 0-256 and 1-256 ACU in steps of 0.5, min <= max")
    if pause is not None and (lo != 0 or not 300 <= pause <= 86400):
        problems.append(f"secondsUntilAutoPause {pause}: 300-86400, and only with 0 ACU minimum")
    return problems


def break_scaling(r: Registered, ctx: Context) -> None:
    r.inputs["serverlessv2ScalingConfiguration"] = {
        "minCapacity": 0.5,
        "maxCapacity": 1,
        "secondsUntilAutoPause": 300,
    }


def engine_ok(r: Registered, ctx: Context) -> list[str]:
    # Not the program's constants: the table must not share the code it checks.
    version = r.inputs.get("engineVersion")
    match = re.fullmatch(r"8\.0\.mysql_aurora\.3\.(\d+)\.(\d+)", str(version))
    numbers = (3, int(match.group(1)), int(match.group(2))) if match else None
    problems = []
    if version not in ctx.account.engine_versions:
        problems.append(f"engine version {version} is not offered in {ctx.account.region}")
    if numbers is None or numbers < (3, 7, 0):
        problems.append("the Data API (enableHttpEndpoint) on Serverless v2 needs 3.07+")
    lo = (r.inputs.get("serverlessv2ScalingConfiguration") or {}).get("minCapacity")
    if lo == 0 and (numbers is None or numbers < (3, 8, 0)):
        problems.append("0 ACU (auto-pause) needs Aurora MySQL 3.08.0+")
    return problems


def break_engine(r: Registered, ctx: Context) -> None:
    r.inputs["engineVersion"] = "8.0.mysql_aurora.3.08.2"  # withdrawn: not offered any more


def snapshot_ok(r: Registered, ctx: Context) -> list[str]:
    final = plain(r.inputs.get("finalSnapshotIdentifier"))
    if r.inputs.get("skipFinalSnapshot"):
        return []
    if not isinstance(final, str):
        return ["skipFinalSnapshot false needs finalSnapshotIdentifier"]
    text = final.replace("0badcafe", "x")  # the mock RandomId's hex
    if not (len(final) <= 255 and re.fullmatch(RDS_ID, text)):
        return [f"final snapshot identifier {final!r}: 1-255, a letter first, no -- or trailing -"]
    return []


def break_snapshot(r: Registered, ctx: Context) -> None:
    r.inputs["skipFinalSnapshot"] = False
    r.inputs["finalSnapshotIdentifier"] = "mlflow--final-"


def secret_size(v: Any) -> bool:
    return isinstance(v, str) and len(v.encode()) <= 65536


def policy_of(r: Registered) -> dict[str, Any]:
    return dict(json.loads(plain(r.inputs["policy"])))


def statements(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = doc.get("Statement", [])
    return list(found) if isinstance(found, list) else [found]


def policy_document_ok(r: Registered, ctx: Context) -> list[str]:
    doc = policy_of(r)
    problems = []
    if doc.get("Version") != "2012-10-17":
        problems.append("policy Version must be 2012-10-17 (for ${} variables and conditions)")
    for statement in statements(doc):
        if "Sid" in statement and not re.fullmatch(r"[A-Za-z0-9]*", statement["Sid"]):
            problems.append(f"Sid {statement['Sid']!r}: only A-Z, a-z and 0-9")
        for arn in statement.get("Resource") or []:
            if arn != "*" and not arn.startswith(f"arn:{ctx.account.partition}:"):
                problems.append(
                    f"Resource {arn} is not an ARN of partition {ctx.account.partition}"
                )
    return problems


def break_policy_document(r: Registered, ctx: Context) -> None:
    doc = policy_of(r)
    doc["Statement"][0]["Sid"] = "Project-Objects"
    r.inputs["policy"] = json.dumps(doc)


def inline_policies_per_role(ctx: Context) -> list[str]:
    sizes: dict[str, int] = {}
    for r in ctx.of(ROLE_POLICY):
        role = str(plain(r.inputs.get("role")))
        sizes[role] = sizes.get(role, 0) + no_whitespace_length(plain(r.inputs["policy"]))
    return [
        f"role {role}: inline policies of {n} characters; IAM allows 10,240 per role"
        for role, n in sizes.items()
        if n > 10240
    ]


def break_inline_policies(ctx: Context) -> None:
    r = ctx.of(ROLE_POLICY)[0]
    r.inputs["policy"] = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["x" * 10300]}
            ],
        }
    )


def attachments(typ: str, key: str, most: int, what: str) -> Check:
    def check(ctx: Context) -> list[str]:
        counts: dict[str, int] = {}
        for r in ctx.of(typ):
            counts[r.inputs[key]] = counts.get(r.inputs[key], 0) + 1
        return [
            f"{what} {name}: {n} managed policies attached; IAM allows {most}"
            for name, n in counts.items()
            if n > most
        ]

    return check


def break_attachments(typ: str, key: str, most: int) -> Break:
    def breaks(ctx: Context) -> None:
        first = ctx.of(typ)[0]
        ctx.resources += [copy.deepcopy(first) for _ in range(most)]

    return breaks


def trust_ok(r: Registered, ctx: Context) -> list[str]:
    doc = json.loads(plain(r.inputs["assumeRolePolicy"]))
    problems = []
    if no_whitespace_length(plain(r.inputs["assumeRolePolicy"])) > 2048:
        problems.append("trust policy longer than 2,048 characters (IAM's default quota)")
    for statement in statements(doc):
        principal = statement.get("Principal", {})
        for arn in [principal.get("AWS")] if isinstance(principal.get("AWS"), str) else []:
            if not arn.startswith(f"arn:{ctx.account.partition}:iam::"):
                problems.append(f"principal {arn} is not of partition {ctx.account.partition}")
        service = principal.get("Service")
        if service is not None and not str(service).endswith(".amazonaws.com"):
            problems.append(f"service principal {service!r} is not <service>.amazonaws.com")
    return problems


def service_trust_guarded(r: Registered, ctx: Context) -> list[str]:
    """A role a service may assume names the account (aws:SourceAccount) so no other account's
    resource can make the service act for it (the confused deputy); an aws:SourceArn, when
    given, is of this partition, region and account."""
    problems = []
    for statement in statements(json.loads(plain(r.inputs["assumeRolePolicy"]))):
        if "Service" not in statement.get("Principal", {}):
            continue
        condition = statement.get("Condition", {})
        account = condition.get("StringEquals", {}).get("aws:SourceAccount")
        if not isinstance(account, str) or not re.fullmatch(r"\d{12}", account):
            problems.append(f"service principal {statement['Principal']} without aws:SourceAccount")
        source_arn = condition.get("ArnLike", {}).get("aws:SourceArn")
        wanted = f"arn:{ctx.account.partition}:ecs:{ctx.account.region}:{account}:*"
        if source_arn is not None and source_arn != wanted:
            problems.append(f"aws:SourceArn {source_arn!r} is not {wanted!r}")
    return problems


def break_service_trust(r: Registered, ctx: Context) -> None:
    """ECS trusted without a condition (any account's task could become the role)."""
    doc = json.loads(plain(r.inputs["assumeRolePolicy"]))
    doc["Statement"] = [*statements(doc), {"Effect": "Allow", "Action": "sts:AssumeRole",
                        "Principal": {"Service": "ecs-tasks.amazonaws.com"}}]  # fmt: skip
    r.inputs["assumeRolePolicy"] = json.dumps(doc)


def break_trust(r: Registered, ctx: Context) -> None:
    doc = json.loads(plain(r.inputs["assumeRolePolicy"]))
    doc["Statement"][0]["Principal"] = {"AWS": "arn:aws-elsewhere:iam::123456789012:root"}
    r.inputs["assumeRolePolicy"] = json.dumps(doc)


def ecr_lifecycle_ok(r: Registered, ctx: Context) -> list[str]:
    text = plain(r.inputs["policy"])
    rules = json.loads(text)["rules"]
    priorities = [rule["rulePriority"] for rule in rules]
    problems = []
    if len(text) > 30720:
        problems.append("lifecycle policy longer than 30,720 characters")
    if len(set(priorities)) != len(priorities) or min(priorities) < 1:
        problems.append(f"rule priorities {priorities}: unique integers from 1")
    for rule in rules:
        selection = rule["selection"]
        if selection.get("countNumber", 0) < 1:
            problems.append("countNumber must be at least 1")
        if (
            selection.get("countType") == "sinceImagePushed"
            and selection.get("countUnit") != "days"
        ):
            problems.append("sinceImagePushed needs countUnit days")
        if selection.get("tagStatus") == "any" and rule["rulePriority"] != max(priorities):
            problems.append("a rule with tagStatus any must have the highest rulePriority")
    return problems


def break_ecr_lifecycle(r: Registered, ctx: Context) -> None:
    doc = json.loads(plain(r.inputs["policy"]))
    doc["rules"][0]["rulePriority"] = doc["rules"][1]["rulePriority"]
    r.inputs["policy"] = json.dumps(doc)


def retagging_ok(r: Registered, ctx: Context) -> list[str]:
    """pulumi-docker rebuilds and pushes again whenever its context digest changes (it covers
    file modes; the tag does not) or the state lost a push: the same tag is pushed again,
    which an IMMUTABLE repository refuses even for identical bits."""
    repos = {rp.state.get("repositoryUrl"): rp for rp in ctx.of(REPO)}
    repository = repos.get(str(r.inputs["imageName"]).rsplit(":", 1)[0])
    if repository is None:
        return ["the image is not pushed to the stack's repository"]
    if repository.inputs.get("imageTagMutability") == "IMMUTABLE":
        return ["repository is IMMUTABLE, but a rebuild pushes the same tag again"]
    return []


def break_retagging(r: Registered, ctx: Context) -> None:
    ctx.of(REPO)[0].inputs["imageTagMutability"] = "IMMUTABLE"


def image_platform_ok(r: Registered, ctx: Context) -> list[str]:
    platform = str((r.inputs.get("build") or {}).get("platform"))
    wanted = {"linux/amd64": "X86_64", "linux/arm64": "ARM64"}.get(platform)
    tasks = {t.inputs["runtimePlatform"]["cpuArchitecture"] for t in ctx.of(TASK)}
    if wanted is None:
        return [f"platform {platform!r}: build one of linux/amd64, linux/arm64"]
    return [f"tasks run {arch}, the image is {platform}" for arch in tasks if arch != wanted]


def break_platform(r: Registered, ctx: Context) -> None:
    r.inputs["build"]["platform"] = "linux/arm64"
    if not ctx.of(TASK):
        r.inputs["build"]["platform"] = "windows/amd64"


def zone_ok(r: Registered, ctx: Context) -> list[str]:
    zone = ctx.account.zones.get(str(r.inputs.get("zoneId")))
    if zone is None:
        return [f"zone {r.inputs.get('zoneId')} does not exist"]
    name, private = zone
    problems = []
    record = str(plain(r.inputs["name"])).rstrip(".")
    if private and "certificate-validation" in r.name:
        problems.append("ACM never sees a validation record in a private zone")
    if record != name.rstrip(".") and not record.endswith("." + name.rstrip(".")):
        problems.append(f"{record} is not in zone {name}")
    if r.inputs.get("aliases") and (r.inputs.get("ttl") is not None or r.inputs.get("records")):
        problems.append("an alias record takes no TTL or records")
    if not r.inputs.get("aliases") and not 0 <= (r.inputs.get("ttl") or -1) <= 2147483647:
        problems.append("TTL 0-2147483647 for a non-alias record")
    return problems


def break_zone(r: Registered, ctx: Context) -> None:
    ctx.account.zones[r.inputs["zoneId"]] = ("example.com.", True)
    r.inputs["name"] = "_x1.mlflow.example.org."


def lb_subnets_ok(r: Registered, ctx: Context) -> list[str]:
    ids = plain(r.inputs.get("subnets")) or []
    zones = zones_of(ids, ctx)
    problems = []
    if len(zones) != len(set(zones)):
        problems.append(f"subnets {ids} repeat an AZ: one subnet per AZ")
    if len(set(zones)) < 2:
        problems.append("an Application Load Balancer needs subnets in 2 AZs")
    if not r.inputs.get("internal"):
        private = [i for i in ids if not public(i, ctx)]
        if private:
            problems.append(f"internet-facing, but subnets {private} have no internet gateway")
    if len(r.inputs.get("securityGroups") or []) > 5:
        problems.append("at most 5 security groups")
    return problems


def break_lb_subnets(r: Registered, ctx: Context) -> None:
    r.inputs["subnets"] = [*r.inputs["subnets"], r.inputs["subnets"][0]]


def listener_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    if r.inputs.get("protocol") == "HTTPS":
        if not plain(r.inputs.get("certificateArn")):
            problems.append("an HTTPS listener needs a certificate")
        if r.inputs.get("sslPolicy") not in TLS_POLICIES:
            problems.append(f"ssl policy {r.inputs.get('sslPolicy')!r} is not a predefined one")
    elif r.inputs.get("routingHttpResponseStrictTransportSecurityHeaderValue"):
        problems.append("HSTS is a header of HTTPS listeners")
    for action in r.inputs.get("defaultActions") or []:
        fixed, redirect = action.get("fixedResponse"), action.get("redirect")
        if fixed:
            if fixed.get("contentType") not in (
                "text/plain",
                "text/css",
                "text/html",
                "application/javascript",
                "application/json",
            ):
                problems.append(f"fixed-response content type {fixed.get('contentType')!r}")
            if len(fixed.get("messageBody") or "") > 1024:
                problems.append("fixed-response body longer than 1,024 characters")
            if not re.fullmatch(r"[245]\d\d", str(fixed.get("statusCode"))):
                problems.append("fixed-response status 2XX, 4XX or 5XX")
        if redirect and redirect.get("statusCode") not in ("HTTP_301", "HTTP_302"):
            problems.append("redirect status HTTP_301 or HTTP_302")
    if not 1 <= r.inputs.get("port", 0) <= 65535:
        problems.append("port 1-65535")
    return problems


def break_listener(r: Registered, ctx: Context) -> None:
    r.inputs["defaultActions"] = [
        {
            "type": "fixed-response",
            "fixedResponse": {
                "contentType": "text/markdown",
                "statusCode": "404",
                "messageBody": "x" * 1100,
            },
        }
    ]


def rules_ok(ctx: Context) -> list[str]:
    problems = []
    rules = ctx.of(LISTENER_RULE)
    priorities = [r.inputs["priority"] for r in rules]
    if len(set(priorities)) != len(priorities):
        problems.append("two listener rules share a priority")
    if len(rules) > 100:
        problems.append(f"{len(rules)} rules on one load balancer; the quota is 100")
    for r in rules:
        values = [v for c in r.inputs["conditions"] for v in c["pathPattern"]["values"]]
        if not 1 <= r.inputs["priority"] <= 50000:
            problems.append(f"{r.name}: priority 1-50000")
        if len(values) > 5 or sum(v.count("*") + v.count("?") for v in values) > 5:
            problems.append(f"{r.name}: at most 5 condition values and 5 wildcards per rule")
        problems += [f"{r.name}: path {v!r} longer than 128" for v in values if len(v) > 128]
    return problems


def break_rules(ctx: Context) -> None:
    first = ctx.of(LISTENER_RULE)[0]
    first.inputs["conditions"][0]["pathPattern"]["values"] = ["/" + "p" * 130]


def health_ok(r: Registered, ctx: Context) -> list[str]:
    check = r.inputs["healthCheck"]
    problems = []
    if not (str(check["path"]).startswith("/") and len(check["path"]) <= 1024):
        problems.append("health check path: starts with /, at most 1,024 characters")
    if not (
        5 <= check["interval"] <= 300
        and 2 <= check["timeout"] <= 120
        and check["timeout"] < check["interval"]
    ):
        problems.append("interval 5-300 s, timeout 2-120 s and shorter than the interval")
    if not (2 <= check["healthyThreshold"] <= 10 and 2 <= check["unhealthyThreshold"] <= 10):
        problems.append("thresholds 2-10")
    if not re.fullmatch(r"(2|3|4)\d\d(-(2|3|4)\d\d)?(,(2|3|4)\d\d)*", str(check["matcher"])):
        problems.append("matcher: HTTP codes 200-499")
    if not 0 <= r.inputs.get("deregistrationDelay", 300) <= 3600:
        problems.append("deregistration delay 0-3600 s")
    return problems


def break_health(r: Registered, ctx: Context) -> None:
    r.inputs["healthCheck"] = {**r.inputs["healthCheck"], "timeout": 30, "interval": 30}


def container(r: Registered) -> dict[str, Any]:
    [definition] = json.loads(plain(r.inputs["containerDefinitions"]))
    return dict(definition)


def task_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    cpu, memory = int(r.inputs["cpu"]), int(r.inputs["memory"])
    if memory not in FARGATE.get(cpu, ()):
        problems.append(f"cpu {cpu} with memory {memory} is not a Fargate size")
    if r.inputs.get("networkMode") != "awsvpc" or r.inputs.get("requiresCompatibilities") != [
        "FARGATE"
    ]:
        problems.append("Fargate tasks need networkMode awsvpc")
    if len(plain(r.inputs["containerDefinitions"]).encode()) > 64 * 1024:
        problems.append("task definition larger than 64 KiB")
    c = container(r)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", c["name"]):
        problems.append(f"container name {c['name']!r}")
    for mapping in c.get("portMappings", []):
        if mapping.get("hostPort", mapping["containerPort"]) != mapping["containerPort"]:
            problems.append("awsvpc: hostPort must equal containerPort")
    if not 2 <= c.get("stopTimeout", 30) <= 120:
        problems.append("stopTimeout 2-120 s on Fargate")
    for secret in c.get("secrets", []):
        parts = secret["valueFrom"].split(":")
        if not (
            secret["valueFrom"].startswith(f"arn:{ctx.account.partition}:secretsmanager:")
            and len(parts) == 10
            and parts[7]
        ):
            problems.append(f"secret {secret['name']}: arn:…:secret:<name>:<json-key>:<stage>:<id>")
    names = {e["name"] for e in c.get("environment", [])} | {
        s["name"] for s in c.get("secrets", [])
    }
    if len(names) != len(c.get("environment", [])) + len(c.get("secrets", [])):
        problems.append("a variable is both in environment and secrets, or twice")
    if any(not e["value"] for e in c.get("environment", [])):
        problems.append("ECS drops empty environment values (a diff at every pulumi up)")
    logs = c["logConfiguration"]["options"]["awslogs-group"]
    if logs not in {lg.inputs["name"] for lg in ctx.of(LOG_GROUP)}:
        problems.append(f"log group {logs} is not created by the stack")
    return problems


def break_task(r: Registered, ctx: Context) -> None:
    r.inputs["memory"] = "3000"


def service_ok(r: Registered, ctx: Context) -> list[str]:
    network = r.inputs["networkConfiguration"]
    problems = []
    if len(network["subnets"]) > 16 or len(network["securityGroups"]) > 5:
        problems.append("at most 16 subnets and 5 security groups")
    for subnet_id in network["subnets"]:
        is_public = public(subnet_id, ctx)
        subnet = ctx.account.subnets.get(subnet_id)
        if subnet is None:
            problems.append(f"subnet {subnet_id} does not exist")
        elif network.get("assignPublicIp") and not is_public:
            problems.append(f"public IP in {subnet_id}, which has no internet gateway")
        elif not network.get("assignPublicIp") and is_public:
            problems.append(
                f"no public IP in {subnet_id}, whose only way out is an internet gateway"
            )
    if not (
        r.inputs["deploymentMaximumPercent"] >= 100
        and 0 <= r.inputs["deploymentMinimumHealthyPercent"] <= 100
    ):
        problems.append("deployment percentages: maximum >= 100, minimum 0-100")
    if r.inputs.get("propagateTags") not in ("SERVICE", "TASK_DEFINITION", "NONE", None):
        problems.append("propagateTags SERVICE, TASK_DEFINITION or NONE")
    if r.inputs.get("healthCheckGracePeriodSeconds") and not r.inputs.get("loadBalancers"):
        problems.append("a health check grace period needs a load balancer")
    tasks = {t.state["arn"]: t for t in ctx.of(TASK)}
    task = tasks.get(r.inputs["taskDefinition"])
    for lb in r.inputs.get("loadBalancers") or []:
        c = container(task) if task else {}
        ports = {m["containerPort"] for m in c.get("portMappings", [])}
        if lb["containerName"] != c.get("name") or lb["containerPort"] not in ports:
            problems.append("the load balancer's container name and port are not the task's")
    return problems


def break_service(r: Registered, ctx: Context) -> None:
    r.inputs["networkConfiguration"]["assignPublicIp"] = not r.inputs["networkConfiguration"].get(
        "assignPublicIp"
    )


def scaling_target_ok(r: Registered, ctx: Context) -> list[str]:
    names = {
        (c.state["name"], s.state["name"]) for c in ctx.of(ECS_CLUSTER_T) for s in ctx.of(SERVICE)
    }
    resource = r.inputs["resourceId"]
    problems = []
    if resource not in {f"service/{c}/{s}" for c, s in names}:
        problems.append(f"resource {resource}: service/<cluster>/<service> of this stack")
    if not 0 <= r.inputs["minCapacity"] <= r.inputs["maxCapacity"]:
        problems.append("0 <= min <= max capacity")
    return problems


def break_scaling_target(r: Registered, ctx: Context) -> None:
    r.inputs["resourceId"] = "service/nowhere/nothing"


def scaling_policy_ok(r: Registered, ctx: Context) -> list[str]:
    spec = r.inputs["targetTrackingScalingPolicyConfiguration"]
    metric = spec["predefinedMetricSpecification"]
    problems = []
    if metric["predefinedMetricType"] == "ALBRequestCountPerTarget":
        labels = {
            f"{lb.state['arnSuffix']}/{tg.state['arnSuffix']}"
            for lb in ctx.of(LB)
            for tg in ctx.of(TG)
        }
        label = metric.get("resourceLabel")
        if label not in labels or len(label) > 1023:
            problems.append("ALBRequestCountPerTarget needs app/<lb>/<id>/targetgroup/<tg>/<id>")
    if spec["targetValue"] <= 0 or spec.get("scaleInCooldown", 0) < 0:
        problems.append("target value > 0, cooldowns >= 0")
    return problems


def break_scaling_policy(r: Registered, ctx: Context) -> None:
    spec = r.inputs["targetTrackingScalingPolicyConfiguration"]
    spec["predefinedMetricSpecification"] = {
        "predefinedMetricType": "ALBRequestCountPerTarget",
        "resourceLabel": "targetgroup/x",
    }


def log_retention(v: Any) -> bool:
    return v in CLUSTER_RETENTION_DAYS


def bucket_policy_ok(r: Registered, ctx: Context) -> list[str]:
    text = plain(r.inputs["policy"])
    doc = json.loads(text)
    problems = []
    if len(text.encode()) > 20 * 1024:
        problems.append("bucket policy larger than 20 KB")
    public_allow = [
        s
        for s in statements(doc)
        if s["Effect"] == "Allow" and s.get("Principal") in ("*", {"AWS": "*"})
    ]
    if public_allow and all(b.inputs.get("blockPublicPolicy") for b in ctx.of(BLOCK)):
        problems.append("BlockPublicPolicy refuses a policy that allows everyone")
    return problems


def break_bucket_policy(r: Registered, ctx: Context) -> None:
    doc = json.loads(plain(r.inputs["policy"]))
    doc["Statement"][0]["Effect"] = "Allow"
    r.inputs["policy"] = json.dumps(doc)


def lifecycle_ok(r: Registered, ctx: Context) -> list[str]:
    rules = r.inputs["rules"]
    problems = []
    ids = [rule.get("id") for rule in rules]
    if len(rules) > 1000 or len(set(ids)) != len(ids) or any(len(i or "") > 255 for i in ids):
        problems.append("at most 1,000 rules with unique ids of at most 255 characters")
    for rule in rules:
        expiration = rule.get("expiration") or {}
        if expiration.get("expiredObjectDeleteMarker") and (
            "days" in expiration or "date" in expiration
        ):
            problems.append("expiredObjectDeleteMarker cannot be combined with days or date")
        for key, days in (
            ("noncurrentVersionExpiration", "noncurrentDays"),
            ("abortIncompleteMultipartUpload", "daysAfterInitiation"),
        ):
            if key in rule and not rule[key].get(days, 0) >= 1:
                problems.append(f"{key}.{days} at least 1")
    return problems


def break_lifecycle(r: Registered, ctx: Context) -> None:
    r.inputs["rules"][1]["id"] = r.inputs["rules"][0]["id"]


def abort_multipart_ok(r: Registered, ctx: Context) -> list[str]:
    """S3 refuses AbortIncompleteMultipartUpload in a rule that filters on object tags (an
    upload in progress has none yet); DaysAfterInitiation is a whole number of days, and the
    bucket must have exactly one rule that aborts uploads for every key."""
    problems = []
    aborting = [rule for rule in r.inputs["rules"] if "abortIncompleteMultipartUpload" in rule]
    for rule in aborting:
        days = rule["abortIncompleteMultipartUpload"].get("daysAfterInitiation")
        # Numbers arrive as floats through the engine's protobuf: a whole number is an integer.
        whole_days = isinstance(days, int | float) and not isinstance(days, bool) and days % 1 == 0
        if not whole_days or days < 1:
            problems.append("abortIncompleteMultipartUpload.daysAfterInitiation: an integer >= 1")
        selector = rule.get("filter") or {}
        if "tag" in selector or "tags" in (selector.get("and") or {}):
            problems.append("abortIncompleteMultipartUpload cannot be combined with a tag filter")
    everywhere = [
        rule
        for rule in aborting
        if not (rule.get("filter") or {}).get("prefix") and rule["status"] == "Enabled"
    ]
    if len(everywhere) != 1:
        problems.append("one enabled rule must abort incomplete multipart uploads under every key")
    return problems


def break_abort_multipart(r: Registered, ctx: Context) -> None:
    rule = next(rule for rule in r.inputs["rules"] if "abortIncompleteMultipartUpload" in rule)
    rule["filter"] = {"tag": {"key": "k", "value": "v"}}


def lb_access_logs_ok(r: Registered, ctx: Context) -> list[str]:
    """Access logs: a prefix without "AWSLogs" (ELB adds it) nor a leading or trailing slash;
    a bucket encrypted with SSE-S3 only (ELB cannot write SSE-KMS); a policy on that bucket
    granting s3:PutObject on <prefix>/AWSLogs/<account>/* that the load balancer waits for
    (enabling logging writes a test object and fails on Access Denied)."""
    logs = r.inputs.get("accessLogs") or {}
    if not logs.get("enabled"):
        return []
    problems = []
    prefix, bucket = logs.get("prefix") or "", logs.get("bucket")
    if "AWSLogs" in prefix or prefix.startswith("/") or prefix.endswith("/"):
        problems.append(f"accessLogs.prefix {prefix!r}: no AWSLogs, no leading/trailing /")
    for sse in ctx.of(SSE):
        if sse.inputs.get("bucket") == bucket:
            algorithms = {
                rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"]
                for rule in sse.inputs["rules"]
            }
            if algorithms != {"AES256"}:
                problems.append(f"the log bucket's encryption {algorithms}: SSE-S3 (AES256) only")
    resource = (
        f"arn:{ctx.account.partition}:s3:::{bucket}/{prefix}/AWSLogs/{ctx.account.account_id}/*"
    )
    granting = [
        p
        for p in ctx.of(BUCKET_POLICY)
        if p.inputs.get("bucket") == bucket
        and any(
            st.get("Effect") == "Allow"
            and "s3:PutObject" in str(st.get("Action"))
            and st.get("Resource") == resource
            for st in json.loads(p.inputs["policy"])["Statement"]
        )
    ]
    if not granting:
        problems.append(f"no bucket policy grants s3:PutObject on {resource}")
    elif not any(p.urn in r.dependencies for p in granting):
        problems.append("the load balancer does not wait for the log bucket's policy")
    return problems


def break_lb_access_logs(r: Registered, ctx: Context) -> None:
    r.inputs["accessLogs"]["prefix"] = "AWSLogs/lb"


def schema_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    if not re.fullmatch(r"[a-z0-9_]{1,64}", str(r.inputs["schema"])):
        problems.append("schema: MySQL identifiers are at most 64 characters")
    if len(str(r.inputs["username"])) > 32:
        problems.append("username: MySQL 8 user names are at most 32 characters")
    return problems


def break_schema(r: Registered, ctx: Context) -> None:
    r.inputs["username"] = "mlflow_" + "x" * 30


ECS_AWSVPC = (
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_AwsVpcConfiguration.html"
)
ECS_RUN_TASK = "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html"
RDS_CLUSTER_SNAPSHOT = (
    "https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_CreateDBClusterSnapshot.html"
)


def upgrade_ok(r: Registered, ctx: Context) -> list[str]:
    """The upgrade's RunTask (its network) and the snapshot it names for this stack/project."""
    import datetime

    from projects.upgrade_provider import SNAPSHOT_IDENTIFIER, snapshot_identifier

    problems = []
    subnets, groups = r.inputs.get("subnets") or [], r.inputs.get("security_groups") or []
    if not 1 <= len(subnets) <= 16:
        problems.append(f"subnets: RunTask's awsvpcConfiguration takes 1-16, got {len(subnets)}")
    if len(groups) > 5:
        problems.append(f"security_groups: at most 5 per awsvpcConfiguration, got {len(groups)}")
    if r.inputs.get("min_tasks", 1) < 1:
        problems.append("min_tasks: the service starts at least one task again")
    when = datetime.datetime(2099, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
    name = snapshot_identifier(
        str(r.inputs["stack"]), str(r.inputs["project"]), str(r.inputs["mlflow_version"]), when
    )
    if not SNAPSHOT_IDENTIFIER.fullmatch(name):
        problems.append(f"snapshot identifier {name!r}: letters, digits, single hyphens, <= 255")
    return problems


def retirement_ok(r: Registered, ctx: Context) -> list[str]:
    """It alters the same MySQL account as the project's schema resource, and no other."""
    schemas = [s for s in ctx.of(SCHEMA) if s.inputs.get("project") == r.inputs.get("project")]
    if len(schemas) != 1:
        return [f"project {r.inputs.get('project')!r}: no schema resource alters that account"]
    if len(str(schemas[0].inputs["username"])) > 32:
        return ["username: MySQL 8 user names are at most 32 characters"]
    return []


def break_retirement(r: Registered, ctx: Context) -> None:
    r.inputs["project"] = "not-a-project"


SCHEDULER_CREATE = (
    "https://docs.aws.amazon.com/scheduler/latest/APIReference/API_CreateSchedule.html"
)
SCHEDULER_TYPES = "https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html"
SCHEDULER_ROLE = (
    "https://docs.aws.amazon.com/scheduler/latest/UserGuide/setting-up.html"
    "#setting-up-execution-role (confused deputy: aws:SourceAccount)"
)
PUT_METRIC_ALARM = (
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricAlarm.html"
)
PUT_DASHBOARD = (
    "https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutDashboard.html"
)
PUT_METRIC_FILTER = (
    "https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutMetricFilter.html"
)
SNS_CREATE_TOPIC = "https://docs.aws.amazon.com/sns/latest/api/API_CreateTopic.html"
SNS_SUBSCRIBE = "https://docs.aws.amazon.com/sns/latest/api/API_Subscribe.html"
_SCHEDULE_EXPRESSION = re.compile(
    r"rate\((?:1 (?:minute|hour|day)|(?:[2-9]|[1-9]\d+) (?:minutes|hours|days))\)"
    r"|cron\((?:\S+ ){5}\S+\)|at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)"
)


def schedule_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    expression = str(r.inputs.get("scheduleExpression"))
    if not _SCHEDULE_EXPRESSION.fullmatch(expression):
        problems.append(f"scheduleExpression {expression!r}: rate(), cron() of 6 fields or at()")
    if r.inputs.get("flexibleTimeWindow", {}).get("mode") not in ("OFF", "FLEXIBLE"):
        problems.append("flexibleTimeWindow.mode must be OFF or FLEXIBLE")
    target = r.inputs.get("target", {})
    if not str(target.get("arn", "")).startswith("arn:") or not target.get("roleArn"):
        problems.append("target needs an arn and a roleArn")
    ecs = target.get("ecsParameters", {})
    if ecs and not 1 <= int(ecs.get("taskCount", 1)) <= 10:
        problems.append("ecsParameters.taskCount: 1-10")
    subnets = ecs.get("networkConfiguration", {}).get("subnets", [])
    if ecs and not 1 <= len(subnets) <= 16:
        problems.append("ecsParameters.networkConfiguration.subnets: 1-16")
    retries = target.get("retryPolicy", {}).get("maximumRetryAttempts", 0)
    if not 0 <= retries <= 185:
        problems.append("retryPolicy.maximumRetryAttempts: 0-185")
    return problems


def break_schedule(r: Registered, ctx: Context) -> None:
    r.inputs["scheduleExpression"] = "rate(1 days)"


def scheduler_trust_ok(r: Registered, ctx: Context) -> list[str]:
    """A role EventBridge Scheduler assumes is limited to schedules of this account."""
    doc = json.loads(plain(r.inputs["assumeRolePolicy"]))
    problems = []
    for statement in statements(doc):
        if statement.get("Principal", {}).get("Service") != "scheduler.amazonaws.com":
            continue
        account = statement.get("Condition", {}).get("StringEquals", {}).get("aws:SourceAccount")
        if account != ctx.account.account_id:
            problems.append("scheduler.amazonaws.com trusted without aws:SourceAccount = account")
    return problems


def break_scheduler_trust(r: Registered, ctx: Context) -> None:
    doc = json.loads(plain(r.inputs["assumeRolePolicy"]))
    for statement in statements(doc):
        statement["Principal"] = {"Service": "scheduler.amazonaws.com"}
        statement.pop("Condition", None)
    r.inputs["assumeRolePolicy"] = json.dumps(doc)


def alarm_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    inputs = r.inputs
    period = int(inputs.get("period") or 60)
    if period not in (10, 20, 30) and period % 60:
        problems.append(f"period {period}: 10, 20, 30 or a multiple of 60")
    evaluations = int(inputs.get("evaluationPeriods", 0))
    if evaluations < 1 or (period >= 3600 and evaluations * period > 7 * 86400):
        problems.append("evaluationPeriods >= 1; periods of an hour or more span at most 7 days")
    if evaluations * period > 86400 and period < 3600:
        problems.append("evaluationPeriods x period at most one day for periods under an hour")
    stat, extended = inputs.get("statistic"), inputs.get("extendedStatistic")
    queries = inputs.get("metricQueries")
    if queries:
        if stat or extended or inputs.get("metricName"):
            problems.append("metricQueries excludes metricName/statistic")
        if sum(1 for q in queries if q.get("returnData")) != 1:
            problems.append("exactly one metric query returns data")
    elif bool(stat) == bool(extended):
        problems.append("exactly one of statistic and extendedStatistic")
    if extended and not re.fullmatch(r"p(\d{1,2}(\.\d{1,2})?|100)", str(extended)):
        problems.append(f"extendedStatistic {extended!r}: p0.0-p100")
    if inputs.get("treatMissingData") not in (
        None,
        "breaching",
        "notBreaching",
        "ignore",
        "missing",
    ):
        problems.append("treatMissingData: breaching, notBreaching, ignore or missing")
    if len(inputs.get("alarmActions", [])) > 5 or len(inputs.get("okActions", [])) > 5:
        problems.append("at most 5 alarm and 5 OK actions")
    if len(str(inputs.get("alarmDescription", ""))) > 1024:
        problems.append("alarmDescription at most 1024 characters")
    return problems


def break_alarm(r: Registered, ctx: Context) -> None:
    r.inputs.pop("metricQueries", None)
    r.inputs.update(period=45, statistic="Sum", extendedStatistic="p95")


def dashboard_ok(r: Registered, ctx: Context) -> list[str]:
    problems = []
    name = str(r.inputs.get("dashboardName"))
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", name):
        problems.append(f"dashboardName {name!r}: 1-255 of A-Z a-z 0-9 - _")
    body = json.loads(plain(r.inputs["dashboardBody"]))
    if not 1 <= len(body.get("widgets", [])) <= 500:
        problems.append("1-500 widgets")
    for widget in body["widgets"]:
        if widget["x"] + widget["width"] > 24:
            problems.append("a widget past the grid's 24 columns")
        if len(widget.get("properties", {}).get("metrics", [])) > 500:
            problems.append("at most 500 metrics per widget")
    return problems


def break_dashboard(r: Registered, ctx: Context) -> None:
    r.inputs["dashboardName"] = "mlflow aws"


def break_upgrade(r: Registered, ctx: Context) -> None:
    r.inputs["subnets"] = [f"subnet-{i:08x}" for i in range(17)]


def password_ok(r: Registered, ctx: Context) -> list[str]:
    length = r.inputs.get("length", 0)
    specials = set(r.inputs.get("overrideSpecial", ""))
    if r.name.endswith("admin-password"):  # the Aurora master password
        if not 8 <= length <= 41 or specials & set('/"@ '):
            return ['Aurora master password: 8-41 printable characters without / " @ or space']
    elif not MIN_PASSWORD <= length <= MAX_PASSWORD or not specials <= set(UNRESERVED_SPECIALS):
        return [f"project password: {PASSWORD_RULE} (a SQL literal)"]
    return []


def break_password(r: Registered, ctx: Context) -> None:
    r.inputs["length"] = 64


def certificate_ok(r: Registered, ctx: Context) -> list[str]:
    domain = r.inputs["domainName"]
    problems = []
    if len(domain) > 64:
        problems.append(f"{domain}: a certificate's first name is at most 64 characters")
    if len(domain) > 253 or any(len(label) > 63 for label in domain.split(".")):
        problems.append("DNS names: at most 253 characters, labels at most 63")
    if r.inputs.get("validationMethod") not in ("DNS", "EMAIL"):
        problems.append("validation DNS or EMAIL")
    return problems


def break_certificate(r: Registered, ctx: Context) -> None:
    r.inputs["domainName"] = "a" * 60 + ".example.com"


def slr_ok(r: Registered, ctx: Context) -> list[str]:
    service = r.inputs.get("awsServiceName")
    if service != "ecs.amazonaws.com":
        return [f"service {service!r}: the ECS service-linked role is for ecs.amazonaws.com"]
    if not r.retain_on_delete:
        return ["the service-linked role is shared by the account: never delete it"]
    return []


def break_slr(r: Registered, ctx: Context) -> None:
    r.inputs["awsServiceName"] = "ecs-tasks.amazonaws.com"


# -- the table ------------------------------------------------------------------------------------

RULES: list[Rule] = [
    each(
        OBJECT,
        "key",
        lambda v: isinstance(v, str) and 1 <= len(v.encode()) <= 1024,
        "an object key is 1-1024 bytes of UTF-8",
        "https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html",
        "k" * 1025,
    ),
    each(
        OBJECT,
        "key",
        lambda v: isinstance(v, str) and not v.startswith("/") and "//" not in v,
        "no empty path segment (S3 keeps it: a key '/x' or 'a//b' is not under 'a/' as IAM's "
        "'<prefix>/*' resource sees it)",
        "https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html",
        "/churn/.mlflow-aws-sign-in",
    ),
    Rule(
        "*",
        "tags: at most 50; key 1-128 and value at most 256 characters; no aws: prefix; "
        "letters, digits, spaces and _.:/=+-@",
        f"{TAGS}; {IAM_TAGS}",
        tag_problems,
        break_tags,
    ),
    # S3
    each(
        BUCKET,
        "bucketPrefix",
        matches(r"[a-z0-9][a-z0-9-]{0,36}"),
        "lowercase letters, digits, hyphens; at most 37 (63 with the provider's 26-character "
        "suffix)",
        f"{S3_NAMES}; {S3_PREFIX}",
        "Mlflow-Aws_" + "x" * 40,
    ),
    each(
        SSE,
        "rules[].applyServerSideEncryptionByDefault.sseAlgorithm",
        one_of("AES256", "aws:kms", "aws:kms:dsse"),
        "AES256, aws:kms or aws:kms:dsse",
        S3_SSE,
        "AES128",
    ),
    each(
        VERSIONING,
        "versioningConfiguration.status",
        one_of("Enabled", "Suspended"),
        "Enabled or Suspended",
        S3_VERSIONING,
        "On",
    ),
    each(BLOCK, "blockPublicPolicy", one_of(True, False), "a boolean", S3_BLOCK, "yes"),
    whole(
        BUCKET_POLICY,
        bucket_policy_ok,
        "policy: at most 20 KB; BlockPublicPolicy refuses one that allows everyone",
        f"{S3_POLICY}; {S3_BLOCK}",
        break_bucket_policy,
    ),
    whole(
        LIFECYCLE,
        lifecycle_ok,
        "rules: at most 1,000 with unique ids (at most 255); "
        "ExpiredObjectDeleteMarker alone in its expiration; days at least 1",
        S3_LIFECYCLE,
        break_lifecycle,
    ),
    whole(
        LIFECYCLE,
        abort_multipart_ok,
        "AbortIncompleteMultipartUpload: DaysAfterInitiation an integer >= 1, never with a tag "
        "filter; one enabled rule for every key (killed presigned uploads)",
        S3_ABORT_MPU,
        break_abort_multipart,
    ),
    # EC2
    each(
        SG,
        "description",
        matches(EC2_TEXT),
        "at most 255 of a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*",
        EC2_SG,
        "Members' group",
    ),
    each(
        SG,
        "ingress[].description",
        matches(EC2_TEXT),
        "at most 255 of a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*",
        EC2_IP_RANGE,
        "MySQL from the central server's tasks (the client group)",
    ),
    each(
        SG,
        "egress[].description",
        matches(EC2_TEXT),
        "at most 255 of a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*",
        EC2_IP_RANGE,
        "tasks -> AWS APIs",
    ),
    named(
        SG,
        lambda n: re.fullmatch(EC2_TEXT, n) is not None and not n.startswith("sg-"),
        "at most 255 of the EC2 set; not starting with sg-",
        f"{EC2_SG}; {PULUMI_AUTONAME}",
        "sg-metadata",
    ),
    each(
        SG,
        "ingress[].cidrBlocks[]",
        valid_cidr,
        "an IPv4 CIDR (host bits zero)",
        EC2_IP_RANGE,
        "10.0.0.1/16",
    ),
    each(
        SG,
        "egress[].cidrBlocks[]",
        valid_cidr,
        "an IPv4 CIDR (host bits zero)",
        EC2_IP_RANGE,
        "0.0.0.0/33",
    ),
    whole(SG, ports_ok, "ports: 0 <= from <= to <= 65535", EC2_PERMISSION, break_ports),
    whole(
        SG,
        sg_rule_count,
        "at most 60 inbound and 60 outbound rule entries (each CIDR and group counts)",
        VPC_QUOTAS,
        break_sg_rules,
    ),
    # RDS
    each(
        SUBNET_GROUP,
        "description",
        matches(r".{1,255}"),
        "required, at most 255 characters",
        RDS_SUBNETS,
        "",
    ),
    named(
        SUBNET_GROUP,
        lambda n: re.fullmatch(r"[a-z0-9._ -]{1,255}", n) is not None and n != "default",
        "lowercase letters, digits, periods, underscores, spaces, "
        "hyphens; at most 255; not 'default'",
        f"{RDS_SUBNETS}; {PULUMI_AUTONAME}",
        "Default",
    ),
    whole(
        SUBNET_GROUP,
        subnet_group_zones,
        "subnets of one VPC covering at least 2 AZs",
        f"{RDS_SUBNETS}; {RDS_VPC}",
        break_subnet_group,
    ),
    each(
        PARAMS,
        "family",
        one_of("aurora-mysql8.0"),
        "the family of Aurora MySQL 3",
        RDS_PARAMS,
        "aurora-mysql5.7",
    ),
    each(PARAMS, "description", matches(r".{1,255}"), "required", RDS_PARAMS, ""),
    named(
        PARAMS,
        lambda n: len(n) <= 255 and re.fullmatch(RDS_ID, n) is not None,
        "1-255 letters, digits, hyphens; a letter first; no -- or trailing -",
        f"{RDS_PARAMS}; {PULUMI_AUTONAME}",
        "1-params--",
    ),
    each(
        PARAMS,
        "parameters[].name",
        one_of("require_secure_transport", "log_bin_trust_function_creators"),
        "a modifiable Aurora MySQL 3 cluster parameter",
        RDS_PARAM_LIST,
        "super_read_only_x",
    ),
    whole(
        PASSWORD,
        password_ok,
        'Aurora master password 8-41 without / " @ space; project '
        f"passwords {MIN_PASSWORD}-{MAX_PASSWORD} of {CHARACTER_CLASS}",
        f"{AURORA_PASSWORD}; {MYSQL_PASSWORD}",
        break_password,
    ),
    each(
        RANDOM,
        "byteLength",
        between(1, 64),
        "at least one byte (the snapshot name's hex)",
        RANDOM_ID,
        0,
    ),
    each(
        CLUSTER,
        "clusterIdentifierPrefix",
        lambda v: (
            isinstance(v, str) and len(v) <= 37 and re.fullmatch(RDS_ID, v.rstrip("-")) is not None
        ),
        "a letter first, letters, digits, "
        "single hyphens; at most 37 (63 with the 26-character suffix)",
        f"{RDS_CLUSTER}; {RDS_PREFIX}",
        "mlflow--aws-" + "x" * 40,
    ),
    # CreateDBCluster's documentation says letters and digits; CreateDBInstance's (and accounts)
    # accept underscores as well: mlflow_admin relies on that (checked only on AWS).
    each(
        CLUSTER,
        "masterUsername",
        matches(r"[A-Za-z][A-Za-z0-9_]{0,15}"),
        "1-16 letters, digits or underscores, a letter first",
        f"{RDS_CLUSTER}; {RDS_INSTANCE}",
        "1admin",
    ),
    each(CLUSTER, "port", between(1150, 65535), "1150-65535", RDS_CLUSTER, 80),
    each(CLUSTER, "backupRetentionPeriod", between(1, 35), "1-35 days", RDS_CLUSTER, 0),
    each(
        CLUSTER,
        "engineMode",
        one_of("provisioned"),
        "Serverless v2 is provisioned",
        RDS_CLUSTER,
        "serverless",
    ),
    whole(
        CLUSTER,
        scaling_ok,
        "Serverless v2: 0-256 / 1-256 ACU in steps of 0.5, min <= max; "
        "secondsUntilAutoPause 300-86400 and only with 0 ACU",
        RDS_SV2,
        break_scaling,
    ),
    whole(
        CLUSTER,
        engine_ok,
        "an engine version the region offers for new clusters; 3.07+ for "
        "the Data API, 3.08.0+ for 0 ACU",
        f"{AURORA_VERSIONS}; {DATA_API}; {RDS_SV2}",
        break_engine,
    ),
    whole(
        CLUSTER,
        snapshot_ok,
        "a final snapshot identifier when one is taken: 1-255, a letter first, no -- or trailing -",
        RDS_DELETE,
        break_snapshot,
    ),
    each(
        INSTANCE,
        "identifierPrefix",
        lambda v: (
            isinstance(v, str) and len(v) <= 37 and re.fullmatch(RDS_ID, v.rstrip("-")) is not None
        ),
        "as the cluster's, at most 37",
        RDS_INSTANCE,
        "Mlflow_instance-",
    ),
    each(
        INSTANCE,
        "instanceClass",
        one_of("db.serverless"),
        "db.serverless for Serverless v2",
        RDS_INSTANCE,
        "db.t3.medium",
    ),
    whole(
        INSTANCE,
        instance_reachable,
        "publicly accessible only in subnets with an internet gateway",
        RDS_VPC,
        break_instance,
    ),
    # Secrets Manager
    named(
        SECRET_T,
        lambda n: re.fullmatch(r"[A-Za-z0-9/_+=.@-]{1,512}", n) is not None,
        "1-512 of A-Z a-z 0-9 / _ + = . @ -",
        SECRET,
        "mlflow aws/dev/churn",
    ),
    each(
        SECRET_T,
        "description",
        lambda v: isinstance(v, str) and len(v) <= 2048,
        "at most 2,048 characters",
        SECRET,
        "x" * 2049,
    ),
    each(
        SECRET_T,
        "recoveryWindowInDays",
        lambda v: v == 0 or 7 <= v <= 30,
        "0 (delete at once) or 7-30 days",
        SECRET_DELETE,
        3,
    ),
    each(
        SECRET_VERSION,
        "secretString",
        secret_size,
        "at most 65,536 bytes",
        SECRET_VALUE,
        "x" * 65537,
    ),
    # IAM
    named(
        ROLE,
        lambda n: re.fullmatch(IAM_NAME + "{1,64}", n) is not None,
        "1-64 of [\\w+=,.@-] (name prefix at most 38 with the 26-character suffix)",
        IAM_ROLE,
        "mlflow-aws-a-very-long-project-name-" + "0" * 30,
    ),
    each(
        ROLE,
        "description",
        matches(IAM_TEXT),
        "at most 1,000 Latin-1 characters",
        IAM_ROLE,
        "MLflow — project",
    ),
    each(ROLE, "maxSessionDuration", between(3600, 43200), "3600-43200 seconds", IAM_ROLE, 86400),
    whole(
        ROLE,
        trust_ok,
        "trust policy at most 2,048 characters (default quota); principals of "
        "the stack's partition",
        f"{IAM_QUOTAS}; {IAM_ROLE}",
        break_trust,
    ),
    whole(
        ROLE,
        service_trust_guarded,
        "a service principal only with aws:SourceAccount (and aws:SourceArn of the account's "
        "region): the confused-deputy guard",
        f"{IAM_CONFUSED_DEPUTY}; {ECS_TASK_ROLE}",
        break_service_trust,
    ),
    named(
        ROLE_POLICY,
        lambda n: re.fullmatch(IAM_NAME + "{1,128}", n) is not None,
        "1-128 of [\\w+=,.@-]",
        f"{IAM_ROLE_POLICY}; {PULUMI_AUTONAME}",
        "policy of churn",
    ),
    each(
        ROLE_POLICY,
        "role",
        matches(IAM_NAME + "{1,64}"),
        "a role name, not an ARN",
        IAM_ROLE_POLICY,
        "arn:aws:iam::123456789012:role/x",
    ),
    whole(
        ROLE_POLICY,
        policy_document_ok,
        "Version 2012-10-17; Sid only A-Za-z0-9; ARNs of the stack's partition",
        f"{IAM_SID}; {IAM_POLICY}",
        break_policy_document,
    ),
    Rule(
        ROLE_POLICY,
        "inline policies of one role: at most 10,240 characters without whitespace",
        IAM_QUOTAS,
        inline_policies_per_role,
        break_inline_policies,
    ),
    named(
        POLICY,
        lambda n: re.fullmatch(IAM_NAME + "{1,128}", n) is not None,
        "1-128 of [\\w+=,.@-] (name prefix at most 102)",
        IAM_POLICY,
        "mlflow aws policy",
    ),
    each(
        POLICY,
        "description",
        matches(IAM_TEXT),
        "at most 1,000 Latin-1 characters",
        IAM_POLICY,
        "x" * 1001,
    ),
    each(
        POLICY,
        "policy",
        policy_size(6144),
        "at most 6,144 characters without whitespace",
        IAM_QUOTAS,
        json.dumps({"Statement": ["x" * 6200]}),
    ),
    whole(
        POLICY,
        policy_document_ok,
        "Version 2012-10-17; Sid only A-Za-z0-9; ARNs of the stack's partition",
        f"{IAM_SID}; {IAM_POLICY}",
        break_policy_document,
    ),
    each(
        GROUP_ATTACH,
        "group",
        matches(IAM_NAME + "{1,128}"),
        "a group name",
        IAM_ATTACH_GROUP,
        "data science",
    ),
    Rule(
        GROUP_ATTACH,
        "at most 10 managed policies per group",
        IAM_QUOTAS,
        attachments(GROUP_ATTACH, "group", 10, "group"),
        break_attachments(GROUP_ATTACH, "group", 10),
    ),
    each(
        ROLE_ATTACH,
        "role",
        matches(IAM_NAME + "{1,64}"),
        "a role name",
        IAM_ATTACH_ROLE,
        "ci runner",
    ),
    Rule(
        ROLE_ATTACH,
        "at most 10 managed policies per role (default quota; 20 at most)",
        IAM_QUOTAS,
        attachments(ROLE_ATTACH, "role", 10, "role"),
        break_attachments(ROLE_ATTACH, "role", 10),
    ),
    whole(
        SLR,
        slr_ok,
        "AWSServiceName ecs.amazonaws.com; shared by the account (never deleted)",
        f"{IAM_SLR}; {ECS_SLR}",
        break_slr,
    ),
    # ECR and the image
    each(
        REPO,
        "name",
        lambda v: (
            isinstance(v, str)
            and 2 <= len(v) <= 256
            and re.fullmatch(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*", v)
            is not None
        ),
        "2-256, lowercase path of [a-z0-9] words joined by . _ -",
        ECR_REPO,
        "MLflow/Server",
    ),
    each(
        REPO,
        "imageTagMutability",
        one_of("MUTABLE", "IMMUTABLE", "MUTABLE_WITH_EXCLUSION", "IMMUTABLE_WITH_EXCLUSION"),
        "one of the four settings",
        ECR_REPO,
        "LOCKED",
    ),
    each(
        REPO,
        "encryptionConfigurations[].encryptionType",
        one_of("AES256", "KMS", "KMS_DSSE"),
        "AES256, KMS or KMS_DSSE",
        ECR_REPO,
        "SSE",
    ),
    whole(
        ECR_POLICY,
        ecr_lifecycle_ok,
        "at most 30,720 characters; unique priorities from 1; "
        "tagStatus any last; countNumber >= 1; sinceImagePushed in days",
        f"{ECR_LIFECYCLE}; {ECR_LIFECYCLE_API}",
        break_ecr_lifecycle,
    ),
    each(
        IMAGE,
        "imageName",
        lambda v: (
            isinstance(v, str)
            and re.fullmatch(r"[\w][\w.-]{0,127}", v.rsplit(":", 1)[-1]) is not None
        ),
        "tag: at most 128 of [A-Za-z0-9_.-], not starting with . or -",
        DOCKER_TAG,
        "repo:-" + "x" * 130,
    ),
    whole(
        IMAGE,
        retagging_ok,
        "a rebuild that pushes the same tag again (pulumi-docker's "
        "context digest covers file modes; an interrupted pulumi up loses the push) needs a "
        "MUTABLE repository",
        ECR_MUTABILITY,
        break_retagging,
    ),
    whole(
        IMAGE,
        image_platform_ok,
        "built for the tasks' CPU architecture",
        f"{ECS_TASKDEF} (runtimePlatform)",
        break_platform,
    ),
    # ACM and Route 53
    whole(
        CERT,
        certificate_ok,
        "first domain name at most 64 characters (RFC 5280 CN); DNS names at most 253, labels 63",
        ACM,
        break_certificate,
    ),
    each(
        CERT_VALIDATION,
        "validationRecordFqdns[]",
        matches(r"[A-Za-z0-9_.-]{1,253}"),
        "record names ACM asked for",
        ACM_DNS,
        "",
    ),
    whole(
        RECORD,
        zone_ok,
        "in a public zone that holds the name (ACM validates through public "
        "DNS); alias records without TTL or records; TTL 0-2147483647",
        f"{R53}; {R53_ALIAS}; {ACM_DNS}",
        break_zone,
    ),
    # Load balancing
    each(
        LB,
        "namePrefix",
        matches(r"(?!internal-)[A-Za-z0-9][A-Za-z0-9-]{0,5}"),
        "at most 6 letters, digits, hyphens (the name at most 32)",
        f"{ELB_PREFIX}; {ELB_LB}",
        "mlflow-aws",
    ),
    each(LB, "idleTimeout", between(1, 4000), "1-4000 seconds", ELB_ATTRIBUTES, 0),
    whole(
        LB,
        lb_subnets_ok,
        "one subnet per AZ, at least 2 AZs; internet-facing: public "
        "subnets; at most 5 security groups",
        f"{ELB_AZ}; {ELB_LB}",
        break_lb_subnets,
    ),
    whole(
        LB,
        lb_access_logs_ok,
        "access logs: prefix without AWSLogs; an SSE-S3 bucket whose policy lets the "
        "Region's ELB writer put <prefix>/AWSLogs/<account>/*, created first",
        ELB_ACCESS_LOGS,
        break_lb_access_logs,
    ),
    whole(
        LISTENER,
        listener_ok,
        "HTTPS: certificate and a predefined TLS policy; fixed "
        "response: content type, body at most 1,024, status 2XX/4XX/5XX; redirect 301/302",
        f"{ELB_LISTENER}; {ELB_POLICIES}; {ELB_FIXED}; {ELB_REDIRECT}",
        break_listener,
    ),
    Rule(
        LISTENER_RULE,
        "priorities 1-50000, unique; at most 5 condition values and 5 "
        "wildcards per rule; path patterns at most 128; at most 100 rules per load balancer",
        f"{ELB_RULE}; {ELB_CONDITIONS}; {ELB_QUOTAS}",
        rules_ok,
        break_rules,
    ),
    each(
        TG,
        "namePrefix",
        matches(r"[A-Za-z0-9][A-Za-z0-9-]{0,5}"),
        "at most 6 characters",
        f"{ELB_TG_PREFIX}; {ELB_TG}",
        "mlflow-tg",
    ),
    each(TG, "port", between(1, 65535), "1-65535", ELB_TG, 0),
    whole(
        TG,
        health_ok,
        "health check: path /…≤1024, interval 5-300, timeout 2-120 and shorter, "
        "thresholds 2-10, matcher 200-499; deregistration delay 0-3600",
        f"{ELB_TG}; {ELB_TG_ATTRIBUTES}",
        break_health,
    ),
    # ECS, logs, scaling
    named(
        ECS_CLUSTER_T,
        lambda n: re.fullmatch(r"[A-Za-z0-9_-]{1,255}", n) is not None,
        "1-255 letters, digits, hyphens, underscores",
        f"{ECS_CLUSTER}; {PULUMI_AUTONAME}",
        "tracking cluster",
    ),
    each(
        ECS_CLUSTER_T,
        "settings[].value",
        one_of("enabled", "disabled", "enhanced"),
        "containerInsights enabled, disabled or enhanced",
        ECS_SETTING,
        "off",
    ),
    each(
        LOG_GROUP,
        "name",
        matches(r"[.\-_/#A-Za-z0-9]{1,512}"),
        "1-512 of [.-_/#A-Za-z0-9]",
        LOGS_GROUP,
        "/mlflow aws/churn",
    ),
    each(
        LOG_GROUP,
        "retentionInDays",
        log_retention,
        "one of CloudWatch's retention periods",
        LOGS_RETENTION,
        45,
    ),
    each(
        TASK,
        "family",
        matches(r"[A-Za-z0-9_-]{1,255}"),
        "1-255 letters, digits, -, _",
        ECS_TASKDEF,
        "mlflow-aws.dev.churn",
    ),
    whole(
        TASK,
        task_ok,
        "a Fargate cpu/memory size; awsvpc; at most 64 KiB; container name; "
        "hostPort = containerPort; stopTimeout 2-120; secrets by ARN:key; no empty variable; "
        "its log group exists",
        f"{ECS_SIZES}; {ECS_CONTAINER}; {ECS_AWSVPC}; {ECS_SECRETS}; {ECS_QUOTAS}",
        break_task,
    ),
    named(
        SERVICE,
        lambda n: re.fullmatch(r"[A-Za-z0-9_-]{1,255}", n) is not None,
        "1-255 letters, digits, hyphens, underscores",
        f"{ECS_SERVICE}; {PULUMI_AUTONAME}",
        "churn service",
    ),
    whole(
        SERVICE,
        service_ok,
        "at most 16 subnets and 5 groups; a public IP only with an "
        "internet gateway and none behind one; deployment percentages; grace period only with "
        "a load balancer; container name and port of the task",
        f"{ECS_VPC_CONFIG}; {ECS_PULL}; {ECS_DEPLOYMENT}; {ECS_SERVICE}",
        break_service,
    ),
    whole(
        SCALING_TARGET,
        scaling_target_ok,
        "resource service/<cluster>/<service>; 0 <= min <= max",
        AAS_TARGET,
        break_scaling_target,
    ),
    named(
        SCALING_POLICY,
        lambda n: re.fullmatch(r"[^|:]{1,256}", n) is not None,
        "1-256 characters without : or |",
        f"{AAS_POLICY}; {PULUMI_AUTONAME}",
        "scale:cpu",
    ),
    whole(
        SCALING_POLICY,
        scaling_policy_ok,
        "ALBRequestCountPerTarget: resource label of the "
        "stack's load balancer and target group; target > 0; cooldowns >= 0",
        f"{AAS_POLICY}; {AAS_METRIC}",
        break_scaling_policy,
    ),
    # The schema provider
    whole(
        SCHEMA,
        schema_ok,
        "schema a MySQL identifier (at most 64); user at most 32",
        f"{MYSQL_IDENTIFIERS}; {MYSQL_USERS}",
        break_schema,
    ),
    # The scheduled gc (infra/gc_schedule.py)
    whole(
        SCHEDULE,
        schedule_ok,
        "expression rate()/cron() of 6 fields/at(); flexible window "
        "OFF|FLEXIBLE; an ECS target with a role, 1-10 tasks, 1-16 subnets; 0-185 retries",
        f"{SCHEDULER_CREATE}; {SCHEDULER_TYPES}",
        break_schedule,
    ),
    named(
        SCHEDULE,
        lambda n: re.fullmatch(r"[0-9a-zA-Z._-]{1,64}", n) is not None,
        "1-64 of 0-9 a-z A-Z - _ .",
        SCHEDULER_CREATE,
        "mlflow aws gc",
    ),
    whole(
        ROLE,
        scheduler_trust_ok,
        "a role trusted by scheduler.amazonaws.com names aws:SourceAccount",
        SCHEDULER_ROLE,
        break_scheduler_trust,
    ),
    # Alarms (infra/alarms.py)
    whole(
        ALARM,
        alarm_ok,
        "period 10/20/30 or n x 60; evaluations within a day (7 days for "
        "hourly periods); one statistic or metric queries with one result; p-statistics; "
        "<= 5 actions each",
        PUT_METRIC_ALARM,
        break_alarm,
    ),
    named(
        ALARM,
        lambda n: 1 <= len(n) <= 255 and n.isascii(),
        "1-255 ASCII characters",
        PUT_METRIC_ALARM,
        "x" * 256,
    ),
    whole(
        DASHBOARD,
        dashboard_ok,
        "name 1-255 of A-Za-z0-9-_; 1-500 widgets on 24 columns",
        PUT_DASHBOARD,
        break_dashboard,
    ),
    each(
        METRIC_FILTER,
        "pattern",
        lambda v: len(str(v)) <= 1024,
        "at most 1024 characters",
        PUT_METRIC_FILTER,
        "x" * 1025,
    ),
    each(
        METRIC_FILTER,
        "metricTransformation.name",
        lambda v: re.fullmatch(r"[^:*$]{1,255}", str(v)) is not None,
        "1-255 characters, no : * $",
        PUT_METRIC_FILTER,
        "gc:failures",
    ),
    named(
        TOPIC,
        lambda n: re.fullmatch(r"[A-Za-z0-9_-]{1,256}", n) is not None,
        "1-256 of A-Za-z0-9-_",
        SNS_CREATE_TOPIC,
        "mlflow aws alarms",
    ),
    each(
        TOPIC_POLICY,
        "policy",
        lambda v: "cloudwatch.amazonaws.com" in str(v) and "sns:Publish" in str(v),
        "CloudWatch may publish (alarm actions to an encrypted topic)",
        SNS_CREATE_TOPIC,
        "{}",
    ),
    each(
        SUBSCRIPTION,
        "protocol",
        one_of("email", "email-json", "https", "sqs", "lambda"),
        "a protocol SNS offers",
        SNS_SUBSCRIBE,
        "pigeon",
    ),
    # The rotation's second half (projects/password_retirement.py)
    whole(
        RETIREMENT,
        retirement_ok,
        "ALTER USER of the project's own account (a MySQL 8 user name, at most 32 characters)",
        MYSQL_USERS,
        break_retirement,
    ),
    # The upgrade gate (projects/upgrade_provider.py)
    whole(
        UPGRADE,
        upgrade_ok,
        "its migration task's network: 1-16 subnets, at most 5 security groups; the cluster "
        "snapshot identifier: a letter first, letters, digits and single hyphens, at most 255",
        f"{ECS_AWSVPC}; {ECS_RUN_TASK}; {RDS_CLUSTER_SNAPSHOT}",
        break_upgrade,
    ),
]

TYPES = {rule.typ for rule in RULES} - {"*"}
