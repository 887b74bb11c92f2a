"""How the MySQL schema provider scales: create and delete 10, 50 and 200 projects.

    .venv/bin/python bench/provider_scale.py [--sizes 10,50,200] [--parallel 8]

Starts its own MariaDB (tests/support/services.py: TLS required, like Aurora), a moto server holding
the admin secret, the RDS Data API emulator in front of the MariaDB
(tests/support/data_api_emulator.py;
the provider's SQL goes through it as it goes through AWS's Data API, one HTTPS call per
statement, here plain HTTP on loopback) and the SDK's provider server (``python -u -m
pulumi.dynamic``, as the engine starts it), then for each size:

* ``grpc``          Check + Create per project over gRPC, one at a time, then Delete each;
* ``grpc-parallel`` the same with N concurrent calls (the engine runs up to ``--parallel``
                    steps at once; the SDK server has 4 worker threads);
* ``direct``        the provider's methods called in-process (no gRPC, no (de)serialisation),
                    to show what the provider server itself costs.

Deletes use the default (keep the data: DROP USER only); the schemas left behind are dropped
between runs, untimed. Prints total and per-project times and the growth of the per-project
time relative to the smallest size (1.0 = linear scaling).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from projects.schema_provider import MysqlSchemaProvider  # noqa: E402
from tests.support.data_api_emulator import (  # noqa: E402
    CLUSTER_ARN,
    admin_secret,
    provider_environment,
    running_data_api,
)
from tests.support.grpc_provider import ProviderClient, provider_server, secret  # noqa: E402
from tests.support.services import MariaDB, running_mariadb, running_moto  # noqa: E402


def news(admin_arn: str, project: str) -> dict[str, Any]:
    return {
        "project": project,
        "password": secret(f"pw-{project}-Bench.1"),
        "cluster_arn": CLUSTER_ARN,
        "admin_secret_arn": admin_arn,
    }


@contextlib.contextmanager
def services() -> Iterator[tuple[MariaDB, str, dict[str, ProviderClient]]]:
    """MariaDB, moto, the Data API emulator and a provider server reaching it; all stopped
    on exit. Yields the database, the admin secret's ARN and a gRPC client."""
    with running_mariadb() as db, running_moto() as moto, running_data_api(db, moto) as api:
        arn = admin_secret(moto, db)
        env = provider_environment(api)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # "direct"
        with provider_server(env) as server:
            yield db, arn, {"grpc": server.client(MysqlSchemaProvider(), wrap_secrets=False)}


class Grpc:
    def __init__(self, client: ProviderClient) -> None:
        self.client = client

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        inputs, failures = self.client.check(props)
        assert not failures, failures
        return self.client.create(inputs)

    def delete(self, id_: str, outs: dict[str, Any]) -> None:
        self.client.delete(id_, outs)


class Direct:
    """The provider's methods in-process, with the values the server would hand them."""

    def __init__(self) -> None:
        self.provider = MysqlSchemaProvider()

    def create(self, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        result = self.provider.check({}, props)
        assert not result.failures
        created = self.provider.create(result.inputs)
        return created.id, created.outs or {}

    def delete(self, id_: str, outs: dict[str, Any]) -> None:
        self.provider.delete(id_, outs)


def timed_run(
    db: MariaDB,
    admin_arn: str,
    mode: str,
    n: int,
    create: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]],
    delete: Callable[[str, dict[str, Any]], None],
    parallel: int,
) -> tuple[float, float]:
    names = [f"b{mode[0]}{'p' if 'parallel' in mode else ''}{n}-{i}" for i in range(n)]
    workers = parallel if "parallel" in mode else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = time.perf_counter()
        made = list(pool.map(lambda name: create(news(admin_arn, name)), names))
        create_s = time.perf_counter() - started
        started = time.perf_counter()
        list(pool.map(lambda r: delete(r[0], r[1]), made))
        delete_s = time.perf_counter() - started
    # checks (untimed): every user gone, every schema kept; then clean up for the next run
    schemas = {name.replace("-", "_") for name in names}
    left = {r[0] for r in db.query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")}
    users = {r[0] for r in db.query("SELECT User FROM mysql.user")}
    assert schemas <= left, "a delete dropped data"
    assert not {f"mlflow_{s}" for s in schemas} & users, "a delete left a user"
    for schema in schemas:
        db.query(f"DROP SCHEMA `{schema}`")
    return create_s, delete_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    rows: list[tuple[str, int, float, float]] = []
    with services() as (db, arn, clients):
        modes: dict[str, Any] = {
            "grpc": Grpc(clients["grpc"]),
            "grpc-parallel": Grpc(clients["grpc"]),
            "direct": Direct(),
        }
        # warm up each path once (imports, boto3 client, provider unpickling), untimed
        for mode, impl in modes.items():
            with contextlib.suppress(Exception):
                timed_run(db, arn, f"w{mode}", 1, impl.create, impl.delete, args.parallel)
        for mode, impl in modes.items():
            for n in sizes:
                create_s, delete_s = timed_run(
                    db, arn, mode, n, impl.create, impl.delete, args.parallel
                )
                rows.append((mode, n, create_s, delete_s))
                print(f"  {mode:<14} n={n:<4} create {create_s:7.2f}s  delete {delete_s:7.2f}s",
                      file=sys.stderr, flush=True)  # fmt: skip

    header = (
        f"{'mode':<14} {'projects':>8} {'create s':>9} {'ms/proj':>8} {'growth':>7} "
        f"{'delete s':>9} {'ms/proj':>8} {'growth':>7}"
    )
    print(
        "\nMySQL schema provider scale (RDS Data API emulator -> MariaDB on loopback, TLS; "
        f"parallel={args.parallel})"
    )
    print(header)
    print("-" * len(header))
    base: dict[str, tuple[float, float]] = {}
    for mode, n, create_s, delete_s in rows:
        per_c, per_d = create_s / n * 1000, delete_s / n * 1000
        base.setdefault(mode, (per_c, per_d))
        print(
            f"{mode:<14} {n:>8} {create_s:>9.2f} {per_c:>8.1f} {per_c / base[mode][0]:>7.2f} "
            f"{delete_s:>9.2f} {per_d:>8.1f} {per_d / base[mode][1]:>7.2f}"
        )
    by = {(m, n): (c, d) for m, n, c, d in rows}
    print("\nprovider-server overhead (grpc ÷ direct, per project):")
    for n in sizes:
        g, d = by[("grpc", n)], by[("direct", n)]
        print(f"  n={n:<4} create x{g[0] / d[0]:.2f}  delete x{g[1] / d[1]:.2f}")
    print("growth = ms/project at this size ÷ ms/project at the smallest size (1.0 = linear).")


if __name__ == "__main__":
    from bench.common import nothing_left_behind

    with nothing_left_behind():
        main()
