"""Every command of the README's runbooks is run by a test, or marked as AWS-only.

For each ``## Runbook: …`` section (with its subsections), each command line of its ``bash``
blocks either carries ``# AWS-only`` (and is an ``aws`` or ``pulumi`` command: nothing a test
could run here), or is a ``python -m helper`` command that the helper's own parser accepts and
whose subcommand and every long option some test runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AWS_ONLY = "# AWS-only"


def runbook_commands() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    found = []
    for section in re.split(r"^## ", text, flags=re.M):
        if not section.startswith("Runbook"):
            continue
        title = section.splitlines()[0]
        for block in re.findall(r"```bash\n(.*?)```", section, re.S):
            for line in block.splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((title, line.strip()))
    return found


def corpus_of_tests() -> str:
    """Every test file but this one (which names commands only to check them)."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    return "\n".join(p.read_text() for p in files if p.name != Path(__file__).name)


def test_the_runbooks_have_commands() -> None:
    titles = {title for title, _ in runbook_commands()}
    for wanted in ("adding and removing a teammate", "removing deleted runs", "rotating passwords",
                   "upgrading MLflow", "bringing a project back"):  # fmt: skip
        assert any(wanted in t for t in titles), wanted


@pytest.mark.parametrize(("title", "line"), runbook_commands())
def test_each_runbook_command_is_tested_or_aws_only(title: str, line: str) -> None:
    if AWS_ONLY in line:
        command = line.split("#", 1)[0].strip()
        assert command.split()[0] in ("aws", "pulumi"), f"{title}: {line}"
        return
    from helper.cli import build_parser

    argv = shlex.split(line.split(" #", 1)[0])
    assert argv[:3] == ["python", "-m", "helper"], f"{title}: neither tested nor AWS-only: {line}"
    build_parser().parse_args(argv[3:])  # exits (fails the test) on an unknown option
    corpus = corpus_of_tests()
    subcommand = argv[3]
    assert re.search(rf'\[\s*"{re.escape(subcommand)}"', corpus), f"no test runs {subcommand}"
    for option in (a.split("=", 1)[0] for a in argv[4:] if a.startswith("--")):
        assert f'"{option}"' in corpus, f"no test runs {subcommand} with {option}"


def test_an_untested_command_is_caught() -> None:
    """The check can fail: a command line without a test or the marker."""
    with pytest.raises(AssertionError):
        test_each_runbook_command_is_tested_or_aws_only("x", "aws s3 rm --recursive s3://b/p")
    with pytest.raises(SystemExit):
        test_each_runbook_command_is_tested_or_aws_only("x", "python -m helper gc --wrong")
