"""Artifacts up and down, side by side in one run on moto S3: (a) proxied through the server,
(b) presigned multipart straight to S3 with mlflow-aws's settings, (c) boto3 straight to S3
(the limit), through three routes: the laptop server (the tuned server, no sign-in), the central
app with sign-in (``--app-name aws-iam``, the client plugin) and the same central app through
the teammate's signing proxy (``python -m helper serve --remote``, no plugin: the client has
only the lines it prints), on MariaDB (TLS).

    .venv/bin/python bench/artifact_throughput.py                       # 200M,1G (~15 min)
    .venv/bin/python bench/artifact_throughput.py --sizes 200M,1G,4G    # 4G: the machine alone
    .venv/bin/python bench/artifact_throughput.py --sizes 8M,32M,200M   # pick the threshold
    .venv/bin/python bench/artifact_throughput.py --quick               # 32M only: does it work
    .venv/bin/python bench/artifact_throughput.py --routes remote       # one route (of three)

Per size, route and mode: one upload with the stock ``MlflowClient.log_artifact`` and one
download with ``download_artifacts`` (sha256 compared with the source), timed; the server's
RSS (its process tree, peak against the start of the transfer) and the bytes it handles are
recorded; the longest single request to the server is recorded too (a proxied transfer is one
request that lasts the whole transfer: it must fit the load balancer's idle timeout,
``mlflow_aws/load_balancer.py IDLE_TIMEOUT_SECONDS``).

The bytes the server handles are counted on the client's connections to it: this process counts
every byte its sockets send to and receive from the server's port (``PeerBytes``: the socket
methods of this process, wrapped while a transfer runs; moto's S3 is another port and is not
counted). A proxied transfer (a) crosses that connection once, so it reads ~1.00x its size; a
presigned one (b) only its create, presigned-URL and complete requests. ``/proc/<pid>/io``
cannot count them: its rchar and wchar count read() and write(), not recv() and send(), which
uvicorn (asyncio) and boto3 move their bytes with. What it does count is shown beside, as the
server's "spool" (its spool files above all: a proxied download reads ~2x, written then read);
no target applies to it.

The route through the signing proxy (``remote``): ``helper serve --remote`` runs as the
teammate's AWS identity on the project's outputs (its connection secret in moto, the central
server as its TrackingUri); the client's environment for that route has no AWS setting and no
plugin, only what the proxy printed: ``MLFLOW_TRACKING_URI`` (the proxy on 127.0.0.1), the run's
``MLFLOW_TRACKING_TOKEN`` and, for (b), the artifact lines (``--artifacts auto``: presigned, moto
being reachable); (a) has those of ``--artifacts proxied``
(``mlflow_aws/artifact_settings.py client_settings``). The proxy's RSS growth and bytes are
recorded per transfer: its RSS growth as the server's (VmHWM, reset before), its bytes as the
server's, on this process's sockets to the proxy's port (``PeerBytes``; the proxy moves its
bytes with recv_into and sendall, so its rchar + wchar stay at ~0 while a whole artifact goes
through it). On this route the client reaches the server only through the proxy, which forwards
each request (re-signed) and relays each answer, so the same count stands for the server's
(labelled "via the proxy"); its spool is the server's own, as on the other routes.

moto runs as ``tests/support/moto_ranged.py``, the tests' moto (a ranged GET reads its range, not
the whole object).

Targets: (b) >= 80% of (c) in MiB/s; in (b) the server's RSS grows <= 64 MiB and it handles
<= 1% of the bytes (on the client's connections to it, not its spool); no single request
through the load balancer's path (the central and remote routes) lasts longer than the load
balancer's idle timeout; through the signing proxy, in (b) the proxy handles <= 1% of the bytes,
and in (a), where every byte passes through it, its RSS grows <= 64 MiB (it streams).

A diagnostic mode, (b+), is (b) with more client threads (``--threads``, default boto3's 10):
MLflow 3.17.2's client moves multipart ranges and parts on ``min(2 x CPUs, 20)`` threads
(``ArtifactRepository.max_workers``) and has no setting for it, so on 2 cores (b) runs 4 where
(c) runs 10. (b+) replaces that property in this process for its transfers only; no target.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import queue
import secrets
import shlex
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, log, nothing_left_behind, table, verdict, workdir
from mlflow_aws.artifact_settings import PRESIGNED, PROXIED, client_settings, printed_settings
from mlflow_aws.auth.token import MARKER_NAME
from mlflow_aws.load_balancer import IDLE_TIMEOUT_SECONDS
from tests.support.central import (
    CentralServer,
    Credentials,
    clean_env,
    client_aws_env,
    make_identities,
    moto_clients,
    outputs_with_tracking_uri,
    running_central_server,
)
from tests.support.processes import (
    descendants,
    interrupt,
    io_bytes,
    load_average,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from tests.support.services import (
    RANGED_MOTO,
    MotoServer,
    free_port,
    running_mariadb,
    running_moto,
)

MIB = 1 << 20
# Stack "central" (tests/support/central.py): its bucket prefix, which the helper checks in the
# outputs `helper serve --remote` reads (helper/trust.py).
BUCKET = "mlflow-aws-central-bench-artifacts"
PROJECT = "bench-art"
REGION = "eu-west-1"
RATIO_TARGET = 0.80
RSS_GROWTH_LIMIT_MIB = 64.0
SERVER_BYTES_LIMIT = 0.01
PROXY_BYTES_LIMIT = 0.01  # (b) through the signing proxy
PROXY_RSS_GROWTH_LIMIT_MIB = 64.0  # (a) through the signing proxy: every byte, streamed
ROUTES = ("laptop", "central", "remote")
LB_ROUTES = ("central", "remote")  # their requests take the load balancer's path
MODES = ("a", "b", "c")
DIAGNOSTIC = "b+"
MODE_LABELS = {"a": "(a) proxied", "b": "(b) presigned", "c": "(c) boto3 to S3",
               DIAGNOSTIC: "(b+) presigned, more threads"}  # fmt: skip
# Every MLflow setting a mode may set; cleared before each transfer.
ARTIFACT_KEYS = sorted({*client_settings(PRESIGNED), *client_settings(PROXIED)})
PROXY_START_TIMEOUT = 120.0


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MIB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def size_label(size: int) -> str:
    return f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size / MIB:g} MiB"


@dataclass
class Figure:
    seconds: float
    server_rss_growth_mib: float = 0.0
    # On this process's sockets to the server's port, both directions (PeerBytes); on the remote
    # route, to the proxy's port (the client reaches the server only through it).
    server_bytes: int = 0
    server_spool_bytes: int = 0  # the server's file I/O (/proc/<pid>/io rchar + wchar): spooling
    longest_request_s: float = 0.0
    proxy_rss_growth_mib: float = 0.0  # the signing proxy's (remote route), as the server's
    proxy_bytes: int = 0  # on this process's sockets to the proxy, both directions (PeerBytes)


@dataclass
class SigningProxy:
    """``helper serve --remote`` running, and what it printed for the client's environment."""

    process: subprocess.Popen[str]
    exported: dict[str, str] = field(repr=False)  # holds the run's secret
    log_path: Path

    def pids(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]

    @property
    def tracking_uri(self) -> str:
        return self.exported["MLFLOW_TRACKING_URI"]

    @property
    def port(self) -> int:
        return int(self.tracking_uri.rpartition(":")[2])

    def client_env(self, mode: str) -> dict[str, str]:
        """The client's environment for ``mode``: the URI and token lines; (b) with the artifact
        lines the proxy printed, (a) with those ``--artifacts proxied`` prints."""
        env = {k: self.exported[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")}
        if mode == "a":
            env.update(client_settings(PROXIED))
        elif mode in ("b", DIAGNOSTIC):
            env.update({k: self.exported[k] for k in client_settings(PRESIGNED)})
        return env


@dataclass
class Route:
    key: str
    label: str
    server: CentralServer
    plugin: bool
    figures: dict[tuple[int, str, str], Figure] = field(default_factory=dict)
    proxy: SigningProxy | None = None  # the remote route's: the client talks to it

    @property
    def tracking_uri(self) -> str:
        return self.proxy.tracking_uri if self.proxy else self.server.tracking_uri

    def proxy_pids(self) -> list[int]:
        return self.proxy.pids() if self.proxy else []

    def peers(self) -> dict[str, tuple[str, int]]:
        """The peers whose bytes this process counts (``PeerBytes``): the server's port (what
        the client reaches on the laptop and central routes) and, on the remote route, the
        proxy's (what the client reaches there)."""
        peers = {"server": ("127.0.0.1", self.server.port)}
        if self.proxy is not None:
            peers["proxy"] = ("127.0.0.1", self.proxy.port)
        return peers


class PeerBytes:
    """Bytes this process's sockets send to and receive from each of ``peers`` (a name, an
    address), while ``counting``: the methods of ``socket.socket`` that http.client, urllib3 and
    requests move bytes with, wrapped. Other peers (moto's S3 for the presigned URLs and for
    boto3) are not counted.

    ``/proc/<pid>/io`` cannot count these bytes: its rchar and wchar count read() and write(),
    not recv() and send(), which uvicorn (asyncio), boto3 and every Python socket use."""

    SENDS = ("send", "sendall")
    RECEIVES = ("recv", "recv_into")

    def __init__(self, peers: dict[str, tuple[str, int]]) -> None:
        self.peers = dict(peers)
        self.bytes = dict.fromkeys(self.peers, 0)
        self._lock = threading.Lock()
        self._by_address = {address: name for name, address in self.peers.items()}
        self._peer_of: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()

    def _peer(self, sock: socket.socket) -> str:
        """The name of ``sock``'s peer, "" for one not counted."""
        known = self._peer_of.get(sock)
        if known is None:
            if sock.family != socket.AF_INET:
                known = ""
            else:
                try:
                    known = self._by_address.get(sock.getpeername(), "")
                except OSError:
                    return ""  # not connected (yet): asked again on its next call
            self._peer_of[sock] = known
        return known

    def _add(self, sock: socket.socket, count: int) -> None:
        if count and (name := self._peer(sock)):
            with self._lock:
                self.bytes[name] += count

    @contextlib.contextmanager
    def counting(self) -> Iterator[PeerBytes]:
        base = socket.socket.__mro__[1]  # _socket.socket: the C methods
        counter = self

        def wrapped(name: str) -> Callable[..., Any]:
            original = getattr(base, name)

            if name == "sendall":

                def sendall(sock: socket.socket, data: Any, *args: Any) -> None:
                    original(sock, data, *args)
                    counter._add(sock, memoryview(data).nbytes)

                return sendall
            if name == "recv":

                def recv(sock: socket.socket, *args: Any) -> bytes:
                    data: bytes = original(sock, *args)
                    counter._add(sock, len(data))
                    return data

                return recv

            def counted(sock: socket.socket, *args: Any) -> int:  # send, recv_into: a count
                count: int = original(sock, *args)
                counter._add(sock, count)
                return count

            return counted

        names = (*self.SENDS, *self.RECEIVES)
        if any(name in vars(socket.socket) for name in names):
            raise RuntimeError("socket.socket is already wrapped: one PeerBytes at a time")
        for name in names:
            setattr(socket.socket, name, wrapped(name))
        try:
            yield self
        finally:
            for name in names:
                delattr(socket.socket, name)  # back to _socket.socket's


class RequestTimer:
    """The longest request MLflow's artifact client makes to the server (create, complete,
    presigned URL, or a proxied PUT/GET including its streamed body)."""

    def __init__(self) -> None:
        self.longest = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import mlflow.store.artifact.http_artifact_repo as repo

        original: Callable[..., Any] = repo.http_request

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            response = original(*args, **kwargs)
            if not kwargs.get("stream"):
                self.longest = max(self.longest, time.monotonic() - started)
                return response
            iter_content = response.iter_content

            def iterate(*a: Any, **k: Any) -> Iterator[bytes]:
                yield from iter_content(*a, **k)
                self.longest = max(self.longest, time.monotonic() - started)

            response.iter_content = iterate
            return response

        repo.http_request = timed
        try:
            yield
        finally:
            repo.http_request = original


def mlflow_threads() -> int:
    """The threads MLflow's artifact client uses here (min(2 x CPUs, 20))."""
    from mlflow.store.artifact.artifact_repo import ArtifactRepository

    return int(ArtifactRepository.max_workers.fget(None))  # type: ignore[attr-defined]


@contextlib.contextmanager
def client_threads(threads: int | None) -> Iterator[None]:
    """MLflow's artifact repositories made meanwhile use ``threads`` (None: MLflow's own)."""
    from mlflow.store.artifact.artifact_repo import ArtifactRepository

    original = ArtifactRepository.max_workers
    if threads is not None:
        ArtifactRepository.max_workers = property(lambda self: threads)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        ArtifactRepository.max_workers = original  # type: ignore[method-assign]


@contextlib.contextmanager
def client_mode(
    mode: str, plugin: bool, threads: int | None = None, proxy: SigningProxy | None = None
) -> Iterator[None]:
    """The client's environment for ``mode`` on a route; through the signing proxy, only what
    it printed (no AWS setting, no plugin)."""
    keys = [*ARTIFACT_KEYS, "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"]
    if proxy is not None:
        keys += [key for key in os.environ if key.startswith("AWS_")]
    saved = {key: os.environ.pop(key, None) for key in keys}
    if proxy is not None:
        os.environ.update(proxy.client_env(mode))
    elif mode == "a":
        os.environ.update(client_settings(PROXIED))
    elif mode in ("b", DIAGNOSTIC):
        os.environ.update(client_settings(PRESIGNED))
    if plugin:
        os.environ["MLFLOW_TRACKING_AUTH"] = "aws-iam"
    try:
        with client_threads(threads if mode == DIAGNOSTIC else None):
            yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(8 * MIB)
    with path.open("wb") as out:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def measured(route: Route, action: Callable[[], object], timer: RequestTimer) -> Figure:
    pids, proxy = route.server.pids(), route.proxy_pids()
    reset_peak_rss([*pids, *proxy])
    rss_before, io_before = rss_bytes(pids), io_bytes(pids)
    proxy_rss_before = rss_bytes(proxy)
    timer.longest = 0.0
    started = time.monotonic()
    with timer.installed(), PeerBytes(route.peers()).counting() as sockets:
        action()
    seconds = time.monotonic() - started
    through_proxy = sockets.bytes.get("proxy", 0)
    return Figure(
        seconds,
        server_rss_growth_mib=max(0.0, (peak_rss_bytes(pids) - rss_before) / MIB),
        # The remote route's client reaches the server only through the proxy, which forwards
        # each request (re-signed) and relays each answer: its connection stands for the server's.
        server_bytes=through_proxy if route.proxy else sockets.bytes["server"],
        server_spool_bytes=io_bytes(pids) - io_before,
        longest_request_s=timer.longest,
        proxy_rss_growth_mib=max(0.0, (peak_rss_bytes(proxy) - proxy_rss_before) / MIB),
        proxy_bytes=through_proxy,
    )


def transfer(
    route: Route, mode: str, size: int, source: Path, digest: str, directory: Path,
    s3: Any, timer: RequestTimer, threads: int | None = None,
) -> None:  # fmt: skip
    from mlflow import MlflowClient

    down = directory / "down"
    down.mkdir(exist_ok=True)
    if mode == "c":
        from boto3.s3.transfer import TransferConfig

        key = f"{PROJECT}/direct/{secrets.token_hex(4)}/{source.name}"
        config = TransferConfig()  # boto3's defaults: 8 MiB parts, 10 threads
        up = measured(route, lambda: s3.upload_file(str(source), BUCKET, key, Config=config), timer)
        target = down / source.name
        got = measured(
            route, lambda: s3.download_file(BUCKET, key, str(target), Config=config), timer
        )
        s3.delete_object(Bucket=BUCKET, Key=key)
        up.seconds, got.seconds = up.seconds, got.seconds
        up.longest_request_s = got.longest_request_s = 0.0  # not through the server at all
    else:
        with client_mode(mode, route.plugin, threads, route.proxy):
            client = MlflowClient(tracking_uri=route.tracking_uri)
            experiment = client.create_experiment(f"bench-{route.key}-{secrets.token_hex(4)}")
            run_id = client.create_run(experiment).info.run_id
            up = measured(route, lambda: client.log_artifact(run_id, str(source)), timer)
            target = down / source.name
            got = measured(
                route,
                lambda: client.download_artifacts(run_id, source.name, str(down)),
                timer,
            )
            client.delete_run(run_id)
    if sha256_of(target) != digest:
        raise RuntimeError(f"{route.label} {MODE_LABELS[mode]}: the download differs")
    target.unlink()
    route.figures[(size, mode, "up")] = up
    route.figures[(size, mode, "down")] = got
    # Each figure as it comes (a long run cut short still shows them), and the machine's memory
    # (moto keeps objects: a 4 GiB multipart completion is assembled in its memory).
    for direction, figure in (("up", up), ("down", got)):
        share = figure.proxy_bytes / size
        proxy = (
            (
                f"proxy {share:.2f}x the bytes, "
                if mode == "a"
                else f"proxy {share:.2%} of the bytes, "
            )
            + f"+{figure.proxy_rss_growth_mib:.0f} MiB RSS, "
            if route.proxy and mode != "c"
            else ""
        )
        server = (
            f"{server_bytes_text(route, figure, size, mode == 'a')}, "
            f"+{figure.server_rss_growth_mib:.0f} MiB RSS, "
            if mode != "c"
            else ""
        )
        log(f"    {direction}: {mib_s(size, figure):,.1f} MiB/s, {server}{proxy}longest request "
            f"{figure.longest_request_s:.1f} s; "
            f"{memory_available_gib():.1f} GiB available, load {load_average()}")  # fmt: skip
    # What the server stored, gone (moto keeps objects in memory and temp files).
    for listed in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PROJECT):
        for item in listed.get("Contents", []):
            if not item["Key"].endswith(MARKER_NAME):  # the central app's sign-in marker stays
                s3.delete_object(Bucket=BUCKET, Key=item["Key"])


def memory_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def boto3_client_like(client: Any, config: Any) -> Any:
    import boto3

    credentials = client._request_signer._credentials
    return boto3.client(
        "s3", endpoint_url=client.meta.endpoint_url, region_name=client.meta.region_name,
        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
        config=config,
    )  # fmt: skip


def mib_s(size: int, figure: Figure) -> float:
    return size / MIB / figure.seconds


def server_bytes_text(route: Route, figure: Figure, size: int, proxied: bool) -> str:
    """The server's share of the bytes on the client's connections to it ((a) as a multiple,
    (b) as a percentage), and its spool (file I/O) beside it, labelled."""
    share, spool = figure.server_bytes / size, figure.server_spool_bytes / size
    where = " via the proxy" if route.proxy else ""
    if proxied:
        return f"server {share:.2f}x the bytes{where} (spool {spool:.2f}x)"
    return f"server {share:.2%} of the bytes{where} (spool {spool:.2%})"


def report(routes: list[Route], sizes: list[int]) -> tuple[str, bool]:
    rows = []
    all_met = True
    for route in routes:
        for size in sizes:
            for direction in ("up", "down"):
                a_or_none, b, c = (route.figures.get((size, m, direction)) for m in MODES)
                assert b is not None and c is not None
                a = a_or_none or Figure(float("nan"))  # (a) not run at this size
                ratio = mib_s(size, b) / mib_s(size, c)
                growth = b.server_rss_growth_mib
                handled = b.server_bytes / size
                lb_ok = route.key not in LB_ROUTES or max(
                    a.longest_request_s, b.longest_request_s
                ) <= (IDLE_TIMEOUT_SECONDS)
                proxied = (
                    f"{mib_s(size, a):,.0f} MiB/s ({server_bytes_text(route, a, size, True)}, "
                    f"+{a.server_rss_growth_mib:.0f} MiB; longest request "
                    f"{a.longest_request_s:.1f} s)"
                    if a_or_none
                    else "not run (the server holds a proxied upload in memory)"
                )
                met = (
                    ratio >= RATIO_TARGET
                    and growth <= RSS_GROWTH_LIMIT_MIB
                    and (handled <= SERVER_BYTES_LIMIT and lb_ok)
                    and (route.proxy is None or proxy_met(a_or_none, b, size))
                )
                all_met &= met
                rows.append([
                    route.label, size_label(size), direction,
                    proxied,
                    f"{mib_s(size, b):,.0f} MiB/s (b/c {ratio:.0%}; "
                    f"{server_bytes_text(route, b, size, False)}, +{growth:.0f} MiB; longest "
                    f"request {b.longest_request_s:.2f} s)",
                    f"{mib_s(size, c):,.0f} MiB/s",
                    verdict(met),
                ])  # fmt: skip
    text = table(["route", "size", "", MODE_LABELS["a"], MODE_LABELS["b"], MODE_LABELS["c"], ""],
                 rows)  # fmt: skip
    return text, all_met


def proxy_met(a: Figure | None, b: Figure, size: int) -> bool:
    """(b): the proxy handles <= 1% of the bytes; (a), when run: its RSS grows <= 64 MiB."""
    return b.proxy_bytes / size <= PROXY_BYTES_LIMIT and (
        a is None or a.proxy_rss_growth_mib <= PROXY_RSS_GROWTH_LIMIT_MIB
    )


def proxy_report(routes: list[Route], sizes: list[int]) -> str:
    """The signing proxy's share of the bytes and RSS growth per mode, against its targets."""
    rows = []
    for route in routes:
        if route.proxy is None:
            continue
        for size in sizes:
            for direction in ("up", "down"):
                a, b = (route.figures.get((size, m, direction)) for m in ("a", "b"))
                assert b is not None
                rows.append([
                    route.label, size_label(size), direction,
                    f"{a.proxy_bytes / size:.2f}x the bytes, +{a.proxy_rss_growth_mib:.0f} MiB "
                    f"(≤ {PROXY_RSS_GROWTH_LIMIT_MIB:.0f}: "
                    f"{verdict(a.proxy_rss_growth_mib <= PROXY_RSS_GROWTH_LIMIT_MIB)})"
                    if a else "not run",
                    f"{b.proxy_bytes / size:.2%} of the bytes (≤ {PROXY_BYTES_LIMIT:.0%}: "
                    f"{verdict(b.proxy_bytes / size <= PROXY_BYTES_LIMIT)}), "
                    f"+{b.proxy_rss_growth_mib:.0f} MiB",
                    verdict(proxy_met(a, b, size)),
                ])  # fmt: skip
    return table(["route", "size", "", "(a) proxied: signing proxy", "(b) presigned: signing proxy",
                  ""], rows)  # fmt: skip


@contextlib.contextmanager
def signing_proxy(
    moto: MotoServer, project: Any, central: CentralServer, credentials: Credentials,
    directory: Path,
) -> Iterator[SigningProxy]:  # fmt: skip
    """``python -m helper serve --remote`` as ``credentials`` (the teammate's identity) on the
    project's outputs naming ``central``; what it prints read until the artifact lines are
    there; stopped with Ctrl-C (SIGINT) after, killed if it does not stop."""
    outputs = directory / "remote-outputs.json"
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, central.tracking_uri))
    port = free_port()
    env = clean_env(**client_aws_env(moto, credentials), PYTHONUNBUFFERED="1")
    argv = [PYTHON, "-m", "helper", "serve", "--project", project.name, "--outputs",
            str(outputs), "--remote", "--port", str(port)]  # fmt: skip
    log_path = directory / f"signing-proxy-{port}.log"
    with log_path.open("w") as err:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, name="signing-proxy-stdout", daemon=True)
    reader.start()
    try:
        exported: dict[str, str] = {}
        want = 2 + len(printed_settings(PRESIGNED))  # the URI and token, the artifact lines
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while len(exported) < want:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(
                    f"the signing proxy did not start: {log_path.read_text()[-2000:]}"
                ) from None
            if line is None:
                raise RuntimeError(f"the signing proxy exited with {process.wait()}: "
                                   f"{log_path.read_text()[-2000:]}")  # fmt: skip
            if line.startswith("export "):
                for word in shlex.split(line.removeprefix("export ")):
                    key, _, value = word.partition("=")
                    exported[key] = value
        proxy = SigningProxy(process, exported, log_path)
        if proxy.tracking_uri != f"http://127.0.0.1:{port}" or not exported.get(
            "MLFLOW_TRACKING_TOKEN"
        ):
            raise RuntimeError("the signing proxy printed no URI and token for 127.0.0.1")
        artifact_lines = {k: v for k, v in exported.items() if k in ARTIFACT_KEYS}
        if artifact_lines != client_settings(PRESIGNED):
            raise RuntimeError(f"the signing proxy printed {artifact_lines}, not the presigned "
                               f"lines: {log_path.read_text()[-2000:]}")  # fmt: skip
        yield proxy
    finally:
        interrupt(process)
        reader.join(10)


