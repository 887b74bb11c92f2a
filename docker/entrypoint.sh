#!/usr/bin/env bash
# Start the MLflow tracking server with the tuned defaults of server.env.
#
# Each KEY=VALUE line of server.env (next to this script in the image, /app; in the repository
# mlflow_aws/server.env) is exported only when KEY is not
# already in the environment, so `docker run --env-file` or `-e` always wins. Every server
# option is read from an MLFLOW_* variable, so nothing (least of all a secret) needs argv.
#   entrypoint.sh [extra mlflow server options]   run the server
#   entrypoint.sh healthcheck                     exit 0 when /health answers (HEALTHCHECK)
set -euo pipefail

here=$(dirname "$0")
server_env="$here/server.env"
[ -f "$server_env" ] || server_env="$here/../mlflow_aws/server.env"
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
  exec python -c '
import os, sys, urllib.request
url = "http://127.0.0.1:%s/health" % os.environ["MLFLOW_PORT"]
sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)
'
fi

exec mlflow server "$@"
