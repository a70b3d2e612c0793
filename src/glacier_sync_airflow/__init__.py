"""Glue between Airflow and the glacier_sync library: settings, hook-based AWS clients, phases.

The DAG files only wire these calls together; the pipeline itself lives in glacier_sync, which
imports nothing from Airflow.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from glacier_sync.aws import ProfileClients
from glacier_sync.batches import BatchItem, batch_label, plan_batches, run_batch_phase
from glacier_sync.errors import NoRestoredWork
from glacier_sync.runner import Pipeline
from glacier_sync.settings import QueueSource, Settings, load_settings

log = logging.getLogger(__name__)

__all__ = [
    "HookClients",
    "archive_asset",
    "dag_arguments",
    "restore_event_asset",
    "restore_tasks",
    "load_settings",
    "make_pipeline",
    "phase_task",
    "poll_restored_works",
    "run_phase",
    "scan_incoming",
    "summarize",
]

ARCHIVE_URI = "glacier-sync-archive://archive"

PHASE_DOCS = {
    "download": "Download the restored bag zips of a batch of works into the incoming folder.",
    "debag": "Validate the bags of a batch of works and extract each into its work folder.",
    "sync": "Sync the work folders of a batch of works into the archive.",
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


def batches_of(pipeline: Pipeline, ids: list[int]) -> list[list[int]]:
    """This run's works in batches (``batch_max_works``, ``batch_max_mb``), in claim order."""
    items = []
    for pid in ids:
        row = pipeline.store.get(pid)
        items.append(BatchItem(pid, row.work_id, row.size))
    settings = pipeline.settings
    return plan_batches(items, settings.batch_max_works, settings.batch_max_mb * 1024 * 1024)


def poll_restored_works(settings: Settings) -> list[list[int]]:
    """Poll the queues and return this run's works in batches; raise (the task goes up for
    retry) while there is nothing to do.

    On the task's last try an empty queue skips the rest of the run instead of failing it.
    """
    run_id, final = _context()
    pipeline = make_pipeline(settings, run_id)
    try:
        ids = pipeline.poll()
    except NoRestoredWork as exc:
        if final:
            raise AirflowSkipException(str(exc)) from None
        raise
    return batches_of(pipeline, ids)


def scan_incoming(settings: Settings) -> list[list[int]]:
    """Register and claim the bag zips dropped by hand into the incoming folder, in batches."""
    run_id, _ = _context()
    pipeline = make_pipeline(settings, run_id)
    return batches_of(pipeline, pipeline.scan_incoming())


def run_phase(settings: Settings, phase: str, batch: list[int]) -> list[int]:
    """Run one phase (download, debag or sync) for each work of a batch of this run.

    A work that failed in an earlier phase is skipped. A failure of a work itself (a bad bag,
    a missing key, a refused sync) is recorded and the other works go on; then the task fails,
    naming it, without retry: a retry would meet the same bag. A transient failure (the
    environment's) makes the task retry, which skips what is done already.
    """
    run_id, final = _context()
    pipeline = make_pipeline(settings, run_id)
    batch = _as_batch(batch)
    _label_with_works(pipeline, batch)
    report = run_batch_phase(pipeline, phase, batch, release_on_failure=final)
    if phase == "sync":
        _publish_archived(settings, pipeline, report.done)
    if report.failed:
        for pid in report.transient_ids:  # no retry of this task: a later run takes them
            pipeline.store.release(pid, pipeline.run_id)
        reasons = "; ".join(f"{work}: {error}" for work, error in report.failed.items())
        raise AirflowFailException(f"{phase} failed (not retried) for {reasons}")
    if report.transient is not None:
        raise report.transient
    if not report.done:
        raise AirflowSkipException(f"no work of this batch is ready for {phase}")
    return batch


