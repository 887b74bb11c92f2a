"""A stand-in for the ``pulumi`` CLI, to test Automation API orchestration (release/smoke_aws.py).

It answers the commands the Automation API sends (``version``, ``stack init/select/output/
history/rm``, ``config set-all``, ``up``, ``destroy``) from a state directory
(``$STANDIN_PULUMI_STATE``) and records each call as a JSON line in ``calls.jsonl`` there.
``$STANDIN_PULUMI_FAIL`` names a command (``up``, ``destroy``) to fail the way the CLI does.
It writes nothing to the project directory (the real CLI would write Pulumi.<stack>.yaml).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

STATE = Path(os.environ.get("STANDIN_PULUMI_STATE", "."))
DATABASE_PASSWORD = "standin-admin-password-never-printed"


def stack_of(argv: list[str]) -> str:
    return argv[argv.index("--stack") + 1] if "--stack" in argv else ""


def load() -> dict[str, Any]:
    path = STATE / "stacks.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(stacks: dict[str, Any]) -> None:
    (STATE / "stacks.json").write_text(json.dumps(stacks))


def outputs(config: dict[str, str], show_secrets: bool) -> dict[str, Any]:
    server = json.loads(config.get("mlflow-aws:server", "{}"))
    domain = server.get("domainName", "mlflow.example.com")
    projects = [p["name"] for p in json.loads(config.get("mlflow-aws:projects", "[]"))]
    return {
        "Region": config.get("aws:region"),
        "DatabaseEndpoint": "mlflow-aws-smoke-0001.cluster-c0ffee.eu-west-1.rds.amazonaws.com",
        "DatabasePassword": DATABASE_PASSWORD if show_secrets else "[secret]",
        "ServerUrl": f"https://{domain}",
        "Projects": {p: {"TrackingUri": f"https://{domain}/{p}"} for p in projects},
    }


def fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 255


def main(argv: list[str]) -> int:
    with (STATE / "calls.jsonl").open("a") as log:
        log.write(json.dumps(argv) + "\n")
    words = [a for a in argv if not a.startswith("-")]
    stacks, name = load(), stack_of(argv)
    failing = os.environ.get("STANDIN_PULUMI_FAIL", "")
    if argv[:1] == ["version"]:
        print("v3.272.0")
        return 0
    if words[:2] == ["stack", "init"]:
        if words[2] in stacks:
            return fail(f"stack '{words[2]}' already exists")
        stacks[words[2]] = {"config": {}, "deployed": False}
    elif words[:2] == ["stack", "select"]:
        if name not in stacks:
            return fail(f"no stack named '{name}' found")
    elif words[:2] == ["config", "set-all"]:
        values = [argv[i + 1] for i, a in enumerate(argv) if a in ("--plaintext", "--secret")]
        stacks[name]["config"].update(v.split("=", 1) for v in values)
    elif words[:1] == ["up"]:
        print(f"Updating ({name}):")
        if failing == "up":
            return fail("update failed: creating ECS Service: InvalidParameterException")
        stacks[name]["deployed"] = True
        print("Resources:\n    + 120 created")
    elif words[:1] == ["destroy"]:
        print(f"Destroying ({name}):")
        if failing == "destroy":
            return fail("deleting RDS Cluster: InvalidDBClusterStateFault")
        stacks[name]["deployed"] = False
        print("Resources:\n    - 120 deleted")
    elif words[:2] == ["stack", "output"]:
        print(json.dumps(outputs(stacks[name]["config"], "--show-secrets" in argv)))
        return 0
    elif words[:2] == ["stack", "history"]:
        kind = "update" if stacks[name]["deployed"] else "destroy"
        changes = {"create": 120} if kind == "update" else {"delete": 120}
        print(
            json.dumps(
                [
                    {
                        "kind": kind,
                        "startTime": "2026-01-01T00:00:00.000Z",
                        "endTime": "2026-01-01T00:10:00.000Z",
                        "message": "",
                        "environment": {},
                        "config": {},
                        "result": "succeeded",
                        "resourceChanges": changes,
                        "version": 2,
                    }
                ]
            )
        )
        return 0
    elif words[:2] == ["stack", "rm"]:
        if stacks.get(words[2], {}).get("deployed"):
            return fail(f"'{words[2]}' still has resources; removal rejected")
        stacks.pop(words[2], None)
    else:
        return fail(f"the stand-in does not know `pulumi {' '.join(argv)}`")
    save(stacks)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
