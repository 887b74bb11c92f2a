"""Stack config: what parses, what is refused, and that refusal happens before any resource."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

import pytest
import yaml

from infra.config import (
    ALARMS_KEYS,
    DB_KEYS,
    GC_KEYS,
    PROJECT_KEYS,
    SERVER_KEYS,
    TOP_LEVEL_KEYS,
    UPGRADE_KEYS,
    AlarmsConfig,
    ConfigError,
    DatabaseConfig,
    GcConfig,
    ProjectConfig,
    ServerConfig,
    StackConfig,
    UpgradeConfig,
    parse_stack_config,
    pinned_mlflow_version,
)
from tests.support.pulumi_mocks import ROOT, RecordingMocks, run_program


def parse(values: dict[str, Any], stack: str = "dev") -> StackConfig:
    raw = {f"mlflow-aws:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    return parse_stack_config(raw, stack)


def problems(values: dict[str, Any], stack: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(values, stack)
    assert caught.value.problems, "ConfigError without problems"
    for problem in caught.value.problems:
        assert problem in str(caught.value)
    return caught.value.problems


def only_problem(values: dict[str, Any], stack: str = "dev") -> str:
    found = problems(values, stack)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = parse({})
    assert config.stack == "dev"
    assert config.protect is False
    assert config.mlflow_version == pinned_mlflow_version() == "3.17.2"
    assert config.projects == ()
    db = config.db
    assert (db.min_capacity, db.max_capacity, db.seconds_until_auto_pause) == (0, 2, 300)
    assert db.allowed_cidrs == ()
    assert db.publicly_accessible is False
    assert (db.backup_retention_days, db.deletion_protection) == (1, False)


def test_prod_stacks_are_protected_unless_told_otherwise() -> None:
    prod = parse({}, stack="prod-eu")
    assert prod.protect is True
    assert (prod.db.deletion_protection, prod.db.backup_retention_days) == (True, 7)
    assert parse({"protect": "false"}, stack="prod").protect is False
    assert parse({"protect": True}, stack="staging").protect is True


def test_example_dev_stack_file_parses() -> None:
    """Pulumi hands YAML lists and objects to the program as JSON strings."""
    stack_file = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in stack_file.items()}
    config = parse_stack_config(raw, "dev")
    assert [p.name for p in config.projects] == ["churn", "fraud-detection"]
    assert config.projects[1].iam_groups == ("data-science",)
    assert config.db.allowed_cidrs == ("203.0.113.0/24",)


# ------------------------------------------------------------------------------- projects


@pytest.mark.parametrize(
    "value",
    [
        "churn,fraud",
        " churn , fraud ",
        '["churn", "fraud"]',
        ["churn", "fraud"],
        [{"name": "churn"}, "fraud"],
    ],
    ids=["comma", "comma-spaces", "json-string", "yaml-list", "objects"],
)
def test_project_list_forms(value: Any) -> None:
    assert [p.name for p in parse({"projects": value}).projects] == ["churn", "fraud"]


def test_project_options() -> None:
    [project] = parse(
        {
            "projects": [
                {
                    "name": "churn",
                    "dropDataOnRemove": True,
                    "iamRoles": ["ds-role"],
                    "passwordVersion": 3,
                    "adoptExistingSchema": True,
                }
            ]
        }
    ).projects
    assert project.drop_data_on_remove is True
    assert project.iam_roles == ("ds-role",)
    assert project.password_version == 3
    assert project.adopt_existing_schema is True
    assert parse({"projects": ["churn"]}).projects[0].adopt_existing_schema is False
    problem = only_problem({"projects": [{"name": "churn", "adoptExistingSchema": "maybe"}]})
    assert problem.startswith('mlflow-aws:projects[0].adoptExistingSchema = "maybe"')


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("admin", "mlflow_admin is the cluster's master user"),
        ("mlflow-aws", "schema mlflow_aws is the stack's own"),
        ("root", "an account of the engine"),
        ("rds-tools", "belongs to the database engine"),
        ("mysql-data", "belongs to the database engine"),
    ],
)
def test_names_that_map_onto_accounts_the_stack_or_engine_owns(name: str, owner: str) -> None:
    problem = only_problem({"projects": [name]})
    assert problem.startswith(f'mlflow-aws:projects[0].name = "{name}"'), problem
    assert "is reserved" in problem and owner in problem, problem


def test_ca_bundle_file(tmp_path: Any) -> None:
    from tests.support.pulumi_mocks import make_ca_pem

    pem = tmp_path / "rds-ca.pem"
    pem.write_text(make_ca_pem())
    assert parse({"db": {"caBundle": str(pem)}}).db.ca_bundle == pem.read_text().strip() + "\n"
    assert parse({}).db.ca_bundle is None  # AWS's bundle, fetched at deploy time
    missing = only_problem({"db": {"caBundle": str(tmp_path / "nope.pem")}})
    assert missing.startswith("mlflow-aws:db.caBundle = ") and "cannot read" in missing
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert "not a PEM list of certificates" in only_problem({"db": {"caBundle": str(junk)}})


def test_projects_must_be_a_list() -> None:
    problem = only_problem({"projects": {"name": "churn"}})
    assert problem.startswith("mlflow-aws:projects = ")
    assert '{"name": "churn"}' in problem
    assert "must be a list" in problem


def test_project_items_must_be_names_or_objects() -> None:
    problem = only_problem({"projects": ["churn", 42]})
    assert problem.startswith("mlflow-aws:projects[1] = 42")
    assert "must be a project name or an object" in problem


def test_unknown_project_option() -> None:
    problem = only_problem({"projects": [{"name": "churn", "dropData": True}]})
    assert "mlflow-aws:projects[0].dropData = true" in problem
    assert "unknown key" in problem
    assert "dropDataOnRemove" in problem  # the known keys are listed


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("Churn", "must be lowercase"),
        ("1churn", "not a valid slug"),
        ("churn-", "not a valid slug"),
        ("churn_model", "not a valid slug"),
        ("mysql", "reserved"),
        ("information-schema", "reserved"),
        ("a" * 25, "longer than 24"),
        ("çhurn", "non-ASCII"),
    ],
)
def test_invalid_project_names(name: str, rule: str) -> None:
    problem = only_problem({"projects": [name]})
    assert problem.startswith("mlflow-aws:projects[0].name = ")
    assert json.dumps(name) in problem
    assert rule in problem


def test_colliding_project_names() -> None:
    found = problems({"projects": ["churn", "fraud", "churn"]})
    assert any("'churn' is listed twice" in p and "mlflow-aws:projects" in p for p in found)
    found = problems({"projects": ["fraud-model", "Fraud-Model"]})
    assert any("collides with 'fraud-model'" in p for p in found)


# ------------------------------------------------------------------------------------- db


def test_unknown_top_level_key() -> None:
    problem = only_problem({"project": "churn"})
    assert problem.startswith('mlflow-aws:project = "churn"')
    assert "unknown key" in problem
    assert "projects" in problem


def test_unknown_db_key() -> None:
    problem = only_problem({"db": {"maxCapacty": 4}})
    assert problem.startswith("mlflow-aws:db.maxCapacty = 4")
    assert "unknown key" in problem and "maxCapacity" in problem


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_whole_internet_is_refused(cidr: str) -> None:
    problem = only_problem({"db": {"allowedCidrs": ["203.0.113.7/32", cidr]}})
    assert problem.startswith(f'mlflow-aws:db.allowedCidrs = "{cidr}"')
    assert "whole internet" in problem and "refused" in problem


@pytest.mark.parametrize("cidr", ["10.0.0.300/24", "10.0.0.1/24", "office", "203.0.113.0/33"])
def test_malformed_cidr(cidr: str) -> None:
    problem = only_problem({"db": {"allowedCidrs": [cidr]}})
    assert problem.startswith(f'mlflow-aws:db.allowedCidrs = "{cidr}"')
    assert "not a valid CIDR" in problem


def test_cidrs_are_normalised() -> None:
    db = parse({"db": {"allowedCidrs": "203.0.113.0/24, 198.51.100.7/32, 203.0.113.0/24"}}).db
    assert db.allowed_cidrs == ("203.0.113.0/24", "198.51.100.7/32")
    assert db.publicly_accessible is True


def test_ipv6_cidrs_are_refused_because_the_cluster_is_ipv4() -> None:
    problem = only_problem({"db": {"allowedCidrs": ["2001:DB8::/32"]}})
    assert problem.startswith('mlflow-aws:db.allowedCidrs = "2001:DB8::/32"')
    assert "IPv4 only" in problem


@pytest.mark.parametrize("cidr", ["0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/7"])
def test_slices_of_the_internet_are_refused(cidr: str) -> None:
    # 0.0.0.0/1 + 128.0.0.0/1 is the whole internet without saying /0.
    problem = only_problem({"db": {"allowedCidrs": [cidr]}})
    assert problem.startswith(f'mlflow-aws:db.allowedCidrs = "{cidr}"')
    assert "broader than /8" in problem and "refused" in problem


def test_min_capacity_above_max_is_refused() -> None:
    problem = only_problem({"db": {"minCapacity": 4, "maxCapacity": 2}})
    assert problem.startswith("mlflow-aws:db.minCapacity = 4")
    assert "must not exceed db.maxCapacity (2)" in problem


def test_capacity_in_half_acu_steps() -> None:
    problem = only_problem({"db": {"maxCapacity": 2.3}})
    assert problem.startswith("mlflow-aws:db.maxCapacity = 2.3")
    assert "multiple of 0.5" in problem


@pytest.mark.parametrize("seconds", [299, 86401])
def test_auto_pause_window(seconds: int) -> None:
    problem = only_problem({"db": {"secondsUntilAutoPause": seconds}})
    assert problem.startswith(f"mlflow-aws:db.secondsUntilAutoPause = {seconds}")
    assert "must be from 300 to 86400" in problem


@pytest.mark.parametrize("seconds", [300, 86400])
def test_auto_pause_bounds_are_inclusive(seconds: int) -> None:
    assert parse({"db": {"secondsUntilAutoPause": seconds}}).db.seconds_until_auto_pause == seconds


def test_bad_mlflow_version() -> None:
    problem = only_problem({"mlflowVersion": "latest"})
    assert problem.startswith('mlflow-aws:mlflowVersion = "latest"')
    assert "release version" in problem


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "db": {"allowedCidrs": ["0.0.0.0/0"], "secondsUntilAutoPause": 10},
            "projects": ["mysql"],
            "bogus": 1,
        }
    )
    keys = [p.split(" = ", 1)[0] for p in found]
    assert sorted(keys) == sorted(
        [
            "mlflow-aws:bogus",
            "mlflow-aws:db.allowedCidrs",
            "mlflow-aws:db.secondsUntilAutoPause",
            "mlflow-aws:projects[0].name",
        ]
    )


# --------------------------------------------------------------------------------- server

ZONE = "Z0123456789ABCDEFGHIJ"
CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
SERVER = {"enabled": True, "domainName": "mlflow.example.com", "hostedZoneId": ZONE}


def test_server_is_off_by_default_and_public_when_on() -> None:
    server = parse({}).server
    assert server.enabled is False
    assert server.internal is False  # every request signs in (aws-iam): safe to be public
    assert server.url is None and server.tracking_uri("churn") is None
    assert (server.cpu, server.memory, server.min_tasks, server.max_tasks) == (512, 1024, 1, 3)


def test_server_with_hosted_zone() -> None:
    server = parse({"server": SERVER}).server
    assert (server.enabled, server.internal, server.hosted_zone_id) == (True, False, ZONE)
    assert server.certificate_arn is None
    assert server.url == "https://mlflow.example.com"
    assert server.tracking_uri("churn") == "https://mlflow.example.com/churn"
    assert server.allowed_cidrs == ()
    assert server.assign_public_ip is None  # decided from the subnets' routes (infra/account.py)


def test_server_with_certificate_and_own_network() -> None:
    server = parse(
        {
            "server": {
                "enabled": "true",
                "domainName": "mlflow.internal.example.com",
                "certificateArn": CERT,
                "allowedCidrs": "10.20.0.0/16, 203.0.113.0/24",
                "cpu": 1024,
                "memory": 3072,
                "minTasks": 2,
                "maxTasks": 6,
                "subnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"],
            }
        },
        stack="prod",
    ).server
    assert server.certificate_arn == CERT and server.hosted_zone_id is None
    assert server.allowed_cidrs == ("10.20.0.0/16", "203.0.113.0/24")
    assert (server.cpu, server.memory, server.min_tasks, server.max_tasks) == (1024, 3072, 2, 6)
    assert server.subnet_ids == ("subnet-0aaa1111", "subnet-0bbb2222")
    assert server.task_subnet_ids == ()  # the load balancer's
    assert server.assign_public_ip is None  # decided from the subnets' routes
    assert parse({"server": {**SERVER, "assignPublicIp": True}, "db": {"vpcId": "vpc-0abc1234"}}
                 ).server.assign_public_ip is True  # fmt: skip
    tasks = parse({"server": {**SERVER, "taskSubnetIds": "subnet-0ccc3333, subnet-0ddd4444"}})
    assert tasks.server.task_subnet_ids == ("subnet-0ccc3333", "subnet-0ddd4444")


def test_public_load_balancer_without_https_is_refused() -> None:
    problem = only_problem(
        {"server": {"enabled": True, "internal": False, "domainName": "mlflow.example.com"}}
    )
    assert problem.startswith("mlflow-aws:server.internal = false")
    assert "public load balancer without HTTPS is refused" in problem
    assert "server.hostedZoneId" in problem and "server.certificateArn" in problem


def test_internal_load_balancer_needs_a_certificate_too() -> None:
    problem = only_problem(
        {"server": {"enabled": True, "domainName": "mlflow.example.com", "internal": True}}
    )
    assert problem.startswith("mlflow-aws:server.hostedZoneId = null")
    assert "HTTPS only" in problem


def test_enabled_server_needs_a_domain_name() -> None:
    problem = only_problem({"server": {"enabled": True, "hostedZoneId": ZONE}})
    assert problem.startswith("mlflow-aws:server.domainName = null")
    assert "https://<domainName>/<project>" in problem


def test_min_tasks_above_max_is_refused() -> None:
    problem = only_problem({"server": {**SERVER, "minTasks": 4, "maxTasks": 2}})
    assert problem == ("mlflow-aws:server.minTasks = 4: must not exceed server.maxTasks (2)")


@pytest.mark.parametrize(
    ("subnets", "rule"),
    [
        (["subnet-0aaa1111"], "at least 2 availability zones"),
        (["subnet-0aaa1111", "subnet-0aaa1111"], "lists a subnet twice"),
        (["subnet-0aaa1111", "sub-0bbb2222"], "must be subnet ids"),
        ("subnet-0aaa1111,subnet-XYZ", "must be subnet ids"),
    ],
)
def test_bad_server_subnets_are_refused(subnets: Any, rule: str) -> None:
    found = problems({"server": {**SERVER, "subnetIds": subnets}})
    assert any(p.startswith("mlflow-aws:server.subnetIds = ") and rule in p for p in found), found


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("domainName", "https://mlflow.example.com", "lowercase DNS name"),
        ("domainName", "MLflow.example.com", "lowercase DNS name"),
        ("domainName", "*.example.com", "lowercase DNS name"),
        ("domainName", "mlflow", "lowercase DNS name"),
        ("hostedZoneId", "example.com", "hosted zone id"),
        ("certificateArn", "arn:aws:acm:eu-west-1:123:certificate/x", "ACM certificate ARN"),
        ("cpu", 300, "Fargate CPU size"),
        ("memory", 8192, "not a Fargate size for cpu 512"),
        ("minTasks", 0, "must be from 1 to 20"),
        ("maxTasks", 21, "must be from 1 to 20"),
        ("allowedCidrs", ["::/0"], "IPv4 only"),
        ("allowedCidrs", [f"198.51.{i}.0/24" for i in range(26)], "at most 25 fit"),
        ("domainName", "a" * 60 + ".example.com", "at most 64"),
        ("taskSubnetIds", ["subnet-0aaa1111", "vpc-0bbb2222"], "must be subnet ids"),
        ("internal", "maybe", "true or false"),
        ("enabld", True, "unknown key"),
    ],
)
def test_server_values_are_checked(key: str, value: Any, rule: str) -> None:
    found = problems({"server": {**SERVER, key: value}})
    assert any(p.startswith(f"mlflow-aws:server.{key} = ") and rule in p for p in found), found


def test_certificate_from_another_region_is_refused() -> None:
    other = CERT.replace("eu-west-1", "us-east-1")
    raw = {
        "aws:region": "eu-west-1",
        "mlflow-aws:server": json.dumps(
            {"enabled": True, "domainName": "mlflow.example.com", "certificateArn": other}
        ),
    }
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw, "dev")
    [problem] = caught.value.problems
    assert problem.startswith(f'mlflow-aws:server.certificateArn = "{other}"')
    assert "us-east-1" in problem and "(eu-west-1)" in problem


def test_zone_and_certificate_together_are_refused() -> None:
    problem = only_problem({"server": {**SERVER, "certificateArn": CERT}})
    assert problem.startswith("mlflow-aws:server.certificateArn")
    assert "not both" in problem


def test_disabled_server_settings_are_still_checked() -> None:
    """Preparing the config before switching it on fails early, not on the day it is enabled."""
    problem = only_problem({"server": {"enabled": False, "minTasks": 3, "maxTasks": 1}})
    assert problem.startswith("mlflow-aws:server.minTasks = 3")


# -------------------------------------------------------------------------- the program


@pytest.mark.parametrize(
    "config",
    [
        {"mlflow-aws:db": {"allowedCidrs": ["0.0.0.0/0"]}},
        {"mlflow-aws:projects": "churn,Mysql"},
        {"mlflow-aws:dbb": {}},
        {"mlflow-aws:server": {"enabled": True, "internal": False, "domainName": "a.example.com"}},
        {"mlflow-aws:server": {**SERVER, "minTasks": 3, "maxTasks": 2}},
    ],
    ids=["open-cidr", "bad-project", "unknown-key", "public-without-https", "min-above-max"],
)
def test_invalid_config_registers_no_resource(config: dict[str, Any]) -> None:
    recording = RecordingMocks()
    with pytest.raises(ConfigError) as caught:
        run_program(config, stack="dev", recording=recording)
    assert "invalid stack config" in str(caught.value)
    assert recording.resources == []
    assert recording.calls == []


def test_valid_config_does_register_resources() -> None:
    """The counterpart of the test above: the same harness does see registrations."""
    recording = RecordingMocks()
    run_program({"mlflow-aws:db": {"allowedCidrs": ["203.0.113.0/24"]}}, recording=recording)
    assert len(recording.resources) > 10


# ------------------------------------------------------------ Pulumi.yaml documents the config


@dataclass(frozen=True)
class DocumentedKey:
    """One key as Pulumi.yaml documents it: ``name (type, default D)``."""

    name: str
    type: str
    default: str  # prose; a value in backquotes is the default itself
    text: str

    @property
    def literal(self) -> Any:
        """The default's value in backquotes (YAML), or MISSING when it is decided elsewhere."""
        found = re.search(r"`([^`]*)`", self.default)
        return yaml.safe_load(found.group(1)) if found else MISSING


