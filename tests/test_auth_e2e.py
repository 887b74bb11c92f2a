"""Sign-in with AWS identities, for real: ``mlflow server --app-name aws-iam`` (MariaDB with TLS,
moto S3) verifying tokens against moto's STS and IAM; the helper's signing proxy and the client
plugin in front of it; the tutorial's tracking.py unmodified through both.

Route families and the decision on public paths: only ``<prefix>/health`` answers without a
token (load balancer checks). The REST API, the artifact routes (Flask's and the native
streaming ones), OTel, gateway, jobs, GraphQL, ``/version`` and the UI with its assets all need
one: the UI is only useful with the API behind it, and teammates reach it through the proxy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from mlflow_aws.auth.token import (
    AUDIENCE_HEADER,
    CONTENT_TYPE,
    STS_BODY,
    TOKEN_PREFIX,
    make_token,
)
from tests.support.browser import chromium_driver
from tests.support.central import (
    ACCOUNT,
    BUCKET,
    PROJECT,
    REGION,
    SSO_IMPOSTOR_ROLE,
    CentralServer,
    Credentials,
    Identities,
    bearer,
    clean_env,
    client_aws_env,
    get,
    make_identities,
    outputs_with_tracking_uri,
    running_central_server,
    sts_url,
    token_for,
)
from tests.support.helper_run import TRACKING_SCRIPT, RunningHelper, serving, stop_helper
from tests.support.processes import exists, status_kib
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import Project, aws_client, create_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> None:
    s3 = aws_client("s3", moto.aws_env())
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})


@pytest.fixture(scope="module")
def identities(moto: MotoServer) -> Identities:
    return make_identities(moto)


@pytest.fixture(scope="module")
def project(mariadb: MariaDB) -> Project:
    return create_project(mariadb, PROJECT)


@pytest.fixture(scope="module")
def central(
    moto: MotoServer, bucket: None, project: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CentralServer]:
    log_dir = tmp_path_factory.mktemp("central")
    uri = project.mariadb.url(project.user, project.password, project.schema)
    with running_central_server(moto, uri, f"s3://{BUCKET}/{PROJECT}", PROJECT, log_dir) as server:
        yield server
    assert not [pid for pid in server.pids() if exists(pid)]


def search(central: CentralServer, headers: dict[str, str]) -> tuple[int, str]:
    status, body = get(f"{central.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=5",
                       headers)  # fmt: skip
    return status, body.decode(errors="replace")


def run_tracking_script(env: dict[str, str], work_dir: Path) -> None:
    """The tutorial's tracking.py, unmodified, with the given environment only."""
    import shutil

    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(TRACKING_SCRIPT, work_dir / "tracking.py")
    env = {"PATH": os.environ["PATH"], "HOME": str(work_dir), **env}
    result = subprocess.run(
        [sys.executable, "tracking.py"], cwd=work_dir, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]


def runs_of(project: Project) -> set[str]:
    return {run_id for (run_id,) in project.query("SELECT run_uuid FROM runs")}


def check_tutorial_run(project: Project, run_id: str, moto: MotoServer) -> None:
    assert project.query("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)) == [
        ("FINISHED",)
    ]
    [(key, value)] = project.query("SELECT `key`, value FROM params WHERE run_uuid = %s", (run_id,))
    assert key == "param1" and 0 <= int(value) <= 100
    values = project.query(
        "SELECT value FROM metrics WHERE run_uuid = %s AND `key` = 'foo' ORDER BY step, timestamp",
        (run_id,),
    )
    assert [int(v) for (v,) in values] == [0, 1, 2]
    s3 = aws_client("s3", moto.aws_env())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PROJECT}/")["Contents"]]
    [artifact] = [k for k in keys if k.endswith(f"/{run_id}/artifacts/test.txt")]
    assert s3.get_object(Bucket=BUCKET, Key=artifact)["Body"].read() == b"hello world!"


