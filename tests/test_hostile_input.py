"""Hostile input is refused where it enters, with a message that names it, and nothing happens.

* Stack config: every name of the corpus (``tests/support/hostile_names.py``), every colliding list
  and every non-string item makes ``parse_stack_config`` raise ``ConfigError`` naming the value and
  the rule; the whole program, run under Pulumi mocks, registers no resource and makes no call.
* The MySQL schema provider, driven over gRPC like the engine drives it: ``Check`` fails on
  ``project`` for every name, and neither ``Check`` nor a ``Create`` or ``Delete`` that skips
  it sends any Data API request (against the real MariaDB behind the emulator, the server's
  ``Connections`` and DDL counters do not move and no schema or user appears).
* ``python -m helper``: malformed outputs files, wrong ports and missing fields exit non-zero
  with a message naming the field, no traceback, and no password echoed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pymysql
import pytest

from infra.config import ASCII_SPACE, ConfigError, parse_stack_config
from mlflow_aws.names import RULE, name_problem
from tests.support.data_api_emulator import CLUSTER_ARN, DataApiEmulator, provider_environment
from tests.support.hostile_names import COLLIDING_LISTS, HOSTILE_NAMES, NON_STRINGS
from tests.support.services import MariaDB, MotoServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECTS_KEY = "mlflow-aws:projects"


def _ids(items: list[Any]) -> list[str]:
    return [f"{i:02d}-{ascii(item[0])[:30]}" for i, item in enumerate(items)]


def _named(value: str, message: str) -> bool:
    if value == "":
        return "is empty" in message
    return repr(value) in message or json.dumps(value) in message


def _config_problems(projects: list[Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_stack_config({PROJECTS_KEY: json.dumps(projects)}, "dev")
    return caught.value.problems


# -- stack config ---------------------------------------------------------------------------


def _trim(name: str) -> str:
    """What config forgives around a name: ASCII whitespace only (ASCII_SPACE)."""
    return name.strip(ASCII_SPACE)


@pytest.mark.parametrize(("name", "why"), HOSTILE_NAMES, ids=_ids(HOSTILE_NAMES))
def test_config_refuses_hostile_name(name: str, why: str) -> None:
    stripped = _trim(name)
    if stripped != name and stripped and name_problem(stripped) is None:
        # Surrounding ASCII whitespace is trimmed on purpose ("churn, fraud" from the CLI);
        # what is left must be exactly the valid slug, never anything carrying the whitespace.
        config = parse_stack_config({PROJECTS_KEY: json.dumps([name])}, "dev")
        assert [p.name for p in config.projects] == [stripped], why
        return
    problems = _config_problems([name])
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.startswith(f"{PROJECTS_KEY}[0].name = "), problem
    assert _named(stripped, problem), f"{why}: the message does not name the value: {problem}"
    assert RULE in problem or "is reserved" in problem, f"{why}: no rule in: {problem}"


@pytest.mark.parametrize(("names", "why"), COLLIDING_LISTS, ids=[w for _, w in COLLIDING_LISTS])
def test_config_refuses_colliding_names(names: list[str], why: str) -> None:
    problems = _config_problems(names)
    collision = [p for p in problems if "collides with" in p or "is listed twice" in p]
    assert collision, f"{why}: no collision reported in {problems}"
    first, second = _trim(names[0]), _trim(names[1])
    assert _named(second, collision[0]), collision[0]
    if first != second:
        assert _named(first, collision[0]), collision[0]
    assert "distinct ignoring case and separators" in collision[0]


@pytest.mark.parametrize(("item", "why"), NON_STRINGS, ids=[w for _, w in NON_STRINGS])
def test_config_refuses_non_string_items(item: Any, why: str) -> None:
    problems = _config_problems([item])
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{PROJECTS_KEY}[0]"), problems[0]
    assert json.dumps(item.get("name") if isinstance(item, dict) else item) in problems[0]


def test_config_reports_every_bad_name_at_once() -> None:
    names = [name for name, _ in HOSTILE_NAMES if _trim(name) and name != _trim(name)] + [
        "churn'; DROP DATABASE mysql; --",
        "ｃｈｕｒｎ",
        "mysql",
    ]
    problems = _config_problems(["good", *names])
    assert len(problems) >= 3
    assert not any("'good'" in p for p in problems)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every resource registration and invoke the program makes under mocks."""
    from tests.support import pulumi_mocks

    seen: list[str] = []
    new_resource = pulumi_mocks.RecordingMocks.new_resource
    call = pulumi_mocks.RecordingMocks.call

    def record_resource(self: Any, args: Any) -> Any:
        seen.append(f"resource {args.typ} {args.name}")
        return new_resource(self, args)

    def record_call(self: Any, args: Any) -> Any:
        seen.append(f"call {args.token}")
        return call(self, args)

    monkeypatch.setattr(pulumi_mocks.RecordingMocks, "new_resource", record_resource)
    monkeypatch.setattr(pulumi_mocks.RecordingMocks, "call", record_call)
    return seen


