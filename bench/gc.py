"""gc of one deleted run with 2,000,000 metric rows: ``helper gc`` vs MLflow's ``mlflow gc``,
side by side in one run, on MariaDB (TLS required, like Aurora) and a moto S3.

    .venv/bin/python bench/gc.py                   # 2,000,000 metric rows per run
    .venv/bin/python bench/gc.py --rows 200000     # a quick one

Each side gets its own project (schema, user) with one deleted run of ``--rows`` metrics
(10 keys), 50 artifacts under its S3 prefix, and one live run that must stay. Then:

* (a) ``mlflow gc --backend-store-uri <the project's URI>`` (MLflow 3.17.2, the URI out of argv
  as ``stock_gc_command`` builds it; the run's artifacts
  are plain ``s3://`` so the stock command can reach them at all: it cannot with the proxied
  ``mlflow-artifacts:`` URIs mlflow-aws servers write, see tests/test_gc_mlflow_defects.py);
* (b) ``python -m helper gc --project P --outputs F`` (proxied URIs, the project's server role
  for S3 and its MySQL user, batches of 5,000 rows, each its own transaction).

Figures: wall time and metric rows deleted per second; the gc process's peak RSS (``ru_maxrss``
of the child, i.e. its VmHWM); the longest single transaction (the whole delete for (a), one
batch for (b): while it runs, InnoDB holds the row locks of everything it deleted so far).
Target: (b) peak RSS < 512 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, log, nothing_left_behind, table, verdict, workdir
from helper.mlflow_cli import URI_ARGUMENT, mlflow_argv, mlflow_environment
from tests.support.processes import load_average
from tests.support.services import MariaDB, MotoServer, running_mariadb, running_moto

BUCKET = "mlflow-aws-bench-gc"
TARGET_RSS_MIB = 512
ARTIFACTS = 50


def make_project(db: MariaDB, moto: MotoServer, name: str, rows: int, proxied: bool) -> Any:
    from mlflow import MlflowClient

    from tests.support.gc_world import migrate
    from tests.support.stack_on_moto import aws_client, create_project

    project = create_project(db, name)
    uri = db.url(project.user, project.password, project.schema)
    migrate(uri, PYTHON)
    location = "mlflow-artifacts:/big" if proxied else f"s3://{BUCKET}/{name}/big"
    client = MlflowClient(uri)
    experiment = client.create_experiment("big", artifact_location=location)
    s3 = aws_client("s3", moto.aws_env())
    ids = []
    for _ in range(2):
        run_id = client.create_run(experiment).info.run_id
        ids.append(run_id)
        for i in range(ARTIFACTS):
            s3.put_object(
                Bucket=BUCKET, Key=f"{name}/big/{run_id}/artifacts/f{i}", Body=b"x" * 1024
            )
    live, doomed = ids
    client.log_metric(live, "loss", 1.0)
    started = time.monotonic()
    project.query(
        "INSERT INTO metrics (`key`, value, timestamp, run_uuid, step, is_nan) "
        f"SELECT CONCAT('k', seq %% 10), seq * 0.001, 1700000000000 + seq, %s, seq, 0 "
        f"FROM seq_1_to_{rows}",
        (doomed,),
    )
    log(f"{name}: {rows:,} metric rows inserted in {time.monotonic() - started:.0f} s")
    client.delete_run(doomed)
    return project, uri, doomed, live


def stock_gc_command(uri: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(a): argv and environment of ``mlflow gc --backend-store-uri <uri>``, the URI (its
    password) in the environment only; the tracking URI too, for the runs' artifact URIs."""
    argv = mlflow_argv("gc", "--backend-store-uri", URI_ARGUMENT, python=PYTHON)
    return argv, mlflow_environment(uri, {**env, "MLFLOW_TRACKING_URI": uri})


def measure(argv: list[str], env: dict[str, str], label: str) -> dict[str, Any]:
    """Run ``argv`` to completion; wall time and the child's peak RSS."""
    log(f"{label} …")
    started = time.monotonic()
    process = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{label} failed ({process.returncode}): {err[-2000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out}


def remaining(project: Any, run_id: str) -> int:
    [(count,)] = project.query("SELECT COUNT(*) FROM metrics WHERE run_uuid = %s", (run_id,))
    return int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from tests.support.gc_world import versioned_bucket
    from tests.support.stack_on_moto import (
        bundle_for,
        put_connection_secret,
        server_role,
        write_outputs,
    )

    with nothing_left_behind(), running_mariadb() as db, running_moto() as moto, workdir() as work:
        aws = moto.aws_env()
        versioned_bucket(aws, BUCKET)
        stock, stock_uri, stock_run, stock_live = make_project(
            db, moto, "gcstock", args.rows, proxied=False
        )
        ours, _, our_run, our_live = make_project(db, moto, "gcours", args.rows, proxied=True)
        role = server_role(aws)
        secret = put_connection_secret(aws, bundle_for(ours, "bench", BUCKET, role))
        outputs = write_outputs(work / "outputs.json", BUCKET, {ours.name: secret})

        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env = {**base, **aws, "PYTHONPATH": str(ROOT), "XDG_RUNTIME_DIR": str(work)}
        a = measure(*stock_gc_command(stock_uri, env), "(a) mlflow gc")
        b = measure(
            [PYTHON, "-m", "helper", "gc", "--project", ours.name, "--outputs", str(outputs),
             "--json"],
            env,
            "(b) helper gc",
        )  # fmt: skip
        figures = json.loads(b["stdout"].strip().splitlines()[-1])["mlflow_aws_gc"]
        for project, run_id, live in ((stock, stock_run, stock_live), (ours, our_run, our_live)):
            assert remaining(project, run_id) == 0, f"{project.name}: rows left"
            assert remaining(project, live) == 1, f"{project.name}: the live run lost rows"
        assert figures["rows_by_table"]["metrics"] == args.rows
        assert figures["objects"] == ARTIFACTS

        batches = -(-args.rows // 5000)
        rows_per_s = {k: args.rows / v["seconds"] for k, v in (("a", a), ("b", b))}
        print(
            f"\n## gc of one deleted run with {args.rows:,} metric rows (load {load_average()})\n"
        )
        print(
            table(
                ["figure", "(a) mlflow gc", "(b) helper gc", "b/a", "target (b)", ""],
                [
                    ["wall time", f"{a['seconds']:.1f} s", f"{b['seconds']:.1f} s",
                     f"{b['seconds'] / a['seconds']:.2f}", "", ""],
                    ["metric rows deleted per second", f"{rows_per_s['a']:,.0f}",
                     f"{rows_per_s['b']:,.0f}", f"{rows_per_s['b'] / rows_per_s['a']:.2f}", "", ""],
                    ["peak RSS of the gc process", f"{a['peak_rss_mib']:.0f} MiB",
                     f"{b['peak_rss_mib']:.0f} MiB", f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}",
                     f"< {TARGET_RSS_MIB} MiB", verdict(b["peak_rss_mib"] < TARGET_RSS_MIB)],
                    ["transactions / longest", f"1 / {a['seconds']:.1f} s (all rows)",
                     f"{batches:,} of 5,000 rows, ~{b['seconds'] / batches:.2f} s each", "", "",
                     ""],
                    ["artifacts removed", f"{ARTIFACTS} (plain s3://)",
                     f"{figures['objects']} (proxied mlflow-artifacts:)", "", "", ""],
                ],
            )
        )  # fmt: skip
        if args.json:
            raw = {"rows": args.rows}
            for side, result in (("stock", a), ("helper", b)):
                raw[side] = {k: v for k, v in result.items() if k != "stdout"}
            args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