_TOP = re.compile(r"(?P<type>[a-z][a-z ]*?), default (?P<default>.+?)\.(?: |$)", re.S)
_FIELD = re.compile(
    r"- (?P<name>\w+) \((?P<type>[a-z][a-z ]*?), default (?P<default>.+?)\)[:.]", re.S
)


def documented_config() -> tuple[dict[str, DocumentedKey], dict[str, dict[str, DocumentedKey]]]:
    """Pulumi.yaml's config section: the top-level keys, and each object's fields (the
    ``- name (type, default D): ...`` entries of its description, continuation lines joined)."""
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    top: dict[str, DocumentedKey] = {}
    fields: dict[str, dict[str, DocumentedKey]] = {}
    for full_key, spec in config.items():
        key = full_key.removeprefix("mlflow-aws:")
        description = spec["description"]
        head = _TOP.match(description)
        assert head, f"{full_key}: the description must start with 'type, default D.'"
        top[key] = DocumentedKey(key, head["type"], head["default"], description)
        entries: list[str] = []
        for line in description.splitlines():
            if line.startswith("- "):
                entries.append(line)
            elif entries and line.startswith("  "):
                entries[-1] += " " + line.strip()
        for entry in entries:
            match = _FIELD.match(entry)
            assert match, f"{full_key}: {entry!r} is not '- name (type, default D): ...'"
            name = match["name"]
            assert name not in fields.get(key, {}), f"{full_key}.{name} is documented twice"
            fields.setdefault(key, {})[name] = DocumentedKey(
                name, match["type"], match["default"], entry
            )
    return top, fields


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def is_documented_type(documented: str, annotation: Any) -> bool:
    """The documented type names the typed config's annotation (None aside: unset)."""
    if isinstance(annotation, types.UnionType):  # X | None: None is "unset"
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arms) != 1:
            return False
        (annotation,) = arms
    kind = annotation
    simple = {"boolean": bool, "integer": int, "number": float, "string": str}
    if documented in simple:
        return kind is simple[documented]
    if documented == "list of strings":
        return kind == tuple[str, ...]
    if documented == "object":
        return dataclasses.is_dataclass(kind)
    if documented == "list of names or objects":
        return kind == tuple[ProjectConfig, ...]
    return False


