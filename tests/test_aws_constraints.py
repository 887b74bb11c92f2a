"""What AWS enforces, checked under mocks over a matrix of configs
(tests/support/aws_constraints.py is
the table: each row a rule AWS or the provider enforces, with its source).

* every resource type the program registers in any config has rows (a new type without them
  fails here), and every row's type is registered by some config (no dead rows);
* every config of the matrix meets every row;
* every row can fail: breaking what it checks makes it report.
"""

from __future__ import annotations

import pytest

from tests.support import aws_constraints
from tests.support.aws_constraints import RULES, TYPES, Context, Rule
from tests.support.config_matrix import MATRIX, context


def registered_types(ctx: Context) -> set[str]:
    return {r.typ for r in ctx.resources if not r.typ.startswith(("mlflow-aws:", "pulumi:"))}


def test_every_registered_resource_type_has_rows_and_every_row_is_exercised() -> None:
    registered = set().union(*(registered_types(context(name)) for name in MATRIX))
    assert registered - TYPES == set(), "resource types without constraint rows"
    assert TYPES - registered == set(), "rows whose type no config of the matrix registers"


@pytest.mark.parametrize("name", list(MATRIX))
def test_every_config_meets_every_rule(name: str) -> None:
    ctx = context(name)
    problems = [
        f"[{rule.typ}] {p}  (source: {rule.source})" for rule in RULES for p in rule.check(ctx)
    ]
    assert problems == []


def first_context_with(rule: Rule) -> Context:
    for name in MATRIX:
        ctx = context(name)
        if rule.typ == "*" or ctx.of(rule.typ):
            return ctx
    raise AssertionError(f"no config registers {rule.typ}")


@pytest.mark.parametrize(
    "rule", RULES, ids=[f"{r.typ.split(':')[-1]}: {r.rule[:40]}" for r in RULES]
)
def test_every_rule_can_fail(rule: Rule) -> None:
    broken = first_context_with(rule).copy()
    rule.breaks(broken)
    assert rule.check(broken), f"breaking {rule.rule!r} went unnoticed"


def test_every_row_names_a_source() -> None:
    for rule in RULES:
        assert "http" in rule.source or ".py" in rule.source, rule
    assert len(aws_constraints.RULES) >= 60
