"""Footprint and idle behaviour: (a) stock ``mlflow server`` vs (b) the tuned server as the
helper runs it, on MariaDB (TLS required, like Aurora), side by side in one run.

    .venv/bin/python bench/footprint.py              # 3 starts each, 60 s idle
    .venv/bin/python bench/footprint.py --quick      # 1 start each, 10 s idle
    .venv/bin/python bench/footprint.py --idle 300   # a longer idle window

Figures:

* processes of the server's tree (``mlflow server`` and its children; for (b) also counted
  with the helper process that supervises it) and their total RSS (VmRSS summed from
  /proc; PSS, which splits shared pages, shown for information), after a small workload;
* seconds from starting the command to the first 200 from ``/health`` on an already-migrated
  schema (median of ``--starts``); for (b) the part spent in the helper before it launched
  ``mlflow server`` is shown too;
* after ``--idle`` seconds without requests (both servers idle at the same time): connections
  the server's MySQL user holds (``information_schema.PROCESSLIST``), and connections opened
  and statements sent during the window (``information_schema.USER_STATISTICS``; the bench
  turns MariaDB's dynamic ``userstat`` on).

Targets for (b): <= 2 processes, <= 0.6 GiB, <= 6 s; idle: 0 connections and 0 statements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from bench.common import (
    GIB,
    Database,
    MariaDBFactory,
    Server,
    UserCounters,
    enable_userstat,
    ensure_bucket,
    helper_available,
    is_mlflow_server,
    log,
    log_batches,
    log_one_by_one,
    median,
    new_run,
    start_stock,
    start_tuned,
    table,
    user_counters,
    verdict,
    workdir,
)
from tests.support.processes import cpu_seconds, load_average, pss_bytes, rss_bytes, started_at
from tests.support.services import MariaDB, MotoServer, running_mariadb, running_moto

TARGET_PROCESSES = 2
TARGET_RSS_GIB = 0.6
TARGET_START_S = 6.0


def server_start_delay(server: Server) -> float:
    """Seconds from starting the command to ``mlflow server`` being launched by it."""
    roots = [p for p in server.tree() if is_mlflow_server(p)]
    if not roots or roots[0] == server.process.pid:
        return 0.0
    launched = started_at(min(roots))
    return max(0.0, server.healthy_after - (server.healthy_wall - launched))


def start(key: str, database: Database, tmp: Path, db: MariaDB, moto: MotoServer | None) -> Server:
    if key == "a":
        return start_stock("stock", database, tmp)
    return start_tuned("tuned", database, tmp, db=db, moto=moto)


def measure_target(
    key: str, database: Database, tmp: Path, db: MariaDB, moto: MotoServer | None, starts: int
) -> tuple[Server, dict[str, Any]]:
    """Start ``starts`` times (stopping in between); the last one keeps running."""
    seconds, helper_part, cpu = [], [], []
    server: Server | None = None
    for i in range(starts):
        if server is not None:
            server.stop()
        server = start(key, database, tmp, db, moto)
        try:
            server.wait_healthy()
        except Exception:
            server.stop()
            raise
        seconds.append(server.healthy_after)
        cpu.append(cpu_seconds(server.tree()))  # CPU the processes used to get healthy
        helper_part.append(server_start_delay(server))
        log(f"  {server.label} start {i + 1}/{starts}: healthy after {seconds[-1]:.2f}s")
    assert server is not None
    return server, {
        "start_s": seconds,
        "start_cpu_s": cpu,
        "helper_part_s": helper_part,
        "how": server.how,
    }


def workload(server: Server) -> None:
    client, run_id = new_run(server.url, f"footprint-{server.label}")
    log_one_by_one(client, run_id, 30)
    log_batches(client, run_id, 1)
    client.search_runs([client.get_run(run_id).info.experiment_id])


def footprint(server: Server) -> dict[str, Any]:
    server_pids = server.server_tree()
    all_pids = server.tree()
    return {
        "processes": len(server_pids),
        "processes_with_wrapper": len(all_pids),
        "rss": rss_bytes(server_pids),
        "rss_with_wrapper": rss_bytes(all_pids),
        "pss": pss_bytes(server_pids),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "idle_s": args.idle,
        "starts": args.starts,
        "load_before": load_average(),
    }
    with contextlib.ExitStack() as stack, workdir() as tmp:
        db = stack.enter_context(running_mariadb())
        enable_userstat(db)
        moto = None
        if helper_available():
            moto = stack.enter_context(running_moto())
            ensure_bucket(moto)
        factory = MariaDBFactory(db)
        databases = {k: factory.fresh(f"foot_{k}") for k in "ab"}
        servers: dict[str, Server] = {}
        for key in "ab":
            log(f"== ({key})")
            server, figures = measure_target(key, databases[key], tmp, db, moto, args.starts)
            stack.callback(server.stop)
            servers[key] = server
            results[key] = figures
        for server in servers.values():
            workload(server)
        time.sleep(2)  # let the last responses settle
        for key, server in servers.items():
            results[key].update(footprint(server))
        before = {k: user_counters(db, databases[k].user) for k in servers}
        log(f"idle for {args.idle:g}s (no requests to either server)")
        time.sleep(args.idle)
        for key, server in servers.items():
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.label} died while idle: {server.tail()}")
            after: UserCounters = user_counters(db, databases[key].user).minus(before[key])
            results[key].update(
                idle_connections_held=after.connections_open,
                idle_connections_opened=after.connections_made,
                idle_statements=after.statements,
            )
    results["load_after"] = load_average()
    return results


def report(res: dict[str, Any]) -> None:
    a, b = res["a"], res["b"]
    start_a, start_b = median(a["start_s"]), median(b["start_s"])

    def gib(n: float) -> str:
        return f"{n / GIB:.2f} GiB"

    rows = [
        ["processes (mlflow server tree)", a["processes"], b["processes"],
         f"<= {TARGET_PROCESSES}", verdict(b["processes"] <= TARGET_PROCESSES)],
        ["processes incl. the helper", "-", b["processes_with_wrapper"], "(info)", ""],
        ["total RSS (server tree)", gib(a["rss"]), gib(b["rss"]),
         f"<= {TARGET_RSS_GIB} GiB", verdict(b["rss"] <= TARGET_RSS_GIB * GIB)],
        ["total RSS incl. the helper", "-", gib(b["rss_with_wrapper"]), "(info)", ""],
        ["total PSS (server tree)", gib(a["pss"]), gib(b["pss"]), "(info)", ""],
        [f"start -> healthy /health (median of {res['starts']})", f"{start_a:.1f} s",
         f"{start_b:.1f} s", f"<= {TARGET_START_S:g} s", verdict(start_b <= TARGET_START_S)],
        ["  CPU seconds used until healthy (median)", f"{median(a['start_cpu_s']):.1f} s",
         f"{median(b['start_cpu_s']):.1f} s", "(info)", ""],
        ["  of which the helper before mlflow starts", "-",
         f"{median(b['helper_part_s']):.1f} s", "(info)", ""],
        [f"idle {res['idle_s']:g} s: connections held", a["idle_connections_held"],
         b["idle_connections_held"], "0", verdict(b["idle_connections_held"] == 0)],
        [f"idle {res['idle_s']:g} s: statements sent", a["idle_statements"],
         b["idle_statements"], "0", verdict(b["idle_statements"] == 0)],
        [f"idle {res['idle_s']:g} s: connections opened", a["idle_connections_opened"],
         b["idle_connections_opened"], "(info)", ""],
    ]  # fmt: skip
    print()
    print("Footprint and idle, MariaDB 10.11 with TLS (Aurora stand-in):")
    print(f"  (a) {a['how']}")
    print(f"  (b) {b['how']}")
    print()
    print(table(["figure", "(a) stock", "(b) tuned", "target (b)", ""], rows))
    print()
    print(f"load average {res['load_before']} before, {res['load_after']} after")
    print(
        f"start times (s): (a) {', '.join(f'{s:.2f}' for s in a['start_s'])}; "
        f"(b) {', '.join(f'{s:.2f}' for s in b['start_s'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 start each, 10 s idle")
    parser.add_argument("--idle", type=float, help="seconds without requests (default 60)")
    parser.add_argument("--starts", type=int, help="starts per server (median; default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.idle is None:
        args.idle = 10.0 if args.quick else 60.0
    if args.starts is None:
        args.starts = 1 if args.quick else 3
    if args.idle < 0 or args.starts < 1:
        parser.error("--idle must be >= 0 and --starts >= 1")
    results = run(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        raise SystemExit(main())