SECTIONS: dict[str, tuple[tuple[str, ...], type, Callable[[str, Any], dict[str, Any]]]] = {
    # key: (its fields in infra/config.py, its dataclass, the config that sets one field)
    "db": (DB_KEYS, DatabaseConfig, lambda field, value: {"db": {field: value}}),
    "server": (SERVER_KEYS, ServerConfig, lambda field, value: {"server": {field: value}}),
    "projects": (
        PROJECT_KEYS,
        ProjectConfig,
        lambda field, value: {"projects": [{"name": "churn", field: value}]},
    ),
    "upgrade": (UPGRADE_KEYS, UpgradeConfig, lambda field, value: {"upgrade": {field: value}}),
    "gc": (
        GC_KEYS,
        GcConfig,
        lambda field, value: (
            {"server": SERVER, "gc": {field: value, "enabled": True}}
            if field != "enabled"
            else {"server": SERVER, "gc": {field: value}}
        ),
    ),
    "alarms": (ALARMS_KEYS, AlarmsConfig, lambda field, value: {"alarms": {field: value}}),
}


def test_pulumi_yaml_documents_every_key_and_no_other() -> None:
    top, fields = documented_config()
    assert set(top) == set(TOP_LEVEL_KEYS)
    for section, (keys, _, _) in SECTIONS.items():
        assert list(fields.get(section, {})) == list(keys), f"mlflow-aws:{section}"
    assert set(fields) == set(SECTIONS)


