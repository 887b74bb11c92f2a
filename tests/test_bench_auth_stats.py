"""bench/auth_overhead.py's verdict arithmetic: paired ratios per block, their median and
interquartile range, the turns a workload is cut into and the balanced block orders."""

from __future__ import annotations

import math
from itertools import combinations

from bench.auth_overhead import ORDERS, Block, against, quartiles, sliced, spread


def test_quartiles_and_spread_of_paired_ratios() -> None:
    ratios = [0.79, 0.98, 1.02, 1.078, 1.10, 1.15, 1.29]
    q1, q2, q3 = quartiles(ratios)
    assert (round(q1, 3), q2, round(q3, 3)) == (1.0, 1.078, 1.125)
    assert spread(ratios) == "107.8% (IQR 100-112%)"
    assert quartiles([0.9]) == (0.9, 0.9, 0.9)
    assert all(math.isnan(x) for x in quartiles([]))


def test_where_the_iqr_lies_against_the_target() -> None:
    assert against([0.96, 0.97, 0.99, 1.0], 0.95) == "IQR above it"
    assert against([0.90, 0.94, 0.96, 1.0], 0.95) == "IQR straddles it"
    assert against([0.80, 0.85, 0.90, 0.94], 0.95) == "IQR below it"


def test_block_ratios_are_paired_within_the_block() -> None:
    block = Block("bca", 1.0, {"single": {"a": 100.0, "b": 90.0, "c": 95.0}})
    assert block.ratio("single", "c") == 0.95
    assert block.ratio("single", "b") == 0.9
    assert math.isclose(block.ratio("single", "c", "b"), 95 / 90)


def test_turns_cover_the_count_and_none_is_empty() -> None:
    assert sliced(300, 5) == [60] * 5
    assert sliced(10, 3) == [4, 3, 3]
    assert sliced(2, 5) == [1, 1]
    assert sliced(1, 1) == [1]


def test_orders_balance_positions_and_pairs() -> None:
    assert sorted(ORDERS) == sorted({"abc", "acb", "bac", "bca", "cab", "cba"})
    for position in range(3):
        assert sorted(order[position] for order in ORDERS) == list("aabbcc")
    for x, y in combinations("abc", 2):
        assert sum(order.index(x) < order.index(y) for order in ORDERS) == 3
    assert ORDERS[:3] == ("abc", "bca", "cab")  # with 3 blocks (--quick), each target first once
