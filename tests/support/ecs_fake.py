"""A recorded fake of Amazon ECS whose tasks are real processes, for the upgrade tests.

moto's ECS keeps tasks as records: nothing runs, a task never stops by itself and has no exit
code, so it cannot show that a migration task really migrated or that a stopped service's
servers really let go of the database. This fake speaks ECS's JSON 1.1 protocol as boto3
sends it (``X-Amz-Target: AmazonEC2ContainerServiceV20141113.<Operation>``, bodies checked
against botocore's own ECS model: unknown members, missing required ones and wrong types are
refused), for the operations the upgrade uses: ``ListServices``, ``DescribeServices``,
``UpdateService``, ``ListTasks``, ``DescribeTasks``, ``RunTask``. A task definition is
registered with a ``runner``: given the container's command (an override, or ``None``) it
starts a process (an MLflow server from a venv of some version, or the entrypoint's migrate)
and returns a handle. A reconcile loop starts a service's tasks up to its desired count (a task
counts as RUNNING once its handle is healthy), stops extra ones and those of an older task
definition (SIGTERM, as ECS sends on stop), and moves exited tasks to STOPPED with their exit
code. Every call is recorded with its time, so tests can assert the order of steps.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import botocore.session

from mlflow_aws.task_container import CONTAINER_NAME
from tests.support import json_api
from tests.support.data_api_emulator import ACCOUNT, REGION, ApiError, validate

TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
_MODEL = botocore.session.get_session().get_service_model("ecs")
TASK_IP = "127.0.0.1"  # where the fake's tasks run (and connect to MySQL from)


class TaskHandle(Protocol):
    def poll(self) -> int | None: ...  # the exit code once exited

    def healthy(self) -> bool: ...

    def stop(self) -> None: ...  # SIGTERM, then wait


Runner = Callable[[list[str] | None], TaskHandle]


@dataclass
class Task:
    arn: str
    task_definition: str
    handle: TaskHandle
    group: str  # "service:<name>" or "family:<family>"
    started_by: str | None
    last_status: str = "PENDING"
    desired_status: str = "RUNNING"
    exit_code: int | None = None
    stopped_reason: str | None = None


@dataclass
class Service:
    arn: str
    name: str
    task_definition: str
    desired: int
    tasks: list[Task] = field(default_factory=list)


class FakeEcs:
    def __init__(self, cluster: str = "mlflow-aws-test") -> None:
        self.cluster_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{cluster}"
        self.runners: dict[str, Runner] = {}
        self.services: dict[str, Service] = {}
        self.tasks: dict[str, Task] = {}
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- setup ---------------------------------------------------------------------------
    def register(self, family: str, runner: Runner) -> str:
        with self._lock:
            revision = 1 + sum(1 for arn in self.runners if f"/{family}:" in arn)
            arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:{revision}"
            self.runners[arn] = runner
            return arn

    def create_service(self, name: str, task_definition: str, desired: int) -> Service:
        arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{self.cluster_arn.rsplit('/', 1)[1]}/{name}"
        with self._lock:
            service = Service(arn, name, task_definition, desired)
            self.services[arn] = service
        return service

    def wait_running(self, service: Service, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while self._running(service) < service.desired:
            if time.monotonic() > deadline:
                raise AssertionError(f"service {service.name} did not reach {service.desired}")
            time.sleep(0.2)

    def operations(self) -> list[str]:
        return [op for _, op, _ in self.calls]

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FakeEcs:
        self._server, serve = json_api.start(self._handle)
        loop = threading.Thread(target=self._reconcile_forever, daemon=True)
        loop.start()
        self._threads = [serve, loop]
        return self

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return json_api.url(self._server)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            json_api.close(self._server)
            self._server = None
        for thread in self._threads:
            thread.join(30)
        with self._lock:
            tasks = list(self.tasks.values())
        for task in tasks:
            if task.handle.poll() is None:
                task.handle.stop()

    # -- the control loop ----------------------------------------------------------------
    def _running(self, service: Service) -> int:
        with self._lock:
            return sum(1 for t in service.tasks if t.last_status == "RUNNING")

    def _launch(self, task_definition: str, command: list[str] | None, group: str,
                started_by: str | None) -> Task:  # fmt: skip
        runner = self.runners.get(task_definition)
        if runner is None:
            raise ApiError(
                "ClientException", f"Unable to describe task definition {task_definition}"
            )
        task_id = f"{next(self._ids):032x}"
        arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{self.cluster_arn.rsplit('/', 1)[1]}/{task_id}"
        task = Task(arn, task_definition, runner(command), group, started_by)
        self.tasks[arn] = task
        return task

    def _reconcile_forever(self) -> None:
        while not self._stop.wait(0.2):
            self._reconcile()

    def _reconcile(self) -> None:
        to_stop: list[Task] = []
        with self._lock:
            for task in self.tasks.values():
                if task.last_status == "STOPPED":
                    continue
                code = task.handle.poll()
                if code is not None:
                    task.last_status, task.desired_status, task.exit_code = (
                        "STOPPED",
                        "STOPPED",
                        code,
                    )
                    task.stopped_reason = (
                        task.stopped_reason or "Essential container in task exited"
                    )
                elif task.last_status == "PENDING" and task.handle.healthy():
                    task.last_status = "RUNNING"
            for service in self.services.values():
                live = [t for t in service.tasks if t.last_status != "STOPPED"]
                old = [t for t in live if t.task_definition != service.task_definition]
                current = [t for t in live if t.task_definition == service.task_definition]
                wanted = [t for t in current if t.desired_status == "RUNNING"]
                while len(wanted) < service.desired:
                    task = self._launch(service.task_definition, None, f"service:{service.name}",
                                        f"ecs-svc/{service.name}")  # fmt: skip
                    service.tasks.append(task)
                    wanted.append(task)
                extra = wanted[service.desired :]
                running_new = sum(1 for t in wanted if t.last_status == "RUNNING")
                # A new deployment replaces old tasks once its own run (or at once when the
                # service was scaled to 0).
                retire = old if (running_new >= service.desired or service.desired == 0) else []
                for task in [*extra, *retire]:
                    if task.desired_status == "RUNNING":
                        task.desired_status = "STOPPED"
                        task.stopped_reason = "Task stopped by the service (scaling or deployment)"
                        to_stop.append(task)
        for task in to_stop:
            threading.Thread(target=task.handle.stop, daemon=True).start()

    # -- the API -------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = json_api.body(handler)
        status, answer, error = 200, {}, ""
        try:
            target = handler.headers.get("X-Amz-Target", "")
            if not target.startswith(TARGET_PREFIX):
                raise ApiError("InvalidParameterException", f"unknown target {target!r}")
            operation = target[len(TARGET_PREFIX) :]
            body = json.loads(raw or b"{}")
            validate(_MODEL.operation_model(operation).input_shape, body, operation)
            with self._lock:
                self.calls.append((time.monotonic(), operation, body))
                answer = getattr(self, f"_op_{operation}")(body)
        except ApiError as exc:
            status, answer, error = 400, {"__type": exc.code, "message": exc.message}, exc.code
        except AttributeError:
            status, error = 400, "InvalidParameterException"
            answer = {"__type": error, "message": "operation not supported by the fake"}
        json_api.reply(handler, status, answer, "application/x-amz-json-1.1", error)

    def _cluster(self, body: dict[str, Any]) -> None:
        if body.get("cluster") not in (self.cluster_arn, self.cluster_arn.rsplit("/", 1)[1]):
            raise ApiError("ClusterNotFoundException", "Cluster not found.")

    def _service(self, body: dict[str, Any], key: str = "service") -> Service:
        ref = body[key]
        for service in self.services.values():
            if ref in (service.arn, service.name):
                return service
        raise ApiError("ServiceNotFoundException", "Service not found.")

    def _describe_service(self, service: Service) -> dict[str, Any]:
        live = [t for t in service.tasks if t.last_status != "STOPPED"]
        deployments = []
        for definition in dict.fromkeys(
            [service.task_definition, *(t.task_definition for t in live)]
        ):
            mine = [t for t in live if t.task_definition == definition]
            deployments.append({
                "status": "PRIMARY" if definition == service.task_definition else "ACTIVE",
                "taskDefinition": definition,
                "desiredCount": service.desired if definition == service.task_definition else 0,
                "runningCount": sum(1 for t in mine if t.last_status == "RUNNING"),
                "pendingCount": sum(1 for t in mine if t.last_status == "PENDING"),
            })  # fmt: skip
        return {
            "serviceArn": service.arn,
            "serviceName": service.name,
            "clusterArn": self.cluster_arn,
            "status": "ACTIVE",
            "taskDefinition": service.task_definition,
            "desiredCount": service.desired,
            "runningCount": sum(1 for t in live if t.last_status == "RUNNING"),
            "pendingCount": sum(1 for t in live if t.last_status == "PENDING"),
            "deployments": deployments,
        }

    def _op_ListServices(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        return {"serviceArns": sorted(self.services)}

    def _op_DescribeServices(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        found = [self._service({"service": ref}) for ref in body["services"]]
        return {"services": [self._describe_service(s) for s in found], "failures": []}

    def _op_UpdateService(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        service = self._service(body)
        if "taskDefinition" in body:
            if body["taskDefinition"] not in self.runners:
                raise ApiError("ClientException", "TaskDefinition not found.")
            service.task_definition = body["taskDefinition"]
        if "desiredCount" in body:
            service.desired = int(body["desiredCount"])
        return {"service": self._describe_service(service)}

    def _op_ListTasks(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        tasks = list(self.tasks.values())
        if "serviceName" in body:
            service = self._service(body, "serviceName")
            tasks = list(service.tasks)
        wanted = body.get("desiredStatus", "RUNNING")
        return {"taskArns": [t.arn for t in tasks if t.desired_status == wanted]}

    def _op_DescribeTasks(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        found = [self.tasks[arn] for arn in body["tasks"] if arn in self.tasks]
        return {"tasks": [self._describe_task(t) for t in found], "failures": []}

    def _describe_task(self, task: Task) -> dict[str, Any]:
        container: dict[str, Any] = {"name": CONTAINER_NAME, "lastStatus": task.last_status}
        if task.exit_code is not None:
            container["exitCode"] = task.exit_code
        described: dict[str, Any] = {
            "taskArn": task.arn,
            "clusterArn": self.cluster_arn,
            "taskDefinitionArn": task.task_definition,
            "lastStatus": task.last_status,
            "desiredStatus": task.desired_status,
            "group": task.group,
            "containers": [container],
            "attachments": [
                {
                    "type": "ElasticNetworkInterface",
                    "status": "ATTACHED",
                    "details": [{"name": "privateIPv4Address", "value": TASK_IP}],
                }
            ],
        }
        if task.started_by:
            described["startedBy"] = task.started_by
        if task.stopped_reason and task.last_status == "STOPPED":
            described["stoppedReason"] = task.stopped_reason
        return described

    def _op_RunTask(self, body: dict[str, Any]) -> dict[str, Any]:
        self._cluster(body)
        definition = body["taskDefinition"]
        command = None
        for override in body.get("overrides", {}).get("containerOverrides", []):
            if override.get("name") == CONTAINER_NAME and "command" in override:
                command = list(override["command"])
        family = definition.rsplit("/", 1)[-1].split(":")[0]
        task = self._launch(definition, command, f"family:{family}", body.get("startedBy"))
        return {"tasks": [self._describe_task(task)], "failures": []}