def test_each_documented_type_is_the_typed_configs() -> None:
    top, fields = documented_config()
    hints = typing.get_type_hints(StackConfig)
    wrong = [key for key in TOP_LEVEL_KEYS
             if not is_documented_type(top[key].type, hints[snake(key)])]  # fmt: skip
    for section, (keys, cls, _) in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        entries = fields[section]
        wrong += [f"{section}.{key}" for key in keys
                  if not is_documented_type(entries[key].type, hints[snake(key)])]  # fmt: skip
    assert wrong == []
    # Where Pulumi.yaml also gives Pulumi's own type and default, they say the same.
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for key, documented in top.items():
        spec = config[f"mlflow-aws:{key}"]
        if "type" in spec:
            assert spec["type"] == documented.type, key
        if "default" in spec:
            assert spec["default"] == documented.literal, key


def test_each_documented_default_is_the_typed_configs() -> None:
    """A default in backquotes, set explicitly, changes nothing (and the parser's unset value is
    the dataclass's own default); a default decided at pulumi up is None or empty in the typed
    config; a field without a default is documented as required."""
    unset = parse({"projects": ["churn"]})
    assert unset.db == DatabaseConfig()
    assert unset.server == ServerConfig()
    assert unset.projects == (ProjectConfig(name="churn"),)
    top, fields = documented_config()
    wrong: list[str] = []
    for key, documented in top.items():
        if documented.literal is MISSING:
            wrong.append(f"{key}: no default in backquotes")
        elif parse({key: documented.literal}) != parse({}):
            wrong.append(f"{key} = {documented.literal!r} is not its default")
    setting: Callable[[str, Any], dict[str, Any]]
    for section, (keys, cls, setting) in SECTIONS.items():
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        for key in keys:
            documented, declared = fields[section][key], defaults[snake(key)]
            if declared.default is MISSING and declared.default_factory is MISSING:
                if documented.literal is not MISSING or "required" not in documented.text:
                    wrong.append(f"{section}.{key}: has no default, so it is required")
            elif documented.literal is MISSING:
                if declared.default not in (None, ()):
                    wrong.append(f"{section}.{key}: the typed config says {declared.default!r}")
            elif parse(setting(key, documented.literal)) != parse(setting(key, None)):
                wrong.append(f"{section}.{key} = {documented.literal!r} is not its default")
    assert wrong == []