def diagnostic_report(routes: list[Route], sizes: list[int], threads: int) -> str:
    """(b) on MLflow's threads against (b+) on ``threads``, both against (c); no target."""
    rows = []
    for route in routes:
        for size in sizes:
            for direction in ("up", "down"):
                b, plus, c = (
                    route.figures.get((size, m, direction)) for m in ("b", DIAGNOSTIC, "c")
                )
                if b is None or plus is None or c is None:
                    continue
                rows.append([
                    route.label, size_label(size), direction,
                    f"{mib_s(size, b):,.0f} MiB/s ({mib_s(size, b) / mib_s(size, c):.0%})",
                    f"{mib_s(size, plus):,.0f} MiB/s ({mib_s(size, plus) / mib_s(size, c):.0%}; "
                    f"{server_bytes_text(route, plus, size, False)}, "
                    f"+{plus.server_rss_growth_mib:.0f} MiB)",
                    f"{mib_s(size, c):,.0f} MiB/s",
                ])  # fmt: skip
    return table(["route", "size", "", f"(b) {mlflow_threads()} threads (of c)",
                  f"(b+) {threads} threads (of c)", "(c) boto3, 10 threads"], rows)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="200M,1G",
        help="comma-separated (default: %(default)s; 4G needs "
        "the machine alone: moto assembles a completed upload in memory)",
    )
    parser.add_argument(
        "--threads", type=int, default=10,
        help="client threads of the diagnostic (b+) (default: %(default)s, boto3's; 0: no (b+))",
    )  # fmt: skip
    parser.add_argument(
        "--routes",
        default=",".join(ROUTES),
        help="laptop (the tuned server, no sign-in), central (the central app, sign-in with the "
        "client plugin), remote (the central app through `helper serve --remote`) "
        "(default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="32M only, to check it works")
    parser.add_argument(
        "--proxied-up-to",
        default="1G",
        help="run (a) only up to this size (default: %(default)s): MLflow's proxied upload holds "
        "the file in the server's memory (+2 GiB at 1 GiB; a 4 GiB one grew the server past "
        "10 GiB, and moto holds another copy, until the kernel killed it on a 24 GiB machine)",
    )
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in ("32M" if args.quick else args.sizes).split(",")]
    wanted = [r.strip() for r in args.routes.split(",")]
    if unknown := sorted(set(wanted) - set(ROUTES)):
        parser.error(f"--routes: unknown {', '.join(unknown)}; of {', '.join(ROUTES)}")
    proxied_limit = parse_size(args.proxied_up_to)
    started_load = load_average()

    with (
        nothing_left_behind(),
        running_moto(RANGED_MOTO) as moto,  # real S3 reads a range, not the object
        running_mariadb() as db,
        workdir() as directory,
    ):
        log("moto identities, bucket, project schema")
        identities = make_identities(moto)
        # moto assembles a completed multipart upload in memory: for 4 GiB that outlasts boto3's
        # 60 s read timeout, and its retry of CompleteMultipartUpload gets a 500 (S3 takes
        # seconds). A longer timeout keeps (c) measuring the transfer.
        from botocore.config import Config

        s3 = moto_clients(moto, "s3")
        s3 = boto3_client_like(s3, Config(read_timeout=900))
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
        from tests.support.stack_on_moto import create_project

        project = create_project(db, PROJECT)
        uri = db.url(project.user, project.password, project.schema)
        artifacts = f"s3://{BUCKET}/{PROJECT}"
        os.environ.update(client_aws_env(moto, identities.allowed_role))
        with contextlib.ExitStack() as running:  # only what the routes asked for
            routes = []
            if "laptop" in wanted:
                plain = running.enter_context(
                    running_central_server(moto, uri, artifacts, PROJECT, directory, auth=False)
                )
                routes.append(Route("laptop", "laptop server (tuned, no sign-in)", plain, False))
            if "central" in wanted or "remote" in wanted:
                guarded = running.enter_context(
                    running_central_server(moto, uri, artifacts, PROJECT, directory)
                )
            if "central" in wanted:
                routes.append(Route("central", "central app, sign-in (plugin)", guarded, True))
            if "remote" in wanted:
                log("starting the signing proxy (helper serve --remote)")
                proxy = running.enter_context(
                    signing_proxy(moto, project, guarded, identities.allowed_role, directory)
                )
                routes.append(Route("remote", "central app, sign-in (helper serve --remote)",
                                    guarded, False, proxy=proxy))  # fmt: skip
            timer = RequestTimer()
            for size in sizes:
                source = directory / f"artifact-{size}.bin"
                log(f"{size_label(size)}: writing the source file")
                digest = make_file(source, size)
                modes = [*MODES, DIAGNOSTIC] if args.threads else list(MODES)
                for route in routes:
                    for mode in modes:
                        if mode == "a" and size > proxied_limit:
                            continue
                        log(f"  {route.label}: {MODE_LABELS[mode]} up and down")
                        transfer(route, mode, size, source, digest, directory, s3, timer,
                                 args.threads)  # fmt: skip
                source.unlink()
                done = sizes[: sizes.index(size) + 1]
                if len(done) < len(sizes):  # a long run shows what it has so far
                    print(f"so far:\n{report(routes, done)[0]}\n", flush=True)
    text, all_met = report(routes, sizes)
    print(text)
    if any(route.proxy for route in routes):
        print("\nThe signing proxy (helper serve --remote): the bytes through it (on the "
              "client's connections to it) and its RSS growth\n"
              + proxy_report(routes, sizes))  # fmt: skip
    if args.threads:
        print(f"\nDiagnostic (no target): (b) with {args.threads} client threads\n"
              + diagnostic_report(routes, sizes, args.threads))  # fmt: skip
    print(
        f"\nTargets: (b) >= {RATIO_TARGET:.0%} of (c); in (b) server RSS growth <= "
        f"{RSS_GROWTH_LIMIT_MIB:.0f} MiB and <= {SERVER_BYTES_LIMIT:.0%} of the bytes on the "
        f"client's connections to the server (the socket count; its spool, file I/O, is shown "
        f"beside it, no target); no request through the load balancer's path (central, remote) "
        f"longer than its idle timeout ({IDLE_TIMEOUT_SECONDS} s); through the signing proxy, "
        f"(b) <= "
        f"{PROXY_BYTES_LIMIT:.0%} of the bytes through it and (a) its RSS growth <= "
        f"{PROXY_RSS_GROWTH_LIMIT_MIB:.0f} MiB. Settings (b): "
        + ", ".join(f"{k}={v}" for k, v in client_settings(PRESIGNED).items())
        + f"; MLflow's client threads here: {mlflow_threads()} ({os.cpu_count()} CPUs)"
        + f". Load average at the start {started_load}, at the end {load_average()}."
    )
    print("all targets met" if all_met else "some targets MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