def _program_cases() -> list[tuple[list[Any], str]]:
    cases: list[tuple[list[Any], str]] = [
        (["churn", name], why)
        for name, why in HOSTILE_NAMES
        if not (name != _trim(name) and name_problem(_trim(name)) is None)
    ]
    cases += COLLIDING_LISTS
    cases += [(["churn", item], why) for item, why in NON_STRINGS]
    return cases


def test_program_registers_nothing_for_hostile_config(recorded: list[str]) -> None:
    from tests.support.pulumi_mocks import run_program

    # Control: a valid config does register resources through the same recorder.
    run_program({PROJECTS_KEY: ["churn"]})
    assert any("resource" in r for r in recorded)
    failures = []
    for projects, why in _program_cases():
        recorded.clear()
        try:
            run_program({PROJECTS_KEY: projects})
        except ConfigError:
            pass
        else:
            failures.append(f"{why}: {projects!r} was accepted")
        if recorded:
            failures.append(f"{why}: registered {recorded[:3]} before failing")
    assert not failures, "\n".join(failures)


# -- the schema provider, over gRPC --------------------------------------------------------


@pytest.fixture(scope="module")
def provider_server(data_api: DataApiEmulator) -> Iterator[Any]:
    from tests.support.grpc_provider import provider_server as start

    with start(provider_environment(data_api)) as server:
        yield server


def _props(project: Any) -> dict[str, Any]:
    from tests.support.grpc_provider import secret

    return {
        "project": project,
        "password": secret("Project-Pw-0123456789"),
        "cluster_arn": CLUSTER_ARN,
        "admin_secret_arn": f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{ADMIN}",
        "resume_wait_seconds": 1,
    }


ADMIN = "mlflow-aws/hostile/admin"


@pytest.mark.slow
def test_provider_check_refuses_every_hostile_name(
    provider_server: Any, data_api: DataApiEmulator
) -> None:
    from projects.schema_provider import MysqlSchemaProvider

    client = provider_server.client(MysqlSchemaProvider())
    mark = len(data_api.requests)
    _, failures = client.check(_props("churn"))
    assert failures == [], f"control: a valid name must pass Check: {failures}"
    problems = []
    for name, why in HOSTILE_NAMES:
        _, failures = client.check(_props(name))
        on_project = [reason for prop, reason in failures if prop == "project"]
        if not on_project:
            problems.append(f"{why} {name!r}: Check returned {failures}")
        elif not _named(name, on_project[0]):
            problems.append(f"{why} {name!r}: the failure does not name it: {on_project[0]}")
    assert not problems, "\n".join(problems)
    assert data_api.requests[mark:] == []  # Check never calls the Data API


@pytest.mark.slow
def test_provider_check_refuses_non_string_projects(provider_server: Any) -> None:
    from projects.schema_provider import MysqlSchemaProvider

    client = provider_server.client(MysqlSchemaProvider())
    values: list[Any] = [123, True, None, [], {"a": 1}]
    for value in values:
        _, failures = client.check(_props(value))
        assert any(prop == "project" for prop, _ in failures), (value, failures)


def _status(conn: pymysql.connections.Connection[Any]) -> dict[str, int]:
    names = ("Connections", "Com_create_db", "Com_create_user", "Com_grant", "Com_drop_db",
             "Com_drop_user", "Access_denied_errors", "Aborted_connects")  # fmt: skip
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN %s", (names,))
        return {str(k): int(v) for k, v in cur.fetchall()}


def _schemas_and_users(conn: pymysql.connections.Connection[Any]) -> tuple[set[str], set[str]]:
    with conn.cursor() as cur:
        cur.execute("SELECT schema_name FROM information_schema.schemata")
        schemas = {str(r[0]) for r in cur.fetchall()}
        cur.execute("SELECT CONCAT(user, '@', host) FROM mysql.user")
        users = {str(r[0]) for r in cur.fetchall()}
    return schemas, users


