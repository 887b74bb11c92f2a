"""mlflow-aws: the parts teammates and servers install (``pip install`` from the repository).

``mlflow_aws.names`` is the project-name rule; ``mlflow_aws.helper`` is the teammate helper
(the repository's ``helper/`` directory, ``python -m helper`` there); ``server.env`` holds the
tuned server settings shared by the image, the helper and the central server.
"""
