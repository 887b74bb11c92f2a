"""``./dev smoke-aws`` (release/smoke_aws.py), its orchestration tested against a stand-in Pulumi
CLI (tests/support/standin_pulumi.py) and a stand-in for the account's side (the helper, the
tutorial, CloudWatch): what runs, in which order, with which config, what runs whatever happens (the
teardown), the report, and that no secret output is ever printed. The real run needs an AWS
account; it is the operator's step before every release (README, Releasing).
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from release import smoke_aws
from release.smoke_aws import Options, StepFailed, smoke
from tests.support.standin_pulumi import DATABASE_PASSWORD

ROOT = Path(__file__).resolve().parent.parent


class FakeAccount:
    """Records what the smoke run asked of AWS; ``failing`` names steps that fail."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.failing = failing

    def _record(self, name: str, *args: object) -> str:
        self.calls.append((name, args))
        if name in self.failing:
            raise StepFailed(f"{name} failed (stand-in)")
        return f"{name} ok"

    def caller_role(self) -> str:
        self._record("caller_role")
        return "release-engineer"

    def public_ip(self) -> str:
        self._record("public_ip")
        return "198.51.100.23"

    def tutorial_through_laptop_server(self, stack: str, project: str) -> str:
        return self._record("laptop", stack, project)

    def tutorial_through_plugin(self, tracking_uri: str, region: str) -> str:
        return self._record("plugin", tracking_uri, region)

    def tutorial_through_proxy(self, stack: str, project: str) -> str:
        return self._record("proxy", stack, project)

    def wait_until_paused(self, cluster_id: str, region: str, timeout: float) -> str:
        return self._record("paused", cluster_id, region)


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The stand-in as ``pulumi`` on PATH; its state directory."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    cli = bin_dir / "pulumi"
    standin_cli = ROOT / "tests" / "support" / "standin_pulumi.py"
    cli.write_text(f'#!/bin/sh\nexec {sys.executable} {standin_cli} "$@"\n')
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_PULUMI_STATE", str(state))
    before = set(ROOT.glob("Pulumi.*.yaml"))
    yield state
    assert set(ROOT.glob("Pulumi.*.yaml")) == before  # no stack file left in the repository


def calls(state: Path) -> list[list[str]]:
    """The stand-in's argv, in order (without the Automation API's --non-interactive)."""
    return [
        [a for a in json.loads(line) if a != "--non-interactive"]
        for line in (state / "calls.jsonl").read_text().splitlines()
    ]


def commands(state: Path) -> list[str]:
    """The pulumi commands, in order, without flags."""
    return [
        " ".join(w for w in call if not w.startswith("-"))[:20]
        for call in calls(state)
        if call != ["version"]
    ]


OPTIONS = Options(
    "eu-west-1", "smoke.mlflow.example.com", "Z0123456789ABCDEFGHIJ", stack="smoke-t1"
)


def test_a_green_run_does_every_step_in_order_and_removes_the_stack(standin: Path) -> None:
    account, out = FakeAccount(), io.StringIO()
    assert smoke(OPTIONS, account, out) == 0
    order = commands(standin)
    assert [c.split()[0] for c in order if c.split()[0] in ("up", "destroy")] == ["up", "destroy"]
    assert order[0].startswith("stack init smoke-t1") and order[-1].startswith("stack rm")
    assert json.loads((standin / "stacks.json").read_text()) == {}  # removed
    # The throwaway stack: two projects signing in as the caller, the central server, the
    # database open to this machine only.
    [set_all] = [c for c in calls(standin) if c[:2] == ["config", "set-all"]]
    config = dict(v.split("=", 1) for v in set_all if "=" in v)
    assert config["aws:region"] == "eu-west-1"
    assert json.loads(config["mlflow-aws:projects"]) == [
        {"name": "smoke-a", "iamRoles": ["release-engineer"]},
        {"name": "smoke-b", "iamRoles": ["release-engineer"]},
    ]
    assert json.loads(config["mlflow-aws:db"])["allowedCidrs"] == ["198.51.100.23/32"]
    server = json.loads(config["mlflow-aws:server"])
    assert (server["enabled"], server["domainName"]) == (True, "smoke.mlflow.example.com")
    assert [name for name, _ in account.calls] == [
        "caller_role",
        "public_ip",
        "laptop",
        "plugin",
        "proxy",
        "paused",
    ]
    assert ("plugin", ("https://smoke.mlflow.example.com/smoke-a", "eu-west-1")) in account.calls
    assert ("paused", ("mlflow-aws-smoke-0001", "eu-west-1")) in account.calls
    text = out.getvalue()
    for step in (
        "create the throwaway stack",
        "pulumi up",
        "laptop server",
        "client plugin",
        "helper proxy",
        "0 ACU",
        "pulumi destroy",
        "remove the stack",
    ):
        assert f"| {step}" in text or step in text, step
    assert "| total | PASSED |" in text and "$" in text
    assert DATABASE_PASSWORD not in text  # secret outputs are never printed


