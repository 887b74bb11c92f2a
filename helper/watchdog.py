"""Keeps a server from outliving the helper that started it, even when the helper is SIGKILLed.

The helper runs ``python -P <this file> [--on-orphan JSON] -- <server argv>`` as the
leader of a new process group, with a pipe on its stdin whose write end only the helper holds.
The watchdog starts the server in that same group and waits. If the server ends, the watchdog
ends with its exit code. If the pipe reports end-of-file, the helper is gone however it died:
the watchdog runs ``--on-orphan`` (``docker stop …`` for the docker runtime, whose container
does not die with its client), then stops the whole group.

Standard library only, and nothing imported from the helper: it must start fast. The helper
imports ``stop_group`` from here: the one way a server's process group is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

STOP_TIMEOUT_SECONDS = 15.0


def group_gone(pgid: int, timeout: float) -> bool:
    """Whether process group ``pgid`` is empty within ``timeout`` (False: not ours to see)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.05)
    return False


def stop_group(
    pgid: int, leader: subprocess.Popen[Any] | None = None, timeout: float = STOP_TIMEOUT_SECONDS
) -> bool:
    """THE process-group stop (the helper's, the watchdog's, the reclaim of an orphan's): SIGTERM
    the group (the server and its workers), SIGKILL what is left after ``timeout``.

    ``leader``: our child in the group, waited for (reaped) first. True once the group is gone;
    a caller inside the group (the watchdog) cannot outwait itself, so for it once the leader is.
    """
    inside = os.getpgid(0) == pgid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:  # nobody left; reap the leader if it is a zombie of ours
            if leader is not None:
                leader.poll()
            return True
        except PermissionError:
            return False
        if leader is not None:
            try:
                leader.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        if inside:
            if leader is not None:
                return True
            continue
        # The leader is gone; workers of the group may linger a moment.
        if group_gone(pgid, timeout):
            return True
    return not inside and group_gone(pgid, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="watchdog")
    parser.add_argument("--on-orphan", default="[]", help="JSON argv to run if the helper dies")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no server command after --")
    on_orphan = json.loads(args.on_orphan)

    # The helper stops the group with SIGTERM while it lives; the watchdog lets the server
    # finish and then ends with its code, so it ignores the signal itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: (  # the server takes SIGTERM/SIGINT as usual
            signal.signal(signal.SIGTERM, signal.SIG_DFL),
            signal.signal(signal.SIGINT, signal.SIG_DFL),
        ),
    )
    orphaned = threading.Event()

    def watch_helper() -> None:
        while os.read(0, 4096):  # the helper never writes: this returns b"" when it is gone
            pass
        orphaned.set()

    threading.Thread(target=watch_helper, daemon=True).start()
    while child.poll() is None:
        if orphaned.wait(0.2):
            # The helper read our output: that pipe is broken now, so nothing is printed.
            if on_orphan:
                subprocess.run(on_orphan, timeout=60, check=False, capture_output=True)
            stop_group(os.getpgid(0), child)
            return 1
    return int(child.returncode)


if __name__ == "__main__":
    raise SystemExit(main())
