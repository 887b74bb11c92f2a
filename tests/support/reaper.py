"""Run a command as the child subreaper of everything it starts, then report what it left.

``python tests/support/reaper.py REPORT -- COMMAND...`` runs COMMAND; every process COMMAND
starts that outlives its parent is re-parented to this one (Linux ``PR_SET_CHILD_SUBREAPER``)
instead of init, so when COMMAND ends, whatever still runs below this process is exactly what
COMMAND left behind: nothing else on the machine is counted, whatever its name. Those are written to
REPORT as JSON (pid, command line), then stopped. The exit code is COMMAND's.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import cmdline, descendants

PR_SET_CHILD_SUBREAPER = 36
SETTLE_SECONDS = 2.0  # let processes the command stopped on its way out finish exiting


def reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main(argv: list[str]) -> int:
    report, separator, *command = argv
    assert separator == "--" and command, "usage: reaper.py REPORT -- COMMAND..."
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    code = subprocess.call(command)
    deadline = time.monotonic() + SETTLE_SECONDS
    left = descendants(os.getpid(), zombies=False)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        reap()
        left = descendants(os.getpid(), zombies=False)
    Path(report).write_text(json.dumps([[pid, cmdline(pid)] for pid in left]))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    reap()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
