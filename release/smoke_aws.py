"""``./dev smoke-aws``: the release check on a real AWS account (run it before every release).

It does what a platform engineer and a teammate would do, for real, on a throwaway stack:

1. creates the stack ``smoke-<random>`` (two projects, the central server, the database open to
   this machine's public IP only) with the Automation API;
2. ``pulumi up``;
3. runs the tutorial's ``tests/support/tracking_script.py`` through a laptop server
   (``python -m helper serve --runtime process``), through the central server with the client
   plugin (``MLFLOW_TRACKING_AUTH=aws-iam``) and through the helper's signing proxy
   (``serve --remote``), checking that each run landed;
4. waits for Aurora to reach 0 ACU while idle (CloudWatch ``ServerlessDatabaseCapacity``), with
   the central tasks still running and health-checked;
5. ``pulumi destroy`` and removes the stack: always, also after a failed step or Ctrl-C
   (``--keep`` leaves it for debugging and says how to destroy it).

Each step is reported with its time and an estimated cost (list prices of us-east-1 for what
runs meanwhile). The exit code is 0 only if every step passed. Needs: AWS credentials of a role
that may deploy (see README, Prerequisites) and may assume the projects' server roles, the
Pulumi CLI logged in to a backend, Docker (the image is built), a public hosted zone and a
domain name in it.

The AWS-side steps sit behind ``Account`` so that the orchestration (what runs, in which order,
what always runs, the report) is tested against a stand-in Pulumi CLI
(tests/test_smoke_aws.py); only this module's ``AwsAccount`` needs the real account.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from mlflow_aws import environment as env_names

ROOT = Path(__file__).resolve().parent.parent
TRACKING_SCRIPT = ROOT / "tests" / "support" / "tracking_script.py"
PROJECTS = ("smoke-a", "smoke-b")
SERVE_TIMEOUT_SECONDS = 900  # a first start migrates the schema; Aurora may be resuming
CENTRAL_TIMEOUT_SECONDS = 900  # DNS of the alias, the first tasks' migration
PAUSE_TIMEOUT_SECONDS = 1500  # secondsUntilAutoPause (300) plus CloudWatch's delay

# List prices, us-east-1, on-demand (the README's cost table): per hour while the stack exists.
HOURLY = {
    "load balancer": 0.0225,
    "load balancer public IPv4 (2 AZs)": 2 * 0.005,
    "Fargate tasks (2 x 0.5 vCPU, 1 GB)": 2 * 0.0247,
    "task public IPv4 (2)": 2 * 0.005,
    "Aurora Serverless v2 while awake (~1 ACU)": 0.12,
    "Secrets Manager (3 secrets)": 3 * 0.40 / 730,
}
RATE_PER_SECOND = sum(HOURLY.values()) / 3600


class StepFailed(Exception):
    """A step did not do what it should; the message says what happened."""


class Account(Protocol):
    """What the smoke run asks of AWS besides Pulumi."""

    def caller_role(self) -> str: ...  # the role name to let sign in (iamRoles)

    def public_ip(self) -> str: ...

    def tutorial_through_laptop_server(self, stack: str, project: str) -> str: ...

    def tutorial_through_plugin(self, tracking_uri: str, region: str) -> str: ...

    def tutorial_through_proxy(self, stack: str, project: str) -> str: ...

    def wait_until_paused(self, cluster_id: str, region: str, timeout: float) -> str: ...


@dataclass
class Options:
    region: str
    domain: str
    hosted_zone_id: str
    stack: str = field(default_factory=lambda: f"smoke-{secrets.token_hex(3)}")
    allow_role: str | None = None  # None: the caller's own role
    keep: bool = False


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: skipped
    seconds: float = 0.0
    cost: float = 0.0
    detail: str = ""


class Report:
    def __init__(self, out: IO[str]) -> None:
        self.steps: list[Step] = []
        self.out = out

    def run(self, name: str, action: Callable[[], str], cost_share: float = 1.0) -> bool:
        """Run one step: its time, its cost share of the stack's rate, and what it said."""
        step = Step(name)
        self.steps.append(step)
        self.out.write(f"==> {name}\n")
        self.out.flush()
        started = time.monotonic()
        try:
            step.detail = action() or ""
            step.ok = True
        except StepFailed as exc:
            step.detail, step.ok = str(exc), False
        except Exception as exc:  # an AWS or CLI error nobody foresaw: the step failed, go on
            step.detail, step.ok = f"{type(exc).__name__}: {_last_line(str(exc))}", False
        except KeyboardInterrupt:
            step.detail, step.ok = "interrupted", False
            raise
        finally:
            step.seconds = time.monotonic() - started
            step.cost = step.seconds * RATE_PER_SECOND * cost_share
            verdict = {True: "ok", False: "FAILED", None: "skipped"}[step.ok]
            self.out.write(f"    {verdict} in {step.seconds:.0f} s: {step.detail}\n")
            self.out.flush()
        return bool(step.ok)

    def skip(self, name: str, why: str) -> None:
        self.steps.append(Step(name, None, detail=why))
        self.out.write(f"==> {name}\n    skipped: {why}\n")

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def table(self) -> str:
        rows = [
            f"| {s.name} | {({True: 'ok', False: 'FAILED', None: 'skipped'})[s.ok]} | "
            f"{s.seconds:.0f} s | ${s.cost:.2f} | {s.detail} |"
            for s in self.steps
        ]
        total = sum(s.seconds for s in self.steps), sum(s.cost for s in self.steps)
        return "\n".join(
            [
                "| step | result | time | cost (estimate) | detail |",
                "|---|---|---|---|---|",
                *rows,
                f"| total | {'PASSED' if self.passed else 'FAILED'} | {total[0] / 60:.1f} min | "
                f"${total[1]:.2f} | list prices, us-east-1 |",
            ]
        )


