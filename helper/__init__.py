"""``python -m helper``: run a project's MLflow tracking server on 127.0.0.1 for a teammate.

The package imports nothing heavy (mlflow, boto3, pulumi) at module level, so ``--help`` and
``env`` stay instant; each side effect imports what it needs when it runs.
"""
