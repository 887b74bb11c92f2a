"""``pip install <the repository>`` gives teammates and training jobs the package ``mlflow_aws``
(the helper as ``mlflow_aws.helper``, the server settings) and nothing generic at the top level,
without Pulumi; ``python -m helper`` keeps working inside the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools builds in the source tree (build/, *.egg-info).
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("mlflow_aws", "helper"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__py*"))
    out = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source)
    assert built.returncode == 0, built.stderr
    [path] = out.glob("mlflow_aws-*.whl")
    return path


def test_the_wheel_holds_only_the_mlflow_aws_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == {"mlflow_aws"}  # no helper/, infra/, projects/, tests/
    assert "mlflow_aws/helper/cli.py" in names
    assert "mlflow_aws/helper/__main__.py" in names
    assert "mlflow_aws/server.env" in names
    assert "mlflow_aws/migration/prepare.py" in names  # the image entrypoint runs it
    for module in ("token", "sign_in_app", "client", "signer"):
        assert f"mlflow_aws/auth/{module}.py" in names
    assert "mlflow_aws/helper/proxy.py" in names
    assert not any(n.startswith(("mlflow_aws/infra", "mlflow_aws/projects")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (think: a training job's) with the wheel and its own dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    result = run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    assert result.returncode == 0, result.stderr
    return venv


def assert_export_lines(stdout: str, tracking_uri: str) -> None:
    """``env`` prints shell lines only: the tracking URI first, then the client's settings."""
    lines = stdout.strip().splitlines()
    assert lines[0] == f"export MLFLOW_TRACKING_URI={tracking_uri}", stdout
    assert all(line.startswith("export MLFLOW_") for line in lines), stdout


