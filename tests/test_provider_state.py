"""The schema provider in a stack's state stays loadable (issue 15, finding 8).

The SDK pickles the dynamic provider into every MysqlSchema's state (``__provider``) by
reference to its module, ``projects.schema_provider``. The engine later unpickles it in a
provider process (``python -u -m pulumi.dynamic``) whose working directory is the project's, an
Automation API ``work_dir`` elsewhere, or another checkout: refresh, update and destroy must
work from there. The module path is therefore a contract (never renamed), and the venv finds
the program's modules from any directory (``./dev setup`` writes ``mlflow-aws-program.pth``).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import dill

from projects.schema_provider import PROVIDER_CLASS, PROVIDER_MODULE, MysqlSchemaProvider
from tests.support.grpc_provider import ProviderServer
from tests.support.pulumi_mocks import run_program

ROOT = Path(__file__).resolve().parent.parent


def state_provider() -> str:
    """``__provider`` as the SDK registers it for a project's schema resource (what the state
    stores): serialized by the SDK itself during a program run."""
    r = run_program({"mlflow-aws:projects": ["churn"]})
    [schema] = [x for x in r.resources if x.typ == "pulumi-python:dynamic/mysql:Schema"]
    serialized = schema.inputs["__provider"]
    return str(serialized["value"] if isinstance(serialized, dict) else serialized)


def test_the_state_refers_to_the_stable_module_path() -> None:
    pickled = base64.b64decode(state_provider())
    assert PROVIDER_MODULE.encode() in pickled and PROVIDER_CLASS.encode() in pickled
    assert (MysqlSchemaProvider.__module__, MysqlSchemaProvider.__name__) == (
        PROVIDER_MODULE,
        PROVIDER_CLASS,
    )
    assert isinstance(dill.loads(pickled), MysqlSchemaProvider)  # noqa: S301 (our own state)


def test_the_engine_loads_the_state_from_another_directory(tmp_path: Path) -> None:
    """A provider process as the engine starts it for an Automation API work_dir elsewhere:
    this venv's Python, another working directory, no PYTHONPATH. It must unpickle the
    state's provider and answer (Check refuses a bad name without any AWS call)."""
    elsewhere = tmp_path / "automation-work-dir"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    server = ProviderServer(cwd=elsewhere, env=env).start()
    try:
        client = server.client(MysqlSchemaProvider(), wrap_secrets=False)
        client.serialized = state_provider()  # exactly what the state holds
        _, failures = client.check({"project": "Not A Name", "password": "x"})
        assert any(prop == "project" for prop, _ in failures), failures
        assert "ModuleNotFoundError" not in server.stderr()
    finally:
        server.cleanup()
