"""The central server (server.enabled) under Pulumi mocks: every property of the load balancer,
the services, their roles, network and scaling, and what stays as it was when it is off.

What these prove is the program's intent as AWS would receive it; that AWS accepts it and the
tasks really serve is outside what can run here (see tests/test_server_prefix.py and
tests/test_server_rollout.py for the server itself, for real).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from helper.outputs import parse_connection_bundle
from infra.artifact_store import LOAD_BALANCER_LOG_PREFIX, LoadBalancerLogDelivery
from infra.containers import AUTH_APP
from infra.iam import PULL_ACTIONS
from infra.project_service import LOG_RETENTION_DAYS
from infra.tracking_service import TLS_POLICY
from mlflow_aws.names import name_problem
from projects.project import server_policy_document
from tests.support.aws_constraints import plain
from tests.support.program_checks import (
    OUTPUT_NAMES,
    assert_inputs_keep_secrets,
    assert_no_plain_secrets,
    run,
)
from tests.support.pulumi_mocks import (
    ACCOUNT,
    CUSTOM_VPC_ID,
    DEFAULT_SUBNETS,
    DEFAULT_VPC_CIDR,
    PRIVATE_SUBNETS,
    PUBLIC_SUBNETS,
    REGION,
    ROOT,
    ProgramRun,
    Registered,
)

ZONE = "Z0123456789ABCDEFGHIJ"
DOMAIN = "mlflow.example.com"
CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
PROJECTS = [{"name": "churn", "iamRoles": ["ci-runner", "ds-team"], "iamGroups": ["ds"]}, "fraud"]
SERVER_ON = {"enabled": True, "domainName": DOMAIN, "hostedZoneId": ZONE}
ON = {"mlflow-aws:projects": PROJECTS, "mlflow-aws:server": SERVER_ON}
OWN = {
    "mlflow-aws:projects": ["churn"],
    "mlflow-aws:db": {"vpcId": CUSTOM_VPC_ID},
    "mlflow-aws:server": {
        "enabled": True,
        "domainName": DOMAIN,
        "certificateArn": CERT,
        "internal": False,
        "allowedCidrs": ["203.0.113.0/24"],
        "subnetIds": PUBLIC_SUBNETS,
        "taskSubnetIds": PRIVATE_SUBNETS,
        "cpu": 1024,
        "memory": 2048,
        "minTasks": 2,
        "maxTasks": 5,
    },
}

SG = "aws:ec2/securityGroup:SecurityGroup"
LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
RULE = "aws:lb/listenerRule:ListenerRule"
TG = "aws:lb/targetGroup:TargetGroup"
SERVICE = "aws:ecs/service:Service"
TASK = "aws:ecs/taskDefinition:TaskDefinition"
SERVER_TYPES = {
    LB, LISTENER, RULE, TG, SERVICE, TASK, "aws:ecs/cluster:Cluster",
    "aws:acm/certificate:Certificate", "aws:route53/record:Record",
    "aws:appautoscaling/target:Target", "aws:cloudwatch/logGroup:LogGroup",
}  # fmt: skip


def on() -> ProgramRun:
    return run(ON)


def named(r: ProgramRun, name: str) -> Registered:
    return r.by_name(name)


def container(r: ProgramRun, project: str) -> dict[str, Any]:
    [definition] = json.loads(named(r, f"tracking-{project}-task").inputs["containerDefinitions"])
    return dict(definition)


def environment(r: ProgramRun, project: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(r, project)["environment"]}


def bundle(r: ProgramRun, project: str) -> dict[str, Any]:
    version = named(r, f"project-{project}-connection-version")
    return dict(json.loads(plain(version.inputs["secretString"])))


def ingress_cidrs(sg: Registered) -> list[str]:
    return [c for rule in sg.inputs.get("ingress", []) for c in rule.get("cidrBlocks", [])]


# -------------------------------------------------------------------------- server disabled


def test_disabled_server_builds_nothing_and_the_helper_reads_the_bundle() -> None:
    r = run({"mlflow-aws:projects": "churn"})
    assert not SERVER_TYPES & {res.typ for res in r.resources}
    assert [res.name for res in r.of_type(SG)] == ["metadata-sg"]  # no client group either
    assert set(r.outputs) == OUTPUT_NAMES  # no ServerUrl
    assert "TrackingUri" not in r.outputs["Projects"]["churn"]
    written = bundle(r, "churn")
    assert written["TrackingUri"] is None  # JSON null: --from-aws knows there is none
    # What the helper's --from-aws makes of that bundle: a laptop server as before.
    connection = parse_connection_bundle(written, "connection secret")
    assert connection.project == "churn" and connection.tracking_uri is None
    assert connection.backend_store_uri == written["BackendStoreUri"]


# -------------------------------------------------------------------------- outputs, bundle


def documented_outputs() -> list[str]:
    """The first column of the README's table under "Stack outputs" (terraform-aws-modules
    documents each output; so does this program)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Stack outputs\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def test_the_readme_describes_every_stack_output_and_no_other() -> None:
    """Every output of a stack with the central server (which adds ServerUrl and each
    project's TrackingUri) has a row, and every row is an output."""
    r = on()
    exported = set(r.outputs)
    exported |= {f"Projects.<name>.{key}" for p in r.outputs["Projects"].values() for key in p}
    documented = documented_outputs()
    assert len(documented) == len(set(documented)), "an output is described twice"
    assert set(documented) == exported


