"""Run the real ``__main__.py`` in-process against Pulumi mocks and record what it registers.

``run_program(config, stack=...)`` evaluates the program once and returns a ``ProgramRun``:
every registered resource (type, name, inputs, parent, options) and every stack output
resolved together with its secretness.

The stock ``MockMonitor`` ignores ``additional_secret_outputs``, so a resource output such as
``RandomPassword.result`` comes back as plain text and secrecy cannot be checked.
``SecretAwareMonitor`` wraps those outputs as secrets, like the engine does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

with warnings.catch_warnings():
    # pulumi_aws modules warn about their own deprecated classes when first loaded (lazily,
    # on attribute access): noise, not our code.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_aws

    for _module in (
        "acm", "appautoscaling", "cloudwatch", "ec2", "ecr", "ecs", "iam", "lb", "rds",
        "route53", "s3", "secretsmanager",
    ):  # fmt: skip
        getattr(getattr(pulumi_aws, _module), "_utilities", None)  # forces the lazy load

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "__main__.py"
PROJECT = "mlflow-aws"

ACCOUNT = "123456789012"
REGION = "eu-west-1"
DEFAULT_VPC_ID = "vpc-0def4017"
DEFAULT_VPC_CIDR = "172.31.0.0/16"
DEFAULT_SUBNETS = ["subnet-0aaa1111", "subnet-0bbb2222", "subnet-0ccc3333"]
ECR_PASSWORD = "ecr-token-password-not-for-outputs"

# The account the data sources describe (infra/account.py reads it before registering):
# the default VPC with its three default subnets (public, one per AZ) and two private ones
# behind a NAT; and a VPC of one's own with a secondary CIDR, public subnets (two in AZ a),
# private ones behind a NAT and an isolated one.
CUSTOM_VPC_ID = "vpc-0abc1234"
CUSTOM_VPC_CIDRS = ["10.42.0.0/16", "10.43.0.0/16"]
DEFAULT_PRIVATE_SUBNETS = ["subnet-0123abcd", "subnet-0456ef01"]
PUBLIC_SUBNETS = ["subnet-0c0a0001", "subnet-0c0b0002"]  # AZ a, b
SECOND_PUBLIC_SUBNET_IN_A = "subnet-0c0a0003"
PRIVATE_SUBNETS = ["subnet-0c0a0004", "subnet-0c0b0005"]  # AZ a, b, behind a NAT
ISOLATED_SUBNET = "subnet-0c0c0006"  # AZ c, no route out
NO_IGW_VPC_ID = "vpc-0e0e0e0e"  # a VPC without any internet gateway
NO_IGW_SUBNETS = ["subnet-0e0a0007", "subnet-0e0b0008"]
ENGINE_VERSIONS = ["8.0.mysql_aurora.3.04.4", "8.0.mysql_aurora.3.09.0", "8.0.mysql_aurora.3.10.0"]


@dataclass
class MockSubnet:
    vpc: str
    zone: str  # a, b, c
    table: str  # its route table (rtb-main-* when implicit)
    default_for_az: bool = False
    explicit: bool = True  # associated with its table explicitly (else: the VPC's main table)


@dataclass
class MockAccount:
    """The AWS account the mocks' data sources answer for; tests change what they need."""

    partition: str = "aws"
    region: str = REGION
    vpcs: dict[str, list[str]] = field(
        default_factory=lambda: {
            DEFAULT_VPC_ID: [DEFAULT_VPC_CIDR],
            CUSTOM_VPC_ID: list(CUSTOM_VPC_CIDRS),
            NO_IGW_VPC_ID: ["10.9.0.0/16"],
        }
    )
    main_tables: dict[str, str] = field(
        default_factory=lambda: {
            DEFAULT_VPC_ID: "rtb-0def0001",
            CUSTOM_VPC_ID: "rtb-0c0c0001",
            NO_IGW_VPC_ID: "rtb-0e0e0001",
        }
    )
    # route table -> the target of its 0.0.0.0/0 route ("" for none)
    routes: dict[str, str] = field(
        default_factory=lambda: {
            "rtb-0def0001": "igw-0def0001",
            "rtb-0def0002": "nat-0def0002",
            "rtb-0c0c0001": "",
            "rtb-0c0c0002": "igw-0c0c0002",
            "rtb-0c0c0003": "nat-0c0c0003",
            "rtb-0e0e0001": "",
        }
    )
    subnets: dict[str, MockSubnet] = field(
        default_factory=lambda: {
            **{
                sid: MockSubnet(DEFAULT_VPC_ID, zone, "rtb-0def0001", True, explicit=False)
                for sid, zone in zip(DEFAULT_SUBNETS, "abc", strict=True)
            },
            **{
                sid: MockSubnet(DEFAULT_VPC_ID, zone, "rtb-0def0002")
                for sid, zone in zip(DEFAULT_PRIVATE_SUBNETS, "ab", strict=True)
            },
            PUBLIC_SUBNETS[0]: MockSubnet(CUSTOM_VPC_ID, "a", "rtb-0c0c0002"),
            PUBLIC_SUBNETS[1]: MockSubnet(CUSTOM_VPC_ID, "b", "rtb-0c0c0002"),
            SECOND_PUBLIC_SUBNET_IN_A: MockSubnet(CUSTOM_VPC_ID, "a", "rtb-0c0c0002"),
            PRIVATE_SUBNETS[0]: MockSubnet(CUSTOM_VPC_ID, "a", "rtb-0c0c0003"),
            PRIVATE_SUBNETS[1]: MockSubnet(CUSTOM_VPC_ID, "b", "rtb-0c0c0003"),
            ISOLATED_SUBNET: MockSubnet(CUSTOM_VPC_ID, "c", "rtb-0c0c0001", explicit=False),
            NO_IGW_SUBNETS[0]: MockSubnet(NO_IGW_VPC_ID, "a", "rtb-0e0e0001", explicit=False),
            NO_IGW_SUBNETS[1]: MockSubnet(NO_IGW_VPC_ID, "b", "rtb-0e0e0001", explicit=False),
        }
    )
    default_vpc: str | None = DEFAULT_VPC_ID
    engine_versions: list[str] = field(default_factory=lambda: list(ENGINE_VERSIONS))
    clusters: list[str] = field(default_factory=list)  # existing Aurora MySQL cluster ids
    # Route 53 zones: id -> (name, private)
    zones: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {
            "Z0123456789ABCDEFGHIJ": ("example.com.", False),
            "Z0PRIVATE0ZONE0000001": ("example.com.", True),
        }
    )
    # The ECS service-linked role: None (the account never ran ECS) or its tags.
    ecs_service_linked_role: dict[str, str] | None = field(default_factory=dict)

    @property
    def account_id(self) -> str:
        """The mock account's id (ACCOUNT): what every ARN of it and the caller identity name."""
        return ACCOUNT

    def arn(self, service: str, resource: str, region: bool = True, account: bool = True) -> str:
        return (f"arn:{self.partition}:{service}:{self.region if region else ''}:"
                f"{self.account_id if account else ''}:{resource}")  # fmt: skip

    @property
    def dns_suffix(self) -> str:
        return "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"


