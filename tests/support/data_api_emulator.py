"""A small RDS Data API emulator on loopback, backed by a real MariaDB, for tests and benchmarks.

It speaks the ``rds-data`` REST-JSON protocol as boto3 sends it (POST ``/Execute``,
``/BeginTransaction``, ``/CommitTransaction``, ``/RollbackTransaction``), so the provider's
real boto3 client, with botocore's own validation and retries, runs unchanged against it:

* requests must carry a SigV4 ``Authorization`` for service ``rds-data`` and a JSON body whose
  members match botocore's service model (unknown members, missing required ones, wrong types
  and unions with other than one member are refused with ``BadRequestException``);
* ``secretArn`` is read from Secrets Manager (the moto server) as AWS does, and its
  ``username``/``password`` log in to MariaDB over TLS verified against the test CA;
* ``:name`` parameters are bound with server-side ``PREPARE``/``EXECUTE``, so a placeholder
  where MySQL accepts no parameter (``IDENTIFIED BY :pw``) fails here as it would there; a
  name used twice in one statement is refused (not confirmed to work on Aurora);
* results come back as ``records`` of ``Field`` unions; MySQL errors as
  ``DatabaseErrorException`` ("Database error code: N. Message: …"); a second statement in one
  call as ``ValidationException``; ``pause(seconds)`` answers ``DatabaseResumingException``
  until the cluster has "resumed".

Every request is recorded (operation and body, and the access key id that signed it) for the
tests to look at.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import json
import re
import secrets as random_tokens
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.session
import pymysql

from tests.support import json_api
from tests.support.services import MariaDB, MotoServer

REGION = "eu-west-1"
ACCOUNT = "123456789012"
CLUSTER_ARN = f"arn:aws:rds:{REGION}:{ACCOUNT}:cluster:mlflow-aws-test"
SECRET_CACHE_SECONDS = 5.0

_OPERATIONS = {
    "/Execute": "ExecuteStatement",
    "/BeginTransaction": "BeginTransaction",
    "/CommitTransaction": "CommitTransaction",
    "/RollbackTransaction": "RollbackTransaction",
}
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/\d{8}/"
    r"(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)/"
    r"aws4_request, SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}"
)
_MODEL = botocore.session.get_session().get_service_model("rds-data")


class ApiError(Exception):
    """An error answered the way the Data API answers it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        shape = _MODEL.shape_for(code) if code in _MODEL.shape_names else None
        error = shape.metadata.get("error", {}) if shape else {}
        self.status = int(error.get("httpStatusCode", 400))


# -- the model ----------------------------------------------------------------------------------


