"""How the user ran the helper, to repeat it in messages and ``--help`` (as pypa/build does
with ``prog``).

In the repository it is ``python -m helper``; installed with pip it is the ``mlflow-aws``
console script or ``python -m mlflow_aws.helper`` (a generic ``helper`` module is not installed,
so ``python -m helper`` fails there). The fix for a missing package depends on it too. The
modules have one name, ``mlflow_aws.helper``, however they were started (``helper/__init__.py``),
so the command is read from what Python ran, not from the package's name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONSOLE_SCRIPT = "mlflow-aws"
MODULE_NAMES = ("helper", "mlflow_aws.helper")  # what ``python -m`` can run


def in_repository() -> bool:
    """These files are the repository's ``helper/``, not ``site-packages/mlflow_aws/helper``."""
    return Path(__file__).resolve().parent.parent.name != "mlflow_aws"


def module_run() -> str | None:
    """The module ``python -m`` ran, when it ran one of the helper's."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    package = name.removesuffix(".__main__")
    return package if package in MODULE_NAMES and name != package else None


def helper_command(argv0: str | None = None) -> str:
    """The command the user typed, without its arguments."""
    program = os.path.basename(argv0 if argv0 is not None else sys.argv[0] or "")
    if program == CONSOLE_SCRIPT:
        return CONSOLE_SCRIPT
    # Called in-process (tests, another program): the name for this layout.
    package = module_run() or ("helper" if in_repository() else "mlflow_aws.helper")
    return f"python -m {package}"


def install_hint(extra: str = "server") -> str:
    """How to get the packages a feature needs into this Python."""
    if in_repository():
        return "run `./dev setup` and use .venv/bin/python"
    return f"`pip install 'mlflow-aws[{extra}]'` (in {sys.executable})"
