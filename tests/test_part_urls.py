"""How long presigned artifact URLs live (``mlflow_aws/part_urls.py``), at the rule's edges; the
servers handing them out are ``tests/test_artifacts_presigned.py``."""

from __future__ import annotations

import pytest

from mlflow_aws.artifact_settings import MIB, MULTIPART_DOWNLOAD_CHUNK_SIZE
from mlflow_aws.part_urls import (
    MAX_SECONDS,
    MIN_DOWNLOAD_SECONDS,
    download_url_seconds,
    part_url_seconds,
)

GIB = 1 << 30
RANGE = 16 * MIB
# The last file size under SigV4's cap: 60 + 32 x 18898 = 604796 s.
LAST_UNCAPPED = 18898 * RANGE


def test_sigv4s_limit_is_seven_days() -> None:
    """S3 takes a SigV4 presigned URL's X-Amz-Expires up to 604800 s, seven days (Amazon S3 API
    Reference, "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)",
    https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html; the AWS CLI's
    ``s3 presign --expires-in``: "Maximum is 604800 seconds",
    https://docs.aws.amazon.com/cli/latest/reference/s3/presign.html). MLflow 3.17.2 refuses
    more on its run-scoped endpoint for the same reason."""
    assert MAX_SECONDS == 604800


def test_the_rule_counts_the_download_s_ranges() -> None:
    assert MULTIPART_DOWNLOAD_CHUNK_SIZE == RANGE  # what "per 16 MiB" below means


@pytest.mark.parametrize(
    ("size", "seconds"),
    [
        (0, 300),  # an empty file: the floor
        (1, 300),
        (7 * RANGE, 300),  # 60 + 7 x 32 = 284: still the floor
        (7 * RANGE + 1, 316),  # an eighth range: 60 + 8 x 32
        (8 * RANGE, 316),
        (200 * MIB, 60 + 13 * 32),  # 12.5 ranges: 13
        (GIB, 2108),  # 64 ranges
        (GIB + 1, 2140),
        (4 * GIB, 60 + 256 * 32),
        (LAST_UNCAPPED, 604796),
        (LAST_UNCAPPED + 1, 604800),  # would be 604828: SigV4's cap
        (10 * 1024 * GIB, 604800),
    ],
)
def test_a_download_url_lives_60_s_plus_32_s_per_16_mib_between_5_min_and_7_days(
    size: int, seconds: int
) -> None:
    assert download_url_seconds(size) == seconds


def test_the_floor_is_mlflows_own_expiry() -> None:
    assert MIN_DOWNLOAD_SECONDS == 300  # MLflow's MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS
    assert download_url_seconds(-1) == 300


@pytest.mark.parametrize(
    ("num_parts", "seconds"),
    [(0, 92), (1, 92), (2, 124), (256, 8252), (18898, 604796), (18899, 604800), (10000, 320060)],
)
def test_a_part_url_lives_60_s_plus_32_s_per_part_up_to_7_days(
    num_parts: int, seconds: int
) -> None:
    assert part_url_seconds(num_parts) == seconds
