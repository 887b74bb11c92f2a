"""The helper's pure parts and its error paths, without MLflow servers (fast; a few use moto)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from helper import checks, cli, runtimes, supervise, tls, upgrade
from helper.credentials import (
    RoleCredentials,
    credentials_endpoint,
    session_name,
    without_user_credentials,
)
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
    loopback_only,
    parse_server_env,
)
from mlflow_aws.bundle import ConnectionBundle
from mlflow_aws.server_settings import ServerSettingsError
from tests.support.processes import alive
from tests.support.services import MotoServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PASSWORD = "Pr0ject-Pw_x7Q9zK2m"
ADMIN_PASSWORD = "Adm1n-Pw_R4nd0mS7r"
AWS_SECRET = "aws-secret-KEY-9f8e7d6c5b4a"
AWS_TOKEN = "aws-session-TOKEN-1a2b3c4d5e"
SECRETS = (PROJECT_PASSWORD, ADMIN_PASSWORD, AWS_SECRET, AWS_TOKEN)
ENDPOINT = "demo.cluster-abc.eu-west-1.rds.amazonaws.com"
# As the stack writes them (helper/trust.py checks each against the secret it came from).
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws/dev/server@sha256:" + "a" * 64
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n"
RUN_SECRET = "run-secret-" + "r" * 32
ROLE_ARN = "arn:aws:iam::123456789012:role/mlflow-aws-churn-0001"


def sample_outputs() -> dict[str, Any]:
    """``pulumi stack output --json`` of a stack (README.md "Stack outputs"; no password)."""

    def project(name: str) -> dict[str, Any]:
        schema = name.replace("-", "_")
        return {
            "Database": schema,
            "Username": f"mlflow_{schema}",
            "ArtifactRoot": f"s3://mlflow-aws-dev-demo/{name}",
            "ConnectionSecretArn": (
                f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:mlflow-aws/dev/{name}-AbC123"
            ),
            "PolicyArn": f"arn:aws:iam::123456789012:policy/mlflow-aws-dev-{name}",
            "ServerRoleArn": f"arn:aws:iam::123456789012:role/mlflow-aws-{name}-0001",
        }

    return {
        "ArtifactRoot": "s3://mlflow-aws-dev-demo",
        "DatabaseEndpoint": ENDPOINT,
        "DatabasePort": 3306,
        "DatabaseUsername": "mlflow_admin",
        "DatabasePassword": "[secret]",  # without --show-secrets
        "DatabaseUrl": "[secret]",
        "ImageUri": IMAGE,
        "Region": "eu-west-1",
        "MlflowVersion": "3.17.2",
        "Projects": {"churn": project("churn"), "fraud-detection": project("fraud-detection")},
    }


def sample_bundle(project: str = "churn") -> dict[str, Any]:
    schema = project.replace("-", "_")
    return ConnectionBundle(
        project=project,
        stack="dev",
        database=schema,
        username=f"mlflow_{schema}",
        password=PROJECT_PASSWORD,
        backend_store_uri=f"mysql+pymysql://mlflow_{schema}:{PROJECT_PASSWORD}@{ENDPOINT}:3306/"
        f"{schema}",
        artifact_root=f"s3://mlflow-aws-dev-demo/{project}",
        database_endpoint=ENDPOINT,
        database_port=3306,
        region="eu-west-1",
        image_uri=IMAGE,
        mlflow_version="3.17.2",
        database_ca_bundle=CA_PEM,
        server_role_arn=ROLE_ARN,
        tracking_uri=None,
    ).as_dict()


def write_outputs(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def churn() -> ProjectConnection:
    return parse_connection_bundle(sample_bundle(), "test")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


# -- docker runtime ---------------------------------------------------------------------------


def test_docker_run_is_hardened_loopback_only_and_carries_no_value(
    churn: ProjectConnection,
) -> None:
    names = runtimes.container_variable_names(churn, 5123)
    argv = runtimes.docker_run_argv(churn, 5123, names)
    assert argv[:7] == ["docker", "run", "--rm", "--name", "mlflow-churn-5123", "-p",
                        "127.0.0.1:5123:5000"]  # fmt: skip
    for flags in (
        ["--cap-drop", "ALL"],
        ["--security-opt", "no-new-privileges"],
        ["--read-only"],
        ["--mount", "type=volume,destination=/tmp"],  # disk-backed, gone with the container
        ["--tmpfs", "/home/mlflow:rw,nosuid,nodev,noexec,size=64m"],
    ):
        at = argv.index(flags[0])
        assert argv[at : at + len(flags)] == flags
    assert argv[-3:] == [IMAGE, "--app-name", "mlflow-aws-run-secret"]  # behind the run's secret
    given = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert given == names and all("=" not in name for name in given)  # names, never values
    assert {"MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AWS_DB_CA_BUNDLE",
            "MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_AWS_RUN_SECRET"} <= set(given)  # fmt: skip
    assert container_port() == 5000
    assert_no_secret(" ".join(argv))


def test_container_environment_holds_store_ca_role_credentials_and_pinned_hosts(
    churn: ProjectConnection,
) -> None:
    role = {"AWS_ACCESS_KEY_ID": "ASIAROLE", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_SESSION_TOKEN": AWS_TOKEN}  # fmt: skip
    env = runtimes.container_environment(churn, role, CA_PEM, 5123, RUN_SECRET)
    # The entrypoint adds ssl_ca for the CAs it is given; the helper adds the idle timeout.
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        churn.backend_store_uri + "?init_command=SET%20SESSION%20wait_timeout%3D30"
    )
    assert env["MLFLOW_AWS_DB_CA_BUNDLE"] == CA_PEM
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow-aws-dev-demo/churn"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET and env["AWS_SESSION_TOKEN"] == AWS_TOKEN
    # Inside the container: the image's host and port; the browser's: the published one.
    defaults = parse_server_env(SERVER_ENV_PATH.read_text())
    assert env["MLFLOW_HOST"] == defaults["MLFLOW_HOST"]
    assert env["MLFLOW_PORT"] == defaults["MLFLOW_PORT"]
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"] == "127.0.0.1:5123,localhost:5123"
    assert env["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == (
        "http://127.0.0.1:5123,http://localhost:5123"
    )


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
    with pytest.raises(OutputsError, match=r"TrackingUri must be an http\(s\) URL or null"):
        parse_connection_bundle({**bundle, "TrackingUri": 5}, "s")


# -- the tuned settings -----------------------------------------------------------------------

RUN_SECRET_ENV = {"MLFLOW_AWS_RUN_SECRET": RUN_SECRET, "MLFLOW_AWS_PUBLIC_PORT": "5123"}
FORCED = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_HOST", "MLFLOW_PORT"}
PINNED = set(loopback_only(1))


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
        runtimes.process_environment(churn, 5123, {}, churn.backend_store_uri, {}, RUN_SECRET),
        runtimes.local_environment(store, 5123, {}, RUN_SECRET),
        runtimes.container_environment(churn, {}, CA_PEM, 5123, RUN_SECRET),
    ):
        tuned = {
            k: v
            for k, v in env.items()
            if k not in FORCED | PINNED
            and not k.startswith("AWS_")
            and k not in ("MLFLOW_AWS_DB_CA_BUNDLE", *RUN_SECRET_ENV)
        }
        assert tuned == {k: v for k, v in defaults.items() if k not in FORCED}
        assert {k: env[k] for k in PINNED} == loopback_only(5123)
        # Every runtime's server gets the run's secret and the port clients use, and only
        # the app name (never the secret) is in its argv.
        assert {k: env[k] for k in RUN_SECRET_ENV} == RUN_SECRET_ENV


def test_process_environment_has_no_user_credentials_only_the_server_roles(
    churn: ProjectConnection,
) -> None:
    user = {
        "MLFLOW_WORKERS": "3",
        "HOME": "/h",
        "AWS_ACCESS_KEY_ID": "AKIAUSER",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_SESSION_TOKEN": AWS_TOKEN,
        "AWS_PROFILE": "admin",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # endpoints are not credentials: kept
    }
    served = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/role-credentials",
              "AWS_CONTAINER_AUTHORIZATION_TOKEN": "t0ken"}  # fmt: skip
    verified = tls.with_ssl_ca(churn.backend_store_uri, "/private/db-ca.pem")
    user["MLFLOW_TRACKING_TOKEN"] = RUN_SECRET  # the caller's client copy: not the server's
    env = runtimes.process_environment(churn, 5123, user, verified, served, RUN_SECRET)
    assert env["MLFLOW_HOST"] == "127.0.0.1" and env["MLFLOW_PORT"] == "5123"
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        churn.backend_store_uri + "?ssl_ca=/private/db-ca.pem"
        "&init_command=SET%20SESSION%20wait_timeout%3D30"
    )
    assert env["MLFLOW_WORKERS"] == "3"  # an explicit setting overrides server.env's default
    assert env["HOME"] == "/h" and env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        assert key not in env
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == env["AWS_CONFIG_FILE"] == os.devnull
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert {k: env[k] for k in served} == served
    assert_no_secret(json.dumps(env).replace(PROJECT_PASSWORD, ""))
    assert "MLFLOW_TRACKING_TOKEN" not in env and env["MLFLOW_AWS_RUN_SECRET"] == RUN_SECRET
    assert runtimes.mlflow_server_argv() == [
        sys.executable, "-m", "mlflow", "server", "--app-name", "mlflow-aws-run-secret"
    ]  # fmt: skip


def test_local_store_layout(tmp_path: Path) -> None:
    store = runtimes.local_store(tmp_path, "default")
    env = runtimes.local_environment(store, 5000, {}, RUN_SECRET)
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path.resolve()}/default/mlflow.db"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == f"{tmp_path.resolve()}/default/artifacts"
    assert runtimes.default_data_dir({"XDG_DATA_HOME": "/x"}) == Path("/x/mlflow-aws")
    assert runtimes.default_data_dir({}) == Path.home() / ".local/share/mlflow-aws"
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    with pytest.raises(HelperError, match="is a file, not a directory"):
        runtimes.local_store(a_file, "default")


def test_server_env_parse_errors_name_the_line() -> None:
    with pytest.raises(ServerSettingsError, match=r"f:2: expected KEY=VALUE"):
        parse_server_env("# c\nNOT A SETTING\n", "f")


def test_upgrade_takes_the_uri_from_the_environment() -> None:
    uri = f"mysql+pymysql://u:{PROJECT_PASSWORD}@h:3306/churn"
    assert_no_secret(" ".join(upgrade.upgrade_argv()))
    assert upgrade.upgrade_environment(uri, {"PATH": "/bin"}) == {
        "PATH": "/bin",
        "MLFLOW_BACKEND_STORE_URI": uri,
    }


def test_idle_timeout_reaches_mysql_uris_only(churn: ProjectConnection, tmp_path: Path) -> None:
    from urllib.parse import parse_qs, urlsplit

    uri = runtimes.process_environment(churn, 5123, {}, churn.backend_store_uri, {}, RUN_SECRET)[
        "MLFLOW_BACKEND_STORE_URI"
    ]
    assert parse_qs(urlsplit(uri).query) == {"init_command": ["SET SESSION wait_timeout=30"]}
    faster = runtimes.process_environment(
        churn, 5123, {"MLFLOW_AWS_DB_IDLE_SECONDS": "5"}, churn.backend_store_uri, {}, RUN_SECRET
    )
    assert faster["MLFLOW_BACKEND_STORE_URI"].endswith("wait_timeout%3D5")
    local = runtimes.local_environment(
        runtimes.local_store(tmp_path, "default"), 5123, {}, RUN_SECRET
    )
    assert "init_command" not in local["MLFLOW_BACKEND_STORE_URI"]  # SQLite has no sessions
    with pytest.raises(HelperError, match="MLFLOW_AWS_DB_IDLE_SECONDS must be a whole number"):
        runtimes.process_environment(
            churn,
            5123,
            {"MLFLOW_AWS_DB_IDLE_SECONDS": "soon"},
            churn.backend_store_uri,
            {},
            RUN_SECRET,
        )


# -- TLS --------------------------------------------------------------------------------------


def test_the_ca_comes_from_the_bundle_or_db_ca_and_never_goes_missing(
    churn: ProjectConnection, tmp_path: Path
) -> None:
    assert tls.ca_bundle_text(churn, None) == (CA_PEM, "the stack's RDS CA bundle")
    own = tmp_path / "my certs" / "rds bundle.pem"
    own.parent.mkdir()
    own.write_text(CA_PEM)
    assert tls.ca_bundle_text(churn, own) == (CA_PEM, f"--db-ca {own}")
    with pytest.raises(HelperError, match="cannot read it"):
        tls.ca_bundle_text(churn, tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(HelperError, match="not a PEM file"):
        tls.ca_bundle_text(churn, tmp_path / "junk.pem")
    old = parse_connection_bundle(
        {k: v for k, v in sample_bundle().items() if k != "DatabaseCaBundle"}, "old"
    )
    with pytest.raises(HelperError, match=r"no DatabaseCaBundle.*pulumi up.*--db-ca"):
        tls.ca_bundle_text(old, None)
    assert tls.with_ssl_ca("mysql+pymysql://h/db", str(own)) == (
        "mysql+pymysql://h/db?ssl_ca=" + str(own).replace(" ", "%20")
    )
    assert (
        tls.with_ssl_ca("mysql+pymysql://h/db?ssl_ca=/x", "/y") == "mysql+pymysql://h/db?ssl_ca=/x"
    )


def test_the_ca_file_is_private_and_gone_afterwards() -> None:
    with tls.ca_file(CA_PEM) as path:
        assert path.read_text() == CA_PEM
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.exists() and not path.parent.exists()


def test_a_login_without_a_ca_is_refused_before_connecting() -> None:
    with pytest.raises(HelperError, match="refusing an unverified login"):
        checks.check_database_login("mysql+pymysql://u:p@127.0.0.1:1/db", "test")


# -- the server role's credentials ------------------------------------------------------------


class FixedSource:
    def __init__(self, credentials: RoleCredentials) -> None:
        self.credentials = credentials

    def current(self) -> RoleCredentials:
        return self.credentials


def test_the_credentials_endpoint_answers_only_with_its_token() -> None:
    from datetime import UTC, datetime, timedelta

    role = RoleCredentials(
        "ASIAROLE", AWS_SECRET, AWS_TOKEN, datetime.now(UTC) + timedelta(hours=1)
    )
    with credentials_endpoint(FixedSource(role)) as env:  # type: ignore[arg-type]
        url = env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        assert url.startswith("http://127.0.0.1:")
        for token in (None, "wrong", env["AWS_CONTAINER_AUTHORIZATION_TOKEN"][:-1]):
            headers = {"Authorization": token} if token else {}
            request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(request, timeout=5)  # noqa: S310 (loopback)
            assert denied.value.code == 403
        # What botocore's container provider does with the variables: the role, not the user.
        from botocore.credentials import ContainerProvider

        provider = ContainerProvider(environ=env)
        loaded = provider.load().get_frozen_credentials()
        assert (loaded.access_key, loaded.secret_key, loaded.token) == (
            "ASIAROLE", AWS_SECRET, AWS_TOKEN)  # fmt: skip
    with pytest.raises(urllib.error.URLError):  # the endpoint is gone with the block
        urllib.request.urlopen(url, timeout=2)  # noqa: S310


def test_session_names_are_valid_for_sts() -> None:
    import re

    name = session_name("churn")
    assert name.startswith("mlflow-churn-") and re.fullmatch(r"[\w+=,.@-]{2,64}", name)
    env = without_user_credentials({"AWS_PROFILE": "x", "AWS_ROLE_ARN": "y", "PATH": "/bin"})
    assert env == {"PATH": "/bin", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                   "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


# -- outputs and bundles ----------------------------------------------------------------------


def projects_from(data: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    return run_cli(["projects", "--outputs", str(write_outputs(tmp_path, data))], capsys)


def test_projects_lists_names_and_artifact_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = projects_from(sample_outputs(), tmp_path, capsys)
    assert code == 0
    assert out.splitlines() == [
        "churn\ts3://mlflow-aws-dev-demo/churn",
        "fraud-detection\ts3://mlflow-aws-dev-demo/fraud-detection",
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
        (broken(["Region"], KeyError), "missing field Region"),
        (
            broken(["Projects", "churn", "ConnectionSecretArn"], KeyError),
            "missing field Projects.churn.ConnectionSecretArn",
        ),
        (broken(["Region"], 5), "Region must be a non-empty string, got a number"),
        (broken(["Projects"], []), "Projects must be a JSON object, got a list"),
        (broken(["Projects", "churn"], "x"), "Projects.churn must be a JSON object, got a string"),
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


def test_outputs_hold_no_password_and_none_is_read() -> None:
    parsed = parse_stack_outputs(sample_outputs(), "t")
    assert parsed.project("churn").connection_secret_arn.endswith(
        ":secret:mlflow-aws/dev/churn-AbC123"
    )
    # A file from before (with passwords in it) still parses; the passwords are not kept.
    old = copy.deepcopy(sample_outputs())
    old["Projects"]["churn"]["Password"] = PROJECT_PASSWORD
    assert_no_secret(repr(parse_stack_outputs(old, "t")))


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
    connection = parse_connection_bundle(sample_bundle(), "secret s")
    assert connection.database_port == 3306 and connection.artifact_root.endswith("/churn")
    assert connection.database_ca_bundle == CA_PEM and connection.server_role_arn == ROLE_ARN
    assert_no_secret(repr(connection))
    with pytest.raises(OutputsError, match="secret s: missing field ImageUri"):
        parse_connection_bundle(
            {k: v for k, v in sample_bundle().items() if k != "ImageUri"}, "secret s"
        )
    older = {k: v for k, v in sample_bundle().items() if k not in ("ServerRoleArn", "Stack")}
    assert parse_connection_bundle(older, "s").server_role_arn is None
    with pytest.raises(HelperError, match=r"names no server role.*pulumi up"):
        runtimes.server_role_arn(parse_connection_bundle(older, "s"))


# -- the outputs point at the secret, which is read with the teammate's credentials --------


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in moto.aws_env().items():
        monkeypatch.setenv(key, value)
    return moto.aws_env()


def put_secret(aws_env: dict[str, str], name: str, bundle: dict[str, Any]) -> str:
    client = boto3.client("secretsmanager", endpoint_url=aws_env["AWS_ENDPOINT_URL"],
                          region_name="eu-west-1")  # fmt: skip
    try:
        return str(client.create_secret(Name=name, SecretString=json.dumps(bundle))["ARN"])
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=json.dumps(bundle))
        return str(client.describe_secret(SecretId=name)["ARN"])


def test_command_reads_the_secret_the_outputs_name_and_prints_no_value(
    aws_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arn = put_secret(aws_env, "mlflow-aws/dev/churn", sample_bundle())
    outputs = sample_outputs()
    outputs["Projects"]["churn"]["ConnectionSecretArn"] = arn
    path = write_outputs(tmp_path, outputs)
    code, out, err = run_cli(
        ["command", "--project", "churn", "--outputs", str(path), "--port", "5123"], capsys
    )
    assert code == 0, err
    assert out.startswith("docker run --rm --name mlflow-churn-5123 -p 127.0.0.1:5123:5000 ")
    assert out.strip().endswith(f"{IMAGE} --app-name mlflow-aws-run-secret")
    assert "-e MLFLOW_BACKEND_STORE_URI" in out and "-e MLFLOW_AWS_RUN_SECRET" in out
    assert "no value is shown" in err
    assert_no_secret(out + err)
    assert CA_PEM.splitlines()[1] not in out


# -- CLI --------------------------------------------------------------------------------------


def test_env_prints_the_export_line(capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow_aws.artifact_settings import MIB

    code, out, err = run_cli(["env"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
        f"export MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE={8 * MIB}",
        f"export MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE={16 * MIB}",
        f"export MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE={16 * MIB}",
        "export MLFLOW_ENABLE_ASYNC_LOGGING=true",
        "export MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1",
    ]
    assert "artifacts: presigned, straight to and from S3" in err
    assert "#" not in out  # a comment would end `eval $(helper env)` early
    assert run_cli(["env", "--port", "5123"], capsys)[1].startswith(
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5123\n"
    )


def test_env_proxied_turns_presigned_transfer_off(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["env", "--artifacts", "proxied"], capsys)
    assert code == 0
    assert out.splitlines()[1:] == [
        "export MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=false",
        "export MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD=false",
        "export MLFLOW_ENABLE_ASYNC_LOGGING=true",
        "export MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1",
    ]
    assert "artifacts: proxied, every byte through the server" in err


def test_serve_refuses_artifacts_without_remote(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["serve", "--project", "churn", "--artifacts", "proxied"], capsys)
    assert code == 2 and "--artifacts goes with --remote" in err


def test_the_plugin_sets_the_sizes_as_defaults_only() -> None:
    from mlflow_aws.artifact_settings import apply_client_defaults, client_settings

    environ: dict[str, str] = {"MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": "104857600"}
    apply_client_defaults(environ)
    assert environ == {
        **client_settings("presigned"),
        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": "104857600",
    }
    proxied = {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}
    apply_client_defaults(proxied)
    assert proxied == {"MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


def test_auto_artifacts_probe_the_s3_endpoint_of_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from helper import artifacts

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
        assert artifacts.choose("auto", "eu-west-1", probe=True)[0] == "presigned"
    mode, why = artifacts.choose("auto", "eu-west-1", probe=True)  # nothing listens now
    assert mode == "proxied" and f"127.0.0.1:{port}" in why and "not reachable" in why
    assert artifacts.choose("presigned", "eu-west-1", probe=True)[0] == "presigned"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert artifacts.s3_endpoint("eu-west-1") == ("s3.eu-west-1.amazonaws.com", 443)


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
        (["serve", "--local", "--db-ca", "ca.pem"], "drop --db-ca"),
        (["upgrade", "--local", "--db-ca", "ca.pem"], "drop --db-ca"),
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


def test_docker_missing_suggests_the_process_runtime_before_any_aws_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path, sample_outputs())
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # an AWS call would fail here
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


def test_aws_failures_become_one_line_with_the_fix() -> None:
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        ProfileNotFound,
        UnauthorizedSSOTokenError,
    )

    from helper.aws import aws_errors

    expired = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The security token has expired"}},
        "GetCallerIdentity",
    )
    for failure in (expired, NoCredentialsError(), UnauthorizedSSOTokenError()):
        with pytest.raises(HelperError, match="aws sso login"), aws_errors("testing"):
            raise failure
    with pytest.raises(HelperError, match="list-profiles"), aws_errors("testing"):
        raise ProfileNotFound(profile="nosuch")


def test_upgrade_hint_repeats_the_source() -> None:
    args = cli.build_parser().parse_args(["serve", "--project", "churn", "--outputs", "o.json"])
    assert cli._upgrade_hint(args, "churn") == (
        "python -m helper upgrade --project churn --outputs o.json"
    )
    args = cli.build_parser().parse_args(["serve", "--local", "--data-dir", "/d"])
    assert cli._upgrade_hint(args, "default") == (
        "python -m helper upgrade --local --project default --data-dir /d"
    )


# -- --stack, with a stand-in pulumi CLI --------------------------------------------------------


def fake_pulumi(bin_dir: Path, outputs: dict[str, Any], fail: str | None = None) -> Path:
    """A pulumi CLI that prints the outputs JSON (secrets masked, as without --show-secrets)
    for ``stack output --json`` and logs every call it gets."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "masked.json").write_text(json.dumps(outputs))
    calls = bin_dir / "calls.log"
    failure = f'echo "error: {fail}" >&2; exit 255' if fail else ":"
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'case "$*" in\n'
        "  *--show-secrets*) echo 'the helper must not decrypt secrets' >&2; exit 98 ;;\n"
        f"  *'stack output'*) {failure}; cat {bin_dir}/masked.json ;;\n"
        "  *) echo unexpected >&2; exit 99 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return calls