def _as_batch(value: Any) -> list[int]:
    """A batch of progress ids; a single id is the batch of one a run started before batches
    (an upgrade while it ran: the DAG file is read anew by each task) maps over."""
    return [value] if isinstance(value, int) else list(value)


def archive_asset(settings: Settings):
    """The asset of this instance's archive: an event per sync task, naming its works."""
    from airflow.sdk import Asset

    return Asset(name=f"glacier_sync_archive_{settings.env}", uri=f"{ARCHIVE_URI}/{settings.env}")


def _publish_archived(settings: Settings, pipeline: Pipeline, ids: list[int]) -> None:
    """Describe the batch's archived works in the event the sync task emits on the archive's
    asset (the Assets view): their ids, and for each where it is, its key and fixity evidence.

    One event per sync task, not per work: Airflow 3.3 emits several events of one asset from a
    task only through an asset alias, and concurrent tasks racing to link a new alias to its
    asset fail at their end on PostgreSQL (a unique violation in ``asset_alias_asset``)."""
    works = [_archived_extra(settings, pipeline, pid) for pid in ids]
    extra = {"work_ids": [work["work_id"] for work in works], "works": works}
    get_current_context()["outlet_events"][archive_asset(settings)].extra = extra


def _archived_extra(settings: Settings, pipeline: Pipeline, progress_id: int) -> dict[str, Any]:
    """An archived work as its asset event says it: the work id, where it is, its key and
    fixity evidence. ``archived_now`` is false when this try found the work archived already
    (by another run, or a cleared task)."""
    row = pipeline.store.get(progress_id)
    synced = [h for h in row.history if h.get("event") == "sync done"]
    extra = {
        "work_id": row.work_id,
        "archived_now": bool(synced) and synced[-1].get("run") == pipeline.run_id,
        "archive_path": row.archive_path,
        "archive_host_path": _host_path(settings, row.archive_path),
        "bucket": row.bucket,
        "key": row.object_key,
        "version_id": row.version_id,
        "etag": row.etag,
        "synced_at": row.synced_at.isoformat(timespec="seconds") + "Z" if row.synced_at else None,
        "fixity": row.fixity,
    }
    return extra


def _host_path(settings: Settings, archive_path: str | None) -> str | None:
    """The archive path on the host when the stack says where the archive root is mounted."""
    import os
    from pathlib import Path

    host_root = os.environ.get("GLACIER_SYNC_ARCHIVE_HOST_ROOT", "").strip()
    if not (host_root and archive_path and settings.archive_root):
        return None
    try:
        return str(Path(host_root) / Path(archive_path).relative_to(settings.archive_root))
    except ValueError:
        return None


def _label_with_works(pipeline: Pipeline, batch: list[int]) -> None:
    """Name this mapped task instance in the UI by its work ids (``map_index_template``): the
    UI's search of mapped instances finds a work by its id."""
    work_ids = []
    for pid in batch:
        try:
            work_ids.append(pipeline.store.get(pid).work_id)
        except Exception:  # the label only; the phase reports a missing row itself
            log.debug("no work id for progress row %s", pid, exc_info=True)
    get_current_context()["batch_label"] = batch_label(work_ids)


def dag_arguments(settings: Settings, schedule: Any, doc: str | None) -> dict[str, Any]:
    """The arguments the DAGs share: no catch-up, runs and retries from the settings."""
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


def phase_task(settings: Settings, phase: str, task_id: str, **arguments: Any):
    """A TaskFlow task running one phase for a batch of works (call inside a DAG).

    ``arguments`` go to the task (``trigger_rule="all_done"`` for a phase after the first: it
    runs the works of its batch that the failed phase before it did not stop).
    """

    def run(batch: list[int]) -> list[int]:
        return run_phase(settings, phase, batch)

    run.__doc__ = PHASE_DOCS[phase]
    if phase == "sync":
        # Each sync task's event lists the works it archived (the Assets view).
        arguments.setdefault("outlets", [archive_asset(settings)])
    # Each mapped instance shows the work ids of its batch in the UI, not [0], [1], ...
    return task(task_id=task_id, map_index_template="{{ batch_label }}", **arguments)(run)


