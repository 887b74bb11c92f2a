"""How each runtime starts the same tuned server: pure builders, then the side effects.

* process: ``python -m mlflow server`` of this interpreter, every setting in its environment,
  the project's server role's credentials served to it on loopback (helper/credentials.py);
* docker: the stack's image, hardened, with every value in the docker client's environment
  (``-e NAME``: no env file, nothing in argv);
* local: the process runtime on SQLite and a local artifact directory (no AWS, no Docker).

Every runtime verifies the database's TLS certificate (helper/tls.py) and serves on
127.0.0.1 only, with Host headers and CORS origins pinned to that address and port, and only to
clients that hold the run's secret (``mlflow server --app-name mlflow-aws-run-secret``,
mlflow_aws/run_secret.py: the secret reaches the server in its environment, never argv).
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

from mlflow_aws import environment as env_names
from mlflow_aws import run_secret
from mlflow_aws.artifact_settings import PRESIGNED

from . import checks, supervise, tls
from .errors import HelperError
from .outputs import ProjectConnection
from .server_settings import container_port, server_env_defaults, server_environment
from .supervise import ServerLaunch, run_server

DEFAULT_LOCAL_PROJECT = "default"
# The image's entrypoint writes this PEM to a private file and verifies the database with it.
CA_BUNDLE_VARIABLE = env_names.DB_CA_BUNDLE
# Writable places of the read-only container: a disk-backed anonymous volume for uploads
# (MLflow spools proxied artifacts there; removed with the container) and a small home.
CONTAINER_TMP = "/tmp"  # noqa: S108 (inside the container)
CONTAINER_HOME = "/home/mlflow"


def mlflow_server_argv() -> list[str]:
    """The server of this interpreter behind the run's secret; its other options all come from
    MLFLOW_* variables."""
    return [sys.executable, "-m", "mlflow", "server", *secret_app_argv()]


def secret_app_argv() -> list[str]:
    return ["--app-name", run_secret.APP_NAME]


def secret_environment(secret: str, public_port: int) -> dict[str, str]:
    """What the server's app (mlflow_aws.run_secret) needs: the secret and the port clients use."""
    return {run_secret.SECRET_ENV: secret, run_secret.PUBLIC_PORT_ENV: str(public_port)}


