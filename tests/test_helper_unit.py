"""The helper's pure parts and its error paths, without servers (fast)."""

from __future__ import annotations

import copy
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helper import checks, cli, runtimes, upgrade
from helper.errors import HelperError
from helper.outputs import (
    OutputsError,
    ProjectConnection,
    load_outputs_file,
    parse_connection_bundle,
    parse_stack_outputs,
)
from helper.server_settings import (
    SERVER_ENV_PATH,
    container_port,
    parse_server_env,
)
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PASSWORD = "Pr0ject-Pw_x7Q9zK2m"
ADMIN_PASSWORD = "Adm1n-Pw_R4nd0mS7r"
AWS_SECRET = "aws-secret-KEY-9f8e7d6c5b4a"
AWS_TOKEN = "aws-session-TOKEN-1a2b3c4d5e"
SECRETS = (PROJECT_PASSWORD, ADMIN_PASSWORD, AWS_SECRET, AWS_TOKEN)
ENDPOINT = "demo.cluster-abc.eu-west-1.rds.amazonaws.com"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws@sha256:" + "a" * 64


def sample_outputs() -> dict[str, Any]:
    """A valid ``pulumi stack output --json --show-secrets`` object (DESIGN.md's shape)."""

    def project(name: str) -> dict[str, Any]:
        schema = name.replace("-", "_")
        return {
            "Database": schema,
            "Username": f"mlflow_{schema}",
            "Password": PROJECT_PASSWORD,
            "BackendStoreUri": (
                f"mysql+pymysql://mlflow_{schema}:{PROJECT_PASSWORD}@{ENDPOINT}:3306/{schema}"
            ),
            "ArtifactRoot": f"s3://demo-bucket/{name}",
            "ConnectionSecretArn": f"arn:aws:secretsmanager:eu-west-1:1:secret:dev/{name}",
            "PolicyArn": f"arn:aws:iam::1:policy/mlflow-aws-dev-{name}",
        }

    return {
        "ArtifactRoot": "s3://demo-bucket",
        "DatabaseEndpoint": ENDPOINT,
        "DatabasePort": 3306,
        "DatabaseUsername": "mlflow_admin",
        "DatabasePassword": ADMIN_PASSWORD,
        "DatabaseUrl": f"mysql+pymysql://mlflow_admin:{ADMIN_PASSWORD}@{ENDPOINT}:3306",
        "ImageUri": IMAGE,
        "Region": "eu-west-1",
        "MlflowVersion": "3.17.2",
        "Projects": {"churn": project("churn"), "fraud-detection": project("fraud-detection")},
    }


def write_outputs(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def churn() -> ProjectConnection:
    return parse_stack_outputs(sample_outputs(), "test").connection("churn")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- docker runtime ---------------------------------------------------------------------------


def test_docker_run_argv_publishes_on_loopback_only_and_carries_no_secret(
    churn: ProjectConnection,
) -> None:
    argv = runtimes.docker_run_argv(churn, 5123, "/tmp/mlflow-aws-x.env")
    assert argv == [
        "docker", "run", "--rm", "--name", "mlflow-churn-5123",
        "-p", "127.0.0.1:5123:5000", "--env-file", "/tmp/mlflow-aws-x.env",
        "-e", "MLFLOW_AWS_DB_CA_BUNDLE", IMAGE,  # the name only: the value is the client's
    ]  # fmt: skip
    assert container_port() == 5000
    assert_no_secret(" ".join(argv))


def test_command_prints_the_docker_run_without_secret_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path, sample_outputs())
    code = cli.main(["command", "--project", "churn", "--outputs", str(outputs), "--port", "5123"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.strip() == (
        f"docker run --rm --name mlflow-churn-5123 -p 127.0.0.1:5123:5000 "
        f"--env-file '<env-file>' -e MLFLOW_AWS_DB_CA_BUNDLE {IMAGE}"
    )
    assert "MLFLOW_BACKEND_STORE_URI" in captured.err and "AWS_SECRET_ACCESS_KEY" in captured.err
    assert_no_secret(captured.out + captured.err)


def test_container_environment_holds_store_artifacts_and_credentials(
    churn: ProjectConnection,
) -> None:
    aws_env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_SESSION_TOKEN": AWS_TOKEN,
    }
    env = runtimes.container_environment(churn, aws_env)
    # No ssl_ca: the image's entrypoint adds its own, from MLFLOW_AWS_DB_CA_BUNDLE.
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        churn.backend_store_uri + "?init_command=SET%20SESSION%20wait_timeout%3D30"
    )
    assert "MLFLOW_AWS_DB_CA_BUNDLE" not in env  # a PEM has newlines: not for the env file
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://demo-bucket/churn"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET and env["AWS_SESSION_TOKEN"] == AWS_TOKEN
    # Inside the container: the image's host and port (published on 127.0.0.1 by docker).
    defaults = parse_server_env(SERVER_ENV_PATH.read_text())
    assert env["MLFLOW_HOST"] == defaults["MLFLOW_HOST"]
    assert env["MLFLOW_PORT"] == defaults["MLFLOW_PORT"]


