"""What signing in with AWS identities costs: the same tuned MLflow server (a) without auth,
(b) with the aws-iam app and the client plugin, (c) with the aws-iam app behind the helper's
signing proxy (``python -m helper serve --remote``), measured side by side in one run on
MariaDB (TLS) and moto (S3, STS, IAM); then a multi-GB artifact up and down through the proxy.

    .venv/bin/python bench/auth_overhead.py            # full figures (~8 min)
    .venv/bin/python bench/auth_overhead.py --quick    # small counts, to check it works

Workload per target: one run, a warm-up (the identity cache is then warm: tokens are reused
for 5 min and the server caches a verified one until it expires), then per repetition ``--n``
one-by-one ``log_metric`` calls, ``--batches`` ``log_batch`` calls of 1,000 metrics and
``--tutorial-runs`` runs of the tutorial's tracking.py workload (bench/prefix_throughput.py's:
a run, a param, three metrics, an artifact).
Repetitions are interleaved (a, b, c, a, b, c, ...), the server not being measured is frozen,
and the median is reported.

Then ``--big-gib`` (2) GiB go up through the proxy as one sized PUT to the server's proxied
artifact route and come back down as one GET (sha256 compared), generated and hashed on the
fly; the proxy's VmHWM is reset before each (``/proc/<pid>/clear_refs``) and read after.

Targets: c/a >= 95% one by one (issue 17: the proxy's own cost <= 5%), >= 90% in batches and
tutorial runs; proxy RSS grows by <= 64 MiB while the big artifact goes up and while it comes
down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HELPER_SECRET,
    PYTHON,
    ROOT,
    log,
    log_batches,
    log_one_by_one,
    median,
    new_run,
    paused,
    table,
    verdict,
    workdir,
)
from tests.support.central import (
    CentralServer,
    clean_env,
    client_aws_env,
    make_identities,
    moto_clients,
    outputs_with_tracking_uri,
    running_central_server,
)
from tests.support.processes import cpu_seconds, load_average, reset_peak_rss, status_kib
from tests.support.services import MariaDB, MotoServer, free_port, running_mariadb, running_moto

TARGET_RATIO = {"single": 0.95, "batch": 0.90, "tutorial": 0.90}
PROXY_RSS_GROWTH_LIMIT_MIB = 64.0
BUCKET = "mlflow-aws-central-bench-auth"  # stack "central" (tests/support/central.py): its prefix
PROJECT = "bench-auth"
REGION = "eu-west-1"


@dataclass
class Target:
    key: str
    label: str
    tracking_uri: str
    server: CentralServer
    plugin: bool = False
    single: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    tutorial: list[float] = field(default_factory=list)  # tutorial runs/s
    client: Any = None
    run_id: str = ""
    proxy_pid: int | None = None
    proxy_cpu_ms: list[float] = field(default_factory=list)  # per one-by-one call


@contextlib.contextmanager
def plugin_enabled(on: bool) -> Iterator[None]:
    """MLFLOW_TRACKING_AUTH is read per request: set only while the plugin target runs."""
    if on:
        os.environ["MLFLOW_TRACKING_AUTH"] = "aws-iam"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_TRACKING_AUTH", None)


def frozen(servers: list[CentralServer]) -> contextlib.AbstractContextManager[None]:
    return paused([pid for server in servers for pid in server.pids()])


@contextlib.contextmanager
def signing_proxy(
    db: MariaDB, project: Any, moto: MotoServer, central: CentralServer, credentials: Any,
    directory: Path,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:  # fmt: skip
    """``python -m helper serve --remote`` as ``credentials``; stopped with Ctrl-C after. Its
    run's secret is this process's MLFLOW_TRACKING_TOKEN (HELPER_SECRET), which this process's
    clients send to every target (the plugin replaces it; the server without auth ignores it)."""
    outputs = directory / "outputs.json"
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, central.tracking_uri))
    port = free_port()
    env = clean_env(**client_aws_env(moto, credentials), PYTHONUNBUFFERED="1",
                    MLFLOW_TRACKING_TOKEN=HELPER_SECRET)  # fmt: skip
    os.environ["MLFLOW_TRACKING_TOKEN"] = HELPER_SECRET
    argv = [PYTHON, "-m", "helper", "serve", "--project", PROJECT, "--outputs", str(outputs),
            "--remote", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        want = f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port} MLFLOW_TRACKING_TOKEN="
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if line.startswith(want):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the signing proxy did not start")
        else:
            raise RuntimeError(f"the signing proxy exited with {process.wait()}")
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def measure(
    targets: list[Target], n: int, batches: int, reps: int, warmup: int, tutorials: int,
    artifacts: Path,
) -> None:  # fmt: skip
    from bench.prefix_throughput import tutorial_runs

    for target in targets:
        with plugin_enabled(target.plugin):
            target.client, target.run_id = new_run(target.tracking_uri, f"bench-{target.key}")
            log(f"  warm-up {target.label}")
            log_one_by_one(target.client, target.run_id, warmup, key="warmup")
            log_batches(target.client, target.run_id, 1, first_step=10_000_000)
            tutorial_runs(target.tracking_uri, 1, artifacts)
    servers = {id(t.server): t.server for t in targets}
    for rep in range(reps):
        for target in targets:
            others = [s for key, s in servers.items() if key != id(target.server)]
            with frozen(others), plugin_enabled(target.plugin):
                log(f"  rep {rep + 1}/{reps}: {target.label}")
                proxy = [target.proxy_pid] if target.proxy_pid else []
                proxy_cpu = cpu_seconds(proxy)
                target.single.append(
                    log_one_by_one(target.client, target.run_id, n, first_step=rep * n)
                )
                if proxy:
                    target.proxy_cpu_ms.append((cpu_seconds(proxy) - proxy_cpu) / n * 1000)
                target.batch.append(
                    log_batches(target.client, target.run_id, batches,
                                first_step=rep * batches * 1000)
                )  # fmt: skip
                target.tutorial.append(tutorial_runs(target.tracking_uri, tutorials, artifacts))


@dataclass
class BigTransfer:
    direction: str
    seconds: float
    growth_mib: float  # the proxy's VmHWM over its VmRSS before
    gib_per_s: float
    failed: str = ""  # why the transfer failed (its RSS is still measured)


def reset_peak(pid: int) -> int:
    """Reset the VmHWM of ``pid`` to its current RSS; returns that RSS (KiB)."""
    reset_peak_rss([pid])
    return status_kib(pid, "VmRSS")


def big_artifact_through_proxy(
    proxy_uri: str, proxy_pid: int, gib: float
) -> tuple[list[BigTransfer], bool]:
    """One ``gib`` GiB artifact up (one sized PUT of the server's proxied artifact route) and
    down (one GET) through the proxy, generated and hashed on the fly (no file); the transfers
    and whether the bytes came back the same."""
    import hashlib
    import http.client
    from urllib.parse import urlsplit

    client, run_id = new_run(proxy_uri, "bench-big")
    where = urlsplit(client.get_run(run_id).info.artifact_uri).path.rstrip("/")
    path = f"/api/2.0/mlflow-artifacts/artifacts{where}/big.bin"
    port = urlsplit(proxy_uri).port
    auth = {"Authorization": f"Bearer {HELPER_SECRET}"}
    blocks = int(gib * 1024)
    block = os.urandom(1 << 20)
    sent, received = hashlib.sha256(), hashlib.sha256()
    transfers = []

    def measured(direction: str, transfer: Any) -> None:
        before = reset_peak(proxy_pid)
        started = time.monotonic()
        failed = ""
        try:
            transfer()
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            failed = str(exc)  # the figures above still print (a server on moto may be slow)
        seconds = time.monotonic() - started
        peak = status_kib(proxy_pid, "VmHWM")
        log(f"    {direction}: {seconds:.0f} s; proxy RSS {before} KiB before, peak {peak} KiB"
            f"{'; FAILED: ' + failed if failed else ''}")  # fmt: skip
        transfers.append(
            BigTransfer(direction, seconds, (peak - before) / 1024, gib / seconds, failed)
        )

    def upload() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.putrequest("PUT", path)
        for name, value in {**auth, "Content-Type": "application/octet-stream",
                            "Content-Length": str(blocks << 20)}.items():  # fmt: skip
            connection.putheader(name, value)
        connection.endheaders()
        for i in range(blocks):
            data = i.to_bytes(8, "big") + block[8:]  # no two blocks alike
            sent.update(data)
            connection.send(data)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"upload through the proxy: {response.status} {body[:200]!r}")

    def download() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.request("GET", path, headers=auth)
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"download through the proxy: {response.status}")
        while data := response.read(1 << 20):
            received.update(data)
        connection.close()

    measured("up", upload)
    measured("down", download)
    return transfers, sent.digest() == received.digest()


def rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s" if per_second >= 100 else f"{per_second:.2f}/s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="one-by-one log_metric per repetition")
    parser.add_argument("--batches", type=int, default=10, help="log_batch calls per repetition")
    parser.add_argument("--tutorial-runs", type=int, default=10, help="per repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--big-gib", type=float, default=2.0, help="the artifact through the proxy")
    parser.add_argument("--quick", action="store_true", help="small counts, to check it works")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.reps, args.tutorial_runs, args.big_gib = 30, 2, 2, 2, 0.25
    warmup = min(50, args.n)

    with running_moto() as moto, running_mariadb() as db, workdir() as directory:
        log("moto identities, bucket, project schema")
        identities = make_identities(moto)
        s3 = moto_clients(moto, "s3")
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=BUCKET,
                             CreateBucketConfiguration={"LocationConstraint": REGION})  # fmt: skip
        from tests.support.stack_on_moto import create_project

        project = create_project(db, PROJECT)
        uri = db.url(project.user, project.password, project.schema)
        artifacts = f"s3://{BUCKET}/{PROJECT}"
        # The client's own AWS identity (the plugin signs with it; the proxy has its own env).
        os.environ.update(client_aws_env(moto, identities.allowed_role))
        log("starting the server without auth and the server with aws-iam")
        with (
            running_central_server(moto, uri, artifacts, PROJECT, directory, auth=False) as plain,
            running_central_server(moto, uri, artifacts, PROJECT, directory) as guarded,
            signing_proxy(db, project, moto, guarded, identities.allowed_role, directory) as (
                proxy_uri,
                proxy,
            ),
        ):
            targets = [
                Target("a", "(a) no auth", plain.tracking_uri, plain),
                Target("b", "(b) aws-iam, client plugin", guarded.tracking_uri, guarded, True),
                Target("c", "(c) aws-iam, helper proxy", proxy_uri, guarded, proxy_pid=proxy.pid),
            ]
            outputs = directory / "tutorial-outputs"
            outputs.mkdir()
            (outputs / "test.txt").write_text("hello world!")
            measure(targets, args.n, args.batches, args.reps, warmup, args.tutorial_runs, outputs)
            log(f"{args.big_gib:g} GiB artifact up and down through the proxy")
            big, intact = big_artifact_through_proxy(proxy_uri, proxy.pid, args.big_gib)
    log("everything stopped")

    a, b, c = (targets[0], targets[1], targets[2])
    rows = []
    for name, attr in (("one-by-one `log_metric`", "single"), ("`log_batch` of 1,000", "batch"),
                       ("tutorial runs (tracking.py)", "tutorial")):  # fmt: skip
        base, plugin, proxied = (median(getattr(t, attr)) for t in (a, b, c))
        target = TARGET_RATIO[attr]
        rows.append([
            name, rate(base), rate(plugin), rate(proxied),
            f"c/a ≥ {target:.0%}: {proxied / base:.1%} (b/a {plugin / base:.1%}, c/b "
            f"{proxied / plugin:.1%})",
            verdict(proxied / base >= target),
        ])  # fmt: skip
    limit = PROXY_RSS_GROWTH_LIMIT_MIB
    for transfer in big:
        rows.append([
            f"proxy RSS growth, {args.big_gib:g} GiB {transfer.direction}", "", "",
            f"+{transfer.growth_mib:.0f} MiB ({transfer.seconds:.0f} s, "
            + (f"FAILED: {transfer.failed[:60]})" if transfer.failed
               else f"{transfer.gib_per_s * 1024:.0f} MiB/s)"),
            f"≤ {limit:.0f} MiB", verdict(transfer.growth_mib <= limit and not transfer.failed),
        ])  # fmt: skip
    rows.append(["big artifact back byte-exact (sha256)", "", "", "yes" if intact else "NO",
                 "the same bytes", verdict(intact)])  # fmt: skip
    print(table(["figure", "(a) no auth", "(b) plugin", "(c) proxy", "target", ""], rows))
    print(
        f"\n{args.reps} repetitions of {args.n} log_metric and {args.batches} log_batch; medians."
        " Per repetition, one-by-one c/a: "
        + ", ".join(f"{x / y:.0%}" for x, y in zip(c.single, a.single, strict=True))
    )
    print(
        f"Per one-by-one call: (a) {1000 / median(a.single):.2f} ms, (b) "
        f"{1000 / median(b.single):.2f} ms, (c) {1000 / median(c.single):.2f} ms, of which "
        f"{median(c.proxy_cpu_ms):.2f} ms of proxy CPU; load average {load_average()}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
