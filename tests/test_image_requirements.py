"""The server image's own packages, for real (README.md "Tests": the image).

No Docker engine here, so the image is not built. Instead a venv gets docker/requirements.txt
installed exactly as the Dockerfile installs it (the same pip flags, read from the Dockerfile),
and ``docker/entrypoint.sh`` runs the server from it with the environment of the helper's docker
env file, against MariaDB (TLS required, like Aurora) and a moto S3. The stock ``mlflow`` client of
the dev environment then logs through it: the tutorial's tracking.py, a log_batch, an artifact
up and down through the server.

The venv is cached under .services/ keyed by the lock, the Dockerfile's pip flags and the
Python version, so only the first run (or a changed lock) pays for the install.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from helper.outputs import ProjectConnection
from helper.runtimes import container_environment, secret_app_argv
from helper.watchdog import stop_group
from mlflow_aws.run_secret import new_secret
from tests.support.helper_run import run_tracking_script
from tests.support.image_venv import DOCKER, DOCKERFILE, ROOT, dockerfile_pip_flags, lock, normalize
from tests.support.processes import cmdline, descendants, left_after
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import create_project

ENTRYPOINT = DOCKER / "entrypoint.sh"
BUCKET = "mlflow-aws-image"
REGION = "eu-west-1"
SERVE_TIMEOUT = 120.0

# mlflow's declared requirements that the image leaves out, and nothing else: mlflow server
# never imports them (mlflow's imports of them are optional, client-side or for type checking
# only), and they are ~460 MB with what only they pull in. pip check must report exactly these.
OMITTED = frozenset({"matplotlib", "pyarrow", "scikit-learn", "scipy", "skops"})


# -- fast checks of the lock --------------------------------------------------------------------


def test_lock_pins_every_line_and_mlflow_matches_the_dockerfile_default() -> None:
    pins = lock()
    [default] = re.findall(r"^ARG MLFLOW_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert pins["mlflow"] == default
    assert pins["mlflow-skinny"] == pins["mlflow-tracing"] == default
    for name in ("pymysql", "boto3", "cryptography"):
        assert name in pins
    assert not OMITTED & set(pins)


def test_lock_agrees_with_the_dev_constraints() -> None:
    """The dev environment installs the lock too (requirements.txt: -r docker/requirements.txt),
    so the process runtime runs the image's versions and constraints.txt cannot disagree."""
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            constraints[normalize(name)] = version
    assert {name: constraints.get(name) for name in lock()} == lock()


def test_dockerfile_installs_the_lock_without_resolving() -> None:
    flags = dockerfile_pip_flags()
    assert "--no-deps" in flags and "--no-cache-dir" in flags


# -- the image's venv ---------------------------------------------------------------------------


def venv_pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_image_venv_holds_exactly_the_lock_and_mlflow_aws(image_venv: Path) -> None:
    frozen = venv_pip(image_venv, "freeze", "--all")
    assert frozen.returncode == 0, frozen.stderr
    installed = {}
    for line in frozen.stdout.splitlines():
        name, _, version = line.partition("==")
        installed[normalize(name.split(" @ ")[0])] = version
    assert installed.pop("mlflow-aws") is not None  # the app, installed from the repository
    installed.pop("pip")  # the base image's installer
    assert installed == lock()  # nothing unlisted got in, nothing listed is missing
    entry_points = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c",
         "from importlib.metadata import entry_points as e; "
         "print(sorted(x.name for x in e(group='mlflow.app')))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "'aws-iam'" in entry_points  # `mlflow server --app-name aws-iam` finds it


@pytest.mark.slow
def test_pip_check_reports_only_the_omitted_packages(image_venv: Path) -> None:
    result = venv_pip(image_venv, "check")
    missing = set()
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\S+) (\S+) requires (\S+), which is not installed\.", line)
        assert match, f"pip check found something else broken: {line}"
        assert (normalize(match.group(1)), match.group(2)) == ("mlflow", lock()["mlflow"]), line
        missing.add(normalize(match.group(3)))
    assert missing == OMITTED


# -- the server, run as the image runs it -------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(moto: MotoServer) -> dict[str, str]:
    env = moto.aws_env()
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return env