def test_env_file_is_private_holds_the_environment_and_is_removed(tmp_path: Path) -> None:
    env = {"MLFLOW_BACKEND_STORE_URI": f"mysql+pymysql://u:{PROJECT_PASSWORD}@h/db", "A": "b c"}
    with runtimes.private_env_file(env) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert parse_server_env(path.read_text()) == env
    assert not path.exists()
    with pytest.raises(RuntimeError), runtimes.private_env_file(env) as path:
        raise RuntimeError("the server failed")
    assert not path.exists()


def test_env_file_refuses_values_docker_would_cut() -> None:
    with pytest.raises(HelperError, match="BAD"):
        runtimes.env_file_text({"BAD": "two\nlines"})


def test_ssl_ca_is_appended_once() -> None:
    ca = "/etc/ssl/rds bundle.pem"
    assert runtimes.with_ssl_ca("mysql+pymysql://u:p@h:3306/db", ca) == (
        "mysql+pymysql://u:p@h:3306/db?ssl_ca=/etc/ssl/rds%20bundle.pem"
    )
    assert runtimes.with_ssl_ca("mysql+pymysql://h/db?charset=utf8mb4", ca).endswith(
        "?charset=utf8mb4&ssl_ca=/etc/ssl/rds%20bundle.pem"
    )
    assert (
        runtimes.with_ssl_ca("mysql+pymysql://h/db?ssl_ca=/x", ca)
        == "mysql+pymysql://h/db?ssl_ca=/x"
    )


def test_docker_client_gets_the_ca_bundle_and_refuses_without_one(
    churn: ProjectConnection,
) -> None:
    from dataclasses import replace

    with pytest.raises(HelperError, match="needs its CA bundle: pass --db-ca FILE"):
        runtimes.docker_client_environment(churn, {"PATH": "/usr/bin"})
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    env = runtimes.docker_client_environment(
        replace(churn, database_ca_bundle=pem), {"PATH": "/usr/bin"}
    )
    assert env == {"PATH": "/usr/bin", "MLFLOW_AWS_DB_CA_BUNDLE": pem}


def test_connection_bundle_carries_ca_and_tracking_uri_when_present() -> None:
    bundle = {
        "Project": "churn", "Database": "churn", "BackendStoreUri": "mysql+pymysql://u:p@h/churn",
        "Password": "p", "ArtifactRoot": "s3://b/churn", "DatabaseEndpoint": "h",
        "DatabasePort": 3306, "Region": "eu-west-1", "ImageUri": IMAGE, "MlflowVersion": "3.17.2",
    }  # fmt: skip
    plain = parse_connection_bundle(bundle, "secret")
    assert (plain.database_ca_bundle, plain.tracking_uri) == (None, None)
    nulls = parse_connection_bundle({**bundle, "DatabaseCaBundle": None, "TrackingUri": None}, "s")
    assert (nulls.database_ca_bundle, nulls.tracking_uri) == (None, None)
    full = parse_connection_bundle(
        {**bundle, "DatabaseCaBundle": "PEM", "TrackingUri": "https://m.example.com/churn"}, "s"
    )
    assert (full.database_ca_bundle, full.tracking_uri) == ("PEM", "https://m.example.com/churn")
    with pytest.raises(OutputsError, match="TrackingUri must be a non-empty string"):
        parse_connection_bundle({**bundle, "TrackingUri": 5}, "s")


# -- the tuned settings -----------------------------------------------------------------------

