"""Run the schema provider's statements through the RDS Data API (SQL over HTTPS, IAM-authorized).

The database never has to face the internet for ``pulumi up``: the deployer needs AWS
credentials allowed ``rds-data:ExecuteStatement``, ``BeginTransaction``, ``CommitTransaction``
and ``RollbackTransaction`` on the cluster, and ``secretsmanager:GetSecretValue`` on the admin
secret (the Data API reads the credentials itself; the provider never sees the password).

boto3 is used as configured by the deployer's environment (AWS_PROFILE, SSO, env keys); the
stack's ``aws:profile`` and ``aws:assumeRoles`` are passed in, so every call runs as the
identity the AWS provider uses (infra/config.py refuses the settings it cannot follow).
``AWS_ENDPOINT_URL_RDS_DATA`` points it elsewhere, which is how the tests reach their Data API
emulator.

CloudTrail records Data API calls on Aurora Serverless v2 as data events (off unless a trail
selects them) and masks the ``sql`` text; parameter values may be visible, which is why no
password ever travels as a parameter (see ``projects/schema_sql.py``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from projects.schema_sql import SchemaProviderError, SqlValue, Statement

# A paused Serverless v2 instance resumes in ~15 s, 30 s or more after a day asleep.
DEFAULT_RESUME_WAIT_SECONDS = 90.0
_WAIT_CODES = {"DatabaseResumingException", "DatabaseUnavailableException"}
_DENIED_CODES = {"AccessDeniedException", "ForbiddenException"}
_SECRET_CODES = {"SecretsErrorException", "InvalidSecretException"}


def region_of(cluster_arn: str) -> str:
    """``arn:aws:rds:<region>:<account>:cluster:<id>`` -> region."""
    parts = cluster_arn.split(":")
    if len(parts) < 7 or parts[0] != "arn" or parts[2] != "rds" or parts[5] != "cluster":
        raise SchemaProviderError(f"{cluster_arn!r} is not an Aurora cluster ARN")
    return parts[3]


def to_field(value: SqlValue) -> dict[str, Any]:
    """A Python value as the Data API's ``Field`` union."""
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def from_field(field: dict[str, Any]) -> Any:
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue", "blobValue"):
        if key in field:
            return field[key]
    if "arrayValue" in field:
        raise SchemaProviderError("the Data API returned an array; no query here selects one")
    return None


