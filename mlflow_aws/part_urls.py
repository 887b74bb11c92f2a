"""How long the presigned part URLs of a multipart upload live, on every mlflow-aws server (the
laptop server's ``--app-name mlflow-aws-run-secret`` and the central ``--app-name aws-iam``
install it when they start).

MLflow 3.17.2 signs part URLs in ``S3ArtifactRepository.create_multipart_upload`` with no
``ExpiresIn`` (boto3's default, an hour) and has no setting for it; download URLs already get
``MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS`` (``mlflow_aws/server.env``: 5 minutes, and the
client asks for a fresh one when a chunk fails). The part URLs are different: the client gets
the URLs of *all* parts in the one ``mpu/create`` answer, uploads them from a thread pool and
never asks again (``HttpArtifactRepository._try_multipart_upload``: a part refused as expired
aborts the whole upload). So a part URL must last until the *last* part starts, not one part:
the shortest expiry that works is the time the whole file takes over a slow link, which the
server knows from the number of parts the client asks for.

S3 checks expiry when a request starts, so a part that began in time finishes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from mlflow_aws.artifact_settings import MIB, MULTIPART_UPLOAD_CHUNK_SIZE

# A slow uplink still served: 0.5 MiB/s (~4 Mbit/s, a hotel or mobile uplink). One part of the
# size the helper and the plugin set (16 MiB) takes 32 s there; a client that sets bigger parts
# itself gets the same time per part, so it needs a faster link.
SLOW_LINK_BYTES_PER_SECOND = MIB // 2
SECONDS_PER_PART = math.ceil(MULTIPART_UPLOAD_CHUNK_SIZE / SLOW_LINK_BYTES_PER_SECOND)
# The create answer reaching the client and its first parts starting; clock skew.
START_SECONDS = 60
# SigV4's limit (a longer URL is refused when used). The server's credentials bound it anyway:
# a URL signed with a role session dies with the session.
MAX_SECONDS = 7 * 24 * 3600
_MARK = "_mlflow_aws_part_url_seconds"


def part_url_seconds(num_parts: int) -> int:
    """The expiry of every part URL of an upload of ``num_parts`` parts."""
    return min(MAX_SECONDS, START_SECONDS + SECONDS_PER_PART * max(1, num_parts))


class _ExpiringPartUrls:
    """An S3 client whose presigned URLs default to ``seconds`` (MLflow passes none)."""

    def __init__(self, client: Any, seconds: int) -> None:
        self._client, self._seconds = client, seconds

    def generate_presigned_url(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("ExpiresIn", self._seconds)
        return self._client.generate_presigned_url(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _Repository:
    """The repository as MLflow's method sees it, with the client above; the shared repository
    (the server keeps one) is not changed, so concurrent uploads do not race."""

    def __init__(self, repository: Any, seconds: int) -> None:
        self._repository, self._seconds = repository, seconds

    def _get_s3_client(self) -> _ExpiringPartUrls:
        return _ExpiringPartUrls(self._repository._get_s3_client(), self._seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repository, name)


def install() -> None:
    """Give MLflow's S3 multipart uploads part URLs of ``part_url_seconds(num_parts)``; once."""
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    original: Any = S3ArtifactRepository.create_multipart_upload
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def create_multipart_upload(
        self: Any, local_file: str, num_parts: int = 1, artifact_path: str | None = None
    ) -> Any:
        seconds = part_url_seconds(num_parts)
        return original(_Repository(self, seconds), local_file, num_parts, artifact_path)

    setattr(create_multipart_upload, _MARK, True)
    S3ArtifactRepository.create_multipart_upload = create_multipart_upload  # type: ignore[method-assign]
