"""How the user ran the helper, to repeat it in messages and ``--help``.

In the repository it is ``python -m helper``; installed with pip it is the ``mlflow-aws``
console script or ``python -m mlflow_aws.helper`` (a generic ``helper`` module is not installed,
so ``python -m helper`` fails there). The fix for a missing package depends on it too.
"""

from __future__ import annotations

import os
import sys

PACKAGE = __name__.rpartition(".")[0]  # "helper" in the repository, "mlflow_aws.helper" installed
CONSOLE_SCRIPT = "mlflow-aws"


def in_repository() -> bool:
    return PACKAGE == "helper"


def helper_command(argv0: str | None = None) -> str:
    """The command the user typed, without its arguments."""
    program = os.path.basename(argv0 if argv0 is not None else sys.argv[0] or "")
    if program == CONSOLE_SCRIPT:
        return CONSOLE_SCRIPT
    return f"python -m {PACKAGE}"


def install_hint(extra: str = "server") -> str:
    """How to get the packages a feature needs into this Python."""
    if in_repository():
        return "run `./dev setup` and use .venv/bin/python"
    return f"`pip install 'mlflow-aws[{extra}]'` (in {sys.executable})"