FORCED = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_HOST", "MLFLOW_PORT"}


def test_server_settings_are_server_env(churn: ProjectConnection, tmp_path: Path) -> None:
    defaults = parse_server_env(SERVER_ENV_PATH.read_text())
    assert defaults["MLFLOW_WORKERS"] == "1"
    # Pooled while busy, closed by the database after 30 idle seconds (so Aurora can pause).
    assert "MLFLOW_SQLALCHEMYSTORE_POOLCLASS" not in defaults
    assert defaults["MLFLOW_AWS_DB_IDLE_SECONDS"] == "30"
    assert int(defaults["MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE"]) < 30
    assert defaults["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert defaults["MLFLOW_SERVE_ARTIFACTS"] == "true"
    store = runtimes.local_store(tmp_path, "default")
    for env in (
        runtimes.process_environment(churn, 5123, {}),
        runtimes.local_environment(store, 5123, {}),
        runtimes.container_environment(churn, {}),
    ):
        tuned = {k: v for k, v in env.items() if k not in FORCED and not k.startswith("AWS_")}
        assert tuned == {k: v for k, v in defaults.items() if k not in FORCED}


def test_process_environment_serves_on_loopback_with_the_project_store(
    churn: ProjectConnection,
) -> None:
    env = runtimes.process_environment(churn, 5123, {"MLFLOW_WORKERS": "3", "HOME": "/h"})
    assert env["MLFLOW_HOST"] == "127.0.0.1" and env["MLFLOW_PORT"] == "5123"
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        churn.backend_store_uri + "?init_command=SET%20SESSION%20wait_timeout%3D30"
    )
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://demo-bucket/churn"
    assert env["MLFLOW_WORKERS"] == "3"  # an explicit setting overrides server.env's default
    assert env["HOME"] == "/h"
    assert runtimes.mlflow_server_argv() == [sys.executable, "-m", "mlflow", "server"]


def test_local_store_layout(tmp_path: Path) -> None:
    store = runtimes.local_store(tmp_path, "default")
    env = runtimes.local_environment(store, 5000, {})
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path.resolve()}/default/mlflow.db"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"{tmp_path.resolve()}/default/artifacts"
    assert runtimes.default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/mlflow-aws")
    assert runtimes.default_data_dir({}) == Path.home() / ".local/share/mlflow-aws"


def test_server_env_parse_errors_name_the_line() -> None:
    with pytest.raises(HelperError, match=r"f:2: expected KEY=VALUE"):
        parse_server_env("# c\nNOT A SETTING\n", "f")


def test_upgrade_takes_the_uri_from_the_environment() -> None:
    uri = f"mysql+pymysql://u:{PROJECT_PASSWORD}@h:3306/churn"
    assert_no_secret(" ".join(upgrade.upgrade_argv()))
    assert upgrade.upgrade_environment(uri, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "MLFLOW_BACKEND_STORE_URI": uri,
    }


# -- outputs validation -----------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def projects_from(data: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    return run_cli(["projects", "--outputs", str(write_outputs(tmp_path, data))], capsys)


def test_projects_lists_names_and_artifact_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = projects_from(sample_outputs(), tmp_path, capsys)
    assert code == 0
    assert out.splitlines() == [
        "churn\ts3://demo-bucket/churn",
        "fraud-detection\ts3://demo-bucket/fraud-detection",
    ]


