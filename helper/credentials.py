"""The project's server runs as the project's server role, not as the teammate.

The helper assumes the role (``ServerRoleArn`` in the connection bundle; it holds the
project's S3 prefix and nothing else) with the teammate's own credentials, then:

* process runtime: serves the role's temporary credentials on 127.0.0.1 the way ECS does
  (``AWS_CONTAINER_CREDENTIALS_FULL_URI`` + ``AWS_CONTAINER_AUTHORIZATION_TOKEN``), renewing
  them before they expire for as long as the helper runs; botocore in the server refreshes
  from it on its own. The server's environment carries no credential of the teammate.
* docker runtime: a container cannot reach the helper's loopback, so it gets one set of the
  role's credentials, as long-lived as AWS allows (12 h, or 1 h when the teammate's own
  session is itself a role, e.g. SSO: "role chaining"); the helper says when they expire.
"""

from __future__ import annotations

import contextlib
import getpass
import hmac
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .aws import aws_errors, client
from .errors import HelperError

RENEW_BEFORE = timedelta(minutes=20)  # botocore itself refreshes 15 min before expiry
PROCESS_SESSION_SECONDS = 3600
DOCKER_SESSION_SECONDS = (12 * 3600, 3600)  # the role's maximum, then the role-chaining cap

# What must not reach the server: any way to the teammate's own identity.
USER_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


def session_name(project: str) -> str:
    """Who is behind the server's calls, as CloudTrail shows it: mlflow-<project>-<user>."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return re.sub(r"[^\w+=,.@-]", "-", f"mlflow-{project}-{user}")[:64]


@dataclass
class RoleCredentials:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime

    def as_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }

    def as_container_json(self) -> bytes:
        """The answer of an ECS credentials endpoint, as botocore reads it."""
        return json.dumps(
            {
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.session_token,
                "Expiration": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()


def assume_server_role(
    role_arn: str,
    region: str,
    project: str,
    durations: tuple[int, ...] = (PROCESS_SESSION_SECONDS,),
) -> RoleCredentials:
    """The server role's credentials, obtained with the teammate's own (tries each duration)."""
    from botocore.exceptions import ClientError

    sts = client("sts", region)
    with aws_errors(f"becoming the server role of project {project} ({role_arn})"):
        for seconds in durations:
            try:
                answer = sts.assume_role(
                    RoleArn=role_arn,
                    RoleSessionName=session_name(project),
                    DurationSeconds=seconds,
                )
                break
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                # "exceeds the 1 hour session limit for roles assumed by role chaining"
                if code == "ValidationError" and seconds != durations[-1]:
                    continue
                raise
    found = answer["Credentials"]
    return RoleCredentials(
        found["AccessKeyId"], found["SecretAccessKey"], found["SessionToken"], found["Expiration"]
    )


class RoleCredentialSource:
    """The role's current credentials, renewed with the teammate's when they near expiry."""

    def __init__(self, role_arn: str, region: str, project: str) -> None:
        self.role_arn, self.region, self.project = role_arn, region, project
        self._lock = threading.Lock()
        self._current = assume_server_role(role_arn, region, project)

    def current(self) -> RoleCredentials:
        with self._lock:
            if self._current.expiration - datetime.now(UTC) < RENEW_BEFORE:
                try:
                    self._current = assume_server_role(self.role_arn, self.region, self.project)
                except HelperError as exc:  # e.g. the teammate's SSO session ended
                    import sys

                    sys.stderr.write(f"warning: cannot renew the server's credentials: {exc}\n")
            return self._current


@contextlib.contextmanager
def credentials_endpoint(source: RoleCredentialSource) -> Iterator[dict[str, str]]:
    """A loopback HTTP endpoint answering only requests that carry a random token; yields the
    environment that makes botocore (in the server) use it."""
    token = secrets.token_urlsafe(32)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            given = self.headers.get("Authorization", "")
            if self.path != "/role-credentials" or not hmac.compare_digest(given, token):
                self.send_response(403)
                self.end_headers()
                return
            body = source.current().as_container_json()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="role-credentials", daemon=True)
    thread.start()
    try:
        yield {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": (
                f"http://127.0.0.1:{server.server_address[1]}/role-credentials"
            ),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        }
    finally:
        server.shutdown()
        server.server_close()


def without_user_credentials(env: dict[str, str]) -> dict[str, str]:
    """``env`` with every route to the teammate's identity closed: no keys, no profile, no
    shared files, no instance metadata (endpoints such as AWS_ENDPOINT_URL stay)."""
    import os

    kept = {k: v for k, v in env.items() if k not in USER_CREDENTIAL_VARIABLES}
    return {
        **kept,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
