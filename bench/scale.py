"""Scale: how program evaluation and the schema provider grow from 10 to 50 to 200 projects.

    .venv/bin/python bench/scale.py          # program x3 per size; provider serial + parallel
    .venv/bin/python bench/scale.py --quick  # one program run per size; provider serial

Reuses the two scale benches rather than re-implementing them:

* ``bench/program_eval.py``: the real ``__main__.py`` evaluated in-process with the test mocks
  (tests/support/pulumi_mocks.py) for N configured projects;
* ``bench/provider_scale.py``: Check + Create, then Delete, of N projects through the SDK's
  provider server (``python -u -m pulumi.dynamic``) over gRPC, the SQL through the RDS Data API
  emulator (tests/support/data_api_emulator.py) to a real MariaDB (TLS), one at a time
  (``grpc``) and with the engine's default parallelism (``grpc-parallel``).

The growth table shows each figure at 10, 50 and 200 projects and the factor per 10x more
projects, ``(t200 / t10) ** (1 / log10(20))``: 10.0 is linear, less is better than linear.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path

from bench.common import log, table

SIZES = (10, 50, 200)


def per_10x(small: float, large: float, n_small: int, n_large: int) -> float:
    return float((large / small) ** (1 / math.log10(n_large / n_small)))


def program_figures(repeat: int) -> dict[int, tuple[float, int]]:
    from bench import program_eval

    program_eval.run_program(program_eval.config_for(1), stack="bench")  # warm-up, untimed
    figures = {}
    for n in SIZES:
        figures[n] = program_eval.measure(n, repeat)
        log(f"  program, {n} projects: {figures[n][0]:.2f}s, {figures[n][1]} resources")
    return figures


def provider_figures(modes: list[str], parallel: int) -> dict[str, dict[int, tuple[float, float]]]:
    from bench import provider_scale

    figures: dict[str, dict[int, tuple[float, float]]] = {}
    with provider_scale.services() as (db, arn, clients):
        impl = provider_scale.Grpc(clients["grpc"])
        for mode in modes:
            with contextlib.suppress(Exception):  # warm-up: unpickling, boto3 client
                provider_scale.timed_run(db, arn, f"w{mode}", 1, impl.create, impl.delete,
                                         parallel)  # fmt: skip
            figures[mode] = {}
            for n in SIZES:
                figures[mode][n] = provider_scale.timed_run(
                    db, arn, mode, n, impl.create, impl.delete, parallel
                )
                c, d = figures[mode][n]
                log(f"  provider {mode}, {n} projects: create {c:.2f}s, delete {d:.2f}s")
    return figures


def growth_row(label: str, values: dict[int, float]) -> list[str]:
    a, b, c = (values[n] for n in SIZES)
    return [
        label,
        f"{a:.2f}",
        f"{b:.2f}",
        f"{c:.2f}",
        f"{a / SIZES[0] * 1000:.0f} / {c / SIZES[-1] * 1000:.0f}",
        f"{b / a:.1f}x",
        f"{c / a:.1f}x",
        f"{per_10x(a, c, SIZES[0], SIZES[-1]):.1f}x",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 program run per size; serial only")
    parser.add_argument("--repeat", type=int, help="program runs per size (median; default 3)")
    parser.add_argument("--parallel", type=int, default=10, help="concurrent provider steps")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    modes = ["grpc"] if args.quick else ["grpc", "grpc-parallel"]

    log("== program evaluation (Pulumi mocks)")
    program = program_figures(repeat)
    log("== schema provider (pulumi.dynamic over gRPC, RDS Data API emulator, MariaDB)")
    provider = provider_figures(modes, args.parallel)

    rows = [
        growth_row(f"program evaluation (median of {repeat})", {n: program[n][0] for n in SIZES}),
    ]
    for mode in modes:
        what = "one at a time" if mode == "grpc" else f"{args.parallel} at a time"
        rows.append(
            growth_row(f"provider create, {what}", {n: provider[mode][n][0] for n in SIZES})
        )
        rows.append(
            growth_row(f"provider delete, {what}", {n: provider[mode][n][1] for n in SIZES})
        )
    print()
    print("Scale: seconds for N projects; growth per 10x projects (10.0x = linear)")
    print(f"resources registered by the program: {', '.join(str(program[n][1]) for n in SIZES)}")
    print()
    headers = ["figure", "10 (s)", "50 (s)", "200 (s)", "ms/project 10 / 200",
               "50 vs 10", "200 vs 10", "per 10x"]  # fmt: skip
    print(table(headers, rows))
    if args.json:
        args.json.write_text(
            json.dumps({"program": program, "provider": provider, "sizes": SIZES}, indent=2)
        )
    return 0


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        raise SystemExit(main())