def broken(path: list[str], value: object) -> dict[str, Any]:
    data = copy.deepcopy(sample_outputs())
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (broken(["ImageUri"], KeyError), "missing field ImageUri"),
        (
            broken(["Projects", "churn", "Password"], KeyError),
            "missing field Projects.churn.Password",
        ),
        (broken(["DatabasePort"], "abc"), "DatabasePort must be a TCP port (1-65535), got 'abc'"),
        (broken(["DatabasePort"], 70000), "DatabasePort must be a TCP port (1-65535), got 70000"),
        (broken(["DatabasePort"], True), "DatabasePort must be a TCP port"),
        (broken(["Region"], 5), "Region must be a non-empty string, got a number"),
        (broken(["Projects"], []), "Projects must be a JSON object, got a list"),
        (broken(["Projects", "churn"], "x"), "Projects.churn must be a JSON object, got a string"),
        (
            broken(["Projects", "churn", "BackendStoreUri"], "[secret]"),
            "Projects.churn.BackendStoreUri is '[secret]': the outputs were saved without "
            "--show-secrets",
        ),
        (
            broken(["Projects", "churn", "Password"], "[secret]"),
            "pulumi stack output --json --show-secrets",
        ),
        ([1, 2], "the top level must be a JSON object, got a list"),
    ],
)
def test_outputs_errors_name_the_field(
    data: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = projects_from(data, tmp_path, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: outputs file ")
    assert message in err


def test_outputs_shared_with_teammates_need_no_admin_credentials() -> None:
    # The README's teammate flow strips the admin fields before sharing a file.
    shared = sample_outputs()
    for admin in ("DatabaseUsername", "DatabasePassword", "DatabaseUrl"):
        del shared[admin]
    connection = parse_stack_outputs(shared, "t").connection("churn")
    assert ADMIN_PASSWORD not in repr(connection) + connection.backend_store_uri
    assert connection.database == "churn"


def test_outputs_ports_may_be_floats_or_digit_strings() -> None:
    assert parse_stack_outputs(broken(["DatabasePort"], 3306.0), "t").database_port == 3306
    assert parse_stack_outputs(broken(["DatabasePort"], "3306"), "t").database_port == 3306


def test_outputs_file_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(OutputsError, match="does not exist; create it with `pulumi stack output"):
        load_outputs_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("Outputs:\n  ArtifactRoot: s3://x\n")
    with pytest.raises(OutputsError, match=r"is not JSON \(Expecting value at line 1 column 1\)"):
        load_outputs_file(tmp_path / "bad.json")


def test_unknown_project_lists_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path, sample_outputs())
    code, _, err = run_cli(["command", "--project", "churm", "--outputs", str(outputs)], capsys)
    assert code == 1
    assert "unknown project 'churm'; the stack has: churn, fraud-detection" in err


def test_invalid_project_name_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path, sample_outputs())
    code, _, err = run_cli(["command", "--project", "Churn", "--outputs", str(outputs)], capsys)
    assert code == 2 and "must be lowercase" in err


def test_connection_bundle_from_a_secret() -> None:
    bundle = {
        "Project": "churn",
        "Stack": "dev",
        "Database": "churn",
        "Username": "mlflow_churn",
        "Password": PROJECT_PASSWORD,
        "BackendStoreUri": f"mysql+pymysql://mlflow_churn:{PROJECT_PASSWORD}@{ENDPOINT}:3306/churn",
        "ArtifactRoot": "s3://demo-bucket/churn",
        "DatabaseEndpoint": ENDPOINT,
        "DatabasePort": 3306,
        "Region": "eu-west-1",
        "ImageUri": IMAGE,
        "MlflowVersion": "3.17.2",
    }
    connection = parse_connection_bundle(bundle, "secret s")
    assert connection.database_port == 3306 and connection.artifact_root.endswith("/churn")
    assert_no_secret(repr(connection))
    with pytest.raises(OutputsError, match="secret s: missing field ImageUri"):
        parse_connection_bundle({k: v for k, v in bundle.items() if k != "ImageUri"}, "secret s")


# -- CLI --------------------------------------------------------------------------------------


def test_env_prints_the_export_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["env"], capsys)[:2] == (0, "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\n")
    assert run_cli(["env", "--port", "5123"], capsys)[1].endswith("127.0.0.1:5123\n")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve", "--port", "abc"],
        ["serve", "--port", "70000"],
        ["serve", "--runtime", "podman"],
        ["serve", "--project", "x", "--stack", "dev", "--outputs", "f.json"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--local", "--outputs", "f.json"], "--local runs the embedded default"),
        (["serve", "--local", "--runtime", "docker"], "drop --runtime docker"),
        (["serve", "--outputs", "f.json"], "serve needs --project NAME"),
        (["serve", "--project", "a", "--data-dir", "d", "--outputs", "f"], "--data-dir goes with"),
        (["command", "--project", "a", "--outputs", "f", "--secret-id", "s"], "--secret-id goes"),
    ],
)
def test_inconsistent_options_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err