def test_stack_source_reads_outputs_with_the_pulumi_cli_decrypting_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_pulumi(tmp_path / "bin", sample_outputs())
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    code, out, err = run_cli(["projects", "--stack", "dev"], capsys)
    assert code == 0 and out.startswith("churn\ts3://mlflow-aws-dev-demo/churn\n"), err
    logged = calls.read_text()
    # Reading a stack's outputs must not change the user's current stack, nor decrypt.
    assert logged.splitlines() == ["stack output --json --stack dev --non-interactive"]


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


# -- supervising ------------------------------------------------------------------------------


def test_ctrl_c_before_the_server_is_healthy_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import threading

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    never_healthy = supervise.ServerLaunch(
        description="stand-in server",
        argv=[sys.executable, "-c", "import time; time.sleep(60)"],
        env=dict(os.environ),
        port=free_port(),
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = supervise.run_server(never_healthy, out=io.StringIO(), err=io.StringIO())
    finally:
        timer.cancel()
    assert code == 130  # an interrupted start is not a success; a stopped running server is 0
    assert not list((tmp_path / "mlflow-aws" / "run").iterdir())  # its record is gone too


def test_a_server_left_by_a_killed_helper_is_reclaimed_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record whose process group still runs (here: a watchdog-led sleeper whose helper
    vanished without its lifeline closing) is stopped by the next start on that port."""
    import signal

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    launch = supervise.ServerLaunch("left", [sys.executable, "-c", "import time; time.sleep(300)"],
                                    dict(os.environ), port, project="churn")  # fmt: skip
    left = subprocess.Popen(
        supervise.watchdog_argv(launch), stdin=subprocess.PIPE, start_new_session=True
    )
    killed_helper = subprocess.Popen([sys.executable, "-c", "pass"])
    killed_helper.wait()
    try:
        with supervise.recorded(launch, left.pid, helper_pid=killed_helper.pid):
            record = tmp_path / "mlflow-aws" / "run" / f"port-{port}.json"
            assert stat.S_IMODE(record.stat().st_mode) == 0o600
            err = io.StringIO()
            supervise.reclaim_port(port, err)
            assert "found the MLflow server of project churn" in err.getvalue()
            assert left.wait(20) is not None
            assert not record.exists()
            supervise.reclaim_port(port, err)  # nothing left: silent
    finally:
        if left.poll() is None:
            os.killpg(left.pid, signal.SIGKILL)


def test_a_live_helpers_server_is_never_reclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's helper (this process) still runs: its server stays, the port is refused;
    a reused pid (same number, other start time) does not count as that helper."""
    import signal

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    launch = supervise.ServerLaunch("live", [sys.executable, "-c", "import time; time.sleep(300)"],
                                    dict(os.environ), port, project="churn")  # fmt: skip
    live = subprocess.Popen(
        supervise.watchdog_argv(launch), stdin=subprocess.PIPE, start_new_session=True
    )
    try:
        with supervise.recorded(launch, live.pid):
            with pytest.raises(HelperError, match=f"port {port} is in use by another helper "
                               "serving project churn .*--port"):  # fmt: skip
                supervise.reclaim_port(port, io.StringIO())
            assert live.poll() is None
            record = tmp_path / "mlflow-aws" / "run" / f"port-{port}.json"
            assert record.exists()
            stale = json.loads(record.read_text())
            stale["helper_identity"] = "0"  # this pid, but not the process that wrote it
            record.write_text(json.dumps(stale))
            supervise.reclaim_port(port, io.StringIO())
            assert live.wait(20) is not None
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)