class MockError(Exception):
    """A data source's error, as the provider reports one (the program sees an exception)."""


def make_ca_pem(common_name: str = "mlflow-aws mocks CA") -> str:
    """A real, self-signed CA certificate (PEM), made in-process."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


_CA_FILE: list[Path] = []


def mock_ca_file() -> Path:
    """One CA bundle file for every program run (what ``db.caBundle`` points at in tests),
    removed when the test process ends."""
    if not _CA_FILE:
        import atexit
        import tempfile

        fd, name = tempfile.mkstemp(prefix="mlflow-aws-mock-ca-", suffix=".pem")
        with open(fd, "w", encoding="ascii") as handle:
            handle.write(make_ca_pem())
        _CA_FILE.append(Path(name))
        atexit.register(_CA_FILE[0].unlink, missing_ok=True)
    return _CA_FILE[0]


def with_test_ca_bundle(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with ``db.caBundle`` set to the tests' CA file unless the test set it (the
    program otherwise downloads AWS's bundle, which this machine cannot)."""
    out = dict(config)
    db = out.get("mlflow-aws:db", {})
    if isinstance(db, str):
        try:
            db = json.loads(db)
        except json.JSONDecodeError:
            return out
    if isinstance(db, dict) and "caBundle" not in db:
        out["mlflow-aws:db"] = {**db, "caBundle": str(mock_ca_file())}
    return out


