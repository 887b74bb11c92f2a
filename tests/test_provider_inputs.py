"""What each dynamic resource sends is what its provider accepts: one key list per provider.

The resources (``MysqlSchema``, ``MlflowUpgrade``) build their properties by hand, and their
providers (projects/schema_provider.py, projects/upgrade_provider.py) refuse any key outside
``INPUT_KEYS``/``STATE_KEYS`` in ``check``, which ``pulumi preview`` runs first. A key renamed
on one side only would fail a teammate's preview; here it fails a unit test. The properties are
the ones the whole program registers (under the mocks), fed to the provider's own ``check``.
"""

from __future__ import annotations

from typing import Any

from projects.schema_provider import INPUT_KEYS as SCHEMA_INPUTS
from projects.schema_provider import STATE_KEYS as SCHEMA_STATE
from projects.schema_provider import MysqlSchemaProvider
from projects.upgrade_provider import INPUT_KEYS as UPGRADE_INPUTS
from projects.upgrade_provider import STATE_KEYS as UPGRADE_STATE
from projects.upgrade_provider import MlflowUpgradeProvider
from tests.support.program_checks import SECRET_SIG, run

PROVIDERS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    "pulumi-python:dynamic/mysql:Schema": (MysqlSchemaProvider, SCHEMA_INPUTS, SCHEMA_STATE),
    "pulumi-python:dynamic/mlflow:Upgrade": (MlflowUpgradeProvider, UPGRADE_INPUTS, UPGRADE_STATE),
}
CONFIG = {
    "mlflow-aws:projects": ["churn", {"name": "fraud", "iamRoles": ["ci-runner"]}],
    "mlflow-aws:server": {"enabled": True, "domainName": "mlflow.example.com",
                          "hostedZoneId": "Z0123456789ABCDEFGHIJ"},
}  # fmt: skip


def _plain(value: Any) -> Any:
    """A secret input as the provider receives it: its value."""
    if isinstance(value, dict) and SECRET_SIG in value:
        return value["value"]
    return value


def test_every_dynamic_resource_sends_only_properties_its_provider_checks_and_accepts() -> None:
    seen: dict[str, int] = {}
    for res in run(CONFIG).resources:
        if res.typ not in PROVIDERS:
            continue
        provider, inputs, state = PROVIDERS[res.typ]
        props = {k: _plain(v) for k, v in res.inputs.items() if k != "__provider"}
        unknown = set(props) - set(inputs) - set(state)
        assert not unknown, f"{res.name} sends keys its provider does not know: {unknown}"
        result = provider().check({}, props)
        assert result.failures == [], (
            f"{res.name}: {[(f.property, f.reason) for f in result.failures]}"
        )
        seen[res.typ] = seen.get(res.typ, 0) + 1
    assert seen == dict.fromkeys(PROVIDERS, 2)  # two projects, each with a schema and a gate
