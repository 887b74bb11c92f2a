"""The tuned server settings as the helper's runtimes use them.

``mlflow_aws/server.env`` is their one definition, parsed by ``mlflow_aws.server_settings``
(shared with the image and the Pulumi program); the image, the process runtime and the local
default all get their environment from ``server_environment``, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from mlflow_aws import environment as env_names
from mlflow_aws import server_settings as _settings
from mlflow_aws.server_settings import SERVER_ENV_PATH, ServerSettingsError, parse_server_env

from .errors import HelperError

__all__ = ["SERVER_ENV_PATH", "parse_server_env"]

# In the repository: its root. Installed (``pip install`` of the repository), the helper is the
# package ``mlflow_aws.helper`` and this is site-packages/mlflow_aws: no Pulumi project there.
REPO_ROOT = Path(__file__).resolve().parent.parent


def server_env_defaults(path: Path = SERVER_ENV_PATH) -> dict[str, str]:
    try:
        return _settings.server_env_defaults(path)
    except ServerSettingsError as exc:
        raise HelperError(str(exc)) from exc


def container_port() -> int:
    """The port the image's server listens on inside the container (server.env's default)."""
    try:
        return _settings.container_port()
    except ServerSettingsError as exc:
        raise HelperError(str(exc)) from exc


IDLE_SECONDS_KEY = env_names.DB_IDLE_SECONDS


def with_query_parameter(uri: str, key: str, encoded_value: str) -> str:
    """``uri`` with ``key=encoded_value`` in its query, unless the URI already sets ``key``."""
    if f"{key}=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{key}={encoded_value}"


def with_idle_timeout(backend_store_uri: str, idle_seconds: int) -> str:
    """A MySQL backend URI whose sessions the database closes after ``idle_seconds`` idle.

    The server pools connections for speed; this is what empties the pool when nobody logs,
    so Aurora can pause. Other backends (SQLite) are returned unchanged.
    """
    if not backend_store_uri.startswith("mysql"):
        return backend_store_uri
    command = quote(f"SET SESSION wait_timeout={int(idle_seconds)}", safe="")
    return with_query_parameter(backend_store_uri, "init_command", command)


def loopback_only(public_port: int) -> dict[str, str]:
    """Host headers and CORS origins pinned to the loopback forms of the port the browser
    uses. MLflow's defaults also accept private IP addresses (other machines' pages could
    reach a laptop server through them); MLflow always lets localhost origins through."""
    hosts = [f"127.0.0.1:{public_port}", f"localhost:{public_port}"]
    return {
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(hosts),
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": ",".join(f"http://{h}" for h in hosts),
    }


def server_environment(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    inherited: Mapping[str, str] | None = None,
    public_port: int | None = None,
) -> dict[str, str]:
    """Everything ``mlflow server`` needs, as environment variables (no option goes in argv).

    server.env gives the defaults, ``inherited`` (the caller's environment) may override them,
    and the store, artifact destination, host and port are always the ones given here, as are
    the allowed hosts and origins (``public_port``: the port browsers use, when it differs).
    """
    settings = {**server_env_defaults(), **(inherited or {})}
    try:
        idle_seconds = int(settings[IDLE_SECONDS_KEY])
    except (KeyError, ValueError):
        raise HelperError(
            f"{IDLE_SECONDS_KEY} must be a whole number of seconds "
            f"(mlflow_aws/server.env or the environment), got {settings.get(IDLE_SECONDS_KEY)!r}"
        ) from None
    return {
        **settings,
        "MLFLOW_BACKEND_STORE_URI": with_idle_timeout(backend_store_uri, idle_seconds),
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        "MLFLOW_HOST": host,
        "MLFLOW_PORT": str(port),
        **loopback_only(public_port or port),
    }