def mock_password(name: str) -> str:
    """A distinctive, deterministic password per RandomPassword, to search outputs for."""
    return "Pw-" + hashlib.sha256(name.encode()).hexdigest()[:29] + "_Z9.~"


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    id: str
    urn: str = ""
    parent: str = ""
    protect: bool = False
    retain_on_delete: bool = False
    ignore_changes: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()
    additional_secret_outputs: tuple[str, ...] = ()
    custom_timeouts: dict[str, str] = field(default_factory=dict)  # create/update/delete
    aliases: tuple[Any, ...] = ()  # the request's alias specs (pulumi alias_pb2.Alias)


class RecordingMocks(pulumi_mocks.Mocks):
    """Answers resources and invokes with plausible AWS-shaped values, and records both."""

    def __init__(self, account: MockAccount | None = None) -> None:
        self.account = account or MockAccount()
        self.resources: list[Registered] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.passwords: list[str] = []
        # The SDK calls the monitor from several threads; each call runs on one of them.
        self.last = threading.local()

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        a = self.account
        inputs = dict(args.inputs)
        state = dict(inputs)
        name, typ = args.name, args.typ
        rid = f"{name}-id"
        if typ == "aws:s3/bucket:Bucket":
            rid = inputs.get("bucketPrefix", "bucket-") + "20250101000000000000000001"
            state.update(bucket=rid, arn=a.arn("s3", rid, region=False, account=False))
        elif typ == "aws:rds/cluster:Cluster":
            rid = inputs.get("clusterIdentifierPrefix", "cluster-") + "0001"
            state.update(
                clusterIdentifier=rid,
                endpoint=f"{rid}.cluster-c0ffee.{a.region}.rds.{a.dns_suffix}",
                readerEndpoint=f"{rid}.cluster-ro-c0ffee.{a.region}.rds.{a.dns_suffix}",
                arn=a.arn("rds", f"cluster:{rid}"),
                port=inputs.get("port", 3306),
            )
        elif typ == "aws:rds/clusterInstance:ClusterInstance":
            rid = inputs.get("identifierPrefix", "instance-") + "0001"
            state.update(identifier=rid, arn=a.arn("rds", f"db:{rid}"))
        elif typ == "aws:ecr/repository:Repository":
            repo = inputs.get("name", name)
            rid = repo
            state.update(
                repositoryUrl=f"{ACCOUNT}.dkr.ecr.{a.region}.{a.dns_suffix}/{repo}",
                registryId=ACCOUNT,
                arn=a.arn("ecr", f"repository/{repo}"),
            )
        elif typ == "docker:index/image:Image":
            image_name = inputs["imageName"]
            repository = image_name.rsplit(":", 1)[0]
            digest = hashlib.sha256(image_name.encode()).hexdigest()
            state.update(repoDigest=f"{repository}@sha256:{digest}", baseImageName=image_name)
        elif typ == "random:index/randomPassword:RandomPassword":
            # A new password when its keepers change (passwordVersion), as the provider does.
            password = mock_password(name + json.dumps(inputs.get("keepers", {}), sort_keys=True))
            self.passwords.append(password)
            state.update(result=password, bcryptHash="$2a$10$mock")
        elif typ == "random:index/randomId:RandomId":
            state.update(hex="0badcafe", b64Url="C63K_g", dec="195939070")
        elif typ == "aws:ec2/securityGroup:SecurityGroup":
            rid = "sg-0123456789abcdef0"
            state.update(arn=a.arn("ec2", f"security-group/{rid}"))
        elif typ.startswith("aws:secretsmanager/secret:"):
            rid = a.arn("secretsmanager", f"secret:{name}-AbCdEf")
            state.update(arn=rid)
        elif typ.startswith("aws:iam/policy:"):
            state.update(arn=a.arn("iam", f"policy/{name}", region=False))
        elif typ == "aws:iam/role:Role":
            state.update(arn=a.arn("iam", f"role/{name}", region=False), name=name)
        elif typ == "aws:iam/serviceLinkedRole:ServiceLinkedRole":
            role = "AWSServiceRoleForECS"
            path = f"role/aws-service-role/{inputs['awsServiceName']}/{role}"
            state.update(arn=a.arn("iam", path, region=False), name=role)
        elif typ == "aws:acm/certificate:Certificate":
            rid = a.arn("acm", "certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
            state.update(
                arn=rid,
                domainValidationOptions=[
                    {
                        "domainName": inputs["domainName"],
                        "resourceRecordName": f"_x1.{inputs['domainName']}.",
                        "resourceRecordType": "CNAME",
                        "resourceRecordValue": "_x2.acm-validations.aws.",
                    }
                ],
            )
        elif typ == "aws:acm/certificateValidation:CertificateValidation":
            state.update(certificateArn=inputs["certificateArn"])
        elif typ == "aws:route53/record:Record":
            state.update(fqdn=str(inputs["name"]).rstrip("."))
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            suffix = "app/mlflow1/50dc6c495c0c9188"
            rid = a.arn("elasticloadbalancing", f"loadbalancer/{suffix}")
            state.update(
                arn=rid,
                arnSuffix=suffix,
                dnsName=f"internal-mlflow1-1234567890.{a.region}.elb.{a.dns_suffix}",
                zoneId="Z32O12XQLNTSW2",
            )
        elif typ == "aws:lb/targetGroup:TargetGroup":
            suffix = f"targetgroup/{name[-20:]}/73e2d6bc24d8a067"
            rid = a.arn("elasticloadbalancing", suffix)
            state.update(arn=rid, arnSuffix=suffix)
        elif typ == "aws:lb/listener:Listener":
            rid = a.arn("elasticloadbalancing", f"listener/app/mlflow1/{name}")
            state.update(arn=rid)
        elif typ == "aws:ecs/cluster:Cluster":
            state.update(name=f"{name}-4a5b6c7", arn=a.arn("ecs", f"cluster/{name}"))
        elif typ == "aws:ecs/service:Service":
            state.update(name=f"{name}-8d9e0f1")
        elif typ == "aws:ecs/taskDefinition:TaskDefinition":
            family = inputs["family"]
            state.update(arn=a.arn("ecs", f"task-definition/{family}:1"))
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            state.update(arn=a.arn("logs", f"log-group:{inputs['name']}"))
        elif typ == "aws:secretsmanager/secretVersion:SecretVersion":
            # Secrets Manager gives each new value a new version id.
            value = str(inputs.get("secretString", ""))
            state.update(versionId=hashlib.sha256(value.encode()).hexdigest()[:32])
        elif typ.startswith("aws:"):
            state.setdefault("arn", a.arn("mock", f"{typ}/{name}"))
        if "name" not in state and typ.startswith("aws:"):
            state["name"] = f"{name}-name"
        record = Registered(typ=typ, name=name, inputs=inputs, state=state, id=rid)
        self.resources.append(record)
        self.last.record = record
        return rid, state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append((args.token, dict(args.args)))
        try:
            return self._answer(args.token, args.args)
        except MockError as exc:
            # A data source's own error reaches the program as a failed invoke it may catch
            # (an exception raised here would be an RPC failure that ends the program).
            return {}, [("", str(exc))]

    def _answer(self, token: str, a: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        account = self.account
        if token == "aws:ec2/getVpc:getVpc":
            vpc_id = a.get("id") or (account.default_vpc if a.get("default") else None)
            if vpc_id not in account.vpcs:
                raise MockError("no matching EC2 VPC found")
            cidrs = account.vpcs[vpc_id]
            return {
                "id": vpc_id,
                "cidrBlock": cidrs[0],
                "cidrBlockAssociations": [
                    {"associationId": f"vpc-cidr-assoc-{i}", "cidrBlock": c, "state": "associated"}
                    for i, c in enumerate(cidrs)
                ],
                "default": vpc_id == account.default_vpc,
            }, []
        if token == "aws:ec2/getSubnets:getSubnets":
            filters = {f["name"]: f["values"] for f in a.get("filters", [])}
            ids = [
                sid
                for sid, subnet in account.subnets.items()
                if subnet.vpc in filters.get("vpc-id", [subnet.vpc])
                and ("default-for-az" not in filters or subnet.default_for_az)
            ]
            return {"id": account.region, "ids": ids}, []
        if token == "aws:ec2/getSubnet:getSubnet":
            subnet = account.subnets.get(a.get("id", ""))
            if subnet is None:
                raise MockError(f"no matching EC2 Subnet found ({a.get('id')})")
            return {
                "id": a["id"],
                "vpcId": subnet.vpc,
                "availabilityZone": f"{account.region}{subnet.zone}",
                "defaultForAz": subnet.default_for_az,
            }, []
        if token == "aws:ec2/getRouteTables:getRouteTables":
            filters = {f["name"]: f["values"] for f in a.get("filters", [])}
            if "association.subnet-id" in filters:
                [sid] = filters["association.subnet-id"]
                subnet = account.subnets.get(sid)
                ids = [subnet.table] if subnet is not None and subnet.explicit else []
            else:
                ids = [account.main_tables[a["vpcId"]]]
            return {"id": account.region, "ids": ids}, []
        if token == "aws:ec2/getRouteTable:getRouteTable":
            target = account.routes[a["routeTableId"]]
            routes = [{"cidrBlock": "10.0.0.0/8", "gatewayId": "local"}]
            if target:
                key = "gatewayId" if target.startswith("igw-") else "natGatewayId"
                routes.append({"cidrBlock": "0.0.0.0/0", key: target})
            return {"id": a["routeTableId"], "routes": routes}, []
        if token == "aws:index/getRegion:getRegion":
            return {"id": account.region, "name": account.region, "region": account.region}, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            arn = account.arn("iam", "user/test", region=False)
            return {"accountId": ACCOUNT, "arn": arn, "id": ACCOUNT, "userId": "AIDAMOCK"}, []
        if token == "aws:index/getPartition:getPartition":
            partition = account.partition
            return {"id": partition, "partition": partition, "dnsSuffix": account.dns_suffix}, []
        if token == "aws:index/getServicePrincipal:getServicePrincipal":
            name = f"{a['serviceName']}.amazonaws.com"
            return {
                "id": name,
                "name": name,
                "suffix": "amazonaws.com",
                "region": account.region,
            }, []
        if token == "aws:rds/getEngineVersion:getEngineVersion":
            if a.get("version") not in account.engine_versions:
                raise MockError("no RDS engine versions match the criteria")
            return {"id": a["version"], "version": a["version"], "versionActual": a["version"],
                    "engine": "aurora-mysql", "parameterGroupFamily": "aurora-mysql8.0",
                    "status": "available"}, []  # fmt: skip
        if token == "aws:rds/getClusters:getClusters":
            return {"id": account.region, "clusterIdentifiers": list(account.clusters),
                    "clusterArns": []}, []  # fmt: skip
        if token == "aws:route53/getZone:getZone":
            zone = account.zones.get(a.get("zoneId", ""))
            if zone is None:
                raise MockError("no matching Route 53 Hosted Zone found")
            return {"id": a["zoneId"], "zoneId": a["zoneId"], "name": zone[0],
                    "privateZone": zone[1]}, []  # fmt: skip
        if token == "aws:iam/getRoles:getRoles":
            found = account.ecs_service_linked_role is not None
            names = ["AWSServiceRoleForECS"] if found else []
            return {"id": "roles", "names": names, "arns": []}, []
        if token == "aws:iam/getRole:getRole":
            if account.ecs_service_linked_role is None:
                raise MockError(
                    "NoSuchEntity: The role with name AWSServiceRoleForECS cannot be found"
                )
            return {"id": a["name"], "name": a["name"], "tags": account.ecs_service_linked_role,
                    "arn": account.arn("iam", f"role/{a['name']}", region=False)}, []  # fmt: skip
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "id": account.region,
                "userName": "AWS",
                "password": ECR_PASSWORD,
                "authorizationToken": "QVdTOm1vY2s=",
                "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{account.region}.{account.dns_suffix}",
                "registryId": a.get("registryId", ACCOUNT),
            }, []
        if token == "aws:iam/getPolicyDocument:getPolicyDocument":
            return {"id": "policy", "json": json.dumps(a, sort_keys=True)}, []
        raise MockError(f"the mocks answer no data source {token}")


class SecretAwareMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that honours ``additional_secret_outputs`` and records resource options."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        record: Registered = self.recording.last.record
        record.urn = response.urn
        record.parent = request.parent
        record.protect = request.HasField("protect") and request.protect
        record.retain_on_delete = request.HasField("retainOnDelete") and request.retainOnDelete
        record.dependencies = tuple(request.dependencies)
        record.ignore_changes = tuple(request.ignoreChanges)
        record.additional_secret_outputs = tuple(request.additionalSecretOutputs)
        record.aliases = tuple(request.aliases)
        timeouts = request.customTimeouts
        record.custom_timeouts = {
            k: getattr(timeouts, k) for k in ("create", "update", "delete") if getattr(timeouts, k)
        }
        for key in request.additionalSecretOutputs:
            if key in response.object.fields:
                value = struct_pb2.Value()
                value.CopyFrom(response.object.fields[key])
                secret = struct_pb2.Struct()
                secret.fields[rpc._special_sig_key].string_value = rpc._special_secret_sig
                secret.fields["value"].CopyFrom(value)
                response.object.fields[key].struct_value.CopyFrom(secret)
        return response


@dataclass
class Leaf:
    """One resolved stack output value (a leaf of the exported structure)."""

    path: str  # "DatabaseUrl", "Projects.churn.Password", ...
    value: Any
    secret: bool


@dataclass
class ProgramRun:
    resources: list[Registered]
    calls: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, Any]  # plain values
    secret_outputs: dict[str, bool]  # top-level key -> whole value is a secret
    leaves: list[Leaf] = field(default_factory=list)
    passwords: list[str] = field(default_factory=list)

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, got {[r.name for r in found]}"
        return found[0]

    def by_name(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, got {len(found)}"
        return found[0]

    def children_of(self, parent: Registered) -> list[Registered]:
        return [r for r in self.resources if r.parent == parent.urn]


async def _resolve(value: Any, path: str, secret: bool, leaves: list[Leaf]) -> Any:
    if isinstance(value, pulumi.Output):
        inner_secret = secret or bool(await value.is_secret())
        return await _resolve(await value.future(), path, inner_secret, leaves)
    if isinstance(value, Mapping):
        return {k: await _resolve(v, f"{path}.{k}", secret, leaves) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [await _resolve(v, f"{path}[{i}]", secret, leaves) for i, v in enumerate(value)]
    leaves.append(Leaf(path, value, secret))
    return value


async def _is_secret(value: Any) -> bool:
    return isinstance(value, pulumi.Output) and bool(await value.is_secret())


def run_program(
    config: Mapping[str, Any] | None = None,
    stack: str = "dev",
    region: str = REGION,
    recording: RecordingMocks | None = None,
    account: MockAccount | None = None,
) -> ProgramRun:
    """Evaluate ``__main__.py`` once with mocks; config values may be Python objects (JSON-ed).

    Pass ``recording`` to inspect what was registered even when the program raises.
    """
    recording = recording or RecordingMocks(account)
    # The SDK schedules on the current event loop; an asyncio.run() earlier in the session (the
    # ASGI tests) leaves none behind.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = SecretAwareMonitor(recording)
    pulumi_settings.ROOT.set(None)  # a fresh root stack for every run
    pulumi.runtime.set_mocks(
        recording, project=PROJECT, stack=stack, preview=False, monitor=monitor
    )
    raw = {"aws:region": region}
    for key, value in with_test_ca_bundle(config or {}).items():
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    pulumi.runtime.set_all_config(raw)

    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    _sync_await(run_pulumi_func(program))

    root = pulumi_settings.get_root_resource()
    exported: dict[str, Any] = dict(getattr(root, "outputs", {}))
    leaves: list[Leaf] = []

    async def collect() -> tuple[dict[str, Any], dict[str, bool]]:
        values = {k: await _resolve(v, k, False, leaves) for k, v in exported.items()}
        secrets = {k: await _is_secret(v) for k, v in exported.items()}
        return values, secrets

    outputs, secret_outputs = _sync_await(collect())
    return ProgramRun(
        resources=recording.resources,
        calls=recording.calls,
        outputs=outputs,
        secret_outputs=secret_outputs,
        leaves=leaves,
        passwords=recording.passwords,
    )


def iter_strings(value: Any) -> Iterator[str]:
    """Every string inside a nested value (for "no secret leaked" checks)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from iter_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_strings(v)
    elif value is not None:
        yield str(value)