@pytest.mark.slow
def test_provider_sends_nothing_for_hostile_names(
    provider_server: Any, mariadb: MariaDB, data_api: DataApiEmulator
) -> None:
    """Against the real server: Check, and even a Create or Delete that skips it, send no Data
    API request and reach no MySQL connection."""
    from projects.schema_provider import MysqlSchemaProvider
    from tests.support.grpc_provider import ProviderCallError

    client = provider_server.client(MysqlSchemaProvider())
    probe = mariadb.connect()  # one connection, opened before counting
    try:
        before, objects, mark = _status(probe), _schemas_and_users(probe), len(data_api.requests)
        refused = 0
        for name, _why in HOSTILE_NAMES:
            props = _props(name)
            _, failures = client.check(props)
            assert failures, name
            for call in (partial(client.create, props), partial(client.delete, "x", props)):
                with pytest.raises(ProviderCallError) as caught:
                    call()  # as if an engine skipped Check: re-validated first
                assert "project name" in caught.value.details, caught.value.details[-500:]
            refused += 1
        assert data_api.requests[mark:] == []
        after = _status(probe)
        assert after == before, f"the provider reached MySQL: {before} -> {after}"
        assert _schemas_and_users(probe) == objects
        assert refused == len(HOSTILE_NAMES)
        # Control: the counter does move when someone connects.
        mariadb.connect().close()
        assert _status(probe)["Connections"] == before["Connections"] + 1
    finally:
        probe.close()


# -- python -m helper ------------------------------------------------------------------------

PASSWORD = "Outputs-Pw-do-not-echo-7f3a"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x"


def _valid_outputs(secret_arn: str = SECRET_ARN) -> dict[str, Any]:
    """``pulumi stack output --json``: where the project's connection secret is, no password."""
    return {
        "ArtifactRoot": "s3://bucket",
        "DatabasePassword": "[secret]",
        "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow@sha256:" + "0" * 64,
        "Region": "eu-west-1",
        "Projects": {
            "churn": {"ArtifactRoot": "s3://bucket/churn", "ConnectionSecretArn": secret_arn}
        },
    }


def _valid_bundle(db_port: int) -> dict[str, Any]:
    """The connection bundle of the project's secret (what the helper reads with AWS)."""
    return {
        "Project": "churn",
        "Stack": "hostile",
        "Database": "churn",
        "Username": "mlflow_churn",
        "Password": PASSWORD,
        "BackendStoreUri": f"mysql+pymysql://mlflow_churn:{PASSWORD}@127.0.0.1:{db_port}/churn",
        "ArtifactRoot": "s3://bucket/churn",
        "DatabaseEndpoint": "127.0.0.1",
        "DatabasePort": db_port,
        "Region": "eu-west-1",
        "ImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow@sha256:" + "0" * 64,
        "MlflowVersion": "3.17.2",
    }


