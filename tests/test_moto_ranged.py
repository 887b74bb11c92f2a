"""The tests' moto (``tests/support/moto_ranged.py``): a ranged GET reads only its range, answers
the exact bytes and is otherwise moto's answer. Every request goes to it and to a stock
``moto.server`` side by side, on presigned URLs as MLflow's client uses them; the bytes are also
checked against the source, so a moto that got a range wrong would not pass as "the same"."""

from __future__ import annotations

import contextlib
import hashlib
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.support.processes import cmdline, io_bytes
from tests.support.services import RANGED_MOTO, STOCK_MOTO, MotoServer, running_moto

pytestmark = pytest.mark.slow

MIB = 1 << 20
BUCKET = "moto-ranged"
# On disk in moto (it keeps a value of more than ~5 MiB in a temporary file), distinct bytes.
SIZE = 12 * MIB + 17
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(SIZE // 32 + 1))
DATA = DATA[:SIZE]
# Headers that name the request or the moment, not the answer.
VOLATILE = {"date", "server", "x-amz-request-id", "x-amzn-requestid", "x-amz-id-2",
            "last-modified", "x-amz-version-id"}  # fmt: skip


@pytest.fixture(scope="module")
def stock() -> Iterator[MotoServer]:
    with running_moto(STOCK_MOTO) as server:
        yield server


@pytest.fixture(scope="module")
def both(moto: MotoServer, stock: MotoServer) -> list[Any]:
    """An S3 client of each server, the same objects in each: ``big`` (one PUT), ``parts`` (a
    multipart upload: 5 MiB + 5 MiB + the rest), ``summed`` (with a SHA-256 checksum),
    ``empty``, and ``versioned`` (two versions, the first ``DATA[:1000]``)."""
    clients = []
    for server in (moto, stock):
        env = server.aws_env()
        s3 = boto3.client(
            "s3", endpoint_url=server.endpoint_url, region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4"),  # MLflow's presigned URLs are SigV4
        )  # fmt: skip
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
            )
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket=BUCKET, Key="big", Body=DATA)
        s3.put_object(Bucket=BUCKET, Key="summed", Body=DATA, ChecksumAlgorithm="SHA256")
        s3.put_object(Bucket=BUCKET, Key="empty", Body=b"")
        s3.put_object(Bucket=BUCKET, Key="versioned", Body=DATA[:1000])
        s3.put_object(Bucket=BUCKET, Key="versioned", Body=DATA[1000:3000])
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key="parts")["UploadId"]
        pieces = [DATA[: 5 * MIB], DATA[5 * MIB : 10 * MIB], DATA[10 * MIB :]]
        parts = [
            {"PartNumber": n, "ETag": s3.upload_part(Bucket=BUCKET, Key="parts", PartNumber=n,
                                                     UploadId=upload, Body=piece)["ETag"]}
            for n, piece in enumerate(pieces, 1)
        ]  # fmt: skip
        s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload,
                                     MultipartUpload={"Parts": parts})  # fmt: skip
        clients.append(s3)
    return clients


Answer = tuple[int, dict[str, str], bytes]


def fetch(s3: Any, key: str, headers: dict[str, str], method: str = "GET",
          operation: str = "get_object", **params: Any) -> Answer:  # fmt: skip
    """The answer to a presigned GET (as MLflow's client makes it) with ``headers``."""
    operation = "head_object" if method == "HEAD" else operation
    url = s3.generate_presigned_url(operation, Params={"Bucket": BUCKET, "Key": key, **params})
    request = urllib.request.Request(url, headers=headers, method=method)  # noqa: S310 (http)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback)
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def comparable(answer: Answer) -> tuple[Any, ...]:
    """Status, the answer's own headers and body; an error by its code (the body names the
    request)."""
    status, headers, body = answer
    if status >= 400:
        body = b"".join(re.findall(rb"<Code>[^<]*</Code>", body))
    return status, {k: v for k, v in headers.items() if k not in VOLATILE}, body


def first_version(s3: Any) -> str:
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix="versioned")["Versions"]
    [first] = [v["VersionId"] for v in listed if not v["IsLatest"]]
    return str(first)


def test_the_session_moto_is_the_ranged_one(moto: MotoServer) -> None:
    assert moto.module == RANGED_MOTO and moto.process is not None
    assert f"-m {RANGED_MOTO} " in cmdline(moto.process.pid)