def stack_config(options: Options, role: str, ip: str) -> dict[str, str]:
    """The throwaway stack's config: two projects whose sign-in allows ``role``, the central
    server, the database reachable from this machine only, a short auto-pause."""
    return {
        "aws:region": options.region,
        "mlflow-aws:projects": json.dumps([{"name": p, "iamRoles": [role]} for p in PROJECTS]),
        "mlflow-aws:db": json.dumps({"allowedCidrs": [f"{ip}/32"], "secondsUntilAutoPause": 300}),
        "mlflow-aws:server": json.dumps(
            {
                "enabled": True,
                "domainName": options.domain,
                "hostedZoneId": options.hosted_zone_id,
                "minTasks": 1,
                "maxTasks": 1,
            }
        ),
    }


def cluster_id(outputs: Mapping[str, Any]) -> str:
    """``<cluster>.cluster-<hash>.<region>.rds.amazonaws.com`` -> ``<cluster>``."""
    return str(outputs["DatabaseEndpoint"]).split(".", 1)[0]


def plain_outputs(stack: Any) -> dict[str, Any]:
    """The stack's outputs, secret ones left out: nothing of them is ever printed."""
    return {k: v.value for k, v in stack.outputs().items() if not v.secret}


def smoke(options: Options, account: Account, out: IO[str] = sys.stdout) -> int:
    """Run every step; destroy whatever was created unless ``--keep``. The exit code."""
    from pulumi import automation as auto

    report = Report(out)
    stack: Any = None
    outputs: dict[str, Any] = {}
    out.write(
        f"smoke-aws: stack {options.stack} in {options.region} (estimated "
        f"${RATE_PER_SECOND * 3600:.2f} per hour while it exists)\n"
    )

    def create() -> str:
        nonlocal stack
        role = options.allow_role or account.caller_role()
        ip = account.public_ip()
        try:
            stack = auto.create_stack(options.stack, work_dir=str(ROOT))
            stack.set_all_config(
                {k: auto.ConfigValue(v) for k, v in stack_config(options, role, ip).items()}
            )
        except auto.CommandError as exc:
            raise StepFailed(_last_line(str(exc))) from None
        return f"projects {', '.join(PROJECTS)}, sign-in for role {role}, MySQL from {ip}/32"

    def up() -> str:
        nonlocal outputs
        try:
            result = stack.up(on_output=lambda line: out.write(f"    {line}\n"))
        except auto.CommandError as exc:
            raise StepFailed(_last_line(str(exc))) from None
        outputs = plain_outputs(stack)
        changes = (result.summary.resource_changes or {}).get("create", 0)
        return f"{changes} resources created; {outputs.get('ServerUrl')}"

    try:
        if report.run("create the throwaway stack", create, cost_share=0):
            if report.run("pulumi up", up, cost_share=0.5):
                region = str(outputs.get("Region") or options.region)
                projects = outputs.get("Projects") or {}
                report.run(
                    "tutorial through a laptop server (process runtime)",
                    lambda: account.tutorial_through_laptop_server(options.stack, PROJECTS[0]),
                )
                report.run(
                    "tutorial through the central server (client plugin)",
                    lambda: account.tutorial_through_plugin(
                        str(projects.get(PROJECTS[0], {}).get("TrackingUri")), region
                    ),
                )
                report.run(
                    "tutorial through the central server (helper proxy)",
                    lambda: account.tutorial_through_proxy(options.stack, PROJECTS[1]),
                )
                report.run(
                    "Aurora pauses at 0 ACU while idle (tasks running)",
                    lambda: account.wait_until_paused(
                        cluster_id(outputs), region, PAUSE_TIMEOUT_SECONDS
                    ),
                )
            else:
                for name in ("the tutorials", "Aurora at 0 ACU"):
                    report.skip(name, "pulumi up failed")
    finally:
        if stack is not None and not options.keep:
            with _signals_deferred():
                _teardown(stack, report, out)
        elif stack is not None:
            out.write(
                f"--keep: the stack stays; destroy it with: cd {ROOT} && pulumi destroy "
                f"--stack {options.stack} --yes && pulumi stack rm {options.stack} --yes\n"
            )
        out.write("\n" + report.table() + "\n")
        out.flush()
    return 0 if report.passed else 1


