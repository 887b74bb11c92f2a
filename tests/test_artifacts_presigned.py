"""Artifacts straight to and from S3 on every path, with the lines the helper prints and nothing
else in the user's environment: the laptop server (``helper serve --runtime process``, its
server role's credentials), the central app with sign-in (``--app-name aws-iam`` and the
client plugin, lines from ``helper env --remote``) and the signing proxy (``helper serve
--remote``). Real MLflow server and client, MariaDB (TLS), moto S3.

A 1 GiB artifact (every MiB distinct, so a misplaced part shows) goes up and comes back
byte-exact on each path while the server reads and writes (``/proc/<pid>/io``) under 1% of its
bytes: the presigned path, not the proxied one, is what the printed lines lead to. The server
refuses to sign a URL outside the project's prefix; a killed upload leaves no artifact. What
moto cannot show: it answers presigned URLs with a 500 while it enforces IAM, so that the
server's *role* cannot write other prefixes is shown in ``tests/test_server_role_isolation.py``
and here only that the URLs carry the role's (session) credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from mlflow_aws.artifact_settings import MULTIPART_UPLOAD_CHUNK_SIZE, printed_settings
from mlflow_aws.part_urls import download_url_seconds, part_url_seconds
from tests.support.central import (
    CentralServer,
    Identities,
    clean_env,
    client_aws_env,
    get,
    make_identities,
    outputs_with_tracking_uri,
    running_central_server,
)
from tests.support.helper_run import (  # noqa: F401 (fixtures)
    aws,
    helper_env,
    project_with_outputs,
    role_arn,
    run_helper,
    serving,
)
from tests.support.processes import cmdline, environ, io_bytes
from tests.support.services import MariaDB, MotoServer, free_port
from tests.support.stack_on_moto import Project, aws_client, create_project

pytestmark = pytest.mark.slow

MIB = 1 << 20
GIB = 1 << 30
PROJECT = "presigned"
BUCKET = "mlflow-aws-central-presigned"  # stack "central" (tests/support/central.py): its prefix
REGION = "eu-west-1"
CLIENT = Path(__file__).resolve().parent / "support" / "artifact_client.py"


def project_marker(moto: MotoServer) -> str:
    from tests.support.central import marker_url

    return marker_url(moto, f"s3://{BUCKET}/{PROJECT}")


HANDLED_LIMIT = 0.01
# The client's memory while it downloads presigned ranges: MLflow 3.17.2's own reader held each
# 16 MiB range twice per thread (requests joins 10 KiB reads, then writes it), 100+ MiB on four
# threads; mlflow_aws/presigned_client.py streams 1 MiB per thread into the file.
DOWNLOAD_GROWTH_LIMIT_MIB = 32.0


class RoundTrip(NamedTuple):
    up_s: float
    down_s: float
    handled: float  # the share of the bytes the server handled (in + out over twice the size)
    download_growth_mib: float  # the client's peak memory above its start during the download


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    path = tmp_path_factory.mktemp("big") / "checkpoint.bin"
    block, digest = os.urandom(MIB), hashlib.sha256()
    with path.open("wb") as out:
        for i in range(GIB // MIB):
            piece = i.to_bytes(8, "big") + block[8:]
            out.write(piece)
            digest.update(piece)
    yield path, digest.hexdigest()
    path.unlink()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def exported(lines: list[str]) -> dict[str, str]:
    """The variables of the ``export K=V`` lines a helper printed."""
    found = {}
    for line in lines:
        if line.startswith("export "):
            for word in shlex.split(line.removeprefix("export ")):
                key, _, value = word.partition("=")
                found[key] = value
    return found


def without_token(variables: dict[str, str]) -> dict[str, str]:
    """The lines' variables but the run's secret (MLFLOW_TRACKING_TOKEN), which must be there."""
    assert variables.get("MLFLOW_TRACKING_TOKEN"), variables
    return {k: v for k, v in variables.items() if k != "MLFLOW_TRACKING_TOKEN"}


def user_env(variables: dict[str, str], home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), **variables}


def round_trip(
    env: dict[str, str], big: tuple[Path, str], work: Path, server_pids: list[int]
) -> RoundTrip:
    """The artifact up and down with the stock client in a script of its own; byte-exact or
    fail."""
    source, digest = big
    down = work / "down"
    down.mkdir(parents=True, exist_ok=True)
    before = io_bytes(server_pids)
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(source), str(down)],
        env=env, cwd=work, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    handled = (io_bytes(server_pids) - before) / (2 * source.stat().st_size)
    assert result.returncode == 0, result.stderr[-4000:]
    _, up_s, down_s, growth = result.stdout.split()
    copy = down / source.name
    assert copy.stat().st_size == source.stat().st_size
    assert sha256_of(copy) == digest, "the artifact came back different"
    copy.unlink()
    return RoundTrip(float(up_s), float(down_s), handled, float(growth))


def record(figure: str) -> None:
    print(f"\n[artifact figures] {figure}", file=sys.__stdout__, flush=True)


# -- the laptop server -----------------------------------------------------------------------


def test_a_1_gib_artifact_both_ways_through_the_laptop_server(
    mariadb: MariaDB, aws: dict[str, str], big_file: tuple[Path, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project, outputs = project_with_outputs(mariadb, aws, "laptop-presigned", tmp_path)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs),
            "--runtime", "process", "--port", str(port)]  # fmt: skip
    with serving(argv, helper_env(aws, tmp_dir), tmp_path, port) as running:
        deadline = time.monotonic() + 10
        want = 2 + len(printed_settings("presigned"))
        while len(exported(running.stdout_lines)) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        variables = exported(running.stdout_lines)
        assert without_token(variables) == {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
            **printed_settings("presigned"),
        }
        assert "artifacts: presigned" in running.stderr()
        server = [pid for pid in running.server_pids() if "watchdog" not in cmdline(pid)]
        trip = round_trip(
            user_env(variables, tmp_path / "home"), big_file, tmp_path / "work", server
        )
        record(f"laptop server, 1 GiB: up {trip.up_s:.1f} s, down {trip.down_s:.1f} s, server "
               f"handled {trip.handled:.3%} of the bytes, client +{trip.download_growth_mib:.0f} "
               "MiB while downloading")  # fmt: skip
        assert trip.handled <= HANDLED_LIMIT
        assert trip.download_growth_mib <= DOWNLOAD_GROWTH_LIMIT_MIB

        # The URLs are signed with the server's own credentials: its role's session (the
        # helper's loopback credentials endpoint), never the teammate's keys.
        from mlflow import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", variables["MLFLOW_TRACKING_TOKEN"])
        client = MlflowClient(tracking_uri=variables["MLFLOW_TRACKING_URI"])
        [run] = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], max_results=1
        )
        path = f"{run.info.experiment_id}/{run.info.run_id}/artifacts/{big_file[0].name}"
        status, body = get(
            f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/presigned/{path}",
            {"Authorization": f"Bearer {variables['MLFLOW_TRACKING_TOKEN']}"},
        )
        assert status == 200, body
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(json.loads(body)["url"]).query)
        key_id = query["X-Amz-Credential"][0].split("/")[0]
        assert key_id != aws["AWS_ACCESS_KEY_ID"] and "X-Amz-Security-Token" in query
        # The download URL lives as long as the 1 GiB could take over a slow link, not 300 s.
        assert int(query["X-Amz-Expires"][0]) == download_url_seconds(GIB) == 2108
        # Part URLs live as long as the whole file takes over a slow link (mlflow_aws/part_urls.py),
        # not boto3's hour.
        assert part_url_expiries(f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts",
                                 {"Authorization": f"Bearer {variables['MLFLOW_TRACKING_TOKEN']}"},
                                 f"{run.info.experiment_id}/{run.info.run_id}/artifacts",
                                 3) == {part_url_seconds(3)}  # fmt: skip
        server_env = "\n".join(environ(pid) for pid in server)
        assert "AWS_CONTAINER_CREDENTIALS_FULL_URI=" in server_env  # the role's, via the helper
        assert "AWS_ACCESS_KEY_ID=" not in server_env
    assert project.query("SELECT COUNT(*) FROM runs") == [(1,)]


# -- the central app --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identities(moto: MotoServer) -> Identities:
    return make_identities(moto)


@pytest.fixture(scope="module")
def project(mariadb: MariaDB, moto: MotoServer) -> Project:
    s3 = aws_client("s3", moto.aws_env())
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return create_project(mariadb, PROJECT)


@pytest.fixture(scope="module")
def central(
    moto: MotoServer, project: Project, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CentralServer]:
    log_dir = tmp_path_factory.mktemp("central")
    uri = project.mariadb.url(project.user, project.password, project.schema)
    with running_central_server(moto, uri, f"s3://{BUCKET}/{PROJECT}", PROJECT, log_dir) as server:
        yield server


def outputs_file(moto: MotoServer, project: Project, central: CentralServer, path: Path) -> Path:
    path.write_text(outputs_with_tracking_uri(moto, project, BUCKET, central.tracking_uri))
    return path


def test_a_1_gib_artifact_both_ways_through_the_central_app_with_sign_in(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    big_file: tuple[Path, str], tmp_path: Path,
) -> None:  # fmt: skip
    outputs = outputs_file(moto, project, central, tmp_path / "outputs.json")
    printed = run_helper(["env", "--remote", "--project", PROJECT, "--outputs", str(outputs)],
                         clean_env(**moto.aws_env()))  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    variables = exported(printed.stdout.splitlines())
    assert variables["MLFLOW_TRACKING_AUTH"] == "aws-iam"
    # The job: its own AWS identity (to sign in) and the printed lines; STS at moto.
    env = user_env({**client_aws_env(moto, identities.allowed_role), **variables}, tmp_path / "h")
    trip = round_trip(env, big_file, tmp_path / "work", central.pids())
    record(f"central app with sign-in (plugin), 1 GiB: up {trip.up_s:.1f} s, down "
           f"{trip.down_s:.1f} s, server handled {trip.handled:.3%} of the bytes, client "
           f"+{trip.download_growth_mib:.0f} MiB while downloading")  # fmt: skip
    assert trip.handled <= HANDLED_LIMIT
    assert trip.download_growth_mib <= DOWNLOAD_GROWTH_LIMIT_MIB


def test_the_plugin_alone_gives_presigned_transfer(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A job configured with only the three sign-in lines still uploads 32 MiB to S3 directly
    (MLflow's own threshold is 500 MiB): the plugin set the sizes."""
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(32 * MIB))
    variables = {"MLFLOW_TRACKING_URI": central.tracking_uri, "MLFLOW_TRACKING_AUTH": "aws-iam",
                 "MLFLOW_AWS_IAM_STS_REGION": REGION}  # fmt: skip
    env = user_env({**client_aws_env(moto, identities.allowed_role), **variables}, tmp_path / "h")
    before = io_bytes(central.pids())
    result = subprocess.run([sys.executable, str(CLIENT), "--upload-only", str(source)], env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Proxied, the server would read and write the file at least twice (socket, S3); presigned
    # it handles a few KB (plus the modules a first artifact request imports: MBs of .pyc).
    assert io_bytes(central.pids()) - before < 0.5 * source.stat().st_size


@contextlib.contextmanager
def signing_proxy(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path, artifacts: str = "auto",
) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """``helper serve --remote``; S3 (moto) is reachable from here, so ``auto`` is presigned
    (that an unreachable S3 makes it proxied is ``test_auto_artifacts_probe_...`` in
    tests/test_helper_unit.py: the sign-in needs this S3 endpoint's name to be moto's)."""
    outputs = outputs_file(moto, project, central, tmp_path / "outputs.json")
    port = free_port()
    env = clean_env(**client_aws_env(moto, identities.allowed_role), PYTHONUNBUFFERED="1")
    argv = ["serve", "--project", PROJECT, "--outputs", str(outputs), "--remote",
            "--port", str(port), "--artifacts", artifacts]  # fmt: skip
    with serving(argv, env, tmp_path, port) as running:
        deadline = time.monotonic() + 10
        want = 2 + len(printed_settings("proxied" if artifacts == "proxied" else "presigned"))
        while len(exported(running.stdout_lines)) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", running


def test_a_1_gib_artifact_both_ways_through_the_signing_proxy(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    big_file: tuple[Path, str], tmp_path: Path,
) -> None:  # fmt: skip
    with signing_proxy(moto, project, central, identities, tmp_path) as (uri, running):
        variables = exported(running.stdout_lines)
        assert without_token(variables) == {
            "MLFLOW_TRACKING_URI": uri,
            **printed_settings("presigned"),
        }
        assert "artifacts: presigned" in running.stderr() and "reachable from here" in (
            running.stderr()
        )
        # No AWS setting at all in the user's script: the proxy signs in, S3 URLs are presigned.
        env = user_env(variables, tmp_path / "home")
        pids = [running.process.pid, *central.pids()]
        trip = round_trip(env, big_file, tmp_path / "work", pids)
    record(f"signing proxy (helper serve --remote), 1 GiB: up {trip.up_s:.1f} s, down "
           f"{trip.down_s:.1f} s, proxy + server handled {trip.handled:.3%} of the bytes, "
           f"client +{trip.download_growth_mib:.0f} MiB while downloading")  # fmt: skip
    assert trip.handled <= HANDLED_LIMIT
    assert trip.download_growth_mib <= DOWNLOAD_GROWTH_LIMIT_MIB


def test_proxied_artifacts_through_the_signing_proxy_and_it_says_so(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path,
) -> None:  # fmt: skip
    source = tmp_path / "small-model.bin"
    source.write_bytes(os.urandom(20 * MIB))
    """For a machine without a route to S3: ``--artifacts proxied`` (what ``auto`` picks when
    S3 does not answer) moves every byte through the server, byte-exact."""
    with signing_proxy(moto, project, central, identities, tmp_path, "proxied") as (
        uri,
        running,
    ):
        variables = exported(running.stdout_lines)
        assert without_token(variables) == {
            "MLFLOW_TRACKING_URI": uri,
            **printed_settings("proxied"),
        }
        assert "artifacts: proxied" in running.stderr() and "as asked" in running.stderr()
        before = io_bytes(central.pids())
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        trip = round_trip(
            user_env(variables, tmp_path / "home"), (source, digest), tmp_path / "work",
            central.pids(),
        )  # fmt: skip
        assert trip.handled >= 1.0  # every byte went through the server (in, spool, out)
        assert io_bytes(central.pids()) > before


# -- what cannot be had ---------------------------------------------------------------------


def signed_paths(body: bytes) -> set[str]:
    """The first two path segments (bucket, prefix) of every signed URL in a response."""
    found = set()
    for url in re.findall(rb"https?://[^\"\s]+X-Amz-Signature[^\"\s]*", body):
        path = urllib.parse.unquote(urllib.parse.urlsplit(url.decode()).path)
        found.add("/".join(posixpath.normpath(path).split("/")[:3]) + "/")
    return found


def signed_outside(body: bytes) -> bool:
    return bool(signed_paths(body) - {f"/{BUCKET}/{PROJECT}/"})


def test_no_url_for_another_projects_prefix_can_be_obtained(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Signed in and allowed, a caller asks the server to sign URLs outside ``presigned/``."""
    from tests.support.central import bearer, token_for

    s3 = aws_client("s3", moto.aws_env())
    s3.put_object(Bucket=BUCKET, Key="other/secret.bin", Body=b"another project's")
    s3.put_object(Bucket=BUCKET, Key=f"{PROJECT}/mine.bin", Body=b"mine")
    token = token_for(moto, identities.allowed_role, central.audience, project_marker(moto))
    headers = {**bearer(token), "Content-Type": "application/json"}
    base = f"{central.tracking_uri}/api/2.0/mlflow-artifacts"
    # The control: the project's own object gets a URL.
    status, body = get(f"{base}/presigned/mine.bin", headers)
    assert status == 200 and b"X-Amz-Signature" in body, body
    escapes = ["../other/secret.bin", "%2E%2E/other/secret.bin", "..%2Fother%2Fsecret.bin",
               "x/../../other/secret.bin", "%252E%252E/other/secret.bin", "/other/secret.bin",
               "//other/secret.bin", f"s3://{BUCKET}/other/secret.bin"]  # fmt: skip
    for escape in escapes:
        status, body = get(f"{base}/presigned/{escape}", headers)
        assert signed_paths(body) <= {f"/{BUCKET}/{PROJECT}/"} or status != 200, (escape, body)
        assert not signed_outside(body), (escape, body)
        data = b'{"path": "secret.bin", "num_parts": 1}'
        status, body = get(f"{base}/mpu/create/{escape}", headers, "POST", data)
        assert not signed_outside(body), (escape, body)
    # Nothing was written outside the project's prefix by any of it.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert [k for k in keys if not k.startswith(f"{PROJECT}/")] == ["other/secret.bin"]
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u["Key"] for u in uploads if not u["Key"].startswith(f"{PROJECT}/")] == []


def part_url_expiries(base: str, headers: dict[str, str], directory: str, num_parts: int,
                      prefix: str | None = None) -> set[int]:  # fmt: skip
    """The X-Amz-Expires of the part URLs ``mpu/create`` hands out for ``num_parts`` parts; every
    URL names one part of one upload under the directory asked for. The upload is aborted."""
    data = json.dumps({"path": "parts.bin", "num_parts": num_parts}).encode()
    status, body = get(f"{base}/mpu/create/{directory}", {**headers,
                       "Content-Type": "application/json"}, "POST", data)  # fmt: skip
    assert status == 200, body
    answer = json.loads(body)
    urls = [urllib.parse.urlsplit(c["url"]) for c in answer["credentials"]]
    assert len(urls) == num_parts
    queries = [urllib.parse.parse_qs(url.query) for url in urls]
    assert sorted(int(q["partNumber"][0]) for q in queries) == list(range(1, num_parts + 1))
    assert {q["uploadId"][0] for q in queries} == {answer["upload_id"]}
    [path] = {urllib.parse.unquote(u.path) for u in urls}  # one object, ...
    assert path.endswith(f"/{directory}/parts.bin"), path
    if prefix is not None:  # ... under the project's prefix
        assert path == f"/{prefix}/{directory}/parts.bin", path
    abort = json.dumps({"path": "parts.bin", "upload_id": answer["upload_id"]}).encode()
    status, body = get(f"{base}/mpu/abort/{directory}", {**headers,
                       "Content-Type": "application/json"}, "POST", abort)  # fmt: skip
    assert status == 200, body
    return {int(q["X-Amz-Expires"][0]) for q in queries}


def test_part_urls_expire_when_the_upload_should_be_done_not_in_an_hour(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
) -> None:  # fmt: skip
    """A leaked part URL is good for writing a part until the client's upload, over a slow link,
    would have started its last part: one part about 1.5 min, a 4 GiB file (256 parts) about
    2.3 h; MLflow's own is an hour whatever the size (too long for one part, too short for a big
    file over a slow link, which then fails half-way). A download URL the same way from the
    file's size, at least 5 minutes (MLflow's: 5 minutes whatever the size)."""
    from tests.support.central import bearer, token_for

    s3 = aws_client("s3", moto.aws_env())
    headers = bearer(token_for(moto, identities.allowed_role, central.audience,
                               project_marker(moto)))  # fmt: skip
    base = f"{central.tracking_uri}/api/2.0/mlflow-artifacts"
    for num_parts, seconds in [(1, 92), (13, 476), (256, 8252)]:
        assert part_url_seconds(num_parts) == seconds
        got = part_url_expiries(base, headers, "expiry", num_parts, f"{BUCKET}/{PROJECT}")
        assert got == {seconds}
    # 7 ranges of 16 MiB over the slow link fit in 5 minutes; one byte more is an eighth range.
    for name, size, seconds in [("model.bin", 5, 300), ("checkpoint.bin", 112 * MIB + 1, 316)]:
        assert download_url_seconds(size) == seconds
        s3.put_object(Bucket=BUCKET, Key=f"{PROJECT}/expiry/{name}", Body=b"\0" * size)
        status, body = get(f"{base}/presigned/expiry/{name}", headers)
        assert status == 200, body
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(json.loads(body)["url"]).query)
        assert int(query["X-Amz-Expires"][0]) == seconds, name
        s3.delete_object(Bucket=BUCKET, Key=f"{PROJECT}/expiry/{name}")
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PROJECT}/expiry/")
    assert uploads.get("Uploads", []) == []  # each aborted through the server


def test_an_interrupted_upload_leaves_no_visible_artifact(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The user's job is killed while its parts go to S3: the run lists no artifact and S3 holds
    no object; what is left is an incomplete upload, which the bucket's lifecycle rule aborts
    after a day (``tests/test_program.py``)."""
    source = tmp_path / "checkpoint.bin"
    with source.open("wb") as out:
        for _ in range(24):
            out.write(os.urandom(16 * MIB))
    s3 = aws_client("s3", moto.aws_env())
    outputs = outputs_file(moto, project, central, tmp_path / "outputs.json")
    printed = run_helper(["env", "--remote", "--project", PROJECT, "--outputs", str(outputs)],
                         clean_env(**moto.aws_env()))  # fmt: skip
    variables = exported(printed.stdout.splitlines())
    env = user_env({**client_aws_env(moto, identities.allowed_role), **variables}, tmp_path / "h")
    before = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])}
    job = subprocess.Popen([sys.executable, str(CLIENT), "--upload-only", str(source)], env=env,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert job.stdout is not None
        run_id = job.stdout.readline().strip()
        deadline = time.monotonic() + 120
        started: list[dict[str, Any]] = []
        while time.monotonic() < deadline and job.poll() is None:
            uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
            started = [u for u in uploads if u["UploadId"] not in before]
            if started and s3.list_parts(Bucket=BUCKET, Key=started[0]["Key"],
                                         UploadId=started[0]["UploadId"]).get("Parts"):  # fmt: skip
                break
            time.sleep(0.05)
        assert job.poll() is None, "the upload finished before it could be interrupted"
        os.killpg(job.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    [upload] = started
    parts = s3.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]
    assert 0 < len(parts) < source.stat().st_size // MULTIPART_UPLOAD_CHUNK_SIZE
    from tests.support.central import bearer, token_for

    status, body = get(
        f"{central.tracking_uri}/api/2.0/mlflow/artifacts/list?run_id={run_id}",
        bearer(token_for(moto, identities.allowed_role, central.audience, project_marker(moto))),
    )
    assert status == 200 and json.loads(body).get("files", []) == [], body
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=BUCKET, Key=upload["Key"])
    s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


