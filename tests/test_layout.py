"""The repository's layout contracts: the Pulumi program (``__main__.py``, ``infra/``,
``projects/``) never imports the teammate helper (``helper/``); what both need (the name rule,
the server settings) lives in ``mlflow_aws/``, which the image and the helper install."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM_FILES = [ROOT / "__main__.py", *sorted((ROOT / "infra").glob("*.py")),
                 *sorted((ROOT / "projects").glob("*.py"))]  # fmt: skip
HELPER_PACKAGES = ("helper", "mlflow_aws.helper")


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def is_helper(module: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in HELPER_PACKAGES)


def test_no_program_module_imports_the_helper() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if is_helper(m))
        for path in PROGRAM_FILES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_loading_the_program_modules_loads_no_helper_module() -> None:
    """The same, for what actually gets imported (lazy imports inside functions included
    once the function-level imports are reached by importing every program module)."""
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in PROGRAM_FILES
        if p.name not in ("__main__.py", "__init__.py")
    ]
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import infra.config as c; c.StackConfig\n"
        "print(sorted(m for m in sys.modules if m == 'helper' or m.startswith('helper.') "
        "or m.startswith('mlflow_aws.helper')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_server_settings_parser_sits_beside_server_env() -> None:
    from mlflow_aws import server_settings

    assert Path(server_settings.__file__).parent == server_settings.SERVER_ENV_PATH.parent
    assert server_settings.container_port() == int(
        server_settings.server_env_defaults()["MLFLOW_PORT"]
    )


def repository_text_files() -> list[Path]:
    """The repository's own files (what git tracks, or would), not the venv's or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """The contracts are the README, ``Pulumi.yaml`` and the docstrings: a design document
    kept elsewhere is not in a reader's checkout."""
    outside = "DESIGN" + ".md"  # spelled apart so this file does not cite it
    citing = [str(p.relative_to(ROOT)) for p in repository_text_files()
              if outside in p.read_text(errors="replace")]  # fmt: skip
    assert citing == []


def test_every_cited_readme_section_exists() -> None:
    """A citation of a README section (README.md, then the heading in double quotes) in code
    and docs names a heading the README has."""
    headings, in_code = set(), False
    for line in (ROOT / "README.md").read_text().splitlines():
        in_code ^= line.startswith("```")
        if not in_code and line.startswith("#"):
            headings.add(line.lstrip("#").strip())
    cited = {
        (str(p.relative_to(ROOT)), section)
        for p in repository_text_files()
        for section in re.findall(r'README\.md "([^"]+)"', p.read_text(errors="replace"))
    }
    assert cited, "nothing cites a README section: the pattern no longer matches"
    assert {(path, s) for path, s in cited if s not in headings} == set()


SOURCE_DIRS = ("infra", "projects", "mlflow_aws", "helper", "release")


def source_files() -> list[Path]:
    return [
        ROOT / "__main__.py",
        *(p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))),
    ]


def test_each_environment_variable_name_of_ours_is_defined_once() -> None:
    """``MLFLOW_AWS_*`` names are spelled only in mlflow_aws/environment.py; the setter (infra/,
    the helper) and the reader (the image's steps, the aws-iam app, the plugin) import them."""
    from mlflow_aws import environment

    definitions = ROOT / "mlflow_aws" / "environment.py"
    spelled = sorted(
        f"{path.relative_to(ROOT)}: {node.value}"
        for path in source_files()
        if path != definitions
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"MLFLOW_AWS_[A-Z0-9_]+", node.value)
    )
    assert spelled == []
    names = [n for n, v in vars(environment).items() if n.isupper() and isinstance(v, str)]
    used = "\n".join(p.read_text() for p in source_files() if p != definitions)
    assert [n for n in names if f"env_names.{n}" not in used] == []


def test_the_image_spells_only_variable_names_environment_py_defines() -> None:
    """The entrypoint (shell), the Dockerfile and server.env cannot import the names; each
    ``MLFLOW_AWS_*`` they spell is one mlflow_aws/environment.py defines, so a rename there
    that misses the image fails here."""
    from mlflow_aws import environment

    defined = {v for n, v in vars(environment).items() if n.isupper() and isinstance(v, str)}
    image = [ROOT / "docker" / "entrypoint.sh", ROOT / "docker" / "Dockerfile",
             ROOT / "mlflow_aws" / "server.env"]  # fmt: skip
    spelled = {
        (str(path.relative_to(ROOT)), name)
        for path in image
        for name in re.findall(r"MLFLOW_AWS_[A-Z0-9_]*[A-Z0-9]", path.read_text())
    }
    assert len(spelled) >= 6, "the pattern no longer finds the image's variables"
    assert {(path, name) for path, name in spelled if name not in defined} == set()


def test_the_readmes_server_glossary_names_what_exists() -> None:
    """README.md "Five things called server": each path it lists is in the repository and each code
    name it gives is defined there, so the table cannot outlive a rename."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Five things called server") :]
    table = section[section.index("| where") :].split("\n\n")[0].splitlines()[2:]
    rows = [row for row in table if row.startswith("| ")]
    assert len(rows) == 6  # five things, and the config key
    defined: set[str] = set()
    for path in [ROOT / "__main__.py", *ROOT.glob("[a-z]*/**/*.py")]:
        if ".venv" not in path.parts and "build" not in path.parts:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                    defined.add(node.name)
    for row in rows:
        for token in re.findall(r"`([^`]+)`", row):
            if re.fullmatch(r"[\w./]+\.(?:py|env)", token):
                assert (ROOT / token).is_file(), f"README names {token}, which is gone"
            elif re.fullmatch(r"[A-Za-z_]\w*", token) and token not in ("serve", "prepare"):
                assert token in defined, f"README names {token}, defined nowhere"
