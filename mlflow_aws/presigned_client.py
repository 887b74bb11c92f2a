"""How the stock MLflow client moves the bytes of a presigned transfer, in every process that
has mlflow-aws installed (``mlflow_aws/run_context.py`` installs it while ``import mlflow`` runs,
whatever the tracking URI: the lines the helper prints, ``env --remote`` and plugin users alike).
Two functions of MLflow 3.17.2 are replaced by ones with the same signature and request.

Download ranges. MLflow downloads a file from a presigned URL in ranges of
``MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE`` on its artifact threads, each with
``mlflow.utils.request_utils.download_chunk``: a GET with ``stream=False``, so requests joins the
range out of 10 KiB reads, holds it whole, and only then is it written. On the client's CPU that
is the limit: 131-178 MiB/s on moto where the same ranges streamed in 1 MiB reads ran at 773-968
MiB/s, with a seventh of the CPU, and the client held +129 MiB instead of +8 (4 threads, 16 MiB
ranges; README, Performance). ``download_chunk`` here reads each range in 1 MiB pieces straight
into the file at the range's offset. It also refuses an answer that is not exactly the range
(the original wrote whatever came at the range's offset: a store or proxy that ignores ``Range``
and answers the whole object left a corrupt file and no error). A refused or cut-short range
raises, as the original does on a short read, and MLflow retries that range with a new URL; a
download that still fails is removed by MLflow (``remove_on_error``).

Upload parts. ``HttpArtifactRepository._upload_part`` PUTs each part with a bare
``requests.put``: no retry, so one 503 SlowDown or reset connection on one part of a 4 GiB
checkpoint aborts the whole upload, a new TCP and TLS connection per part, and no timeout.
``upload_part`` here sends the same PUT through MLflow's retrying session for cloud storage (the
one its downloads use: transient codes and connection errors retried with backoff; a part PUT
is idempotent, the last one wins), on pooled connections, with a timeout for the answer.
"""

from __future__ import annotations

import sys
from typing import Any

READ_BYTES = 1 << 20
# Connecting, then waiting for S3's answer once a part is sent (S3 answers at once; a stalled
# connection otherwise hangs the upload for good).
PART_TIMEOUT = (10, 120)
# The modules that bind ``download_chunk`` by name when they are imported (``from
# mlflow.utils.request_utils import download_chunk``); patched where already imported.
_USERS = (
    "mlflow.utils.request_utils",
    "mlflow.store.artifact.http_artifact_repo",
    "mlflow.store.artifact.cloud_artifact_repo",
)


class RangeAnswerError(IOError):
    """The store answered a ranged GET with other bytes than the range."""


def download_chunk(
    *,
    range_start: int,
    range_end: int,
    headers: dict[str, str],
    download_path: str,
    http_uri: str,
    verify: bool | None = None,
) -> None:
    """Write bytes ``range_start``..``range_end`` (inclusive) of ``http_uri`` into
    ``download_path`` at ``range_start``, read 1 MiB at a time; raise unless exactly those
    bytes arrived. The signature and the request are MLflow 3.17.2's ``download_chunk``."""
    from mlflow.utils.request_utils import augmented_raise_for_status, cloud_storage_http_request

    wanted = range_end - range_start + 1
    request_kwargs: dict[str, Any] = {} if verify is None else {"verify": verify}
    with cloud_storage_http_request(
        "get",
        http_uri,
        stream=True,
        headers={**headers, "Range": f"bytes={range_start}-{range_end}"},
        timeout=10,
        **request_kwargs,
    ) as response:
        augmented_raise_for_status(response)
        if response.status_code != 206:
            # 200 is the whole object: written at this offset it would corrupt the file.
            raise RangeAnswerError(
                f"asked for bytes {range_start}-{range_end} and got HTTP {response.status_code} "
                "instead of 206 Partial Content: the store ignored the range"
            )
        written = 0
        with open(download_path, "r+b") as file:
            file.seek(range_start)
            # The stored bytes as they are (boto3 does not decode either): an object stored
            # with a Content-Encoding cannot be decoded from a range in its middle.
            for piece in response.raw.stream(READ_BYTES, decode_content=False):
                if written + len(piece) > wanted:
                    raise RangeAnswerError(
                        f"bytes {range_start}-{range_end}: the answer is longer than the "
                        f"{wanted} bytes asked for"
                    )
                file.write(piece)
                written += len(piece)
    if written != wanted:
        raise RangeAnswerError(
            f"Incomplete read of bytes {range_start}-{range_end} ({written} bytes read, "
            f"{wanted - written} more expected)"
        )


def upload_part(credential: Any, local_file: str, size: int, start_byte: int) -> Any:
    """PUT one part of a multipart upload on its presigned URL, retried like a download range;
    MLflow 3.17.2's ``_upload_part`` otherwise (the same bytes, headers, TLS check, answer)."""
    from mlflow.entities.multipart_upload import MultipartUploadPart
    from mlflow.environment_variables import MLFLOW_S3_IGNORE_TLS
    from mlflow.utils.file_utils import read_chunk
    from mlflow.utils.request_utils import augmented_raise_for_status, cloud_storage_http_request

    data = read_chunk(local_file, size, start_byte)  # type: ignore[arg-type]  # a str, as MLflow passes
    with cloud_storage_http_request(
        "put",
        credential.url,
        data=data,
        headers=credential.headers,
        verify=not MLFLOW_S3_IGNORE_TLS.get(),
        timeout=PART_TIMEOUT,
    ) as response:
        augmented_raise_for_status(response)
        return MultipartUploadPart(
            part_number=credential.part_number,
            etag=response.headers.get("ETag", ""),
            url=credential.url,
        )


def install() -> None:
    """Make MLflow read presigned download ranges with ``download_chunk`` (modules imported
    later bind it from ``mlflow.utils.request_utils``, which is patched first) and PUT upload
    parts with ``upload_part``; idempotent. MLflow 3.17.2 has imported its HTTP artifact
    repository by the time it loads this entry point (``tests/test_presigned_client.py`` checks
    both in a process that only imports mlflow)."""
    import mlflow.utils.request_utils  # noqa: F401  (imports no mlflow: safe during mlflow's init)

    for name in _USERS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "download_chunk"):
            module.download_chunk = download_chunk  # type: ignore[attr-defined]
    http_repository = sys.modules.get("mlflow.store.artifact.http_artifact_repo")
    if http_repository is not None:
        http_repository.HttpArtifactRepository._upload_part = staticmethod(upload_part)
