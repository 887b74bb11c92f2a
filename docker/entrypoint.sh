#!/usr/bin/env bash
# Start the MLflow tracking server with the tuned defaults of server.env.
#
# Each KEY=VALUE line of server.env (next to this script in the image, /app; in the repository
# mlflow_aws/server.env) is exported only when KEY is not
# already in the environment, so `docker run --env-file` or `-e` always wins. Every server
# option is read from an MLFLOW_* variable, so nothing (least of all a secret) needs argv.
#   entrypoint.sh [extra mlflow server options]   run the server
#
# With MLFLOW_AWS_RUN_SECRET set (the helper's docker runtime: a teammate's laptop server), the
# server is `mlflow server --app-name mlflow-aws-run-secret`: only clients holding the run's
# secret are served (mlflow_aws/run_secret.py; it listens on 0.0.0.0 inside the container). The
# helper names the app itself; the entrypoint adds it when the options name no app, so a set
# secret is never silently ignored, and refuses another app with a secret.
#   entrypoint.sh healthcheck                     exit 0 when /health answers (HEALTHCHECK)
#   entrypoint.sh gc                              one gc of the project (python -m mlflow_aws.gc)
#   entrypoint.sh migrate                         create or upgrade the schema, then exit (the
#                                                 upgrade's one migration task, whatever
#                                                 MLFLOW_AWS_DB_MIGRATE_ON_START says)
#
# Before the server starts, on a MySQL backend store (MLFLOW_BACKEND_STORE_URI mysql*):
#   * TLS is verified: without ssl_ca in the URI, the CA bundle (PEM) in MLFLOW_AWS_DB_CA_BUNDLE
#     is written to a private file (0600) and the URI gets ssl_ca=<file>, so PyMySQL requires
#     TLS and checks the certificate and the host name. Neither: refused, unless
#     MLFLOW_AWS_DB_TLS_INSECURE=1 (an opt-out for tests only: the link is then unverified).
#   * the database closes the server's connections after MLFLOW_AWS_DB_IDLE_SECONDS idle (a
#     session wait_timeout in the URI's init_command), so an idle server lets Aurora pause;
#   * `python -m mlflow_aws.migration.prepare` refuses a schema of another MLflow version than this
#     one (saying which to run); with MLFLOW_AWS_DB_MIGRATE_ON_START=true it creates or
#     upgrades an older schema under a MySQL named lock: several servers starting together
#     migrate it exactly once; a failed migration exits non-zero and the server never starts.
# The URI is never printed and never put in argv.
set -euo pipefail

here=$(dirname "$0")
server_env="$here/server.env"
package_root=""
if [ ! -f "$server_env" ]; then
  # In the repository: mlflow_aws is importable from its root (in the image it is installed).
  server_env="$here/../mlflow_aws/server.env"
  package_root=$(cd "$here/.." && pwd)
fi
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in '' | '#'*) continue ;; esac
  key=${line%%=*}
  if [[ ! $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ "$key" = "$line" ]; then
    echo "entrypoint.sh: bad line in $server_env: $line" >&2
    exit 2
  fi
  if [ -z "${!key+set}" ]; then
    export "$key=${line#*=}"
  fi
done <"$server_env"

if [ "${1:-}" = "healthcheck" ]; then
  # /health (under MLFLOW_STATIC_PREFIX when set) answers without touching the database.
  exec python -c '
import os, sys, urllib.request
url = "http://127.0.0.1:%s%s/health" % (
    os.environ["MLFLOW_PORT"], os.environ.get("MLFLOW_STATIC_PREFIX", "").rstrip("/"))
sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)
'
fi

run_module() {
  if [ -n "$package_root" ]; then
    PYTHONPATH="$package_root${PYTHONPATH:+:$PYTHONPATH}" python -P -m "$@"
  else
    python -P -m "$@"
  fi
}

refuse() {
  echo "entrypoint.sh: $*" >&2
  exit 2
}