def _teardown(stack: Any, report: Report, out: IO[str]) -> None:
    from pulumi import automation as auto

    def destroy() -> str:
        try:
            result = stack.destroy(on_output=lambda line: out.write(f"    {line}\n"))
        except auto.CommandError as exc:
            raise StepFailed(
                f"{_last_line(str(exc))}; the stack {stack.name} still holds resources: run "
                f"`pulumi destroy --stack {stack.name}` from {ROOT}"
            ) from None
        return f"{(result.summary.resource_changes or {}).get('delete', 0)} resources deleted"

    def remove() -> str:
        try:
            stack.workspace.remove_stack(stack.name)
        except auto.CommandError as exc:
            raise StepFailed(_last_line(str(exc))) from None
        return f"stack {stack.name} removed"

    if report.run("pulumi destroy", destroy, cost_share=0.5):
        report.run("remove the stack", remove, cost_share=0)
    else:
        report.skip("remove the stack", "its resources were not all destroyed")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C during the teardown would leave resources behind: say so and go on."""
    previous = signal.signal(
        signal.SIGINT,
        lambda *_: sys.stderr.write("smoke-aws: destroying the stack first; please wait\n"),
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


# -- the real account -----------------------------------------------------------------------------


def helper_argv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "helper", *argv]


def tutorial_argv() -> list[str]:
    return [sys.executable, str(TRACKING_SCRIPT)]


def runs_argv() -> list[str]:
    """Count the runs the tutorial logged, through the same tracking URI."""
    return [
        sys.executable,
        "-c",
        "import mlflow; print(len(mlflow.search_runs(search_all_experiments=True)))",
    ]


class AwsAccount:
    """The steps for real: the helper, the tutorial and AWS (boto3)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.environ = dict(environ)

    def caller_role(self) -> str:
        import boto3

        arn = boto3.client("sts").get_caller_identity()["Arn"]
        match = re.fullmatch(r"arn:[^:]+:sts::\d{12}:assumed-role/([^/]+)/.+", arn)
        if match is None:
            raise StepFailed(f"{arn} is not a role: run smoke-aws as a role, or pass --allow-role")
        if match.group(1).startswith("AWSReservedSSO_"):
            raise StepFailed(
                f"{match.group(1)} is an IAM Identity Center role, whose policies the stack "
                "cannot attach: pass --allow-role with a role you can assume"
            )
        return match.group(1)

    def public_ip(self) -> str:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as response:
            return response.read().decode().strip()

    def _tutorial(self, tracking: Mapping[str, str], timeout: float) -> str:
        env = {**self.environ, **tracking}
        deadline = time.monotonic() + timeout
        with tempfile.TemporaryDirectory() as work:
            while True:
                run = _run(tutorial_argv(), work, env, 600)
                if run.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise StepFailed(f"tracking.py failed: {_last_line(run.stderr)}")
                time.sleep(20)
            counted = _run(runs_argv(), work, env, 300)
        if counted.returncode != 0 or not counted.stdout.strip().isdigit():
            raise StepFailed(f"cannot list the runs: {_last_line(counted.stderr)}")
        if int(counted.stdout) < 1:
            raise StepFailed("tracking.py ran, but the server holds no run")
        return f"tracking.py logged its run ({counted.stdout.strip()} run(s) there)"

    @contextlib.contextmanager
    def _served(self, argv: list[str]) -> Iterator[dict[str, str]]:
        """A helper serving until the block ends; the variables of the export line it printed
        (MLFLOW_TRACKING_URI and the run's secret, MLFLOW_TRACKING_TOKEN)."""
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        try:
            deadline = time.monotonic() + SERVE_TIMEOUT_SECONDS
            seen: list[str] = []
            for line in process.stdout:
                seen.append(line.rstrip())
                if line.startswith("export MLFLOW_TRACKING_URI="):
                    words = shlex.split(line.removeprefix("export "))
                    yield dict(word.partition("=")[::2] for word in words)
                    return
                if time.monotonic() > deadline:
                    break
            raise StepFailed(f"`{shlex.join(argv)}` did not serve: {' / '.join(seen[-3:])}")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def tutorial_through_laptop_server(self, stack: str, project: str) -> str:
        argv = helper_argv(
            "serve",
            "--project",
            project,
            "--stack",
            stack,
            "--runtime",
            "process",
            "--port",
            str(_free_port()),
        )
        with self._served(argv) as exported:
            return self._tutorial(exported, 120)

    def tutorial_through_plugin(self, tracking_uri: str, region: str) -> str:
        if not tracking_uri.startswith("https://"):
            raise StepFailed(f"the stack's TrackingUri is {tracking_uri!r}")
        # here, not at the top: the plugin's module imports mlflow
        from mlflow_aws.auth import PROVIDER_NAME

        return self._tutorial(
            {
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_TRACKING_AUTH": PROVIDER_NAME,
                env_names.IAM_STS_REGION: region,
            },
            CENTRAL_TIMEOUT_SECONDS,
        )

    def tutorial_through_proxy(self, stack: str, project: str) -> str:
        argv = helper_argv(
            "serve", "--project", project, "--stack", stack, "--remote", "--port", str(_free_port())
        )
        with self._served(argv) as exported:
            return self._tutorial(exported, 120)

    def wait_until_paused(self, cluster_id: str, region: str, timeout: float) -> str:
        import datetime

        import boto3

        cloudwatch = boto3.client("cloudwatch", region_name=region)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            now = datetime.datetime.now(datetime.UTC)
            points = cloudwatch.get_metric_statistics(
                Namespace="AWS/RDS",
                MetricName="ServerlessDatabaseCapacity",
                Dimensions=[{"Name": "DBClusterIdentifier", "Value": cluster_id}],
                StartTime=now - datetime.timedelta(minutes=5),
                EndTime=now,
                Period=60,
                Statistics=["Minimum"],
            )["Datapoints"]
            if any(p["Minimum"] == 0 for p in points):
                return f"0 ACU after {(time.monotonic() - started) / 60:.1f} min idle"
            time.sleep(60)
        raise StepFailed(
            f"{cluster_id} did not reach 0 ACU within {timeout / 60:.0f} min: "
            "something holds a connection (look at the database's sessions)"
        )