@contextlib.contextmanager
def remote_helper(
    mariadb: MariaDB, project: Project, central: CentralServer, moto: MotoServer,
    credentials: Credentials, tmp_path: Path,
) -> Iterator[tuple[str, RunningHelper]]:  # fmt: skip
    """``python -m helper serve --project P --outputs F --remote`` as the given identity."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, central.tracking_uri))
    port = free_port()
    env = clean_env(**client_aws_env(moto, credentials), PYTHONUNBUFFERED="1")
    argv = ["serve", "--project", project.name, "--outputs", str(outputs), "--remote"]
    with serving([*argv, "--port", str(port)], env, tmp_path, port) as running:
        yield f"http://127.0.0.1:{port}", running


# -- the flow --------------------------------------------------------------------------------------


def test_tutorial_script_through_the_helper_proxy(
    mariadb: MariaDB, project: Project, central: CentralServer, moto: MotoServer,
    identities: Identities, tmp_path: Path,
) -> None:  # fmt: skip
    from mlflow import MlflowClient

    before = runs_of(project)
    with remote_helper(mariadb, project, central, moto, identities.allowed_role, tmp_path) as (
        uri,
        running,
    ):
        # Nothing but the export line (the local URL and the run's secret): no AWS settings, no
        # auth plugin in the script's environment.
        run_tracking_script(
            {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_TOKEN": running.secret}, tmp_path / "work"
        )
        [run_id] = runs_of(project) - before
        # ... and the artifact back down, through the proxy and the server's streaming route.
        client = MlflowClient(tracking_uri=uri)
        downloaded = client.download_artifacts(run_id, "test.txt", str(tmp_path))
        assert Path(downloaded).read_text() == "hello world!"
        assert "proxy:" not in running.stderr()  # no refusal, no failure, no retry by the client
        assert stop_helper(running) == 0
    check_tutorial_run(project, run_id, moto)
    log = central.log()
    assert f"arn:aws:sts::{ACCOUNT}:assumed-role/ml-team/someone@example.com" in log
    assert TOKEN_PREFIX not in log and "Bearer" not in log  # never a token in the log


def test_tutorial_script_with_the_client_plugin(
    project: Project, central: CentralServer, moto: MotoServer, identities: Identities,
    tmp_path: Path,
) -> None:  # fmt: skip
    before = runs_of(project)
    env = {
        **client_aws_env(moto, identities.group_user),  # an IAM user in an allowed group
        "MLFLOW_TRACKING_URI": central.tracking_uri,
        "MLFLOW_TRACKING_AUTH": "aws-iam",
    }
    run_tracking_script(env, tmp_path / "work")
    [run_id] = runs_of(project) - before
    check_tutorial_run(project, run_id, moto)
    assert f"arn:aws:iam::{ACCOUNT}:user/carol" in central.log()


def test_an_sso_role_is_allowed_by_its_permission_set_name(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    status, body = search(central, bearer(token_for(moto, identities.sso_role, central.audience)))
    assert status == 200, body


def test_a_role_named_like_an_sso_role_is_not_one(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    """Low: anyone with iam:CreateRole can name a role AWSReservedSSO_DataScientist_<hex>; on
    the previous main the permission set's name in the allowed roles let it in (200)."""
    token = token_for(moto, identities.sso_impostor, central.audience)
    status, body = search(central, bearer(token))
    assert status == 403, body
    assert body.endswith(
        f"role {SSO_IMPOSTOR_ROLE} is not an IAM Identity Center role (its path is /, not "
        "/aws-reserved/sso.amazonaws.com/…)\n"
    )


def test_helper_env_remote_prints_the_plugin_lines(
    mariadb: MariaDB, project: Project, moto: MotoServer, tmp_path: Path
) -> None:
    from tests.support.helper_run import run_helper

    outputs = tmp_path / "outputs.json"
    uri = "https://mlflow.example.com/central"
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, uri))
    result = run_helper(["env", "--remote", "--project", project.name, "--outputs", str(outputs)],
                        clean_env(**moto.aws_env()))  # fmt: skip
    assert result.returncode == 0, result.stderr
    from mlflow_aws.artifact_settings import printed_settings

    assert result.stdout.splitlines() == [
        f"export MLFLOW_TRACKING_URI={uri}",
        "export MLFLOW_TRACKING_AUTH=aws-iam",
        f"export MLFLOW_AWS_IAM_STS_REGION={REGION}",
        *(f"export {key}={value}" for key, value in printed_settings("presigned").items()),
    ]
    assert "gateway endpoint" in result.stderr and "--artifacts proxied" in result.stderr
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, None))
    for argv in (["env"], ["serve", "--port", str(free_port())]):
        missing = run_helper([*argv, "--remote", "--project", project.name, "--outputs",
                              str(outputs)], clean_env(**moto.aws_env()))  # fmt: skip
        assert missing.returncode == 2
        assert "has no central server" in missing.stderr and "Traceback" not in missing.stderr