# ------------------------------------------------ README.md's config table states the defaults

# A default cell (or one " / " part of it per key): a backquoted value, then nothing, a unit, a
# parenthesis or "; when it differs" -- the typed config's default; anything else is prose for a
# default decided at pulumi up or by another key, which the typed config leaves unset.
_README_LITERAL = re.compile(r"`(?P<value>[^`]*)`(?:$| ACU$| \(|; )")


def readme_config_rows(readme: str) -> list[tuple[list[str], str]]:
    """The config table of README.md: each row's keys (``db.minCapacity``) and default cell."""
    table = readme[readme.index("| key | default | meaning |") :].splitlines()[2:]
    rows = []
    for line in table:
        if not line.startswith("|"):
            break
        key_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rows.append((re.findall(r"`([^`]+)`", key_cell), default_cell))
    return rows


def readme_default_problems(rows: list[tuple[list[str], str]]) -> list[str]:
    """Where README.md's table misstates infra/config.py (or names a key it does not have)."""
    wrong: list[str] = []
    for keys, cell in rows:
        parts = cell.split(" / ")
        if len(parts) != len(keys):
            parts = [cell] * len(keys)  # one default for each key named
        for key, part in zip(keys, parts, strict=True):
            section, _, name = key.rpartition(".")
            known = SECTIONS[section][0] if section in SECTIONS else TOP_LEVEL_KEYS
            if name not in known:
                wrong.append(f"{key}: not a config key")
                continue
            literal = _README_LITERAL.match(part)
            if section:
                setting = SECTIONS[section][2]
                declared = {f.name: f for f in dataclasses.fields(SECTIONS[section][1])}
                unset = declared[snake(name)].default
                if literal is None:
                    if unset not in (None, ()):
                        wrong.append(f"{key}: README says {part!r}, the config {unset!r}")
                    continue
                given, default = (
                    setting(name, yaml.safe_load(literal["value"])),
                    setting(name, None),
                )
            else:
                if literal is None:
                    continue  # decided elsewhere: mlflowVersion (docker/requirements.txt)
                given, default = {key: yaml.safe_load(literal["value"])}, {}
            try:
                if parse(given) != parse(default):
                    wrong.append(f"{key}: README's {part!r} is not the config's default")
            except ConfigError as refused:
                wrong.append(f"{key}: README's {part!r} is refused: {refused}")
    return wrong


