"""What every phase of the pipeline shares: the settings, the progress store, the AWS clients
and the run's id; the claim on a work (acquired, renewed by a heartbeat, checked before a step
that cannot be undone), and one phase run under it, recorded done or failed (a transient
failure spends no attempt, a permanent one holds the work for an operator)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from glacier_sync import aws
from glacier_sync.archive.root import verify_archive_root
from glacier_sync.errors import (
    ConfigError,
    GlacierSyncError,
    LostClaim,
    ProgressDatabaseError,
    is_permanent,
    is_transient,
)
from glacier_sync.metrics import metrics_for
from glacier_sync.progress_watch import ProgressWatch, no_watch
from glacier_sync.records.claimants import local_run_id
from glacier_sync.records.lease import Heartbeat
from glacier_sync.records.models import Progress
from glacier_sync.records.progress import ProgressStore
from glacier_sync.records.states import State
from glacier_sync.settings import QueueSource, Settings
from glacier_sync.shared_storage import check_shared_roots

log = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    """What a phase did to its work: the state it reached, the row's columns it sets (only
    those given), and the details of its ``<phase> done`` history event (``skipped`` names why
    nothing had to be done: the work was that far already)."""

    state: State
    details: dict[str, Any] = field(default_factory=dict)
    local_path: str | None = None
    downloaded_at: datetime | None = None
    debagged_at: datetime | None = None
    fixity: dict[str, Any] | None = None
    synced_at: datetime | None = None
    archive_path: str | None = None

    @property
    def skipped(self) -> bool:
        """Nothing was run (done already): not counted in the phase's metrics."""
        return bool(self.details.get("skipped"))

    def columns(self) -> dict[str, Any]:
        """The row's columns to write: the state and every column given."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        return {name: value for name, value in given.items() if value is not None}


def open_store(settings: Settings) -> ProgressStore:
    """The progress database named by the settings."""
    return ProgressStore(settings.database_url(), auto_migrate=settings.progress_db_auto_migrate)


def lost_claim(row: Progress, when: str) -> LostClaim:
    return LostClaim(
        f"work {row.work_id}: this run's claim was taken over {when}; the other run finishes "
        "the work"
    )


class PhaseRunner:
    """Runs phases for one settings object, one progress store and one client factory."""

    def __init__(
        self,
        settings: Settings,
        store: ProgressStore | None = None,
        clients: aws.ClientFactory | None = None,
        run_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.clients = clients or aws.ProfileClients(settings)
        self.run_id = run_id or local_run_id()
        self.metrics = metrics_for(settings)
        # The running phase's watch: its action ticks it as bytes or files move (phases of one
        # runner run one at a time).
        self.watch = no_watch()

    @property
    def lease(self) -> timedelta:
        """How long a claim lasts without a heartbeat (``claim_lease_minutes``)."""
        return timedelta(minutes=self.settings.claim_lease_minutes)

    def claim(
        self,
        source: str = "s3",
        ids: list[int] | None = None,
        limit: int | None = None,
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> list[int]:
        """Claim pending works of ``source`` for this run (a short lease, no attempt spent)."""
        return self.store.claim(
            self.run_id,
            source,
            limit if limit is not None else self.settings.max_messages_per_run * 10,
            self.lease,
            self.settings.max_attempts,
            ids,
            exclude,
        )

    def archive_root(self) -> Path:
        """The archive root after its checks (exists; mount point and marker when configured)."""
        return verify_archive_root(
            self.settings.require_archive_root(),
            self.settings.archive_root_marker,
            self.settings.archive_root_must_be_mount,
        )

    def _still_mine(self, row: Progress, step: str) -> None:
        """Renew the claim now; raise LostClaim when another run took the work over (before a
        step that cannot be undone: placing a work folder, running the sync)."""
        if not self.store.renew(row.id, self.run_id, self.lease):
            raise lost_claim(row, f"before {step}")

    def _phase(
        self,
        progress_id: int,
        name: str,
        action: Callable[[Progress], PhaseResult],
        release: bool = False,
        release_on_failure: bool = True,
    ) -> Progress:
        """Run one phase under this run's claim (renewed by a heartbeat) and record it.

        A synced row is left as it is (another run finished it). A failure is recorded; it
        spends an attempt unless it is transient (the environment's fault, not the work's).
        """
        row = self.store.acquire(progress_id, self.run_id, self.lease, self.settings.max_attempts)
        if row.state == State.SYNCED:
            log.info("work %s (row %s): already synced; %s skipped", row.work_id, progress_id, name)
            return row
        started = time.monotonic()
        stall_limit = self.settings.stall_minutes * 60 or None
        self.watch = ProgressWatch(f"work {row.work_id}: the {name}", stall_limit)
        try:
            check_shared_roots(self.settings)  # this worker sees the instance's folders
            with Heartbeat(self.store, progress_id, self.run_id, self.lease, self.watch) as beat:
                result = action(row)
            if beat.lost:
                raise lost_claim(row, f"during {name}")
        except Exception as exc:
            self._record_failure(row, name, exc, release_on_failure)
            kind = (
                "transient" if is_transient(exc) else "permanent" if is_permanent(exc) else "other"
            )
            self.metrics.incr(f"phase.{name}.failures.{kind}")
            raise
        seconds = round(time.monotonic() - started, 3)
        self._count_phase(name, row, result, seconds)
        details = {**result.details, "seconds": seconds, "run": self.run_id}
        return self.store.update_row(
            progress_id,
            f"{name} done",
            release=release,
            owner=self.run_id,
            failed_phase=None,
            last_error=None,
            needs_attention=False,
            failed_run=None,
            details=details,
            **result.columns(),
        )

    def _count_phase(self, name: str, row: Progress, result: PhaseResult, seconds: float) -> None:
        """Works, bytes and seconds of a phase that ran (not of one skipped as done already)."""
        if result.skipped:
            return
        fixity = result.fixity or row.fixity or {}
        size = row.size if name == "download" else fixity.get("bytes")
        self.metrics.incr(f"phase.{name}.works")
        self.metrics.timing(f"phase.{name}.seconds", seconds)
        if size:
            self.metrics.incr(f"phase.{name}.bytes", size)

    def _record_failure(self, row: Progress, name: str, exc: Exception, release: bool) -> None:
        transient, permanent = is_transient(exc), is_permanent(exc)
        error = str(exc) if isinstance(exc, GlacierSyncError) else f"{type(exc).__name__}: {exc}"
        log.info(
            "work %s: %s failed%s: %s",
            row.work_id,
            name,
            " (transient: no attempt spent)" if transient else "",
            error,
        )
        try:
            self.store.update_row(
                row.id,
                f"{name} failed",
                release=release,
                owner=self.run_id,
                count_attempt=not transient,
                state=State.FAILED,
                failed_phase=name,
                last_error=error,
                # A permanent failure (the work's own: a bad bag, a missing key) is held for an
                # operator instead of being claimed again by every later run.
                needs_attention=permanent,
                failed_run=self.run_id if permanent else None,
                details={
                    "error": error[:2000],
                    "run": self.run_id,
                    "transient": transient,
                    "permanent": permanent,
                },
            )
        except (LostClaim, ProgressDatabaseError) as record_error:
            log.error("work %s: the failure is not recorded: %s", row.work_id, record_error)

    def _queue_for(self, row: Progress) -> QueueSource:
        for queue in self.settings.queues:
            if queue.name == row.queue_name:
                return queue
        if self.settings.queues:
            return self.settings.queues[0]
        raise ConfigError(
            f"work {row.work_id}: no queue is configured, so no AWS region or profile is known; "
            "set `queues` (GLACIER_SYNC_QUEUES)"
        )