def test_outputs_and_bundles_carry_the_tracking_uris() -> None:
    r = on()
    assert set(r.outputs) == OUTPUT_NAMES | {"ServerUrl", "Upgrades"}
    assert r.outputs["ServerUrl"] == f"https://{DOMAIN}"
    assert not r.secret_outputs["ServerUrl"]
    for project in ("churn", "fraud"):
        uri = f"https://{DOMAIN}/{project}"
        assert r.outputs["Projects"][project]["TrackingUri"] == uri
        written = bundle(r, project)
        assert written["TrackingUri"] == uri
        assert parse_connection_bundle(written, "secret").tracking_uri == uri
    assert_no_plain_secrets(r)
    assert_inputs_keep_secrets(r)


def test_one_component_holds_every_server_resource() -> None:
    r = on()
    component = r.one("mlflow-aws:infra:TrackingService")
    # Its own children and each project's, under that project's ProjectService.
    projects = [c for c in r.children_of(component) if c.typ == "mlflow-aws:infra:ProjectService"]
    assert {p.name for p in projects} == {"tracking-churn", "tracking-fraud"}
    children = r.children_of(component) + [c for p in projects for c in r.children_of(p)]
    assert {c.typ for c in children} >= SERVER_TYPES
    assert all(c.name.startswith("tracking-") for c in children)
    assert not [res for res in r.resources if res.typ in SERVER_TYPES and res not in children]


# -------------------------------------------------------------------------- load balancer


