"""The signing proxy's rules (``helper/proxy.py``) as the bad input each one keeps out (issue 19:
every mutant ``./dev mutate helper/proxy.py`` makes must fail one of these or a test of
``tests/test_auth_unit.py`` / ``tests/test_auth_e2e.py``)."""

from __future__ import annotations

import pytest

from helper.errors import HelperError
from helper.proxy import Upstream


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://mlflow.example.com/churn",  # another scheme (would then be spoken to as plain HTTP)
        "file:///etc/passwd",
        "mlflow.example.com/churn",  # no scheme at all
        "https:///churn",  # no host
        "https://",
        "https://mlflow.example.com/churn?next=https://evil.example.com",  # a query
    ],
)
def test_a_tracking_uri_that_is_not_a_plain_https_url_is_refused(uri: str) -> None:
    with pytest.raises(HelperError, match="is not an http"):
        Upstream.from_uri(uri)


def test_a_tracking_uri_is_split_into_scheme_host_port_and_project_path() -> None:
    assert Upstream.from_uri("https://mlflow.example.com/churn/") == Upstream(
        "https", "mlflow.example.com", 443, "/churn"
    )
    assert Upstream.from_uri("http://127.0.0.1/p") == Upstream("http", "127.0.0.1", 80, "/p")
    assert Upstream.from_uri("https://h.example.com:8443").port == 8443
    assert Upstream.from_uri("https://h.example.com:8443").host_header == "h.example.com:8443"
    assert Upstream.from_uri("https://h.example.com:443/p").host_header == "h.example.com"
    assert Upstream.from_uri("https://h.example.com/p").origin == "https://h.example.com"


@pytest.mark.parametrize(
    ("local", "upstream"),
    [
        # a request line whose path lacks the leading "/" must not reach another project's
        # server: /churn-other/api is project churn-other's
        ("-other/api/2.0/mlflow/runs/get", "/churn/-other/api/2.0/mlflow/runs/get"),
        ("api/2.0/x", "/churn/api/2.0/x"),
        ("/api/2.0/x?y=1", "/churn/api/2.0/x?y=1"),
        ("/", "/churn/"),
        ("", "/churn/"),
    ],
)  # fmt: skip
def test_every_local_path_stays_under_the_projects_prefix(local: str, upstream: str) -> None:
    assert Upstream.from_uri("https://mlflow.example.com/churn").path_for(local) == upstream


def test_a_redirect_elsewhere_is_passed_on_unchanged_and_ours_made_local() -> None:
    upstream = Upstream.from_uri("https://mlflow.example.com/churn")
    assert upstream.local_location("https://mlflow.example.com/churn/x") == "/x"
    assert upstream.local_location("/churn/x") == "/x"
    # another project on the same host, and a prefix that is only a prefix of the name
    assert upstream.local_location("/churn-other/x") == "/churn-other/x"
    assert upstream.local_location("https://mlflow.example.com/churnx/y") == (
        "https://mlflow.example.com/churnx/y"
    )
    root = Upstream.from_uri("https://mlflow.example.com")
    assert root.local_location("/x") == "/x" and root.path_for("/x") == "/x"