def test_helper_imports_nothing_heavy() -> None:
    probe = (
        "import sys, helper.cli\n"
        "heavy = [m for m in ('mlflow', 'boto3', 'botocore', 'pulumi', 'pulumi_aws') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_help_is_fast_and_main_module_is_thin() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "helper", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "serve" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert not imported & {"mlflow", "boto3", "pulumi", "pulumi_aws"}
    main_lines = (ROOT / "helper" / "__main__.py").read_text().split()
    assert "raise" in main_lines and len((ROOT / "helper" / "__main__.py").read_text()) < 80


# -- checks -----------------------------------------------------------------------------------


def test_docker_missing_suggests_the_process_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path, sample_outputs())
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, _, err = run_cli(["serve", "--project", "churn", "--outputs", str(outputs)], capsys)
    assert code == 1
    assert "docker is not installed" in err and "--runtime process" in err


def test_docker_daemon_down_suggests_the_process_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    outputs = write_outputs(tmp_path, sample_outputs())
    code, _, err = run_cli(["serve", "--project", "churn", "--outputs", str(outputs)], capsys)
    assert code == 1
    assert "Docker daemon is not running" in err and "--runtime process" in err


def test_port_in_use_is_reported_before_starting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(HelperError, match=f"port {port} on 127.0.0.1 is in use.*--port"):
            checks.check_port_free(port)


def test_unreachable_database_mentions_allowed_cidrs_and_auto_pause() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(HelperError) as error:
            checks.check_database_reachable("127.0.0.1", port, timeout=1)
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "db.allowedCidrs" in message
    assert "auto-pause" in message


def test_mlflow_version_mismatch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "installed_mlflow_version", lambda: "3.1.0")
    with pytest.raises(HelperError, match=r"mlflow 3.1.0 but the stack runs mlflow 3.17.2"):
        checks.check_mlflow_version("3.17.2")
    monkeypatch.setattr(checks, "installed_mlflow_version", lambda: None)
    with pytest.raises(HelperError, match="mlflow is not installed"):
        checks.check_mlflow_version("3.17.2")


def test_aws_credential_failures_suggest_sso_login() -> None:
    from botocore.exceptions import ClientError, NoCredentialsError, UnauthorizedSSOTokenError

    from helper.aws import aws_errors

    expired = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The security token has expired"}},
        "GetCallerIdentity",
    )
    for failure in (expired, NoCredentialsError(), UnauthorizedSSOTokenError()):
        with pytest.raises(HelperError, match="aws sso login"), aws_errors("testing"):
            raise failure


def test_upgrade_hint_repeats_the_source(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["serve", "--project", "churn", "--outputs", "o.json"])
    assert cli._upgrade_hint(args, "churn") == (
        "python -m helper upgrade --project churn --outputs o.json"
    )
    args = cli.build_parser().parse_args(["serve", "--local", "--data-dir", "/d"])
    assert cli._upgrade_hint(args, "default") == (
        "python -m helper upgrade --local --project default --data-dir /d"
    )


# -- --stack, through the Automation API and a stand-in pulumi CLI ----------------------------


def fake_pulumi(bin_dir: Path, outputs: dict[str, Any], fail: str | None = None) -> Path:
    """A pulumi CLI that answers what the Automation API's stack_outputs runs (version,
    stack output --json, masked and --show-secrets) and logs every call it gets."""
    masked = copy.deepcopy(outputs)
    masked["DatabasePassword"] = masked["DatabaseUrl"] = "[secret]"
    for project in masked["Projects"].values():
        project["Password"] = project["BackendStoreUri"] = "[secret]"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "masked.json").write_text(json.dumps(masked))
    (bin_dir / "plain.json").write_text(json.dumps(outputs))
    calls = bin_dir / "calls.log"
    failure = f'echo "error: {fail}" >&2; exit 255' if fail else ":"
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in\n'
        "  version*) echo v3.150.0 ;;\n"
        f"  *--show-secrets*) {failure}; cat {bin_dir}/plain.json ;;\n"
        f"  *'stack output'*) {failure}; cat {bin_dir}/masked.json ;;\n"
        "  *) echo unexpected >&2; exit 99 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return calls