def _without(data: dict[str, Any], path: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    del node[last]
    return copy


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    node[last] = value
    return copy


def _outputs_cases() -> list[tuple[str, Any, str]]:
    """(case id, file content (str: raw text), text the message must contain)."""
    valid = _valid_outputs()
    cases: list[tuple[str, Any, str]] = [
        ("not-json", "{not json", "is not JSON"),
        ("empty-file", "", "is not JSON"),
        ("top-level-list", [], "must be a JSON object"),
        ("top-level-string", "\"churn\"", "must be a JSON object"),
        ("projects-not-object", _with(valid, "Projects", ["churn"]), "Projects"),
        ("project-not-object", _with(valid, "Projects.churn", "x"), "Projects.churn"),
        ("unknown-project", _with(valid, "Projects", {}), "unknown project 'churn'"),
        ("empty-artifact-root", _with(valid, "Projects.churn.ArtifactRoot", ""),
         "Projects.churn.ArtifactRoot"),
        ("null-secret", _with(valid, "Projects.churn.ConnectionSecretArn", None),
         "Projects.churn.ConnectionSecretArn"),
        ("numeric-region", _with(valid, "Region", 5), "Region"),
    ]  # fmt: skip
    for field in ("Projects", "Region", "Projects.churn.ArtifactRoot",
                  "Projects.churn.ConnectionSecretArn"):  # fmt: skip
        cases.append((f"missing-{field}", _without(valid, field), field))
    return cases


def _bundle_cases() -> list[tuple[str, Any, str]]:
    """(case id, secret value (str: raw text), text the message must contain)."""
    valid = _valid_bundle(free_port())
    cases: list[tuple[str, Any, str]] = [
        ("not-json", "{not json", "does not hold a JSON object"),
        ("null-endpoint", _with(valid, "DatabaseEndpoint", None), "DatabaseEndpoint"),
        ("another-project", _with(valid, "Project", "fraud"), "belongs to project 'fraud'"),
        ("tracking-uri-not-a-url", _with(valid, "TrackingUri", "ftp://x"), "TrackingUri"),
    ]
    for field in ("DatabaseEndpoint", "DatabasePort", "MlflowVersion", "BackendStoreUri",
                  "Database", "Password"):  # fmt: skip
        cases.append((f"missing-{field}", _without(valid, field), field))
    for bad in ("abc", 0, 70000, -1, True, 3306.5, None, [3306]):
        cases.append((f"port-{bad!r}", _with(valid, "DatabasePort", bad), "DatabasePort"))
    return cases


def _run_helper(
    args: list[str], timeout: float = 90, aws: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m helper ARGS`` in its own session; killed (whole group) if it overruns."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(aws or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "helper", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"python -m helper {args} did not exit within {timeout}s")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _assert_clear_error(result: subprocess.CompletedProcess[str], must_name: str) -> None:
    both = result.stdout + result.stderr
    assert result.returncode != 0, f"exit 0 for a bad input: {both}"
    assert "Traceback" not in both, both
    assert must_name in result.stderr, f"{must_name!r} not named in: {result.stderr}"
    assert PASSWORD not in both, "a password was echoed"


@pytest.mark.parametrize(
    ("content", "must_name"),
    [(c, n) for _, c, n in _outputs_cases()],
    ids=[i for i, _, _ in _outputs_cases()],
)
def test_helper_refuses_malformed_outputs(tmp_path: Path, content: Any, must_name: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = _run_helper(["serve", "--project", "churn", "--outputs", str(path),
                          "--runtime", "process", "--port", str(free_port())])  # fmt: skip
    _assert_clear_error(result, must_name)


@pytest.mark.parametrize(
    ("content", "must_name"),
    [(c, n) for _, c, n in _bundle_cases()],
    ids=[i for i, _, _ in _bundle_cases()],
)
def test_helper_refuses_a_malformed_connection_secret(
    tmp_path: Path, moto: MotoServer, content: Any, must_name: str
) -> None:
    """The project's secret is read with the teammate's credentials and validated field by
    field before anything starts; no value of it is echoed."""
    from tests.support.stack_on_moto import aws_client

    aws = moto.aws_env()
    secrets = aws_client("secretsmanager", aws)
    value = content if isinstance(content, str) else json.dumps(content)
    # Named as the stack names connection secrets (helper/trust.py reads no other), one stack
    # per content, so that what is refused is the content, not the name.
    name = f"mlflow-aws/hostile{len(value)}x{abs(hash(value)) % 10**12}/churn"
    try:
        arn = secrets.create_secret(Name=name, SecretString=value)["ARN"]
    except secrets.exceptions.ResourceExistsException:
        arn = secrets.describe_secret(SecretId=name)["ARN"]
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(_valid_outputs(arn)))
    result = _run_helper(["serve", "--project", "churn", "--outputs", str(path),
                          "--runtime", "process", "--port", str(free_port())], aws=aws)  # fmt: skip
    _assert_clear_error(result, must_name)
    assert "connection secret" in result.stderr


def test_helper_refuses_missing_outputs_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    result = _run_helper(["serve", "--project", "churn", "--outputs", str(path),
                          "--runtime", "process"])  # fmt: skip
    _assert_clear_error(result, str(path))
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("port", ["abc", "0", "70000", "-1", "", "5000.5", "0x50"])
def test_helper_refuses_wrong_port(tmp_path: Path, port: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(_valid_outputs()))
    result = _run_helper(["serve", "--project", "churn", "--outputs", str(path),
                          "--runtime", "process", f"--port={port}"])  # fmt: skip
    _assert_clear_error(result, "--port")


@pytest.mark.parametrize(
    ("name", "must_name"),
    [
        ("churn'; DROP DATABASE mysql; --", "project name"),
        (f"ch{chr(0x430)}rn", "non-ASCII"),
        ("ｃｈｕｒｎ", "non-ASCII"),
        ("mysql", "reserved"),
        ("Churn", "lowercase"),
        ("", "--project"),
    ],
    ids=["injection", "cyrillic", "fullwidth", "reserved", "upper", "empty"],
)
def test_helper_refuses_hostile_project_name(tmp_path: Path, name: str, must_name: str) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(_valid_outputs()))
    result = _run_helper(["serve", "--project", name, "--outputs", str(path),
                          "--runtime", "process", "--port", str(free_port())])  # fmt: skip
    _assert_clear_error(result, must_name)


def test_helper_requires_project(tmp_path: Path) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(_valid_outputs()))
    result = _run_helper(["serve", "--outputs", str(path), "--runtime", "process"])
    _assert_clear_error(result, "--project")


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u3000", "\u200b"])
def test_config_keeps_unicode_spaces_in_names_and_refuses_them(space: str) -> None:
    # Only ASCII whitespace is forgiven; "churn" + a no-break space is not quietly "churn".
    problems = _config_problems([f"churn{space}"])
    assert len(problems) == 1 and "non-ASCII" in problems[0], problems
