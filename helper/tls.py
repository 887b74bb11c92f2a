"""TLS to the database, verified on every path: the CA bundle, and the file PyMySQL reads it from.

The CAs come from the project's connection bundle (``DatabaseCaBundle``: AWS's RDS bundle of
the stack's region, shipped by ``pulumi up``), or from ``--db-ca FILE``. With a CA, PyMySQL
requires TLS (a server that does not offer it is refused before the password is sent) and
checks the certificate and the host name; without one it would fall back to "preferred":
no verification, and plain text when the server's greeting omits TLS. So there is no path
without a CA.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from .errors import HelperError
from .outputs import ProjectConnection
from .server_settings import with_query_parameter


def read_db_ca(override: Path | None) -> str | None:
    """The text of ``--db-ca FILE``, or None without it; an unreadable file is an input error,
    said before anything else happens."""
    if override is None:
        return None
    path = override.expanduser()
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise HelperError(f"--db-ca {override}: cannot read it ({exc})", 2) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise HelperError(f"--db-ca {override}: not a PEM file of CA certificates", 2)
    return text


def ca_bundle_text(connection: ProjectConnection, override: Path | None) -> tuple[str, str]:
    """The PEM text to verify the database with, and where it came from (for messages)."""
    text = read_db_ca(override)
    if text is not None:
        return text, f"--db-ca {override}"
    if not connection.database_ca_bundle:
        raise HelperError(
            f"the connection bundle of project {connection.project} has no DatabaseCaBundle, "
            "so the database's certificate cannot be verified (the stack predates it): ask "
            "the platform engineer to run `pulumi up`, or pass --db-ca FILE (AWS's RDS CA "
            "bundle for the region)"
        )
    return connection.database_ca_bundle, "the stack's RDS CA bundle"


@contextlib.contextmanager
def ca_file(pem: str) -> Iterator[Path]:
    """``pem`` in a file of a private directory, for as long as the block runs."""
    directory = Path(tempfile.mkdtemp(prefix="mlflow-aws-tls-"))  # mode 0700
    try:
        path = directory / "db-ca.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(pem)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def with_ssl_ca(uri: str, ca_path: str) -> str:
    """The backend URI with PyMySQL requiring TLS and verifying the server against ``ca_path``."""
    return with_query_parameter(uri, "ssl_ca", quote(ca_path))
