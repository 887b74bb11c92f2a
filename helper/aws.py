"""The helper's AWS calls (boto3, imported lazily), with botocore failures turned into fixes.

boto3 resolves credentials from the user's own chain (env, profile, SSO) and honours
``AWS_ENDPOINT_URL``, which is how the tests point it at a moto server.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlflow_aws.names import connection_secret_name

from .errors import HelperError
from .invocation import helper_command
from .outputs import (
    PROJECT_TAG_KEY,
    OutputsError,
    ProjectConnection,
    parse_connection_bundle,
)

CREDENTIALS_FIX = (
    "log in again (`aws sso login --profile <profile>`), or select a profile that works "
    "(`export AWS_PROFILE=<profile>`; check with `aws sts get-caller-identity`)"
)
_EXPIRED_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "RequestExpired",
}


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn botocore's credential, network and permission failures into a HelperError."""
    from botocore import exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise HelperError(
            f"no usable AWS credentials while {doing} ({exc}); {CREDENTIALS_FIX}"
        ) from None
    except (bx.UnauthorizedSSOTokenError, bx.SSOTokenLoadError, bx.TokenRetrievalError) as exc:
        raise HelperError(
            f"your AWS SSO session has expired or is missing while {doing} ({exc}); "
            f"{CREDENTIALS_FIX}"
        ) from None
    except bx.CredentialRetrievalError as exc:
        raise HelperError(
            f"cannot get AWS credentials while {doing} ({exc}); {CREDENTIALS_FIX}"
        ) from None
    except bx.NoRegionError:
        raise HelperError(
            f"no AWS region while {doing}; set AWS_REGION or a region in your profile"
        ) from None
    except bx.ProfileNotFound as exc:
        raise HelperError(
            f"{exc} while {doing}: AWS_PROFILE names a profile that is not in "
            "your AWS config; `aws configure list-profiles` lists them"
        ) from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise HelperError(f"cannot reach AWS while {doing} ({exc}); check your network") from None
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code in _EXPIRED_CODES:
            raise HelperError(
                f"AWS refused your credentials while {doing} ({code}: {message}); {CREDENTIALS_FIX}"
            ) from None
        if "AccessDenied" in code:
            raise HelperError(
                f"AWS denied access while {doing} ({code}: {message}); your identity needs the "
                "project's policy (its PolicyArn output): ask the platform engineer"
            ) from None
        raise HelperError(f"AWS error while {doing}: {code}: {message}") from None
    except bx.BotoCoreError as exc:  # anything else botocore says: one line, not a traceback
        raise HelperError(f"AWS error while {doing}: {exc}") from None


def resolve_region(preferred: str | None = None) -> str:
    """The outputs' region when known, else AWS_REGION, AWS_DEFAULT_REGION or the profile's."""
    import boto3

    region = preferred or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        with aws_errors("reading the region of your AWS profile"):
            region = boto3.Session().region_name
    if not region:
        raise HelperError(
            "no AWS region: set AWS_REGION (e.g. `export AWS_REGION=eu-west-1`) "
            "or a region in your AWS profile"
        )
    return region


def client(service: str, region: str) -> Any:
    import boto3

    with aws_errors(f"setting up the {service} client"):
        return boto3.Session(region_name=region).client(service)


def ecr_login_password(region: str) -> str:
    """The password for ``docker login --username AWS --password-stdin <registry>``; one ECR
    token is good for every registry the caller may pull from."""
    with aws_errors("getting an ECR login token"):
        data = client("ecr", region).get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    if user != "AWS" or not password:
        raise HelperError("ECR returned an authorization token in an unexpected form")
    return password


@dataclass(frozen=True)
class ProjectSecret:
    name: str
    arn: str
    project: str


def _project_of(secret: dict[str, Any]) -> str | None:
    for tag in secret.get("Tags", []):
        if tag.get("Key") == PROJECT_TAG_KEY:
            return str(tag.get("Value"))
    return None


