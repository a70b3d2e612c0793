"""A failed run, told to the notice channels (e-mail, webhook) through Airflow's notifier
interface: the DAGs' ``on_failure_callback``, which Airflow calls once per failed run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier

from glacier_sync.alerts.dispatch import channels_from, send_run_failure
from glacier_sync.settings import Settings


class RunFailureNotifier(BaseNotifier):
    """Sends "run X of DAG Y failed" with the reason and the run's link; never raises."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def notify(self, context: Any) -> None:
        dag_run = context.get("dag_run")
        dag = context.get("dag")
        dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", "?")
        run_id = getattr(dag_run, "run_id", None) or context.get("run_id", "?")
        reason = context.get("reason") or "a task of the run failed"
        send_run_failure(self.settings, dag_id, run_id, str(reason))


def failure_callbacks(settings: Settings) -> dict[str, Any]:
    """``on_failure_callback`` for a DAG when a notice channel is configured, else nothing."""
    if not channels_from(settings):
        return {}
    return {"on_failure_callback": RunFailureNotifier(settings)}
