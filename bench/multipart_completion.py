"""Why presigned uploads trail boto3 on moto: a multipart upload's parts and its completion timed
apart, side by side in one run on the tests' moto (``tests/support/moto_ranged.py``).

    .venv/bin/python bench/multipart_completion.py             # 1 GiB, 2 rounds (~3 min)
    .venv/bin/python bench/multipart_completion.py --size 200M --rounds 3

Per round, the same file three ways:

- (c) ``boto3 upload_file`` with its defaults (8 MiB parts, 10 threads): boto3 1.36+ names a
  CRC32 checksum at CreateMultipartUpload and sends one with each part;
- (b) MLflow's presigned shape: the parts PUT on presigned part URLs by the stock client's part
  function (``HttpArtifactRepository._upload_part``, i.e. ``mlflow_aws/presigned_client.py``
  once installed; 16 MiB, MLflow's ``min(2 x CPUs, 20)`` threads) and completed by the server's
  boto3 call: no checksum is named (MLflow's client has none to send);
- (c0) boto3 ``upload_part`` with no checksum named, the parts and threads of (b).

An upload that names no checksum gets S3's default, a full-object CRC64NVME, which AWS computes
as the bytes arrive; moto (5.x) computes it over the whole object when the upload completes
(``moto/s3/models.py``, ``FakeMultipart``: "defaults to CRC64NVME when none specified"), in the
completion request. So on moto the completion of (b) and (c0) costs seconds per GiB that it does
not cost (c), and that real S3 does not charge at the end. The table shows parts and completion
apart: (b)'s parts against (c0)'s say what the client does; the completion is moto's.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import log, nothing_left_behind, table, workdir
from mlflow_aws.artifact_settings import MIB, MULTIPART_UPLOAD_CHUNK_SIZE
from tests.support.services import running_moto

BUCKET = "mlflow-aws-bench-completion"
BOTO3_PART = 8 * MIB  # boto3's TransferConfig default


def parse_size(text: str) -> int:
    units = {"M": MIB, "G": 1024 * MIB}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def threads() -> int:
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    return int(HttpArtifactRepository("http://127.0.0.1:1/x").max_workers)


def timed_multipart(s3: Any, key: str, source: Path, part: int, send: Any) -> tuple[float, float]:
    """(seconds for the parts, seconds for the completion) of one upload; ``send(number, url
    or None, offset)`` uploads a part and returns its ETag."""
    size = source.stat().st_size
    started = time.perf_counter()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    numbers = range(1, -(-size // part) + 1)
    with ThreadPoolExecutor(threads()) as pool:
        etags = list(pool.map(lambda n: send(upload_id, n, (n - 1) * part), numbers))
    parted = time.perf_counter()
    parts = [{"PartNumber": n, "ETag": e} for n, e in zip(numbers, etags, strict=True)]
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    return parted - started, time.perf_counter() - parted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size, e.g. 200M, 1G (default: 1G)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    size = parse_size(args.size)

    import boto3
    import mlflow  # noqa: F401  (installs mlflow_aws/presigned_client.py, as in a user's script)
    from boto3.s3.transfer import TransferConfig
    from mlflow.entities.multipart_upload import MultipartUploadCredential
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    rows: list[list[str]] = []
    with nothing_left_behind(), workdir() as directory, running_moto() as moto:
        source = directory / "checkpoint.bin"
        with source.open("wb") as out:
            for _ in range(size // MIB):
                out.write(os.urandom(MIB))
            out.write(os.urandom(size % MIB))
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        figures: dict[str, list[tuple[float, float]]] = {"b": [], "c": [], "c0": []}
        marks: dict[str, float] = {}

        def completing(**_: Any) -> None:  # a handler that returns a value would skip the call
            marks["complete"] = time.perf_counter()

        s3.meta.events.register("before-call.s3.CompleteMultipartUpload", completing)
        for round_number in range(args.rounds):
            log(f"round {round_number + 1} of {args.rounds}: {size // MIB} MiB three ways")
            started = time.perf_counter()
            s3.upload_file(str(source), BUCKET, f"c-{round_number}", Config=TransferConfig())
            ended = time.perf_counter()
            figures["c"].append((marks["complete"] - started, ended - marks["complete"]))

            def presigned(key: str) -> Any:
                def send(upload_id: str, number: int, offset: int) -> str:
                    url = s3.generate_presigned_url("upload_part", Params={
                        "Bucket": BUCKET, "Key": key, "UploadId": upload_id, "PartNumber": number,
                    })  # fmt: skip
                    credential = MultipartUploadCredential(url=url, part_number=number, headers={})
                    return str(HttpArtifactRepository._upload_part(
                        credential=credential, local_file=str(source),
                        size=MULTIPART_UPLOAD_CHUNK_SIZE, start_byte=offset,
                    ).etag)  # fmt: skip

                return send

            key = f"b-{round_number}"
            figures["b"].append(timed_multipart(s3, key, source, MULTIPART_UPLOAD_CHUNK_SIZE,
                                                presigned(key)))  # fmt: skip

            def plain(key: str) -> Any:
                def send(upload_id: str, number: int, offset: int) -> str:
                    with source.open("rb") as file:
                        file.seek(offset)
                        body = file.read(MULTIPART_UPLOAD_CHUNK_SIZE)
                    return str(s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id,
                                              PartNumber=number, Body=body)["ETag"])  # fmt: skip

                return send

            key = f"c0-{round_number}"
            figures["c0"].append(timed_multipart(s3, key, source, MULTIPART_UPLOAD_CHUNK_SIZE,
                                                 plain(key)))  # fmt: skip
        labels = {
            "c": f"(c) boto3 upload_file ({BOTO3_PART // MIB} MiB parts, 10 threads, CRC32)",
            "b": f"(b) presigned parts, MLflow's part PUT ({MULTIPART_UPLOAD_CHUNK_SIZE // MIB} "
            f"MiB, {threads()} threads), no checksum",
            "c0": f"(c0) boto3 upload_part ({MULTIPART_UPLOAD_CHUNK_SIZE // MIB} MiB, "
            f"{threads()} threads), no checksum",
        }
        total_c = [p + c for p, c in figures["c"]]
        for name in ("c", "b", "c0"):
            for index, (parts, completion) in enumerate(figures[name]):
                total = parts + completion
                rows.append([
                    labels[name], str(index + 1), f"{size / MIB / parts:.0f} MiB/s",
                    f"{completion:.1f} s ({completion / total:.0%})",
                    f"{size / MIB / total:.0f} MiB/s", f"{total_c[index] / total:.0%}",
                ])  # fmt: skip
    print()
    print(table(["upload", "round", "parts alone", "completion (share)", "whole upload",
                 "of (c)"], rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
