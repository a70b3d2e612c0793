"""down_scheduled_dag: bag zips dropped by hand into the incoming folder -> debag -> sync.

Each zip under ``<data_root>/incoming`` that no progress row knows yet is registered, then
debagged and synced, mapped per work. Settings: docs/configuration.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task, task_group

from glacier_sync_airflow import load_settings, run_phase, scan_incoming

SETTINGS = load_settings()


@dag(
    dag_id="down_scheduled_dag",
    schedule=SETTINGS.down_schedule,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=SETTINGS.max_active_runs,
    default_args={"retries": SETTINGS.task_retries, "retry_delay": timedelta(minutes=5)},
    tags=["glacier-sync", SETTINGS.env],
    doc_md=__doc__,
)
def down_scheduled_dag() -> None:
    """Bags dropped into the incoming folder to the archive."""

    @task
    def find_dropped_bags() -> list[int]:
        """Register the new zips in the incoming folder; return this run's progress ids."""
        return scan_incoming(SETTINGS)

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
        sync_debagged(debag_downloads(progress_id))

    process_work.expand(progress_id=find_dropped_bags())


dag = down_scheduled_dag()

if __name__ == "__main__":
    dag.test()
