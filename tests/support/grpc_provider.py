"""Drive the Pulumi SDK's dynamic provider server over gRPC, as the engine does.

``ProviderServer`` starts ``python -u -m pulumi.dynamic`` (cwd = repo root, so the pickled
provider's module imports), reads the port it prints, and returns a ``ProviderClient`` whose
methods send Configure/Check/Diff/Create/Read/Update/Delete requests with protobuf Structs
built the way the engine builds them: ``__provider`` holds the provider serialized by the
SDK's own ``serialize_provider``, numbers travel as floats, secrets are wrapped in the secret
signature or sent plain (what the engine really sends: the server answers Configure with
``acceptSecrets: false``, so the engine strips secret markers; ``__provider`` is always plain)
and unknowns are the unknown sentinel.
"""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from pulumi.dynamic.dynamic import ResourceProvider, serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SECRET_SIG_KEY = rpc._special_sig_key  # "4dabf18193072939515e22adb298388d"
SECRET_SIG = rpc._special_secret_sig  # "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = rpc.UNKNOWN
PROVIDER_KEY = "__provider"
TYPE = "pulumi-python:dynamic/mysql:Schema"


def secret(value: Any) -> dict[str, Any]:
    """A value wrapped the way the engine marks a secret on the wire."""
    return {SECRET_SIG_KEY: SECRET_SIG, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def plain(value: Any) -> Any:
    return value["value"] if is_secret(value) else value


def to_struct(props: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(props)  # ints become number_value (double), as on the engine's wire
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return dict(json_format.MessageToDict(struct))


class ProviderCallError(Exception):
    """A gRPC call the provider server aborted; ``details`` is the provider's traceback."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method} failed ({code.name}): {details}")
        self.method = method
        self.code = code
        self.details = details


@dataclass
class DiffOutcome:
    changes: str  # DIFF_UNKNOWN / DIFF_NONE / DIFF_SOME
    replaces: list[str]
    delete_before_replace: bool


class ProviderClient:
    def __init__(
        self,
        stub: provider_pb2_grpc.ResourceProviderStub,
        provider: ResourceProvider,
        wrap_secrets: bool = True,
    ) -> None:
        self.stub = stub
        self.serialized = serialize_provider(provider)
        self.wrap_secrets = wrap_secrets
        self.timeout = 120.0

    def urn(self, name: str) -> str:
        return f"urn:pulumi:test::mlflow-aws::{TYPE}::{name}"

    def _props(self, props: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in props.items():
            out[key] = value if self.wrap_secrets else plain(value)
        # The SDK registers ``__provider`` as a secret, but the server answers Configure with
        # acceptSecrets=false, so the engine strips the secret marker before sending it: the
        # server uses the string as a cache key and fails with "unhashable type: 'dict'" on a
        # wrapped one. So ``__provider`` always travels plain.
        out[PROVIDER_KEY] = plain(out.get(PROVIDER_KEY, self.serialized))
        return out

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ProviderCallError(method, exc.code(), exc.details() or "") from None

    def configure(self, config: dict[str, Any] | None = None) -> provider_pb2.ConfigureResponse:
        return self._call(
            "Configure",
            provider_pb2.ConfigureRequest(
                args=to_struct(config or {}), acceptSecrets=True, acceptResources=True
            ),
        )

    def check(
        self, news: dict[str, Any], olds: dict[str, Any] | None = None, name: str = "schema"
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        response = self._call(
            "Check",
            provider_pb2.CheckRequest(
                urn=self.urn(name),
                olds=to_struct(self._props(olds) if olds else {}),
                news=to_struct(self._props(news)),
                name=name,
                type=TYPE,
            ),
        )
        return from_struct(response.inputs), [(f.property, f.reason) for f in response.failures]

    def create(self, props: dict[str, Any], name: str = "schema") -> tuple[str, dict[str, Any]]:
        response = self._call(
            "Create",
            provider_pb2.CreateRequest(
                urn=self.urn(name),
                properties=to_struct(self._props(props)),
                timeout=self.timeout,
                name=name,
                type=TYPE,
            ),
        )
        return response.id, from_struct(response.properties)

    def read(
        self, id_: str, props: dict[str, Any], name: str = "schema"
    ) -> tuple[str, dict[str, Any]]:
        response = self._call(
            "Read",
            provider_pb2.ReadRequest(
                id=id_,
                urn=self.urn(name),
                properties=to_struct(self._props(props)),
                name=name,
                type=TYPE,
            ),
        )
        return response.id, from_struct(response.properties)

    def diff(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any], name: str = "schema"
    ) -> DiffOutcome:
        response = self._call(
            "Diff",
            provider_pb2.DiffRequest(
                id=id_,
                urn=self.urn(name),
                olds=to_struct(self._props(olds)),
                news=to_struct(self._props(news)),
                name=name,
                type=TYPE,
            ),
        )
        return DiffOutcome(
            changes=provider_pb2.DiffResponse.DiffChanges.Name(response.changes),
            replaces=list(response.replaces),
            delete_before_replace=response.deleteBeforeReplace,
        )

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any], name: str = "schema"
    ) -> dict[str, Any]:
        response = self._call(
            "Update",
            provider_pb2.UpdateRequest(
                id=id_,
                urn=self.urn(name),
                olds=to_struct(self._props(olds)),
                news=to_struct(self._props(news)),
                timeout=self.timeout,
                name=name,
                type=TYPE,
            ),
        )
        return from_struct(response.properties)

    def delete(self, id_: str, props: dict[str, Any], name: str = "schema") -> None:
        self._call(
            "Delete",
            provider_pb2.DeleteRequest(
                id=id_,
                urn=self.urn(name),
                properties=to_struct(self._props(props)),
                timeout=self.timeout,
                name=name,
                type=TYPE,
            ),
        )


class ProviderServer:
    """``python -u -m pulumi.dynamic`` on a loopback port, started like the engine starts it."""

    def __init__(self, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.env = env  # None: this process's environment
        self.stderr_path = Path(tempfile.mkstemp(prefix="mlflow-aws-dynamic-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.port = 0

    def start(self, timeout: float = 30.0) -> ProviderServer:
        with self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-m", "pulumi.dynamic"],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"pulumi.dynamic did not print its port: {self.stderr_path.read_text()[-2000:]}"
                )
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line += self.process.stdout.read1(64)  # type: ignore[attr-defined]
        self.port = int(line.strip())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        return self

    def client(self, provider: ResourceProvider, wrap_secrets: bool = True) -> ProviderClient:
        assert self.channel is not None
        client = ProviderClient(
            provider_pb2_grpc.ResourceProviderStub(self.channel), provider, wrap_secrets
        )
        client.configure({})
        return client

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        self.stderr_path.unlink(missing_ok=True)


@contextmanager
def provider_server(env: dict[str, str] | None = None) -> Iterator[ProviderServer]:
    server = ProviderServer(env=env).start()
    try:
        yield server
    finally:
        server.cleanup()
