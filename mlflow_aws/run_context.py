"""``mlflow.run_context_provider`` entry point: how the bound on MLflow's async logging at exit
(``mlflow_aws/async_exit.py``) reaches every training script that has mlflow-aws installed,
whatever its tracking URI and without a line of the user's code.

MLflow loads every registered run context provider when a script first starts a run, which is
before any asynchronous logging can begin; loading this module installs the bound. The provider
itself adds no tags (``in_context`` is False).
"""

from __future__ import annotations

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlflow_aws.async_exit import install

install()


class BoundedAsyncExit(RunContextProvider):
    def in_context(self) -> bool:
        return False

    def tags(self) -> dict[str, str]:
        return {}
