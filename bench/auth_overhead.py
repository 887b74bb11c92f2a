"""What signing in with AWS identities costs: the same tuned MLflow server (a) without auth,
(b) with the aws-iam app and the client plugin, (c) with the aws-iam app behind the helper's
signing proxy (``python -m helper serve --remote``), measured side by side in one run on
MariaDB (TLS) and moto (S3, STS, IAM); then a multi-GB artifact up and down through the proxy.

    .venv/bin/python bench/auth_overhead.py            # full figures (~8 min)
    .venv/bin/python bench/auth_overhead.py --quick    # small counts, to check it works

Workload per target: one run, a warm-up (the identity cache is then warm: tokens are reused
for 5 min and the server caches a verified one until it expires), then per block ``--n``
one-by-one ``log_metric`` calls, ``--batches`` ``log_batch`` calls of 1,000 metrics and
``--tutorial-runs`` runs of the tutorial's tracking.py workload (bench/prefix_throughput.py's:
a run, a param, three metrics, an artifact).
The ``--blocks`` (12) blocks interleave the targets: within a block each workload runs for a, b
and c in turns, ``--slices`` (5) turns each (a, b, c, a, b, c, ...: 60 calls a turn by default),
in an order that changes per block (abc, bca, cab, acb, cba, bac, so each target goes first,
second and last equally often and each pair is measured both ways round); the server not being
measured is frozen. c/a and b/a are computed per block (paired: turns a second or two apart,
so a slow spell of the shared machine hits both) and the verdict is on the median of those
paired ratios; their interquartile range, a per-block table and the load average during the
blocks are printed beside it.

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
import statistics
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
from tests.support.processes import (
    cpu_seconds,
    interrupt,
    load_average,
    reset_peak_rss,
    status_kib,
)
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
    client: Any = None
    run_id: str = ""
    proxy_pid: int | None = None


@dataclass
class Block:
    """One block: every workload run once per target, in ``order``."""

    order: str  # e.g. "bca"
    load: float  # 1-minute load average as the block started
    # workload ("single", "batch", "tutorial") -> target key -> rate (metrics/s or runs/s)
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    proxy_cpu_ms: float = float("nan")  # the proxy's CPU per one-by-one call in (c)

    def ratio(self, workload: str, over: str, under: str = "a") -> float:
        return self.rates[workload][over] / self.rates[workload][under]


WORKLOADS = ("single", "batch", "tutorial")
# Block k runs its workloads in ORDERS[k % 6]: rotations, then the reversed rotations, so over
# 6 blocks each target is first, second and last twice and each pair goes both ways round.
ORDERS = ("abc", "bca", "cab", "acb", "cba", "bac")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); linear interpolation between the values."""
    if len(values) < 2:
        only = values[0] if values else float("nan")
        return only, only, only
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def spread(values: list[float]) -> str:
    """``107.8% (IQR 98-115%)``: the median and interquartile range of ratios."""
    q1, q2, q3 = quartiles(values)
    return f"{q2:.1%} (IQR {q1 * 100:.0f}-{q3 * 100:.0f}%)"


def against(values: list[float], target: float) -> str:
    """Where the interquartile range lies against the target (how far to trust the median)."""
    q1, _, q3 = quartiles(values)
    if q1 >= target:
        return "IQR above it"
    if q3 < target:
        return "IQR below it"
    return "IQR straddles it"


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
        interrupt(process)


def one_load() -> float:
    return float(load_average().split()[0])


def sliced(count: int, slices: int) -> list[int]:
    """``count`` split into ``slices`` parts as even as can be (none empty)."""
    parts = max(1, min(slices, count))
    size, extra = divmod(count, parts)
    return [size + (i < extra) for i in range(parts)]