def test_the_readme_config_table_states_the_typed_configs_defaults() -> None:
    rows = readme_config_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 20 and readme_default_problems(rows) == []


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ((["server.cpu", "server.memory"], "`256` / `1024`"), "server.cpu: README's '`256`'"),
        ((["db.maxCapacity"], "`4` ACU"), "db.maxCapacity: README's '`4` ACU'"),
        ((["server.maxTasks"], "three"), "server.maxTasks: README says 'three', the config 3"),
        ((["server.maxTask"], "`3`"), "server.maxTask: not a config key"),
        ((["protect"], "`true`; on prod*"), "protect: README's '`true`; on prod*'"),
    ],
)
def test_a_default_the_readme_misstates_is_caught(row: tuple[list[str], str], why: str) -> None:
    problems = readme_default_problems([row])
    assert len(problems) == 1 and problems[0].startswith(why), problems


def test_a_default_pulumi_yaml_misstates_is_caught() -> None:
    """The comparison above can fail: a documented 3 where the typed config says 2."""
    documented = DocumentedKey("maxCapacity", "number", "`3`", "")
    assert parse({"db": {documented.name: documented.literal}}) != parse({})


def test_the_upgrade_settings_default_to_refusing_connected_clients_and_a_snapshot() -> None:
    assert parse({}).upgrade == UpgradeConfig(ignore_connected_clients=False, snapshot=True)
    chosen = parse({"upgrade": {"ignoreConnectedClients": True, "snapshot": "false"}}).upgrade
    assert chosen == UpgradeConfig(ignore_connected_clients=True, snapshot=False)
    with pytest.raises(ConfigError) as bad:
        parse({"upgrade": {"ignoreConnectedClient": True, "snapshot": "maybe"}})
    assert "upgrade.ignoreConnectedClient" in str(bad.value) and "unknown key" in str(bad.value)
    assert "upgrade.snapshot" in str(bad.value) and "must be true or false" in str(bad.value)


