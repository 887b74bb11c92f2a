"""Checks made before starting anything, so failures name their cause instead of a timeout."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import sys
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import HelperError
from .invocation import in_repository, install_hint

LOOPBACK = "127.0.0.1"
PROCESS_RUNTIME_HINT = "or run the server without Docker: add `--runtime process`"


def check_port_free(port: int, host: str = LOOPBACK) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option uvicorn binds with, so a port in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise HelperError(
                    f"port {port} on {host} is in use (another server, maybe another helper); "
                    f"stop it or pick another port with --port {port + 1}"
                ) from None
            raise HelperError(f"cannot use port {port} on {host}: {exc.strerror}") from None


def check_database_reachable(host: str, port: int, timeout: float = 5.0) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
    raise HelperError(
        f"cannot reach the database at {host}:{port} ({reason}). From outside the VPC your "
        "public IP must be in the stack's `db.allowedCidrs` (ask the platform engineer; "
        "`curl -s https://checkip.amazonaws.com` shows your IP). If it is, Aurora may be "
        "resuming from auto-pause: try again in a minute"
    )


def check_docker() -> str:
    """The docker client's path, once the daemon has answered."""
    docker = shutil.which("docker")
    if docker is None:
        raise HelperError(f"docker is not installed (not found on PATH); {PROCESS_RUNTIME_HINT}")
    try:
        probe = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HelperError(
            f"the Docker daemon did not answer within 15 s; start Docker, {PROCESS_RUNTIME_HINT}"
        ) from None
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no details"])[-1]
        raise HelperError(
            f"the Docker daemon is not running or not reachable ({detail}); start Docker "
            f"(Docker Desktop, or `sudo systemctl start docker`), {PROCESS_RUNTIME_HINT}"
        )
    return docker


def require_server_packages(what: str) -> None:
    """A laptop server logs in to MySQL first (PyMySQL): the ``server`` extra of the package."""
    import importlib.util

    if importlib.util.find_spec("pymysql") is None:
        raise HelperError(
            f"{what} needs PyMySQL, which this Python does not have: {install_hint()}"
        )


def check_mlflow_installed(what: str) -> None:
    if installed_mlflow_version() is None:
        hint = install_hint() if in_repository() else f"`pip install mlflow` (in {sys.executable})"
        raise HelperError(f"{what} needs mlflow, which this Python does not have: {hint}")


def installed_mlflow_version() -> str | None:
    """The mlflow version of this interpreter, read from metadata (mlflow is not imported)."""
    from importlib import metadata

    try:
        return metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return None


def check_mlflow_version(expected: str) -> None:
    """The process runtime must run the image's mlflow: another version migrates the schema
    (newer) or refuses it (older), for the whole team."""
    installed = installed_mlflow_version()
    if installed is None:
        pins = (
            "`pip install -r docker/requirements.txt`"
            if in_repository()
            else (f"`pip install mlflow=={expected}`")
        )
        raise HelperError(
            f"mlflow is not installed in {sys.executable}; install the stack's version "
            f"({pins}) or use `--runtime docker`"
        )
    if installed != expected:
        raise HelperError(
            f"this Python has mlflow {installed} but the stack runs mlflow {expected}; "
            f"running another version against the shared schema would migrate or refuse it. "
            f"Install the same version (`pip install mlflow=={expected}`) or use `--runtime docker`"
        )


