"""How each runtime starts the same tuned server: pure builders, then the side effects.

* process: ``python -m mlflow server`` of this interpreter, every setting in its environment;
* docker: the stack's image, secrets in a 0600 env file that is removed afterwards;
* local: the process runtime on SQLite and a local artifact directory (no AWS, no Docker).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from . import checks
from .errors import HelperError
from .outputs import ProjectConnection
from .server_settings import (
    container_port,
    server_env_defaults,
    server_environment,
    with_query_parameter,
)
from .supervise import ServerLaunch, run_server

# Aurora requires TLS; the image's entrypoint verifies it with the CA bundle (PEM) in this
# variable. A PEM has newlines, which docker's env file cannot carry: `docker run -e NAME`
# (no value) copies it from the docker client's environment instead.
CA_BUNDLE_VARIABLE = "MLFLOW_AWS_DB_CA_BUNDLE"
ENV_FILE_PLACEHOLDER = "<env-file>"
DEFAULT_LOCAL_PROJECT = "default"


def mlflow_server_argv() -> list[str]:
    """The server of this interpreter; its options all come from MLFLOW_* variables."""
    return [sys.executable, "-m", "mlflow", "server"]


# -- process runtime --------------------------------------------------------------------------


def process_environment(
    connection: ProjectConnection, port: int, inherited: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: the caller's (so boto3 in the server uses the same AWS
    credential chain) plus the tuned settings and the project's store and artifact root."""
    return {
        **server_environment(
            backend_store_uri=connection.backend_store_uri,
            artifacts_destination=connection.artifact_root,
            host=checks.LOOPBACK,
            port=port,
            inherited=inherited,
        ),
        # The bucket's region, whatever the caller's default is.
        "AWS_REGION": connection.region,
        "AWS_DEFAULT_REGION": connection.region,
    }


def process_launch(connection: ProjectConnection, port: int, upgrade_hint: str) -> ServerLaunch:
    return ServerLaunch(
        description=f"MLflow server of project {connection.project} (process)",
        argv=mlflow_server_argv(),
        env=process_environment(connection, port, os.environ),
        port=port,
        upgrade_hint=upgrade_hint,
    )


# -- local default ----------------------------------------------------------------------------


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mlflow-aws"


@dataclass(frozen=True)
class LocalStore:
    project: str
    directory: Path  # <data-dir>/<project>

    @property
    def database_path(self) -> Path:
        return self.directory / "mlflow.db"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.database_path}"  # absolute path: sqlite:////home/...

    @property
    def artifacts_directory(self) -> Path:
        return self.directory / "artifacts"


def local_store(data_dir: Path, project: str) -> LocalStore:
    return LocalStore(project, data_dir.expanduser().resolve() / project)


def local_environment(store: LocalStore, port: int, inherited: Mapping[str, str]) -> dict[str, str]:
    return server_environment(
        backend_store_uri=store.backend_store_uri,
        artifacts_destination=str(store.artifacts_directory),
        host=checks.LOOPBACK,
        port=port,
        inherited=inherited,
    )


def local_launch(store: LocalStore, port: int, upgrade_hint: str) -> ServerLaunch:
    return ServerLaunch(
        description=f"local MLflow server of project {store.project}",
        argv=mlflow_server_argv(),
        env=local_environment(store, port, os.environ),
        port=port,
        upgrade_hint=upgrade_hint,
    )


# -- docker runtime ---------------------------------------------------------------------------


def with_ssl_ca(uri: str, ca_path: str) -> str:
    """The backend URI with PyMySQL verifying the server against ``ca_path``."""
    return with_query_parameter(uri, "ssl_ca", quote(ca_path))


def container_name(project: str, port: int) -> str:
    return f"mlflow-{project}-{port}"


def docker_run_argv(connection: ProjectConnection, port: int, env_file: str) -> list[str]:
    """``docker run`` for the project's server: published on 127.0.0.1 only, secrets in the
    env file, the database's CA bundle from the docker client's environment, removed when it
    stops."""
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        container_name(connection.project, port),
        "-p",
        f"127.0.0.1:{port}:{container_port()}",
        "--env-file",
        env_file,
        "-e",
        CA_BUNDLE_VARIABLE,
        connection.image_uri,
    ]


def container_environment(
    connection: ProjectConnection, aws_env: Mapping[str, str]
) -> dict[str, str]:
    """The env file's variables: the tuned settings (host and port as inside the image), the
    project's store and the user's AWS credentials. (The entrypoint verifies TLS to the
    store with the CA bundle of ``CA_BUNDLE_VARIABLE``, which is not in the file.)"""
    image_defaults = server_env_defaults()
    return {
        **server_environment(
            backend_store_uri=connection.backend_store_uri,
            artifacts_destination=connection.artifact_root,
            host=image_defaults["MLFLOW_HOST"],
            port=container_port(),
        ),
        **aws_env,
        "AWS_REGION": connection.region,
        "AWS_DEFAULT_REGION": connection.region,
    }


def env_file_text(env: Mapping[str, str]) -> str:
    """docker's env-file format: KEY=VALUE per line, taken literally (no quoting)."""
    for key, value in env.items():
        if "\n" in value or "\r" in value or "=" in key:
            raise HelperError(f"the value of {key} cannot go into a docker env file")
    return "".join(f"{key}={value}\n" for key, value in env.items())


