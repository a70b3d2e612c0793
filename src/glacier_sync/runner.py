"""The pipeline (``Pipeline``), shared by the CLI and the DAGs: poll, then each work's phases.

Each phase takes a progress-row id, does its work, records the outcome in the progress
database and returns the id, so that Airflow can map the phases per work. A failure is recorded
(state ``failed``, the phase and the error) and raised; the work's files stay where they are.
The phases live by name: ``poll_phase``, ``download_phase``, ``debag_phase``, ``sync_phase``
(with the clean-up), on ``phase_base`` (the claim and the recording they share).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from glacier_sync.archive.sync_phase import SyncPhase
from glacier_sync.errors import NoRestoredWork, RoomShortfall, caused_by, is_transient
from glacier_sync.intake.events import work_id_from_key
from glacier_sync.intake.poll_phase import PollReport, QueuePolling
from glacier_sync.phase_base import open_store
from glacier_sync.shared_storage import check_shared_roots
from glacier_sync.transfer.download_phase import DownloadPhase

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "PollReport", "WorkOutcome", "open_store"]


@dataclass
class WorkOutcome:
    """The end of one work in a run."""

    progress_id: int
    work_id: str
    ok: bool
    error: str | None = None
    archive_path: str | None = None
    transient: bool = False
    short_of_room: bool = False  # a free-space check found less room than this work needs
    seconds: dict[str, float] = field(default_factory=dict)


class Pipeline(QueuePolling, DownloadPhase, SyncPhase):
    """Runs the phases for one settings object, one progress store and one client factory."""

    def poll(self) -> list[int]:
        """Poll the queues and claim pending works; raise NoRestoredWork when there is none,
        ArchiveUnavailable (before taking any message) when the archive root fails its checks."""
        self.archive_root()
        check_shared_roots(self.settings)
        self.finish_cleanups()
        report = self.poll_queues()
        ids = self.claim("s3")
        log.info(
            "poll: %s messages, %s new works, %s duplicates, %s malformed; claimed %s",
            report.received,
            report.recorded,
            report.duplicates,
            len(report.malformed),
            ids,
        )
        self._warn_expiring(ids)
        if not ids:
            raise NoRestoredWork(
                f"no restore event waiting in {len(self.settings.queues)} queue(s) and no work to "
                "retry; the task will try again"
            )
        return ids

    def process(self, progress_id: int) -> WorkOutcome:
        """Run the phases a work still needs; record and report, never raise for the work."""
        row = self.store.get(progress_id)
        outcome = WorkOutcome(progress_id, row.work_id, ok=False)
        steps = [("debag", self.debag), ("sync", self.sync)]
        if row.source == "s3":
            steps.insert(0, ("download", self.download))
        for name, step in steps:
            started = time.monotonic()
            try:
                step(progress_id)
            except Exception as exc:  # recorded by _phase; the other works go on
                outcome.error = str(exc)
                outcome.transient = is_transient(exc)
                outcome.short_of_room = caused_by(exc, RoomShortfall)
                return outcome
            finally:
                outcome.seconds[name] = round(time.monotonic() - started, 3)
        final = self.store.get(progress_id)
        outcome.ok, outcome.archive_path = True, final.archive_path
        return outcome

    def process_pending(self, source: str, ids: list[int] | None = None) -> list[WorkOutcome]:
        """Claim and process pending works one at a time (a crash holds one work, for one
        lease); stop at the first transient failure, the next works would meet it too, but for
        a work refused by a free-space check before writing: the next ones may be smaller, and
        each checks its own room (a disk that fills while writing still ends the run)."""
        outcomes: list[WorkOutcome] = []
        done: set[int] = set()
        limit = self.settings.max_messages_per_run * 10
        while len(outcomes) < limit:
            claimed = self.claim(source, ids=ids, limit=1, exclude=done)
            if not claimed:
                break
            done.add(claimed[0])
            outcome = self.process(claimed[0])
            outcomes.append(outcome)
            if outcome.transient and outcome.short_of_room:
                log.warning(
                    "work %s: not enough room for it; the next works are tried (each checks its "
                    "own room first)",
                    outcome.work_id,
                )
            elif outcome.transient:
                log.warning("work %s: transient failure; this run stops here", outcome.work_id)
                break
        return outcomes

    def run_once(self) -> tuple[PollReport, list[WorkOutcome]]:
        """Check the archive, poll once, then carry the pending works through their phases."""
        self.archive_root()
        check_shared_roots(self.settings)
        self.finish_cleanups()
        report = self.poll_queues()
        return report, self.process_pending("s3")

    def scan_incoming(self) -> list[int]:
        """Register bag zips dropped by hand into the incoming folder; claim the local works."""
        self.archive_root()
        self.finish_cleanups()
        incoming = self.settings.incoming_dir
        known = self.store.known_local_paths()
        for path in sorted(incoming.rglob("*.zip")) if incoming.is_dir() else []:
            if path.name.startswith(".") or str(path.resolve()) in known:
                continue
            key = path.relative_to(incoming).as_posix()
            try:
                work_id = work_id_from_key(key)
            except ValueError as exc:
                log.error("incoming %s: %s; rename the file", path, exc)
                continue
            progress_id, outcome = self.store.register_local(path, key, work_id)
            log.info("incoming %s: work %s (row %s) %s", path, work_id, progress_id, outcome)
        return self.claim("local")

    def register_bag(self, zip_path: Path, key: str | None = None) -> int:
        """Register one zip given by path (``process-bag``); return its row id."""
        zip_path = zip_path.resolve()
        key = key or zip_path.name
        progress_id, _ = self.store.register_local(zip_path, key, work_id_from_key(key))
        return progress_id
