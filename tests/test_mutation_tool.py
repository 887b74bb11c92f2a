"""``./dev mutate`` (``mutation/mutate.py``): the mutants it makes, their stable ids, the
equivalents file, and that a killed run never leaves a mutant in the checkout."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

from mutation import mutate

SAMPLE = textwrap.dedent(
    '''
    import re

    _NAME = re.compile(r"[a-z][a-z0-9]{0,3}(?:-[a-z]+)?")
    KEPT = frozenset({"host", "origin"})


    def check(name, limit, flag=True):
        """A docstring is never mutated."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(name)
        if len(name) > limit and flag:
            return "long"
        return name.lower() if name in KEPT else None
    '''
)


def test_each_classic_mutation_is_made_once_and_compiles() -> None:
    mutants = mutate.mutants_of(SAMPLE)
    operators = {m.operator for m in mutants}
    assert operators >= {
        "regex-class-widened", "regex-count-widened", "regex-plus-to-star",
        "regex-optional-required", "element-dropped", "condition-dropped", "and-or-swapped",
        "not-dropped", "fullmatch-to-match", "raise-removed", "comparison-flipped",
        "boundary-moved", "early-return-removed", "conditional-always-body",
        "conditional-always-else", "lower-dropped", "boolean-flipped", "condition-always-true",
    }  # fmt: skip
    assert len({m.id for m in mutants}) == len(mutants)
    for m in mutants:
        mutated = m.apply(SAMPLE)
        assert mutated != SAMPLE
        compile(mutated, "<mutant>", "exec")
        assert "A docstring is never mutated." in mutated
    widened = [m for m in mutants if m.operator == "regex-class-widened"]
    assert any("'" in m.replacement and "`" in m.replacement for m in widened)
    (dropped_raise,) = [m for m in mutants if m.operator == "raise-removed"]
    assert dropped_raise.line == 11 and dropped_raise.describe() == (
        "raise-removed: raise ValueError(name) -> pass"
    )


def test_mutant_ids_survive_edits_elsewhere_in_the_file() -> None:
    before = {m.id: m.line for m in mutate.mutants_of(SAMPLE)}
    edited = "# a comment\n\nOTHER = 1\n" + SAMPLE
    after = {m.id: m.line for m in mutate.mutants_of(edited)}
    assert set(after) == set(before)
    assert all(after[i] == before[i] + 3 for i in before)


def test_the_mutated_module_of_a_killed_run_is_restored(tmp_path: Path) -> None:
    module = tmp_path / "rules.py"
    module.write_text("MUTATED = True\n")
    backup = tmp_path / ("rules.py" + mutate.BACKUP_SUFFIX)
    backup.write_text("MUTATED = False\n")
    mutate.restore_if_interrupted(module)
    assert module.read_text() == "MUTATED = False\n" and not backup.exists()


def test_every_equivalent_listed_is_a_mutant_of_its_module_and_has_a_reason() -> None:
    table = tomllib.loads(mutate.EQUIVALENT_FILE.read_text())
    assert set(table) <= set(mutate.TARGETS)
    for module, entries in table.items():
        ids = {m.id for m in mutate.mutants_of((mutate.ROOT / module).read_text())}
        for mutant_id, reason in entries.items():
            assert mutant_id in ids, f"{module}: {mutant_id} is no longer a mutant"
            assert len(reason.split()) >= 5, f"{module}: {mutant_id} needs a reason"


def test_list_names_file_line_change_and_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert mutate.main(["mlflow_aws/names.py", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("mlflow_aws/names.py:") for line in lines)
    assert any("regex-class-widened" in line and "[<module>/regex-class-widened/" in line
               for line in lines)  # fmt: skip
    with pytest.raises(SystemExit):
        mutate.main(["mlflow_aws/not_a_target.py"])


def test_a_pattern_named_by_a_constant_is_mutated_and_every_regex_mutant_is_a_valid_regex() -> None:
    """A slug defined once (``PATTERN = r"..."``, then ``re.compile(PATTERN)`` or inside an
    f-string pattern) is mutated like an inline one; a widened class stays a class (hostile
    characters after a trailing ``-`` would make a range ``re`` refuses: a mutant killed by
    the import, not by a test)."""
    import ast
    import re

    source = textwrap.dedent(
        """
        import re

        SLUG = r"[a-z][\\w.@-]+"
        NOT_A_PATTERN = "[a-z]+"
        _ONE = re.compile(SLUG)
        _TWO = re.compile(rf"x/(?P<slug>{SLUG})")
        """
    )
    regex = [m for m in mutate.mutants_of(source) if m.operator.startswith("regex")]
    assert {m.line for m in regex} == {4}  # SLUG's line only
    assert any(m.operator == "regex-class-widened" and "'" in m.replacement for m in regex)
    for mutant in regex:
        re.compile(ast.literal_eval(mutant.replacement))
    for module in mutate.TARGETS:
        for mutant in mutate.mutants_of((mutate.ROOT / module).read_text()):
            if mutant.operator.startswith("regex") and mutant.replacement[:1] in "'\"":
                re.compile(ast.literal_eval(mutant.replacement))
