"""The pure builders of the central tasks (infra/containers.py) and their roles' policy documents
(infra/iam.py), without Pulumi mocks: what ECS and IAM would receive, named for what each rule
keeps out."""

from __future__ import annotations

import json
from typing import Any

from infra import containers, iam
from infra.config import GcConfig
from infra.gc_schedule import gc_container_definitions
from mlflow_aws import environment as env_names
from mlflow_aws.bundle import KEY as BUNDLE_KEY

SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:project-churn-connection-AbCdEf"
KEK = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gateway-kek-GhIjKl"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws/dev/server@sha256:" + "a" * 64
LOGS = "/mlflow-aws/dev/churn"
ROOT = "s3://mlflow-aws-dev-bucket/churn"
ACCOUNT = "123456789012"


def service(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "image_uri": IMAGE,
        "secret_arn": SECRET,
        "log_group": LOGS,
        "domain": "MLflow.example.com",
        "region": "eu-west-1",
        "artifact_root": ROOT,
        "iam_roles": ("ci-runner",),
        "iam_groups": ("ds",),
        **overrides,
    }
    [container] = json.loads(containers.service_container_definitions("churn", **kwargs))
    return container


def gc() -> dict[str, Any]:
    [container] = json.loads(
        gc_container_definitions(
            "churn", image_uri=IMAGE, secret_arn=SECRET, log_group=LOGS, region="eu-west-1",
            artifact_root=ROOT, gc=GcConfig(enabled=True),
        )
    )  # fmt: skip
    return container


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["environment"]}


def test_the_store_uri_and_ca_reach_the_tasks_only_as_secret_references() -> None:
    for container in (service(), gc()):
        assert "MLFLOW_BACKEND_STORE_URI" not in env(container)
        assert env_names.DB_CA_BUNDLE not in env(container)
        assert container["secrets"][:2] == [
            {
                "name": "MLFLOW_BACKEND_STORE_URI",
                "valueFrom": f"{SECRET}:{BUNDLE_KEY['backend_store_uri']}::",
            },
            {
                "name": env_names.DB_CA_BUNDLE,
                "valueFrom": f"{SECRET}:{BUNDLE_KEY['database_ca_bundle']}::",
            },
        ]


def test_the_gc_task_and_the_service_run_the_same_hardened_container() -> None:
    """One builder for what they share: the image, the secrets, the logs, no capabilities."""
    s, g = service(), gc()
    for key in ("name", "image", "essential", "secrets", "linuxParameters"):
        assert s[key] == g[key], key
    assert s["linuxParameters"] == {"capabilities": {"drop": ["ALL"]}, "initProcessEnabled": True}
    assert s["logConfiguration"]["options"]["awslogs-group"] == LOGS
    assert g["logConfiguration"]["options"]["awslogs-group"] == LOGS
    assert s["logConfiguration"]["options"]["awslogs-stream-prefix"] == "mlflow"
    assert g["logConfiguration"]["options"]["awslogs-stream-prefix"] == "gc"
    assert s["command"] == ["--app-name", containers.AUTH_APP] and g["command"] == ["gc"]


def test_the_service_writes_only_its_two_task_local_volumes() -> None:
    s = service()
    assert s["readonlyRootFilesystem"] is True
    assert sorted(m["containerPath"] for m in s["mountPoints"]) == ["/home/mlflow", "/tmp"]
    assert s["portMappings"] == [
        {"containerPort": containers.CONTAINER_PORT, "hostPort": containers.CONTAINER_PORT,
         "protocol": "tcp"}
    ]  # fmt: skip


def test_an_empty_value_is_left_out_so_an_update_is_not_a_diff_forever() -> None:
    """ECS drops empty variables: sending one would show a change on every `pulumi up`."""
    e = env(service(iam_groups=()))
    assert env_names.IAM_ALLOWED_GROUPS not in e
    assert all(v for v in e.values())


def test_a_role_name_with_a_comma_is_sent_as_a_json_array_not_split() -> None:
    assert env(service(iam_roles=("a,b", "c")))[env_names.IAM_ALLOWED_ROLES] == '["a,b", "c"]'
    assert env(service(iam_roles=("a", "c")))[env_names.IAM_ALLOWED_ROLES] == "a,c"


def test_a_token_for_another_project_or_host_is_not_this_servers_audience() -> None:
    e = env(service())
    assert e[env_names.IAM_AUDIENCE] == "mlflow.example.com/churn"
    assert e["MLFLOW_SERVER_ALLOWED_HOSTS"] == "MLflow.example.com,MLflow.example.com:443"
    assert e["MLFLOW_STATIC_PREFIX"] == "/churn"


def test_a_rotated_connection_secret_makes_a_new_task_definition() -> None:
    before, after = service(connection_version="v1"), service(connection_version="v2")
    assert env(before)[env_names.CONNECTION_VERSION] == "v1"
    assert before != after


def test_the_ai_gateway_stays_off_unless_its_own_passphrase_comes_with_it() -> None:
    assert "MLFLOW_ENABLE_AI_GATEWAY" not in env(service())  # server.env's false applies
    on = service(gateway_kek_arn=KEK)
    assert env(on)["MLFLOW_ENABLE_AI_GATEWAY"] == "true"
    assert {"name": "MLFLOW_CRYPTO_KEK_PASSPHRASE", "valueFrom": f"{KEK}:Passphrase::"} in on[
        "secrets"
    ]


def test_a_bucket_with_dots_gets_a_path_style_marker_url_the_certificate_covers() -> None:
    assert containers.marker_url("s3://plain/churn", "eu-west-1") == (
        "https://plain.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in"
    )
    assert containers.marker_url("s3://a.b/churn/", "cn-north-1") == (
        "https://s3.cn-north-1.amazonaws.com.cn/a.b/churn/.mlflow-aws-sign-in"
    )


