"""The Pulumi program, evaluated in-process with mocks: resources, options, secrets, outputs."""

from __future__ import annotations

import json
import re
from typing import Any

from infra.config import pinned_mlflow_version
from mlflow_aws import passwords
from tests.support.program_checks import (
    OUTPUT_NAMES,
    SECRET_SIG,
    assert_inputs_keep_secrets,
    assert_no_plain_secrets,
    is_secret_input,
    run,
)
from tests.support.pulumi_mocks import (
    ACCOUNT,
    CUSTOM_VPC_ID,
    DEFAULT_SUBNETS,
    DEFAULT_VPC_CIDR,
    DEFAULT_VPC_ID,
    PRIVATE_SUBNETS,
    REGION,
    ROOT,
    ProgramRun,
    Registered,
)

PUBLIC_CIDRS = ["203.0.113.0/24", "198.51.100.7/32"]

BUCKET = "aws:s3/bucket:Bucket"
CLUSTER = "aws:rds/cluster:Cluster"
INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
SG = "aws:ec2/securityGroup:SecurityGroup"
REPO = "aws:ecr/repository:Repository"
IMAGE = "docker:index/image:Image"


def plain(value: Any) -> Any:
    """A mock input with Pulumi's secret wrapper removed."""
    if isinstance(value, dict) and value.get(SECRET_SIG) and "value" in value:
        return value["value"]
    return value


# ---------------------------------------------------------------------------------- outputs


def test_exports_exactly_the_design_outputs() -> None:
    assert set(run().outputs) == OUTPUT_NAMES


