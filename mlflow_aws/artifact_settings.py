"""How the stock MLflow client moves artifacts to and from a project's server: one definition for
the lines the helper prints (``serve``, ``serve --remote``, ``env``, ``env --remote``) and the
defaults the ``aws-iam`` client plugin sets.

MLflow 3.17.2 servers with S3-backed proxied artifacts (``--serve-artifacts`` and an ``s3://``
destination, every mlflow-aws server) advertise presigned multipart transfer in
``/api/3.0/mlflow/server-info``; the client then

- downloads every file straight from S3 with ranged GETs of ``MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE``
  on a presigned URL the server signs (``/mlflow-artifacts/presigned/<path>``), and
- uploads files of ``MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE`` or more as an S3 multipart
  upload, parts of ``MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE`` going straight to S3 on presigned
  part URLs (``/mlflow-artifacts/mpu/create|complete|abort/<path>``); smaller files still go
  through the server.

The server signs with its own credentials, which are the project's server role: a URL can only
ever name the project's prefix (and the server refuses ``..`` in artifact paths). No AWS
credential reaches the client. URLs live until the whole file could have gone over a slow link
(``mlflow_aws/part_urls.py``, installed by the mlflow-aws server apps): part URLs 92 s for one
part (MLflow 3.17.2 signs them for boto3's hour and has no setting), download URLs from 5
minutes (up to 112 MiB) to 2108 s for 1 GiB (MLflow signs every one for a flat 300 s).

The sizes were chosen with ``bench/artifact_throughput.py`` (README, Performance): MLflow's own
500 MiB threshold left a 200 MiB checkpoint proxied, the server handling 4x its bytes at about
half of S3's speed; its 100 MiB download chunks hold up to 20 of them in memory at once on a
10-core machine; 16 MiB ranges hold half the memory of 32 MiB ones per thread and beat them in 7
of 8 side-by-side pairs of an earlier run (a later probe: 2 of 4, within the noise). Where the
client cannot reach S3 (a job in a private subnet without a NAT or an S3 gateway endpoint),
``proxied`` turns presigned transfer off and every byte goes through the server, as before.
"""

from __future__ import annotations

from collections.abc import MutableMapping

MIB = 1 << 20
PRESIGNED = "presigned"
PROXIED = "proxied"
MODES = (PRESIGNED, PROXIED)

# Chosen by measurement (bench/artifact_throughput.py): at and above this size a presigned
# multipart upload is faster than the proxied PUT and spares the server every byte.
MULTIPART_UPLOAD_MINIMUM_FILE_SIZE = 8 * MIB
MULTIPART_UPLOAD_CHUNK_SIZE = 16 * MIB  # S3 parts: >= 5 MiB, <= 10,000 of them (156 GiB here)
# Ranged GETs: streamed 1 MiB at a time where mlflow-aws is installed (presigned_client.py); a
# script without it (the printed lines pasted elsewhere) holds 2 per CPU of them in memory.
MULTIPART_DOWNLOAD_CHUNK_SIZE = 16 * MIB

_PRESIGNED_SETTINGS = {
    "MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE": str(MULTIPART_UPLOAD_MINIMUM_FILE_SIZE),
    "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE": str(MULTIPART_UPLOAD_CHUNK_SIZE),
    "MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE": str(MULTIPART_DOWNLOAD_CHUNK_SIZE),
}
# Off explicitly: the client would otherwise follow the server's advertisement and fail on an
# S3 it cannot reach.
_PROXIED_SETTINGS = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
}
S3_ROUTE_HINT = (
    "a job in a private subnet needs a route to S3 for presigned transfer: an S3 gateway "
    "endpoint on its route table (free; `aws ec2 create-vpc-endpoint --vpc-endpoint-type "
    "Gateway --service-name com.amazonaws.<region>.s3 --vpc-id … --route-table-ids …`) or a NAT"
)


# How a training loop's metrics leave the process (bench/training_loop.py, README "Logging from
# a training loop"): MLflow's asynchronous logging, so a step never waits for the network, with
# what is queued merged into one request per second. Unbuffered, MLflow sends every call as its
# own request from 10 threads: a loop calling log_metric per metric outran the server, whose
# connection pool timed out, and MLflow dropped those metrics (it logs an error and goes on).
# Safe at exit with mlflow-aws installed: mlflow_aws/async_exit.py bounds the wait for the queue.
LOGGING_SETTINGS = {
    "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
    "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1",
}


def printed_settings(mode: str) -> dict[str, str]:
    """Everything the helper's export lines set besides the tracking URI (and sign-in)."""
    return {**client_settings(mode), **LOGGING_SETTINGS}


def client_settings(mode: str) -> dict[str, str]:
    """The client's environment for ``mode``: what the helper prints as export lines."""
    if mode == PRESIGNED:
        return dict(_PRESIGNED_SETTINGS)
    if mode == PROXIED:
        return dict(_PROXIED_SETTINGS)
    raise ValueError(f"artifact transfer mode {mode!r}: one of {', '.join(MODES)}")


def describe(mode: str) -> str:
    """One line saying which artifact path is in use."""
    if mode == PRESIGNED:
        return (
            "artifacts: presigned, straight to and from S3 (downloads of any size, uploads of "
            f"{MULTIPART_UPLOAD_MINIMUM_FILE_SIZE // MIB} MiB and more in "
            f"{MULTIPART_UPLOAD_CHUNK_SIZE // MIB} MiB parts; URLs signed by the project's "
            "server role for its prefix only)"
        )
    return "artifacts: proxied, every byte through the server (S3 is not used from here)"


def apply_client_defaults(environ: MutableMapping[str, str]) -> None:
    """The presigned sizes as defaults (never over what the user set), for the client plugin."""
    if any(environ.get(key, "").lower() == "false" for key in _PROXIED_SETTINGS):
        return
    for key, value in _PRESIGNED_SETTINGS.items():
        environ.setdefault(key, value)
