"""The connection bundle: the JSON a project's connection secret (``mlflow-aws/<stack>/<project>``)
holds, defined once.

``projects/project.py`` writes it (``ConnectionBundle.to_json``), the helper reads it
(``helper/outputs.py``: ``parse_connection_bundle``, by ``KEY``), the central server's task
definition references two of its keys (``infra/containers.py``: ECS ``secrets``), and the tests'
stand-ins build it here too. A field renamed here renames the key everywhere; a reader or
writer that misses one fails a unit test (tests/test_bundle.py), not a deployment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _key(name: str) -> str:
    """``backend_store_uri`` -> ``BackendStoreUri`` (the bundle's JSON keys)."""
    return "".join(part.capitalize() for part in name.split("_"))


@dataclass(frozen=True)
class ConnectionBundle:
    project: str
    stack: str
    database: str  # the project's MySQL schema
    username: str  # the project's MySQL user
    password: str = field(repr=False)
    backend_store_uri: str = field(repr=False)  # mysql+pymysql://user:password@host:port/schema
    artifact_root: str  # s3://<bucket>/<project>
    database_endpoint: str
    database_port: int
    region: str
    image_uri: str  # <repository>@sha256:<digest>
    mlflow_version: str | None  # None only from a writer without the pin: the helper refuses it
    database_ca_bundle: str | None  # PEM of the CAs that sign the database's certificate
    server_role_arn: str | None  # the role the project's MLflow servers run as
    tracking_uri: str | None  # https://<domain>/<project>, or null without the central server

    def as_dict(self) -> dict[str, Any]:
        return {KEY[name]: value for name, value in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)


KEY: dict[str, str] = {f.name: _key(f.name) for f in fields(ConnectionBundle)}
BUNDLE_KEYS = tuple(KEY.values())