def list_project_secrets(region: str, project: str | None = None) -> list[ProjectSecret]:
    """Connection secrets tagged ``mlflow-aws:project`` (with value ``project`` if given) and
    named ``mlflow-aws/<stack>/<project>``: a secret named otherwise is not one, whatever its
    tags say (helper/trust.py)."""
    from .trust import is_connection_secret_name

    filters = [{"Key": "tag-key", "Values": [PROJECT_TAG_KEY]}]
    if project is not None:
        filters.append({"Key": "tag-value", "Values": [project]})
    found = []
    with aws_errors("listing the projects' connection secrets"):
        pages = client("secretsmanager", region).get_paginator("list_secrets")
        for page in pages.paginate(Filters=filters):
            for secret in page["SecretList"]:
                tagged = _project_of(secret)
                # The two filters match independently; keep only this exact key=value pair.
                if tagged is None or (project is not None and tagged != project):
                    continue
                if is_connection_secret_name(secret["Name"], tagged):
                    found.append(ProjectSecret(secret["Name"], secret["ARN"], tagged))
    return sorted(found, key=lambda s: s.name)


def _discovered_secret(project: str, region: str) -> tuple[str, str | None]:
    """The project's secret found by its tag and name (ARN), and a note to print; the one this
    user read before wins, and a different one in its place is refused until named."""
    from . import trust

    candidates = list_project_secrets(region, project)
    if not candidates:
        raise OutputsError(
            f"no connection secret tagged {PROJECT_TAG_KEY}={project} and named "
            f"{connection_secret_name('<stack>', project)} in {region}. Check the project name "
            f"(`{helper_command()} projects --from-aws`) and the region (AWS_REGION), or use "
            "--outputs FILE / --stack S"
        )
    pins = trust.pins()
    remembered = []
    for candidate in candidates:
        account = candidate.arn.split(":")[4]
        pin = pins.get(pins.key(account, region, project))
        if pin is not None:
            remembered.append(pin)
            if pin.arn == candidate.arn:
                others = [c.name for c in candidates if c is not candidate]
                note = (
                    f"note: several stacks have a project {project!r} ({', '.join(others)}); "
                    f"using {candidate.name}, the one you used before (--secret-id picks)"
                    if others
                    else None
                )
                return candidate.arn, note
    if remembered:
        pin = remembered[0]
        names = ", ".join(c.name for c in candidates)
        raise OutputsError(
            f"the connection secret of project {project} has changed: you used {pin.arn} "
            f"(first on {pin.since}), and now {names} is there instead. If the platform "
            "engineer re-created the project, confirm with --secret-id NAME; if nobody did, "
            "someone may have planted it: do not use it, tell the platform engineer"
        )
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise OutputsError(
            f"several stacks have a project {project!r}: {names}. Pick one with --secret-id NAME"
        )
    return candidates[0].arn, None


def load_connection_from_aws(
    project: str, region: str | None, secret_id: str | None = None
) -> ProjectConnection:
    """The project's connection bundle from its Secrets Manager secret, checked against the
    secret's own account, region and stack (helper/trust.py) and remembered per project."""
    from . import trust

    region = resolve_region(region)
    note = None
    if secret_id is None:
        secret_id, note = _discovered_secret(project, region)
    with aws_errors(f"reading the connection secret {secret_id}"):
        value = client("secretsmanager", region).get_secret_value(SecretId=secret_id)
    source = f"connection secret {value.get('Name', secret_id)}"
    identity = trust.secret_identity(str(value.get("ARN", "")), project, source)
    if identity.region != region:
        raise OutputsError(f"{source} is in {identity.region}, not in {region}")
    try:
        data = json.loads(value.get("SecretString") or "")
    except json.JSONDecodeError:
        raise OutputsError(f"{source} does not hold a JSON object") from None
    connection = parse_connection_bundle(data, source)
    if connection.project != project:
        raise OutputsError(f"{source} belongs to project {connection.project!r}, not {project!r}")
    trust.check_bundle(connection, identity, source)
    pins = trust.pins()
    key = pins.key(identity.account, identity.region, project)
    pin = pins.get(key)
    if pin is None or pin.arn != identity.arn:
        if pin is not None:
            sys.stderr.write(
                f"note: the connection secret of project {project} is now {identity.arn} (you "
                f"used {pin.arn} since {pin.since}); remembering this one\n"
            )
        pins.put(key, identity.arn)
    if note:
        sys.stderr.write(note + "\n")
    return dataclasses.replace(connection, secret_arn=identity.arn)
