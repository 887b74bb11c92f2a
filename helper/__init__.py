"""``python -m helper``: run a project's MLflow tracking server on 127.0.0.1 for a teammate.

The package imports nothing heavy (mlflow, boto3, pulumi) at module level, so ``--help`` and
``env`` stay instant; each side effect imports what it needs when it runs.

One package, one name: these files are the package ``mlflow_aws.helper`` (``pyproject.toml``
maps this directory there). Imported as ``helper`` (``python -m helper`` and the tests, in the
repository), the package makes ``helper`` and every ``helper.<module>`` the very module objects
of ``mlflow_aws.helper``, so a class or an ``except`` is the same under either name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

INSTALLED_NAME = "mlflow_aws.helper"
_HERE = Path(__file__).resolve().parent


def _installed_package() -> ModuleType:
    """``mlflow_aws.helper`` from this directory: imported by its name where the install maps it
    here (``./dev setup``), else loaded from here under that name (a checkout without it)."""
    if INSTALLED_NAME in sys.modules:
        return sys.modules[INSTALLED_NAME]
    try:
        found = importlib.util.find_spec(INSTALLED_NAME)
    except ModuleNotFoundError:
        found = None
    places = [Path(p).resolve() for p in (found.submodule_search_locations or [])] if found else []
    if _HERE in places:
        return importlib.import_module(INSTALLED_NAME)
    parent = importlib.import_module("mlflow_aws")
    spec = importlib.util.spec_from_file_location(
        INSTALLED_NAME, _HERE / "__init__.py", submodule_search_locations=[str(_HERE)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[INSTALLED_NAME] = package
    spec.loader.exec_module(package)
    parent.helper = package  # type: ignore[attr-defined]
    return package


class _SameModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``helper.<module>`` is ``mlflow_aws.helper.<module>``: the same object, executed once."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        # __main__ is what ``python -m helper`` runs: found on the package's path as usual.
        if not fullname.startswith("helper.") or fullname == "helper.__main__":
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(INSTALLED_NAME + spec.name.removeprefix("helper"))
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Already executed under its own name; the import system has just set the alias spec
        # on it, and the module keeps its own.
        alias = module.__spec__
        assert alias is not None
        module.__spec__ = self._own_specs.pop(alias.name)


if __name__ == "helper":
    sys.modules["helper"] = _installed_package()
    if not any(isinstance(finder, _SameModule) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SameModule())
