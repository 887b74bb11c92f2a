"""MLflow's CLI in a child process with the database URI (and its password) kept out of argv.

mlflow 3.17.2 takes the URI of ``mlflow db upgrade`` only as a positional argument and that of
``mlflow gc`` only as ``--backend-store-uri`` (no envvar for either: ``mlflow/db.py``,
``mlflow/cli/__init__.py``); given there, the password shows in ``ps`` and /proc/<pid>/cmdline.
So the child runs mlflow's own click group in-process (what the ``mlflow`` script runs), each
argument equal to ``URI_ARGUMENT`` replaced by the URI read from its environment.

``mlflow server`` reads the same variable itself (its ``--backend-store-uri`` envvar): run it
with ``mlflow_environment`` and without the option.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

URI_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
URI_ARGUMENT = "{backend-store-uri}"  # stands for the URI in mlflow_argv's arguments
PROGRAM = (
    "import os, sys\n"
    "from mlflow.cli import cli\n"
    f"uri = os.environ[{URI_VARIABLE!r}]\n"
    f"args = [uri if a == {URI_ARGUMENT!r} else a for a in sys.argv[1:]]\n"
    "cli.main(args=args, prog_name='mlflow')\n"
)


def mlflow_argv(*args: str, python: str = sys.executable) -> list[str]:
    """``mlflow *args`` run by ``python`` (whose MLflow it is), ``URI_ARGUMENT`` standing for the
    URI that ``mlflow_environment`` passes. ``-P``: the working directory is not on sys.path,
    so a file there named like a module cannot take mlflow's place."""
    return [python, "-P", "-c", PROGRAM, *args]


def mlflow_environment(backend_store_uri: str, inherited: Mapping[str, str]) -> dict[str, str]:
    return {**inherited, URI_VARIABLE: backend_store_uri}