def test_installed_helper_runs_without_pulumi(installed: Path, tmp_path: Path) -> None:
    python = installed / "bin" / "python"
    listed = run(python, "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert "pulumi" not in listed
    # From a directory that is not the repository: only the installed package can answer.
    help_text = run(python, "-m", "mlflow_aws.helper", "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
    script = run(installed / "bin" / "mlflow-aws", "env", "--port", "5123", cwd=tmp_path)
    assert_export_lines(script.stdout, "http://127.0.0.1:5123")
    generic = run(python, "-c", "import helper", cwd=tmp_path)
    assert generic.returncode != 0 and "No module named 'helper'" in generic.stderr
    # The tuned settings travel with the package (the process runtime reads them).
    settings = run(
        python,
        "-c",
        "from mlflow_aws.helper.server_settings import server_env_defaults as d; "
        "print(d()['MLFLOW_WORKERS'])",
        cwd=tmp_path,
    )
    assert settings.stdout.strip() == "1", settings.stderr


def test_python_m_helper_still_works_in_the_repository() -> None:
    result = run(sys.executable, "-m", "helper", "env", "--port", "5124", cwd=ROOT)
    assert_export_lines(result.stdout, "http://127.0.0.1:5124")


def test_installed_entry_points_are_registered(installed: Path, tmp_path: Path) -> None:
    """mlflow finds the server app and the client plugin through importlib.metadata."""
    python = installed / "bin" / "python"
    listed = run(
        python,
        "-c",
        "from importlib.metadata import entry_points as e; "
        "print([(p.group, p.name, p.value) for g in ('mlflow.app', "
        "'mlflow.request_auth_provider') for p in e(group=g)])",
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert eval(listed.stdout) == [  # noqa: S307 (our own repr)
        ("mlflow.app", "aws-iam", "mlflow_aws.auth.sign_in_app:create_app"),
        ("mlflow.app", "mlflow-aws-run-secret", "mlflow_aws.run_secret:create_app"),
        (
            "mlflow.request_auth_provider",
            "aws-iam",
            "mlflow_aws.auth.client:AwsIamRequestAuthProvider",
        ),
    ]
    # The signing proxy and the token code need only boto3 (no mlflow in this venv).
    signing = run(
        python,
        "-c",
        "import mlflow_aws.helper.proxy, mlflow_aws.auth.signer, mlflow_aws.auth.token as t; "
        "print(t.sts_endpoint_url('eu-west-1'))",
        cwd=tmp_path,
    )
    assert signing.stdout.strip() == "https://sts.eu-west-1.amazonaws.com/", signing.stderr


# -- each subcommand of the installed helper, as a new user meets it (issue 15, 12 and 13) -----


def installed_helper(
    venv: Path, tmp_path: Path, *argv: str | Path, script: bool = True
) -> subprocess.CompletedProcess[str]:
    """The installed helper, outside the repository, with AWS unreachable and no Docker."""
    command = [venv / "bin" / "mlflow-aws"] if script else [venv / "bin" / "python", "-m",
                                                           "mlflow_aws.helper"]  # fmt: skip
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "AKIAX",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return subprocess.run(
        [str(a) for a in [*command, *argv]], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


def outputs(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "outputs.json"
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mlflow-aws/dev/churn-AbCdEf"
    path.write_text(json.dumps({"Region": "eu-west-1", "Projects": {"churn": {
        "ArtifactRoot": "s3://b/churn", "ConnectionSecretArn": arn}}}))  # fmt: skip
    return path


def test_every_subcommand_of_the_installed_helper_says_what_it_needs(
    installed: Path, tmp_path: Path
) -> None:
    out = outputs(tmp_path)
    local = tmp_path / "data"
    (local / "default").mkdir(parents=True)
    (local / "default" / "mlflow.db").write_bytes(b"")
    pip_server = "pip install 'mlflow-aws[server]'"
    cases = {
        # argv -> (exit code, what the one-line message must say)
        ("serve", "--project", "churn", "--outputs", out, "--runtime", "process"): (1, pip_server),
        ("upgrade", "--project", "churn", "--outputs", out): (1, pip_server),
        ("serve", "--project", "churn", "--outputs", out): (1, "docker is not installed"),
        ("serve", "--local", "--data-dir", local, "--port", "5291"): (1, "pip install mlflow"),
        ("upgrade", "--local", "--data-dir", local): (1, "pip install mlflow"),
        ("serve", "--project", "churn", "--outputs", out, "--remote"): (1, "AWS"),
        ("command", "--project", "churn", "--outputs", out): (1, "AWS"),
        ("env", "--remote", "--project", "churn", "--outputs", out): (1, "AWS"),
        ("serve", "--runtime", "process"): (2, "`mlflow-aws projects`"),
        ("projects", "--outputs", out): (0, ""),
        ("env",): (0, ""),
    }
    for argv, (code, says) in cases.items():
        result = installed_helper(installed, tmp_path, *argv)
        shown = " ".join(map(str, argv))
        assert result.returncode == code, (shown, result.stderr)
        assert "Traceback" not in result.stderr and "ModuleNotFoundError" not in result.stderr, (
            shown, result.stderr)  # fmt: skip
        assert says in result.stderr, (shown, result.stderr)
        assert "python -m helper" not in result.stdout + result.stderr, shown
        if code != 0:  # a refusal is one line; env's notes on what to export are not errors
            assert len(result.stderr.strip().splitlines()) <= 1, (shown, result.stderr)


def test_the_installed_helpers_help_names_the_command_that_was_run(
    installed: Path, tmp_path: Path
) -> None:
    script = installed_helper(installed, tmp_path, "--help")
    assert script.stdout.startswith("usage: mlflow-aws "), script.stdout
    module = installed_helper(installed, tmp_path, "--help", script=False)
    assert module.stdout.startswith("usage: python -m mlflow_aws.helper "), module.stdout
    hint = installed_helper(installed, tmp_path, "serve", "--runtime", "process", script=False)
    assert "`python -m mlflow_aws.helper projects`" in hint.stderr


def test_the_server_extra_brings_what_laptop_servers_need(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "v"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    result = run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[server]")
    assert result.returncode == 0, result.stderr
    served = installed_helper(venv, tmp_path, "serve", "--project", "churn", "--outputs",
                              outputs(tmp_path), "--runtime", "process")  # fmt: skip
    assert served.returncode == 1 and "Traceback" not in served.stderr
    assert "PyMySQL" not in served.stderr  # past the package check: now AWS is asked
    assert "AWS" in served.stderr, served.stderr
