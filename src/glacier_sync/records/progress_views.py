"""Status queries: the rows of named works, the stuck ones (and why), the synced ones whose
clean-up a crash cut short, and restored copies about to expire before they are archived."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select

from glacier_sync.records.claimants import is_dead_local_run
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.progress_db import ProgressDatabase
from glacier_sync.records.states import State


class StatusViews(ProgressDatabase):
    """Reads rows for the status command, the clean-up and the expiry warnings."""

    def find(self, work_ids: list[str] | None = None) -> list[Progress]:
        """Rows of the named works (all rows when none is named), newest last."""
        query = select(Progress).order_by(Progress.id)
        if work_ids:
            query = query.where(Progress.work_id.in_(work_ids))
        with self.session() as session:
            return list(session.scalars(query))

    def stuck(
        self,
        older_than: timedelta,
        max_attempts: int,
        expiry_margin: timedelta = timedelta(hours=24),
    ) -> list[Progress]:
        """Unsynced rows untouched for ``older_than``, failed past their attempts or for good,
        held by a dead claimant (a claim whose lease ran out), or whose restored copy expires
        within ``expiry_margin`` (or expired)."""
        now = self.clock()
        query = select(Progress).where(Progress.state != State.SYNCED).order_by(Progress.id)
        with self.session() as session:
            rows = list(session.scalars(query))
        return [
            row
            for row in rows
            if _stuck(row, now, older_than, max_attempts) or expires_soon(row, now, expiry_margin)
        ]

    def notice_candidates(self, now: datetime, margin: timedelta) -> list[Progress]:
        """Rows held for attention, and unsynced rows whose restored copy expires within
        ``margin``: what a notice may be due for (``glacier_sync.alerts``)."""
        query = (
            select(Progress)
            .where(or_(Progress.needs_attention.is_(True), expiring_clause(now, margin)))
            .order_by(Progress.id)
        )
        with self.session() as session:
            return list(session.scalars(query))

    def needs_cleanup(self, limit: int = 100) -> list[Progress]:
        """Synced rows whose local files were not (all) removed yet: a crash cut the clean-up."""
        query = (
            select(Progress)
            .where(Progress.state == State.SYNCED, Progress.cleaned_at.is_(None))
            .order_by(Progress.id)
            .limit(limit)
        )
        with self.session() as session:
            return list(session.scalars(query))


def expires_soon(row: Progress, now: datetime, margin: timedelta) -> bool:
    """The row is not archived yet and its restored copy expires within ``margin`` (or has):
    once S3 deletes the copy, the download fails until a new restore."""
    expires = row.restore_expires_at
    return (
        expires is not None
        and row.state not in (State.SYNCED, State.REQUESTED)
        and row.downloaded_at is None
        and expires <= now + margin
    )


def expiring_clause(now: datetime, margin: timedelta) -> ColumnElement[bool]:
    """``expires_soon`` as a query's condition, to preselect rows (``expires_soon`` decides)."""
    return and_(
        Progress.state.not_in([State.SYNCED, State.REQUESTED]),
        Progress.downloaded_at.is_(None),
        Progress.restore_expires_at <= now + margin,
    )


def expiry_note(row: Progress) -> str:
    """One line: when the work's restored copy expires, and what to do."""
    expires = row.restore_expires_at
    past = expires is not None and expires <= utcnow()
    return (
        f"restored copy {'expired' if past else 'expires'} {expires:%Y-%m-%d %H:%M} UTC, before "
        f"the work is archived: {'request a new restore' if past else 'process it first, or'} "
        f"`glacier-sync request-restore {row.work_id}`"
        + ("" if past else " again after it expires")
    )


def _stuck(row: Progress, now: datetime, older_than: timedelta, max_attempts: int) -> bool:
    """The row needs attention: untouched too long, out of attempts, failed permanently, or its
    claimant is dead."""
    return (
        row.updated_at < now - older_than
        or (row.state == State.FAILED and row.attempts >= max_attempts)
        or row.needs_attention
        or (row.claimed_until is not None and row.claimed_until < now)
        or is_dead_local_run(row.claimed_by)
    )
