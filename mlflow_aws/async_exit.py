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

Then, in a script that started a run, ``freeze_for_exit`` is the last atexit handler MLflow's
import leaves (see its docstring): it spares the interpreter's final garbage collections over
the ~150,000 objects of ``import mlflow`` (~1,780 modules), most of the script's exit.
"""

from __future__ import annotations

import atexit
import gc
import io
import os
import sys
import threading
from typing import Any

from mlflow_aws import environment as env_names

EXIT_SECONDS_ENV = env_names.ASYNC_EXIT_SECONDS
FAST_EXIT_ENV = env_names.FAST_EXIT
DEFAULT_EXIT_SECONDS = 10.0
_installed = False
_run_started = False
_kept_modules: list[Any] = []
# What open() returns for writing (text, binary, read-write): the buffers a teardown would flush.
_BUFFERED_FILE_TYPES: set[type] = {io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom}


def exit_bound(environ: Any = os.environ) -> float:
    try:
        return max(0.0, float(environ.get(EXIT_SECONDS_ENV, DEFAULT_EXIT_SECONDS)))
    except ValueError:
        return DEFAULT_EXIT_SECONDS


def _active_queues() -> list[Any]:
    """The async logging queues of this process's MLflow stores that still have work."""
    queue_type = _queue_type()
    if queue_type is None:  # async logging never used: nothing to wait for
        return []
    return [q for q in _tracked({queue_type}) if not q.is_idle()]


def _queue_type() -> type | None:
    module = sys.modules.get("mlflow.utils.async_logging.async_logging_queue")
    return None if module is None else module.AsyncLoggingQueue


def _tracked(types: set[type]) -> list[Any]:
    """The objects of exactly these types among all the garbage collector tracks. Exact types
    in a set: one pass over the ~150,000 objects of ``import mlflow`` costs ~0.05 s, isinstance()
    twice that (against an ABC such as io.IOBase 3x), and a weak proxy is never taken for its
    referent (isinstance() on a dead one raises ReferenceError)."""
    return [o for o in gc.get_objects() if type(o) in types]


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


def fast_exit_enabled(environ: Any = os.environ) -> bool:
    return str(environ.get(FAST_EXIT_ENV, "1")).strip() != "0"


def note_run_started() -> None:
    global _run_started
    _run_started = True


def freeze_for_exit() -> None:
    """Let the interpreter's teardown skip its garbage collections over what is alive at exit.

    Measured (bench/training_loop.py, the recommended mode, 500 steps, side by side, load 12):
    with Python's full teardown 2.06 s of a 2.55 s exit came after the last atexit handler, the
    interpreter walking the ~150,000 objects that ``import mlflow`` leaves (one full collection
    takes ~0.15 s here, and the teardown makes several); frozen, 0.29 s (the exit 0.96 s, this
    handler 0.16 s of it). ``gc.freeze()`` moves every object into the permanent generation,
    which collections never walk; ``gc.disable()`` does not help (measured: the teardown
    collects regardless).

    Frozen objects are never freed, so their finalizers would not run: an unclosed file at
    module level would lose its buffered tail, a ``NamedTemporaryFile`` would stay on disk, a
    ``ZipFile`` would not be closed (tests/test_async_exit.py). So first every open writable
    file is flushed, and every module is kept alive (a frozen list holding itself): the teardown
    then clears each module's globals, as it does for any live module, and what they held alone
    is finalized as usual. What differs from Python's full teardown: objects in reference cycles
    are not finalized (their ``__del__`` does not run; their files are flushed), and the script's
    own module is cleared like the others instead of collected whole, so a ``__del__`` of one of
    its globals may find the other globals already None (what the data model's ``__del__`` note
    warns of at shutdown). ``MLFLOW_AWS_FAST_EXIT=0`` keeps the full teardown.

    Registered during ``import mlflow`` (MLflow loads the run context providers before it
    registers its own end of a run), so it runs after MLflow's atexit handlers: the run's end
    and the async queues' flushes. It acts only in a script that started a run, only when no
    run is left open and no queue holds metrics (ran too early otherwise: the teardown stays as
    Python's), and not with ``MLFLOW_AWS_FAST_EXIT=0``.
    """
    if not (_run_started and fast_exit_enabled()):
        return
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None and fluent.active_run() is not None:
        return
    queue_type = _queue_type()
    queues = set() if queue_type is None else {queue_type}
    found = _tracked(queues | _BUFFERED_FILE_TYPES)
    if any(type(o) in queues and _has_work(o) for o in found):
        return
    for file in found:
        try:
            if type(file) in _BUFFERED_FILE_TYPES and not file.closed and file.writable():
                file.flush()
        except (OSError, ValueError):  # a closed pipe, a detached wrapper: nothing to keep
            pass
    global _kept_modules
    _kept_modules = list(sys.modules.values())
    _kept_modules.append(_kept_modules)  # holds itself: frozen, never freed, nor the modules
    gc.freeze()


def _has_work(queue: Any) -> bool:
    """Still sending: not shut down (our bound does that) and its loop not joined (MLflow's
    atexit handler does that, leaving the queue marked active)."""
    if queue.is_idle():
        return False
    loop = getattr(queue, "_batch_logging_thread", None)
    return loop is not None and loop.is_alive()


def install() -> None:
    """Run ``drain_within_bound`` at interpreter shutdown, before thread pools are joined
    (``threading._register_atexit``: what ``concurrent.futures`` itself uses, run last-in
    first-out, so ours runs before the pools' join), and ``freeze_for_exit`` after the atexit
    handlers registered from now on (last-in first-out: the earliest registered runs last)."""
    global _installed
    register = getattr(threading, "_register_atexit", None)
    if _installed or register is None:
        return
    import concurrent.futures.thread  # noqa: F401 (its join must be registered before ours)

    register(drain_within_bound)
    atexit.register(freeze_for_exit)
    _installed = True
