"""Sign in to the central MLflow server with the AWS identity the caller already has.

The client signs an ``sts:GetCallerIdentity`` request with its own credentials (SigV4) and
sends the signed request as a bearer token; the server replays it to STS and learns who is
calling without ever seeing a secret (like Vault's AWS auth and the EKS IAM authenticator).

* ``token``: the token format, signing (client) and the checks before replaying (server);
* ``sign_in_app``: the ``mlflow server --app-name aws-iam`` app (entry point group ``mlflow.app``);
* ``client``: the ``MLFLOW_TRACKING_AUTH=aws-iam`` plugin (``mlflow.request_auth_provider``)
  and the token source the helper's local proxy shares.
"""

# The client plugin's name (MLFLOW_TRACKING_AUTH, entry point group mlflow.request_auth_provider):
# here, not in client.py, so the helper can print it without importing mlflow.
PROVIDER_NAME = "aws-iam"
