"""Tracking throughput: the same workload against (a) stock ``mlflow server``, (b) the tuned
server as the helper runs it, and (c) the database used directly by the client (no server),
on SQLite and on MariaDB, measured side by side in one run.

    .venv/bin/python bench/tracking_throughput.py            # full figures (a few minutes)
    .venv/bin/python bench/tracking_throughput.py --quick    # small counts, to check it works

Workload per target: one experiment and run, a warm-up, then per repetition ``--n``
one-by-one ``MlflowClient.log_metric`` calls and ``--batches`` ``log_batch`` calls of 1,000
metrics. Repetitions are interleaved across targets (a, b, c, a, b, c, ...) so background
load on the machine hits all of them alike; the median is reported.

Targets: b/a one by one >= 7x; b/c one by one >= 45%; b/c batches >= 80%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    Database,
    MariaDBFactory,
    Server,
    SqliteFactory,
    ensure_bucket,
    helper_available,
    log,
    log_batches,
    log_one_by_one,
    median,
    new_run,
    paused,
    start_stock,
    start_tuned,
    stopping,
    table,
    verdict,
    workdir,
)
from tests.support.processes import cpu_seconds, load_average
from tests.support.services import running_mariadb, running_moto

TARGET_B_OVER_A_SINGLE = 7.0
TARGET_B_OVER_C_SINGLE = 0.45
TARGET_B_OVER_C_BATCH = 0.80


@dataclass
class Target:
    key: str  # "a" | "b" | "c"
    label: str
    tracking_uri: str
    how: str
    single: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    client: Any = None
    run_id: str = ""
    server: Server | None = None
    server_cpu_ms: list[float] = field(default_factory=list)  # per one-by-one call
    client_cpu_ms: list[float] = field(default_factory=list)  # per one-by-one call


def short_how(server: Server) -> str:
    if " -m helper " in f" {server.how} ":
        return "python -m helper serve " + (
            "--local" if "--local" in server.how else "--outputs F --runtime process"
        )
    return "mlflow server + server.env settings"


def measure(targets: list[Target], n: int, batches: int, reps: int, warmup: int) -> None:
    for target in targets:
        target.client, target.run_id = new_run(target.tracking_uri, f"bench-{target.key}")
        log(f"  warm-up {target.label}")
        log_one_by_one(target.client, target.run_id, warmup, key="warmup")
        log_batches(target.client, target.run_id, 1, first_step=10_000_000)
    for rep in range(reps):
        for target in targets:
            with frozen([t.server for t in targets if t.server and t is not target]):
                measure_one(target, rep, reps, n, batches)


def frozen(servers: list[Server]) -> contextlib.AbstractContextManager[None]:
    """Pause the servers not being measured (the stock server's job runners poll on several
    cores' worth of processes and would slow the one that is)."""
    return paused([pid for server in servers for pid in server.tree()])


def measure_one(target: Target, rep: int, reps: int, n: int, batches: int) -> None:
    first = rep * n
    pids = target.server.server_tree() if target.server else []
    server_cpu, client_cpu = cpu_seconds(pids), time.process_time()
    target.single.append(log_one_by_one(target.client, target.run_id, n, first_step=first))
    target.client_cpu_ms.append((time.process_time() - client_cpu) / n * 1000)
    target.server_cpu_ms.append((cpu_seconds(pids) - server_cpu) / n * 1000)
    target.batch.append(
        log_batches(target.client, target.run_id, batches, first_step=rep * batches * 1000)
    )
    log(
        f"  rep {rep + 1}/{reps} {target.label}: {target.single[-1]:.0f} metrics/s one by "
        f"one, {target.batch[-1]:.0f} metrics/s in batches"
    )


def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log(f"== {backend}")
    with contextlib.ExitStack() as stack:
        db = moto = None
        if backend == "sqlite":
            factory: Any = SqliteFactory(tmp)
        else:
            db = stack.enter_context(running_mariadb())
            if helper_available():
                moto = stack.enter_context(running_moto())
                ensure_bucket(moto)
            factory = MariaDBFactory(db)
        fresh: dict[str, Database] = {k: factory.fresh(f"bench_{k}") for k in "abc"}
        stock = start_stock("stock", fresh["a"], tmp)
        stack.enter_context(stopping(stock))
        stock.wait_healthy()
        tuned: Server = start_tuned("tuned", fresh["b"], tmp, db=db, moto=moto)
        stack.enter_context(stopping(tuned))
        tuned.wait_healthy()
        targets = [
            Target(
                "a", "(a) stock server", stock.url, "mlflow server, default flags", server=stock
            ),
            Target("b", "(b) tuned server", tuned.url, short_how(tuned), server=tuned),
            Target(
                "c", "(c) direct, no server", fresh["c"].uri, "MLFLOW_TRACKING_URI=<SQLAlchemy>"
            ),
        ]
        measure(targets, args.n, args.batches, args.reps, args.warmup)
    by = {t.key: t for t in targets}
    single = {k: median(t.single) for k, t in by.items()}
    batch = {k: median(t.batch) for k, t in by.items()}
    return {
        "backend": backend,
        "targets": {
            k: {
                "how": t.how,
                "single": t.single,
                "batch": t.batch,
                "single_median": single[k],
                "batch_median": batch[k],
                "server_cpu_ms": median(t.server_cpu_ms),
                "client_cpu_ms": median(t.client_cpu_ms),
            }
            for k, t in by.items()
        },
        "ratios": {
            "b/a single": single["b"] / single["a"],
            "b/a batch": batch["b"] / batch["a"],
            "b/c single": single["b"] / single["c"],
            "b/c batch": batch["b"] / batch["c"],
        },
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"Tracking throughput: {args.n} one-by-one log_metric calls and {args.batches} "
        f"log_batch calls of 1,000 metrics per repetition, median of {args.reps}; "
        f"load average {args.load_before} before, {load_average()} after ({os.cpu_count()} CPUs)"
    )
    print()
    rows = []
    for res in results:
        for key, t in res["targets"].items():
            rows.append(
                [
                    res["backend"],
                    {"a": "(a) stock", "b": "(b) tuned", "c": "(c) direct"}[key],
                    f"{t['single_median']:.0f}",
                    f"{t['batch_median']:.0f}",
                    "-" if key == "c" else f"{t['server_cpu_ms']:.1f}",
                    f"{t['client_cpu_ms']:.1f}",
                    t["how"],
                ]
            )
    headers = [
        "backend",
        "target",
        "one by one (metrics/s)",
        "batches (metrics/s)",
        "server CPU ms/call",
        "client CPU ms/call",
        "how",
    ]
    print(table(headers, rows))
    print()
    rows = []
    for res in results:
        r = res["ratios"]
        rows += [
            [
                res["backend"],
                "b/a one by one",
                f"{r['b/a single']:.1f}x",
                f">= {TARGET_B_OVER_A_SINGLE:g}x",
                verdict(r["b/a single"] >= TARGET_B_OVER_A_SINGLE),
            ],
            [
                res["backend"],
                "b/c one by one",
                f"{r['b/c single']:.0%}",
                f">= {TARGET_B_OVER_C_SINGLE:.0%}",
                verdict(r["b/c single"] >= TARGET_B_OVER_C_SINGLE),
            ],
            [
                res["backend"],
                "b/c batches",
                f"{r['b/c batch']:.0%}",
                f">= {TARGET_B_OVER_C_BATCH:.0%}",
                verdict(r["b/c batch"] >= TARGET_B_OVER_C_BATCH),
            ],
            [res["backend"], "b/a batches", f"{r['b/a batch']:.1f}x", "(info)", ""],
        ]
    print(table(["backend", "ratio", "measured", "target", ""], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--backends", default="sqlite,mariadb", help="comma-separated")
    parser.add_argument("--n", type=int, help="one-by-one log_metric calls per repetition")
    parser.add_argument("--batches", type=int, help="log_batch calls (1,000 metrics) per rep")
    parser.add_argument("--reps", type=int, help="repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up log_metric calls")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    defaults = (40, 1, 1) if args.quick else (300, 5, 3)
    args.n = args.n or defaults[0]
    args.batches = args.batches or defaults[1]
    args.reps = args.reps or defaults[2]
    results = []
    args.load_before = load_average()
    with workdir() as tmp:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend not in ("sqlite", "mariadb"):
                parser.error(f"--backends: unknown backend {backend!r} (sqlite, mariadb)")
            results.append(run_backend(backend, args, tmp))
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        raise SystemExit(main())
