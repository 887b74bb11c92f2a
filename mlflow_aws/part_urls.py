"""How long the presigned URLs of artifact transfers live, on every mlflow-aws server (the laptop
server's ``--app-name mlflow-aws-run-secret`` and the central ``--app-name aws-iam`` install it
when they start): long enough for the whole file over a slow link, no longer.

Part URLs of a multipart upload: MLflow 3.17.2 signs them in
``S3ArtifactRepository.create_multipart_upload`` with no ``ExpiresIn`` (boto3's default, an
hour) and has no setting for it. The client gets the URLs of *all* parts in the one
``mpu/create`` answer, uploads them from a thread pool and never asks again
(``HttpArtifactRepository._try_multipart_upload``: a part refused as expired aborts the whole
upload). So a part URL must last until the *last* part starts, not one part: the shortest
expiry that works is the time the whole file takes over a slow link, which the server knows
from the number of parts the client asks for.

Download URLs (``/mlflow-artifacts/presigned/<path>``, which the client and the UI's download
button ask for): MLflow signs them in ``S3ArtifactRepository.get_download_presigned_url`` for
``MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS`` whatever the file's size (300 s by default); the
client downloads all ranges of the file on that one URL and asks for a new one only for ranges
that failed, so a big file over a slow link met an expired URL half-way. MLflow heads the object
before it signs; the size it reads there sets the expiry here.

S3 checks expiry when a request starts, so a part or a range that began in time finishes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from mlflow_aws.artifact_settings import (
    MIB,
    MULTIPART_DOWNLOAD_CHUNK_SIZE,
    MULTIPART_UPLOAD_CHUNK_SIZE,
)

# A slow uplink still served: 0.5 MiB/s (~4 Mbit/s, a hotel or mobile uplink). One part of the
# size the helper and the plugin set (16 MiB) takes 32 s there; a client that sets bigger parts
# itself gets the same time per part, so it needs a faster link.
SLOW_LINK_BYTES_PER_SECOND = MIB // 2
SECONDS_PER_PART = math.ceil(MULTIPART_UPLOAD_CHUNK_SIZE / SLOW_LINK_BYTES_PER_SECOND)
# The same for a download's ranges (16 MiB): 32 s each. Counted in these ranges a download URL
# lasts for the file's bytes at the slow link's rate, whatever range size a client asks for.
SECONDS_PER_RANGE = math.ceil(MULTIPART_DOWNLOAD_CHUNK_SIZE / SLOW_LINK_BYTES_PER_SECOND)
# The create answer reaching the client and its first parts starting; clock skew.
START_SECONDS = 60
# SigV4's limit (a longer URL is refused when used). The server's credentials bound it anyway:
# a URL signed with a role session dies with the session.
MAX_SECONDS = 7 * 24 * 3600
# A download URL never lives less than MLflow's own default: a small file's URL is also what
# the UI's download button navigates to, and a browser may take its time to start.
MIN_DOWNLOAD_SECONDS = 300
_MARK = "_mlflow_aws_part_url_seconds"


def part_url_seconds(num_parts: int) -> int:
    """The expiry of every part URL of an upload of ``num_parts`` parts."""
    return min(MAX_SECONDS, START_SECONDS + SECONDS_PER_PART * max(1, num_parts))


def download_url_seconds(size: int) -> int:
    """The expiry of a download URL of a ``size``-byte file: the start, then the file's ranges
    one after another over the slow link, between 5 minutes and 7 days (1 GiB: 64 ranges of
    16 MiB, 60 + 64 x 32 = 2108 s)."""
    ranges = -(-max(0, size) // MULTIPART_DOWNLOAD_CHUNK_SIZE)
    return max(MIN_DOWNLOAD_SECONDS, min(MAX_SECONDS, START_SECONDS + SECONDS_PER_RANGE * ranges))


class _ExpiringPartUrls:
    """An S3 client whose presigned URLs default to ``seconds`` (MLflow passes none)."""

    def __init__(self, client: Any, seconds: int) -> None:
        self._client, self._seconds = client, seconds

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("ExpiresIn", self._seconds)
        return self._client.generate_presigned_url(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _SizedDownloadUrls:
    """An S3 client whose ``get_object`` URLs live ``download_url_seconds`` of the size its
    ``head_object`` last answered (MLflow heads the object, then signs; it passes its flat
    expiry, which this replaces). Without a size seen, MLflow's expiry stays."""

    def __init__(self, client: Any) -> None:
        self._client, self._size = client, None

    def head_object(self, *args: Any, **kwargs: Any) -> Any:
        answer = self._client.head_object(*args, **kwargs)
        self._size = answer.get("ContentLength")
        return answer

    def generate_presigned_url(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get_object" and isinstance(self._size, int):
            kwargs["ExpiresIn"] = download_url_seconds(self._size)
        return self._client.generate_presigned_url(method, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _Repository:
    """The repository as MLflow's method sees it, with a client made by ``wrap``; the shared
    repository (the server keeps one) is not changed, so concurrent requests do not race."""

    def __init__(self, repository: Any, wrap: Any) -> None:
        self._repository, self._wrap = repository, wrap

    def _get_s3_client(self) -> Any:
        return self._wrap(self._repository._get_s3_client())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repository, name)


def install() -> None:
    """Give MLflow's S3 multipart uploads part URLs of ``part_url_seconds(num_parts)`` and its
    download URLs ``download_url_seconds(size)``; once."""
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    original: Any = S3ArtifactRepository.create_multipart_upload
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def create_multipart_upload(
        self: Any, local_file: str, num_parts: int = 1, artifact_path: str | None = None
    ) -> Any:
        seconds = part_url_seconds(num_parts)
        repository = _Repository(self, lambda client: _ExpiringPartUrls(client, seconds))
        return original(repository, local_file, num_parts, artifact_path)

    download_original: Any = S3ArtifactRepository.get_download_presigned_url

    @functools.wraps(download_original)
    def get_download_presigned_url(self: Any, artifact_path: str, expiration: int = 300) -> Any:
        return download_original(_Repository(self, _SizedDownloadUrls), artifact_path, expiration)

    setattr(create_multipart_upload, _MARK, True)
    S3ArtifactRepository.create_multipart_upload = create_multipart_upload  # type: ignore[method-assign]
    S3ArtifactRepository.get_download_presigned_url = get_download_presigned_url  # type: ignore[method-assign]