class DataApiExecutor:
    """Executes ``Statement``s on one cluster as the user of ``secret_arn``.

    Holds a boto3 client for the duration of one provider call; keeps no credentials.
    """

    def __init__(
        self,
        cluster_arn: str,
        secret_arn: str,
        *,
        resume_wait_seconds: float = DEFAULT_RESUME_WAIT_SECONDS,
        aws_profile: str | None = None,
        assume_roles: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.cluster_arn = cluster_arn
        self.secret_arn = secret_arn
        self.resume_wait_seconds = resume_wait_seconds
        self._client = _client(region_of(cluster_arn), aws_profile, assume_roles)

    # -- statements --------------------------------------------------------------------------
    def run(self, statement: Statement, transaction_id: str | None = None) -> list[tuple[Any, ...]]:
        request: dict[str, Any] = {
            "resourceArn": self.cluster_arn,
            "secretArn": self.secret_arn,
            "sql": statement.sql,
        }
        if statement.params:
            request["parameters"] = [
                {"name": name, "value": to_field(value)} for name, value in statement.params.items()
            ]
        if transaction_id is not None:
            request["transactionId"] = transaction_id
        elif statement.changes:
            # AWS's advice for DDL: let it finish even if the HTTP call times out.
            request["continueAfterTimeout"] = True
        response = self._call("execute_statement", request, statement)
        return [tuple(from_field(f) for f in record) for record in response.get("records", [])]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[str]:
        """A Data API transaction: committed when the block ends, rolled back if it raises."""
        base = {"resourceArn": self.cluster_arn, "secretArn": self.secret_arn}
        tid = str(self._call("begin_transaction", dict(base), None)["transactionId"])
        try:
            yield tid
        except BaseException:
            with contextlib.suppress(SchemaProviderError):
                self._call("rollback_transaction", {**base, "transactionId": tid}, None)
            raise
        self._call("commit_transaction", {**base, "transactionId": tid}, None)

    # -- errors ------------------------------------------------------------------------------
    def _call(self, operation: str, request: dict[str, Any], statement: Statement | None) -> Any:
        from botocore import exceptions as bx

        started = time.monotonic()
        delay, noted_at = 1.0, None
        while True:
            try:
                return getattr(self._client, operation)(**request)
            except bx.ClientError as exc:
                error = exc.response.get("Error", {})
                code, message = str(error.get("Code", "?")), str(error.get("Message", ""))
                waited = time.monotonic() - started
                if code in _WAIT_CODES and "transactionId" not in request:
                    if waited + delay > self.resume_wait_seconds:
                        raise SchemaProviderError(
                            f"the Aurora cluster {self.cluster_arn} did not become available "
                            f"within {self.resume_wait_seconds:.0f}s ({code}: {message}). A "
                            "paused cluster usually resumes in 15-30 s; retry `pulumi up`, "
                            "and check the cluster's status in the RDS console"
                        ) from None
                    if noted_at is None or waited - noted_at >= 5:
                        noted_at = waited
                        sys.stderr.write(
                            f"mysql:Schema: waiting for the Aurora cluster to resume from "
                            f"auto-pause ({waited:.0f}s of at most "
                            f"{self.resume_wait_seconds:.0f}s)\n"
                        )
                        sys.stderr.flush()
                    time.sleep(delay)
                    delay = min(delay * 2, 8.0)
                    continue
                raise self._explain(code, message, statement) from None
            except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
                raise SchemaProviderError(
                    f"no AWS credentials for the RDS Data API ({exc}): run pulumi with the "
                    "credentials you deploy with (AWS_PROFILE, aws sso login, or the stack's "
                    "aws:profile)"
                ) from None
            except (bx.TokenRetrievalError, bx.SSOTokenLoadError, bx.UnauthorizedSSOTokenError):
                raise SchemaProviderError(
                    "your AWS SSO session has expired: `aws sso login`, then pulumi up again"
                ) from None
            except bx.EndpointConnectionError as exc:
                raise SchemaProviderError(
                    f"cannot reach the RDS Data API ({exc}); check your network"
                ) from None

    def _explain(self, code: str, message: str, statement: Statement | None) -> SchemaProviderError:
        if code in _DENIED_CODES:
            return SchemaProviderError(
                f"AWS denied the RDS Data API call ({code}: {message}). The identity running "
                "pulumi needs rds-data:ExecuteStatement, rds-data:BeginTransaction, "
                "rds-data:CommitTransaction and rds-data:RollbackTransaction on "
                f"{self.cluster_arn}, and secretsmanager:GetSecretValue on {self.secret_arn}"
            )
        if code == "HttpEndpointNotEnabledException":
            return SchemaProviderError(
                f"the RDS Data API is not enabled on {self.cluster_arn} ({message}); the "
                "program enables it (enable_http_endpoint): run pulumi up so the cluster is "
                "updated first"
            )
        if code in _SECRET_CODES:
            return SchemaProviderError(
                f"the RDS Data API could not use the admin secret {self.secret_arn} "
                f"({code}: {message})"
            )
        shown = f" running `{statement}`" if statement is not None else ""
        return SchemaProviderError(f"the database refused{shown}: {code}: {message}")


DEFAULT_SESSION_NAME = "mlflow-aws-schema"


def _assumed(session: Any, region: str, role: Mapping[str, Any], index: int) -> Any:
    """A session as ``role`` (one item of ``aws:assumeRoles``), made from ``session``: the
    identity the stack's AWS provider uses, so every call of ``pulumi up`` runs as one."""
    import boto3
    from botocore import exceptions as bx

    request: dict[str, Any] = {
        "RoleArn": role["role_arn"],
        "RoleSessionName": role.get("session_name") or DEFAULT_SESSION_NAME,
    }
    for key, name in (("external_id", "ExternalId"), ("policy", "Policy"),
                      ("source_identity", "SourceIdentity")):  # fmt: skip
        if role.get(key):
            request[name] = role[key]
    if role.get("duration_seconds"):
        request["DurationSeconds"] = int(role["duration_seconds"])
    if role.get("policy_arns"):
        request["PolicyArns"] = [{"arn": arn} for arn in role["policy_arns"]]
    if role.get("tags"):
        request["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(role["tags"].items())]
    if role.get("transitive_tag_keys"):
        request["TransitiveTagKeys"] = list(role["transitive_tag_keys"])
    where = f"aws:assumeRoles[{index}] ({role['role_arn']})"
    try:
        credentials = session.client("sts", region_name=region).assume_role(**request)[
            "Credentials"
        ]
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        raise SchemaProviderError(
            f"the schema provider could not assume {where}, as the stack's AWS provider does: "
            f"{error.get('Code', '?')}: {error.get('Message', '')}"
        ) from None
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise SchemaProviderError(
            f"no AWS credentials to assume {where} with ({exc}): run pulumi with the "
            "credentials you deploy with"
        ) from None
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=region,
    )


def aws_session(
    region: str, aws_profile: str | None, assume_roles: Sequence[Mapping[str, Any]] = ()
) -> Any:
    """A boto3 session as the stack's AWS provider: its profile, then its roles in order."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.session.Session(profile_name=aws_profile or None, region_name=region)
    except ProfileNotFound as exc:
        raise SchemaProviderError(
            f"{exc}: set aws:profile (or AWS_PROFILE) to a profile of your AWS config"
        ) from None
    for index, role in enumerate(assume_roles):
        session = _assumed(session, region, role, index)
    return session


def _client(
    region: str, aws_profile: str | None, assume_roles: Sequence[Mapping[str, Any]] = ()
) -> Any:
    from botocore.config import Config

    session = aws_session(region, aws_profile, assume_roles)
    return session.client(
        "rds-data",
        config=Config(
            connect_timeout=10,
            read_timeout=70,  # a synchronous statement may take up to 45 s
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )
