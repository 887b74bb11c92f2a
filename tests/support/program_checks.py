"""The Pulumi program run under the mocks with a config (``run``, cached), and the checks every
run must pass: the stack's output names, secrets kept secret in inputs and outputs."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tests.support.pulumi_mocks import (
    ECR_PASSWORD,
    ProgramRun,
    iter_strings,
    run_program,
)

SECRET_SIG = "4dabf18193072939515e22adb298388d"
OUTPUT_NAMES = {
    "ArtifactRoot",
    "DatabaseEndpoint",
    "DatabasePort",
    "DatabaseUsername",
    "DatabasePassword",
    "DatabaseUrl",
    "AdminSecretArn",
    "ImageUri",
    "Region",
    "MlflowVersion",
    "Projects",
}


@cache
def _run(config_json: str, stack: str) -> ProgramRun:
    return run_program(json.loads(config_json), stack=stack)


def run(config: dict[str, Any] | None = None, stack: str = "dev") -> ProgramRun:
    """Runs are deterministic, so identical ones are shared between tests."""
    return _run(json.dumps(config or {}, sort_keys=True), stack)


def is_secret_input(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value


def assert_inputs_keep_secrets(r: ProgramRun) -> None:
    """Every resource input that holds a password or the ECR token carries the secret marker."""
    secrets = [*r.passwords, ECR_PASSWORD]
    for res in r.resources:
        for key, value in res.inputs.items():
            if is_secret_input(value):
                continue
            for text in iter_strings(value):
                for secret in secrets:
                    assert secret not in text, f"{res.typ} {res.name}.{key} holds a plain secret"


def assert_no_plain_secrets(r: ProgramRun) -> None:
    """No stack output that is not a secret contains a generated password or the ECR token."""
    secrets = [*r.passwords, ECR_PASSWORD]
    assert r.passwords, "the mocks generated no password to look for"
    for leaf in r.leaves:
        if leaf.secret:
            continue
        for text in iter_strings(leaf.value):
            for secret in secrets:
                assert secret not in text, f"{leaf.path} leaks a secret in plain text"
