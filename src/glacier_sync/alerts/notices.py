"""What deserves a notice, from the progress rows, and whether a channel already sent it.

A notice is sent once per event: a work held for attention once per hold (a hold is named by the
run and phase that held it), a restored copy once per expiry date (a new restore, a new date).
What a channel sent is written into the work's history (``notice`` events), so that the record
of the work says who was told, and a second check, by any process, finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from glacier_sync.records.claimants import airflow_run_id
from glacier_sync.records.models import Progress
from glacier_sync.records.progress_views import expires_soon, expiry_note

NOTICE_EVENT = "notice"


@dataclass(frozen=True)
class Notice:
    """One message: what happened to which work, why, and what to do."""

    kind: str  # "held", "expiring" or "run-failed"
    key: str  # the event's name: the same event, the same key
    work_id: str | None
    subject: str
    text: str
    link: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The webhook's body."""
        return {
            "kind": self.kind,
            "key": self.key,
            "work_id": self.work_id,
            "subject": self.subject,
            "text": self.text,
            "link": self.link,
        }


MAX_REASON = 2000  # characters of a work's last error in a notice


WORKS_VIEW = "glacier-works/"  # the Works view's page (glacier_sync_airflow.works_view)


def works_link(base_url: str | None, work_id: str) -> str | None:
    """The Works view, searching for the work (its reason, its runs, Retry)."""
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/{WORKS_VIEW}?q={quote(work_id)}"


def run_link(base_url: str | None, claimant: str | None) -> str | None:
    """The UI's list of runs filtered to the DAG run that held the work (none for a work held
    by a ``glacier-sync`` command)."""
    run_id = airflow_run_id(claimant)
    if not base_url or not run_id:
        return None
    return f"{base_url.rstrip('/')}/dag_runs?run_id_pattern={quote(run_id)}"


def held_notice(row: Progress, base_url: str | None) -> Notice:
    """A work held for an operator: the phase, the reason and the fix."""
    link = works_link(base_url, row.work_id)
    return Notice(
        kind="held",
        # A hold after a Clear of the same run has one more attempt: a new event.
        key=f"held:{row.dedup_key}:{row.failed_run or '-'}:{row.failed_phase}:{row.attempts}",
        work_id=row.work_id,
        subject=f"{row.work_id} needs attention ({row.failed_phase or 'unknown'} phase)",
        text=(
            f"Work {row.work_id} ({row.bucket}/{row.object_key}) is held for an operator after "
            f"its {row.failed_phase or 'unknown'} phase failed for good: "
            f"{(row.last_error or '')[:MAX_REASON]}\n"
            f"Fix the cause, then Retry it in the Works view{' (link below)' if link else ''}, "
            f"or: glacier-sync retry {row.work_id} (or Clear the failed task)."
            + (
                f"\nThe run that held it: {held_by}"
                if (held_by := run_link(base_url, row.failed_run))
                else ""
            )
        ),
        link=link,
    )


def expiry_notice(row: Progress, base_url: str | None = None) -> Notice:
    """A restored copy that S3 deletes before the work is archived."""
    expires = row.restore_expires_at
    return Notice(
        kind="expiring",
        key=f"expiring:{row.dedup_key}:{expires.isoformat() if expires else '-'}",
        work_id=row.work_id,
        subject=f"{row.work_id}: the restored copy expires before it is archived",
        text=f"Work {row.work_id} is {row.state}: {expiry_note(row)}",
        link=works_link(base_url, row.work_id),
    )


def due(rows: list[Progress], now: datetime, margin: timedelta, base_url: str | None):
    """(row id, notice) for each event the rows show: holds, then expiring copies."""
    found = []
    for row in rows:
        if row.needs_attention:
            found.append((row.id, held_notice(row, base_url)))
        elif expires_soon(row, now, margin):
            found.append((row.id, expiry_notice(row, base_url)))
    return found


def already_sent(row: Progress, notice: Notice, channel: str) -> bool:
    """Whether ``channel`` sent ``notice`` for this row (its history says so)."""
    return any(
        entry.get("event") == NOTICE_EVENT
        and entry.get("key") == notice.key
        and entry.get("channel") == channel
        for entry in row.history or []
    )