@pytest.mark.parametrize("key", ["big", "parts", "summed"])
@pytest.mark.parametrize(
    ("range_", "begin", "end"),
    [
        ("bytes=0-0", 0, 0),  # the first byte
        ("bytes=0-8388607", 0, 8 * MIB - 1),  # the first chunk of a download
        (f"bytes={5 * MIB - 3}-{5 * MIB + 2}", 5 * MIB - 3, 5 * MIB + 2),  # across a part
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),  # the last byte
        (f"bytes={SIZE - 100}-{SIZE + 100}", SIZE - 100, SIZE - 1),  # past the end: clipped
        ("bytes=-1000", SIZE - 1000, SIZE - 1),  # suffix
        (f"bytes=-{SIZE + 5}", 0, SIZE - 1),  # a suffix longer than the object
        (f"bytes={SIZE - 4096}-", SIZE - 4096, SIZE - 1),  # open
        ("bytes=0-", 0, SIZE - 1),  # open from the start: all of it
    ],
)
def test_a_range_is_the_exact_bytes_and_moto_s_answer(
    both: list[Any], key: str, range_: str, begin: int, end: int
) -> None:
    ranged, stock = (fetch(s3, key, {"Range": range_}) for s3 in both)
    status, headers, body = ranged
    assert status == 206 and body == DATA[begin : end + 1], (status, len(body))
    assert headers["content-range"] == f"bytes {begin}-{end}/{SIZE}"
    assert headers["content-length"] == str(end - begin + 1)
    assert comparable(ranged) == comparable(stock)
    with_checksum = [fetch(s3, key, {"Range": range_}, ChecksumMode="ENABLED") for s3 in both]
    assert comparable(with_checksum[0]) == comparable(with_checksum[1])


@pytest.mark.parametrize(
    "range_", [f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 10}", f"bytes={SIZE + 99}-", "bytes=-0"]
)
def test_a_range_past_the_end_is_416_invalid_range_as_s3s(both: list[Any], range_: str) -> None:
    """S3: "InvalidRange", 416, when the range starts past the object's last byte
    (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)."""
    ranged, stock = (fetch(s3, "big", {"Range": range_}) for s3 in both)
    assert comparable(ranged)[::2] == (416, b"<Code>InvalidRange</Code>")
    assert comparable(ranged) == comparable(stock)


@pytest.mark.parametrize(
    ("key", "headers", "method"),
    [
        ("big", {}, "GET"),  # no range: the object
        ("big", {"Range": "bytes=5-2"}, "GET"),  # last < first: ignored, the object
        ("big", {"Range": "bytes=0-1,5-6"}, "GET"),  # several ranges: moto gives the object
        ("big", {"Range": "bytes=a-b"}, "GET"),  # not a range
        ("big", {"Range": "bytes=100-199"}, "HEAD"),
        ("empty", {"Range": "bytes=0-"}, "GET"),
        ("empty", {}, "GET"),
        ("missing", {"Range": "bytes=0-9"}, "GET"),
    ],
)
def test_everything_else_is_moto_s_own_answer(
    both: list[Any], key: str, headers: dict[str, str], method: str
) -> None:
    ranged, stock = (fetch(s3, key, headers, method) for s3 in both)
    assert comparable(ranged) == comparable(stock)
    if ranged[0] == 200 and method == "GET":
        assert ranged[2] == {"big": DATA, "empty": b""}[key]


def test_conditions_versions_and_overrides_with_a_range(both: list[Any]) -> None:
    ranged, stock = both
    etag = ranged.head_object(Bucket=BUCKET, Key="big")["ETag"]
    disposition = {"ResponseContentDisposition": "attachment"}
    pairs = [
        [fetch(s3, "big", {"Range": "bytes=0-9", "If-None-Match": etag}) for s3 in both],
        [fetch(s3, "big", {"Range": "bytes=0-9", "If-Match": '"other"'}) for s3 in both],
        [fetch(s3, "big", {"Range": "bytes=0-9"}, **disposition) for s3 in both],
        [
            fetch(s3, "versioned", {"Range": "bytes=10-19"}, VersionId=first_version(s3))
            for s3 in both
        ],
    ]
    for first, second in pairs:
        assert comparable(first) == comparable(second)
    assert [p[0][0] for p in pairs] == [304, 412, 206, 206]
    assert pairs[2][0][1]["content-disposition"] == "attachment"
    assert pairs[3][0][2] == DATA[10:20]  # the first version's bytes
    # A sub-resource with a range header is moto's answer too, the range of its document.
    tagging = [fetch(s3, "big", {"Range": "bytes=0-9"}, operation="get_object_tagging")
               for s3 in (ranged, stock)]  # fmt: skip
    assert comparable(tagging[0]) == comparable(tagging[1])
    assert tagging[0][2] == b"<?xml vers"  # moto slices its tagging document: its own quirk


def test_a_small_range_of_a_big_object_reads_the_range_not_the_object(
    moto: MotoServer, stock: MotoServer, both: list[Any]
) -> None:
    """What the module is for: moto reads the whole object (from its temporary file) for every
    range; a 1 GiB download in 16 MiB ranges read 64 GiB."""
    read = []
    for server, s3 in zip((moto, stock), both, strict=True):
        assert server.process is not None
        fetch(s3, "big", {"Range": "bytes=0-0"})  # warm: imports, first-request work
        before = io_bytes([server.process.pid])
        for _ in range(5):
            assert fetch(s3, "big", {"Range": "bytes=4096-8191"})[2] == DATA[4096:8192]
        read.append(io_bytes([server.process.pid]) - before)
    assert read[0] < SIZE < 5 * SIZE <= read[1], read
