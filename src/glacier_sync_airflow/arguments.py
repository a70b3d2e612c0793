"""The arguments every DAG of the project shares."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from glacier_sync.settings import Settings
from glacier_sync_airflow.notifier import failure_callbacks


def dag_arguments(settings: Settings, schedule: Any, doc: str | None) -> dict[str, Any]:
    """The arguments the DAGs share: no catch-up, runs and retries from the settings, a notice
    when a run fails (when a channel is configured)."""
    return {
        "schedule": schedule,
        "start_date": datetime(2025, 1, 1),
        "catchup": False,
        "max_active_runs": settings.max_active_runs,
        "default_args": {
            "retries": settings.task_retries,
            "retry_delay": timedelta(seconds=settings.task_retry_delay_seconds),
        },
        "tags": ["glacier-sync", settings.env],
        "doc_md": doc,
        **failure_callbacks(settings),
    }
