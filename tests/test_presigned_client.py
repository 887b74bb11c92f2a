"""How the stock MLflow client moves presigned bytes once mlflow-aws is installed
(``mlflow_aws/presigned_client.py``): every download range byte-exact at its offset, read in
pieces, an answer that is not the range refused (then retried by MLflow) instead of written into
the file; an upload part that meets a transient error sent again instead of aborting the upload.
Against a small HTTP store on loopback that answers as told; the real S3 path (moto, the three
servers, 1 GiB byte-exact, the client's memory) is ``tests/test_artifacts_presigned.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

MIB = 1 << 20
OBJECT = os.urandom(3 * MIB + 12345)  # not a multiple of the 1 MiB read: the last piece is short


class Store(ThreadingHTTPServer):
    """Serves OBJECT at /object as S3 does (206 and the range) unless told otherwise for the
    next ``faults`` requests: ``ignore-range`` (200 and the whole object), ``long`` (206 and
    one byte too many), ``cut`` (206, Content-Length of the range, half of it sent, closed);
    a PUT is stored in ``parts`` and answered with its ETag, or for ``busy`` with S3's 503
    SlowDown."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.faults: list[str] = []
        self.requests: list[str] = []
        self.parts: list[bytes] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a refused answer is what these tests provoke

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/object?X-Amz-Signature=abc"


class Handler(BaseHTTPRequestHandler):
    server: Store
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        store = self.server
        store.requests.append(self.headers.get("Range", ""))
        if not self.path.startswith("/object"):
            self.send_error(404)
            return
        fault = store.faults.pop(0) if store.faults else ""
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        body = OBJECT[first : last + 1]
        status = 206
        if fault == "ignore-range":
            status, body = 200, OBJECT
        elif fault == "long":
            body = OBJECT[first : last + 2]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(OBJECT)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def do_PUT(self) -> None:
        store = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        store.requests.append(f"PUT {len(body)}")
        if store.faults and store.faults[0] == "busy":
            store.faults.pop(0)
            answer = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        store.parts.append(body)
        self.send_response(200)
        self.send_header("ETag", f'"etag-{len(store.parts)}"')
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture()
def store() -> Iterator[Store]:
    server = Store()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mlflows_download_chunk() -> Any:
    """What MLflow's HTTP artifact repository calls for each range (it binds the name when it
    is imported), in this process where nothing but ``import mlflow`` installed mlflow-aws."""
    from mlflow.store.artifact import http_artifact_repo

    return http_artifact_repo.download_chunk


def sized_file(tmp_path: Path, fill: bytes = b"\0") -> Path:
    path = tmp_path / "download"
    path.write_bytes(fill * len(OBJECT))
    return path


def test_a_range_lands_byte_exact_at_its_offset_and_nothing_else_changes(
    store: Store, tmp_path: Path
) -> None:
    path = sized_file(tmp_path, b"\xaa")
    first, last = MIB - 7, 3 * MIB + 100
    mlflows_download_chunk()(range_start=first, range_end=last, headers={"x-amz-meta": "1"},
                             download_path=str(path), http_uri=store.url)  # fmt: skip
    got = path.read_bytes()
    assert got[first : last + 1] == OBJECT[first : last + 1]
    assert got[:first] == b"\xaa" * first and got[last + 1 :] == b"\xaa" * (len(OBJECT) - last - 1)
    assert store.requests == [f"bytes={first}-{last}"]


@pytest.mark.parametrize("fault", ["ignore-range", "long", "cut"])
def test_an_answer_that_is_not_the_range_is_refused_and_never_written_past_it(
    store: Store, tmp_path: Path, fault: str
) -> None:
    """MLflow 3.17.2's own reader wrote a 200's whole object at the range's offset (the file
    then held the object twice over, and no error was raised)."""
    path = sized_file(tmp_path, b"\xaa")
    first, last = MIB, 2 * MIB - 1
    store.faults.append(fault)
    with pytest.raises(Exception) as raised:
        mlflows_download_chunk()(range_start=first, range_end=last, headers={},
                                 download_path=str(path), http_uri=store.url)  # fmt: skip
    if fault != "cut":
        assert "range" in str(raised.value) or "asked for" in str(raised.value)
    got = path.read_bytes()
    assert len(got) == len(OBJECT), "bytes were written past the file's end"
    assert got[:first] == b"\xaa" * first, "bytes were written before the range"
    assert got[last + 1 :] == b"\xaa" * (len(OBJECT) - last - 1), "bytes written past the range"