def test_output_values_describe_the_resources() -> None:
    r = run()
    bucket = r.one(BUCKET)
    cluster = r.one(CLUSTER)
    repo = r.one(REPO)
    out = r.outputs
    assert out["ArtifactRoot"] == f"s3://{bucket.state['bucket']}"
    assert out["DatabaseEndpoint"] == cluster.state["endpoint"]
    assert out["DatabasePort"] == 3306
    assert out["DatabaseUsername"] == cluster.inputs["masterUsername"] == "mlflow_admin"
    [password] = r.passwords
    assert out["DatabasePassword"] == password
    assert out["DatabaseUrl"] == (
        f"mysql+pymysql://mlflow_admin:{password}@{cluster.state['endpoint']}:3306"
    )
    assert out["Region"] == REGION
    assert out["MlflowVersion"] == pinned_mlflow_version()
    assert out["Projects"] == {}
    assert re.fullmatch(
        rf"{re.escape(repo.state['repositoryUrl'])}@sha256:[0-9a-f]{{64}}", out["ImageUri"]
    )
    assert out["ImageUri"].startswith(f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/")
    assert out["AdminSecretArn"] == r.one("aws:secretsmanager/secret:Secret").state["arn"]


def test_password_carrying_outputs_are_secrets_and_nothing_else_leaks_them() -> None:
    r = run({"mlflow-aws:db": {"allowedCidrs": PUBLIC_CIDRS}})
    assert r.secret_outputs["DatabasePassword"] is True
    assert r.secret_outputs["DatabaseUrl"] is True
    assert_no_plain_secrets(r)
    # Not everything is secret: the helper needs plain endpoint, region and image.
    assert not r.secret_outputs["DatabaseEndpoint"]
    assert not r.secret_outputs["ImageUri"]


def test_password_reaches_resources_only_as_secret() -> None:
    r = run()
    [password] = r.passwords
    cluster = r.one(CLUSTER)
    assert is_secret_input(cluster.inputs["masterPassword"])
    assert plain(cluster.inputs["masterPassword"]) == password
    assert "masterPassword" in cluster.additional_secret_outputs

    version = r.one("aws:secretsmanager/secretVersion:SecretVersion")
    assert is_secret_input(version.inputs["secretString"])
    bundle = json.loads(plain(version.inputs["secretString"]))
    assert bundle == {
        "engine": "mysql",
        "host": cluster.state["endpoint"],
        "port": 3306,
        "username": "mlflow_admin",
        "password": password,
        "dbClusterIdentifier": cluster.state["clusterIdentifier"],
    }
    registry = r.one(IMAGE).inputs["registry"]
    assert is_secret_input(registry) or is_secret_input(registry.get("password"))
    assert_inputs_keep_secrets(r)


def test_admin_password_is_long_and_mysql_url_safe() -> None:
    pw = run().one("random:index/randomPassword:RandomPassword").inputs
    assert pw["length"] >= 32
    # RFC 3986 unreserved: no URL quoting
    assert set(pw["overrideSpecial"]) <= set(passwords.UNRESERVED_SPECIALS)


# ----------------------------------------------------------------------------- components


def test_one_component_per_concern_with_children_parented() -> None:
    r = run()
    components = {
        "mlflow-aws:infra:ArtifactStore": {BUCKET, "aws:s3/bucketPolicy:BucketPolicy"},
        "mlflow-aws:infra:MetadataDatabase": {CLUSTER, INSTANCE, SG},
        "mlflow-aws:infra:ServerImage": {REPO, IMAGE},
    }
    for typ, expected_children in components.items():
        component = r.one(typ)
        children = r.children_of(component)
        assert expected_children <= {c.typ for c in children}
        assert all(c.name.startswith(f"{component.name}-") for c in children)
    custom = [res for res in r.resources if not res.typ.startswith("mlflow-aws:")]
    component_urns = {res.urn for res in r.resources if res.typ.startswith("mlflow-aws:")}
    assert all(res.parent in component_urns for res in custom)


# ----------------------------------------------------------------------------- S3 bucket


def test_bucket_is_encrypted_versioned_private_and_tls_only() -> None:
    r = run()
    bucket = r.one(BUCKET)
    name = bucket.state["bucket"]
    assert bucket.inputs["tags"]["mlflow-aws:stack"] == "dev"

    sse = r.one(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert sse.inputs["bucket"] == name
    [rule] = sse.inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"

    versioning = r.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.inputs["bucket"] == name
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"

    pab = r.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert pab.inputs["bucket"] == name
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls"):
        assert pab.inputs[flag] is True, flag
    assert pab.inputs["restrictPublicBuckets"] is True

    policy = r.one("aws:s3/bucketPolicy:BucketPolicy")
    assert policy.inputs["bucket"] == name
    assert pab.urn in policy.dependencies  # S3 rejects policy writes racing the block
    [statement] = json.loads(policy.inputs["policy"])["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_bucket_lifecycle_expires_old_versions_and_aborts_uploads() -> None:
    r = run()
    lifecycle = r.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    rules = lifecycle.inputs["rules"]
    assert all(rule["status"] == "Enabled" for rule in rules)
    noncurrent = [rule["noncurrentVersionExpiration"]["noncurrentDays"] for rule in rules
                  if "noncurrentVersionExpiration" in rule]  # fmt: skip
    aborts = [rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] for rule in rules
              if "abortIncompleteMultipartUpload" in rule]  # fmt: skip
    assert noncurrent == [30]
    assert aborts == [1]  # the shortest S3 allows: a killed upload's parts are billed until then
    versioning = r.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning.urn in lifecycle.dependencies


def test_the_bucket_has_no_cors_rule() -> None:
    """The MLflow UI downloads through presigned URLs by navigating to them (no fetch, so no
    CORS): any rule would only widen who may read from a page (tests/test_artifacts_presigned.py
    downloads in headless Chromium on every path without one)."""
    r = run()
    assert not [x for x in r.resources if "cors" in x.typ.lower()]


def test_bucket_protection_follows_the_stack() -> None:
    dev = run().one(BUCKET)
    assert dev.inputs["forceDestroy"] is True
    assert not dev.protect
    assert not dev.retain_on_delete
    prod = run(stack="prod").one(BUCKET)
    assert prod.inputs["forceDestroy"] is False
    assert prod.protect
    assert prod.retain_on_delete
    assert prod.inputs["bucketPrefix"].startswith("mlflow-aws-prod-")


def test_bucket_prefix_is_valid_for_awkward_stack_names() -> None:
    prefix = (
        run(stack="Team_A.Very-Long-Stack-Name-For-Testing-Limits")
        .one(BUCKET)
        .inputs["bucketPrefix"]
    )
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*-", prefix)
    assert len(prefix) <= 37


# -------------------------------------------------------------------------------- Aurora


def test_aurora_serverless_v2_can_pause_and_is_encrypted() -> None:
    r = run()
    cluster = r.one(CLUSTER).inputs
    assert cluster["engine"] == "aurora-mysql"
    assert cluster["engineMode"] == "provisioned"
    version = re.fullmatch(r"8\.0\.mysql_aurora\.3\.(\d+)\.(\d+)", cluster["engineVersion"])
    assert version and (int(version[1]), int(version[2])) >= (8, 0)  # 0 ACU needs >= 3.08
    scaling = cluster["serverlessv2ScalingConfiguration"]
    assert scaling == {"minCapacity": 0, "maxCapacity": 2, "secondsUntilAutoPause": 300}
    assert cluster["storageEncrypted"] is True
    assert cluster["copyTagsToSnapshot"] is True
    assert cluster["port"] == 3306
    assert "manageMasterUserPassword" not in cluster
    # Aurora's own minor upgrades must not turn into a downgrade attempt on the next update.
    assert r.one(CLUSTER).ignore_changes == ("engineVersion",)

    instance = r.one(INSTANCE)
    assert instance.inputs["instanceClass"] == "db.serverless"
    assert instance.inputs["clusterIdentifier"] == r.one(CLUSTER).id
    assert instance.inputs["engine"] == "aurora-mysql"


def test_aurora_requires_tls() -> None:
    r = run()
    group = r.one("aws:rds/clusterParameterGroup:ClusterParameterGroup")
    assert group.inputs["family"] == "aurora-mysql8.0"
    params = {p["name"]: p["value"] for p in group.inputs["parameters"]}
    assert params["require_secure_transport"] == "ON"
    assert params["log_bin_trust_function_creators"] == "1"  # MLflow's trigger, no SUPER
    assert r.one(CLUSTER).inputs["dbClusterParameterGroupName"] == group.state["name"]


def test_schemas_are_made_through_the_data_api_of_a_private_cluster() -> None:
    """No db.allowedCidrs: nothing faces the internet, and projects still get their schemas,
    through the cluster's RDS Data API, as the admin secret, once both exist."""
    r = run({"mlflow-aws:projects": "churn"})
    cluster = r.one(CLUSTER)
    assert cluster.inputs["enableHttpEndpoint"] is True
    assert cluster.inputs["engineVersion"] >= "8.0.mysql_aurora.3.08"  # Data API + 0 ACU
    assert r.one(INSTANCE).inputs["publiclyAccessible"] is False
    schema = r.one("pulumi-python:dynamic/mysql:Schema")
    admin_secret = r.by_name("metadata-admin-secret")
    assert schema.inputs["cluster_arn"] == cluster.state["arn"]
    assert schema.inputs["admin_secret_arn"] == admin_secret.state["arn"]
    assert not {"admin_host", "admin_password", "admin_username"} & set(schema.inputs)
    project = r.by_name("project-churn")
    assert r.one(INSTANCE).urn in project.dependencies
    assert r.by_name("metadata-admin-secret-value").urn in project.dependencies


def test_the_connection_bundle_carries_the_database_ca_bundle() -> None:
    from tests.support.pulumi_mocks import mock_ca_file

    r = run({"mlflow-aws:projects": "churn"})
    version = r.by_name("project-churn-connection-version")
    bundle = json.loads(plain(version.inputs["secretString"]))
    assert bundle["DatabaseCaBundle"] == mock_ca_file().read_text().strip() + "\n"
    assert bundle["ServerRoleArn"].startswith("arn:aws:")


def test_aws_profile_reaches_the_schema_provider() -> None:
    r = run({"mlflow-aws:projects": "churn", "aws:profile": "platform"})
    assert r.one("pulumi-python:dynamic/mysql:Schema").inputs["aws_profile"] == "platform"


def test_the_aws_providers_assumed_roles_reach_the_schema_provider() -> None:
    """Issue 15, finding 7: with aws:assumeRoles every other resource is made as the assumed
    role; the schema provider assumes the same roles, in order (tests/test_schema_provider.py
    proves the calls are signed with them)."""
    roles = [
        {"roleArn": "arn:aws:iam::123456789012:role/org-deployer", "sessionName": "ci"},
        {"roleArn": "arn:aws:iam::123456789012:role/mlflow-deployer", "externalId": "x-1"},
    ]
    r = run({"mlflow-aws:projects": "churn", "aws:assumeRoles": roles})
    assert r.one("pulumi-python:dynamic/mysql:Schema").inputs["assume_roles"] == [
        {"role_arn": roles[0]["roleArn"], "session_name": "ci"},
        {"role_arn": roles[1]["roleArn"], "external_id": "x-1"},
    ]


def test_scaling_config_reaches_the_cluster() -> None:
    paused = run({"mlflow-aws:db": {"maxCapacity": 8, "secondsUntilAutoPause": 3600}})
    scaling = paused.one(CLUSTER).inputs["serverlessv2ScalingConfiguration"]
    assert scaling == {"minCapacity": 0, "maxCapacity": 8, "secondsUntilAutoPause": 3600}
    # With a floor above 0 the cluster never pauses; AWS ignores (and diffs) the timeout.
    warm = run({"mlflow-aws:db": {"minCapacity": 0.5, "maxCapacity": 4}})
    scaling = warm.one(CLUSTER).inputs["serverlessv2ScalingConfiguration"]
    assert scaling == {"minCapacity": 0.5, "maxCapacity": 4}


def test_private_database_by_default() -> None:
    r = run()
    assert r.one(INSTANCE).inputs["publiclyAccessible"] is False
    sg = r.one(SG)
    assert sg.inputs["vpcId"] == DEFAULT_VPC_ID
    [rule] = sg.inputs["ingress"]
    assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 3306, 3306)
    assert rule["cidrBlocks"] == [DEFAULT_VPC_CIDR]
    assert not rule.get("ipv6CidrBlocks")
    assert "egress" not in sg.inputs or not sg.inputs["egress"]
    assert r.one(CLUSTER).inputs["vpcSecurityGroupIds"] == [sg.id]
    assert r.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"] == DEFAULT_SUBNETS
    vpc_calls = [args for token, args in r.calls if token == "aws:ec2/getVpc:getVpc"]
    assert vpc_calls == [{"default": True}]


def test_allowed_cidrs_open_exactly_those_ranges() -> None:
    r = run({"mlflow-aws:db": {"allowedCidrs": PUBLIC_CIDRS}})
    assert r.one(INSTANCE).inputs["publiclyAccessible"] is True
    ingress = r.one(SG).inputs["ingress"]
    # The allowed ranges are added; the VPC keeps its access (VPN, EC2, ECS teammates).
    assert sorted(tuple(rule["cidrBlocks"]) for rule in ingress) == sorted(
        [(DEFAULT_VPC_CIDR,), tuple(PUBLIC_CIDRS)]
    )
    assert not any(rule.get("ipv6CidrBlocks") for rule in ingress)
    assert all((rule["fromPort"], rule["toPort"]) == (3306, 3306) for rule in ingress)


def test_configured_network_is_used_instead_of_the_default_vpc() -> None:
    r = run({"mlflow-aws:db": {"vpcId": CUSTOM_VPC_ID, "subnetIds": PRIVATE_SUBNETS}})
    assert r.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"] == PRIVATE_SUBNETS
    assert r.one(SG).inputs["vpcId"] == CUSTOM_VPC_ID
    tokens = [token for token, _ in r.calls]
    assert "aws:ec2/getSubnets:getSubnets" not in tokens
    assert [a for t, a in r.calls if t == "aws:ec2/getVpc:getVpc"] == [{"id": CUSTOM_VPC_ID}]


def test_subnets_alone_imply_their_vpc() -> None:
    r = run({"mlflow-aws:db": {"subnetIds": PRIVATE_SUBNETS}})
    assert r.one(SG).inputs["vpcId"] == CUSTOM_VPC_ID  # the mock's VPC of those subnets


def test_protected_stack_keeps_the_database() -> None:
    prod = run(stack="prod")
    cluster = prod.one(CLUSTER)
    assert cluster.inputs["deletionProtection"] is True
    assert cluster.inputs["skipFinalSnapshot"] is False
    assert cluster.inputs["finalSnapshotIdentifier"].startswith("mlflow-aws-prod-final-")
    assert cluster.inputs["backupRetentionPeriod"] == 7
    assert cluster.protect
    assert prod.one(INSTANCE).protect
    assert prod.one("aws:secretsmanager/secret:Secret").inputs["recoveryWindowInDays"] == 30


def test_unprotected_stack_can_be_torn_down() -> None:
    dev = run()
    cluster = dev.one(CLUSTER)
    assert cluster.inputs["deletionProtection"] is False
    assert cluster.inputs["skipFinalSnapshot"] is True
    assert "finalSnapshotIdentifier" not in cluster.inputs
    assert cluster.inputs["backupRetentionPeriod"] == 1
    assert not cluster.protect
    assert dev.one("aws:secretsmanager/secret:Secret").inputs["recoveryWindowInDays"] == 0


def test_protect_config_overrides_the_stack_name() -> None:
    r = run({"mlflow-aws:protect": "true"}, stack="staging")
    assert r.one(BUCKET).protect
    assert r.one(CLUSTER).inputs["deletionProtection"] is True
    r = run({"mlflow-aws:protect": "false"}, stack="prod-eu")
    assert not r.one(BUCKET).protect
    assert r.one(CLUSTER).inputs["skipFinalSnapshot"] is True


# ------------------------------------------------------------------------------ the image


def test_ecr_repository_scans_and_keeps_recent_images() -> None:
    r = run()
    repo = r.one(REPO)
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
    # Rebuilds push the same tag again (tests/test_image_push.py); consumers pin digests.
    assert repo.inputs["imageTagMutability"] == "MUTABLE"
    assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
    assert repo.inputs["forceDelete"] is True
    prod_repo = run(stack="prod").one(REPO)
    assert prod_repo.inputs["forceDelete"] is False
    assert prod_repo.protect

    policy = json.loads(r.one("aws:ecr/lifecyclePolicy:LifecyclePolicy").inputs["policy"])
    rules = sorted(policy["rules"], key=lambda rule: rule["rulePriority"])
    assert rules[0]["selection"]["tagStatus"] == "untagged"
    assert rules[0]["selection"]["countType"] == "sinceImagePushed"
    assert rules[-1]["selection"]["tagStatus"] == "any"  # "any" must have the lowest priority
    assert rules[-1]["selection"]["countType"] == "imageCountMoreThan"
    assert all(rule["action"] == {"type": "expire"} for rule in rules)


def _image(r: ProgramRun) -> Registered:
    return r.one(IMAGE)


def test_image_is_built_from_the_repository_into_the_ecr_repository() -> None:
    r = run()
    repo_url = r.one(REPO).state["repositoryUrl"]
    image = _image(r).inputs
    assert image["imageName"].startswith(f"{repo_url}:{pinned_mlflow_version()}-")
    build = image["build"]
    assert build["platform"] == "linux/amd64"
    assert build["args"] == {"MLFLOW_VERSION": pinned_mlflow_version()}
    assert (ROOT / build["context"]).resolve() == ROOT  # .dockerignore narrows it
    assert (ROOT / build["dockerfile"]).resolve() == ROOT / "docker" / "Dockerfile"
    registry = plain(image["registry"])
    assert registry["server"] == repo_url.split("/")[0]
    assert registry["username"] == "AWS"
    tokens = [a for t, a in r.calls if t == "aws:ecr/getAuthorizationToken:getAuthorizationToken"]
    assert tokens == [{"registryId": ACCOUNT}]


def test_mlflow_version_config_reaches_image_and_outputs() -> None:
    r = run({"mlflow-aws:mlflowVersion": "3.18.0"})
    image = _image(r).inputs
    assert image["build"]["args"] == {"MLFLOW_VERSION": "3.18.0"}
    assert ":3.18.0-" in image["imageName"]
    assert r.outputs["MlflowVersion"] == "3.18.0"
    assert image["imageName"] != _image(run()).inputs["imageName"]


# ------------------------------------------------------------------------------- projects


def test_projects_are_built_and_exported() -> None:
    r = run({"mlflow-aws:projects": "churn,fraud"})
    assert set(r.outputs["Projects"]) == {"churn", "fraud"}
    projects = r.of_type("mlflow-aws:projects:MlflowProject")
    assert sorted(p.name for p in projects) == ["project-churn", "project-fraud"]
    instance = r.one(INSTANCE)
    assert all(instance.urn in p.dependencies for p in projects)
    for name in ("churn", "fraud"):
        entry = r.outputs["Projects"][name]
        assert entry["ArtifactRoot"] == f"{r.outputs['ArtifactRoot']}/{name}"
        assert set(entry) == {"Database", "Username", "ArtifactRoot", "ConnectionSecretArn",
                              "PolicyArn", "ServerRoleArn"}  # fmt: skip
        assert entry["ServerRoleArn"].startswith("arn:aws:")
    # Only the operators' admin outputs are secret; no project password is exported at all.
    assert {leaf.path for leaf in r.leaves if leaf.secret} == {"DatabasePassword", "DatabaseUrl"}
    assert len(r.passwords) == 3  # admin + one per project
    assert_no_plain_secrets(r)
    assert_inputs_keep_secrets(r)
