"""Glue between Airflow and the glacier_sync library: settings, hook-based AWS clients, phases.

The DAG files only wire these calls together; the pipeline itself lives in glacier_sync, which
imports nothing from Airflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from glacier_sync.aws import ProfileClients
from glacier_sync.errors import NoRestoredWork, is_transient
from glacier_sync.runner import Pipeline
from glacier_sync.settings import QueueSource, Settings, load_settings

__all__ = [
    "dag_arguments",
    "load_settings",
    "make_pipeline",
    "phase_task",
    "poll_restored_works",
    "run_phase",
    "scan_incoming",
]

PHASE_DOCS = {
    "download": "Download one restored bag zip into the incoming folder.",
    "debag": "Validate one bag and extract it into its work folder.",
    "sync": "Sync one work folder into the archive.",
}


class HookClients:
    """boto3 clients through the Amazon provider's hooks (one Airflow connection per queue).

    A queue entry without ``aws_conn_id`` falls back to its named profile, as outside Airflow.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profiles = ProfileClients(settings)
        self._cache: dict[tuple[str, str, str], Any] = {}

    def client(self, service: str, queue: QueueSource) -> Any:
        """A client for ``service`` from the queue's Airflow connection (or profile)."""
        if not queue.aws_conn_id:
            return self.profiles.client(service, queue)
        key = (service, queue.aws_conn_id, queue.region)
        if key not in self._cache:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            hook = AwsBaseHook(
                aws_conn_id=queue.aws_conn_id, client_type=service, region_name=queue.region
            )
            endpoint = hook.conn_config.endpoint_url or self.settings.aws_endpoint_url
            self._cache[key] = hook.get_session(region_name=queue.region).client(
                service, region_name=queue.region, endpoint_url=endpoint, config=hook.config
            )
        return self._cache[key]


def _context() -> tuple[str, bool]:
    """This run's id and whether this try is the task's last."""
    context = get_current_context()
    ti = context["ti"]
    final = (ti.try_number or 1) > (getattr(ti, "max_tries", 0) or 0)
    return context["run_id"], final


def make_pipeline(settings: Settings, run_id: str) -> Pipeline:
    """A pipeline whose claims are made in the name of the Airflow run."""
    return Pipeline(settings, clients=HookClients(settings), run_id=f"airflow:{run_id}")


def poll_restored_works(settings: Settings) -> list[int]:
    """Poll the queues; raise (the task goes up for retry) while there is nothing to do.

    On the task's last try an empty queue skips the rest of the run instead of failing it.
    """
    run_id, final = _context()
    try:
        return make_pipeline(settings, run_id).poll()
    except NoRestoredWork as exc:
        if final:
            raise AirflowSkipException(str(exc)) from None
        raise


def scan_incoming(settings: Settings) -> list[int]:
    """Register and claim the bag zips dropped by hand into the incoming folder."""
    run_id, _ = _context()
    return make_pipeline(settings, run_id).scan_incoming()


def run_phase(settings: Settings, phase: str, progress_id: int) -> int:
    """Run one phase (download, debag or sync) for one work of this run.

    A failure of the work itself (a bad bag, a missing key, a refused sync) fails the task at
    once: a retry would meet the same bag. A transient one (the environment's) is retried.
    """
    run_id, final = _context()
    pipeline = make_pipeline(settings, run_id)
    try:
        return getattr(pipeline, phase)(progress_id, release_on_failure=final)
    except Exception as exc:
        if is_transient(exc):
            raise
        pipeline.store.release(progress_id, pipeline.run_id)
        raise AirflowFailException(f"{phase} failed (not retried): {exc}") from exc


def dag_arguments(settings: Settings, schedule: str | None, doc: str | None) -> dict[str, Any]:
    """The arguments both DAGs share: no catch-up, runs and retries from the settings."""
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
    }


def phase_task(settings: Settings, phase: str, task_id: str):
    """A TaskFlow task running one phase for one work (call inside a DAG)."""

    def run(progress_id: int) -> int:
        return run_phase(settings, phase, progress_id)

    run.__doc__ = PHASE_DOCS[phase]
    return task(task_id=task_id)(run)