def test_helper_remote_fails_fast_for_an_identity_that_is_not_allowed(
    mariadb: MariaDB, project: Project, central: CentralServer, moto: MotoServer,
    identities: Identities, tmp_path: Path,
) -> None:  # fmt: skip
    from tests.support.helper_run import run_helper

    outputs = tmp_path / "outputs.json"
    outputs.write_text(outputs_with_tracking_uri(moto, project, BUCKET, central.tracking_uri))
    env = clean_env(**client_aws_env(moto, identities.outsider_role))
    result = run_helper(["serve", "--project", project.name, "--outputs", str(outputs),
                         "--remote", "--port", str(free_port())], env)  # fmt: skip
    assert result.returncode == 1
    assert "refused your AWS identity (403" in result.stderr
    assert "role outsider is not allowed" in result.stderr


# -- refused ---------------------------------------------------------------------------------------


def test_refuses_a_request_without_token(central: CentralServer) -> None:
    status, body = search(central, {})
    assert status == 401 and body.startswith("missing Authorization: Bearer token")
    assert body.count("\n") == 1  # one line


def test_refuses_a_garbage_token(central: CentralServer) -> None:
    for header in ("Bearer nonsense", f"Bearer {TOKEN_PREFIX}!!!not-base64", "Basic dXNlcjpwdw=="):
        status, body = search(central, {"Authorization": header})
        assert status == 401, (header, body)
        assert body.count("\n") == 1


