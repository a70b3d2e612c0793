"""The pipeline's phases (poll, download, debag, sync), shared by the CLI and the DAGs.

Each phase takes a progress-row id, does its work, records the outcome in the progress
database and returns the id, so that Airflow can map the phases per work. A failure is recorded
(state ``failed``, the phase and the error) and raised; the work's files stay where they are.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from glacier_sync import aws
from glacier_sync.bags import debag
from glacier_sync.errors import ConfigError, GlacierSyncError, MalformedMessage, NoRestoredWork
from glacier_sync.events import parse_message_body, work_id_from_key
from glacier_sync.models import Progress, utcnow
from glacier_sync.progress import ProgressStore
from glacier_sync.settings import QueueSource, Settings
from glacier_sync.sync import archive_parent_for_key, sync_work

log = logging.getLogger(__name__)

BAG_SUFFIXES = (".bag.zip", ".zip")


@dataclass
class PollReport:
    """What one poll of the queues found."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    deleted: int = 0


@dataclass
class WorkOutcome:
    """The end of one work in a run."""

    progress_id: int
    work_id: str
    ok: bool
    error: str | None = None
    archive_path: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def open_store(settings: Settings) -> ProgressStore:
    """The progress database named by the settings."""
    return ProgressStore(settings.database_url(), auto_migrate=settings.progress_db_auto_migrate)


def local_zip_path(settings: Settings, row: Progress) -> Path:
    """Where a row's zip is (or will be) on disk: incoming/<key> for S3 objects."""
    if row.local_path:
        return Path(row.local_path)
    key = PurePosixPath(row.object_key)
    if key.is_absolute() or ".." in key.parts:
        raise GlacierSyncError(
            f"work {row.work_id}: key {row.object_key!r} is absolute or climbs out with '..'; "
            "refusing to write it outside the incoming folder"
        )
    return settings.incoming_dir / key


