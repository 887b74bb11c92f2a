"""``python -m helper``: argument parsing and dispatch. Failures become one message, no traceback.

Only the standard library and the helper's own light modules are imported here; mlflow, boto3
and pulumi load inside the commands that need them, so ``--help`` and ``env`` stay instant.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .artifacts import add_artifacts_option
from .errors import HelperError
from .invocation import helper_command
from .outputs import ProjectConnection, ProjectOutputs, StackOutputs
from .supervise import export_line

if TYPE_CHECKING:
    from .runtimes import LocalStore

DEFAULT_PORT = 5000
DEFAULT_SOURCE_NOTE = "default: --from-aws"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _add_sources(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"where the stack's outputs come from ({DEFAULT_SOURCE_NOTE})"
    )
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--stack",
        metavar="S",
        help="read stack S's outputs with the pulumi CLI (`pulumi stack output --json --stack S`)",
    )
    exclusive.add_argument(
        "--outputs",
        metavar="FILE",
        type=Path,
        help="a file saved with `pulumi stack output --json > FILE` (it holds no password)",
    )
    exclusive.add_argument(
        "--from-aws",
        action="store_true",
        help="read the project's connection secret from AWS Secrets Manager (AWS credentials only)",
    )
    group.add_argument(
        "--secret-id",
        metavar="NAME",
        help="with --from-aws: the secret to read when several stacks have the project "
        "(mlflow-aws/<stack>/<project>)",
    )


def _add_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port on 127.0.0.1 (default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=helper_command(),
        description="Run a project's MLflow tracking server on 127.0.0.1 for you.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the project's server until Ctrl-C",
        description="Run the project's MLflow server on 127.0.0.1 until Ctrl-C.",
    )
    serve.add_argument("--project", metavar="NAME", help="the project (with --local: 'default')")
    _add_sources(serve)
    _add_port(serve)
    serve.add_argument(
        "--runtime",
        choices=("docker", "process"),
        help="docker: the stack's image (default); process: the same server as a local process",
    )
    _add_db_ca(serve)
    _add_local(serve, "serve the embedded default: SQLite and local artifacts, no AWS, no Docker")
    _add_remote(
        serve,
        "use the stack's central server: a local proxy that signs each request with your AWS "
        "identity (no Docker, no database access, no MLflow server here)",
    )
    add_artifacts_option(serve)

    command = commands.add_parser(
        "command", help="print the docker run command serve would use (no secret values)"
    )
    command.add_argument("--project", metavar="NAME", required=True)
    _add_sources(command)
    _add_port(command)

    env = commands.add_parser("env", help="print `export MLFLOW_TRACKING_URI=…` for a server")
    _add_port(env)
    _add_remote(
        env,
        "print the lines for the central server with the aws-iam client plugin "
        "(training jobs, CI); needs --project and a source",
    )
    env.add_argument("--project", metavar="NAME", help="with --remote: the project")
    _add_sources(env)
    add_artifacts_option(env)

    upgrade = commands.add_parser(
        "upgrade",
        help="migrate the project's schema to this MLflow version (the image's migration step, "
        "under the schema's migration lock; --local: mlflow db upgrade)",
    )
    upgrade.add_argument("--project", metavar="NAME", help="the project (with --local: 'default')")
    _add_sources(upgrade)
    _add_db_ca(upgrade)
    _add_local(upgrade, "upgrade the embedded default's SQLite database")
    upgrade.add_argument(
        "--despite-connections",
        action="store_true",
        help="upgrade even while other servers of the project are connected (their writes "
        "during the migration may be lost or break it)",
    )

    projects = commands.add_parser("projects", help="list the stack's projects")
    _add_sources(projects)
    _add_gc(commands)
    from .restore import add_restore_commands

    add_restore_commands(commands, _add_db_ca)
    return parser


def _add_gc(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gc = commands.add_parser(
        "gc",
        help="remove what MLflow marked deleted: runs, their rows and artifacts, experiments, "
        "logged models, and traces past a retention",
        description="Permanently remove the project's deleted runs (rows and artifacts), "
        "deleted logged models and experiments, and traces older than --trace-retention, with "
        "the project's rights only. Nothing that is not deleted is touched; what stays is "
        "listed with the reason.",
    )
    gc.add_argument("--project", metavar="NAME", help="the project (with --local: 'default')")
    _add_sources(gc)
    gc.add_argument(
        "--older-than",
        metavar="AGE",
        default="0",
        help="only what was deleted at least AGE ago: 30d, 12h, 1d12h, 90m (default: 0, "
        "everything deleted)",
    )
    gc.add_argument(
        "--trace-retention",
        metavar="AGE",
        help="also remove traces older than AGE in every experiment (default: traces go only "
        "with their deleted experiment)",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="report what would be removed; change nothing"
    )
    gc.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON line, last"
    )
    _add_db_ca(gc)
    _add_local(gc, "collect the embedded default's SQLite store and artifact directory")


def _add_db_ca(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db-ca",
        type=Path,
        metavar="FILE",
        help="verify the database's TLS certificate against this CA bundle instead of the one "
        "in the project's connection bundle (the stack's RDS bundle, used by default: the "
        "certificate and host name are always verified)",
    )


def _add_remote(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--remote", action="store_true", help=help_text)


def _remote_tracking_uri(connection: ProjectConnection) -> str:
    if connection.tracking_uri is None:
        raise HelperError(
            f"project {connection.project} has no central server (its TrackingUri is empty): "
            "the stack needs `server.enabled`; until then serve it here without --remote",
            2,
        )
    return connection.tracking_uri


def _serve_remote(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("--local", args.local), ("--runtime", args.runtime),
             ("--db-ca", args.db_ca), ("--data-dir", args.data_dir)) if value]  # fmt: skip
    if given:
        raise HelperError(f"--remote uses the central server; drop {', '.join(given)}", 2)
    _require_project(args)
    from . import artifacts
    from .proxy import serve_remote

    connection = load_connection(args)
    tracking_uri = _remote_tracking_uri(connection)
    # The client runs here and the server in the cloud: presigned only if S3 answers here.
    mode, why = artifacts.choose(args.artifacts, connection.region, probe=True)
    return serve_remote(tracking_uri, args.port, connection.region, artifacts=(mode, why))


def _add_local(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--local", action="store_true", help=help_text)
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="with --local: where projects live (default: $XDG_DATA_HOME/mlflow-aws or "
        "~/.local/share/mlflow-aws)",
    )


# -- sources ----------------------------------------------------------------------------------


def _source_argv(args: argparse.Namespace) -> list[str]:
    """The source options as given, to repeat them in a suggested command."""
    if args.stack:
        return ["--stack", args.stack]
    if args.outputs:
        return ["--outputs", str(args.outputs)]
    return ["--from-aws", *(["--secret-id", args.secret_id] if args.secret_id else [])]


def _check_source_options(args: argparse.Namespace) -> None:
    if args.secret_id and (args.stack or args.outputs):
        raise HelperError("--secret-id goes with --from-aws, not with --stack or --outputs", 2)


def _validated_project(name: str) -> str:
    from mlflow_aws.names import name_problem

    problem = name_problem(name)
    if problem is not None:
        raise HelperError(f"--project {name!r}: {problem}", 2)
    return name


def _stack_outputs(args: argparse.Namespace) -> StackOutputs | None:
    """The stack outputs from --outputs or --stack; None for --from-aws (the default)."""
    from .outputs import load_outputs_file, load_stack_outputs

    if args.outputs:
        return load_outputs_file(args.outputs)
    if args.stack:
        return load_stack_outputs(args.stack)
    return None


@dataclass(frozen=True)
class SecretLocation:
    """Where the project's connection secret is: all the input says, checked, before AWS."""

    project: str
    region: str | None  # None: the user's region
    secret_id: str | None  # None: found by its project tag
    # From --outputs / --stack: the project's entry, checked against the secret's bundle.
    outputs: ProjectOutputs | None = None
    source: str = ""


