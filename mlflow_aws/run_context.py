"""``mlflow.run_context_provider`` entry point: how the bound on MLflow's async logging at exit
(``mlflow_aws/async_exit.py``) and the streamed download ranges (``mlflow_aws/presigned_client.py``)
reach every script that has mlflow-aws installed, whatever its tracking URI and without a line
of the user's code.

MLflow loads every registered run context provider when a script first starts a run, which is
before any asynchronous logging can begin (it loads them while ``import mlflow`` runs, before
MLflow registers its own atexit handlers: ``freeze_for_exit`` runs after them); loading this
module installs the bound. The provider adds no tags (``in_context`` is False); being asked
tells ``async_exit`` that this script started a run.
"""

from __future__ import annotations

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlflow_aws import presigned_client
from mlflow_aws.async_exit import install, note_run_started

install()
presigned_client.install()


class BoundedAsyncExit(RunContextProvider):
    def in_context(self) -> bool:
        note_run_started()  # MLflow asks every provider at each start_run
        return False

    def tags(self) -> dict[str, str]:
        return {}