def test_https_listener_with_the_issued_certificate_and_a_modern_policy() -> None:
    r = on()
    certificate = r.one("aws:acm/certificate:Certificate")
    assert certificate.inputs["domainName"] == DOMAIN
    assert certificate.inputs["validationMethod"] == "DNS"
    validation = r.one("aws:acm/certificateValidation:CertificateValidation")
    assert validation.inputs["certificateArn"] == certificate.state["arn"]
    record = named(r, "tracking-certificate-validation-record")
    option = certificate.state["domainValidationOptions"][0]
    assert record.inputs["zoneId"] == ZONE
    assert (record.inputs["name"], record.inputs["type"], record.inputs["records"]) == (
        option["resourceRecordName"], option["resourceRecordType"],
        [option["resourceRecordValue"]],
    )  # fmt: skip
    assert validation.inputs["validationRecordFqdns"] == [record.state["fqdn"]]

    https = named(r, "tracking-https")
    lb = r.one(LB)
    assert (https.inputs["port"], https.inputs["protocol"]) == (443, "HTTPS")
    assert https.inputs["loadBalancerArn"] == lb.state["arn"]
    assert https.inputs["certificateArn"] == certificate.state["arn"]
    assert validation.urn in https.dependencies  # only once the certificate is issued
    assert https.inputs["sslPolicy"] == TLS_POLICY == "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"
    assert https.inputs["routingHttpResponseStrictTransportSecurityHeaderValue"].startswith(
        "max-age="
    )
    [default] = https.inputs["defaultActions"]
    assert default["type"] == "fixed-response"
    assert default["fixedResponse"]["statusCode"] == "404"

    redirect = named(r, "tracking-http-redirect")
    assert (redirect.inputs["port"], redirect.inputs["protocol"]) == (80, "HTTP")
    [action] = redirect.inputs["defaultActions"]
    assert action["type"] == "redirect"
    assert action["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}
    assert len(r.of_type(LISTENER)) == 2  # nothing else listens

    alias = named(r, "tracking-alias")
    assert (alias.inputs["zoneId"], alias.inputs["name"], alias.inputs["type"]) == (
        ZONE, DOMAIN, "A"
    )  # fmt: skip
    [target] = alias.inputs["aliases"]
    assert (target["name"], target["zoneId"]) == (lb.state["dnsName"], lb.state["zoneId"])


def test_load_balancer_is_public_by_default_with_a_long_idle_timeout() -> None:
    lb = on().one(LB).inputs
    assert lb["loadBalancerType"] == "application"
    assert lb["internal"] is False  # safe: every request must sign in (aws-iam)
    assert lb["subnets"] == DEFAULT_SUBNETS  # the database's (the default VPC's)
    assert lb["idleTimeout"] >= 300  # large artifacts go through the server
    assert lb["dropInvalidHeaderFields"] is True
    assert lb["enableDeletionProtection"] is False
    assert run({**ON, "mlflow-aws:projects": "churn"}, stack="prod").one(LB).protect


def test_one_rule_and_target_group_per_project_on_its_path() -> None:
    r = on()
    https = named(r, "tracking-https")
    rules = r.of_type(RULE)
    assert len(rules) == 2
    assert len({rule.inputs["priority"] for rule in rules}) == 2
    for project in ("churn", "fraud"):
        rule = named(r, f"tracking-{project}-rule").inputs
        tg = named(r, f"tracking-{project}-tg")
        assert rule["listenerArn"] == https.state["arn"]
        [condition] = rule["conditions"]
        assert condition["pathPattern"]["values"] == [f"/{project}", f"/{project}/*"]
        assert rule["actions"] == [{"type": "forward", "targetGroupArn": tg.state["arn"]}]
        assert (tg.inputs["port"], tg.inputs["protocol"], tg.inputs["targetType"]) == (
            5000, "HTTP", "ip"
        )  # fmt: skip
        check = tg.inputs["healthCheck"]
        assert check["path"] == f"/{project}/health"  # MLflow's health: no database query
        assert check["matcher"] == "200"
        assert tg.inputs["vpcId"] == "vpc-0def4017"


# ------------------------------------------------------------------------- security groups


def test_security_groups_admit_exactly_the_chain() -> None:
    r = on()
    lb_sg, task_sg = named(r, "tracking-lb-sg"), named(r, "tracking-task-sg")
    db_sg, clients = named(r, "metadata-sg"), named(r, "metadata-clients-sg")

    assert r.one(LB).inputs["securityGroups"] == [lb_sg.id]
    ports = sorted((rule["fromPort"], rule["toPort"]) for rule in lb_sg.inputs["ingress"])
    assert ports == [(80, 80), (443, 443)]
    # Public by default, so the internet may reach the load balancer (and sign in there)...
    assert set(ingress_cidrs(lb_sg)) == {"0.0.0.0/0"}
    # ...an internal one is the VPC's unless told otherwise.
    internal = run({**ON, "mlflow-aws:server": {**SERVER_ON, "internal": True}})
    assert set(ingress_cidrs(named(internal, "tracking-lb-sg"))) == {DEFAULT_VPC_CIDR}

    [from_lb] = task_sg.inputs["ingress"]
    assert (from_lb["fromPort"], from_lb["toPort"]) == (5000, 5000)
    assert from_lb["securityGroups"] == [lb_sg.id]
    assert not from_lb.get("cidrBlocks")

    assert "ingress" not in clients.inputs or not clients.inputs["ingress"]
    db_rules = db_sg.inputs["ingress"]
    assert [rule["securityGroups"] for rule in db_rules if rule.get("securityGroups")] == [
        [clients.id]
    ]
    for rule in db_rules:
        assert (rule["fromPort"], rule["toPort"]) == (3306, 3306)

    for service in r.of_type(SERVICE):
        network = service.inputs["networkConfiguration"]
        assert network["securityGroups"] == [task_sg.id, clients.id]
        assert network["subnets"] == DEFAULT_SUBNETS
        assert network["assignPublicIp"] is True  # default VPC: public subnets, no NAT

    # No path from the internet to the tasks or the database.
    for sg in (task_sg, db_sg, clients):
        assert "0.0.0.0/0" not in ingress_cidrs(sg), sg.name
        assert not [r for r in sg.inputs.get("ingress", []) if r.get("ipv6CidrBlocks")]


# -------------------------------------------------------------------------------- services


def test_secrets_reach_the_task_by_reference_only() -> None:
    r = on()
    for project in ("churn", "fraud"):
        secret_arn = named(r, f"project-{project}-connection").state["arn"]
        c = container(r, project)
        assert c["secrets"] == [
            {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": f"{secret_arn}:BackendStoreUri::"},
            {"name": "MLFLOW_AWS_DB_CA_BUNDLE", "valueFrom": f"{secret_arn}:DatabaseCaBundle::"},
        ]
        env = environment(r, project)
        assert "MLFLOW_BACKEND_STORE_URI" not in env
        task = named(r, f"tracking-{project}-task")
        text = json.dumps(task.inputs)
        for password in r.passwords:
            assert password not in text
        assert "mysql+pymysql" not in text


def test_task_runs_the_stack_image_under_its_prefix_with_pinned_hosts() -> None:
    r = on()
    c = container(r, "churn")
    assert c["image"] == r.outputs["ImageUri"]  # the digest the helper runs
    assert c["portMappings"] == [{"containerPort": 5000, "hostPort": 5000, "protocol": "tcp"}]
    assert c["linuxParameters"]["capabilities"] == {"drop": ["ALL"]}
    assert AUTH_APP == "aws-iam" and c["command"] == ["--app-name", "aws-iam"]  # always
    env = environment(r, "churn")
    assert env["MLFLOW_STATIC_PREFIX"] == "/churn"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"{r.outputs['ArtifactRoot']}/churn"
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"] == f"{DOMAIN},{DOMAIN}:443"
    assert env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == f"https://{DOMAIN}"
    # Each project's server its own audience: a token for churn is refused by fraud's server.
    assert env["MLFLOW_AWS_IAM_AUDIENCE"] == f"{DOMAIN}/churn"
    assert environment(r, "fraud")["MLFLOW_AWS_IAM_AUDIENCE"] == f"{DOMAIN}/fraud"
    assert "MLFLOW_AWS_IAM_SERVER_ID" not in env
    assert env["MLFLOW_AWS_IAM_ALLOWED_ROLES"] == "ci-runner,ds-team"
    assert env["MLFLOW_AWS_IAM_ALLOWED_GROUPS"] == "ds"
    assert env["AWS_REGION"] == REGION
    # A project without roles or groups gets no empty variable (ECS would drop it: a diff).
    assert "MLFLOW_AWS_IAM_ALLOWED_ROLES" not in environment(r, "fraud")

    # Issue 14: a read-only root; writable only the two task-local volumes MLflow needs.
    assert c["readonlyRootFilesystem"] is True
    assert c["mountPoints"] == [
        {"sourceVolume": "home", "containerPath": "/home/mlflow", "readOnly": False},
        {"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False},
    ]
    task = named(r, "tracking-churn-task").inputs
    assert task["volumes"] == [{"name": "home"}, {"name": "tmp"}]  # no host path: ephemeral
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert task["networkMode"] == "awsvpc"
    assert (task["cpu"], task["memory"]) == ("512", "1024")
    assert task["runtimePlatform"] == {
        "operatingSystemFamily": "LINUX",
        "cpuArchitecture": "X86_64",
    }


def test_tasks_run_as_their_own_role_that_only_ecs_can_assume() -> None:
    """Issue 14: the group lookup (iam:ListGroupsForUser) was on the project's server role,
    which every teammate may assume. The tasks now run as a task role of their own that only
    ECS tasks of this account and region can assume; the server role keeps the prefix alone."""
    r = on()
    bucket_arn = r.one("aws:s3/bucket:Bucket").state["arn"]
    for project in ("churn", "fraud"):
        task_role = named(r, f"tracking-{project}-task-role")
        server_role = named(r, f"project-{project}-server-role")
        assert named(r, f"tracking-{project}-task").inputs["taskRoleArn"] == task_role.state["arn"]
        assert task_role.state["arn"] != server_role.state["arn"]
        [trust] = json.loads(task_role.inputs["assumeRolePolicy"])["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Action"] == "sts:AssumeRole"
        assert trust["Condition"] == {  # the ECS docs' confused-deputy guard
            "ArnLike": {"aws:SourceArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:*"},
            "StringEquals": {"aws:SourceAccount": ACCOUNT},
        }
        policy = named(r, f"tracking-{project}-task-policy")
        assert policy.inputs["role"] == task_role.id  # the role's id is its name
        assert json.loads(policy.inputs["policy"]) == server_policy_document(bucket_arn, project)
        # The role teammates become: the prefix only, and ECS may not assume it.
        server_trust = json.loads(server_role.inputs["assumeRolePolicy"])["Statement"]
        assert [s["Principal"] for s in server_trust] == [{"AWS": f"arn:aws:iam::{ACCOUNT}:root"}]
        on_server_role = [
            json.loads(p.inputs["policy"])
            for p in r.of_type("aws:iam/rolePolicy:RolePolicy")
            if p.inputs["role"] == server_role.id
        ]
        assert on_server_role == [server_policy_document(bucket_arn, project)]
        assert not [
            a
            for a in r.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
            if a.inputs["role"] == server_role.id
        ]

    # churn allows a group: its task role may list an IAM user's groups (nothing else more);
    # fraud allows none: nothing is added.
    lookup = named(r, "tracking-churn-group-lookup")
    assert json.loads(lookup.inputs["policy"])["Statement"] == [
        {"Sid": "AllowedGroupsOfCallers", "Effect": "Allow", "Action": ["iam:ListGroupsForUser"],
         "Resource": [f"arn:aws:iam::{ACCOUNT}:user/*"]}
    ]  # fmt: skip
    assert lookup.inputs["role"] == named(r, "tracking-churn-task-role").id
    assert not [x for x in r.resources if x.name == "tracking-fraud-group-lookup"]
    service = named(r, "tracking-churn-service")
    for waited in ("tracking-churn-task-policy", "tracking-churn-group-lookup"):
        assert named(r, waited).urn in service.dependencies


def test_execution_role_pulls_reads_its_secret_and_logs_only() -> None:
    r = on()
    repository_arn = r.one("aws:ecr/repository:Repository").state["arn"]
    for project in ("churn", "fraud"):
        role = named(r, f"tracking-{project}-execution-role")
        assert named(r, f"tracking-{project}-task").inputs["executionRoleArn"] == role.state["arn"]
        [trust] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
        policy = json.loads(named(r, f"tracking-{project}-execution-policy").inputs["policy"])
        grants = {s["Sid"]: (sorted(s["Action"]), s["Resource"]) for s in policy["Statement"]}
        secret_arn = named(r, f"project-{project}-connection").state["arn"]
        log_arn = named(r, f"tracking-{project}-logs").state["arn"]
        assert grants == {
            "EcrLogin": (["ecr:GetAuthorizationToken"], ["*"]),
            "PullServerImage": (sorted(PULL_ACTIONS), [repository_arn]),
            "ReadConnectionSecret": (["secretsmanager:GetSecretValue"], [secret_arn]),
            "WriteLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], [log_arn, f"{log_arn}:*"]),
        }
        assert all(s["Effect"] == "Allow" for s in policy["Statement"])


def test_rollouts_use_a_circuit_breaker_with_rollback() -> None:
    r = on()
    cluster = r.one("aws:ecs/cluster:Cluster")
    for project in ("churn", "fraud"):
        service = named(r, f"tracking-{project}-service")
        inputs = service.inputs
        assert inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
        assert inputs["deploymentMinimumHealthyPercent"] == 100  # old tasks stay until new ones
        assert inputs["launchType"] == "FARGATE"
        assert inputs["cluster"] == cluster.state["arn"]
        assert inputs["taskDefinition"] == named(r, f"tracking-{project}-task").state["arn"]
        assert inputs["healthCheckGracePeriodSeconds"] >= 540  # a waiting task's migration lock
        [attachment] = inputs["loadBalancers"]
        assert attachment == {
            "targetGroupArn": named(r, f"tracking-{project}-tg").state["arn"],
            "containerName": "mlflow",
            "containerPort": 5000,
        }
        assert named(r, f"tracking-{project}-rule").urn in service.dependencies
        assert named(r, f"tracking-{project}-execution-policy").urn in service.dependencies
        assert service.ignore_changes == ("desiredCount",)  # autoscaling owns the count
    settings = cluster.inputs["settings"]
    assert settings == [{"name": "containerInsights", "value": "disabled"}]


def test_a_rollout_that_does_not_reach_steady_state_fails_pulumi_up() -> None:
    """Issue 15, finding 2: the circuit breaker stops a first deployment whose tasks all fail
    and, with no earlier one to roll back to, leaves 0 tasks; without waiting for steady state
    `pulumi up` reported success and the next one had no diff."""
    r = on()
    for project in ("churn", "fraud"):
        service = named(r, f"tracking-{project}-service")
        assert service.inputs["waitForSteadyState"] is True
        # Room for a migration under the lock (540 s) and the health check grace (600 s).
        assert service.custom_timeouts == {"create": "30m", "update": "30m"}
        assert service.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}


def test_autoscaling_between_min_and_max_on_requests_and_cpu() -> None:
    for config, bounds in ((ON, (1, 3)), (OWN, (2, 5))):
        r = run(config)
        lb = r.one(LB)
        for target in r.of_type("aws:appautoscaling/target:Target"):
            project = target.name.split("-")[1]
            service = named(r, f"tracking-{project}-service")
            cluster = r.one("aws:ecs/cluster:Cluster")
            assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == bounds
            assert target.inputs["resourceId"] == (
                f"service/{cluster.state['name']}/{service.state['name']}"
            )
            assert target.inputs["scalableDimension"] == "ecs:service:DesiredCount"
            assert service.inputs["desiredCount"] == bounds[0]
            policies = {
                p.inputs["targetTrackingScalingPolicyConfiguration"][
                    "predefinedMetricSpecification"
                ]["predefinedMetricType"]: p.inputs
                for p in r.of_type("aws:appautoscaling/policy:Policy")
                if p.name.startswith(f"tracking-{project}-")
            }
            assert set(policies) == {"ALBRequestCountPerTarget", "ECSServiceAverageCPUUtilization"}
            requests = policies["ALBRequestCountPerTarget"]
            assert requests["policyType"] == "TargetTrackingScaling"
            assert requests["resourceId"] == target.inputs["resourceId"]
            tg = named(r, f"tracking-{project}-tg")
            spec = requests["targetTrackingScalingPolicyConfiguration"]
            assert spec["predefinedMetricSpecification"]["resourceLabel"] == (
                f"{lb.state['arnSuffix']}/{tg.state['arnSuffix']}"
            )
            assert spec["targetValue"] > 0


def test_logs_go_to_a_log_group_with_retention() -> None:
    r = on()
    for project in ("churn", "fraud"):
        group = named(r, f"tracking-{project}-logs").inputs
        assert group["name"] == f"/mlflow-aws/dev/{project}"
        assert group["retentionInDays"] == LOG_RETENTION_DAYS == 30
        options = container(r, project)["logConfiguration"]
        assert options["logDriver"] == "awslogs"
        assert options["options"]["awslogs-group"] == group["name"]
        assert options["options"]["awslogs-region"] == REGION


# ----------------------------------------------------------------- certificate, own network


def test_own_certificate_network_and_size() -> None:
    r = run(OWN)
    assert not r.of_type("aws:acm/certificate:Certificate")
    assert not r.of_type("aws:route53/record:Record")  # DNS is the operator's
    assert named(r, "tracking-https").inputs["certificateArn"] == CERT
    lb = r.one(LB).inputs
    assert lb["internal"] is False
    assert lb["subnets"] == PUBLIC_SUBNETS
    assert set(ingress_cidrs(named(r, "tracking-lb-sg"))) == {"203.0.113.0/24"}
    service = named(r, "tracking-churn-service").inputs
    assert service["networkConfiguration"]["subnets"] == PRIVATE_SUBNETS
    assert service["networkConfiguration"]["assignPublicIp"] is False  # behind the NAT
    task = named(r, "tracking-churn-task").inputs
    assert (task["cpu"], task["memory"]) == ("1024", "2048")
    assert r.outputs["Projects"]["churn"]["TrackingUri"] == f"https://{DOMAIN}/churn"


# -------------------------------------------------------------------------- password rotation


def test_a_password_rotation_rolls_the_tasks_and_then_retires_the_old_password() -> None:
    """A new passwordVersion is a new bundle, a new secret version id in the task definition
    (so a new deployment: ECS reads the secret only at task start), and the old password is
    retired only after the service (steady state) and the schema."""
    r = on()
    rotated_config = json.loads(json.dumps(ON))
    rotated_config["mlflow-aws:projects"] = [
        {**p, "passwordVersion": 2} if isinstance(p, dict) and p["name"] == "churn" else p
        for p in rotated_config["mlflow-aws:projects"]
    ]
    rotated = run(rotated_config)
    version = environment(r, "churn")["MLFLOW_AWS_CONNECTION_VERSION"]
    assert version == named(r, "project-churn-connection-version").state["versionId"]
    assert environment(rotated, "churn")["MLFLOW_AWS_CONNECTION_VERSION"] != version
    assert environment(rotated, "fraud") == environment(r, "fraud")  # only churn rolls
    assert named(r, "project-churn-schema").inputs["retain_previous_password"] is True
    retirement = named(r, "project-churn-password-retirement")
    depends = set(retirement.dependencies)
    assert named(r, "tracking-churn-service").urn in depends
    assert named(r, "project-churn-schema").urn in depends
    from tests.support.grpc_provider import is_secret

    assert is_secret(retirement.inputs["password"])  # the engine keeps it encrypted


def test_sso_entries_are_allowed_by_path_and_never_attached() -> None:
    """``sso:<PermissionSet>`` in iamRoles: the sign-in app allows Identity Center's roles of
    that permission set (it may read their path), and no policy attachment is tried on them;
    a role name with a comma reaches the app as a JSON array, not split in two."""
    projects = [{"name": "churn", "iamRoles": ["sso:DataScientist", "ml,team"]}]
    r = run({**ON, "mlflow-aws:projects": projects})
    assert json.loads(environment(r, "churn")["MLFLOW_AWS_IAM_ALLOWED_ROLES"]) == [
        "sso:DataScientist", "ml,team",
    ]  # fmt: skip
    attached = [x.inputs["role"] for x in r.resources
                if x.typ == "aws:iam/rolePolicyAttachment:RolePolicyAttachment"]  # fmt: skip
    assert attached == ["ml,team"]
    lookup = json.loads(named(r, "tracking-churn-group-lookup").inputs["policy"])["Statement"]
    sso_roles = f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/*"
    assert lookup == [{"Sid": "IdentityCenterRolePaths", "Effect": "Allow",
                       "Action": ["iam:GetRole"], "Resource": [sso_roles]}]  # fmt: skip


def test_the_ai_gateway_is_off_unless_the_stack_turns_it_on_with_a_kek_of_its_own() -> None:
    """High 2: MLflow's gateway is on by default; server.env turns it off (nothing in the task
    definition turns it back on). server.aiGateway true turns it on with a random KEK passphrase
    per project from Secrets Manager, not MLflow's default."""
    r = on()
    assert "MLFLOW_ENABLE_AI_GATEWAY" not in environment(r, "churn")
    assert [s["name"] for s in container(r, "churn")["secrets"]] == [
        "MLFLOW_BACKEND_STORE_URI", "MLFLOW_AWS_DB_CA_BUNDLE",
    ]  # fmt: skip
    assert not [x for x in r.resources if "gateway-kek" in x.name]

    r = run({**ON, "mlflow-aws:server": {**SERVER_ON, "aiGateway": True}})
    env = environment(r, "churn")
    assert env["MLFLOW_ENABLE_AI_GATEWAY"] == "true"
    kek = named(r, "tracking-churn-gateway-kek").state["arn"]
    secrets = {s["name"]: s["valueFrom"] for s in container(r, "churn")["secrets"]}
    assert secrets["MLFLOW_CRYPTO_KEK_PASSPHRASE"] == f"{kek}:Passphrase::"
    assert "MLFLOW_CRYPTO_KEK_PASSPHRASE" not in env  # never a plain value
    passphrase = named(r, "tracking-churn-gateway-kek-passphrase").inputs
    assert passphrase["length"] == 48
    policy = json.loads(plain(named(r, "tracking-churn-execution-policy").inputs["policy"]))
    [read] = [st for st in policy["Statement"] if st["Sid"] == "ReadConnectionSecret"]
    assert kek in read["Resource"]
    assert named(r, "tracking-fraud-gateway-kek").state["arn"] != kek  # one per project


# ------------------------------------------------------------------ load balancer access logs


def test_the_load_balancer_logs_every_request_where_no_project_can_read() -> None:
    """Issue 14 (Low): ALB access logs go to the artifact bucket under a prefix no project's
    policy covers; the bucket policy lets only the Region's log writer put objects there, and
    the load balancer waits for it (AWS writes a test object when logging is enabled).
    Source: https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html"""
    r = run(ON)
    bucket = r.one("aws:s3/bucket:Bucket").state["bucket"]
    lb = r.one(LB)
    assert lb.inputs["accessLogs"] == {
        "bucket": bucket, "prefix": LOAD_BALANCER_LOG_PREFIX, "enabled": True,
    }  # fmt: skip
    policy = r.one("aws:s3/bucketPolicy:BucketPolicy")
    assert policy.urn in lb.dependencies
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert statements["DenyInsecureTransport"]["Effect"] == "Deny"  # TLS-only still holds
    logs = statements["LoadBalancerAccessLogs"]
    assert logs["Effect"] == "Allow" and logs["Action"] == "s3:PutObject"
    assert logs["Principal"] == {"AWS": "arn:aws:iam::156460612806:root"}  # eu-west-1's ELB
    assert logs["Resource"] == (
        f"arn:aws:s3:::{bucket}/{LOAD_BALANCER_LOG_PREFIX}/AWSLogs/{ACCOUNT}/*"
    )
    # No project may read (or write) there: its prefix is not one a project name can have.
    assert name_problem(LOAD_BALANCER_LOG_PREFIX) is not None
    iam_policies = r.of_type("aws:iam/policy:Policy") + r.of_type("aws:iam/rolePolicy:RolePolicy")
    assert iam_policies
    for policy_resource in iam_policies:
        text = json.dumps(plain(policy_resource.inputs.get("policy")))
        assert LOAD_BALANCER_LOG_PREFIX not in text, policy_resource.name
        assert f"arn:aws:s3:::{bucket}/*" not in text, policy_resource.name
    # Without the central server there is no load balancer and nothing may write logs.
    off = run({"mlflow-aws:projects": PROJECTS})
    [statement] = json.loads(off.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])[
        "Statement"
    ]
    assert statement["Sid"] == "DenyInsecureTransport"


def test_the_log_writer_is_the_regions_elb_account_or_the_delivery_service() -> None:
    """Regions opened before August 2022 deliver from their ELB account (partition-aware);
    later ones (e.g. ap-south-2, eu-central-2) through the log delivery service principal."""
    assert LoadBalancerLogDelivery(ACCOUNT, "us-east-1").writer() == {
        "AWS": "arn:aws:iam::127311923021:root"
    }
    assert LoadBalancerLogDelivery(ACCOUNT, "us-gov-west-1", "aws-us-gov").writer() == {
        "AWS": "arn:aws-us-gov:iam::048591011584:root"
    }
    assert LoadBalancerLogDelivery(ACCOUNT, "cn-north-1", "aws-cn").writer() == {
        "AWS": "arn:aws-cn:iam::638102146993:root"
    }
    for newer in ("ap-south-2", "eu-central-2", "il-central-1", "ca-west-1"):
        assert LoadBalancerLogDelivery(ACCOUNT, newer).writer() == {
            "Service": "logdelivery.elasticloadbalancing.amazonaws.com"
        }, newer


_OTHER_IDLE_TIMEOUT = """
import json
import mlflow_aws.load_balancer as lb
lb.IDLE_TIMEOUT_SECONDS = 900
import helper.proxy
import infra.tracking_service
print(json.dumps([helper.proxy.UPSTREAM_TIMEOUT, infra.tracking_service.IDLE_TIMEOUT_SECONDS]))
"""


def test_the_signing_proxy_waits_on_the_server_at_least_the_load_balancers_idle_timeout() -> None:
    # A proxied artifact keeps the server silent while it moves the object to or from S3; a
    # proxy that gave up first failed a 2 GiB download the load balancer still carried.
    from helper import proxy
    from mlflow_aws import load_balancer

    lb = on().one(LB).inputs
    assert lb["idleTimeout"] == load_balancer.IDLE_TIMEOUT_SECONDS
    assert lb["idleTimeout"] <= proxy.UPSTREAM_TIMEOUT
    # Both follow the one definition: another idle timeout moves the proxy's wait with it.
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_IDLE_TIMEOUT],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    upstream_timeout, idle_timeout = json.loads(done.stdout.splitlines()[-1])
    assert idle_timeout == 900 <= upstream_timeout
