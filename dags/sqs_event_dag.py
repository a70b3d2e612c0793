"""sqs_event_dag: restore events start a run within seconds, no polling run waiting.

A watcher in the triggerer asks the restore queues how many messages are visible (it never
receives or deletes one) and updates the asset this DAG is scheduled on when some are waiting;
the run then polls, records every work and deletes the messages, as sqs_scheduled_dag does, and
runs the same tasks. An empty queue skips the run at once (no retries). Unpaused when created
while `event_driven` is on. Settings: docs/configuration.md; design: docs/architecture.md.
"""

from __future__ import annotations

from airflow.sdk import dag

from glacier_sync_airflow import dag_arguments, load_settings, restore_event_asset, restore_tasks

SETTINGS = load_settings()


ARGUMENTS = {
    **dag_arguments(SETTINGS, [restore_event_asset(SETTINGS)], __doc__),
    # A second run may start while one works: it takes the messages the first left visible.
    "max_active_runs": SETTINGS.event_max_active_runs,
}


@dag(dag_id="sqs_event_dag", is_paused_upon_creation=not SETTINGS.event_driven, **ARGUMENTS)
def sqs_event_dag() -> None:
    """Restored bags to the archive, started by the restore queues' watcher."""
    restore_tasks(SETTINGS, retries=0)


dag = sqs_event_dag()

if __name__ == "__main__":
    dag.test()