@contextlib.contextmanager
def private_env_file(env: Mapping[str, str]) -> Iterator[Path]:
    """A mode-0600 env file that exists only while the block runs (and not after a crash of
    the block: it is removed in ``finally``)."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="mlflow-aws-", suffix=".env")
    path = Path(name)
    try:
        os.fchmod(fd, 0o600)  # mkstemp's default already; stated because it matters
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(env_file_text(env))
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def docker_command_text(connection: ProjectConnection, port: int) -> str:
    """What ``command`` prints: the docker run command with the env file as a placeholder."""
    return shlex.join(docker_run_argv(connection, port, ENV_FILE_PLACEHOLDER))


def env_file_keys(connection: ProjectConnection) -> list[str]:
    keys = list(container_environment(connection, {}))
    return [*keys, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]


def image_registry(image_uri: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com`` of ``<registry>/<repo>@sha256:…``."""
    return image_uri.split("/", 1)[0]


def docker_login(docker: str, registry: str, password: str) -> None:
    result = subprocess.run(
        [docker, "login", "--username", "AWS", "--password-stdin", registry],
        input=password,  # stdin only: never argv, never printed
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HelperError(f"docker login to {registry} failed: {result.stderr.strip()}")


def docker_pull(docker: str, image_uri: str) -> None:
    # docker draws its progress on our stderr; stdout stays for the URL lines.
    result = subprocess.run([docker, "pull", image_uri], stdout=sys.stderr, check=False)
    if result.returncode != 0:
        raise HelperError(
            f"docker pull {image_uri} failed (exit {result.returncode}); see above. "
            "Your identity needs ECR pull rights (the project's policy)"
        )


def docker_stopper(docker: str, name: str) -> Callable[[subprocess.Popen[str]], None]:
    def stop(process: subprocess.Popen[str]) -> None:
        from .supervise import STOP_TIMEOUT_SECONDS, stop_process_group

        if process.poll() is None:
            subprocess.run(
                [docker, "stop", "--time", "10", name],
                capture_output=True,
                check=False,
                timeout=STOP_TIMEOUT_SECONDS + 10,
            )
        stop_process_group(process)  # the docker client, if it is still there

    return stop


def docker_client_environment(
    connection: ProjectConnection, inherited: Mapping[str, str]
) -> dict[str, str]:
    """The docker client's environment: the caller's plus the database's CA bundle, which
    ``docker run -e MLFLOW_AWS_DB_CA_BUNDLE`` hands to the container."""
    if not connection.database_ca_bundle:
        raise HelperError(
            "the server image verifies the database's TLS certificate and needs its CA bundle: "
            "pass --db-ca FILE (AWS's RDS bundle of the region, e.g. global-bundle.pem), or use "
            "--from-aws with a stack whose connection bundle carries DatabaseCaBundle",
            2,
        )
    return {**inherited, CA_BUNDLE_VARIABLE: connection.database_ca_bundle}


def serve_docker(connection: ProjectConnection, port: int, upgrade_hint: str) -> int:
    from . import aws

    docker = checks.check_docker()
    client_env = docker_client_environment(connection, os.environ)
    checks.check_port_free(port)
    checks.check_database_reachable(connection.database_endpoint, connection.database_port)
    checks.check_database_login(connection.backend_store_uri)
    credentials = aws.user_credentials(connection.region)
    if credentials.expires_at is not None:
        # The container gets a copy of them: it cannot refresh an SSO or assumed-role session.
        sys.stderr.write(
            f"note: your AWS credentials expire at {credentials.expires_at:%Y-%m-%d %H:%M %Z}; "
            "artifact uploads fail after that: restart the helper (or use --runtime process, "
            "which refreshes them)\n"
        )
    docker_login(
        docker, image_registry(connection.image_uri), aws.ecr_login_password(connection.region)
    )
    docker_pull(docker, connection.image_uri)
    name = container_name(connection.project, port)
    env = container_environment(connection, credentials.as_env())
    with private_env_file(env) as env_file:
        argv = [docker, *docker_run_argv(connection, port, str(env_file))[1:]]
        launch = ServerLaunch(
            description=f"MLflow server of project {connection.project} (container {name})",
            argv=argv,
            env=client_env,
            port=port,
            stop=docker_stopper(docker, name),
            upgrade_hint=upgrade_hint,
            # docker read the file when it created the container: no need to keep it around.
            on_healthy=lambda: env_file.unlink(missing_ok=True),
        )
        return run_server(launch)


def serve_process(connection: ProjectConnection, port: int, upgrade_hint: str) -> int:
    from . import aws

    checks.check_mlflow_version(connection.mlflow_version)
    checks.check_port_free(port)
    checks.check_database_reachable(connection.database_endpoint, connection.database_port)
    checks.check_database_login(connection.backend_store_uri)
    aws.check_credentials(connection.region)  # the server's S3 access uses the same chain
    return run_server(process_launch(connection, port, upgrade_hint))


def serve_local(store: LocalStore, port: int, upgrade_hint: str) -> int:
    checks.check_port_free(port)
    if checks.installed_mlflow_version() is None:
        raise HelperError(
            f"mlflow is not installed in {sys.executable}; "
            "run `./dev setup` and use .venv/bin/python"
        )
    store.artifacts_directory.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"local store: {store.directory}\n")
    return run_server(local_launch(store, port, upgrade_hint))