def without_client_token(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without the client's copy of the secret."""
    return {k: v for k, v in environ.items() if k != run_secret.CLIENT_TOKEN_ENV}


def server_role_arn(connection: ProjectConnection) -> str:
    if not connection.server_role_arn:
        raise HelperError(
            f"the connection bundle of project {connection.project} names no server role "
            "(ServerRoleArn), so its server would run with your own AWS rights: the stack "
            "predates server roles. Ask the platform engineer to run `pulumi up`"
        )
    return connection.server_role_arn


# -- process runtime --------------------------------------------------------------------------


def process_environment(
    connection: ProjectConnection,
    port: int,
    inherited: Mapping[str, str],
    backend_store_uri: str,
    credentials_env: Mapping[str, str],
    secret: str,
) -> dict[str, str]:
    """The child's environment: the caller's, without any of the caller's AWS credentials,
    plus the tuned settings, the project's store (TLS verified) and artifact root, the
    server role's credentials endpoint and the run's secret."""
    from .credentials import without_user_credentials

    return {
        **server_environment(
            backend_store_uri=backend_store_uri,
            artifacts_destination=connection.artifact_root,
            host=checks.LOOPBACK,
            port=port,
            inherited=without_client_token(without_user_credentials(dict(inherited))),
        ),
        **secret_environment(secret, port),
        # The bucket's region, whatever the caller's default is.
        "AWS_REGION": connection.region,
        "AWS_DEFAULT_REGION": connection.region,
        **credentials_env,
    }


def process_launch(
    connection: ProjectConnection,
    port: int,
    upgrade_hint: str,
    backend_store_uri: str,
    credentials_env: Mapping[str, str],
    secret: str,
) -> ServerLaunch:
    return ServerLaunch(
        description=f"MLflow server of project {connection.project} (process)",
        argv=mlflow_server_argv(),
        env=process_environment(
            connection, port, os.environ, backend_store_uri, credentials_env, secret
        ),
        port=port,
        upgrade_hint=upgrade_hint,
        project=connection.project,
        secret=secret,
        artifacts=PRESIGNED,  # the client is on the server's machine: it reaches S3 too
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
    data_dir = data_dir.expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        raise HelperError(f"--data-dir {data_dir} is a file, not a directory", 2)
    return LocalStore(project, data_dir / project)


def local_environment(
    store: LocalStore, port: int, inherited: Mapping[str, str], secret: str
) -> dict[str, str]:
    return {
        **server_environment(
            backend_store_uri=store.backend_store_uri,
            artifacts_destination=str(store.artifacts_directory),
            host=checks.LOOPBACK,
            port=port,
            inherited=without_client_token(inherited),
        ),
        **secret_environment(secret, port),
    }


def local_launch(store: LocalStore, port: int, upgrade_hint: str, secret: str) -> ServerLaunch:
    return ServerLaunch(
        description=f"local MLflow server of project {store.project}",
        argv=mlflow_server_argv(),
        env=local_environment(store, port, os.environ, secret),
        port=port,
        upgrade_hint=upgrade_hint,
        project=store.project,
        secret=secret,
    )


# -- docker runtime ---------------------------------------------------------------------------


def container_name(project: str, port: int) -> str:
    return f"mlflow-{project}-{port}"


def docker_run_argv(connection: ProjectConnection, port: int, env_names: list[str]) -> list[str]:
    """``docker run`` for the project's server: published on 127.0.0.1 only, no capability,
    no privilege escalation, a read-only root; values of ``env_names`` come from the docker
    client's environment (``-e NAME``), so none is in argv or in a file."""
    return [
        "docker", "run", "--rm",
        "--name", container_name(connection.project, port),
        "-p", f"127.0.0.1:{port}:{container_port()}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--read-only",
        "--mount", f"type=volume,destination={CONTAINER_TMP}",
        "--tmpfs", f"{CONTAINER_HOME}:rw,nosuid,nodev,noexec,size=64m",
        *[arg for name in env_names for arg in ("-e", name)],
        connection.image_uri,
        *secret_app_argv(),
    ]  # fmt: skip


def container_environment(
    connection: ProjectConnection,
    aws_env: Mapping[str, str],
    ca_pem: str,
    public_port: int,
    secret: str,
) -> dict[str, str]:
    """The container's variables: the tuned settings (host and port as inside the image, the
    allowed hosts those of the published port), the project's store (the entrypoint verifies
    it with ``ca_pem``), the server role's credentials and the run's secret (the server
    listens on 0.0.0.0 inside the container: the secret, not the address, keeps others out)."""
    image_defaults = server_env_defaults()
    return {
        **server_environment(
            backend_store_uri=connection.backend_store_uri,
            artifacts_destination=connection.artifact_root,
            host=image_defaults["MLFLOW_HOST"],
            port=container_port(),
            public_port=public_port,
        ),
        CA_BUNDLE_VARIABLE: ca_pem,
        **secret_environment(secret, public_port),
        **aws_env,
        "AWS_REGION": connection.region,
        "AWS_DEFAULT_REGION": connection.region,
    }


def container_variable_names(connection: ProjectConnection, port: int) -> list[str]:
    placeholder = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    return list(container_environment(connection, placeholder, "", port, ""))


def docker_command_text(connection: ProjectConnection, port: int) -> str:
    """What ``command`` prints: the docker run command; values are never in it."""
    return shlex.join(docker_run_argv(connection, port, container_variable_names(connection, port)))


def image_registry(connection: ProjectConnection) -> str:
    """``<account>.dkr.ecr.<region>.<suffix>`` of the connection secret's own ARN: the only
    registry the helper logs in to (never the one a bundle's ImageUri names; helper/trust.py
    has already refused an image outside it)."""
    from .trust import secret_identity

    if connection.secret_arn is None:
        raise HelperError(
            f"the connection of project {connection.project} was not read from its secret: "
            "no registry to log in to"
        )
    identity = secret_identity(connection.secret_arn, connection.project, "the connection")
    registry = identity.ecr_registry
    if not connection.image_uri.startswith(f"{registry}/"):
        raise HelperError(f"the image {connection.image_uri} is not in registry {registry}")
    return registry


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


def docker_stop_argv(docker: str, name: str) -> list[str]:
    return [docker, "stop", "--time", "10", name]


def docker_stopper(docker: str, name: str) -> Callable[[subprocess.Popen[str]], None]:
    def stop(process: subprocess.Popen[str]) -> None:
        from .supervise import STOP_TIMEOUT_SECONDS, stop_process_group

        if process.poll() is None:
            subprocess.run(
                docker_stop_argv(docker, name),
                capture_output=True,
                check=False,
                timeout=STOP_TIMEOUT_SECONDS + 10,
            )
        stop_process_group(process)  # the docker client, if it is still there

    return stop


# -- starting ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedStore:
    uri: str  # the backend URI, verifying the database against ca_pem (a file it names)
    ca_pem: str


@contextlib.contextmanager
def verified_store(connection: ProjectConnection, db_ca: Path | None) -> Iterator[VerifiedStore]:
    """The project's store verified against its CA bundle (in a private file for the block's
    duration), after reaching the database and one login as the project's user."""
    pem, source = tls.ca_bundle_text(connection, db_ca)  # a bad --db-ca is said first
    checks.check_database_reachable(connection.database_endpoint, connection.database_port)
    with tls.ca_file(pem) as ca:
        uri = tls.with_ssl_ca(connection.backend_store_uri, str(ca))
        checks.check_database_login(uri, source)
        yield VerifiedStore(uri, pem)


def _free_port(port: int) -> None:
    supervise.reclaim_port(port)
    checks.check_port_free(port)


def _schema_of(connection: ProjectConnection) -> str:
    return f"the schema of project {connection.project} ({connection.database})"


def serve_docker(
    connection: ProjectConnection,
    port: int,
    upgrade_hint: str,
    db_ca: Path | None,
    docker: str,
) -> int:
    _free_port(port)
    with verified_store(connection, db_ca) as store:
        # The image migrates an older schema on start; one of a newer MLflow is refused here
        # already (and by the image's entrypoint, which also checks the revision).
        checks.check_schema_version(
            store.uri,
            _schema_of(connection),
            upgrade_hint,
            may_migrate=True,
            server_version=connection.mlflow_version,
        )
        ca_pem = store.ca_pem
    # The container verifies the database again, with the same CAs (CA_BUNDLE_VARIABLE): the
    # helper's CA file is not needed while it runs.
    return _run_container(docker, connection, port, upgrade_hint, ca_pem)


def _run_container(
    docker: str, connection: ProjectConnection, port: int, upgrade_hint: str, ca_pem: str
) -> int:
    from . import aws
    from .credentials import DOCKER_SESSION_SECONDS, assume_server_role

    credentials = assume_server_role(
        server_role_arn(connection), connection.region, connection.project, DOCKER_SESSION_SECONDS
    )
    # A container cannot reach the helper's loopback, so it gets one set of the role's
    # credentials; the process runtime renews them instead.
    sys.stderr.write(
        f"note: the server's AWS credentials (the project's server role) expire at "
        f"{credentials.expiration:%Y-%m-%d %H:%M %Z}; artifact uploads fail after that: restart "
        "the helper then (the process runtime, --runtime process, renews them itself)\n"
    )
    registry = image_registry(connection)  # before any token exists
    docker_login(docker, registry, aws.ecr_login_password(connection.region))
    docker_pull(docker, connection.image_uri)
    name = container_name(connection.project, port)
    secret = supervise.choose_run_secret()
    values = container_environment(connection, credentials.as_env(), ca_pem, port, secret)
    launch = ServerLaunch(
        description=f"MLflow server of project {connection.project} (container {name})",
        argv=[docker, *docker_run_argv(connection, port, list(values))[1:]],
        env={**os.environ, **values},
        port=port,
        stop=docker_stopper(docker, name),
        upgrade_hint=upgrade_hint,
        project=connection.project,
        on_orphan=docker_stop_argv(docker, name),
        secret=secret,
        artifacts=PRESIGNED,
    )
    return run_server(launch)


def serve_process(
    connection: ProjectConnection, port: int, upgrade_hint: str, db_ca: Path | None = None
) -> int:
    from .credentials import RoleCredentialSource, credentials_endpoint

    checks.check_mlflow_version(connection.mlflow_version)
    secret = supervise.choose_run_secret()
    _free_port(port)
    with verified_store(connection, db_ca) as store:
        checks.check_schema_version(store.uri, _schema_of(connection), upgrade_hint)
        role = RoleCredentialSource(
            server_role_arn(connection), connection.region, connection.project
        )
        with credentials_endpoint(role) as credentials_env:
            launch = process_launch(
                connection, port, upgrade_hint, store.uri, credentials_env, secret
            )
            return run_server(launch)


def serve_local(store: LocalStore, port: int, upgrade_hint: str) -> int:
    secret = supervise.choose_run_secret()
    _free_port(port)
    checks.check_mlflow_installed("serve --local")
    if store.database_path.exists():
        checks.check_schema_version(
            store.backend_store_uri, f"the local store of project {store.project}", upgrade_hint
        )
        sys.stderr.write(f"local store of project {store.project}: {store.directory}\n")
    else:
        sys.stderr.write(
            f"creating a new, empty local store for project {store.project} at "
            f"{store.directory} (none there yet; check --project and --data-dir if you "
            "expected existing runs)\n"
        )
    try:
        store.artifacts_directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HelperError(f"cannot create the local store at {store.directory}: {exc}") from None
    return run_server(local_launch(store, port, upgrade_hint, secret))
