"""The signing proxy (``serve --remote``) as an attacker meets it: raw sockets and a hostile page in
headless Chromium against the real ``SigningProxy`` in front of a recording upstream (it stands
in for the central server and records every request that reached it, with the token the proxy
added; the proxy's token source is a stand-in that needs no AWS).

The attacks (issue 14, High 1 and Medium 3):
* HTTP/1.1 keep-alive desync: a request the proxy refuses carries a whole second request in its
  body (Content-Length or chunked); the proxy must close, never parse the body as a request;
* a page of another origin (or another port of 127.0.0.1, the same *site*) drives the proxy
  with ``fetch``; a DNS-rebinding page (another Host);
* any local client without the run's secret (another user of the machine);
* cookies: the browser's go nowhere upstream, the server's never reach the browser.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy_harness import (  # noqa: F401 (fixtures)
    ATTACK_PAGE,
    SECRET,
    SIGNED,
    Upstreams,
    attack_site,
    exchange,
    running_proxy,
    statuses,
    upstream,
)
from tests.support.services import free_port


def inner_request(port: int, method: str = "POST", with_secret: bool = True) -> bytes:
    """What the attacker wants signed: delete an experiment, as the teammate."""
    body = b'{"experiment_id": "1"}'
    headers = [
        f"{method} /api/2.0/mlflow/experiments/delete HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if with_secret:  # even a smuggler who knew the secret gets nothing through
        headers.append(f"Authorization: Bearer {SECRET}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def outer_request(
    port: int, smuggled: bytes, *, origin: str | None, host: str | None = None,
    chunked: bool = False, with_secret: bool = False,
) -> bytes:  # fmt: skip
    lines = ["POST / HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Content-Type: text/plain"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if with_secret:
        lines.append(f"Authorization: Bearer {SECRET}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    else:
        lines.append(f"Content-Length: {len(smuggled)}")
        body = smuggled
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- High 1: a refused request's body is never a second request ------------------------------------

SMUGGLES: dict[str, dict[str, Any]] = {
    "foreign Origin, Content-Length": {"origin": "https://evil.example"},
    "foreign Origin, chunked": {"origin": "https://evil.example", "chunked": True},
    "no Origin, no secret, Content-Length": {"origin": None},
    "no Origin, no secret, chunked": {"origin": None, "chunked": True},
    "rebinding Host, Content-Length": {"origin": None, "host": "evil.example:{port}"},
    "rebinding Host, chunked": {"origin": None, "host": "evil.example:{port}", "chunked": True},
    "another port of 127.0.0.1 (same site)": {"origin": "http://127.0.0.1:1"},
    "null Origin (sandboxed page)": {"origin": "null", "with_secret": True},
}


@pytest.mark.parametrize("case", list(SMUGGLES))
def test_a_smuggled_request_in_a_refused_body_reaches_the_upstream_with_nothing(
    upstream: Upstreams, case: str
) -> None:
    options = dict(SMUGGLES[case])
    with running_proxy(upstream) as proxy:
        if isinstance(options.get("host"), str):
            options["host"] = options["host"].format(port=proxy.port)
        data = outer_request(proxy.port, inner_request(proxy.port), **options)
        received, closed = exchange(proxy.port, data)
    assert upstream.requests == [], f"forwarded: {upstream.requests}"
    assert len(statuses(received)) == 1 and statuses(received)[0] in (401, 403), received
    assert b"connection: close" in received.lower()
    assert closed, "the proxy kept the connection open after refusing (desync)"


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Content-Length: 5\r\nContent-Length: 50",
        "Content-Length: +5",
        "Content-Length: -1",
    ],
)
def test_an_ambiguous_body_framing_is_refused_before_anything_is_signed(
    upstream: Upstreams, framing: str
) -> None:
    with running_proxy(upstream) as proxy:
        smuggled = inner_request(proxy.port)
        head = (
            f"POST /api/2.0/mlflow/runs/create HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            f"Authorization: Bearer {SECRET}\r\n{framing}\r\n\r\n"
        )
        received, closed = exchange(proxy.port, head.encode() + b"0\r\n\r\n" + smuggled)
    assert upstream.requests == []
    assert statuses(received) == [400], received
    assert closed


def test_a_malformed_chunk_closes_the_connection_and_nothing_after_it_is_parsed(
    upstream: Upstreams,
) -> None:
    with running_proxy(upstream) as proxy:
        head = (
            f"POST /api/2.0/mlflow/runs/create HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            f"Authorization: Bearer {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # A chunk longer than it says: what follows its size is the attacker's request.
        body = b"2\r\nabcd\r\n0\r\n\r\n" + inner_request(proxy.port)
        received, closed = exchange(proxy.port, head.encode() + body)
    assert [r.path for r in upstream.requests if "delete" in r.path] == []
    assert closed and 400 in statuses(received), received


def test_an_error_reply_closes_the_connection(upstream: Upstreams) -> None:
    """The server is gone: the proxy's 502 (with its body read or not) ends the connection."""
    with running_proxy(Upstreams(free_port())) as proxy:
        data = outer_request(proxy.port, inner_request(proxy.port), origin=None, with_secret=True)
        received, closed = exchange(proxy.port, data, wait=10)
    assert statuses(received) == [502], received
    assert closed


