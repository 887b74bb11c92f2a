"""The laptop server behind the run's secret (issue 14, Medium 3 and the CORS finding), for real:
``python -m helper serve --local`` (the embedded default: the same app and settings as the process
and docker runtimes, whose own end-to-end tests also go through the secret) answering only the
holder of the secret its export line printed, the browser only after the one-time URL.

The docker runtime's server is the image's, run from the image's packages in
tests/test_image_requirements.py (401 without the secret there); its ``docker run`` (the app name
in the command, the secret only in the environment) in tests/test_helper_e2e.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.helper_run import RunningHelper, serving
from tests.support.processes import cmdline
from tests.support.proxy_harness import ATTACK_PAGE, attack_site
from tests.support.services import free_port

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RunningHelper]]:
    tmp_path = tmp_path_factory.mktemp("laptop")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    port = free_port()
    argv = ["serve", "--local", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    with serving(argv, env, tmp_path, port) as running:
        yield f"http://127.0.0.1:{port}", running


def call(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    sent = urllib.request.Request(url, data=data, headers=headers or {}, method=method)  # noqa: S310
    try:
        with opener.open(sent, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, (
                response.read()
            )  # fmt: skip
    except urllib.error.HTTPError as refused:
        return refused.code, {k.lower(): v for k, v in refused.headers.items()}, refused.read()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer {secret}x"},
        {"Authorization": "Basic {secret}"},
        {"Cookie": "mlflow-aws-{port}=wrong"},
        {"Cookie": "mlflow-aws-1={secret}"},  # another port's cookie name
    ],
    ids=["nothing", "wrong token", "longer token", "basic", "wrong cookie", "other port's cookie"],
)
@pytest.mark.parametrize("path", [SEARCH, "/", "/static-files/favicon.ico", "/version"])
def test_without_the_secret_the_laptop_server_answers_401(
    laptop: tuple[str, RunningHelper], headers: dict[str, str], path: str
) -> None:
    url, running = laptop
    port = url.rsplit(":", 1)[1]
    sent = {k: v.format(secret=running.secret, port=port) for k, v in headers.items()}
    status, _, body = call(url + path, sent)
    assert status == 401, body
    assert b"MLFLOW_TRACKING_TOKEN" in body  # says what to do


def test_with_the_secret_it_serves_and_health_needs_none(laptop: tuple[str, RunningHelper]) -> None:
    url, running = laptop
    assert call(url + SEARCH, running.auth())[0] == 200
    assert call(f"{url}/health")[0] == 200  # the helper's and the image's health checks
    # The secret is nowhere but the environment and the printed lines.
    for pid in [running.process.pid, *running.server_pids()]:
        assert running.secret not in cmdline(pid)
    assert running.secret not in running.stderr()


def test_another_local_user_gets_401(laptop: tuple[str, RunningHelper]) -> None:
    """``runuser -u nobody curl …``: another account of the machine reaching the loopback."""
    runuser, curl = shutil.which("runuser"), shutil.which("curl")
    if runuser is None or curl is None or os.geteuid() != 0:
        pytest.skip("needs root, runuser and curl")
    url, _ = laptop
    result = subprocess.run(
        [runuser, "-u", "nobody", "--", curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
         "-X", "POST", "-H", "Content-Type: application/json", "-d", '{"name": "nobodys"}',
         f"{url}/api/2.0/mlflow/experiments/create"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.stdout == "401", result


def test_cors_is_pinned_to_the_served_origin(laptop: tuple[str, RunningHelper]) -> None:
    """MLflow lets any http://localhost:* origin through with credentials; here only the
    server's own origin is answered, even with the secret."""
    url, running = laptop
    for origin in ("http://localhost:9999", "http://127.0.0.1:8888", "null"):
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        status, headers, _ = call(url + "/api/2.0/mlflow/experiments/create", preflight, "OPTIONS")
        assert status == 403 and "access-control-allow-origin" not in headers, (origin, headers)
        status, headers, _ = call(url + SEARCH, {**running.auth(), "Origin": origin})
        assert status == 403 and "access-control-allow-origin" not in headers, (origin, headers)
    for origin in (url, url.replace("127.0.0.1", "localhost")):
        assert call(url + SEARCH, {**running.auth(), "Origin": origin})[0] == 200


def test_the_one_time_url_signs_the_browser_in(laptop: tuple[str, RunningHelper]) -> None:
    url, running = laptop
    status, headers, _ = call(f"{url}/?token={running.secret}")
    assert status == 302 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    port = url.rsplit(":", 1)[1]
    assert cookie.startswith(f"mlflow-aws-{port}={running.secret};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert call(url + SEARCH, {"Cookie": cookie.split(";")[0]})[0] == 200
    assert call(f"{url}/?token=wrong")[0] == 401
    time.sleep(1)  # the server's access log lines reach the helper's log
    log = running.stderr()
    assert '"GET / HTTP/1.1" 302' in log  # the server's access log, without the token
    assert "token=" not in log and running.secret not in log


def experiment_names(url: str, running: RunningHelper) -> set[str]:
    status, _, body = call(url + SEARCH.replace("5", "100"), running.auth())
    assert status == 200
    return {e["name"] for e in json.loads(body).get("experiments", [])}


@contextlib.contextmanager
def browser(tmp_path: Path) -> Iterator[Any]:
    from tests.support.browser import chromium_driver

    driver = chromium_driver(tmp_path)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def test_the_ui_in_chromium_after_the_one_time_url_and_no_page_of_another_origin_drives_it(
    laptop: tuple[str, RunningHelper], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, running = laptop
    created = call(
        url + "/api/2.0/mlflow/experiments/create",
        {**running.auth(), "Content-Type": "application/json"},
        "POST",
        json.dumps({"name": "seen-in-the-browser"}).encode(),
    )
    assert created[0] == 200
    port = int(url.rsplit(":", 1)[1])
    smuggled = (
        f"POST /api/2.0/mlflow/experiments/create HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        'Content-Type: application/json\r\nContent-Length: 19\r\n\r\n{"name": "planted"}'
    )
    page = ATTACK_PAGE % {"port": port, "smuggled": json.dumps(smuggled)}
    with browser(tmp_path) as driver:
        driver.get(f"{url}/?token={running.secret}#/experiments")
        assert "token" not in driver.current_url  # the secret left the address bar
        WebDriverWait(driver, 60).until(
            lambda d: "seen-in-the-browser" in d.find_element(By.TAG_NAME, "body").text
        )
        refused = [e["message"] for e in driver.get_log("browser") if " 401 " in e["message"]]
        assert refused == []
        with attack_site(page) as site_port:
            for host in ("localhost", "127.0.0.1"):  # another site; the same site, another port
                driver.get(f"http://{host}:{site_port}/")
                WebDriverWait(driver, 30).until(lambda d: d.title == "done")
        time.sleep(1)
    names = experiment_names(url, running)
    assert "seen-in-the-browser" in names
    assert "planted" not in names, names
