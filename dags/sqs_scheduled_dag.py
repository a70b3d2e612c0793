"""sqs_scheduled_dag: S3 restore events from SQS -> download -> debag -> sync into the archive.

The poll task goes "up for retry" while no restore event is waiting; the three phases are
mapped per work in a task group, so one bad work fails alone. Settings: docs/configuration.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task, task_group

from glacier_sync_airflow import load_settings, poll_restored_works, run_phase

SETTINGS = load_settings()


@dag(
    dag_id="sqs_scheduled_dag",
    schedule=SETTINGS.sqs_schedule,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=SETTINGS.max_active_runs,
    default_args={"retries": SETTINGS.task_retries, "retry_delay": timedelta(minutes=5)},
    tags=["glacier-sync", SETTINGS.env],
    doc_md=__doc__,
)
def sqs_scheduled_dag() -> None:
    """Restored bags from the SQS restore events to the archive."""

    @task(
        retries=SETTINGS.poll_retries,
        retry_delay=timedelta(seconds=SETTINGS.poll_retry_delay_seconds),
    )
    def get_restored_object_messages() -> list[int]:
        """Record the waiting restore events; return the progress ids of this run's works."""
        return poll_restored_works(SETTINGS)

    @task
    def download_from_messages(progress_id: int) -> int:
        """Download one restored bag zip into the incoming folder."""
        return run_phase(SETTINGS, "download", progress_id)

    @task
    def debag_downloads(progress_id: int) -> int:
        """Validate one bag and extract it into its work folder."""
        return run_phase(SETTINGS, "debag", progress_id)

    @task
    def sync_debagged(progress_id: int) -> int:
        """Sync one work folder into the archive."""
        return run_phase(SETTINGS, "sync", progress_id)

    @task_group(prefix_group_id=False)
    def process_work(progress_id: int) -> None:
        """One work's phases; each mapped instance of the group runs on its own."""
        sync_debagged(debag_downloads(download_from_messages(progress_id)))

    process_work.expand(progress_id=get_restored_object_messages())


dag = sqs_scheduled_dag()

if __name__ == "__main__":
    dag.test()
