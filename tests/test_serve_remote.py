"""``helper serve --remote`` as its user meets it (``helper.proxy.serve_remote``): what it prints
once the signing proxy is up, how it stops, and how it fails. The real command with the real
proxy in front of the recording upstream (``tests.support.proxy_harness``); only the AWS
identity is a stand-in (no AWS here). Fast: in ``./dev mutate helper/proxy.py``'s fast set."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mlflow_aws.auth.signer
from helper import checks
from helper.errors import HelperError
from helper.proxy import SigningProxy, serve_remote
from helper.supervise import StopRequested
from tests.support.proxy_harness import SIGNED, Upstreams, recording_upstream
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parent.parent


class StandInTokens:
    """mlflow_aws.auth.signer.TokenSource without AWS: every request signed with SIGNED."""

    def __init__(self, tracking_uri: str, region: str | None = None) -> None:
        self.tracking_uri = tracking_uri

    def token(self) -> str:
        return SIGNED


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstreams]:
    monkeypatch.setattr(mlflow_aws.auth.signer, "TokenSource", StandInTokens)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)  # the helper makes this run's
    with recording_upstream(poll_interval=0.05) as recording:
        yield recording


class Terminal(io.StringIO):
    """The user's terminal: once the command flushes what it printed (the proxy is up), the
    user does ``then`` with it, in the command's own thread (the proxy serves in its thread)."""

    def __init__(self, then: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.then = then

    def flush(self) -> None:
        super().flush()
        then, self.then = self.then, None
        if then is not None:
            then(self.getvalue())


def exported(printed: str) -> dict[str, str]:
    """The variables of the export line(s) the user pastes into their shell."""
    lines = [line.removeprefix("export ") for line in printed.splitlines()]
    return dict(word.split("=", 1) for line in lines for word in line.split() if "=" in word)


def use_then_stop(seen: list[tuple[int, bytes]]) -> Callable[[str], None]:
    """What a user does: a client request with the exported URI and token, then `kill` (SIGTERM
    raises StopRequested in the command's thread: here, where it would land)."""

    def then(printed: str) -> None:
        variables = exported(printed)
        uri, token = variables["MLFLOW_TRACKING_URI"], variables["MLFLOW_TRACKING_TOKEN"]
        request = urllib.request.Request(  # noqa: S310 (loopback)
            f"{uri}/api/2.0/mlflow/experiments/search", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            seen.append((response.status, response.read()))
        raise StopRequested("SIGTERM")

    return then


def test_it_prints_the_url_lines_signs_what_the_client_sends_and_stops_on_sigterm(
    upstream: Upstreams,
) -> None:
    port, seen = free_port(), list[tuple[int, bytes]]()
    local = f"http://127.0.0.1:{port}"
    out, err = Terminal(use_then_stop(seen)), io.StringIO()
    assert serve_remote(upstream.uri, port, "eu-west-1", out=out, err=err) == 0
    ui, export = out.getvalue().splitlines()  # without artifact settings: these only
    assert ui.startswith(f"MLflow UI (open this URL once; it signs your browser in): {local}/?")
    assert export.startswith(f"export MLFLOW_TRACKING_URI={local} MLFLOW_TRACKING_TOKEN=")
    assert seen == [(200, b'{"ok": true}')]
    check, proxied = upstream.requests
    assert check.path == "/proj/api/2.0/mlflow/experiments/search?max_results=1"
    assert proxied.path == "/proj/api/2.0/mlflow/experiments/search"
    assert proxied.headers["authorization"] == f"Bearer {SIGNED}"
    assert f"signing proxy to {upstream.uri} is up" in err.getvalue()
    assert err.getvalue().endswith("\nstopping the signing proxy...\n")
    checks.check_port_free(port)  # stopped: the port is free at once


@pytest.mark.parametrize("mode", ["presigned", "proxied"])
def test_it_prints_the_artifact_settings_for_the_clients_environment(
    upstream: Upstreams, mode: str
) -> None:
    from helper.artifacts import export_lines
    from mlflow_aws.artifact_settings import describe

    out, err = Terminal(use_then_stop([])), io.StringIO()
    why = "S3 (s3.eu-west-1.amazonaws.com:443) is reachable from here"
    assert serve_remote(upstream.uri, free_port(), "eu-west-1", out, err, (mode, why)) == 0
    assert out.getvalue().splitlines()[2:] == export_lines(mode)
    assert f"{describe(mode)}: {why}\n" in err.getvalue()


def test_a_proxy_that_stops_serving_by_itself_is_an_error_and_frees_the_port(
    upstream: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its serve loop failing (the listening socket broken) must not look like a clean stop."""
    failures: list[BaseException | None] = []

    def fails(self: SigningProxy) -> None:  # (called on every turn of the serve loop)
        raise OSError("the listening socket is broken")

    monkeypatch.setattr(SigningProxy, "service_actions", fails)
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    port = free_port()
    with pytest.raises(HelperError, match=r"^the signing proxy stopped unexpectedly$"):
        serve_remote(upstream.uri, port, "eu-west-1", out=io.StringIO(), err=io.StringIO())
    assert [str(f) for f in failures] == ["the listening socket is broken"]
    checks.check_port_free(port)


def test_a_tracking_uri_the_signer_refuses_is_a_helper_error_before_anything_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain http to another machine would send the token in the clear: the real TokenSource
    refuses it, and the user gets its reason as the helper's error, not a traceback."""
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    port, out = free_port(), io.StringIO()
    with pytest.raises(HelperError, match=r"^refusing to sign in over http: .* must be https://"):
        serve_remote("http://mlflow.example.com/churn", port, "eu-west-1", out, io.StringIO())
    assert out.getvalue() == "", "no URL with the run's secret for a proxy that never ran"
    checks.check_port_free(port)


SECOND_CTRL_C = """
import sys

import mlflow_aws.auth.signer
from helper import proxy


class Tokens:
    def __init__(self, tracking_uri, region=None):
        pass

    def token(self):
        return "stand-in"


def second_ctrl_c(self):  # the user presses Ctrl-C again as the stop begins
    raise KeyboardInterrupt


mlflow_aws.auth.signer.TokenSource = Tokens
proxy.SigningProxy.shutdown = second_ctrl_c
try:  # as helper.cli.main
    sys.exit(proxy.serve_remote(sys.argv[1], int(sys.argv[2]), "eu-west-1"))
except KeyboardInterrupt:
    sys.stderr.write("interrupted\\n")
    sys.exit(130)
"""


def test_a_second_ctrl_c_while_it_stops_still_ends_the_helpers_process(
    upstream: Upstreams,
) -> None:
    """Its cleanup cut short, nothing the proxy started (its serve loop, its slow-head watch)
    keeps the process alive, serving with the user's identity after they asked it to stop."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-B", "-c", SECOND_CTRL_C, upstream.uri, str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("MLflow UI"), "it came up"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.endswith("interrupted\n"), err
    checks.check_port_free(port)