def _run(
    argv: list[str], cwd: str, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="./dev smoke-aws",
        description="The release check on a real AWS account: a throwaway stack with two "
        "projects and the central server, the tutorial three ways, Aurora at 0 ACU, then "
        "destroy. Costs a few US cents to a dollar; see README, Releasing.",
    )
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION"),
        required="AWS_REGION" not in os.environ,
        help="default: $AWS_REGION",
    )
    parser.add_argument(
        "--domain", required=True, help="a name in the hosted zone, e.g. smoke.mlflow.example.com"
    )
    parser.add_argument("--hosted-zone-id", required=True, help="a public Route 53 zone")
    parser.add_argument("--stack", help="the throwaway stack's name (default smoke-<random>)")
    parser.add_argument("--allow-role", help="the role that signs in (default: yours)")
    parser.add_argument("--keep", action="store_true", help="leave the stack for debugging")
    args = parser.parse_args(argv)
    options = Options(
        args.region, args.domain, args.hosted_zone_id, allow_role=args.allow_role, keep=args.keep
    )
    if args.stack:
        options.stack = args.stack
    return options


def main(argv: list[str] | None = None) -> int:
    return smoke(parse_args(sys.argv[1:] if argv is None else argv), AwsAccount())


if __name__ == "__main__":
    sys.exit(main())
