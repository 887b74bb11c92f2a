"""A bound on how long MLflow's asynchronous logging may hold a process at exit.

MLflow 3.17.2 (``MLFLOW_ENABLE_ASYNC_LOGGING=true`` or ``synchronous=False``) sends queued
metrics from a thread pool; at exit the interpreter joins those threads without a timeout
(mlflow#20575, #12402), so a training job whose tracking server stops answering after its last
step (a network partition, a lost VPN, a server scaled in) does not exit: each request waits
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (120 s) and is retried ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7)
times with backoff, for every queued batch (``bench/training_loop.py --hang`` reproduces it).

Installed through mlflow-aws's run context provider (``mlflow_aws/run_context.py``: mlflow
loads it at a script's first ``start_run`` wherever mlflow-aws is installed) and its aws-iam
client plugin, this runs first when the interpreter shuts down, before the thread pools are
joined: it lets the queue drain for up to ``MLFLOW_AWS_ASYNC_EXIT_SECONDS`` (default 10; 0 turns
the bound off). Drained in time: the exit goes on as usual, every metric sent. Not drained: it
says so on stderr (the metrics still queued are lost; the server never answered for them) and
ends the process with exit code 1 at once, since anything else would wait for the same threads.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

from mlflow_aws import environment as env_names

EXIT_SECONDS_ENV = env_names.ASYNC_EXIT_SECONDS
DEFAULT_EXIT_SECONDS = 10.0
_installed = False


def exit_bound(environ: Any = os.environ) -> float:
    try:
        return max(0.0, float(environ.get(EXIT_SECONDS_ENV, DEFAULT_EXIT_SECONDS)))
    except ValueError:
        return DEFAULT_EXIT_SECONDS


def _active_queues() -> list[Any]:
    """The async logging queues of this process's MLflow stores that still have work."""
    module = sys.modules.get("mlflow.utils.async_logging.async_logging_queue")
    if module is None:  # async logging never used: nothing to wait for
        return []
    import gc

    queue_type = module.AsyncLoggingQueue
    # Weak proxies are skipped by their own type: isinstance() on one whose referent is gone
    # raises ReferenceError (and a live one would name a queue found directly anyway).
    proxies = (weakref.ProxyType, weakref.CallableProxyType)
    return [
        q
        for q in gc.get_objects()
        if type(q) not in proxies and isinstance(q, queue_type) and not q.is_idle()
    ]


def drain_within_bound() -> None:
    bound = exit_bound()
    if bound <= 0:
        return
    queues = _active_queues()
    if not queues:
        return

    def drain() -> None:
        for queue in queues:
            try:
                queue.shut_down_async_logging()  # sends what is queued, waits for the sends
            except Exception as exc:
                sys.stderr.write(f"mlflow-aws: async logging could not finish: {exc}\n")

    drainer = threading.Thread(target=drain, name="mlflow-aws-async-exit", daemon=True)
    drainer.start()
    drainer.join(bound)
    if drainer.is_alive():
        sys.stderr.write(
            f"mlflow-aws: MLflow's async logging did not finish within {bound:g} s of the "
            "script's end (the tracking server did not answer): the metrics still queued are "
            f"lost; exiting with code 1 ({EXIT_SECONDS_ENV} sets the bound)\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


def install() -> None:
    """Run ``drain_within_bound`` at interpreter shutdown, before thread pools are joined
    (``threading._register_atexit``: what ``concurrent.futures`` itself uses, run last-in
    first-out, so ours runs before the pools' join)."""
    global _installed
    register = getattr(threading, "_register_atexit", None)
    if _installed or register is None:
        return
    import concurrent.futures.thread  # noqa: F401 (its join must be registered before ours)

    register(drain_within_bound)
    _installed = True
