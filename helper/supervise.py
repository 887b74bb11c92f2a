"""Run a server child (mlflow or ``docker run``) until the user stops it, and clean up after.

The child runs in its own session (process group) so a terminal's Ctrl-C reaches only the
helper, which then stops the whole group (or the container) itself, whatever happens. The
group is led by a watchdog (helper/watchdog.py) that stops the server if the helper dies
without cleaning up (SIGKILL, a crash); and each running server is recorded in a private run
directory, so a start that finds an earlier helper's server on its port says so and stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO

from . import private
from .errors import HelperError
from .watchdog import STOP_TIMEOUT_SECONDS, stop_group

# MLflow's words when the schema is older than the server ("Detected out-of-date database schema").
SCHEMA_OUT_OF_DATE_MARKER = "out-of-date database schema"
HEALTH_TIMEOUT_SECONDS = 300.0  # a first start migrates an empty schema; Aurora may be resuming


class StopRequested(Exception):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C does."""


def tracking_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def export_line(port: int) -> str:
    return f"export MLFLOW_TRACKING_URI={tracking_uri(port)}"


def choose_run_secret(environ: Mapping[str, str] = os.environ) -> str:
    """This run's secret (mlflow_aws.run_secret): only clients that hold it are served."""
    from mlflow_aws.run_secret import run_secret_for

    try:
        return run_secret_for(environ)
    except ValueError as exc:
        raise HelperError(str(exc), 2) from None


def url_lines(port: int, secret: str) -> str:
    """What serve prints once its server (or proxy) answers: the browser's one-time URL and the
    export line, both with the run's secret (mlflow_aws.run_secret); stdout only, never a log."""
    from mlflow_aws import run_secret

    return (
        f"MLflow UI (open this URL once; it signs your browser in): "
        f"{run_secret.browser_url(tracking_uri(port), secret)}\n"
        f"{run_secret.export_line(tracking_uri(port), secret)}\n"
    )


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise StopRequested, SIGINT KeyboardInterrupt."""

    def request_stop(signum: int, frame: FrameType | None) -> None:
        raise StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # A shell starts background jobs with SIGINT ignored; Ctrl-C and `kill -INT` must still work.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let cleanup finish even if the user presses Ctrl-C again."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class OutputRelay(threading.Thread):
    """Copies the server's output to our stderr and notices the out-of-date-schema failure;
    the run's secret never reaches the log (e.g. an access log line of the one-time URL)."""

    def __init__(self, stream: IO[str], sink: IO[str], secret: str = "") -> None:
        super().__init__(name="server-output", daemon=True)
        self.stream = stream
        self.sink = sink
        self.secret = secret
        self.schema_out_of_date = False

    def run(self) -> None:
        for line in self.stream:
            if SCHEMA_OUT_OF_DATE_MARKER in line:
                self.schema_out_of_date = True
            if self.secret:
                line = line.replace(self.secret, "<the run's secret>")
            self.sink.write(line)
            self.sink.flush()


class Progress:
    """A spinner on a terminal, a line every few seconds otherwise (logs, CI)."""

    def __init__(self, what: str, sink: IO[str]) -> None:
        self.what = what
        self.sink = sink
        self.tty = sink.isatty()
        self.started = time.monotonic()
        self.last_line = self.started
        self.ticks = 0

    def tick(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            self.ticks += 1
            frame = "|/-\\"[self.ticks % 4]
            self.sink.write(f"\r{frame} {self.what} ({elapsed:.0f}s) ")
            self.sink.flush()
        elif time.monotonic() - self.last_line >= 5:
            self.last_line = time.monotonic()
            self.sink.write(f"... {self.what} ({elapsed:.0f}s)\n")
            self.sink.flush()

    def done(self) -> float:
        if self.tty:
            self.sink.write("\r\033[K")
            self.sink.flush()
        return time.monotonic() - self.started


def health_ok(port: int, timeout: float = 2.0) -> bool:
    # No proxy: a corporate HTTP_PROXY must not see (or break) a loopback health check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{tracking_uri(port)}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(
    process: subprocess.Popen[str], timeout: float = STOP_TIMEOUT_SECONDS
) -> None:
    """Stop the child's whole group (mlflow and its uvicorn): ``watchdog.stop_group``."""
    stop_group(process.pid, process, timeout)


@dataclass
class ServerLaunch:
    """One server to run: the child's argv and environment, and how to stop it."""

    description: str  # "MLflow server for project churn (process runtime)"
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    port: int
    stop: Callable[[subprocess.Popen[str]], None] = stop_process_group
    upgrade_hint: str | None = None  # the command that fixes an out-of-date schema
    health_timeout: float = HEALTH_TIMEOUT_SECONDS
    project: str = ""
    # What stops the server when the helper is gone (docker stop NAME); the group is stopped
    # in any case.
    on_orphan: list[str] = field(default_factory=list)
    # The run's secret (in env already); printed once the server answers, in the URL lines.
    secret: str = field(default="", repr=False)
    # The artifact path the printed lines choose (mlflow_aws.artifact_settings); None for a
    # server whose artifacts are local files.
    artifacts: str | None = None