def test_the_watchdog_stops_the_server_when_its_helper_is_killed(tmp_path: Path) -> None:
    """SIGKILL the helper (a stand-in running run_server): the server does not survive it."""

    pid_file = tmp_path / "server.pid"
    server = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    helper = (
        "import os, sys\n"
        "sys.path.insert(0, os.environ['ROOT'])\n"
        "from helper.supervise import ServerLaunch, run_server\n"
        f"run_server(ServerLaunch('stand-in', [sys.executable, '-c', {server!r}], dict(os.environ),"
        f" {free_port()}, health_timeout=300))\n"
    )
    env = {**os.environ, "ROOT": str(ROOT), "XDG_RUNTIME_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", helper], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    server_pid = int(pid_file.read_text())
    process.kill()  # no cleanup code of the helper runs
    process.wait(10)
    deadline = time.monotonic() + 20
    while alive(server_pid):
        assert time.monotonic() < deadline, "the server outlived its helper"
        time.sleep(0.1)
    assert process.stderr is not None
    process.stderr.close()


def test_a_worker_that_ignores_sigterm_does_not_outlive_the_group_stop() -> None:
    """The server's leader exits on SIGTERM but a worker of its group ignores it (a stuck
    uvicorn): the one group stop (helper, watchdog and reclaim alike) SIGKILLs what is left."""
    import signal

    from helper.watchdog import group_gone, stop_group

    worker = (
        "import signal, subprocess, sys, time\n"
        "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(300)'\n"
        "child = subprocess.Popen([sys.executable, '-c', code], stdout=sys.stdout)\n"
        "time.sleep(300)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", worker], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == b"1"
        started = time.monotonic()
        assert stop_group(leader.pid, leader, timeout=1.0) is True
        assert leader.returncode == -signal.SIGTERM  # the leader went at the polite signal
        assert group_gone(leader.pid, 0.1)  # ... and the worker at SIGKILL, a timeout later
        assert 1.0 <= time.monotonic() - started < 10
        assert stop_group(leader.pid, leader, timeout=1.0) is True  # stopping twice is harmless
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        if leader.stdout is not None:
            leader.stdout.close()
