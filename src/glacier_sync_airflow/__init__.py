"""Glue between Airflow and the glacier_sync library; the DAG files only wire these calls.

``clients`` (boto3 through Airflow connections), ``runs`` (a task's run, try and pipeline),
``tasks`` (poll, the phases, the restore run's tasks), ``assets`` (the queues' and the
archive's), ``summary`` (the run's last task), ``arguments`` (what every DAG shares),
``watcher`` (the triggerer's queue watcher), ``restore_request`` and ``ui_users``. The pipeline
itself lives in glacier_sync, which imports nothing from Airflow.
"""

from glacier_sync.settings import load_settings
from glacier_sync_airflow.arguments import dag_arguments
from glacier_sync_airflow.assets import archive_asset, restore_event_asset
from glacier_sync_airflow.clients import HookClients
from glacier_sync_airflow.runs import make_pipeline
from glacier_sync_airflow.summary import summarize
from glacier_sync_airflow.tasks import (
    phase_task,
    poll_restored_works,
    restore_tasks,
    run_phase,
    scan_incoming,
)

__all__ = [
    "HookClients",
    "archive_asset",
    "dag_arguments",
    "load_settings",
    "make_pipeline",
    "phase_task",
    "poll_restored_works",
    "restore_event_asset",
    "restore_tasks",
    "run_phase",
    "scan_incoming",
    "summarize",
]
