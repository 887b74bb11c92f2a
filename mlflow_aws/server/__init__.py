"""The image's migration step (``prepare``), run around ``mlflow server`` by
``docker/entrypoint.sh`` and by ``helper upgrade`` (README.md "Five things called server")."""