def test_a_failed_up_skips_the_tutorials_and_still_destroys(
    standin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_PULUMI_FAIL", "up")
    account, out = FakeAccount(), io.StringIO()
    assert smoke(OPTIONS, account, out) == 1
    order = commands(standin)
    assert [c.split()[0] for c in order if c.split()[0] in ("up", "destroy")] == ["up", "destroy"]
    assert order[-1].startswith("stack rm")
    assert not {"laptop", "plugin", "proxy", "paused"} & {n for n, _ in account.calls}
    text = out.getvalue()
    assert "InvalidParameterException" in text and "skipped: pulumi up failed" in text
    assert "| total | FAILED |" in text


def test_a_failed_step_does_not_stop_the_others_or_the_teardown(standin: Path) -> None:
    account, out = FakeAccount(failing=("plugin",)), io.StringIO()
    assert smoke(OPTIONS, account, out) == 1
    assert [n for n, _ in account.calls][-3:] == ["plugin", "proxy", "paused"]
    assert "plugin failed (stand-in)" in out.getvalue()
    assert json.loads((standin / "stacks.json").read_text()) == {}


def test_a_failed_destroy_keeps_the_stack_and_says_how_to_finish(
    standin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_PULUMI_FAIL", "destroy")
    out = io.StringIO()
    assert smoke(OPTIONS, FakeAccount(), out) == 1
    assert "stack rm" not in " ".join(commands(standin))  # never remove what still exists
    assert "pulumi destroy --stack smoke-t1" in out.getvalue()


def test_keep_leaves_the_stack_and_says_how_to_destroy_it(standin: Path) -> None:
    out = io.StringIO()
    kept = Options(**{**OPTIONS.__dict__, "keep": True})
    assert smoke(kept, FakeAccount(), out) == 0
    assert "destroy" not in " ".join(commands(standin))
    assert "pulumi destroy --stack smoke-t1 --yes" in out.getvalue()


def test_an_existing_stack_of_that_name_is_never_reused(standin: Path) -> None:
    (standin / "stacks.json").write_text(json.dumps({"smoke-t1": {"config": {}, "deployed": True}}))
    out = io.StringIO()
    assert smoke(OPTIONS, FakeAccount(), out) == 1
    assert "already exists" in out.getvalue()
    assert [c.split()[0] for c in commands(standin)] == ["stack"]  # no up, no destroy


def test_the_real_steps_build_their_commands_from_the_repository() -> None:
    assert smoke_aws.helper_argv("serve", "--remote")[1:] == ["-m", "helper", "serve", "--remote"]
    assert smoke_aws.tutorial_argv()[1] == str(ROOT / "tests" / "support" / "tracking_script.py")
    assert (
        smoke_aws.cluster_id({"DatabaseEndpoint": "c-1.cluster-x.eu-west-1.rds.amazonaws.com"})
        == "c-1"
    )
    options = smoke_aws.parse_args(
        ["--region", "eu-west-1", "--domain", "d.example.com", "--hosted-zone-id", "Z1"]
    )
    assert options.stack.startswith("smoke-") and not options.keep


def test_the_plugin_step_names_the_installed_client_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_AUTH must name the ``mlflow.request_auth_provider`` entry point this
    package installs: any other name and mlflow refuses to sign (the step fails on AWS only)."""
    from importlib.metadata import entry_points

    seen: list[Mapping[str, str]] = []
    monkeypatch.setattr(
        smoke_aws.AwsAccount, "_tutorial", lambda self, tracking, timeout: seen.append(tracking)
    )
    smoke_aws.AwsAccount({}).tutorial_through_plugin("https://mlflow.example.com/p", "eu-west-1")
    [tracking] = seen
    [plugin] = entry_points(
        group="mlflow.request_auth_provider", name=tracking["MLFLOW_TRACKING_AUTH"]
    )
    assert plugin.value == "mlflow_aws.auth.client:AwsIamRequestAuthProvider"
