"""The tuned server settings, parsed from ``server.env`` beside this module (their one definition).

The image bakes the file, the helper's runtimes build their environment from it, and the Pulumi
program reads the container port and the pool size from it: all three use this parser, and
the program never imports ``helper/`` for it (README.md "The server, tuned").
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from mlflow_aws import environment as env_names

# Package data of ``mlflow_aws``, in the repository and when installed.
SERVER_ENV_PATH = Path(str(resources.files("mlflow_aws").joinpath("server.env")))

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ServerSettingsError(ValueError):
    """``server.env`` cannot be read or is not KEY=VALUE lines; the message names the line."""


def parse_server_env(text: str, source: str = "server.env") -> dict[str, str]:
    """KEY=VALUE lines (blank lines and ``#`` comments skipped), as docker's env-file reads them."""
    settings: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise ServerSettingsError(f"{source}:{number}: expected KEY=VALUE, got {raw!r}")
        settings[key] = value
    return settings


def server_env_defaults(path: Path = SERVER_ENV_PATH) -> dict[str, str]:
    try:
        return parse_server_env(path.read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise ServerSettingsError(
            f"cannot read the server settings {path}: {exc.strerror}"
        ) from exc


def container_port() -> int:
    """The port the image's server listens on inside the container (server.env's default)."""
    return int(server_env_defaults()["MLFLOW_PORT"])


def connections_per_server() -> int:
    """The most MySQL connections one server holds: its pool plus the pool's overflow."""
    defaults = server_env_defaults()
    return int(defaults["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(
        defaults["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]
    )


def migration_lock_seconds() -> int:
    """How long a starting server waits for another's schema migration (server.env's default):
    the image's entrypoint, ``helper upgrade`` and the central service's health grace
    (infra/project_service.py) all derive from it."""
    return int(server_env_defaults()[env_names.DB_MIGRATION_LOCK_SECONDS])
