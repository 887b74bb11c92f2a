"""Which artifact path the helper's export lines choose (``--artifacts``), and saying so.

``presigned``: the client moves artifacts straight to and from S3 on URLs the project's server
signs; ``proxied``: every byte through the server. ``auto`` is presigned unless this machine
cannot reach S3 (checked only where the client and the server are on different networks:
``serve --remote``); ``env --remote`` prints lines for a job elsewhere, so it cannot check and
says what such a job needs instead.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from mlflow_aws.artifact_settings import MODES, PRESIGNED, PROXIED, printed_settings

AUTO = "auto"
PROBE_TIMEOUT = 3.0


def add_artifacts_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts",
        choices=(AUTO, *MODES),
        default=AUTO,
        help="presigned: artifacts go straight to and from S3 on URLs the server signs (no AWS "
        "credentials needed here); proxied: every byte through the server, for clients "
        "without a route to S3; auto (default): presigned, unless this machine cannot reach "
        "S3 (checked with --remote)",
    )


def s3_endpoint(region: str, environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """(host, port) of the S3 endpoint this machine's AWS clients would use for ``region``."""
    url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if url:
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "", parts.port or default
    return f"s3.{region}.amazonaws.com", 443


def s3_reachable(region: str, timeout: float = PROBE_TIMEOUT) -> bool:
    host, port = s3_endpoint(region)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose(requested: str, region: str | None, probe: bool) -> tuple[str, str]:
    """(mode, why) for ``--artifacts requested``; probes S3 from here when ``probe``."""
    if requested != AUTO:
        return requested, "as asked (--artifacts)"
    if probe and region is not None:
        host, port = s3_endpoint(region)
        if not s3_reachable(region):
            return PROXIED, (
                f"S3 ({host}:{port}) is not reachable from this machine within "
                f"{PROBE_TIMEOUT:.0f} s; --artifacts presigned once it is"
            )
        return PRESIGNED, f"S3 ({host}:{port}) is reachable from here"
    return PRESIGNED, "the default"


def export_lines(mode: str) -> list[str]:
    return [f"export {key}={value}" for key, value in printed_settings(mode).items()]
