"""``mlflow db upgrade`` for one schema, with the URI in the environment instead of argv.

``mlflow db upgrade`` takes the URL only as a positional argument (no envvar in mlflow 3.17.2's
``mlflow/db.py``), which would put the password in ``ps`` output; so the child runs that same
click command in-process, handing it the URI read from its environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from .errors import HelperError

URI_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
UPGRADE_PROGRAM = (
    "import os\n"
    "from mlflow.db import upgrade\n"
    f"upgrade.main(args=[os.environ[{URI_VARIABLE!r}]], prog_name='mlflow db upgrade')\n"
)


def upgrade_argv() -> list[str]:
    return [sys.executable, "-c", UPGRADE_PROGRAM]


def upgrade_environment(backend_store_uri: str, inherited: Mapping[str, str]) -> dict[str, str]:
    return {**inherited, URI_VARIABLE: backend_store_uri}


def run_upgrade(backend_store_uri: str, what: str) -> int:
    sys.stderr.write(f"upgrading the MLflow schema of {what}...\n")
    sys.stderr.flush()
    result = subprocess.run(
        upgrade_argv(),
        env=upgrade_environment(backend_store_uri, os.environ),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,  # mlflow's migration log is progress, not the command's result
        check=False,
    )
    if result.returncode != 0:
        raise HelperError(
            f"the schema upgrade of {what} failed (exit {result.returncode}); see above"
        )
    record_this_mlflow(backend_store_uri)
    print(f"the schema of {what} is up to date")
    return 0


def record_this_mlflow(backend_store_uri: str) -> None:
    """Record this MLflow as the schema's (servers of other versions then refuse it)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from mlflow_aws.schema_version import record, this_mlflow

    mine = this_mlflow()
    engine = sqlalchemy.create_engine(backend_store_uri, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            record(connection, mine.version, mine.head)
    finally:
        engine.dispose()