def connection_source(args: argparse.Namespace) -> SecretLocation:
    """The options, the project name and the outputs (file or CLI) checked: every input error
    is said here, before Docker or AWS is asked anything."""
    _check_source_options(args)
    project = _validated_project(args.project)
    outputs = _stack_outputs(args)
    if outputs is not None:
        from .trust import secret_identity

        entry = outputs.project(project)
        where = f"outputs file {args.outputs}" if args.outputs else f"stack {args.stack!r}"
        arn = entry.connection_secret_arn
        identity = secret_identity(arn, project, f"{where}: Projects.{project}.ConnectionSecretArn")
        if identity.region != outputs.region:
            raise HelperError(
                f"{where}: the connection secret of project {project} is in {identity.region}, "
                f"but the outputs' Region is {outputs.region}"
            )
        return SecretLocation(project, outputs.region, arn, entry, where)
    return SecretLocation(project, None, args.secret_id)


def fetch_connection(source: SecretLocation) -> ProjectConnection:
    """The project's connection bundle, read from its secret with the user's AWS credentials."""
    from .aws import load_connection_from_aws

    connection = load_connection_from_aws(source.project, source.region, source.secret_id)
    if source.outputs is not None:
        from .trust import check_outputs_entry

        if connection.secret_arn != source.outputs.connection_secret_arn:
            raise HelperError(
                f"{source.source}: AWS answered for {connection.secret_arn}, not for the secret "
                f"the outputs name ({source.outputs.connection_secret_arn})"
            )
        assert source.region is not None
        check_outputs_entry(source.region, source.outputs, connection, source.source)
    return connection