def test_stack_source_reads_outputs_through_the_pulumi_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_pulumi(tmp_path / "bin", sample_outputs())
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    code, out, _ = run_cli(["projects", "--stack", "dev"], capsys)
    assert code == 0 and out.startswith("churn\ts3://demo-bucket/churn\n")
    # Reading a stack's outputs must not change the user's current stack.
    logged = calls.read_text()
    assert (
        "stack select" not in logged and "stack output --json --show-secrets --stack dev" in logged
    )
    code, out, err = run_cli(["command", "--project", "churn", "--stack", "dev"], capsys)
    assert code == 0 and IMAGE in out
    assert_no_secret(out + err)


def test_stack_source_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, _, err = run_cli(["projects", "--stack", "dev"], capsys)
    assert code == 1 and "the pulumi CLI is not installed" in err and "--from-aws" in err
    fake_pulumi(tmp_path / "bin", sample_outputs(), fail="no stack named 'dev' found")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    code, _, err = run_cli(["projects", "--stack", "dev"], capsys)
    assert code == 1
    assert "cannot read the outputs of stack 'dev': error: no stack named 'dev' found" in err


def test_db_ca_must_exist_and_goes_with_the_process_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(sample_outputs()))
    missing = tmp_path / "no-such-ca.pem"
    base = ["serve", "--project", "churn", "--outputs", str(outputs)]

    assert cli.main([*base, "--runtime", "process", "--db-ca", str(missing)]) == 2
    assert f"--db-ca {missing}: no such file" in capsys.readouterr().err
    assert cli.main([*base, "--db-ca", str(missing)]) == 2
    assert f"--db-ca {missing}: no such file" in capsys.readouterr().err


def test_db_ca_reaches_the_container_as_its_content(tmp_path: Path) -> None:
    # A host path means nothing inside the container: the docker runtime hands over the PEM.
    ca = tmp_path / "global-bundle.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    args = cli.build_parser().parse_args(["serve", "--project", "churn", "--db-ca", str(ca)])
    connection = parse_stack_outputs(sample_outputs(), "test").connection("churn")
    verified = cli._with_db_ca(args, connection, "docker")
    assert verified.database_ca_bundle == ca.read_text()
    assert verified.backend_store_uri == connection.backend_store_uri


def test_db_ca_is_url_quoted_into_the_backend_uri(tmp_path: Path) -> None:
    ca = tmp_path / "my certs" / "rds bundle.pem"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    args = cli.build_parser().parse_args(
        ["serve", "--project", "churn", "--runtime", "process", "--db-ca", str(ca)]
    )
    connection = parse_stack_outputs(sample_outputs(), "test").connection("churn")
    verified = cli._with_db_ca(args, connection)
    assert verified.backend_store_uri == (
        connection.backend_store_uri + "?ssl_ca=" + str(ca).replace(" ", "%20")
    )


def test_idle_timeout_reaches_mysql_uris_only(churn: ProjectConnection, tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    uri = runtimes.process_environment(churn, 5123, {})["MLFLOW_BACKEND_STORE_URI"]
    assert parse_qs(urlsplit(uri).query) == {"init_command": ["SET SESSION wait_timeout=30"]}
    # An explicit setting in the caller's environment wins over server.env's default.
    faster = runtimes.process_environment(churn, 5123, {"MLFLOW_AWS_DB_IDLE_SECONDS": "5"})
    assert faster["MLFLOW_BACKEND_STORE_URI"].endswith("wait_timeout%3D5")
    local = runtimes.local_environment(runtimes.local_store(tmp_path, "default"), 5123, {})
    assert "init_command" not in local["MLFLOW_BACKEND_STORE_URI"]  # SQLite has no sessions
    with pytest.raises(HelperError, match="MLFLOW_AWS_DB_IDLE_SECONDS must be a whole number"):
        runtimes.process_environment(churn, 5123, {"MLFLOW_AWS_DB_IDLE_SECONDS": "soon"})


def test_ctrl_c_before_the_server_is_healthy_exits_130(tmp_path: Path) -> None:
    import signal
    import threading

    from helper.supervise import ServerLaunch, run_server

    never_healthy = ServerLaunch(
        description="stand-in server",
        argv=[sys.executable, "-c", "import time; time.sleep(60)"],
        env=dict(os.environ),
        port=free_port(),
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = run_server(never_healthy, out=io.StringIO(), err=io.StringIO())
    finally:
        timer.cancel()
    assert code == 130  # an interrupted start is not a success; a stopped running server is 0
