"""How long evaluating the Pulumi program takes as the project list grows.

Runs the real ``__main__.py`` in-process with the test mocks (tests/support/pulumi_mocks.py) for
1, 10, 50 and 200 configured projects, a few times each after a warm-up run (so imports are
not counted), and prints the median time, the resources registered and the ratios against the
1-project run. Usage: ``.venv/bin/python bench/program_eval.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from tests.support.pulumi_mocks import run_program  # noqa: E402

SIZES = (1, 10, 50, 200)


def config_for(count: int) -> dict[str, Any]:
    return {"mlflow-aws:projects": ",".join(f"p{i:03d}" for i in range(count))}


def measure(count: int, repeat: int) -> tuple[float, int]:
    times, resources = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        run = run_program(config_for(count), stack="bench")
        times.append(time.perf_counter() - start)
        resources = len(run.resources)
        assert len(run.outputs["Projects"]) == count
    return statistics.median(times), resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median shown)")
    args = parser.parse_args()

    run_program(config_for(1), stack="bench")  # warm-up: imports and first-run caches

    results = {count: measure(count, args.repeat) for count in SIZES}
    base_time, base_resources = results[SIZES[0]]
    print(f"\nprogram evaluation with Pulumi mocks, median of {args.repeat} runs")
    print(f"{'projects':>8} {'resources':>9} {'seconds':>9} {'x time':>7} {'x resources':>11}")
    for count, (seconds, resources) in results.items():
        print(
            f"{count:>8} {resources:>9} {seconds:>9.3f} {seconds / base_time:>7.1f} "
            f"{resources / base_resources:>11.1f}"
        )
    per_project = (results[SIZES[-1]][0] - base_time) / (SIZES[-1] - SIZES[0])
    print(f"\nmarginal cost: {per_project * 1000:.1f} ms per project")


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        main()
