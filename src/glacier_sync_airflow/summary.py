"""The last task of a restore run: one line per work of the run, archived or failed and why."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from glacier_sync.alerts.dispatch import send_due_notices
from glacier_sync.settings import Settings
from glacier_sync_airflow.runs import as_batch, make_pipeline

log = logging.getLogger(__name__)

POLL_TASK_ID = "get_restored_object_messages"


def summarize(settings: Settings, works_task_id: str = POLL_TASK_ID) -> dict[str, Any]:
    """Log one line per work of this run (the batches ``works_task_id`` returned) and return
    them, send the notices now due, and fail (after the lines) when a task of the run failed,
    so that the run's state still says so."""
    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    batches = ti.xcom_pull(task_ids=works_task_id) or []
    ids = [progress_id for batch in batches for progress_id in as_batch(batch)]
    store = make_pipeline(settings, run_id).store
    works = [_work_line(store.get(progress_id)) for progress_id in ids]
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
    _send_notices(settings, store)
    synced = sum(w["state"] == "synced" for w in works)
    totals = f"{synced} of {len(works)} works archived" if works else "no work in this run"
    log.info("summary: %s", totals)
    failed = ti.get_ti_count(
        dag_id=ti.dag_id, run_ids=[run_id], states=["failed", "upstream_failed"]
    )
    if failed:
        raise AirflowFailException(f"{failed} task(s) of this run failed; {totals}")
    return {"summary": totals, "works": works}


def _send_notices(settings: Settings, store: Any) -> None:
    """The notices now due (works held, copies about to expire); never fails the run."""
    try:
        sent = send_due_notices(store, settings)
    except Exception as exc:  # noqa: BLE001 - a notice must never fail the run
        log.warning(
            "notices not checked (%s: %s); the next run checks again", type(exc).__name__, exc
        )
        return
    if any(sent.values()):
        log.info("notices sent: %s", ", ".join(f"{n} by {c}" for c, n in sent.items()))


def _work_line(row: Any) -> dict[str, Any]:
    """A work of the run as the summary says it."""
    synced = row.state == "synced"
    return {
        "work_id": row.work_id,
        "state": row.state,
        "archive_path": row.archive_path if synced else None,
        "failed_phase": row.failed_phase if not synced else None,
        "error": row.last_error if not synced else None,
        "needs_attention": row.needs_attention,
    }
