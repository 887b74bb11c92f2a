"""The image's migration step (``prepare``), run before ``mlflow server`` by
``docker/entrypoint.sh`` and by ``helper upgrade`` (README.md "Five things called server")."""