# -- the MLflow UI in a browser ----------------------------------------------------------------

# What the UI's download button does (mlflow 3.17.2, ArtifactView onDownloadClick): when
# server-info says multipart_downloads_enabled and the run's artifact URI is mlflow-artifacts:,
# it asks ajax-api/2.0/mlflow-artifacts/presigned/<path> and navigates to the URL
# (window.location.assign): a navigation, which S3's CORS rules never see; otherwise it fetches
# the file through the server (get-artifact) into a blob. The test clicks the real button and
# reads the browser's own request log to tell the two apart.
DOWNLOAD_BUTTON = (
    '[data-component-id="codegen_mlflow_app_src_experiment-tracking_components_'
    'artifactview.tsx_337"]'
)


@dataclass
class BrowserDownload:
    data: bytes
    navigations: list[str]  # the documents the tab loaded after the click
    through_server: list[str]  # requests for the file's bytes through the server


def click_download_in_the_ui(uri: str, secret: str | None, artifact: LoggedArtifact,
                             tmp_path: Path) -> BrowserDownload:  # fmt: skip
    """Sign the browser in with the one-time URL (``secret``; None: nothing to sign in to), open
    the run's artifacts, select the file and click the download button; the file as saved by
    the browser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mlflow_aws import run_secret
    from tests.support.browser import chromium_driver

    directory = tmp_path / "downloads"
    directory.mkdir(parents=True, exist_ok=True)
    driver = chromium_driver(tmp_path, performance_log=True)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(directory)}
        )
        if secret is not None:
            driver.get(run_secret.browser_url(uri, secret))  # signs the browser in (a cookie)
        driver.get(f"{uri}/#/experiments/{artifact.experiment_id}/runs/{artifact.run_id}"
                   "/artifacts")  # fmt: skip
        wait = WebDriverWait(driver, 90)
        wait.until(
            lambda d: d.find_elements(By.XPATH, f"//*[normalize-space(text())='{artifact.name}']")
        )[0].click()
        try:
            button = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, DOWNLOAD_BUTTON))[0]
        except Exception:
            buttons = [b.get_attribute("outerHTML")[:300] for b in
                       driver.find_elements(By.TAG_NAME, "button")]  # fmt: skip
            pytest.fail(f"no download button; the page's buttons: {buttons}")
        driver.get_log("performance")  # what came before the click
        button.click()
        deadline, got = time.monotonic() + 120, None
        while got is None and time.monotonic() < deadline:
            done = [p for p in directory.iterdir() if not p.name.endswith(".crdownload")]
            got = done[0].read_bytes() if done else None
            time.sleep(0.2)
        if got is None:
            pytest.fail(f"nothing downloaded; the browser is at {driver.current_url[:80]}")
        sent = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                sent.append(
                    (message["params"].get("type", ""), message["params"]["request"]["url"])
                )
    finally:
        driver.quit()
    return BrowserDownload(
        got,
        [url for kind, url in sent if kind == "Document"],
        [
            url
            for kind, url in sent
            if "get-artifact" in url or "/mlflow-artifacts/artifacts/" in url
        ],
    )


@dataclass
class LoggedArtifact:
    experiment_id: str
    run_id: str
    name: str
    data: bytes


def log_small_artifact(variables: dict[str, str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> LoggedArtifact:  # fmt: skip
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", variables["MLFLOW_TRACKING_TOKEN"])
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(3 * MIB))
    client = MlflowClient(tracking_uri=variables["MLFLOW_TRACKING_URI"])
    run = client.create_run(client.create_experiment(f"ui-{time.time_ns()}"))
    client.log_artifact(run.info.run_id, str(source))
    return LoggedArtifact(run.info.experiment_id, run.info.run_id, source.name, source.read_bytes())


def assert_presigned_navigation(download: BrowserDownload, artifact: LoggedArtifact,
                                prefix: str | None = None) -> None:  # fmt: skip
    """The browser saved the file byte-exact by loading one signed S3 URL (of the project's
    prefix), never through the server."""
    assert download.data == artifact.data
    assert download.through_server == []
    [signed] = [url for url in download.navigations if "X-Amz-Signature=" in url]
    path = urllib.parse.unquote(urllib.parse.urlsplit(signed).path)
    assert path.endswith(f"/{artifact.experiment_id}/{artifact.run_id}/artifacts/{artifact.name}")
    if prefix is not None:
        assert path.startswith(f"/{prefix}/"), path


def test_the_ui_download_button_fetches_from_s3_on_the_laptop_server(
    mariadb: MariaDB, aws: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    project, outputs = project_with_outputs(mariadb, aws, "laptop-ui", tmp_path)
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    port = free_port()
    argv = ["serve", "--project", project.name, "--outputs", str(outputs),
            "--runtime", "process", "--port", str(port)]  # fmt: skip
    with serving(argv, helper_env(aws, tmp_dir), tmp_path, port) as running:
        deadline = time.monotonic() + 10
        while "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS" not in exported(running.stdout_lines):
            assert time.monotonic() < deadline, running.stdout_lines
            time.sleep(0.05)
        variables = exported(running.stdout_lines)
        artifact = log_small_artifact(variables, tmp_path, monkeypatch)
        download = click_download_in_the_ui(variables["MLFLOW_TRACKING_URI"],
                                            variables["MLFLOW_TRACKING_TOKEN"], artifact,
                                            tmp_path)  # fmt: skip
    assert_presigned_navigation(download, artifact)


def test_the_ui_download_button_fetches_from_s3_through_the_signing_proxy(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The browser's one way to the central app with sign-in: ``helper serve --remote``, which
    forwards to the app under its prefix (``/<project>``)."""
    with signing_proxy(moto, project, central, identities, tmp_path) as (uri, running):
        variables = exported(running.stdout_lines)
        artifact = log_small_artifact(variables, tmp_path, monkeypatch)
        download = click_download_in_the_ui(uri, variables["MLFLOW_TRACKING_TOKEN"], artifact,
                                            tmp_path)  # fmt: skip
    assert_presigned_navigation(download, artifact, f"{BUCKET}/{PROJECT}")
    # No CORS rule is involved: moto's bucket has none (and the program sets none).
    with pytest.raises(aws_client("s3", moto.aws_env()).exceptions.ClientError):
        aws_client("s3", moto.aws_env()).get_bucket_cors(Bucket=BUCKET)


