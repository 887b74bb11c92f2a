"""The names of mlflow-aws's own environment variables, defined once.

Each is set by one side and read by another (the Pulumi program and the task definitions, the
helper, the image's entrypoint and its Python steps, the aws-iam app and the client plugin), so
its name lives here and both sides import it. What a value means is said where it is read.
"""

from __future__ import annotations

# The aws-iam sign-in (mlflow_aws/auth): set on the central tasks by infra/containers.py.
IAM_AUDIENCE = "MLFLOW_AWS_IAM_AUDIENCE"
IAM_MARKER_URL = "MLFLOW_AWS_IAM_MARKER_URL"
IAM_ALLOWED_ROLES = "MLFLOW_AWS_IAM_ALLOWED_ROLES"
IAM_ALLOWED_GROUPS = "MLFLOW_AWS_IAM_ALLOWED_GROUPS"
IAM_LOG_LEVEL = "MLFLOW_AWS_IAM_LOG_LEVEL"
# The client plugin and the signer: the region whose STS tokens are signed for.
IAM_STS_REGION = "MLFLOW_AWS_IAM_STS_REGION"

# The database (the image's entrypoint and mlflow_aws/migration/prepare.py; server.env's defaults).
DB_CA_BUNDLE = "MLFLOW_AWS_DB_CA_BUNDLE"  # PEM of the database's CAs (ECS secret, the helper)
DB_IDLE_SECONDS = "MLFLOW_AWS_DB_IDLE_SECONDS"
DB_MIGRATE_ON_START = "MLFLOW_AWS_DB_MIGRATE_ON_START"
DB_MIGRATION_LOCK_SECONDS = "MLFLOW_AWS_DB_MIGRATION_LOCK_SECONDS"
DB_TLS_INSECURE = "MLFLOW_AWS_DB_TLS_INSECURE"

# The central tasks: which connection secret version they started with (a rotation rolls them).
CONNECTION_VERSION = "MLFLOW_AWS_CONNECTION_VERSION"

# gc (python -m mlflow_aws.gc; the scheduled task's environment from infra/gc_schedule.py).
PROJECT = "MLFLOW_AWS_PROJECT"
GC_OLDER_THAN = "MLFLOW_AWS_GC_OLDER_THAN"
GC_TRACE_RETENTION = "MLFLOW_AWS_GC_TRACE_RETENTION"
GC_DRY_RUN = "MLFLOW_AWS_GC_DRY_RUN"
GC_BATCH_ROWS = "MLFLOW_AWS_GC_BATCH_ROWS"

# A laptop server's per-run secret and the port browsers use (mlflow_aws/run_secret.py).
RUN_SECRET = "MLFLOW_AWS_RUN_SECRET"  # noqa: S105 (a variable's name, not a secret)
PUBLIC_PORT = "MLFLOW_AWS_PUBLIC_PORT"
ASYNC_EXIT_SECONDS = "MLFLOW_AWS_ASYNC_EXIT_SECONDS"
FAST_EXIT = "MLFLOW_AWS_FAST_EXIT"  # mlflow_aws/async_exit.py: "0" keeps the full teardown
