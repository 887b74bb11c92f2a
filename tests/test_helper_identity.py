"""The helper has one import identity in every process: ``helper/`` is the package
``mlflow_aws.helper`` (pyproject.toml's package-dir), and imported as ``helper`` in the
repository it is the same module objects, not a second copy of them (an ``except`` of one
would miss the other's exception). Its ``--help`` and hints name the command that was run."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "helper").glob("*.py") if p.stem != "__main__")

# Run in a fresh interpreter: every helper module under both names, compared object by object.
SAME_OBJECTS = f"""
import importlib, sys
{{prelude}}
import helper.errors
import mlflow_aws.helper.errors
assert helper.errors.HelperError is mlflow_aws.helper.errors.HelperError
for name in {MODULES!r}:
    if name == "__init__":
        continue
    short = importlib.import_module("helper." + name)
    full = importlib.import_module("mlflow_aws.helper." + name)
    assert short is full, name
    assert full.__name__ == full.__spec__.name == "mlflow_aws.helper." + name, name
assert sys.modules["helper"] is sys.modules["mlflow_aws.helper"]
copies = sorted(m for m in sys.modules if m.startswith("helper.")
                and sys.modules[m] is not sys.modules["mlflow_aws." + m])
assert copies == [], copies
print("one identity from", sys.modules["mlflow_aws.helper"].__path__)
"""
# As in a checkout whose Python has no editable install of it: no finder maps mlflow_aws.helper.
WITHOUT_THE_INSTALL = (
    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in type(f).__module__]"
)


def python(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_in_this_process_helper_and_mlflow_aws_helper_are_the_same_modules() -> None:
    import mlflow_aws.helper.errors

    from helper.errors import HelperError

    assert HelperError is mlflow_aws.helper.errors.HelperError
    for name in MODULES:
        if name != "__init__":
            module = importlib.import_module(f"helper.{name}")
            assert module is importlib.import_module(f"mlflow_aws.helper.{name}"), name


@pytest.mark.parametrize("prelude", ["", WITHOUT_THE_INSTALL], ids=["installed", "checkout"])
def test_a_fresh_process_sees_one_identity(prelude: str) -> None:
    result = python("-c", SAME_OBJECTS.format(prelude=prelude))
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(ROOT / "helper") in result.stdout


def test_the_same_file_is_one_module_whichever_name_comes_first() -> None:
    script = SAME_OBJECTS.format(prelude="import mlflow_aws.helper.cli")
    result = python("-c", script)
    assert result.returncode == 0, result.stderr[-3000:]


def console_script() -> Path:
    return Path(sys.executable).with_name("mlflow-aws")


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["-m", "helper"], "python -m helper"),
        (["-m", "mlflow_aws.helper"], "python -m mlflow_aws.helper"),
        (None, "mlflow-aws"),
    ],
    ids=["python -m helper", "python -m mlflow_aws.helper", "mlflow-aws"],
)
def test_help_and_hints_name_the_command_that_was_run(
    argv: list[str] | None, command: str, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        if argv is None:
            return subprocess.run([str(console_script()), *args], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120, check=False)  # fmt: skip
        return python(*argv, *args)

    usage = run("--help")
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith(f"usage: {command} [-h] COMMAND"), usage.stdout
    # A hint that repeats the command: the project list, for serve without --project.
    missing = run("serve", "--runtime", "process", "--outputs", str(tmp_path / "none.json"))
    assert f"`{command} projects`" in missing.stderr, missing.stderr
    other = {"python -m helper", "python -m mlflow_aws.helper", "mlflow-aws"} - {command}
    assert not any(f"`{o} " in missing.stderr for o in other), missing.stderr
