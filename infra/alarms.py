"""CloudWatch alarms and one dashboard for the central server (README, "Alarms and the dashboard").

``Alarms`` sends every alarm (and its return to OK) to one SNS topic: the stack's own
(``<name>-topic``, with an email subscription when ``alarms.email`` is set) or
``alarms.topicArn``. Per project (``<name>-<p>-…``):

* ``5xx``: the targets' 5xx responses above ``FIVE_XX_PERCENT`` of requests, 3 of 3 minutes
  (metric math over ``HTTPCode_Target_5XX_Count`` and ``RequestCount``, missing data ok: no
  traffic is no error);
* ``unhealthy``: ``UnHealthyHostCount`` above 0 for 3 minutes;
* ``tasks-below-min``: fewer healthy targets (``HealthyHostCount``: the service's running,
  health-checked tasks) than ``server.minTasks`` for 5 minutes. ECS's own ``RunningTaskCount``
  needs Container Insights, which the cluster leaves off (billed per task);
* ``latency-p95``: ``TargetResponseTime`` p95 above ``P95_SECONDS`` for 5 of 5 minutes;
* ``gc-failed`` (with ``gc.enabled``): a log metric filter counts the gc task's failure lines
  in the project's log group; one in a day raises it.

For the stack: ``aurora-at-max``: ``ServerlessDatabaseCapacity`` at ``db.maxCapacity`` for 15
minutes (3 periods of 5); and ``<name>-dashboard`` with requests, 5xx, latency, healthy tasks
per project and the cluster's capacity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.config import AlarmsConfig, stack_slug
from infra.gc_schedule import FAILURE_PATTERN

FIVE_XX_PERCENT = 5.0
P95_SECONDS = 2.0
UNHEALTHY_MINUTES = 3
BELOW_MIN_MINUTES = 5
AURORA_MAX_MINUTES = 15
GC_FAILURE_METRIC_NAMESPACE = "mlflow-aws"
ALARM_NAME_MAX = 255


def alarm_name(stack: str, project: str | None, what: str) -> str:
    scope = f"{project}-" if project else ""
    return f"mlflow-aws-{stack_slug(stack)}-{scope}{what}"[:ALARM_NAME_MAX]


@dataclass(frozen=True)
class Threshold:
    """One alarm on one metric against a threshold: the table row every simple alarm is."""

    logical: str  # the resource's name after the component's (and the project's)
    what: str  # the alarm name's last part (alarm_name)
    description: str
    namespace: str
    metric: str
    statistic: str  # Sum, Minimum, ... or a percentile (p95: an extended statistic)
    periods: int  # evaluation periods
    comparison: str
    threshold: float
    period: int = 60  # seconds
    missing: str = "notBreaching"  # no data (no traffic) is no alarm

    def args(self, dimensions: Mapping[str, pulumi.Input[str]]) -> dict[str, Any]:
        """The MetricAlarm arguments (but the name, the actions and the tags)."""
        percentile = self.statistic.startswith("p")
        return {
            "alarm_description": self.description,
            "namespace": self.namespace,
            "metric_name": self.metric,
            **({"dimensions": dimensions} if dimensions else {}),  # a log metric has none
            "extended_statistic" if percentile else "statistic": self.statistic,
            "period": self.period,
            "evaluation_periods": self.periods,
            "comparison_operator": self.comparison,
            "threshold": self.threshold,
            "treat_missing_data": self.missing,
        }


def project_thresholds(project: str, min_tasks: int) -> list[Threshold]:
    """A project's alarms on its target group's metrics (the 5xx rate, metric math, apart)."""
    elb = "AWS/ApplicationELB"
    return [
        Threshold(
            "unhealthy", "unhealthy-targets",
            f"project {project}: a task fails its health checks ({UNHEALTHY_MINUTES} minutes)",
            elb, "UnHealthyHostCount", "Maximum", UNHEALTHY_MINUTES, "GreaterThanThreshold", 0,
        ),
        Threshold(
            "tasks-below-min", "tasks-below-min",
            f"project {project}: fewer than server.minTasks ({min_tasks}) healthy tasks "
            f"({BELOW_MIN_MINUTES} minutes)",
            elb, "HealthyHostCount", "Minimum", BELOW_MIN_MINUTES, "LessThanThreshold", min_tasks,
            missing="breaching",  # no data: no healthy target reported
        ),
        Threshold(
            "latency-p95", "latency-p95",
            f"project {project}: 95% of requests slower than {P95_SECONDS:g} s (5 minutes)",
            elb, "TargetResponseTime", "p95", 5, "GreaterThanThreshold", P95_SECONDS,
        ),
    ]  # fmt: skip


@dataclass
class AlarmedProject:
    target_group_arn_suffix: pulumi.Input[str]
    log_group_name: pulumi.Input[str]


@dataclass
class AlarmsArgs:
    stack: str
    alarms: AlarmsConfig
    projects: Mapping[str, AlarmedProject]
    load_balancer_arn_suffix: pulumi.Input[str]
    cluster_identifier: pulumi.Input[str]
    region: pulumi.Input[str]
    min_tasks: int
    max_capacity: float
    gc_enabled: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)


def dashboard_body(
    stack: str,
    region: str,
    load_balancer: str,
    cluster: str,
    target_groups: Mapping[str, str],
    max_capacity: float,
) -> str:
    widgets: list[dict[str, Any]] = []

    def metric_widget(title: str, metrics: list[list[Any]], stat: str, y: int, x: int) -> None:
        widgets.append(
            {
                "type": "metric",
                "x": x,
                "y": y,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": title,
                    "region": region,
                    "stat": stat,
                    "period": 60,
                    "view": "timeSeries",
                    "metrics": metrics,
                },
            }
        )

    def per_project(metric: str) -> list[list[Any]]:
        return [
            ["AWS/ApplicationELB", metric, "TargetGroup", tg, "LoadBalancer", load_balancer,
             {"label": project}]
            for project, tg in sorted(target_groups.items())
        ]  # fmt: skip

    metric_widget("Requests per minute", per_project("RequestCount"), "Sum", 0, 0)
    metric_widget("Target 5xx per minute", per_project("HTTPCode_Target_5XX_Count"), "Sum", 0, 12)
    metric_widget("Target response time p95 (s)", per_project("TargetResponseTime"), "p95", 6, 0)
    metric_widget("Healthy tasks", per_project("HealthyHostCount"), "Minimum", 6, 12)
    metric_widget(
        f"Aurora capacity (ACU, max {max_capacity:g})",
        [["AWS/RDS", "ServerlessDatabaseCapacity", "DBClusterIdentifier", cluster]],
        "Average",
        12,
        0,
    )
    return json.dumps({"widgets": widgets}, sort_keys=True)


class Alarms(pulumi.ComponentResource):
    topic_arn: pulumi.Output[str]
    alarm_names: list[pulumi.Output[str]]

    def __init__(self, name: str, args: AlarmsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlflow-aws:infra:Alarms", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "mlflow-aws:component": "alarms"}
        if args.alarms.topic_arn:
            topic_arn: pulumi.Output[str] = pulumi.Output.from_input(args.alarms.topic_arn)
        else:
            topic = aws.sns.Topic(
                f"{name}-topic",
                aws.sns.TopicArgs(
                    name_prefix=f"mlflow-aws-{stack_slug(args.stack)}-alarms-"[:200],
                    # AWS's managed key: alarm texts name resources, nothing secret.
                    kms_master_key_id="alias/aws/sns",
                    tags=tags,
                ),
                child,
            )
            topic_arn = topic.arn
            aws.sns.TopicPolicy(
                f"{name}-topic-policy",
                aws.sns.TopicPolicyArgs(
                    arn=topic.arn,
                    policy=topic.arn.apply(
                        lambda arn: json.dumps(
                            {
                                "Version": "2012-10-17",
                                "Statement": [
                                    {
                                        "Sid": "CloudWatchAlarms",
                                        "Effect": "Allow",
                                        "Principal": {"Service": "cloudwatch.amazonaws.com"},
                                        "Action": "sns:Publish",
                                        "Resource": arn,
                                    }
                                ],
                            },
                            sort_keys=True,
                        )
                    ),
                ),
                child,
            )
            if args.alarms.email:
                aws.sns.TopicSubscription(
                    f"{name}-email",
                    aws.sns.TopicSubscriptionArgs(
                        topic=topic.arn, protocol="email", endpoint=args.alarms.email
                    ),
                    child,
                )
        self.topic_arn = topic_arn
        self.alarm_names = []
        actions = [topic_arn]

        def alarm(logical: str, **kwargs: Any) -> None:
            created = aws.cloudwatch.MetricAlarm(
                f"{name}-{logical}",
                aws.cloudwatch.MetricAlarmArgs(
                    alarm_actions=actions, ok_actions=actions, tags=tags, **kwargs
                ),
                child,
            )
            self.alarm_names.append(created.name)

        def threshold_alarm(
            row: Threshold, project: str | None, dimensions: Mapping[str, pulumi.Input[str]]
        ) -> None:
            alarm(
                f"{project}-{row.logical}" if project else row.logical,
                name=alarm_name(args.stack, project, row.what),
                **row.args(dimensions),
            )

        lb = args.load_balancer_arn_suffix
        for p, project in args.projects.items():
            dims = {"TargetGroup": project.target_group_arn_suffix, "LoadBalancer": lb}

            def query(id_: str, metric: str, stat: str, dims: Any = dims) -> Any:
                return aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id=id_,
                    return_data=False,
                    metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
                        namespace="AWS/ApplicationELB",
                        metric_name=metric,
                        dimensions=dims,
                        period=60,
                        stat=stat,
                    ),
                )

            alarm(
                f"{p}-5xx",
                name=alarm_name(args.stack, p, "5xx"),
                alarm_description=f"project {p}: more than {FIVE_XX_PERCENT:g}% of requests "
                "answered 5xx by the MLflow tasks (3 minutes)",
                comparison_operator="GreaterThanThreshold",
                threshold=FIVE_XX_PERCENT,
                evaluation_periods=3,
                treat_missing_data="notBreaching",
                metric_queries=[
                    query("errors", "HTTPCode_Target_5XX_Count", "Sum"),
                    query("requests", "RequestCount", "Sum"),
                    aws.cloudwatch.MetricAlarmMetricQueryArgs(
                        id="rate",
                        expression="IF(requests > 0, 100 * errors / requests, 0)",
                        label="5xx percent",
                        return_data=True,
                    ),
                ],
            )
            for row in project_thresholds(p, args.min_tasks):
                threshold_alarm(row, p, dims)
            if args.gc_enabled:
                metric = f"GcFailures-{p}"
                namespace = f"{GC_FAILURE_METRIC_NAMESPACE}/{stack_slug(args.stack)}"
                aws.cloudwatch.LogMetricFilter(
                    f"{name}-{p}-gc-failures",
                    aws.cloudwatch.LogMetricFilterArgs(
                        log_group_name=project.log_group_name,
                        pattern=FAILURE_PATTERN,
                        metric_transformation=aws.cloudwatch.LogMetricFilterMetricTransformationArgs(
                            name=metric,
                            namespace=namespace,
                            value="1",
                        ),
                    ),
                    child,
                )
                gc_failed = Threshold(
                    "gc-failed", "gc-failed",
                    f"project {p}: the scheduled gc failed (its log group, stream prefix gc, "
                    "says why)",
                    namespace, metric, "Sum", 1, "GreaterThanOrEqualToThreshold", 1,
                    period=86_400,
                )  # fmt: skip
                threshold_alarm(gc_failed, p, {})

        aurora_at_max = Threshold(
            "aurora-at-max", "aurora-at-max-capacity",
            f"Aurora at db.maxCapacity ({args.max_capacity:g} ACU) for {AURORA_MAX_MINUTES} "
            "minutes: raise it, or find the load",
            "AWS/RDS", "ServerlessDatabaseCapacity", "Average", AURORA_MAX_MINUTES // 5,
            "GreaterThanOrEqualToThreshold", args.max_capacity,
            period=300,
        )  # fmt: skip
        threshold_alarm(aurora_at_max, None, {"DBClusterIdentifier": args.cluster_identifier})

        groups = pulumi.Output.all(
            **{p: project.target_group_arn_suffix for p, project in args.projects.items()}
        )
        body = pulumi.Output.all(args.region, lb, args.cluster_identifier, groups).apply(
            lambda v: dashboard_body(args.stack, v[0], v[1], v[2], v[3], args.max_capacity)
        )
        dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard",
            aws.cloudwatch.DashboardArgs(
                dashboard_name=f"mlflow-aws-{stack_slug(args.stack)}"[:255], dashboard_body=body
            ),
            child,
        )
        self.dashboard_name = dashboard.dashboard_name
        self.register_outputs({"topic_arn": self.topic_arn, "alarm_names": self.alarm_names})