def test_a_task_definition_without_volumes_sends_none() -> None:
    args = containers.fargate_task_definition_args(
        family="f", cpu=512, memory=1024, execution_role_arn="e", task_role_arn="t",
        container_definitions="[]", tags={},
    )  # fmt: skip
    assert args.volumes is None and args.cpu == "512" and args.network_mode == "awsvpc"
    with_volumes = containers.fargate_task_definition_args(
        family="f", cpu=512, memory=1024, execution_role_arn="e", task_role_arn="t",
        container_definitions="[]", tags={}, volumes=["tmp", "home"],
    )  # fmt: skip
    volumes: Any = with_volumes.volumes
    assert [v.name for v in volumes] == ["home", "tmp"]


# -- policies ---------------------------------------------------------------------------------


def test_another_account_or_region_cannot_pass_its_tasks_the_task_role() -> None:
    """The confused-deputy guard: ECS tasks of this account and region only."""
    [statement] = json.loads(iam.task_trust_policy(ACCOUNT, "eu-west-1"))["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnLike": {"aws:SourceArn": f"arn:aws:ecs:eu-west-1:{ACCOUNT}:*"},
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
    }
    [cn] = json.loads(
        iam.task_trust_policy(ACCOUNT, "cn-north-1", "aws-cn", "ecs-tasks.amazonaws.com.cn")
    )["Statement"]
    assert cn["Principal"] == {"Service": "ecs-tasks.amazonaws.com.cn"}
    [execution] = json.loads(iam.execution_trust_policy(ACCOUNT))["Statement"]
    assert execution["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_the_execution_role_reads_its_own_secret_and_nothing_else() -> None:
    logs = f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:{LOGS}"
    statements = {
        s["Sid"]: s
        for s in json.loads(iam.execution_role_policy("arn:repo", SECRET, logs))["Statement"]
    }
    assert statements["ReadConnectionSecret"]["Resource"] == [SECRET]
    assert statements["WriteLogs"]["Resource"] == [logs, f"{logs}:*"]
    assert statements["PullServerImage"]["Resource"] == ["arn:repo"]
    with_kek = json.loads(iam.execution_role_policy("arn:repo", SECRET, logs, KEK))
    [read] = [s for s in with_kek["Statement"] if s["Sid"] == "ReadConnectionSecret"]
    assert read["Resource"] == [SECRET, KEK]


def test_the_group_lookup_reads_only_users_groups_and_identity_center_role_paths() -> None:
    both = json.loads(iam.group_lookup_policy(ACCOUNT, groups=True, sso=True))["Statement"]
    assert [(s["Action"], s["Resource"]) for s in both] == [
        (["iam:ListGroupsForUser"], [f"arn:aws:iam::{ACCOUNT}:user/*"]),
        (["iam:GetRole"], [f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/*"]),
    ]
    assert json.loads(iam.group_lookup_policy(ACCOUNT, groups=False, sso=False))["Statement"] == []


def test_the_scheduler_runs_the_gc_task_for_this_account_only() -> None:
    from infra.gc_schedule import scheduler_trust_policy

    [statement] = json.loads(scheduler_trust_policy(ACCOUNT))["Statement"]
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_a_failed_upgrade_migration_runs_in_the_services_container_and_names_its_log() -> None:
    """The upgrade gate (a dynamic provider, without infra/) overrides the command of the
    container the service's task definition runs and reads that container's exit code; its
    error points at the log group and stream that task definition writes to."""
    from types import SimpleNamespace

    import pytest

    from mlflow_aws.names import validate_name
    from mlflow_aws.task_container import log_group_name
    from projects import upgrade_provider

    container = service()
    logs = container["logConfiguration"]["options"]
    task_arn = "arn:aws:ecs:eu-west-1:123456789012:task/mlflow-aws-dev/0123abcd"
    runs: list[dict[str, Any]] = []

    def run_task(**request: Any) -> dict[str, Any]:
        runs.append(request)
        return {"tasks": [{"taskArn": task_arn}], "failures": []}

    def describe_tasks(**_: Any) -> dict[str, Any]:
        # ECS reports each container of the task definition under its own name.
        stopped = {"name": container["name"], "exitCode": 3, "reason": "schema locked"}
        return {"tasks": [{"taskArn": task_arn, "lastStatus": "STOPPED", "containers": [stopped]}]}

    aws = SimpleNamespace(ecs=SimpleNamespace(run_task=run_task, describe_tasks=describe_tasks))
    target = SimpleNamespace(
        ids=validate_name("churn"), stack="Dev", version="3.17.0", ecs_cluster_arn="cluster",
        task_definition_arn="family:1", subnets=("subnet-1",), security_groups=("sg-1",),
        assign_public_ip=False, migrate_timeout=5.0, poll_seconds=0.01,
    )  # fmt: skip
    with pytest.raises(upgrade_provider.UpgradeRefused) as refused:
        upgrade_provider._migrate(aws, target)  # type: ignore[arg-type]
    [override] = runs[0]["overrides"]["containerOverrides"]
    assert override["name"] == container["name"]
    assert "exited 3 (schema locked)" in str(refused.value)
    assert log_group_name("Dev", "churn") == "/mlflow-aws/dev/churn"  # README: logs
    assert f"its log is in {log_group_name('Dev', 'churn')}, " in str(refused.value)
    assert f"stream {logs['awslogs-stream-prefix']}/{container['name']}/0123abcd" in str(
        refused.value
    )
