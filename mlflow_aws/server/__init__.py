"""What runs inside the server image around ``mlflow server`` (``docker/entrypoint.sh``)."""