def load_connection(args: argparse.Namespace) -> ProjectConnection:
    return fetch_connection(connection_source(args))


def _upgrade_hint(args: argparse.Namespace, project: str) -> str:
    command = helper_command().split()
    if getattr(args, "local", False):
        local = ["--local", "--project", project]
        if args.data_dir:
            local += ["--data-dir", str(args.data_dir)]
        return shlex.join([*command, "upgrade", *local])
    return shlex.join([*command, "upgrade", "--project", project, *_source_argv(args)])


# -- commands ---------------------------------------------------------------------------------


def _reject_remote_options_with_local(args: argparse.Namespace) -> None:
    given = [flag for flag, value in (("--stack", args.stack), ("--outputs", args.outputs),
             ("--from-aws", args.from_aws), ("--secret-id", args.secret_id),
             ("--db-ca", args.db_ca)) if value]  # fmt: skip
    if getattr(args, "runtime", None) == "docker":
        given.append("--runtime docker")
    if given:
        raise HelperError(
            f"--local runs the embedded default (SQLite, no AWS, no Docker); "
            f"drop {', '.join(given)}",
            2,
        )


def _local(args: argparse.Namespace) -> LocalStore:
    from .runtimes import DEFAULT_LOCAL_PROJECT, default_data_dir, local_store

    _reject_remote_options_with_local(args)
    # An empty --project is a mistake to say, not a reason to serve the default project.
    project = _validated_project(DEFAULT_LOCAL_PROJECT if args.project is None else args.project)
    data_dir = args.data_dir or default_data_dir(os.environ)
    return local_store(data_dir, project)


