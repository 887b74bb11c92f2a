"""A training loop logging over a 30 ms round trip, the ways users write it, side by side in one
run: 500 steps of 100 ms (10 steps/s) logging 10 metrics a step through the central app with
sign-in (``--app-name aws-iam``, the client plugin, MariaDB with TLS, moto STS/IAM), behind a
userspace relay that delays each direction by 15 ms (``bench/delay_relay.py``).

    .venv/bin/python bench/training_loop.py              # every mode, 500 steps (~21 min)
    .venv/bin/python bench/training_loop.py --steps 50   # quicker
    .venv/bin/python bench/training_loop.py --hang       # MLflow's async exit with the network gone

Each mode is its own process (the user's script, ``bench/training_script.py``: standard library
and mlflow only), configured only by its environment. Per mode: the loop's time against the same
loop without logging, the metrics in the database (``COUNT(*)`` and distinct ``(key, step)``:
each exactly once), and the time from the last step to the process's exit, split by the
script's own timestamps into ``end_run``, the interpreter's thread shutdown (threading's exit
hooks, where mlflow-aws bounds the async queue, and the joins), the atexit handlers (MLflow's
queue and telemetry flushes, its end of a run left open, mlflow-aws's exit step) and the
interpreter's teardown after the last handler (measured from outside: the exit the parent
sees). A step's work is a sleep (compute in C or on a GPU releases the GIL, as a sleep does).

``--hang``: async logging, then the network goes away (the relay stops forwarding, keeping
connections open) right after the last step: how long the process takes to exit, with MLflow's
defaults and with the mlflow-aws plugin's bounded exit.

Targets (recommended mode): logging adds <= 5% to the loop; every metric arrives exactly once;
the process exits within 2 s of its last step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, log, nothing_left_behind, table, verdict, workdir
from mlflow_aws import environment as env_names
from tests.support.central import (
    client_aws_env,
    make_identities,
    moto_clients,
    running_central_server,
)
from tests.support.processes import load_average
from tests.support.services import free_port, running_mariadb, running_moto

PROJECT = "bench-loop"
BUCKET = "mlflow-aws-bench-loop"
METRICS_PER_STEP = 10
STEP_SECONDS = 0.1
ONE_WAY_DELAY_MS = 15.0
SLOWDOWN_TARGET = 0.05
EXIT_TARGET_S = 2.0
HANG_CAP_S = 60.0

# (key, label, environment, how the script logs)
MODES = [
    ("none", "no logging", {}, "none"),
    ("metric", "`log_metric` per metric", {}, "metric"),
    ("metrics", "`log_metrics` per step", {}, "metrics"),
    ("metrics-async", "`log_metrics(..., synchronous=False)` per step", {}, "metrics-async"),
    ("env-async-metric", "`log_metric` per metric, `MLFLOW_ENABLE_ASYNC_LOGGING=true`",
     {"MLFLOW_ENABLE_ASYNC_LOGGING": "true"}, "metric"),
    ("env-async-metrics", "`log_metrics` per step, `MLFLOW_ENABLE_ASYNC_LOGGING=true`",
     {"MLFLOW_ENABLE_ASYNC_LOGGING": "true"}, "metrics"),
    ("buffered-metric", "`log_metric` per metric, async, buffered 1 s",
     {"MLFLOW_ENABLE_ASYNC_LOGGING": "true", "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1"},
     "metric"),
    ("buffered-metrics", "`log_metrics` per step, async, buffered 1 s",
     {"MLFLOW_ENABLE_ASYNC_LOGGING": "true", "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1"},
     "metrics"),
    # The same with mlflow-aws's exit step off (mlflow_aws/async_exit.py freeze_for_exit):
    # Python's full teardown, side by side.
    ("buffered-metrics-full-teardown",
     "`log_metrics` per step, async, buffered 1 s, `MLFLOW_AWS_FAST_EXIT=0`",
     {"MLFLOW_ENABLE_ASYNC_LOGGING": "true", "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1",
      env_names.FAST_EXIT: "0"}, "metrics"),
]  # fmt: skip


# -- the bench ---------------------------------------------------------------------------------


SCRIPT = Path(__file__).with_name("training_script.py")
# The phases of "last step -> exit", between the script's marks (bench/training_script.py) and
# the exit the parent sees.
PHASES = [
    ("end_run", None, "end-run"),
    ("threads (exit hooks, joins)", "end-run", "threads-done"),
    ("atexit handlers", "atexit", "atexit-done"),
    ("interpreter teardown", "atexit-done", "exit"),
]


@dataclass
class Result:
    key: str
    label: str
    loop_s: float
    exit_s: float
    rows: int
    distinct: int
    exit_code: int
    phases: dict[str, float]


def phases(last_step_at: float, marks: dict[str, float], ended: float) -> dict[str, float]:
    """Seconds per phase of the exit; a phase whose marks are missing (killed) is left out."""
    at = {**marks, "exit": ended}
    if "atexit" in at:
        at["threads-done"] = at["atexit"]
    spans = {}
    for name, begin, end in PHASES:
        first = last_step_at if begin is None else at.get(begin)
        if first is not None and end in at:
            spans[name] = at[end] - first
    return spans


@contextlib.contextmanager
def relay(listen_port: int, target_port: int) -> Iterator[subprocess.Popen[str]]:
    argv = [PYTHON, str(Path(__file__).with_name("delay_relay.py")),
            "--listen", f"127.0.0.1:{listen_port}", "--target", f"127.0.0.1:{target_port}",
            "--delay-ms", str(ONE_WAY_DELAY_MS)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the delaying relay did not start")
        yield process
    finally:
        process.terminate()
        process.wait(10)


def run_mode(
    key: str, label: str, extra: dict[str, str], style: str, env: dict[str, str], steps: int,
    project: Any, on_last_step: Any = None, detach: bool = False, cap: float | None = None,
) -> Result:  # fmt: skip
    argv = [PYTHON, str(SCRIPT), style, str(steps), str(STEP_SECONDS), str(METRICS_PER_STEP)]
    if detach:
        argv.append("--detach")
    process = subprocess.Popen(argv, env={**env, **extra}, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    assert process.stdout is not None
    run_id = process.stdout.readline().strip()
    loop_line = process.stdout.readline().split()[1:]
    if on_last_step is not None:
        on_last_step()
    try:
        process.wait(cap)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    ended = time.time()
    marks = {}
    for line in process.stdout.read().splitlines():
        if line.startswith("mark "):
            _, name, at = line.split()
            marks[name] = float(at)
    if len(loop_line) != 2:
        raise RuntimeError(f"{label}: the script failed ({process.returncode})")
    loop_s, last_step_at = float(loop_line[0]), float(loop_line[1])
    [(rows, distinct)] = project.query(
        "SELECT COUNT(*), COUNT(DISTINCT `key`, step) FROM metrics WHERE run_uuid = %s", (run_id,)
    )
    return Result(key, label, loop_s, ended - last_step_at, int(rows), int(distinct),
                  process.returncode, phases(last_step_at, marks, ended))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--modes", default=",".join(m[0] for m in MODES))
    parser.add_argument("--hang", action="store_true", help="reproduce the async exit hang")
    args = parser.parse_args(argv)
    wanted = args.modes.split(",")

    with (
        nothing_left_behind(),
        running_moto() as moto,
        running_mariadb() as db,
        workdir() as directory,
    ):
        log("moto identities, project schema, the central app behind a 2 x 15 ms relay")
        identities = make_identities(moto)
        from tests.support.stack_on_moto import create_project

        project = create_project(db, PROJECT)
        uri = db.url(project.user, project.password, project.schema)
        moto_clients(moto, "s3").create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )  # the sign-in marker lives there
        relay_port = free_port()
        with (
            running_central_server(moto, uri, f"s3://{BUCKET}/{PROJECT}", PROJECT, directory,
                                   public_port=relay_port) as central,
            relay(relay_port, central.port) as relay_process,
        ):  # fmt: skip
            base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
            env = {
                **base,
                **client_aws_env(moto, identities.allowed_role),
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{relay_port}/{PROJECT}",
                "MLFLOW_TRACKING_AUTH": "aws-iam",
                "MLFLOW_AWS_IAM_STS_REGION": "eu-west-1",
                "PYTHONUNBUFFERED": "1",
            }
            if args.hang:
                return hang(env, project, relay_process)
            results = []
            for key, label, extra, style in MODES:
                if key in wanted:
                    log(f"  {label}: {args.steps} steps")
                    results.append(run_mode(key, label, extra, style, env, args.steps, project))
    print(report(results, args.steps))
    return 0


def hang(env: dict[str, str], project: Any, relay_process: subprocess.Popen[str]) -> int:
    def partition() -> None:
        relay_process.send_signal(signal.SIGUSR1)

    rows = []
    for label, extra in (
        ("MLflow's defaults", {env_names.ASYNC_EXIT_SECONDS: "0"}),
        ("mlflow-aws plugin (bounded exit)", {}),
    ):
        log(f"  async logging, network gone after the last step: {label}")
        relay_process.send_signal(signal.SIGUSR2)
        result = run_mode("hang", label, {"MLFLOW_ENABLE_ASYNC_LOGGING": "true", **extra},
                          "metrics", env, 20, project, on_last_step=partition, detach=True,
                          cap=HANG_CAP_S)  # fmt: skip
        capped = result.exit_s >= HANG_CAP_S
        rows.append([label, f"{result.exit_s:.1f} s{' (killed)' if capped else ''}",
                     f"{result.rows} of {20 * METRICS_PER_STEP}",
                     "killed" if capped else str(result.exit_code)])  # fmt: skip
    relay_process.send_signal(signal.SIGUSR2)
    print(table(["exit with the network gone", "last step -> exit", "metrics stored",
                 "exit code"], rows))  # fmt: skip
    return 0


def report(results: list[Result], steps: int) -> str:
    base = next((r for r in results if r.key == "none"), None)
    rows = []
    for r in results:
        slowdown = r.loop_s / base.loop_s - 1 if base else float("nan")
        want = 0 if r.key == "none" else steps * METRICS_PER_STEP
        exact = r.rows == want and r.distinct == want
        met = slowdown <= SLOWDOWN_TARGET and exact and r.exit_s <= EXIT_TARGET_S
        rows.append([
            r.label, f"{steps / r.loop_s:.2f} steps/s", f"+{slowdown:.1%}",
            f"{r.rows} rows, {r.distinct} distinct of {want}", f"{r.exit_s:.2f} s",
            verdict(met),
        ])  # fmt: skip
    text = table(["mode", "loop", "added to the loop", "metrics in the database",
                  "last step -> exit", "targets"], rows)  # fmt: skip
    split = table(
        ["mode", *(name for name, _, _ in PHASES), "last step -> exit"],
        [[r.label, *(f"{r.phases[n]:.2f} s" if n in r.phases else "-" for n, _, _ in PHASES),
          f"{r.exit_s:.2f} s"] for r in results],
    )  # fmt: skip
    return (
        f"{text}\n\nWhere the exit's time goes (the script's own timestamps; the exit as the "
        f"parent saw it):\n\n{split}\n\n"
        f"{steps} steps of {STEP_SECONDS * 1000:.0f} ms, {METRICS_PER_STEP} metrics a step, "
        f"{2 * ONE_WAY_DELAY_MS:.0f} ms round trip, central app with sign-in. Targets: "
        f"adds <= {SLOWDOWN_TARGET:.0%}, every metric once, exit <= {EXIT_TARGET_S:.0f} s after "
        f"the last step. Load average {load_average()}."
    )


if __name__ == "__main__":
    raise SystemExit(main())
