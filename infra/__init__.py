"""Shared infrastructure of an mlflow-aws stack: config, artifact store, database, image."""
