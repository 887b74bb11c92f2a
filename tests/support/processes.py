"""Processes as /proc shows them, for the tests and the benches (Linux only, as both are): a
process's descendants and tree, its command line and environment, memory (RSS, PSS, peak), CPU
time and I/O of a set of processes. A process that exits meanwhile reads as empty or zero."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); the name may
    hold spaces and parentheses, so they follow its last ")". Empty once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def children_map(zombies: bool = True) -> dict[int, list[int]]:
    """Each parent's children, as /proc shows them now (``zombies``: also those not reaped)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) and (zombies or fields[0] != "Z"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int, zombies: bool = True) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), not ``pid`` itself."""
    children, found, todo = children_map(zombies), [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return sorted(found)


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that still exist."""
    return sorted(pid for pid in [root, *descendants(root)] if exists(pid))


def alive(pid: int) -> bool:
    """Running: it exists and is not a zombie."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def left_after(pids: Iterable[int], timeout: float, poll: float = 0.1) -> list[int]:
    """Those of ``pids`` that still exist once they all went, or ``timeout`` passed."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(poll)
    return [pid for pid in pids if exists(pid)]


def argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def cmdline(pid: int) -> str:
    """The command line as one string (arguments separated by spaces), to search in."""
    return " ".join(argv(pid))


def environ(pid: int) -> str:
    """The environment it started with, one ``NAME=value`` a line."""
    try:
        return (
            Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
        )
    except OSError:
        return ""


def status_kib(pid: int, key: str, filename: str = "status") -> int:
    """A ``key: N kB`` figure of /proc/<pid>/status (or ``filename``, e.g. smaps_rollup)."""
    try:
        for line in Path(f"/proc/{pid}/{filename}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pids: Iterable[int]) -> int:
    """Sum of VmRSS (shared pages counted once per process, as ``ps`` would add them up)."""
    return sum(status_kib(pid, "VmRSS") for pid in pids) * 1024


def rss_mib(pids: Iterable[int]) -> float:
    return rss_bytes(pids) / (1 << 20)


def pss_bytes(pids: Iterable[int]) -> int:
    """Sum of Pss (shared pages split between the processes sharing them)."""
    return sum(status_kib(pid, "Pss", "smaps_rollup") for pid in pids) * 1024


def peak_rss_bytes(pids: Iterable[int]) -> int:
    """Sum of VmHWM: each process's peak RSS since it started or since ``reset_peak_rss``."""
    return sum(status_kib(pid, "VmHWM") for pid in pids) * 1024


def reset_peak_rss(pids: Iterable[int]) -> None:
    """Make VmHWM start again from the current RSS (Linux: write 5 to clear_refs)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (children that exited not counted)."""
    ticks = sum(int(f[11]) + int(f[12]) for f in map(_stat, pids) if f)
    return ticks / os.sysconf("SC_CLK_TCK")


def io_bytes(pids: Iterable[int]) -> int:
    """Bytes read and written (rchar + wchar) through read() and write(): files, pipes, and sockets
    only where those are used on them; not recv() and send(), which Python's sockets use (asyncio,
    http.client, a socketserver), so a Python process's network bytes are mostly not here."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("rchar", "wchar"):
                    total += int(value)
    return total


def started_at(pid: int) -> float:
    """When ``pid`` started, in time.time() seconds (its stat's starttime, since boot)."""
    ticks = int(_stat(pid)[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def interrupt(process: subprocess.Popen[Any], grace_seconds: float = 30.0) -> None:
    """Stop a helper or server the way a user's Ctrl-C does (SIGINT: its own teardown runs and
    stops what it started), and kill it if it has not exited within ``grace_seconds``."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
