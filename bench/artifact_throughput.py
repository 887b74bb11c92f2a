"""Artifacts up and down, side by side in one run on moto S3: (a) proxied through the server,
(b) presigned multipart straight to S3 with mlflow-aws's settings, (c) boto3 straight to S3
(the limit), through the laptop server (the tuned server, no sign-in) and through the central
app with sign-in (``--app-name aws-iam``, the client plugin), on MariaDB (TLS).

    .venv/bin/python bench/artifact_throughput.py                       # 200M,1G (~15 min)
    .venv/bin/python bench/artifact_throughput.py --sizes 200M,1G,4G    # 4G: the machine alone
    .venv/bin/python bench/artifact_throughput.py --sizes 8M,32M,200M   # pick the threshold
    .venv/bin/python bench/artifact_throughput.py --quick               # 32M only: does it work

Per size, route and mode: one upload with the stock ``MlflowClient.log_artifact`` and one
download with ``download_artifacts`` (sha256 compared with the source), timed; the server's
RSS (its process tree, peak against the start of the transfer) and the bytes it reads and
writes (``/proc/<pid>/io`` rchar + wchar: sockets, spool files and S3 alike) are recorded; the
longest single request to the server is recorded too (a proxied transfer is one request that
lasts the whole transfer: it must fit the load balancer's idle timeout,
``mlflow_aws/load_balancer.py IDLE_TIMEOUT_SECONDS``).

moto runs as ``tests/support/moto_ranged.py``, the tests' moto (a ranged GET reads its range, not
the whole object).

Targets: (b) >= 80% of (c) in MiB/s; in (b) the server's RSS grows <= 64 MiB and it handles
<= 1% of the bytes; no single request through the load balancer's path (the central route)
lasts longer than the load balancer's idle timeout.

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
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import log, nothing_left_behind, table, verdict, workdir
from mlflow_aws.artifact_settings import PRESIGNED, PROXIED, client_settings
from mlflow_aws.auth.token import MARKER_NAME
from mlflow_aws.load_balancer import IDLE_TIMEOUT_SECONDS
from tests.support.central import (
    CentralServer,
    client_aws_env,
    make_identities,
    moto_clients,
    running_central_server,
)
from tests.support.processes import (
    io_bytes,
    load_average,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)
from tests.support.services import RANGED_MOTO, running_mariadb, running_moto

MIB = 1 << 20
BUCKET = "mlflow-aws-bench-artifacts"
PROJECT = "bench-art"
REGION = "eu-west-1"
RATIO_TARGET = 0.80
RSS_GROWTH_LIMIT_MIB = 64.0
SERVER_BYTES_LIMIT = 0.01
MODES = ("a", "b", "c")
DIAGNOSTIC = "b+"
MODE_LABELS = {"a": "(a) proxied", "b": "(b) presigned", "c": "(c) boto3 to S3",
               DIAGNOSTIC: "(b+) presigned, more threads"}  # fmt: skip
# Every MLflow setting a mode may set; cleared before each transfer.
ARTIFACT_KEYS = sorted({*client_settings(PRESIGNED), *client_settings(PROXIED)})


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
    server_bytes: int = 0
    longest_request_s: float = 0.0


@dataclass
class Route:
    key: str
    label: str
    server: CentralServer
    plugin: bool
    figures: dict[tuple[int, str, str], Figure] = field(default_factory=dict)


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
def client_mode(mode: str, plugin: bool, threads: int | None = None) -> Iterator[None]:
    saved = {key: os.environ.pop(key, None) for key in [*ARTIFACT_KEYS, "MLFLOW_TRACKING_AUTH"]}
    if mode == "a":
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
    pids = route.server.pids()
    reset_peak_rss(pids)
    rss_before, io_before = rss_bytes(pids), io_bytes(pids)
    timer.longest = 0.0
    started = time.monotonic()
    with timer.installed():
        action()
    seconds = time.monotonic() - started
    return Figure(
        seconds,
        max(0.0, (peak_rss_bytes(pids) - rss_before) / MIB),
        io_bytes(pids) - io_before,
        timer.longest,
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
        with client_mode(mode, route.plugin, threads):
            client = MlflowClient(tracking_uri=route.server.tracking_uri)
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
        log(f"    {direction}: {mib_s(size, figure):,.1f} MiB/s, server "
            f"{figure.server_bytes / size:.2%} of the bytes, +{figure.server_rss_growth_mib:.0f} "
            f"MiB RSS, longest request {figure.longest_request_s:.1f} s; "
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
                lb_ok = route.key != "central" or max(a.longest_request_s, b.longest_request_s) <= (
                    IDLE_TIMEOUT_SECONDS
                )
                proxied = (
                    f"{mib_s(size, a):,.0f} MiB/s (server {a.server_bytes / size:.1f}x the "
                    f"bytes, +{a.server_rss_growth_mib:.0f} MiB; longest request "
                    f"{a.longest_request_s:.1f} s)"
                    if a_or_none
                    else "not run (the server holds a proxied upload in memory)"
                )
                met = (
                    ratio >= RATIO_TARGET
                    and growth <= RSS_GROWTH_LIMIT_MIB
                    and (handled <= SERVER_BYTES_LIMIT and lb_ok)
                )
                all_met &= met
                rows.append([
                    route.label, size_label(size), direction,
                    proxied,
                    f"{mib_s(size, b):,.0f} MiB/s (b/c {ratio:.0%}; server {handled:.2%} of the "
                    f"bytes, +{growth:.0f} MiB; longest request {b.longest_request_s:.2f} s)",
                    f"{mib_s(size, c):,.0f} MiB/s",
                    verdict(met),
                ])  # fmt: skip
    text = table(["route", "size", "", MODE_LABELS["a"], MODE_LABELS["b"], MODE_LABELS["c"], ""],
                 rows)  # fmt: skip
    return text, all_met


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
                    f"server {plus.server_bytes / size:.2%}, "
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
        "--routes", default="laptop,central", help="laptop, central (default: %(default)s)"
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
        with (
            running_central_server(moto, uri, artifacts, PROJECT, directory, auth=False) as plain,
            running_central_server(moto, uri, artifacts, PROJECT, directory) as guarded,
        ):
            routes = [
                route
                for route in (
                    Route("laptop", "laptop server (tuned, no sign-in)", plain, False),
                    Route("central", "central app, sign-in (plugin)", guarded, True),
                )
                if route.key in wanted
            ]
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
    if args.threads:
        print(f"\nDiagnostic (no target): (b) with {args.threads} client threads\n"
              + diagnostic_report(routes, sizes, args.threads))  # fmt: skip
    print(
        f"\nTargets: (b) >= {RATIO_TARGET:.0%} of (c); in (b) server RSS growth <= "
        f"{RSS_GROWTH_LIMIT_MIB:.0f} MiB and <= {SERVER_BYTES_LIMIT:.0%} of the bytes through "
        f"the server; no request through the load balancer's path (central) longer than its "
        f"idle timeout ({IDLE_TIMEOUT_SECONDS} s). Settings (b): "
        + ", ".join(f"{k}={v}" for k, v in client_settings(PRESIGNED).items())
        + f"; MLflow's client threads here: {mlflow_threads()} ({os.cpu_count()} CPUs)"
        + f". Load average at the start {started_load}, at the end {load_average()}."
    )
    print("all targets met" if all_met else "some targets MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
