"""sqs_scheduled_dag: S3 restore events from SQS -> download -> debag -> sync into the archive.

The poll task goes "up for retry" while no restore event is waiting; the three phases are
mapped per batch of works in a task group (each instance labelled with its work ids), and each
work runs and records its phases on its own, so one bad work fails alone. The event-driven twin,
sqs_event_dag, runs the same tasks within seconds of an event; this one is the fallback on a
schedule. Settings: docs/configuration.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag

from glacier_sync_airflow import dag_arguments, load_settings, restore_tasks

SETTINGS = load_settings()


@dag(dag_id="sqs_scheduled_dag", **dag_arguments(SETTINGS, SETTINGS.sqs_schedule, __doc__))
def sqs_scheduled_dag() -> None:
    """Restored bags from the SQS restore events to the archive."""
    restore_tasks(
        SETTINGS,
        retries=SETTINGS.poll_retries,
        retry_delay=timedelta(seconds=SETTINGS.poll_retry_delay_seconds),
    )


dag = sqs_scheduled_dag()

if __name__ == "__main__":
    dag.test()