@contextlib.contextmanager
def token_adding_relay(central: CentralServer, token: str) -> Iterator[tuple[str, list[str]]]:
    """Stands in for a browser that signs in to the central app itself: every request goes on
    to the app unchanged but for its bearer token (no browser can make one, which is why users
    reach the UI through ``helper serve --remote``). The address keeps the app's prefix; the
    paths it forwarded are listed."""
    import http.client
    import http.server
    import threading

    forwarded: list[str] = []
    dropped = {"host", "authorization", "connection", "cookie", "content-length"}

    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            headers["Authorization"] = f"Bearer {token}"
            forwarded.append(self.path)
            upstream = http.client.HTTPConnection("127.0.0.1", central.port, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{PROJECT}", forwarded
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_ui_download_button_fetches_from_s3_from_the_central_app_under_its_prefix(
    moto: MotoServer, project: Project, central: CentralServer, identities: Identities,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The UI served by the central app with sign-in at ``/<project>`` (the load balancer's
    path): the page's relative ``ajax-api`` calls stay under the prefix, the app signs the URL,
    the browser loads it from S3 (no CORS rule)."""
    from tests.support.central import token_for

    token = token_for(moto, identities.allowed_role, central.audience, project_marker(moto))
    with token_adding_relay(central, token) as (uri, forwarded):
        variables = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_TOKEN": "the relay's"}
        artifact = log_small_artifact(variables, tmp_path, monkeypatch)
        download = click_download_in_the_ui(uri, None, artifact, tmp_path)
    assert_presigned_navigation(download, artifact, f"{BUCKET}/{PROJECT}")
    path = f"{artifact.experiment_id}/{artifact.run_id}/artifacts/{artifact.name}"
    assert f"/{PROJECT}/ajax-api/2.0/mlflow-artifacts/presigned/{path}" in forwarded
    assert all(p.startswith(f"/{PROJECT}/") for p in forwarded), forwarded
