"""Phase records: a row's fields and history written while its run holds the claim, the
clean-up of a synced work, and an operator's retry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from glacier_sync import faults
from glacier_sync.errors import LostClaim, WorkNotFound
from glacier_sync.records.models import Progress, utcnow
from glacier_sync.records.progress_db import ProgressDatabase
from glacier_sync.records.states import PENDING, State, check_move


class PhaseRecords(ProgressDatabase):
    """Writes what a phase did to its row."""

    def update_row(
        self,
        progress_id: int,
        event: str,
        release: bool = False,
        owner: str | None = None,
        count_attempt: bool = False,
        **fields: Any,
    ) -> Progress:
        """Set fields, append a history event and optionally release the claim.

        With ``owner``, the write happens only while ``owner`` holds the row's claim (LostClaim
        otherwise); ``count_attempt`` adds one to the row's attempts.
        """
        details = fields.pop("details", {})
        with self.session() as session:
            row = session.get(Progress, progress_id, with_for_update=True)
            if row is None:
                raise WorkNotFound(f"no progress row with id {progress_id}")
            if owner is not None and row.claimed_by != owner:
                raise LostClaim(
                    f"work {row.work_id} (row {progress_id}): the claim of {owner} was taken over "
                    f"by {row.claimed_by or 'nobody'} (its lease ran out); {event!r} is not "
                    "recorded"
                )
            if "state" in fields:
                fields["state"] = check_move(row.state, fields["state"])
            for name, value in fields.items():
                setattr(row, name, value)
            if count_attempt:
                row.attempts += 1
            if release:
                row.claimed_by = row.claimed_until = None
            row.add_history(event, **details)
            faults.checkpoint("progress:before-commit")
            return row

    def mark_cleaned(self, progress_id: int, synced_at: datetime | None) -> bool:
        """Record the clean-up of the sync at ``synced_at``; False when the row moved on (a
        newer restore reopened it) or another run recorded it first."""
        with self.session() as session:
            row = session.get(Progress, progress_id, with_for_update=True)
            if row is None or row.state != State.SYNCED or row.cleaned_at is not None:
                return False
            if row.synced_at != synced_at:
                return False
            row.cleaned_at = utcnow()
            row.add_history("cleaned")
            return True

    def reset_for_retry(self, work_id: str, by: str | None = None) -> list[int]:
        """Make a work's unsynced rows eligible again (attempts 0, an expired claim released;
        a live claim is left to its run); ``by`` names the user in the history (the UI's)."""
        with self.session() as session:
            rows = list(
                session.scalars(
                    select(Progress)
                    .where(Progress.work_id == work_id, Progress.state.in_(PENDING))
                    .with_for_update()
                )
            )
            if not rows:
                raise WorkNotFound(
                    f"work {work_id} has no unsynced row in the progress database; "
                    "see `glacier-sync status` for its state"
                )
            now = utcnow()
            for row in rows:
                row.attempts = 0
                row.needs_attention, row.failed_run = False, None
                if row.claimed_until is None or row.claimed_until < now:
                    row.claimed_by = row.claimed_until = None
                row.add_history("retry requested by operator", user=by)
            return [row.id for row in rows]