def watchdog_argv(launch: ServerLaunch) -> list[str]:
    """The launch's argv under the watchdog: its file, run as a script (it imports only the
    standard library), so it starts however this package is importable; ``-P``: without
    this directory on its path, where a module could shadow one of the standard library's."""
    return [
        sys.executable, "-P", str(Path(__file__).with_name("watchdog.py")),
        "--on-orphan", json.dumps(launch.on_orphan), "--", *launch.argv,
    ]  # fmt: skip


# -- what an earlier helper left running --------------------------------------------------------


class UnsafeRunDirectory(HelperError):
    """The run directory (or a record in it) is not this user's alone."""


def _check_private_directory(path: Path, info: os.stat_result, exact_mode: bool) -> None:
    """``path`` (lstat'ed as ``info``) is a real directory of this user that nobody else can
    write to; with ``exact_mode`` (the helper's own directories) private (helper/private.py)."""
    problem = private.problem(info, directory=True, others_may_read=not exact_mode)
    if problem is None:
        return
    raise UnsafeRunDirectory(
        f"{path}, where the helper records the servers it runs, {problem}: a record planted "
        "there would make the helper stop processes or run commands. Point XDG_RUNTIME_DIR at "
        "a directory only you can write (mode 0700), or remove that path if you did not make it"
    )


def run_directory(environ: Mapping[str, str] = os.environ) -> Path:
    """Private (0700) place for the record of each server this user's helpers run: under
    ``$XDG_RUNTIME_DIR`` (or ``~/.cache``), which must be the user's and writable by nobody
    else; ``mlflow-aws/run`` in it are created 0700 and must be the user's real directories."""
    base = Path(environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache"))
    path = base / "mlflow-aws" / "run"
    try:
        if not base.exists():
            base.mkdir(parents=True, mode=private.PRIVATE_DIRECTORY_MODE)
        # stat, not lstat: the base itself may be a link the user made (~/.cache -> …); what
        # it points to must be theirs alone.
        _check_private_directory(base, base.stat(), exact_mode=False)
        for directory in (base / "mlflow-aws", path):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=private.PRIVATE_DIRECTORY_MODE)
            info = directory.lstat()
            if private.only_too_readable(info):
                # Earlier helpers made ~/.cache/mlflow-aws with mkdir's default mode (0755):
                # nobody else could write there, so nothing can have been planted; tighten it.
                os.chmod(directory, private.PRIVATE_DIRECTORY_MODE)
                info = directory.lstat()
            _check_private_directory(directory, info, exact_mode=True)
    except OSError as exc:
        raise HelperError(
            f"cannot create {path}, where the helper records the servers it runs ({exc.strerror});"
            " point XDG_RUNTIME_DIR at a directory of yours"
        ) from None
    return path


def _record_path(port: int) -> Path:
    return run_directory() / f"port-{port}.json"


