"""The central server's MLflow under its project prefix, for real: docker/entrypoint.sh with the
image's own packages and a task's environment (MLFLOW_STATIC_PREFIX=/<project>, allowed hosts and
CORS origins pinned to the load balancer's name, the URI and CA bundle as ECS secrets deliver
them), on MariaDB (TLS required) and a moto S3.

At http://127.0.0.1:<port>/<project> (the path the load balancer forwards): the tutorial's
tracking.py logs params, metrics and an artifact; the REST API and proxied artifacts answer under
the prefix; the MLflow UI shows the run and its artifact in a real headless browser (Debian's
chromium driven by selenium); the load balancer's health check (Host: the task's IP) passes while
any other request with a foreign Host is refused; and an idle server holds no connection to the
database, however often it is health-checked.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support import image_server
from tests.support.browser import CHROMIUM_FLAGS
from tests.support.helper_run import run_tracking_script
from tests.support.processes import left_after, process_tree
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import Project, create_project

BUCKET = "mlflow-aws-prefix"
REGION = "eu-west-1"
DOMAIN = "mlflow.example.com"
TASK_HOST = "10.0.12.34:5000"  # what the load balancer's health checks send as Host


@pytest.fixture(scope="module")
def s3(moto: MotoServer) -> Any:
    env = moto.aws_env()
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    return client


def prefixed_task_env(
    project: Project, port: int, moto: MotoServer, idle_seconds: int = 30
) -> dict[str, str]:
    return image_server.task_environment(
        backend_store_uri=project.backend_store_uri,
        ca_pem=project.mariadb.ca_path.read_text(),
        artifacts_destination=f"s3://{BUCKET}/{project.name}",
        port=port,
        prefix=f"/{project.name}",
        # infra/containers.py pins the load balancer's name; the test reaches the task
        # directly, as 127.0.0.1:<port>, so that is allowed too.
        allowed_hosts=f"{DOMAIN},{DOMAIN}:443,127.0.0.1:{port}",
        cors_origins=f"https://{DOMAIN}",
        extra={**moto.aws_env(), "MLFLOW_AWS_DB_IDLE_SECONDS": str(idle_seconds)},
    )


def request(url: str, host: str | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Host": host} if host else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Debian chromium through chromedriver; quit (and checked gone) afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.fail("chromium and chromium-driver are missing: ./dev test installs them")
    profile = tempfile.mkdtemp(prefix="mlflow-aws-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    service = Service(driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver_pid = service.process.pid
    tree = process_tree(driver_pid)  # chromedriver and the browser it started
    try:
        yield driver
    finally:
        driver.quit()
        left = left_after(tree, 20, poll=0.2)
        shutil.rmtree(profile, ignore_errors=True)
        assert not left, f"browser processes left: {left}"


def wait_for_text(driver: Any, *texts: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def body(d: Any) -> str | bool:
        text = str(d.find_element(By.TAG_NAME, "body").text)
        return text if all(t in text for t in texts) else False

    try:
        return str(WebDriverWait(driver, timeout).until(body))
    except Exception:
        page = driver.find_element(By.TAG_NAME, "body").text[:3000]
        raise AssertionError(f"{texts} not shown at {driver.current_url}:\n{page}") from None


def open_connections(project: Project) -> int:
    sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s"
    return int(project.mariadb.query(sql, (project.user,))[0][0])


@pytest.mark.slow
def test_ui_api_and_artifacts_under_the_project_prefix(
    image_venv: Path,
    mariadb: MariaDB,
    moto: MotoServer,
    s3: Any,
    tmp_path: Path,
) -> None:
    project = create_project(mariadb, "prefix")
    port = free_port()
    env = prefixed_task_env(project, port, moto, idle_seconds=2)
    with image_server.running(image_venv, env, tmp_path / "task", tmp_path / "task.log") as server:
        assert server.url == f"http://127.0.0.1:{port}/prefix"

        # The tutorial's tracking.py, with nothing but the tracking URI of the project.
        run_tracking_script(server.url, tmp_path / "work")

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=server.url)
        [run] = client.search_runs(["0"])
        assert set(run.data.params) == {"param1"}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "foo")] == [0, 0, 0]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["test.txt"]
        downloaded = client.download_artifacts(run.info.run_id, "test.txt", str(tmp_path))
        assert Path(downloaded).read_text() == "hello world!"
        [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
        assert key == f"prefix/0/{run.info.run_id}/artifacts/test.txt"  # the project's prefix

        # The REST API is served under the prefix only (the load balancer forwards /prefix/*).
        search = "/api/2.0/mlflow/runs/search"
        body = json.dumps({"experiment_ids": ["0"]}).encode()
        status, found = request(f"{server.url}{search}", data=body)
        assert status == 200 and run.info.run_id in found.decode()
        assert request(f"http://127.0.0.1:{port}{search}", data=body)[0] == 404

        # Host headers: the load balancer's health check (Host = the task's IP) passes, as
        # does the public name; anything else is refused (DNS rebinding).
        assert request(f"{server.url}/health", host=TASK_HOST) == (200, b"OK")
        assert request(f"{server.url}{search}", host=DOMAIN, data=body)[0] == 200
        status, text = request(f"{server.url}{search}", host=TASK_HOST, data=body)
        assert status == 403 and b"Invalid Host header" in text
        assert request(f"{server.url}{search}", host="evil.example", data=body)[0] == 403

        # The UI, in a real browser, under the prefix: the run's params and metric, and its
        # artifact through the server.
        run_page = f"{server.url}/#/experiments/0/runs/{run.info.run_id}"
        with chromium() as browser:
            browser.get(run_page)
            page = wait_for_text(browser, "param1", str(run.data.params["param1"]), "foo")
            assert run.info.run_name in page
            browser.get(f"{run_page}/artifacts")
            wait_for_text(browser, "test.txt")
            from selenium.webdriver.common.by import By

            browser.find_element(By.XPATH, "//*[normalize-space(text())='test.txt']").click()
            wait_for_text(browser, "hello world!")
            errors = [
                entry["message"]
                for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE"
                and f"127.0.0.1:{port}" in entry["message"]
                # the UI asks for a signed-in user; MLflow without an auth app has none
                and "users/current" not in entry["message"]
            ]
            assert not errors, errors
        assert "Rejected request with invalid Host header: 127.0.0.1" not in server.log()

        # Idle: the database closes the pool (wait_timeout 2 s here, 30 by default), and the
        # health checks that keep coming do not open a connection: Aurora can pause.
        deadline = time.monotonic() + 30
        while open_connections(project) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert open_connections(project) == 0
        for _ in range(10):
            assert request(f"{server.url}/health", host=TASK_HOST)[0] == 200
            assert request(f"{server.url}/version", host=TASK_HOST)[0] == 200
        assert open_connections(project) == 0
        assert project.password not in server.log()