def test_refuses_a_token_for_another_server(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    token = token_for(moto, identities.allowed_role, "mlflow.other-team.example.com/central")
    status, body = search(central, bearer(token))
    assert status == 401 and "token is for 'mlflow.other-team.example.com/central'" in body


def test_a_token_for_one_project_is_refused_by_another_projects_server(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    """High 2: a token minted for churn (same host, same allowed identity) at this server.
    On the previous main the token was bound to the host only and this answered 200."""
    churn = central.audience.rsplit("/", 1)[0] + "/churn"
    status, body = search(central, bearer(token_for(moto, identities.allowed_role, churn)))
    assert status == 401, body
    assert body == (
        f"token is for {churn!r}, this server is {central.audience!r}: a token is good on one "
        "project's server only (sign in with this project's tracking URI, "
        f"https://{central.audience})\n"
    )
    assert (
        search(central, bearer(token_for(moto, identities.allowed_role, central.audience)))[0]
        == 200
    )


def test_refuses_an_expired_token(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    twenty_minutes_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=20)
    with mock.patch("botocore.auth.get_current_datetime", return_value=twenty_minutes_ago):
        token = token_for(moto, identities.allowed_role, central.audience)
    status, body = search(central, bearer(token))
    assert status == 401 and "token expired: signed 20 min ago" in body


@contextlib.contextmanager
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A port that records whoever connects to it (the server must never be one of them)."""
    connections: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = sock.accept()
                connections.append(conn.recv(4096))
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], connections
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_refuses_a_token_whose_url_points_at_another_host(
    central: CentralServer, identities: Identities
) -> None:
    credentials = identities.allowed_role
    with listener() as (port, connections):
        token = make_token(credentials.access_key_id, credentials.secret_access_key,
                           credentials.session_token, REGION, f"http://127.0.0.1:{port}/",
                           central.audience)  # fmt: skip
        status, body = search(central, bearer(token))
    assert status == 401 and f"token is signed for 127.0.0.1:{port}" in body
    assert connections == []  # no SSRF: the token's host was never contacted


def signed_request_token(
    moto: MotoServer,
    credentials: Credentials,
    body: str,
    audience: str,
    extra_headers: dict[str, str] | None = None,
) -> str:
    """A token signing an arbitrary request (what a hostile client could make)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    url = sts_url(moto)
    host = url.split("//", 1)[1].rstrip("/")
    headers = {"Host": host, "Content-Type": CONTENT_TYPE, AUDIENCE_HEADER: audience,
               **(extra_headers or {})}  # fmt: skip
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(
        BotoCredentials(credentials.access_key_id, credentials.secret_access_key,
                        credentials.session_token), "sts", REGION,
    ).add_auth(request)  # fmt: skip
    payload = {"url": url, "headers": {k.lower(): v for k, v in request.headers.items()},
               "body": body}  # fmt: skip
    return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_refuses_a_token_for_another_sts_action(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    body = "Action=GetSessionToken&Version=2011-06-15"
    token = signed_request_token(moto, identities.allowed_role, body, central.audience)
    status, answer = search(central, bearer(token))
    assert status == 401 and "not an sts:GetCallerIdentity request" in answer
    # The right action with a header that is not expected (signed, but still refused).
    token = signed_request_token(
        moto, identities.allowed_role, STS_BODY, central.audience, {"X-Forwarded-For": "1"}
    )
    status, answer = search(central, bearer(token))
    assert status == 401 and "unexpected headers: x-forwarded-for" in answer


def test_refuses_a_role_outside_the_allowed_roles(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    status, body = search(
        central, bearer(token_for(moto, identities.outsider_role, central.audience))
    )
    assert status == 403
    assert body == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/outsider/someone@example.com: "
        "role outsider is not allowed on this server\n"
    )


def test_refuses_a_user_outside_the_allowed_groups(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    status, body = search(central, bearer(token_for(moto, identities.lone_user, central.audience)))
    assert status == 403 and "user/dave: user is in none of the allowed groups" in body
    status, body = search(central, bearer(token_for(moto, identities.group_user, central.audience)))
    assert status == 200, body


ROUTES = [
    # (family, method, path under the server root; {p} is the project prefix)
    ("REST", "GET", "{p}/api/2.0/mlflow/experiments/search?max_results=1"),
    ("REST", "POST", "{p}/api/2.0/mlflow/runs/create"),
    ("REST (UI's ajax-api)", "GET", "{p}/ajax-api/2.0/mlflow/experiments/search?max_results=1"),
    ("REST v3", "GET", "{p}/api/3.0/mlflow/server-info"),
    ("GraphQL", "POST", "{p}/graphql"),
    ("artifacts (prefixed)", "GET", "{p}/api/2.0/mlflow-artifacts/artifacts/x/y.txt"),
    ("artifacts (prefixed)", "PUT", "{p}/api/2.0/mlflow-artifacts/artifacts/x/y.txt"),
    ("artifacts (native streaming)", "GET", "/api/2.0/mlflow-artifacts/artifacts/x/y.txt"),
    ("artifacts (native streaming)", "PUT", "/ajax-api/2.0/mlflow-artifacts/artifacts/x/y.txt"),
    ("artifacts (UI)", "GET", "{p}/get-artifact?path=x&run_uuid=y"),
    ("OTel", "POST", "{p}/v1/traces"),
    ("gateway", "POST", "{p}/gateway/some-endpoint/mlflow/invocations"),
    ("jobs", "GET", "{p}/ajax-api/3.0/jobs/some-job"),
    ("UI", "GET", "{p}/"),
    ("UI assets", "GET", "{p}/static-files/favicon.ico"),
    ("version", "GET", "{p}/version"),
    ("unknown", "GET", "/nothing-here"),
]


def test_every_route_family_needs_a_token(central: CentralServer) -> None:
    refused = {}
    for family, method, path in ROUTES:
        url = central.root + path.format(p=f"/{PROJECT}")
        status, body = get(url, method=method, data=b"{}" if method in ("POST", "PUT") else None)
        refused[f"{family}: {method} {path}"] = (status, body.decode()[:60])
    assert {route: status for route, (status, _) in refused.items()} == {
        route: 401 for route in refused
    }, refused
    # Health only: the load balancer's checks carry no identity.
    assert get(f"{central.tracking_uri}/health") == (200, b"OK")


# -- big artifacts and the browser UI through the proxy --------------------------------------------

GIB = 1 << 30
PROXY_RSS_GROWTH_LIMIT_MIB = 64.0


def write_pattern_file(path: Path, size: int, block: bytes) -> None:
    with path.open("wb") as out:
        for _ in range(size // len(block)):
            out.write(block)


def same_pattern(path: Path, size: int, block: bytes) -> bool:
    if path.stat().st_size != size:
        return False
    with path.open("rb") as data:
        return all(data.read(len(block)) == block for _ in range(size // len(block)))


def test_a_1_gib_artifact_through_the_proxy_with_bounded_rss(
    mariadb: MariaDB, project: Project, central: CentralServer, moto: MotoServer,
    identities: Identities, tmp_path: Path,
) -> None:  # fmt: skip
    from mlflow import MlflowClient

    from tests.support.helper_run import record

    block = os.urandom(1 << 20)
    source = tmp_path / "up" / "big.bin"
    source.parent.mkdir()
    write_pattern_file(source, GIB, block)
    with remote_helper(mariadb, project, central, moto, identities.allowed_role, tmp_path) as (
        uri,
        running,
    ):
        proxy_pid = running.process.pid
        client = MlflowClient(tracking_uri=uri)
        run_id = client.create_run(client.create_experiment("big-artifact")).info.run_id
        before_kib = status_kib(proxy_pid, "VmRSS")
        started = time.monotonic()
        client.log_artifact(run_id, str(source))
        upload_s = time.monotonic() - started
        source.unlink()
        started = time.monotonic()
        downloaded = Path(client.download_artifacts(run_id, "big.bin", str(tmp_path)))
        download_s = time.monotonic() - started
        peak_kib = status_kib(proxy_pid, "VmHWM")  # the proxy's peak RSS over its whole life
        # The server streams too: prefixed artifact paths go to MLflow's streaming routes.
        server_peak_mib = max(status_kib(pid, "VmHWM") for pid in central.pids()) / 1024
        assert "proxy:" not in running.stderr()
    assert same_pattern(downloaded, GIB, block)
    s3 = aws_client("s3", moto.aws_env())
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PROJECT}/")["Contents"]:
        if item["Key"].endswith("/big.bin"):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])  # moto holds it in memory
    growth_mib = (peak_kib - before_kib) / 1024
    record(
        f"1 GiB artifact through the proxy: up {upload_s:.1f}s, down {download_s:.1f}s; proxy RSS "
        f"{before_kib / 1024:.0f} MiB before, peak {peak_kib / 1024:.0f} MiB "
        f"(+{growth_mib:.0f} MiB; limit +{PROXY_RSS_GROWTH_LIMIT_MIB:.0f}); server worker peak "
        f"{server_peak_mib:.0f} MiB"
    )
    assert server_peak_mib < 1024  # a buffered 1 GiB body would be in there at least once
    assert growth_mib <= PROXY_RSS_GROWTH_LIMIT_MIB


def test_the_ui_through_the_proxy_in_a_headless_browser(
    mariadb: MariaDB, project: Project, central: CentralServer, moto: MotoServer,
    identities: Identities, tmp_path: Path,
) -> None:  # fmt: skip
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with remote_helper(mariadb, project, central, moto, identities.allowed_role, tmp_path) as (
        uri,
        running,
    ):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment("seen-in-the-browser")
        run = client.create_run(experiment_id, run_name="browser-run")
        client.log_metric(run.info.run_id, "accuracy", 0.93)
        driver = chromium_driver(tmp_path)
        try:
            driver.set_page_load_timeout(60)
            # The one-time URL the helper printed: a cookie, then the clean URL.
            driver.get(f"{uri}/?token={running.secret}#/experiments")
            assert "token" not in driver.current_url
            # The list comes from the ajax-api through the proxy: the experiment's name shows up.
            WebDriverWait(driver, 60).until(
                lambda d: "seen-in-the-browser" in d.find_element(By.TAG_NAME, "body").text
            )
            driver.get(f"{uri}/#/experiments/{experiment_id}/runs/{run.info.run_id}")
            WebDriverWait(driver, 60).until(
                lambda d: "browser-run" in d.find_element(By.TAG_NAME, "body").text
            )
            driver.save_screenshot(str(tmp_path / "run-page.png"))
            refused = [
                entry["message"]
                for entry in driver.get_log("browser")
                if " 401 " in entry["message"] or " 403 " in entry["message"]
            ]
        finally:
            driver.quit()
        assert refused == []
        # (The UI asks /users/current, a basic-auth route, and takes its 404 as "no users".)
        assert not re.search(r"-> (401|403|5\d\d)", running.stderr()), running.stderr()


def test_the_ai_gateway_is_off(
    central: CentralServer, moto: MotoServer, identities: Identities
) -> None:
    """High 2: the gateway (on by default in MLflow) forwards Authorization from its passthrough
    routes to an endpoint's api_base. On the previous main a signed-in member listed (200) and
    could create endpoints; now every gateway route answers 404, signed in or not."""
    headers = bearer(token_for(moto, identities.allowed_role, central.audience))
    for method, path in [
        ("GET", "/ajax-api/3.0/mlflow/gateway/endpoints/list"),
        ("GET", "/api/3.0/mlflow/gateway/endpoints/list"),
        ("POST", "/ajax-api/3.0/mlflow/gateway/endpoints/create"),
        ("POST", "/gateway/some-endpoint/mlflow/invocations"),
        ("POST", "/gateway/mlflow/v1/chat/completions"),
        ("POST", "/gateway/anthropic/v1/messages"),
        ("GET", "/ajax-api/2.0/mlflow/gateway-proxy"),
    ]:
        data = b"{}" if method == "POST" else None
        status, body = get(f"{central.tracking_uri}{path}", headers, method=method, data=data)
        assert (status, body) == (404, b"the AI Gateway is off on this server\n"), path
    # The rest of the API is unchanged for the same caller.
    assert search(central, headers)[0] == 200