def _read_record(path: Path) -> dict[str, object] | None:
    """The record at ``path`` if it is a regular file of this user's that only they can read
    and write (never through a symbolic link); None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafeRunDirectory(
            f"cannot open the run record {path} ({exc.strerror}; a symbolic link is refused): "
            "remove it if you did not make it"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        problem = private.problem(info, directory=False)
        if problem is not None:
            raise UnsafeRunDirectory(
                f"the run record {path} is not a private file of yours (it {problem}): the "
                "helper ignores it; remove it if you did not make it"
            )
        try:
            record = json.loads(handle.read(64 * 1024))
        except ValueError:
            return {}
    return record if isinstance(record, dict) else {}


def accepted_on_orphan(record: Mapping[str, object], port: int) -> list[str] | None:
    """The record's ``on_orphan`` if it is exactly the ``docker stop`` this helper writes for
    that port (its docker, the project's container name); None otherwise."""
    import shutil

    from mlflow_aws.names import name_problem

    from .runtimes import container_name, docker_stop_argv

    project, command = record.get("project"), record.get("on_orphan")
    docker = shutil.which("docker")
    if not isinstance(project, str) or name_problem(project) is not None or docker is None:
        return None
    expected = docker_stop_argv(docker, container_name(project, port))
    return expected if command == expected else None


def _group_commands(pgid: int) -> list[str]:
    """Command lines of the live processes of group ``pgid`` (Linux and macOS ``ps``)."""
    try:
        listing = subprocess.run(
            ["ps", "-A", "-o", "pgid=,command="], capture_output=True, text=True, timeout=10,
            check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    commands = []
    for line in listing.splitlines():
        group, _, command = line.strip().partition(" ")
        if group == str(pgid):
            commands.append(command)
    return commands


def process_identity(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later one reusing its number: its start time
    (Linux /proc, else ``ps``); None when no such process runs."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat_line = ""
    if stat_line:
        # Field 22 (starttime) counts after the parenthesised command, which may hold spaces.
        return stat_line.rpartition(")")[2].split()[19]
    try:
        started = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10,
            check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return started or None


def _helper_alive(record: Mapping[str, object]) -> bool:
    helper_pid = record.get("helper_pid")
    if not isinstance(helper_pid, int) or helper_pid <= 0:
        return False  # a record from before helpers recorded themselves: theirs is gone
    identity = process_identity(helper_pid)
    return identity is not None and identity == record.get("helper_identity")


def reclaim_port(port: int, err: IO[str] = sys.stderr) -> None:
    """Stop the server an earlier helper left on ``port`` (it was killed before it could);
    a server whose helper still runs is that helper's: refuse the port instead."""
    path = _record_path(port)
    record = _read_record(path)
    if record is None:
        return
    if _helper_alive(record):
        raise HelperError(
            f"port {port} is in use by another helper serving project {record.get('project')} "
            f"(pid {record.get('helper_pid')}, since {record.get('started')}); stop that one "
            f"or pick another port with --port {port + 1}"
        )
    pgid = record.get("pgid", 0)
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid < 0:
        pgid = 0
    ours = [c for c in _group_commands(pgid) if "watchdog" in c or "mlflow" in c] if pgid else []
    if ours:
        err.write(
            f"found the MLflow server of project {record.get('project')} that an earlier helper "
            f"started on port {port} (process group {pgid}, since {record.get('started')}) "
            "still running; stopping it\n"
        )
        stop_group(pgid)
    if record.get("on_orphan"):
        command = accepted_on_orphan(record, port)
        if command is None:
            err.write(
                f"ignoring the command in the run record {path}: it is not the `docker stop` "
                "the helper writes for this port\n"
            )
        else:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(command, capture_output=True, timeout=60, check=False)
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def recorded(launch: ServerLaunch, pgid: int, helper_pid: int | None = None) -> Iterator[None]:
    """Record the server of group ``pgid`` on its port while the block runs, with the helper
    that owns it (this process unless said): a later helper reclaims only what a dead one left."""
    path = _record_path(launch.port)
    owner = os.getpid() if helper_pid is None else helper_pid
    record = {
        "pgid": pgid,
        "helper_pid": owner,
        "helper_identity": process_identity(owner),
        "project": launch.project,
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "on_orphan": launch.on_orphan,
    }
    path.unlink(missing_ok=True)  # whatever is there (a link, another's file): ours replaces it
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, private.PRIVATE_FILE_MODE
    )
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def run_server(launch: ServerLaunch, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Start, wait for /health, print the URL, then supervise until stopped. Exit code."""
    with stop_signals():
        process = subprocess.Popen(
            watchdog_argv(launch),
            env=launch.env,
            # The watchdog's lifeline: only this process holds the write end, and never writes.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert process.stdout is not None
        relay = OutputRelay(process.stdout, err, launch.secret)
        relay.start()
        became_healthy: list[bool] = []
        try:
            with recorded(launch, process.pid):
                try:
                    return _supervise(launch, process, relay, out, err, became_healthy)
                except (KeyboardInterrupt, StopRequested):
                    err.write(f"\nstopping the {launch.description}...\n")
                    # Stopping a running server is the normal end; interrupting its start
                    # is not.
                    return 0 if became_healthy else 130
                finally:
                    with signals_ignored():
                        launch.stop(process)  # also when the leader died: its group may live
                        relay.join(5)
        finally:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()


def _supervise(
    launch: ServerLaunch,
    process: subprocess.Popen[str],
    relay: OutputRelay,
    out: IO[str],
    err: IO[str],
    became_healthy: list[bool],
) -> int:
    progress = Progress(f"waiting for the {launch.description} on port {launch.port}", err)
    deadline = time.monotonic() + launch.health_timeout
    while not health_ok(launch.port):
        if process.poll() is not None:
            relay.join(5)
            progress.done()
            raise _exited(launch, process, relay)
        if time.monotonic() > deadline:
            progress.done()
            raise HelperError(
                f"the {launch.description} did not answer /health within "
                f"{launch.health_timeout:.0f}s; see its output above"
            )
        progress.tick()
        time.sleep(0.25)
    seconds = progress.done()
    became_healthy.append(True)
    err.write(f"{launch.description} is healthy after {seconds:.1f}s; Ctrl-C stops it\n")
    out.write(url_lines(launch.port, launch.secret))
    if launch.artifacts is not None:
        from mlflow_aws.artifact_settings import describe

        from .artifacts import export_lines

        out.write("".join(f"{line}\n" for line in export_lines(launch.artifacts)))
        err.write(f"{describe(launch.artifacts)}\n")
    out.flush()
    process.wait()
    relay.join(5)
    raise _exited(launch, process, relay)


def _exited(
    launch: ServerLaunch, process: subprocess.Popen[str], relay: OutputRelay
) -> HelperError:
    if relay.schema_out_of_date and launch.upgrade_hint:
        return HelperError(
            f"the {launch.description} refused the database: its schema is older than this "
            "MLflow. Take a backup (Aurora keeps automated ones), then upgrade the schema with:\n"
            f"  {launch.upgrade_hint}"
        )
    return HelperError(
        f"the {launch.description} exited with code {process.returncode}; see its output above"
    )
