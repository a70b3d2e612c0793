"""down_scheduled_dag: bag zips dropped by hand into the incoming folder -> debag -> sync.

Each zip under ``<data_root>/incoming`` that no progress row knows yet is registered, then
debagged and synced, mapped per batch of works in a task group (each work runs and records its
phases on its own); the last task summarizes the run and sends the notices now due
(docs/operations.md, "Notices").
Settings: docs/configuration.md.
"""

from __future__ import annotations

from airflow.sdk import dag, task, task_group

from glacier_sync_airflow import (
    dag_arguments,
    load_settings,
    phase_task,
    scan_incoming,
    summarize,
)

SETTINGS = load_settings()


@dag(dag_id="down_scheduled_dag", **dag_arguments(SETTINGS, SETTINGS.down_schedule, __doc__))
def down_scheduled_dag() -> None:
    """Bags dropped into the incoming folder to the archive."""

    @task
    def find_dropped_bags() -> list[list[int]]:
        """Register the new zips in the incoming folder; return this run's works in batches."""
        return scan_incoming(SETTINGS)

    debag = phase_task(SETTINGS, "debag", "debag_downloads")
    sync = phase_task(SETTINGS, "sync", "sync_debagged", trigger_rule="all_done")

    @task_group(prefix_group_id=False)
    def process_works(batch: list[int]) -> None:
        """One batch's phases; each mapped instance of the group runs on its own."""
        debag(batch) >> sync(batch)

    @task(trigger_rule="all_done")
    def summarize_run() -> dict:
        """One line per work, the notices now due (a work this run held); failed when a task
        of the run failed, so that the run says so."""
        return summarize(SETTINGS, works_task_id="find_dropped_bags")

    process_works.expand(batch=find_dropped_bags()) >> summarize_run()


dag = down_scheduled_dag()

if __name__ == "__main__":
    dag.test()