def test_mlflow_retries_a_refused_range_and_the_file_comes_out_whole(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole of MLflow's presigned download (``HttpArtifactRepository._multipart_download``,
    1 MiB ranges): two ranges answered wrongly at first are asked again, and the file is the
    object byte for byte."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    base = store.url.split("/object")[0]
    repository = HttpArtifactRepository(f"{base}/api/2.0/mlflow-artifacts/artifacts/0/run")
    store.faults.extend(["ignore-range", "cut"])

    presigned = SimpleNamespace(url=store.url, headers={})  # MLflow's presigned answer
    path = tmp_path / "model.bin"
    repository._multipart_download(presigned, "model.bin", str(path), len(OBJECT), MIB)
    assert path.read_bytes() == OBJECT
    ranges = [r for r in store.requests if r]
    assert len(ranges) == 4 + 2, ranges  # four ranges, two of them twice


def upload_part_url(store: Store, number: int) -> str:
    return store.url.replace("/object?", f"/object?partNumber={number}&uploadId=u&")


def test_an_upload_part_that_meets_a_slowdown_is_sent_again_not_the_upload_aborted(
    store: Store, tmp_path: Path
) -> None:
    """MLflow 3.17.2 PUT each part once (a bare ``requests.put``): S3's 503 SlowDown on one part
    failed it, and MLflow then aborted the whole multipart upload."""
    from mlflow.entities.multipart_upload import MultipartUploadCredential
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    source = tmp_path / "checkpoint.bin"
    source.write_bytes(OBJECT)
    store.faults.append("busy")
    credential = MultipartUploadCredential(url=upload_part_url(store, 2), part_number=2,
                                           headers={"x-amz-meta-part": "2"})  # fmt: skip
    part = HttpArtifactRepository._upload_part(
        credential=credential, local_file=str(source), size=MIB, start_byte=MIB
    )
    assert (part.part_number, part.etag) == (2, '"etag-1"')
    assert store.parts == [OBJECT[MIB : 2 * MIB]]
    assert store.requests == [f"PUT {MIB}", f"PUT {MIB}"]


def test_a_fresh_process_gets_it_from_import_mlflow_alone(store: Store, tmp_path: Path) -> None:
    """No line of the user's code: a script that only imports mlflow refuses a range-ignoring
    answer and sends a part again after a SlowDown (the entry point
    ``mlflow.run_context_provider`` loads while mlflow is imported)."""
    path = sized_file(tmp_path)
    store.faults.extend(["ignore-range", "busy"])
    script = (
        "import sys\n"
        "from mlflow.entities.multipart_upload import MultipartUploadCredential\n"
        "from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository\n"
        "from mlflow.store.artifact.http_artifact_repo import download_chunk\n"
        "try:\n"
        f"    download_chunk(range_start=0, range_end={MIB - 1}, headers={{}},\n"
        "                   download_path=sys.argv[1], http_uri=sys.argv[2])\n"
        "except OSError as e:\n"
        "    print('refused:', e)\n"
        "credential = MultipartUploadCredential(url=sys.argv[3], part_number=1, headers={})\n"
        "part = HttpArtifactRepository._upload_part(credential=credential,\n"
        "    local_file=sys.argv[1], size=1024, start_byte=0)\n"
        "print('uploaded:', part.etag)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AWS")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), store.url, upload_part_url(store, 1)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused:" in result.stdout and "206" in result.stdout, result.stdout
    assert 'uploaded: "etag-1"' in result.stdout, result.stdout
    assert path.read_bytes() == b"\0" * len(OBJECT)
