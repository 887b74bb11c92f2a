"""Real services for tests and benchmarks, started on free loopback ports and stopped after.

* ``MariaDB``: a throwaway ``mariadbd`` (Debian ``mariadb-server``) with its own data
  directory, TLS on and ``require_secure_transport=ON`` like Aurora, and an admin user
  that plays the cluster's master user.
* ``MotoServer``: moto's server standing in for S3, Secrets Manager, STS and ECR; by default
  ``tests/support/moto_ranged.py`` (moto whose ranged S3 GETs read only the range, as S3's).

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pymysql

ADMIN_USER = "mlflow_admin"
ADMIN_PASSWORD = "admin-Pw.0123456789abcdef"  # test-only; never used outside loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _which(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs]))
    if not found:
        raise RuntimeError(
            f"{name} not found: install Debian's mariadb-server (./dev test does it for you)"
        )
    return found


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # keep polling until the deadline
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:g}s (last error: {last!r})")


LOOPBACK_NAMES = "IP:127.0.0.1,DNS:localhost"


def _make_tls_files(directory: Path, names: str = LOOPBACK_NAMES) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``names`` (subjectAltName entries)."""
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName={names}\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj",
        "/CN=mlflow-aws test CA", "-keyout", str(ca_key), "-out", str(ca_pem))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "3", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return ca_pem, cert, key


class MariaDB:
    """A MariaDB server of our own on 127.0.0.1 (TLS required), like an Aurora cluster.

    ``tls=False`` makes one that offers no TLS at all, and ``cert_names`` one whose certificate
    names other hosts: both exist to prove that clients refuse them.
    """

    def __init__(
        self, base_dir: Path | None = None, tls: bool = True, cert_names: str = LOOPBACK_NAMES
    ) -> None:
        self.tls = tls
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="mlflow-aws-mariadb-"))
        self.datadir = self.base_dir / "data"
        self.socket = str(self.base_dir / "mysqld.sock")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_user = ADMIN_USER
        self.admin_password = ADMIN_PASSWORD
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / "mariadbd.log"
        self.ca_path, self._cert, self._key = _make_tls_files(self.base_dir, cert_names)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> MariaDB:
        first_start = not self.datadir.exists()
        if first_start:
            subprocess.run(
                [
                    _which("mariadb-install-db", "/usr/bin", "/usr/sbin"),
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                check=True,
                capture_output=True,
            )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                _which("mariadbd", "/usr/sbin"),
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                f"--socket={self.socket}",
                f"--pid-file={self.base_dir / 'mariadbd.pid'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                *(
                    [
                        f"--ssl-ca={self.ca_path}",
                        f"--ssl-cert={self._cert}",
                        f"--ssl-key={self._key}",
                        "--require-secure-transport=ON",
                    ]
                    if self.tls
                    else ["--skip-ssl"]
                ),
                "--character-set-server=utf8mb4",
                "--max-connections=500",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=2",  # test data: speed over durability
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_until(self._socket_ready, 30, f"mariadbd on port {self.port} (log {self.log_path})")
        if first_start:
            self._create_admin()
        return self

    def _socket_ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {self.log_path.read_text()[-2000:]}")
        with contextlib.closing(
            pymysql.connect(unix_socket=self.socket, user="root", connect_timeout=1)
        ):
            return True

    def _create_admin(self) -> None:
        # Aurora's master user: every privilege, grantable; reached over TCP with TLS.
        with contextlib.closing(pymysql.connect(unix_socket=self.socket, user="root")) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE USER %s@'%%' IDENTIFIED BY %s", (self.admin_user, self.admin_password)
                )
                cur.execute(
                    f"GRANT ALL PRIVILEGES ON *.* TO `{self.admin_user}`@'%' WITH GRANT OPTION"
                )
            conn.commit()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- clients ---------------------------------------------------------------------------
    @property
    def ssl(self) -> dict[str, Any]:
        return {"ca": str(self.ca_path)}

    def connect(
        self, user: str | None = None, password: str | None = None, database: str | None = None
    ) -> pymysql.connections.Connection[Any]:
        """A TLS connection over TCP, as clients of Aurora make them."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=user or self.admin_user,
            password=self.admin_password if password is None else password,
            database=database,
            ssl=self.ssl,
            connect_timeout=5,
            autocommit=True,
        )

    def url(self, user: str, password: str, database: str | None) -> str:
        """A SQLAlchemy URL (pymysql) with TLS verified against the test CA."""
        path = f"/{database}" if database else ""
        return (
            f"mysql+pymysql://{quote(user, safe='')}:{quote(password, safe='')}@"
            f"{self.host}:{self.port}{path}?ssl_ca={quote(str(self.ca_path))}"
        )

    def socket_query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """As root over the local socket: works whatever the server's TLS looks like."""
        conn = pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def query(
        self, sql: str, args: Any = None, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.connect(database=database)) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())


ROOT = Path(__file__).resolve().parents[2]  # where ``python -m tests.support...`` resolves
RANGED_MOTO = "tests.support.moto_ranged"  # ``moto.server`` but ranged GETs read the range only
STOCK_MOTO = "moto.server"


class MotoServer:
    """moto's server on loopback: S3, Secrets Manager, STS, ECR for the helper's AWS calls."""

    def __init__(self, module: str = RANGED_MOTO) -> None:
        self.module = module
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="mlflow-aws-moto-", suffix=".log")[1])

    def start(self) -> MotoServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        log.close()

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log_path.read_text()[-2000:]}")
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):  # noqa: S310
                return True

        _wait_until(ready, 30, f"moto server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def aws_env(self) -> dict[str, str]:
        """Environment that points boto3 (and MLflow's S3 client) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",  # moto accepts any credentials
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_REGION": "eu-west-1",
        }


@contextlib.contextmanager
def running_mariadb(tls: bool = True, cert_names: str = LOOPBACK_NAMES) -> Iterator[MariaDB]:
    server = MariaDB(tls=tls, cert_names=cert_names).start()
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def running_moto(module: str = RANGED_MOTO) -> Iterator[MotoServer]:
    server = MotoServer(module).start()
    try:
        yield server
    finally:
        server.stop()