def restore_tasks(settings: Settings, **poll_arguments: Any) -> None:
    """The tasks of a restore run (call inside a DAG): poll, then per batch of works download,
    debag, sync; then the run's summary.

    ``poll_arguments`` go to the poll task (its retries while no event waits, for the
    scheduled DAG). Each batch's three phases are a mapped task-group instance of its own, and
    inside a batch each work runs its phases on its own, so one bad work fails alone.
    """

    @task(task_id="get_restored_object_messages", **poll_arguments)
    def get_restored_object_messages() -> list[list[int]]:
        """Record the waiting restore events; return this run's works in batches of ids."""
        return poll_restored_works(settings)

    download = phase_task(settings, "download", "download_from_messages")
    debag = phase_task(settings, "debag", "debag_downloads", trigger_rule="all_done")
    sync = phase_task(settings, "sync", "sync_debagged", trigger_rule="all_done")

    @task_group(group_id="process_works", prefix_group_id=False)
    def process_works(batch: list[int]) -> None:
        """One batch's phases; each mapped instance of the group runs on its own."""
        download(batch) >> debag(batch) >> sync(batch)

    @task(task_id="summarize_run", trigger_rule="all_done", retries=0)
    def summarize_run() -> dict:
        """The run's works: archived, or failed with the phase and the reason (log and XCom)."""
        return summarize(settings)

    process_works.expand(batch=get_restored_object_messages()) >> summarize_run()


def summarize(settings: Settings) -> dict[str, Any]:
    """Log one line per work of this run and return them; fail (after the lines) when a task
    of the run failed, so that the run's state still says so."""
    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    batches = ti.xcom_pull(task_ids="get_restored_object_messages") or []
    ids = [pid for batch in batches for pid in _as_batch(batch)]
    store = make_pipeline(settings, run_id).store
    works = []
    for pid in ids:
        row = store.get(pid)
        works.append(
            {
                "work_id": row.work_id,
                "state": row.state,
                "archive_path": row.archive_path if row.state == "synced" else None,
                "failed_phase": row.failed_phase if row.state != "synced" else None,
                "error": row.last_error if row.state != "synced" else None,
                "needs_attention": row.needs_attention,
            }
        )
    for work in works:
        if work["state"] == "synced":
            log.info("%s: archived in %s", work["work_id"], work["archive_path"])
        else:
            held = (
                " (needs attention: `glacier-sync retry` or Clear)"
                if work["needs_attention"]
                else ""
            )
            log.warning(
                "%s: %s in %s: %s%s",
                work["work_id"],
                work["state"],
                work["failed_phase"],
                work["error"],
                held,
            )
    synced = sum(w["state"] == "synced" for w in works)
    totals = f"{synced} of {len(works)} works archived" if works else "no work in this run"
    log.info("summary: %s", totals)
    failed = ti.get_ti_count(
        dag_id=ti.dag_id, run_ids=[run_id], states=["failed", "upstream_failed"]
    )
    if failed:
        raise AirflowFailException(f"{failed} task(s) of this run failed; {totals}")
    return {"summary": totals, "works": works}


def restore_event_asset(settings: Settings):
    """The asset the restore queues' watcher updates; ``sqs_event_dag`` is scheduled on it."""
    from airflow.sdk import Asset, AssetWatcher

    from glacier_sync_airflow.watcher import ASSET_URI, RestoreQueueWatcher

    watcher = RestoreQueueWatcher(settings.event_poll_seconds, settings.event_refire_seconds)
    return Asset(
        name="glacier_sync_restore_queues",
        uri=ASSET_URI,
        watchers=[AssetWatcher(name="glacier_sync_restore_queue_watcher", trigger=watcher)],
    )
