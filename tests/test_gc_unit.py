"""gc's rules that need no server: which artifact URIs it may delete under, durations."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_aws.gc import GcError, LocalStore, S3Store, parse_duration
from mlflow_aws.gc.artifacts import owned_prefix

RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def s3() -> S3Store:
    return S3Store(object(), "s3://bucket/churn")


@pytest.mark.parametrize(
    ("uri", "prefix"),
    [
        (f"mlflow-artifacts:/1/{RUN}/artifacts", f"1/{RUN}/artifacts"),
        (f"mlflow-artifacts:///1/{RUN}/artifacts", f"1/{RUN}/artifacts"),
        (f"mlflow-artifacts://127.0.0.1:5000/1/{RUN}/artifacts", f"1/{RUN}/artifacts"),
        (f"s3://bucket/churn/7/{RUN}/artifacts", f"7/{RUN}/artifacts"),
        (f"s3://bucket/churn/7/{RUN}/artifacts/", f"7/{RUN}/artifacts"),
    ],
)
def test_run_artifacts_inside_the_root_are_owned(s3: S3Store, uri: str, prefix: str) -> None:
    assert owned_prefix(s3, uri, "run", RUN) == prefix


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://bucket/other/1/{RUN}/artifacts",  # another project's prefix
        f"s3://bucket/churnx/1/{RUN}/artifacts",  # a name that only starts like it
        f"s3://elsewhere/churn/1/{RUN}/artifacts",  # another bucket
        f"mlflow-artifacts:/../other/1/{RUN}/artifacts",  # out of the root
        f"mlflow-artifacts:/1/{RUN}/../../artifacts",
        "mlflow-artifacts:/1",  # an experiment's location is not a run's
        "mlflow-artifacts:/",  # the whole project
        "s3://bucket/churn",
        f"mlflow-artifacts:/1/{RUN}x/artifacts",  # another run's id
        f"mlflow-artifacts:/1/{RUN}/artifacts?x=1",
        f"file:///tmp/1/{RUN}/artifacts",
        f"https://example.com/1/{RUN}/artifacts",
        "",
        None,
    ],
)
def test_nothing_else_is(s3: S3Store, uri: str | None) -> None:
    assert owned_prefix(s3, uri, "run", RUN) is None


def test_each_kind_of_entity_has_its_own_shape(s3: S3Store) -> None:
    assert owned_prefix(s3, "mlflow-artifacts:/1/models/m-1/artifacts", "logged model", "m-1")
    assert owned_prefix(s3, "mlflow-artifacts:/1/traces/tr-1/artifacts", "trace", "tr-1")
    assert owned_prefix(s3, "mlflow-artifacts:/12", "experiment", "12") == "12"
    assert owned_prefix(s3, "mlflow-artifacts:/1/12", "experiment", "1") is None
    assert owned_prefix(s3, "mlflow-artifacts:/team/12", "experiment", "12") is None


def test_local_store_stays_in_its_directory(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "1" / RUN / "artifacts").mkdir(parents=True)
    (root / "1" / RUN / "artifacts" / "a.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "1" / "link").symlink_to(outside)
    store = LocalStore(root)
    assert owned_prefix(store, f"{root}/1/{RUN}/artifacts", "run", RUN) == f"1/{RUN}/artifacts"
    assert owned_prefix(store, f"file://{root}/1/{RUN}/artifacts", "run", RUN)
    assert owned_prefix(store, f"{outside}/{RUN}/artifacts", "run", RUN) is None
    assert owned_prefix(store, f"{root}/1/link/{RUN}/artifacts", "run", RUN) is None
    assert list(store.pages("1/link")) == []  # never walks through a symlink
    [page] = list(store.pages(f"1/{RUN}/artifacts"))
    store.delete(page)
    assert not (root / "1" / RUN).exists() and root.is_dir()


@pytest.mark.parametrize(
    ("text", "ms"), [("0", 0), ("30d", 30 * 86_400_000), ("1d12h", 129_600_000), ("90m", 5_400_000),
                     ("1.5h", 5_400_000), ("45s", 45_000)],
)  # fmt: skip
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "1w", "30 days", "1h2d"])
def test_bad_durations_name_the_value_and_the_rule(text: str) -> None:
    with pytest.raises(GcError, match=r"--older-than .* is not a duration: use days"):
        parse_duration(text)
