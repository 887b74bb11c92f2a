"""The central server's prefix: the tutorial workload through ``/<project>`` vs at the root, and
the server's memory per task, side by side in one run.

    .venv/bin/python bench/prefix_throughput.py            # 3 repetitions of 40 tutorial runs
    .venv/bin/python bench/prefix_throughput.py --quick    # 2 repetitions of 10

Both servers are the image's: ``docker/entrypoint.sh`` with the image's own packages (the lock,
installed as the Dockerfile installs it) and an ECS task's environment (the backend store URI and
the database's CA bundle as the task's secrets deliver them), on MariaDB (TLS required, like
Aurora) and a moto S3, each on a fresh, already-migrated schema:

* (p) ``MLFLOW_STATIC_PREFIX=/bench-p``, reached as http://127.0.0.1:<port>/bench-p (what the
  load balancer forwards to a task);
* (r) no prefix, reached at the root (the laptop mode's server).

The workload is the tutorial's tracking.py per run: start a run, ``log_param``, three
``log_metric``, ``log_artifacts`` of one file (proxied to S3 by the server), end the run. Runs are
interleaved (p, r, p, r, ...) so background load hits both alike; the median of the repetitions
is printed. Then the RSS of each server's processes (``mlflow server`` and its uvicorn worker)
against the task size of infra/config.py (``server.memory``, default 1024 MiB).

Target: p/r >= 95% (the prefix costs a route lookup, nothing more); RSS <= 60% of the task
memory (headroom for artifact buffers and a traffic spike).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BUCKET, MariaDBFactory, ensure_bucket, log, median, table, verdict, workdir
from infra.config import ServerConfig
from tests.support import image_server
from tests.support.image_venv import image_venv_path, python_for_image
from tests.support.processes import load_average, process_tree, pss_bytes, rss_bytes
from tests.support.services import free_port, running_mariadb, running_moto

MIB = 1024**2
TARGET_PREFIX_RATIO = 0.95
TARGET_RSS_SHARE = 0.60


def tutorial_runs(url: str, count: int, artifacts: Path) -> float:
    """``count`` tutorial runs against ``url``; runs per second."""
    import mlflow

    mlflow.set_tracking_uri(url)
    started = time.perf_counter()
    # Each run's end prints its UI link (after a get_run, part of the workload); not the figures.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(count):
            tutorial_run(mlflow, artifacts)
    return count / (time.perf_counter() - started)


def tutorial_run(mlflow: Any, artifacts: Path) -> None:
    """tests/support/tracking_script.py, as one run."""
    import random

    with mlflow.start_run():
        mlflow.log_param("param1", random.randint(0, 100))
        mlflow.log_metric("foo", random.random())
        mlflow.log_metric("foo", random.random() + 1)
        mlflow.log_metric("foo", random.random() + 2)
        mlflow.log_artifacts(str(artifacts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="tutorial runs per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 repetitions of 10 runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.reps = 10, 2

    python = python_for_image()
    if python is None:
        log("no python of the image's version on PATH")
        return 2
    log("the image's packages (cached venv; the first run builds it)")
    venv = image_venv_path(python)
    memory_mib = ServerConfig().memory

    rates: dict[str, list[float]] = {"p": [], "r": []}
    figures: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(workdir("mlflow-aws-bench-prefix-"))
        db = stack.enter_context(running_mariadb())
        moto = stack.enter_context(running_moto())
        ensure_bucket(moto)
        factory = MariaDBFactory(db)
        (work / "outputs").mkdir()
        (work / "outputs" / "test.txt").write_text("hello world!")
        # The client writes through the servers only: it needs no AWS credentials.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            os.environ.pop(key, None)

        servers = {}
        for key, prefix in (("p", "/bench-p"), ("r", None)):
            database = factory.fresh(f"bench_{key}")
            uri = (
                f"mysql+pymysql://{database.user}:{database.password}@{db.host}:{db.port}/"
                f"{database.schema}"
            )
            env = image_server.task_environment(
                backend_store_uri=uri,
                ca_pem=db.ca_path.read_text(),
                artifacts_destination=f"s3://{BUCKET}/bench-{key}",
                port=free_port(),
                prefix=prefix,
                extra=moto.aws_env(),
            )
            log(f"starting ({key}) {'under ' + prefix if prefix else 'at the root'}")
            server = image_server.start(venv, env, work / f"home-{key}", work / f"{key}.log")
            stack.callback(image_server.stop, server)
            image_server.wait_healthy(server)
            servers[key] = server

        log("warm-up: 3 tutorial runs each")
        for server in servers.values():
            tutorial_runs(server.url, 3, work / "outputs")
        for rep in range(args.reps):
            for key, server in servers.items():
                rate = tutorial_runs(server.url, args.runs, work / "outputs")
                rates[key].append(rate)
                log(f"rep {rep + 1}/{args.reps} ({key}): {rate:.1f} runs/s")

        for key, server in servers.items():
            tree = process_tree(server.process.pid)
            figures[key] = {
                "runs_per_s": median(rates[key]),
                "processes": len(tree),
                "rss_mib": rss_bytes(tree) / MIB,
                "pss_mib": pss_bytes(tree) / MIB,
            }

    p, r = figures["p"], figures["r"]
    ratio = p["runs_per_s"] / r["runs_per_s"]
    worst_rss = max(p["rss_mib"], r["rss_mib"])
    share = worst_rss / memory_mib
    print(f"\n## Tutorial workload through the prefix vs at the root ({args.reps} x {args.runs})\n")
    print(
        table(
            ["figure", "(p) /bench-p", "(r) root", "p/r", "target", ""],
            [
                [
                    "tutorial runs/s (median)",
                    f"{p['runs_per_s']:.1f}",
                    f"{r['runs_per_s']:.1f}",
                    f"{ratio:.0%}",
                    f">= {TARGET_PREFIX_RATIO:.0%}",
                    verdict(ratio >= TARGET_PREFIX_RATIO),
                ],
                [
                    "ms per tutorial run",
                    f"{1000 / p['runs_per_s']:.0f}",
                    f"{1000 / r['runs_per_s']:.0f}",
                    "",
                    "",
                    "",
                ],
            ],
        )
    )
    print(f"\n## Server memory per task (task size: {memory_mib} MiB, server.memory)\n")
    print(
        table(
            ["server", "processes", "RSS MiB", "PSS MiB", "share of task", "target", ""],
            [
                [
                    label,
                    int(f["processes"]),
                    f"{f['rss_mib']:.0f}",
                    f"{f['pss_mib']:.0f}",
                    f"{f['rss_mib'] / memory_mib:.0%}",
                    f"<= {TARGET_RSS_SHARE:.0%}",
                    verdict(f["rss_mib"] / memory_mib <= TARGET_RSS_SHARE),
                ]
                for label, f in (("(p) /bench-p", p), ("(r) root", r))
            ],
        )
    )
    print(
        f"\nheadroom: {memory_mib - worst_rss:.0f} MiB ({memory_mib / worst_rss:.1f}x the RSS) · "
        f"load average {load_average()} · {time.strftime('%Y-%m-%d')}"
    )
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "rates": rates}, indent=2))
    return 0 if ratio >= TARGET_PREFIX_RATIO and share <= TARGET_RSS_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