def test_each_project_user_has_room_for_the_laptops_and_every_central_task() -> None:
    from mlflow_aws.server_settings import server_env_defaults

    defaults = server_env_defaults()  # the file the image bakes (docker/Dockerfile copies it)
    per_server = int(defaults["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(
        defaults["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]
    )
    assert per_server == 10  # the figure the sizing comments quote
    assert parse({}).max_user_connections == 5 * per_server == 50
    assert parse({"server": {**SERVER, "maxTasks": 6}}).max_user_connections == 11 * per_server
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"connection limit ({5 * per_server}, plus {per_server} per central task)" in readme


# server.env's pool, changed alone (as an edit of the file would), in a fresh interpreter.
_OTHER_POOL = """
import json, sys
import mlflow_aws.server_settings as settings
baked = settings.server_env_defaults
settings.server_env_defaults = lambda path=settings.SERVER_ENV_PATH: {
    **baked(path),
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "3",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "4",
}
from infra.config import parse_stack_config
from projects.project import MlflowProjectArgs
from projects.schema_sql import DEFAULT_MAX_USER_CONNECTIONS
server = {"enabled": True, "domainName": "mlflow.example.com",
          "hostedZoneId": "Z0123456789ABCDEFGHIJ", "maxTasks": 6}
config = parse_stack_config({"mlflow-aws:server": json.dumps(server)}, "dev")
fields = MlflowProjectArgs.__dataclass_fields__
print(json.dumps([DEFAULT_MAX_USER_CONNECTIONS, config.max_user_connections,
                  fields["max_user_connections"].default]))
"""


def test_a_pool_size_changed_in_server_env_alone_moves_every_connection_limit_with_it() -> None:
    # A limit typed out anywhere (the SQL default, the config's sum, the component's default)
    # would stay behind when the pool grows: each must follow from server.env.
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_POOL], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    sql_default, with_tasks, component_default = json.loads(done.stdout.splitlines()[-1])
    assert sql_default == component_default == 5 * 7
    assert with_tasks == (5 + 6) * 7


def test_the_load_balancer_may_be_open_to_the_internet_the_database_never() -> None:
    server = parse({"server": {**SERVER, "allowedCidrs": ["0.0.0.0/0"]}}).server
    assert server.allowed_cidrs == ("0.0.0.0/0",)
    problem = only_problem({"db": {"allowedCidrs": ["0.0.0.0/0"]}})
    assert "opens MySQL to the whole internet and is refused" in problem
    assert "IPv4 only" in only_problem({"server": {**SERVER, "allowedCidrs": ["::/0"]}})


# ------------------------------------------------------------ what AWS refuses, said first


def test_the_engine_version_is_config_with_a_long_term_support_default() -> None:
    from infra.config import DEFAULT_ENGINE_VERSION

    assert parse({}).db.engine_version == DEFAULT_ENGINE_VERSION == "8.0.mysql_aurora.3.10.0"
    assert parse({"db": {"engineVersion": "8.0.mysql_aurora.3.09.0"}}).db.engine_version == (
        "8.0.mysql_aurora.3.09.0"
    )
    # 0.5 ACU minimum: a version without auto-pause is fine.
    assert parse({"db": {"engineVersion": "8.0.mysql_aurora.3.07.1", "minCapacity": 0.5}})


@pytest.mark.parametrize(
    ("db", "rule"),
    [
        ({"engineVersion": "3.10.0"}, "describe-db-engine-versions"),
        ({"engineVersion": "5.7.mysql_aurora.2.12.5"}, "Aurora MySQL 3 version"),
        ({"engineVersion": "8.0.mysql_aurora.3.07.1"}, "0 ACU"),  # minCapacity 0 by default
        ({"engineVersion": "8.0.mysql_aurora.3.06.0", "minCapacity": 1}, "Data API"),
    ],
)
def test_engine_versions_aws_would_refuse_are_refused(db: dict[str, Any], rule: str) -> None:
    problem = only_problem({"db": db})
    assert problem.startswith("mlflow-aws:db.engineVersion = ") and rule in problem, problem


def test_more_ranges_than_a_security_group_holds_are_refused() -> None:
    cidrs = [f"198.51.{i // 256}.{i % 256}/32" for i in range(51)]
    problem = only_problem({"db": {"allowedCidrs": cidrs}})
    assert "at most 50 fit the security group" in problem and "60 inbound rules" in problem


def test_projects_sharing_a_group_beyond_iams_attachment_limit_are_refused() -> None:
    projects = [{"name": f"p{i}", "iamGroups": ["data-science"]} for i in range(11)]
    problem = only_problem({"projects": projects})
    assert "11 projects list group 'data-science'" in problem
    assert "at most 10 managed policies" in problem
    ten = parse({"projects": projects[:10]})
    assert len(ten.projects) == 10
    roles = [{"name": f"p{i}", "iamRoles": ["ci"]} for i in range(21)]
    assert "at most 20 managed policies to a role" in only_problem({"projects": roles})


def test_projects_beyond_a_roles_default_quota_are_warned_about() -> None:
    from infra.config import role_attachment_warnings

    config = parse({"projects": [{"name": f"p{i}", "iamRoles": ["ci"]} for i in range(12)]})
    [warning] = role_attachment_warnings(config.projects)
    assert "role 'ci' gets the policies of 12 projects" in warning and "quota" in warning
    assert role_attachment_warnings(config.projects[:10]) == []


def raw(values: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def test_assume_roles_of_the_aws_provider_reach_the_config() -> None:
    role = "arn:aws:iam::123456789012:role/deployer"
    config = parse_stack_config(
        raw({"aws:assumeRoles": [{"roleArn": role, "sessionName": "ci", "externalId": "x",
                                   "duration": "1h30m", "tags": {"team": "ml"}}]}),
        "dev",
    )  # fmt: skip
    [assumed] = config.assume_roles
    assert (assumed.role_arn, assumed.session_name, assumed.external_id) == (role, "ci", "x")
    assert assumed.duration_seconds == 5400
    assert assumed.as_input() == {
        "role_arn": role, "session_name": "ci", "external_id": "x", "duration_seconds": 5400,
        "tags": {"team": "ml"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ({"aws:assumeRoles": [{"roleArn": "deployer"}]}, "must be a role ARN"),
        ({"aws:assumeRoles": [{"roleArn": "arn:aws:iam::123456789012:role/d", "duration": "1d"}]},
         "from 15m to 12h"),
        ({"aws:assumeRoles": [{"roleArn": "arn:aws:iam::123456789012:role/d", "mfa": "x"}]},
         "unknown key(s) mfa"),
        ({"aws:accessKey": "AKIAEXAMPLE"}, "AWS_ACCESS_KEY_ID"),
        ({"aws:secretKey": "very-secret-value"}, "AWS_SECRET_ACCESS_KEY"),
        ({"aws:token": "session-token-value"}, "AWS_SESSION_TOKEN"),
        ({"aws:sharedCredentialsFiles": ["/x"]}, "AWS_SHARED_CREDENTIALS_FILE"),
        ({"aws:assumeRoleWithWebIdentity": {"roleArn": "r"}}, "web_identity_token_file"),
        ({"aws:endpoints": [{"rdsdata": "http://localhost:4566"}]}, "AWS_ENDPOINT_URL_RDS_DATA"),
    ],
)  # fmt: skip
def test_identity_settings_the_schema_provider_cannot_follow_are_refused(
    values: dict[str, Any], rule: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config(raw(values), "dev")
    [problem] = caught.value.problems
    assert rule in problem, problem
    for secret in ("very-secret-value", "session-token-value"):
        assert secret not in str(caught.value)  # a refused secret is never echoed


def test_the_scheduled_gc_is_off_by_default_and_checked_like_aws_does() -> None:
    assert parse({}).gc == GcConfig(enabled=False)
    on = parse({"server": SERVER, "gc": {"enabled": True, "schedule": "rate(6 hours)",
                                         "traceRetention": "90d"}}).gc  # fmt: skip
    assert on == GcConfig(True, "rate(6 hours)", "30d", "90d")
    with pytest.raises(ConfigError) as bad:
        parse({"gc": {"enabled": True, "schedule": "every day", "olderThan": "a month"}})
    text = str(bad.value)
    assert "gc.schedule" in text and "EventBridge Scheduler expression" in text
    assert "gc.olderThan" in text and "gc.enabled" in text and "server.enabled" in text
    for good in ("cron(0 3 * * ? *)", "rate(1 day)", "at(2027-01-01T00:00:00)"):
        assert parse({"server": SERVER, "gc": {"enabled": True, "schedule": good}}).gc.schedule == (
            good
        )
    for wrong in ("rate(1 days)", "rate(0 minutes)", "cron(0 3 * * ?)"):
        with pytest.raises(ConfigError):
            parse({"server": SERVER, "gc": {"enabled": True, "schedule": wrong}})


def test_alarms_go_to_an_email_or_a_topic() -> None:
    assert parse({}).alarms == AlarmsConfig()
    assert parse({"alarms": {"email": "ops@example.com"}}).alarms.email == "ops@example.com"
    arn = "arn:aws:sns:eu-west-1:123456789012:ops"
    assert parse({"alarms": {"topicArn": arn}}).alarms.topic_arn == arn
    with pytest.raises(ConfigError) as bad:
        parse({"alarms": {"email": "ops", "topicArn": "ops-topic"}})
    assert "alarms.email" in str(bad.value) and "alarms.topicArn" in str(bad.value)
