"""Claims and leases: which run holds which work's row, for how long, and when a dead run's
claim may be taken over. Two runs never hold two rows of one work."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from glacier_sync.errors import AttemptsExhausted, GlacierSyncError, NeedsAttention, WorkBusy
from glacier_sync.records.claimants import is_dead_local_run, local_run_prefix
from glacier_sync.records.models import Progress
from glacier_sync.records.progress_db import ProgressDatabase
from glacier_sync.records.states import PENDING, State


class Claims(ProgressDatabase):
    """Claims rows for a run, renews and releases them."""

    def claim(
        self,
        run_id: str,
        source: str,
        limit: int,
        lease: timedelta,
        max_attempts: int,
        ids: list[int] | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[int]:
        """Claim up to ``limit`` pending rows of ``source`` for ``run_id`` (oldest first).

        A row is free when unclaimed, claimed by ``run_id`` itself, or when its claimant's lease
        ran out (a dead run: the take-over is written to the row's history). Claiming spends no
        attempt; a recorded failure does.
        """
        now = self.clock()
        local = Progress.claimed_by.startswith(local_run_prefix(), autoescape=True)
        query = (
            select(Progress.id, Progress.claimed_by, Progress.claimed_until)
            .where(
                Progress.source == source,
                Progress.state.in_(PENDING),
                or_(_claimable(run_id, now, max_attempts), local),
            )
            # The works whose restored copy expires first go first (no expiry known: last).
            .order_by(
                Progress.restore_expires_at.is_(None), Progress.restore_expires_at, Progress.id
            )
        )
        if ids is not None:
            query = query.where(Progress.id.in_(ids))
        if exclude:
            query = query.where(Progress.id.not_in(exclude))
        with self.session() as session:
            candidates = list(session.execute(query.limit(limit * 4 + 10)))
        claimed: list[int] = []
        for progress_id, owner, until in candidates:
            if len(claimed) >= limit:
                break
            live_other = owner not in (None, run_id) and until is not None and until >= now
            if live_other and not is_dead_local_run(owner):
                continue
            if self._try_claim(
                progress_id, run_id, lease, max_attempts, owner if live_other else None
            ):
                claimed.append(progress_id)
        return claimed

    def _try_claim(
        self,
        progress_id: int,
        run_id: str,
        lease: timedelta,
        max_attempts: int,
        dead_owner: str | None = None,
    ) -> bool:
        """Take the row when it is pending and free for ``run_id`` (or held by ``dead_owner``, a
        run of this host whose process is gone), and no other row of the same work is held.

        The rows of the work are locked first (``FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so
        two runs never hold two rows of one work: the work folder and the archive target are
        the work's, not the row's.
        """
        with self.session() as session:
            now = self.clock(session)
            first = session.get(Progress, progress_id)
            if first is None or first.state not in PENDING:
                return False
            siblings = session.scalars(
                select(Progress)
                .where(Progress.work_id == first.work_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).all()
            row = next(r for r in siblings if r.id == progress_id)
            if row.state not in PENDING:
                return False
            free = row.claimed_until is None or row.claimed_until < now
            mine = row.claimed_by == run_id
            dead = dead_owner is not None and row.claimed_by == dead_owner
            # A permanent failure is held for an operator: only the run that recorded it may
            # try again (its failed task cleared in the UI), whatever its attempts.
            retried_by_its_run = row.needs_attention and row.failed_run == run_id
            if row.needs_attention and not (mine or retried_by_its_run):
                return False
            if not (
                mine or ((free or dead) and (row.attempts < max_attempts or retried_by_its_run))
            ):
                return False
            if any(_held_by_another(other, run_id, now) for other in siblings if other is not row):
                return False
            previous = row.claimed_by
            row.claimed_by, row.claimed_until, row.updated_at = run_id, now + lease, now
            if previous and previous != run_id:
                reason = "its process is gone" if dead else "its lease ran out"
                row.add_history("claim taken over", previous=previous, reason=reason)
            return True

    def acquire(
        self, progress_id: int, run_id: str, lease: timedelta, max_attempts: int
    ) -> Progress:
        """Claim (or renew) one row for a phase; return it, or say why it cannot be taken.

        A synced row is returned unclaimed: its phases have nothing left to do.
        """
        if self._try_claim(progress_id, run_id, lease, max_attempts):
            return self.get(progress_id)
        row = self.get(progress_id)
        if is_dead_local_run(row.claimed_by) and self._try_claim(
            progress_id, run_id, lease, max_attempts, row.claimed_by
        ):
            return self.get(progress_id)
        if row.state == State.SYNCED:
            return row
        if row.state not in PENDING:
            raise GlacierSyncError(
                f"work {row.work_id} (row {progress_id}) is {row.state}; it has no phase to run yet"
            )
        if row.claimed_by and row.claimed_until and row.claimed_until >= self.clock():
            raise WorkBusy(
                f"work {row.work_id} (row {progress_id}) is being processed by {row.claimed_by} "
                f"(lease until {row.claimed_until:%Y-%m-%d %H:%M:%S} UTC); it is tried again later"
            )
        if self.work_is_held(row.work_id, run_id):
            raise WorkBusy(
                f"work {row.work_id} (row {progress_id}) is being processed by another run "
                "(through another row of the same work); it is tried again later"
            )
        if row.needs_attention:
            raise NeedsAttention(
                f"work {row.work_id} (row {progress_id}) failed permanently in {row.failed_run} "
                f"({row.failed_phase}: {row.last_error}); fix the cause, then "
                f"`glacier-sync retry {row.work_id}` or clear that run's failed task in the UI"
            )
        raise AttemptsExhausted(
            f"work {row.work_id} (row {progress_id}) failed {row.attempts} times "
            f"({row.failed_phase}: {row.last_error}); fix the cause, then "
            f"`glacier-sync retry {row.work_id}`"
        )

    def renew(self, progress_id: int, run_id: str, lease: timedelta) -> bool:
        """Extend ``run_id``'s lease on a row; False when the claim is no longer ours."""
        with self.session() as session:
            until = self.clock(session) + lease
            result = session.execute(
                update(Progress)
                .where(Progress.id == progress_id, Progress.claimed_by == run_id)
                .values(claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def release(self, progress_id: int, run_id: str) -> None:
        """Drop ``run_id``'s claim on a row (nothing when another run holds it)."""
        with self.session() as session:
            session.execute(
                update(Progress)
                .where(Progress.id == progress_id, Progress.claimed_by == run_id)
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )

    def work_is_held(self, work_id: str, run_id: str) -> bool:
        """True when a row of ``work_id`` is held by a live claim of another run."""
        with self.session() as session:
            now = self.clock(session)
            rows = session.scalars(select(Progress).where(Progress.work_id == work_id))
            return any(_held_by_another(row, run_id, now) for row in rows)


def _held_by_another(row: Progress, run_id: str, now: datetime) -> bool:
    """The row is held by a live claim of another run."""
    live = row.claimed_until is not None and row.claimed_until >= now
    return live and row.claimed_by != run_id and not is_dead_local_run(row.claimed_by)


def _claimable(run_id: str, now: datetime, max_attempts: int):
    """SQL condition: the row is ``run_id``'s, or free (no live claim) with attempts left and
    not held for an operator (a permanent failure; only the run that recorded it may retry)."""
    free = or_(Progress.claimed_until.is_(None), Progress.claimed_until < now)
    not_held = or_(Progress.needs_attention.is_(False), Progress.failed_run == run_id)
    return or_(Progress.claimed_by == run_id, free & not_held & (Progress.attempts < max_attempts))