class Pipeline:
    """Runs the phases for one settings object, one progress store and one client factory."""

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
        self.run_id = run_id or f"glacier-sync-{uuid.uuid4().hex[:12]}"

    # -- poll -----------------------------------------------------------------------------
    def poll_queues(self) -> PollReport:
        """Receive messages from every queue, record their records, delete what is recorded."""
        report = PollReport()
        budget = self.settings.max_messages_per_run
        for queue in self.settings.queues:
            if budget <= 0:
                break
            sqs = self.clients.client("sqs", queue)
            messages = aws.receive_messages(
                sqs,
                queue,
                budget,
                self.settings.sqs_wait_seconds,
                self.settings.sqs_visibility_timeout,
            )
            budget -= len(messages)
            report.received += len(messages)
            for message in messages:
                self._handle_message(sqs, queue, message, report)
        return report

    def _handle_message(
        self, sqs: Any, queue: QueueSource, message: aws.SqsMessage, report: PollReport
    ) -> None:
        try:
            parsed = parse_message_body(message.body, self.settings.event_names)
        except MalformedMessage as exc:
            note = (
                f"queue {queue.name}: message {message.message_id} (received "
                f"{message.receive_count} times) is not a usable S3 event: {exc}; left in the "
                "queue for its redrive policy (dead-letter queue)"
            )
            log.error(note)
            report.malformed.append(note)
            return
        for reason in parsed.skipped:
            log.info("queue %s: message %s: %s", queue.name, message.message_id, reason)
        report.skipped.extend(parsed.skipped)
        for record in parsed.records:
            if not record.key.endswith(BAG_SUFFIXES):
                reason = f"skipped s3://{record.bucket}/{record.key}: not a bag zip"
                log.warning("queue %s: message %s: %s", queue.name, message.message_id, reason)
                report.skipped.append(reason)
                continue
            pid, outcome = self.store.record_event(record, queue.name, message.message_id)
            log.info("work %s (row %s): %s restore event", record.work_id, pid, outcome)
            if outcome == "duplicate":
                report.duplicates += 1
            else:
                report.recorded += 1
        if aws.delete_message(sqs, message):
            report.deleted += 1

    def claim(self, source: str = "s3", ids: list[int] | None = None) -> list[int]:
        """Claim the pending works of ``source`` for this run."""
        return self.store.claim(
            self.run_id,
            source,
            self.settings.max_messages_per_run * 10,
            self.settings.claim_lease_minutes,
            self.settings.max_attempts,
            ids,
        )

    def poll(self) -> list[int]:
        """Poll the queues and claim pending works; raise NoRestoredWork when there is none."""
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
        if not ids:
            raise NoRestoredWork(
                f"no restore event waiting in {len(self.settings.queues)} queue(s) and no work to "
                "retry; the task will try again"
            )
        return ids

    # -- phases ---------------------------------------------------------------------------
    def _phase(
        self,
        pid: int,
        name: str,
        action: Callable[[Progress], dict[str, Any]],
        release: bool = False,
        release_on_failure: bool = True,
    ) -> Progress:
        row = self.store.get(pid)
        started = time.monotonic()
        try:
            fields = action(row)
        except Exception as exc:
            error = (
                f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, GlacierSyncError)
                else str(exc)
            )
            self.store.update_row(
                pid,
                f"{name} failed",
                release=release_on_failure,
                state="failed",
                failed_phase=name,
                last_error=error,
                details={"error": error[:2000], "run": self.run_id},
            )
            log.error("work %s: %s failed: %s", row.work_id, name, error)
            raise
        seconds = round(time.monotonic() - started, 3)
        details = {**fields.pop("details", {}), "seconds": seconds, "run": self.run_id}
        return self.store.update_row(
            pid,
            f"{name} done",
            release=release,
            failed_phase=None,
            last_error=None,
            details=details,
            **fields,
        )

    def download(self, pid: int, release_on_failure: bool = True) -> int:
        """Download the row's object into the incoming folder (skipped when already there)."""

        def action(row: Progress) -> dict[str, Any]:
            target = local_zip_path(self.settings, row)
            queue = self._queue_for(row)
            if row.local_path != str(target):  # claim the path before the file appears
                self.store.update_row(pid, "download started", local_path=str(target))
            fetched = aws.download_object(
                self.clients.client("s3", queue),
                row.bucket,
                row.object_key,
                row.etag or "",
                target,
                row.work_id,
                self.settings.download_concurrency,
                self.settings.download_chunk_mb,
                row.version_id,
            )
            fields: dict[str, Any] = {"state": "downloaded", "local_path": str(target)}
            if fetched or row.downloaded_at is None:
                fields["downloaded_at"] = utcnow()
            fields["details"] = {"path": str(target), "skipped": None if fetched else "complete"}
            return fields

        self._phase(pid, "download", action, release_on_failure=release_on_failure)
        return pid

    def debag(self, pid: int, release_on_failure: bool = True) -> int:
        """Validate and extract the row's zip into ``<work root>/<WorkRID>``."""

        def action(row: Progress) -> dict[str, Any]:
            folder = self.settings.work_dir / row.work_id
            if (
                row.debagged_at
                and folder.is_dir()
                and (row.downloaded_at is None or row.downloaded_at <= row.debagged_at)
            ):
                return {"state": "debagged", "details": {"skipped": "already debagged"}}
            result = debag(
                local_zip_path(self.settings, row),
                self.settings.work_dir,
                row.work_id,
                self.settings.free_space_margin_mb * 1024 * 1024,
            )
            return {
                "state": "debagged",
                "debagged_at": utcnow(),
                "details": {
                    "files": result.files,
                    "bytes": result.bytes,
                    "algorithms": list(result.algorithms),
                },
            }

        self._phase(pid, "debag", action, release_on_failure=release_on_failure)
        return pid

    def sync(self, pid: int, release_on_failure: bool = True) -> int:
        """Sync the work folder into the archive; remove the folder and the zip after success."""

        def action(row: Progress) -> dict[str, Any]:
            archive_root = self.settings.require_archive_root()
            parent = archive_parent_for_key(archive_root, row.object_key, row.work_id)
            result = sync_work(
                self.settings.sync_command,
                self.settings.work_dir / row.work_id,
                parent,
                self.settings.logs_dir,
                replace=self.settings.sync_replace_archive,
                db_config=self.settings.sync_db_config,
                timeout=self.settings.sync_timeout_seconds,
            )
            zip_path = local_zip_path(self.settings, row)
            if not self.settings.keep_zip_after_sync and zip_path.is_relative_to(
                self.settings.incoming_dir
            ):
                aws.remove_download(zip_path)
            return {
                "state": "synced",
                "synced_at": utcnow(),
                "archive_path": str(result.archive_path),
                "details": {"archive_path": str(result.archive_path), "log": str(result.log_file)},
            }

        self._phase(pid, "sync", action, release=True, release_on_failure=release_on_failure)
        return pid

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

    # -- whole works ----------------------------------------------------------------------
    def process(self, pid: int) -> WorkOutcome:
        """Run the phases a work still needs; record and report, never raise for the work."""
        row = self.store.get(pid)
        outcome = WorkOutcome(pid, row.work_id, ok=False)
        steps = [("debag", self.debag), ("sync", self.sync)]
        if row.source == "s3":
            steps.insert(0, ("download", self.download))
        for name, step in steps:
            started = time.monotonic()
            try:
                step(pid)
            except Exception as exc:  # recorded by _phase; the other works go on
                outcome.error = str(exc)
                return outcome
            finally:
                outcome.seconds[name] = round(time.monotonic() - started, 3)
        final = self.store.get(pid)
        outcome.ok, outcome.archive_path = True, final.archive_path
        return outcome

    def run_once(self) -> tuple[PollReport, list[WorkOutcome]]:
        """Poll once, then carry every claimed work through its remaining phases."""
        report = self.poll_queues()
        return report, [self.process(pid) for pid in self.claim("s3")]

    def scan_incoming(self) -> list[int]:
        """Register bag zips dropped by hand into the incoming folder; claim the local works."""
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
            pid, outcome = self.store.register_local(path, key, work_id)
            log.info("incoming %s: work %s (row %s) %s", path, work_id, pid, outcome)
        return self.claim("local")

    def register_bag(self, zip_path: Path, key: str | None = None) -> int:
        """Register one zip given by path (``process-bag``); return its row id."""
        zip_path = zip_path.resolve()
        key = key or zip_path.name
        pid, _ = self.store.register_local(zip_path, key, work_id_from_key(key))
        return pid