def _require_project(args: argparse.Namespace) -> None:
    if args.project is None:
        raise HelperError(
            f"{args.command} needs --project NAME (list them with `{helper_command()} projects`)",
            2,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from . import runtimes

    if args.remote:
        return _serve_remote(args)
    if args.artifacts != "auto":
        raise HelperError(
            "--artifacts goes with --remote: a server on this machine reaches S3 from here, "
            "and so does its client (presigned)",
            2,
        )
    if args.local:
        store = _local(args)
        return runtimes.serve_local(store, args.port, _upgrade_hint(args, store.project))
    if args.data_dir:
        raise HelperError("--data-dir goes with --local", 2)
    _require_project(args)
    from . import checks, tls

    # What the user typed first (options, name, outputs, --db-ca), then what this machine
    # lacks (Docker, packages), then AWS.
    source = connection_source(args)
    tls.read_db_ca(args.db_ca)
    if args.runtime == "process":
        checks.require_server_packages("serve --runtime process")
        connection = fetch_connection(source)
        hint = _upgrade_hint(args, connection.project)
        return runtimes.serve_process(connection, args.port, hint, args.db_ca)
    docker = checks.check_docker()  # before any AWS call: the fix (--runtime process) comes first
    checks.require_server_packages("serve (its login to the database before the container)")
    connection = fetch_connection(source)
    hint = _upgrade_hint(args, connection.project)
    return runtimes.serve_docker(connection, args.port, hint, args.db_ca, docker)


def cmd_command(args: argparse.Namespace) -> int:
    from .runtimes import docker_command_text

    connection = load_connection(args)
    sys.stderr.write(
        "# each -e NAME takes its value from the helper's environment when serve runs it "
        "(the store, the server role's credentials, the database CAs): no value is shown, "
        "none goes into argv or a file\n"
    )
    print(docker_command_text(connection, args.port))
    return 0


def _print_artifact_lines(mode: str, why: str, remote: bool) -> None:
    from mlflow_aws.artifact_settings import PRESIGNED, S3_ROUTE_HINT, describe

    from .artifacts import export_lines

    for line in export_lines(mode):
        print(line)
    # Not in the export lines themselves: a comment there would end `eval $(...)` early.
    sys.stderr.write(f"# {describe(mode)}: {why}\n")
    if remote and mode == PRESIGNED:
        sys.stderr.write(f"# {S3_ROUTE_HINT}; or print the lines with --artifacts proxied\n")


def cmd_env(args: argparse.Namespace) -> int:
    from .artifacts import choose

    if not args.remote:
        if args.project or args.stack or args.outputs or args.from_aws or args.secret_id:
            raise HelperError("--project and the source options go with --remote", 2)
        print(export_line(args.port))
        sys.stderr.write(
            "# also export MLFLOW_TRACKING_TOKEN: the secret of the server's run, which serve "
            "prints in its own export line (the server answers nothing else)\n"
        )
        _print_artifact_lines(*choose(args.artifacts, None, probe=False), remote=False)
        return 0
    _require_project(args)
    connection = load_connection(args)
    from mlflow_aws.auth import PROVIDER_NAME
    from mlflow_aws.auth.signer import STS_REGION_ENV

    # The central server's region: tokens are signed for its STS endpoint.
    for key, value in (
        ("MLFLOW_TRACKING_URI", _remote_tracking_uri(connection)),
        ("MLFLOW_TRACKING_AUTH", PROVIDER_NAME),
        (STS_REGION_ENV, connection.region),
    ):
        print(f"export {key}={shlex.quote(value)}")
    # The job runs elsewhere: what it can reach is not known here.
    _print_artifact_lines(*choose(args.artifacts, None, probe=False), remote=True)
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from . import checks, tls
    from .runtimes import verified_store
    from .upgrade import run_upgrade

    if args.local:
        store = _local(args)
        if not store.database_path.exists():
            raise HelperError(f"no local database at {store.database_path}: nothing to upgrade")
        checks.check_mlflow_installed("upgrade --local")
        what = f"the local store of project {store.project}"
        checks.check_schema_version(store.backend_store_uri, what, "", may_migrate=True)
        return run_upgrade(store.backend_store_uri, f"local project {store.project}")
    if args.data_dir:
        raise HelperError("--data-dir goes with --local", 2)
    _require_project(args)
    source = connection_source(args)
    tls.read_db_ca(args.db_ca)
    checks.require_server_packages("upgrade")
    connection = fetch_connection(source)
    checks.check_mlflow_version(connection.mlflow_version)
    with verified_store(connection, args.db_ca) as verified:
        what = f"the schema of project {connection.project} ({connection.database})"
        # Every writer stopped first: MLflow supports no servers of mixed versions.
        others = checks.other_sessions(verified.uri)
        if others and not args.despite_connections:
            raise HelperError(
                f"not upgrading {what} while other servers use it: {'; '.join(others)}. Stop "
                "them (teammates' helper serve, the central service) and run this again, or "
                "add --despite-connections"
            )
        checks.check_schema_version(verified.uri, what, "", may_migrate=True)
        return run_upgrade(
            verified.uri, f"project {connection.project} (schema {connection.database})"
        )


def cmd_projects(args: argparse.Namespace) -> int:
    _check_source_options(args)
    outputs = _stack_outputs(args)
    if outputs is not None:
        for name in sorted(outputs.projects):
            print(f"{name}\t{outputs.projects[name].artifact_root}")
        return 0
    from .aws import list_project_secrets, resolve_region

    region = resolve_region()
    secrets = list_project_secrets(region)
    if args.secret_id:
        secrets = [s for s in secrets if args.secret_id in (s.name, s.arn)]
    if not secrets:
        raise HelperError(f"no mlflow-aws connection secrets visible in {region}")
    for secret in secrets:
        print(f"{secret.project}\t{secret.name}")
    return 0


def _restore(command: str, args: argparse.Namespace) -> int:
    from . import restore

    result: int = getattr(restore, command)(args)
    return result


def cmd_gc(args: argparse.Namespace) -> int:
    from mlflow_aws.gc import GcError, Options, batch_rows_from, parse_duration

    from . import gc

    try:
        options = Options(
            older_than_ms=parse_duration(args.older_than, "--older-than"),
            trace_retention_ms=(
                parse_duration(args.trace_retention, "--trace-retention")
                if args.trace_retention
                else None
            ),
            dry_run=args.dry_run,
            batch_rows=batch_rows_from(os.environ),
        )
    except GcError as exc:
        raise HelperError(str(exc), 2) from None
    if args.local:
        return gc.gc_local(_local(args), options, args.json)
    if args.data_dir:
        raise HelperError("--data-dir goes with --local", 2)
    _require_project(args)
    return gc.gc_connection(load_connection(args), args.db_ca, options, args.json)


COMMANDS = {
    "serve": cmd_serve,
    "command": cmd_command,
    "env": cmd_env,
    "upgrade": cmd_upgrade,
    "projects": cmd_projects,
    "gc": cmd_gc,
    "restore-plan": lambda args: _restore("cmd_restore_plan", args),
    "restore-schema": lambda args: _restore("cmd_restore_schema", args),
    "restore-artifacts": lambda args: _restore("cmd_restore_artifacts", args),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HelperError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
