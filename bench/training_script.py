"""The training script that ``bench/training_loop.py`` runs per mode: the standard library and
mlflow only, as a user's script has them (the bench's own imports, boto3 and the sign-in app,
would weigh on the interpreter's exit it measures).

    python bench/training_script.py STYLE STEPS STEP_SECONDS METRICS_PER_STEP [--detach]

STYLE is ``none``, ``metric`` (``log_metric`` per metric), ``metrics`` (``log_metrics`` per
step) or ``metrics-async`` (``log_metrics(..., synchronous=False)``). ``--detach``: no
``end_run`` (MLflow's atexit handler ends the run). It prints, flushed, one line each:

    <run id>
    loop <seconds of the loop> <wall clock at the end of the last step>
    mark end-run <wall clock>       after mlflow.end_run() returned (at once with --detach)
    mark threads <wall clock>       the interpreter's shutdown starts: threading's exit hooks
                                    (mlflow-aws's async-exit bound, the executors' joins),
                                    then the join of non-daemon threads
    mark atexit <wall clock>        the first atexit handler runs
    mark atexit-done <wall clock>   the last atexit handler has run (this one is registered
                                    before mlflow is imported, so it runs after every handler
                                    that mlflow and mlflow-aws register)

The parent takes the process's exit time itself; from ``atexit-done`` to the exit is the
interpreter's own teardown (module cleanup, the final garbage collections).
"""

from __future__ import annotations

import atexit
import sys
import threading
import time


def mark(name: str) -> None:
    print(f"mark {name} {time.time():.6f}", flush=True)


def main(argv: list[str]) -> int:
    style, steps, step_seconds, per_step = argv[0], int(argv[1]), float(argv[2]), int(argv[3])
    detach = "--detach" in argv[4:]
    atexit.register(mark, "atexit-done")  # first registered, so last to run (LIFO)
    import mlflow

    run = mlflow.start_run()
    print(run.info.run_id, flush=True)
    started = time.monotonic()
    for step in range(steps):
        time.sleep(step_seconds)  # the step's compute
        values = {f"metric_{i}": step * 0.001 + i for i in range(per_step)}
        if style == "metric":
            for key, value in values.items():
                mlflow.log_metric(key, value, step=step)
        elif style == "metrics":
            mlflow.log_metrics(values, step=step)
        elif style == "metrics-async":
            mlflow.log_metrics(values, step=step, synchronous=False)
    print(f"loop {time.monotonic() - started:.3f} {time.time():.6f}", flush=True)
    if not detach:
        mlflow.end_run()
    mark("end-run")
    # Registered last, so these run first in their phase.
    threading._register_atexit(mark, "threads")  # type: ignore[attr-defined]
    atexit.register(mark, "atexit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
