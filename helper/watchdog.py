"""Keeps a server from outliving the helper that started it, even when the helper is SIGKILLed.

The helper runs ``python -P <this file> [--on-orphan JSON] -- <server argv>`` as the
leader of a new process group, with a pipe on its stdin whose write end only the helper holds.
The watchdog starts the server in that same group and waits. If the server ends, the watchdog
ends with its exit code. If the pipe reports end-of-file, the helper is gone however it died:
the watchdog runs ``--on-orphan`` (``docker stop …`` for the docker runtime, whose container
does not die with its client), then stops the whole group.

Standard library only, and nothing imported from the helper: it must start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading

STOP_TIMEOUT_SECONDS = 15.0


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group (the server and its workers), SIGKILL what is left."""
    group = os.getpgid(0)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(STOP_TIMEOUT_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


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
            _stop_group(child)
            return 1
    return int(child.returncode)


if __name__ == "__main__":
    raise SystemExit(main())