def measure(
    targets: list[Target], n: int, batches: int, blocks: int, slices: int, warmup: int,
    tutorials: int, artifacts: Path,
) -> list[Block]:  # fmt: skip
    """Per block and workload, the targets take turns in the block's order, ``slices`` turns
    each (a, b, c, a, b, c, ...); a target's rate is its calls over its seconds in the block."""
    from bench.prefix_throughput import tutorial_runs

    for target in targets:
        with plugin_enabled(target.plugin):
            target.client, target.run_id = new_run(target.tracking_uri, f"bench-{target.key}")
            log(f"  warm-up {target.label}")
            log_one_by_one(target.client, target.run_id, warmup, key="warmup")
            log_batches(target.client, target.run_id, 1, first_step=10_000_000)
            tutorial_runs(target.tracking_uri, 1, artifacts)
    by_key = {t.key: t for t in targets}
    servers = {id(t.server): t.server for t in targets}
    counts = {"single": n, "batch": batches, "tutorial": tutorials}
    done = []
    for number in range(blocks):
        block = Block(ORDERS[number % len(ORDERS)], one_load())
        log(f"  block {number + 1}/{blocks}: order {block.order}, load {block.load:.2f}")
        proxy_cpu = 0.0
        for workload in WORKLOADS:
            seconds = dict.fromkeys(block.order, 0.0)
            offset = number * counts[workload]  # unique steps across blocks and turns
            for count in sliced(counts[workload], slices):
                for key in block.order:
                    target = by_key[key]
                    others = [s for sid, s in servers.items() if sid != id(target.server)]
                    with frozen(others), plugin_enabled(target.plugin):
                        if workload == "single":
                            proxy = [target.proxy_pid] if target.proxy_pid else []
                            cpu = cpu_seconds(proxy)
                            got = log_one_by_one(target.client, target.run_id, count,
                                                 first_step=offset)  # fmt: skip
                            if proxy:
                                proxy_cpu += cpu_seconds(proxy) - cpu
                        elif workload == "batch":
                            got = log_batches(target.client, target.run_id, count,
                                              first_step=offset * 1000) / 1000  # fmt: skip
                        else:
                            got = tutorial_runs(target.tracking_uri, count, artifacts)
                    seconds[key] += count / got
                offset += count
            per = 1000 if workload == "batch" else 1  # log_batch: metrics/s
            block.rates[workload] = {k: counts[workload] * per / t for k, t in seconds.items()}
        block.proxy_cpu_ms = proxy_cpu / n * 1000
        log(
            f"    one-by-one c/a {block.ratio('single', 'c'):.0%}, b/a "
            f"{block.ratio('single', 'b'):.0%}; batches c/a {block.ratio('batch', 'c'):.0%};"
            f" tutorial c/a {block.ratio('tutorial', 'c'):.0%}"
        )
        done.append(block)
    return done


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
    parser.add_argument("--blocks", "--reps", type=int, default=12, dest="blocks",
                        help="blocks of a, b, c (order rotated per block)")  # fmt: skip
    parser.add_argument("--slices", type=int, default=5,
                        help="turns per target and workload within a block")  # fmt: skip
    parser.add_argument("--big-gib", type=float, default=2.0, help="the artifact through the proxy")
    parser.add_argument("--quick", action="store_true", help="small counts, to check it works")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batches, args.blocks, args.tutorial_runs, args.big_gib = 30, 2, 3, 2, 0.25
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
            started_load = load_average()
            blocks = measure(
                targets, args.n, args.batches, args.blocks, args.slices, warmup,
                args.tutorial_runs, outputs,
            )  # fmt: skip
            ended_load = load_average()
            log(f"{args.big_gib:g} GiB artifact up and down through the proxy")
            big, intact = big_artifact_through_proxy(proxy_uri, proxy.pid, args.big_gib)
    log("everything stopped")

    rows = []
    for name, workload in (("one-by-one `log_metric`", "single"),
                           ("`log_batch` of 1,000", "batch"),
                           ("tutorial runs (tracking.py)", "tutorial")):  # fmt: skip
        rates = {key: median([k.rates[workload][key] for k in blocks]) for key in "abc"}
        over_a = {key: [k.ratio(workload, key) for k in blocks] for key in "bc"}
        target = TARGET_RATIO[workload]
        rows.append([
            name, rate(rates["a"]), f"{rate(rates['b'])}; b/a {spread(over_a['b'])}",
            f"{rate(rates['c'])}; c/a {spread(over_a['c'])}",
            f"c/a ≥ {target:.0%} ({against(over_a['c'], target)})",
            verdict(median(over_a["c"]) >= target),
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
    loads = [k.load for k in blocks]
    print(
        f"\n{len(blocks)} blocks of {args.n} log_metric, {args.batches} log_batch and "
        f"{args.tutorial_runs} tutorial runs per target, each workload in {args.slices} turns "
        "per target (a, b, c, a, b, c, ... in the block's order); rates are medians over the "
        "blocks, "
        "ratios the median (IQR) of the per-block ratios, paired within a block; the verdict is "
        "on that median. Load average (1 min) as the blocks started: "
        f"{min(loads):.2f}-{max(loads):.2f} (median {median(loads):.2f}); "
        f"{started_load} before the first, {ended_load} after the last (1, 5, 15 min)."
    )
    one_by_one = {key: median([k.rates["single"][key] for k in blocks]) for key in "abc"}
    cpu = [k.proxy_cpu_ms for k in blocks]
    q1, q2, q3 = quartiles(cpu)
    print(
        f"Per one-by-one call (medians): (a) {1000 / one_by_one['a']:.2f} ms, (b) "
        f"{1000 / one_by_one['b']:.2f} ms, (c) {1000 / one_by_one['c']:.2f} ms, of which "
        f"{q2:.2f} ms (IQR {q1:.2f}-{q3:.2f}) of proxy CPU; c/b (the proxy's hop on the same "
        f"server) {spread([k.ratio('single', 'c', 'b') for k in blocks])}."
    )
    print("\nPer block (paired ratios):\n")
    print(table(
        ["block", "order", "load (1 min)", "one-by-one c/a", "b/a", "batches c/a", "b/a",
         "tutorial c/a", "b/a", "proxy CPU per call"],
        [[str(number), k.order, f"{k.load:.2f}",
          *(f"{k.ratio(w, key):.0%}" for w in WORKLOADS for key in "cb"),
          f"{k.proxy_cpu_ms:.2f} ms"] for number, k in enumerate(blocks, 1)],
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        raise SystemExit(main())