def check_database_login(backend_store_uri: str, ca_source: str, timeout: float = 10.0) -> None:
    """Log in once as the project's user, the way the server will: TLS required, the
    certificate verified against the URI's ``ssl_ca`` (from ``ca_source``) and the host name.

    A wrong password, an untrusted or misnamed certificate or a server without TLS then fails
    in a second with its cause, before any password is sent in the clear, instead of after
    MLflow's ~100 s of silent engine retries.
    """
    import pymysql

    # The URI by hand (not SQLAlchemy's parser): the docker runtime's helper has no mlflow.
    url = urlsplit(backend_store_uri)
    ca = parse_qs(url.query).get("ssl_ca", [None])[0]
    if not isinstance(ca, str):
        raise HelperError("internal: the backend URI has no ssl_ca; refusing an unverified login")
    host, port = url.hostname or "", url.port or 3306
    where = f"{host}:{port}"
    username = unquote(url.username or "")
    try:
        connection = pymysql.connect(
            host=host,
            port=port,
            user=username,
            password=unquote(url.password or ""),
            database=url.path.lstrip("/") or None,
            ssl={"ca": ca},  # required, certificate and host name verified
            connect_timeout=timeout,
        )
    except pymysql.err.MySQLError as exc:
        code, message = (*exc.args, "", "")[:2]
        text = str(message)
        if "doesn't support it" in text:  # PyMySQL: "SSL is required but the server doesn't…"
            hint = (
                "the server does not offer TLS; refusing to log in without it (Aurora always "
                "offers it: check that DatabaseEndpoint is the cluster)"
            )
        elif "mismatch" in text or "doesn't match" in text:
            hint = f"its TLS certificate is not for the host name {host} (refused)"
        elif "CERTIFICATE_VERIFY_FAILED" in text:
            hint = f"its TLS certificate is not signed by a CA of {ca_source} (refused)"
        elif code == 1045:  # access denied: never echo the password, only whose it is
            hint = (
                f"user {username} was refused: its password may have been rotated "
                "(`passwordVersion`); start the helper again to read the current one"
            )
        elif code == 1044:
            hint = f"user {username} has no access to schema {url.path.lstrip('/')}"
        else:
            hint = text
        raise HelperError(f"cannot log in to the database at {where}: {hint}") from None
    connection.close()


def other_sessions(backend_store_uri: str) -> list[str]:
    """``host (N s)`` of the other sessions of the URI's MySQL user: a user sees its own
    sessions in PROCESSLIST without the PROCESS privilege, so a project user can tell whether
    another server of the project is connected."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(backend_store_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT HOST, TIME FROM information_schema.PROCESSLIST "
                    "WHERE USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) "
                    "AND ID <> CONNECTION_ID() ORDER BY TIME DESC"
                )
            ).fetchall()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise HelperError(f"cannot list the database's sessions: {detail}") from None
    finally:
        engine.dispose()
    return [f"{host} (connected at least {seconds} s)" for host, seconds in rows]


def check_schema_version(
    backend_store_uri: str,
    what: str,
    upgrade_hint: str,
    *,
    may_migrate: bool = False,
    server_version: str | None = None,
) -> None:
    """Refuse to start a server of another MLflow version than the schema's (the schema's
    revision and the version its last migration recorded: mlflow_aws/schema_version.py).

    ``server_version``: the MLflow of the server when it is not this interpreter's (the
    docker runtime runs the stack's image); only the recorded version can be compared then,
    and the image's entrypoint checks the revision itself.
    """
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from mlflow_aws.schema_version import newer, problem, read_state, this_mlflow

    engine = sqlalchemy.create_engine(backend_store_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            state = read_state(connection)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise HelperError(f"cannot read the schema version of {what}: {detail}") from None
    finally:
        engine.dispose()
    mine = this_mlflow()
    if server_version is not None and server_version != mine.version:
        recorded = state.recorded_version
        if recorded and newer(recorded, server_version):
            raise HelperError(
                f"{what} belongs to mlflow {recorded} (its last migration) but the stack's "
                f"image runs mlflow {server_version}: use mlflow {recorded} (ask the platform "
                "engineer to set mlflowVersion and run `pulumi up`)"
            )
        return
    refused = problem(state, mine, may_migrate, what)
    if refused is None:
        return
    fix = f": `{upgrade_hint}`" if refused.older else ""
    raise HelperError(f"{refused.message}{fix}")