def validate(shape: Any, value: Any, path: str) -> None:
    """``value`` (decoded JSON) against a botocore shape, as AWS's front end would."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise ApiError("BadRequestException", f"{path} must be an object")
        unknown = set(value) - set(shape.members)
        if unknown:
            raise ApiError("BadRequestException", f"{path}: unknown member(s) {sorted(unknown)}")
        missing = [m for m in shape.required_members if m not in value]
        if missing:
            raise ApiError("BadRequestException", f"{path}: missing {missing}")
        if shape.is_tagged_union and len(value) != 1:
            raise ApiError("BadRequestException", f"{path}: a union needs exactly one member")
        for name, member in value.items():
            validate(shape.members[name], member, f"{path}.{name}")
    elif kind == "list":
        if not isinstance(value, list):
            raise ApiError("BadRequestException", f"{path} must be a list")
        for i, item in enumerate(value):
            validate(shape.member, item, f"{path}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            raise ApiError("BadRequestException", f"{path} must be a string")
        if shape.enum and value not in shape.enum:
            raise ApiError("BadRequestException", f"{path}: {value!r} not in {shape.enum}")
        limits = shape.metadata
        if "max" in limits and len(value) > limits["max"]:
            raise ApiError("BadRequestException", f"{path} is longer than {limits['max']}")
        if "min" in limits and len(value) < limits["min"]:
            raise ApiError("BadRequestException", f"{path} is shorter than {limits['min']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ApiError("BadRequestException", f"{path} must be a boolean")
    elif kind in ("long", "integer"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError("BadRequestException", f"{path} must be an integer")
    elif kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApiError("BadRequestException", f"{path} must be a number")
    elif kind == "blob" and not isinstance(value, str):
        raise ApiError("BadRequestException", f"{path} must be base64 text")


# -- SQL ----------------------------------------------------------------------------------------


def placeholders(sql: str) -> tuple[str, list[str], bool]:
    """``sql`` with each ``:name`` outside quotes made ``?``, the names in order, and whether
    a second statement follows a ``;``."""
    out, names, quote, i = [], [], "", 0
    more_statements = False
    while i < len(sql):
        ch = sql[i]
        if quote:
            out.append(ch)
            if ch == "\\" and quote != "`" and i + 1 < len(sql):
                out.append(sql[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
            out.append(ch)
        elif ch == ":" and re.match(r"[A-Za-z_]\w*", sql[i + 1 :]):
            name = re.match(r"[A-Za-z_]\w*", sql[i + 1 :]).group(0)  # type: ignore[union-attr]
            names.append(name)
            out.append("?")
            i += len(name)
        else:
            if ch == ";" and sql[i + 1 :].strip():
                more_statements = True
            out.append(ch)
        i += 1
    return "".join(out), names, more_statements


def field_of(value: Any) -> dict[str, Any]:
    """A MySQL value as the Data API returns it (dates and decimals as strings)."""
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (bytes, bytearray)):
        return {"blobValue": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return {"stringValue": value.strftime("%Y-%m-%d %H:%M:%S")}
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal)):
        return {"stringValue": str(value)}
    return {"stringValue": str(value)}


def value_of(field: dict[str, Any]) -> Any:
    if field.get("isNull"):
        return None
    if "blobValue" in field:
        return base64.b64decode(field["blobValue"])
    if "arrayValue" in field:
        raise ApiError("BadRequestException", "Array parameters are not supported.")
    (value,) = field.values()
    return value


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Transaction:
    conn: pymysql.connections.Connection[Any]


class DataApiEmulator:
    def __init__(self, mariadb: MariaDB, moto: MotoServer, cluster_arn: str = CLUSTER_ARN) -> None:
        self.mariadb = mariadb
        self.moto = moto
        self.cluster_arn = cluster_arn
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.access_keys: list[str] = []  # who signed each request (its access key id)
        self._resume_at = 0.0
        self._lock = threading.Lock()
        self._transactions: dict[str, Transaction] = {}
        self._idle: dict[tuple[str, str], list[pymysql.connections.Connection[Any]]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._secrets = boto3.client(
            "secretsmanager",
            endpoint_url=moto.endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> DataApiEmulator:
        self._server, self._thread = json_api.start(self._handle)
        return self

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return json_api.url(self._server)

    def stop(self) -> None:
        if self._server is not None:
            json_api.close(self._server)
            self._server = None
        with self._lock:
            conns = [t.conn for t in self._transactions.values()]
            conns += [c for idle in self._idle.values() for c in idle]
            self._transactions.clear()
            self._idle.clear()
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def pause(self, seconds: float) -> None:
        """Act like a paused Serverless v2 cluster that is back ``seconds`` from now."""
        self._resume_at = time.monotonic() + seconds

    def statements(self) -> list[str]:
        return [body["sql"] for op, body in self.requests if op == "ExecuteStatement"]

    # -- one request -------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = json_api.body(handler)
        try:
            operation = _OPERATIONS.get(handler.path)
            if operation is None:
                raise ApiError("BadRequestException", f"unknown operation path {handler.path}")
            auth = _SIGV4.fullmatch(handler.headers.get("Authorization", ""))
            if not auth or auth["service"] != "rds-data" or auth["region"] != REGION:
                raise ApiError("ForbiddenException", "missing or malformed SigV4 signature")
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                raise ApiError("BadRequestException", "the body is not JSON") from None
            validate(_MODEL.operation_model(operation).input_shape, body, operation)
            self.requests.append((operation, body))
            self.access_keys.append(auth["key"])
            answer = self._dispatch(operation, body)
            self._send(handler, 200, answer)
        except ApiError as exc:
            self._send(handler, exc.status, {"message": exc.message}, exc.code)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any], error: str = ""
    ) -> None:
        request_id = {"x-amzn-RequestId": random_tokens.token_hex(16)}
        json_api.reply(handler, status, body, "application/json", error, request_id)

    def _dispatch(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        if body["resourceArn"] != self.cluster_arn:
            raise ApiError("NotFoundException", f"DB cluster {body['resourceArn']} not found")
        credentials = self._credentials(body["secretArn"])
        if operation == "BeginTransaction":
            self._check_awake()
            conn = self._connect(credentials, autocommit=False)
            conn.begin()
            tid = base64.b64encode(random_tokens.token_bytes(48)).decode()
            with self._lock:
                self._transactions[tid] = Transaction(conn)
            return {"transactionId": tid}
        if operation in ("CommitTransaction", "RollbackTransaction"):
            with self._lock:
                tx = self._transactions.pop(body["transactionId"], None)
            if tx is None:
                raise ApiError("TransactionNotFoundException", "Transaction not found")
            with contextlib.closing(tx.conn):
                if operation == "CommitTransaction":
                    tx.conn.commit()
                    return {"transactionStatus": "Transaction Committed"}
                tx.conn.rollback()
                return {"transactionStatus": "Rollback Complete"}
        return self._execute(body, credentials)

    def _check_awake(self) -> None:
        if time.monotonic() < self._resume_at:
            raise ApiError(
                "DatabaseResumingException",
                "The Aurora DB instance db-EMULATED is resuming after being auto-paused. "
                "Please wait a few seconds and try again.",
            )

    def _credentials(self, secret_arn: str) -> tuple[str, str]:
        try:
            value = self._secrets.get_secret_value(SecretId=secret_arn)["SecretString"]
            data = json.loads(value)
            return str(data["username"]), str(data["password"])
        except (self._secrets.exceptions.ResourceNotFoundException, KeyError, ValueError):
            raise ApiError(
                "SecretsErrorException", "Secrets Manager can't find the specified secret."
            ) from None

    def _connect(
        self, credentials: tuple[str, str], autocommit: bool
    ) -> pymysql.connections.Connection[Any]:
        user, password = credentials
        try:
            return pymysql.connect(
                host=self.mariadb.host,
                port=self.mariadb.port,
                user=user,
                password=password,
                ssl={"ca": str(self.mariadb.ca_path)},
                connect_timeout=5,
                autocommit=autocommit,
                charset="utf8mb4",
            )
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            if code == 1045:
                message = "Access denied for the secret's user"
                raise ApiError("BadRequestException", message) from None
            raise ApiError("DatabaseUnavailableException", str(exc)) from None

    @contextlib.contextmanager
    def _pooled(
        self, credentials: tuple[str, str]
    ) -> Iterator[pymysql.connections.Connection[Any]]:
        with self._lock:
            idle = self._idle.setdefault(credentials, [])
            conn = idle.pop() if idle else None
        if conn is not None:
            try:
                conn.ping(reconnect=False)
            except pymysql.err.MySQLError:
                conn = None
        if conn is None:
            conn = self._connect(credentials, autocommit=True)
        try:
            yield conn
        except Exception:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        with self._lock:
            self._idle.setdefault(credentials, []).append(conn)

    def _execute(self, body: dict[str, Any], credentials: tuple[str, str]) -> dict[str, Any]:
        sql, names, more = placeholders(body["sql"])
        if more:
            raise ApiError("ValidationException", "Multistatements aren't supported.")
        reused = sorted({n for n in names if names.count(n) > 1})
        if reused:
            # Whether Aurora's Data API binds one named parameter at several places is not
            # documented (SqlParameter) and not confirmed; the provider must not rely on it.
            raise ApiError(
                "BadRequestException", f"parameter(s) {reused} used more than once in one statement"
            )
        params = {p["name"]: value_of(p["value"]) for p in body.get("parameters", [])}
        unbound = [n for n in names if n not in params]
        if unbound:
            raise ApiError("BadRequestException", f"no value for parameter(s) {unbound}")
        tid = body.get("transactionId")
        if tid is not None:
            with self._lock:
                tx = self._transactions.get(tid)
            if tx is None:
                raise ApiError("TransactionNotFoundException", "Transaction not found")
            return self._run(tx.conn, sql, [params[n] for n in names], body)
        self._check_awake()
        with self._pooled(credentials) as conn:
            return self._run(conn, sql, [params[n] for n in names], body)

    @staticmethod
    def _run(
        conn: pymysql.connections.Connection[Any], sql: str, values: list[Any], body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            with conn.cursor() as cur:
                if values:  # bound by the server, as a prepared statement
                    cur.execute("PREPARE emulated FROM %s", (sql,))
                    for i, value in enumerate(values):
                        cur.execute(f"SET @p{i} = %s", (value,))
                    using = ", ".join(f"@p{i}" for i in range(len(values)))
                    cur.execute(f"EXECUTE emulated USING {using}")
                else:
                    cur.execute(sql.replace("%", "%%"), ())
                rows = cur.fetchall() if cur.description else ()
                description = cur.description
                updated = cur.rowcount if not description else 0
                if values:
                    cur.execute("DEALLOCATE PREPARE emulated")
        except pymysql.err.MySQLError as exc:
            code, message = (*exc.args, 0, "")[:2]
            raise ApiError(
                "DatabaseErrorException", f"Database error code: {code}. Message: {message}"
            ) from None
        answer: dict[str, Any] = {"numberOfRecordsUpdated": max(int(updated), 0)}
        if description:
            answer["records"] = [[field_of(v) for v in row] for row in rows]
            if body.get("includeResultMetadata"):
                answer["columnMetadata"] = [
                    {"name": d[0], "label": d[0], "nullable": int(bool(d[6]))} for d in description
                ]
        return answer


def provider_environment(emulator: DataApiEmulator) -> dict[str, str]:
    """The environment of a ``pulumi.dynamic`` provider server (as ``pulumi up`` would start
    it) whose boto3 reaches this emulator: the machine's AWS settings left out."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PULUMI_"))}
    return {
        **base,
        "AWS_ENDPOINT_URL_RDS_DATA": emulator.endpoint_url,
        "AWS_ACCESS_KEY_ID": "AKIADEPLOYER",
        "AWS_SECRET_ACCESS_KEY": "deployer-secret-key",
        "AWS_REGION": REGION,
        # Not the config file of whoever runs the tests.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@contextlib.contextmanager
def running_data_api(mariadb: MariaDB, moto: MotoServer) -> Iterator[DataApiEmulator]:
    emulator = DataApiEmulator(mariadb, moto).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def admin_secret(moto: MotoServer, mariadb: MariaDB, name: str = "mlflow-aws/test/admin") -> str:
    """The admin secret as the program writes it (infra/database.py); its ARN."""
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto.endpoint_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    value = json.dumps(
        {
            "engine": "mysql",
            "host": mariadb.host,
            "port": mariadb.port,
            "username": mariadb.admin_user,
            "password": mariadb.admin_password,
            "dbClusterIdentifier": "mlflow-aws-test",
        }
    )
    try:
        return str(client.create_secret(Name=name, SecretString=value)["ARN"])
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=name, SecretString=value)
        return str(client.describe_secret(SecretId=name)["ARN"])
