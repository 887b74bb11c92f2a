"""The scheduled gc and the alarms, as the program registers them (under Pulumi mocks).

What AWS enforces on each type is in tests/support/aws_constraints.py; here: what each resource is
for. The gc task itself (``entrypoint.sh gc`` of the image, its role limited to the project's
prefix) runs for real in tests/test_gc.py and tests/test_gc_isolation.py.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.aws_constraints import plain
from tests.support.pulumi_mocks import ACCOUNT, ProgramRun, Registered, run_program

DOMAIN = "mlflow.example.com"
SERVER = {"enabled": True, "domainName": DOMAIN, "hostedZoneId": "Z0123456789ABCDEFGHIJ",
          "minTasks": 2}  # fmt: skip
BASE = {"mlflow-aws:projects": ["churn", "fraud"], "mlflow-aws:server": SERVER}
SCHEDULE = "aws:scheduler/schedule:Schedule"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


def run(extra: dict[str, Any] | None = None) -> ProgramRun:
    return run_program(json.loads(json.dumps({**BASE, **(extra or {})})))


def alarms(r: ProgramRun) -> dict[str, Registered]:
    return {a.name: a for a in r.of_type(ALARM)}


def test_gc_is_off_by_default_and_so_is_everything_without_the_central_server() -> None:
    assert run().of_type(SCHEDULE) == []
    laptop_only = run_program({"mlflow-aws:projects": ["churn"]})
    assert laptop_only.of_type(SCHEDULE) == [] and laptop_only.of_type(ALARM) == []
    assert not laptop_only.of_type("aws:cloudwatch/dashboard:Dashboard")


def test_a_schedule_per_project_runs_the_images_gc_as_the_projects_task_role() -> None:
    r = run({"mlflow-aws:gc": {"enabled": True, "schedule": "rate(12 hours)",
                               "olderThan": "7d", "traceRetention": "90d"}})  # fmt: skip
    schedules = {s.name: s for s in r.of_type(SCHEDULE)}
    assert set(schedules) == {"gc-churn-schedule", "gc-fraud-schedule"}
    churn = schedules["gc-churn-schedule"].inputs
    assert churn["scheduleExpression"] == "rate(12 hours)"
    assert churn["scheduleExpressionTimezone"] == "UTC"
    assert churn["name"] == "mlflow-aws-dev-churn-gc"
    target = churn["target"]
    assert target["arn"] == r.by_name("tracking-cluster").state["arn"]
    assert target["roleArn"] == r.by_name("gc-churn-scheduler-role").state["arn"]
    task = r.by_name("gc-churn-task")
    assert target["ecsParameters"]["taskDefinitionArn"] == task.state["arn"]
    assert target["ecsParameters"]["networkConfiguration"]["subnets"]
    [container] = json.loads(task.inputs["containerDefinitions"])
    assert container["command"] == ["gc"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["MLFLOW_AWS_GC_OLDER_THAN"] == "7d" and env["MLFLOW_AWS_GC_TRACE_RETENTION"] == "90d"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].endswith("/churn")
    assert {s["name"] for s in container["secrets"]} == {"MLFLOW_BACKEND_STORE_URI",
                                                         "MLFLOW_AWS_DB_CA_BUNDLE"}  # fmt: skip
    assert all(s["valueFrom"].startswith(r.by_name("project-churn-connection").state["arn"])
               for s in container["secrets"])  # fmt: skip
    # The task role is the project's tasks' own (its prefix; only ECS may assume it), nothing
    # broader, and not the server role teammates become (issue 14).
    assert task.inputs["taskRoleArn"] == r.by_name("tracking-churn-task-role").state["arn"]
    assert (
        task.inputs["executionRoleArn"] == (r.by_name("tracking-churn-execution-role").state["arn"])
    )
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/mlflow-aws/dev/churn"


def test_the_scheduler_role_runs_that_task_and_passes_exactly_its_roles() -> None:
    r = run({"mlflow-aws:gc": {"enabled": True}})
    role = r.by_name("gc-churn-scheduler-role")
    [trust] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    policy = json.loads(r.by_name("gc-churn-scheduler-policy").inputs["policy"])
    run_task, pass_role = policy["Statement"]
    family = r.by_name("gc-churn-task").state["arn"].rsplit(":", 1)[0]
    assert run_task["Action"] == ["ecs:RunTask"] and run_task["Resource"] == [f"{family}:*"]
    assert (
        run_task["Condition"]["ArnEquals"]["ecs:cluster"]
        == (r.by_name("tracking-cluster").state["arn"])
    )
    assert sorted(pass_role["Resource"]) == sorted([
        r.by_name("tracking-churn-task-role").state["arn"],
        r.by_name("tracking-churn-execution-role").state["arn"],
    ])  # fmt: skip
    assert pass_role["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
    }
    assert r.by_name("gc-churn-scheduler-policy").urn in r.by_name("gc-churn-schedule").dependencies


def test_every_alarm_goes_to_the_topic_with_the_documented_thresholds() -> None:
    r = run({"mlflow-aws:alarms": {"email": "ops@example.com"},
             "mlflow-aws:gc": {"enabled": True}})  # fmt: skip
    topic = r.by_name("alarms-topic").state["arn"]
    [subscription] = r.of_type("aws:sns/topicSubscription:TopicSubscription")
    assert subscription.inputs["endpoint"] == "ops@example.com"
    found = alarms(r)
    expected = {
        f"alarms-{p}-{what}"
        for p in ("churn", "fraud")
        for what in ("5xx", "unhealthy", "tasks-below-min", "latency-p95", "gc-failed")
    }
    assert set(found) == expected | {"alarms-aurora-at-max"}  # fmt: skip
    for alarm in found.values():
        assert alarm.inputs["alarmActions"] == [topic] and alarm.inputs["okActions"] == [topic]
    below = found["alarms-churn-tasks-below-min"].inputs
    assert below["threshold"] == 2 and below["metricName"] == "HealthyHostCount"
    assert below["comparisonOperator"] == "LessThanThreshold"
    target_group = r.by_name("tracking-churn-tg").state["arnSuffix"]
    assert below["dimensions"]["TargetGroup"] == target_group
    p95 = found["alarms-churn-latency-p95"].inputs
    assert p95["extendedStatistic"] == "p95" and p95["threshold"] == 2.0
    rate = found["alarms-churn-5xx"].inputs
    assert rate["threshold"] == 5.0
    assert [q.get("expression") for q in rate["metricQueries"]][-1] == (
        "IF(requests > 0, 100 * errors / requests, 0)"
    )
    aurora = found["alarms-aurora-at-max"].inputs
    assert aurora["threshold"] == 2.0 and aurora["period"] * aurora["evaluationPeriods"] == 900
    assert (
        aurora["dimensions"]["DBClusterIdentifier"]
        == (r.by_name("metadata-cluster").state["clusterIdentifier"])
    )
    gc_failed = found["alarms-churn-gc-failed"].inputs
    [metric_filter] = [f for f in r.of_type("aws:cloudwatch/logMetricFilter:LogMetricFilter")
                       if f.name == "alarms-churn-gc-failures"]  # fmt: skip
    assert metric_filter.inputs["logGroupName"] == "/mlflow-aws/dev/churn"
    assert "mlflow-aws gc: failed" in metric_filter.inputs["pattern"]
    assert gc_failed["metricName"] == metric_filter.inputs["metricTransformation"]["name"]


def test_the_gc_failure_pattern_matches_what_a_failed_gc_logs() -> None:
    """The filter's terms are the gc's own failure lines (mlflow_aws/gc/__main__.py)."""
    import re
    from pathlib import Path

    from infra.gc_schedule import FAILURE_PATTERN

    source = (Path(__file__).resolve().parent.parent / "mlflow_aws/gc/__main__.py").read_text()
    terms = re.findall(r'\?"([^"]+)"', FAILURE_PATTERN)
    assert terms == ["mlflow-aws gc: failed", "mlflow-aws gc: not started"]
    for term in terms:
        assert f'say(f"{term.removeprefix("mlflow-aws gc: ")}:' in source, term


def test_an_existing_topic_gets_the_alarms_and_one_dashboard_per_stack() -> None:
    arn = "arn:aws:sns:eu-west-1:123456789012:ops"
    r = run({"mlflow-aws:alarms": {"topicArn": arn}})
    assert r.of_type("aws:sns/topic:Topic") == []
    assert {tuple(a.inputs["alarmActions"]) for a in r.of_type(ALARM)} == {(arn,)}
    [dashboard] = r.of_type("aws:cloudwatch/dashboard:Dashboard")
    assert dashboard.inputs["dashboardName"] == "mlflow-aws-dev"
    body = json.loads(plain(dashboard.inputs["dashboardBody"]))
    labels = {m[-1]["label"] for w in body["widgets"] for m in w["properties"]["metrics"]
              if isinstance(m[-1], dict)}  # fmt: skip
    assert labels == {"churn", "fraud"}