# "?" or "&": what joins one more query parameter to the backend store URI.
next_separator() {
  if [[ $MLFLOW_BACKEND_STORE_URI == *\?* ]]; then echo "&"; else echo "?"; fi
}

verify_database_tls() {
  if [[ $MLFLOW_BACKEND_STORE_URI =~ [?\&]ssl_ca(path)?= ]]; then
    return # the URI names its own CA
  fi
  if [ -n "${MLFLOW_AWS_DB_CA_BUNDLE:-}" ]; then
    case "$MLFLOW_AWS_DB_CA_BUNDLE" in
      *"-----BEGIN CERTIFICATE-----"*) ;;
      *) refuse "MLFLOW_AWS_DB_CA_BUNDLE holds no PEM certificate (is the project's connection bundle missing DatabaseCaBundle?)" ;;
    esac
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/mlflow-aws-db-ca.XXXXXXXX") # mode 0700
    [[ $dir =~ ^[A-Za-z0-9/._-]+$ ]] || refuse "TMPDIR must be a plain path (letters, digits, / . _ -), got $dir"
    (umask 077 && printf '%s\n' "$MLFLOW_AWS_DB_CA_BUNDLE" >"$dir/ca.pem")
    chmod 600 "$dir/ca.pem"
    export MLFLOW_BACKEND_STORE_URI="$MLFLOW_BACKEND_STORE_URI$(next_separator)ssl_ca=$dir/ca.pem"
  elif [ "${MLFLOW_AWS_DB_TLS_INSECURE:-}" = "1" ]; then
    echo "entrypoint.sh: WARNING: MLFLOW_AWS_DB_TLS_INSECURE=1: the database's certificate is NOT verified (tests only)" >&2
  else
    refuse "refusing a MySQL backend store whose TLS certificate cannot be verified: set MLFLOW_AWS_DB_CA_BUNDLE to the database's CA bundle (PEM; the connection bundle's DatabaseCaBundle) or ssl_ca in the URI"
  fi
}

close_idle_connections() {
  if [[ $MLFLOW_BACKEND_STORE_URI =~ [?\&]init_command= ]]; then
    return # the caller chose the session settings (the helper sets the same wait_timeout)
  fi
  local seconds=${MLFLOW_AWS_DB_IDLE_SECONDS:-}
  [[ $seconds =~ ^[0-9]+$ ]] || refuse "MLFLOW_AWS_DB_IDLE_SECONDS must be a whole number of seconds, got '$seconds'"
  export MLFLOW_BACKEND_STORE_URI="$MLFLOW_BACKEND_STORE_URI$(next_separator)init_command=SET%20SESSION%20wait_timeout%3D$seconds"
}

case "${MLFLOW_BACKEND_STORE_URI:-}" in
  mysql*)
    verify_database_tls
    close_idle_connections
    # Refuses a schema of another MLflow version; with MLFLOW_AWS_DB_MIGRATE_ON_START=true it
    # first creates or upgrades an older one. -P: the working directory is not on sys.path.
    case "${1:-}" in
      gc) ;;
      migrate) MLFLOW_AWS_DB_MIGRATE_ON_START=true run_module mlflow_aws.migration.prepare; exit $? ;;
      *) run_module mlflow_aws.migration.prepare ;;
    esac
    ;;
esac

if [ "${1:-}" = "migrate" ]; then
  refuse "migrate needs a MySQL backend store (MLFLOW_BACKEND_STORE_URI mysql*)"
fi

if [ "${1:-}" = "gc" ]; then
  # One garbage collection of the project (python -m mlflow_aws.gc: settings in its docstring).
  shift
  run_module mlflow_aws.gc "$@"
  exit $?
fi

if [ -n "${MLFLOW_AWS_RUN_SECRET:-}" ]; then
  case " $* " in
    *" --app-name mlflow-aws-run-secret "*) ;;
    *" --app-name"*) refuse "MLFLOW_AWS_RUN_SECRET is set: the server must be --app-name mlflow-aws-run-secret" ;;
    *) set -- --app-name mlflow-aws-run-secret "$@" ;;
  esac
fi

exec mlflow server "$@"