def get(url: str, secret: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("Content-Type", ""), refused.read()


@pytest.mark.slow
def test_server_from_the_image_venv_end_to_end(
    image_venv: Path, mariadb: MariaDB, bucket: dict[str, str], tmp_path: Path
) -> None:
    project = create_project(mariadb, "image-venv")
    connection = ProjectConnection(
        project=project.name,
        database=project.schema,
        # TLS verified against the test CA, as the image verifies Aurora with its RDS bundle.
        backend_store_uri=mariadb.url(project.user, project.password, project.schema),
        password=project.password,
        artifact_root=f"s3://{BUCKET}/{project.name}",
        database_endpoint=mariadb.host,
        database_port=mariadb.port,
        region=REGION,
        image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-aws@sha256:" + "0" * 64,
        mlflow_version=lock()["mlflow"],
    )
    port = free_port()
    secret = new_secret()
    # The helper's docker env file, with the container's host and port made loopback ones.
    env_file = {
        **container_environment(connection, bucket, mariadb.ca_path.read_text(), port, secret)
    }
    env_file.update(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port))
    home = tmp_path / "home"
    home.mkdir()
    # Like the container: the image's Python first on PATH, nothing of this machine's env.
    env = {"PATH": f"{image_venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), **env_file}
    log_path = tmp_path / "server.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(ENTRYPOINT), *secret_app_argv()],  # the container's command, as docker runs it
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one below
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            assert server.poll() is None, f"server exited:\n{log_path.read_text()[-4000:]}"
            with contextlib.suppress(OSError):
                if get(f"{uri}/health")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"not healthy:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.2)
        healthy_after = time.monotonic() - started

        # entrypoint.sh exec'd the image venv's mlflow: it plus one uvicorn worker, no job runners.
        assert str(image_venv / "bin" / "mlflow") in cmdline(server.pid)
        tree = [server.pid, *descendants(server.pid)]
        assert len(tree) == 2, [cmdline(pid) for pid in tree]
        assert all(str(image_venv) in cmdline(pid) for pid in tree)

        # The image's HEALTHCHECK, against the real server.
        check = subprocess.run([str(ENTRYPOINT), "healthcheck"], env=env, timeout=30, check=False)
        assert check.returncode == 0

        # Only the run's secret opens it (the container listens on 0.0.0.0: any local
        # process could reach it otherwise).
        for wrong in (None, "wrong", secret[:-1]):
            assert get(f"{uri}/", wrong)[0] == 401
            assert get(f"{uri}/api/2.0/mlflow/experiments/search", wrong)[0] == 401
        status, content_type, body = get(f"{uri}/", secret)
        assert status == 200 and content_type.startswith("text/html")
        assert body.lstrip().lower().startswith(b"<!doctype html>")
        assert get(f"{uri}/version", secret)[2].decode() == lock()["mlflow"]

        # The tutorial's tracking.py, with nothing but the export line's two variables.
        os.environ["MLFLOW_TRACKING_TOKEN"] = secret
        run_tracking_script(uri, tmp_path / "work")

        # The dev environment's stock client: a batch, an artifact up and back down, a search.
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag

        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("image-venv-batch")
        run_id = client.create_run(experiment).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric("loss", 1.0 / (step + 1), now, step) for step in range(50)],
            params=[Param("lr", "0.01"), Param("LR", "0.1")],  # utf8mb4_bin: both stored
            tags=[RunTag("image", "venv")],
        )
        (tmp_path / "model.json").write_text(json.dumps({"weights": [1, 2, 3]}))
        client.log_artifact(run_id, str(tmp_path / "model.json"), "model")
        downloaded = client.download_artifacts(run_id, "model/model.json", str(tmp_path))
        assert json.loads(Path(downloaded).read_text()) == {"weights": [1, 2, 3]}
        client.set_terminated(run_id)
        found = client.search_runs([experiment], "metrics.loss < 0.05 and params.LR = '0.1'")
        assert [r.info.run_id for r in found] == [run_id]
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        stop_group(server.pid, server, timeout=30)  # the helper's own group stop
    assert not left_after(tree, 10), "server processes left"
    print(
        f"\n[image venv] entrypoint.sh -> healthy on MariaDB (first start migrates): "
        f"{healthy_after:.1f}s",
        file=sys.__stdout__,
    )

    # Rows in the project's own schema...
    runs = dict(project.query("SELECT run_uuid, status FROM runs"))
    assert len(runs) == 2 and set(runs.values()) == {"FINISHED"}
    assert project.query(
        "SELECT count(*) FROM metrics WHERE run_uuid = %s AND `key` = 'loss'", (run_id,)
    ) == [(50,)]
    assert sorted(
        project.query("SELECT `key`, value FROM params WHERE run_uuid = %s", (run_id,))
    ) == [("LR", "0.1"), ("lr", "0.01")]
    [script_run] = [r for r in runs if r != run_id]
    assert project.query(
        "SELECT count(*) FROM metrics WHERE run_uuid = %s AND `key` = 'foo'", (script_run,)
    ) == [(3,)]
    # ... and the artifacts in the bucket, under the project's prefix, through the server.
    s3 = boto3.client(
        "s3",
        endpoint_url=bucket["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id=bucket["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=bucket["AWS_SECRET_ACCESS_KEY"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    prefix = f"{project.name}/"
    [tutorial] = [k for k in keys if k.endswith(f"/{script_run}/artifacts/test.txt")]
    [model] = [k for k in keys if k.endswith(f"/{run_id}/artifacts/model/model.json")]
    assert tutorial.startswith(prefix) and model.startswith(prefix)
    assert s3.get_object(Bucket=BUCKET, Key=tutorial)["Body"].read() == b"hello world!"