def test_the_secret_opens_the_proxy_and_keep_alive_still_works(upstream: Upstreams) -> None:
    """Two signed requests on one connection, as the MLflow client sends them."""
    with running_proxy(upstream) as proxy:
        one = (
            f"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            f"Authorization: Bearer {SECRET}\r\nCookie: other-app=1\r\n\r\n"
        ).encode()
        received, closed = exchange(proxy.port, one + one, wait=1.5)
    assert statuses(received) == [200, 200] and not closed
    [first, _] = upstream.requests
    assert first.path == "/proj/api/2.0/mlflow/experiments/search"
    assert first.headers["authorization"] == f"Bearer {SIGNED}"  # the proxy's, not the secret
    assert "cookie" not in first.headers  # the browser's cookies stay with the browser
    assert b"set-cookie" not in received.lower()  # the server's cookies stay with the server


# -- Medium 3: only the holder of the run's secret ---------------------------------------------


SEARCH = "/api/2.0/mlflow/experiments/search"


def request(
    url: str, path: str = SEARCH, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    try:
        sent = urllib.request.Request(url + path, headers=headers or {})  # noqa: S310
        with opener.open(sent, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {SECRET[:-1]}"},
        {"Authorization": f"Basic {SECRET}"},
        {"Cookie": "mlflow-aws-1=" + SECRET},  # another port's cookie name
        {"Cookie": "mlflow-aws-{port}=wrong"},
    ],
    ids=["nothing", "wrong token", "truncated token", "basic", "other port's cookie", "bad cookie"],
)
def test_without_the_run_secret_the_proxy_signs_nothing(
    upstream: Upstreams, headers: dict[str, str]
) -> None:
    with running_proxy(upstream) as proxy:
        sent = {k: v.format(port=proxy.port) for k, v in headers.items()}
        status, _, body = request(proxy.url, headers=sent)
        health, _, _ = request(proxy.url, "/health")
    assert (status, health) == (401, 401), body
    assert upstream.requests == []
    assert SECRET not in proxy.log.getvalue()


def test_the_one_time_url_sets_a_strict_http_only_cookie_and_redirects_to_a_clean_url(
    upstream: Upstreams,
) -> None:
    with running_proxy(upstream) as proxy:
        status, headers, _ = request(proxy.url, f"/?token={SECRET}")
        assert status == 302 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"mlflow-aws-{proxy.port}={SECRET};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert upstream.requests == []  # the exchange never goes upstream
        status, _, _ = request(proxy.url, headers={"Cookie": cookie.split(";")[0]})
        assert status == 200
        assert request(proxy.url, "/?token=wrong")[0] == 401
    [forwarded] = upstream.requests
    assert "cookie" not in forwarded.headers  # the proxy's own cookie is consumed, not forwarded
    assert SECRET not in proxy.log.getvalue()


def test_another_local_user_gets_401(upstream: Upstreams, tmp_path: Path) -> None:
    """``runuser -u nobody curl …``: another account on the machine, without the secret."""
    import shutil
    import subprocess

    runuser, curl = shutil.which("runuser"), shutil.which("curl")
    if runuser is None or curl is None:
        pytest.skip("needs runuser and curl")
    with running_proxy(upstream) as proxy:
        result = subprocess.run(
            [runuser, "-u", "nobody", "--", curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "-X", "POST", "-H", "Content-Type: application/json", "-d", '{"name": "x"}',
             f"{proxy.url}/api/2.0/mlflow/experiments/create"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.stdout == "401", result
    assert upstream.requests == []


# -- the same from a hostile page in headless Chromium ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "attacker_host", ["localhost", "127.0.0.1"], ids=["cross-site", "same-site"]
)
def test_a_page_on_another_origin_cannot_drive_the_proxy_in_chromium(
    upstream: Upstreams, tmp_path: Path, attacker_host: str
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.support.browser import chromium_driver

    with running_proxy(upstream) as proxy:
        smuggled = inner_request(proxy.port, with_secret=True).decode()
        page = ATTACK_PAGE % {"port": proxy.port, "smuggled": json.dumps(smuggled)}
        with attack_site(page) as site_port:
            driver = chromium_driver(tmp_path)
            try:
                driver.set_page_load_timeout(30)
                # The teammate signed the browser in (the cookie is there), then opens the page.
                driver.get(f"{proxy.url}/?token={SECRET}")
                assert "ok" in driver.page_source  # signed in: the upstream's answer shows
                time.sleep(1)
                signed_in = list(upstream.requests)
                driver.get(f"http://{attacker_host}:{site_port}/")
                WebDriverWait(driver, 30).until(lambda d: d.title == "done")
                time.sleep(1)  # the proxy's threads finish what they were sent
            finally:
                driver.quit()
    assert signed_in and signed_in[0].path.startswith("/proj/")  # the UI's page, signed
    attacked = [(r.method, r.path) for r in upstream.requests[len(signed_in) :]]
    assert attacked == [], f"the page's requests were signed and forwarded: {attacked}"
