"""The TaskFlow tasks of the DAGs: poll (or scan the incoming folder), then each phase of a batch
of works (download, debag, sync), then the run's summary. Each task calls the pipeline."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from glacier_sync.batches import batch_label, run_batch_phase
from glacier_sync.errors import NoRestoredWork
from glacier_sync.runner import Pipeline
from glacier_sync.settings import Settings
from glacier_sync_airflow.assets import archive_asset, publish_archived
from glacier_sync_airflow.runs import as_batch, batches_of, current_try, make_pipeline
from glacier_sync_airflow.summary import POLL_TASK_ID, summarize

log = logging.getLogger(__name__)

PHASE_DOCS = {
    "download": "Download the restored bag zips of a batch of works into the incoming folder.",
    "debag": "Validate the bags of a batch of works and extract each into its work folder.",
    "sync": "Sync the work folders of a batch of works into the archive.",
}


def poll_restored_works(settings: Settings) -> list[list[int]]:
    """Poll the queues and return this run's works in batches; raise (the task goes up for
    retry) while there is nothing to do.

    On the task's last try an empty queue skips the rest of the run instead of failing it.
    """
    now = current_try()
    pipeline = make_pipeline(settings, now.run_id)
    try:
        ids = pipeline.poll()
    except NoRestoredWork as exc:
        if now.final:
            raise AirflowSkipException(str(exc)) from None
        raise
    return batches_of(pipeline, ids)


def scan_incoming(settings: Settings) -> list[list[int]]:
    """Register and claim the bag zips dropped by hand into the incoming folder, in batches."""
    pipeline = make_pipeline(settings, current_try().run_id)
    return batches_of(pipeline, pipeline.scan_incoming())


def run_phase(settings: Settings, phase: str, batch: list[int]) -> list[int]:
    """Run one phase (download, debag or sync) for each work of a batch of this run.

    A work that failed in an earlier phase is skipped. A failure of a work itself (a bad bag,
    a missing key, a refused sync) is recorded and the other works go on; then the task fails,
    naming it, without retry: a retry would meet the same bag. A transient failure (the
    environment's) makes the task retry, which skips what is done already.
    """
    now = current_try()
    pipeline = make_pipeline(settings, now.run_id)
    batch = as_batch(batch)
    _label_with_works(pipeline, batch)
    report = run_batch_phase(pipeline, phase, batch, release_on_failure=now.final)
    if phase == "sync":
        publish_archived(settings, pipeline, report.done)
    if report.failed:
        for progress_id in report.transient_ids:  # no retry of this task: a later run takes them
            pipeline.store.release(progress_id, pipeline.run_id)
        reasons = "; ".join(f"{work}: {error}" for work, error in report.failed.items())
        raise AirflowFailException(f"{phase} failed (not retried) for {reasons}")
    if report.transient is not None:
        raise report.transient
    if not report.done:
        raise AirflowSkipException(f"no work of this batch is ready for {phase}")
    return batch


def _label_with_works(pipeline: Pipeline, batch: list[int]) -> None:
    """Name this mapped task instance in the UI by its work ids (``map_index_template``): the
    UI's search of mapped instances finds a work by its id."""
    work_ids = []
    for progress_id in batch:
        try:
            work_ids.append(pipeline.store.get(progress_id).work_id)
        except Exception:  # the label only; the phase reports a missing row itself
            log.debug("no work id for progress row %s", progress_id, exc_info=True)
    get_current_context()["batch_label"] = batch_label(work_ids)


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

    @task(task_id=POLL_TASK_ID, **poll_arguments)
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
