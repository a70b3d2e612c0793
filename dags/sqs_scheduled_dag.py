"""sqs_scheduled_dag: S3 restore events from SQS -> download -> debag -> sync into the archive.

The poll task goes "up for retry" while no restore event is waiting; the three phases are
mapped per work in a task group, so one bad work fails alone. Settings: docs/configuration.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task, task_group

from glacier_sync_airflow import (
    dag_arguments,
    load_settings,
    phase_task,
    poll_restored_works,
)

SETTINGS = load_settings()


@dag(dag_id="sqs_scheduled_dag", **dag_arguments(SETTINGS, SETTINGS.sqs_schedule, __doc__))
def sqs_scheduled_dag() -> None:
    """Restored bags from the SQS restore events to the archive."""

    @task(
        retries=SETTINGS.poll_retries,
        retry_delay=timedelta(seconds=SETTINGS.poll_retry_delay_seconds),
    )
    def get_restored_object_messages() -> list[int]:
        """Record the waiting restore events; return the progress ids of this run's works."""
        return poll_restored_works(SETTINGS)

    download = phase_task(SETTINGS, "download", "download_from_messages")
    debag = phase_task(SETTINGS, "debag", "debag_downloads")
    sync = phase_task(SETTINGS, "sync", "sync_debagged")

    @task_group(prefix_group_id=False)
    def process_work(progress_id: int) -> None:
        """One work's phases; each mapped instance of the group runs on its own."""
        sync(debag(download(progress_id)))

    process_work.expand(progress_id=get_restored_object_messages())


dag = sqs_scheduled_dag()

if __name__ == "__main__":
    dag.test()
