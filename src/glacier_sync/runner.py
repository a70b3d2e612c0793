"""The pipeline's phases (poll, download, debag, sync), shared by the CLI and the DAGs.

Each phase takes a progress-row id, does its work, records the outcome in the progress
database and returns the id, so that Airflow can map the phases per work. A failure is recorded
(state ``failed``, the phase and the error) and raised; the work's files stay where they are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from glacier_sync import aws, faults, room, workspace
from glacier_sync.archive import (
    ensure_parent,
    remove_if_empty,
    require_room,
    sweep_staging,
    verify_archive_root,
)
from glacier_sync.bags import DebagResult, debag
from glacier_sync.claimants import local_run_id, this_host
from glacier_sync.errors import (
    ArchiveUnavailable,
    ConfigError,
    DiskFull,
    GlacierSyncError,
    LostClaim,
    MalformedMessage,
    NoRestoredWork,
    ProgressDatabaseError,
    is_permanent,
    is_transient,
)
from glacier_sync.events import parse_message_body, work_id_from_key
from glacier_sync.lease import Heartbeat
from glacier_sync.metrics import metrics_for
from glacier_sync.models import Progress, utcnow
from glacier_sync.progress import ProgressStore, expires_soon, expiry_note
from glacier_sync.settings import QueueSource, Settings
from glacier_sync.shared_storage import check_shared_roots
from glacier_sync.states import State
from glacier_sync.sync import archive_parent_for_key, sync_work
from glacier_sync.workspace import verified_work_folder

log = logging.getLogger(__name__)


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
    transient: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


def open_store(settings: Settings) -> ProgressStore:
    """The progress database named by the settings."""
    return ProgressStore(settings.database_url(), auto_migrate=settings.progress_db_auto_migrate)


def _lost_claim(row: Progress, when: str) -> LostClaim:
    return LostClaim(
        f"work {row.work_id}: this run's claim was taken over {when}; the other run finishes "
        "the work"
    )


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


def _same_device(a: Path, b: Path) -> bool:
    """True when both paths exist on one device (a rename between them needs no room)."""
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def fixity_evidence(result: DebagResult, validated_at: datetime) -> dict[str, Any]:
    """What a debag proved, as recorded in the progress row (``fixity``) and published with the
    archived work: every payload file matched every manifest, in count and bytes."""
    return {
        "algorithms": list(result.algorithms),
        "files": result.files,
        "bytes": result.bytes,
        "payload_oxum": result.payload_oxum,
        "manifest_sha256": result.manifest_digests,
        "validated_at": validated_at.isoformat(timespec="seconds") + "Z",
    }


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
        self.run_id = run_id or local_run_id()
        self.metrics = metrics_for(settings)

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
            self._gauge_queue(sqs, queue)
        self.metrics.incr("poll.messages", report.received)
        self.metrics.incr("poll.new_works", report.recorded)
        self.metrics.incr("poll.duplicates", report.duplicates)
        return report

    def _gauge_queue(self, sqs: Any, queue: QueueSource) -> None:
        """The messages still waiting in the queue (one GetQueueAttributes, metrics on only)."""
        if not self.metrics.enabled:
            return
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            self.metrics.gauge(
                f"queue.{queue.name}.visible", int(attributes["ApproximateNumberOfMessages"])
            )
        except Exception as exc:  # a metric never fails the poll
            log.debug("metrics: queue depth of %s not read: %s", queue.name, exc)

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
            pid, outcome = self.store.record_event(record, queue.name, message.message_id)
            faults.checkpoint("poll:recorded")
            log.info("work %s (row %s): %s restore event", record.work_id, pid, outcome)
            if outcome == "duplicate":
                report.duplicates += 1
            else:
                report.recorded += 1
        if parsed.invalid:
            note = (
                f"queue {queue.name}: message {message.message_id} (received "
                f"{message.receive_count} times) holds unusable records: "
                f"{'; '.join(parsed.invalid)}; its usable records are recorded, the message is "
                "left in the queue for its redrive policy (dead-letter queue)"
            )
            log.error(note)
            report.malformed.append(note)
            return
        if aws.delete_message(sqs, message):
            report.deleted += 1

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

    def _warn_expiring(self, ids: list[int]) -> None:
        """Log (the poll task's log in the UI) each claimed work whose restored copy expires
        within ``expiry_warning_hours``."""
        margin = timedelta(hours=self.settings.expiry_warning_hours)
        now = utcnow()
        for pid in ids:
            row = self.store.get(pid)
            if expires_soon(row, now, margin):
                log.warning("work %s (row %s): %s", row.work_id, pid, expiry_note(row))

    # -- phases ---------------------------------------------------------------------------
    def _still_mine(self, row: Progress, step: str) -> None:
        """Renew the claim now; raise LostClaim when another run took the work over (before a
        step that cannot be undone: placing a work folder, running the sync)."""
        if not self.store.renew(row.id, self.run_id, self.lease):
            raise _lost_claim(row, f"before {step}")

    def _phase(
        self,
        pid: int,
        name: str,
        action: Callable[[Progress], dict[str, Any]],
        release: bool = False,
        release_on_failure: bool = True,
    ) -> Progress:
        """Run one phase under this run's claim (renewed by a heartbeat) and record it.

        A synced row is left as it is (another run finished it). A failure is recorded; it
        spends an attempt unless it is transient (the environment's fault, not the work's).
        """
        row = self.store.acquire(pid, self.run_id, self.lease, self.settings.max_attempts)
        if row.state == State.SYNCED:
            log.info("work %s (row %s): already synced; %s skipped", row.work_id, pid, name)
            return row
        started = time.monotonic()
        try:
            check_shared_roots(self.settings)  # this worker sees the instance's folders
            with Heartbeat(self.store, pid, self.run_id, self.lease) as beat:
                fields = action(row)
            if beat.lost:
                raise _lost_claim(row, f"during {name}")
        except Exception as exc:
            self._record_failure(row, name, exc, release_on_failure)
            kind = (
                "transient" if is_transient(exc) else "permanent" if is_permanent(exc) else "other"
            )
            self.metrics.incr(f"phase.{name}.failures.{kind}")
            raise
        seconds = round(time.monotonic() - started, 3)
        self._count_phase(name, row, fields, seconds)
        details = {**fields.pop("details", {}), "seconds": seconds, "run": self.run_id}
        return self.store.update_row(
            pid,
            f"{name} done",
            release=release,
            owner=self.run_id,
            failed_phase=None,
            last_error=None,
            needs_attention=False,
            failed_run=None,
            details=details,
            **fields,
        )

    def _count_phase(
        self, name: str, row: Progress, fields: dict[str, Any], seconds: float
    ) -> None:
        """Works, bytes and seconds of a phase that ran (not of one skipped as done already)."""
        if fields.get("details", {}).get("skipped"):
            return
        fixity = fields.get("fixity") or row.fixity or {}
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

    def download(self, pid: int, release_on_failure: bool = True) -> int:
        """Download the row's object into the incoming folder (skipped when already there)."""

        def action(row: Progress) -> dict[str, Any]:
            target = local_zip_path(self.settings, row)
            queue = self._queue_for(row)
            if row.local_path != str(target):  # claim the path before the file appears
                self.store.update_row(
                    pid, "download started", owner=self.run_id, local_path=str(target)
                )
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
                room=lambda still_to_fetch, size: self._require_room(row, still_to_fetch, size),
                report=(report := {}),
            )
            fields: dict[str, Any] = {"state": State.DOWNLOADED, "local_path": str(target)}
            if fetched or row.downloaded_at is None:
                fields["downloaded_at"] = utcnow()
            # The whole-object check used ("none": unchecked, the bag's manifests decide).
            fields["details"] = {
                "path": str(target),
                "skipped": None if fetched else "complete",
                **report,
            }
            return fields

        self._phase(pid, "download", action, release_on_failure=release_on_failure)
        return pid

    def _require_room(self, row: Progress, still_to_fetch: int, size: int) -> None:
        """Refuse a download whose work cannot fit: the zip, the work folder and (when the
        sync copies rather than moves it) the archive copy, summed per file system."""
        settings = self.settings
        parent = None
        if settings.archive_root is not None and settings.archive_root.is_dir():
            parent = archive_parent_for_key(settings.archive_root, row.object_key, row.work_id)
        archive_copies = parent is not None and (
            settings.sync_replace_archive or not (parent / row.work_id).exists()
        )
        if archive_copies and settings.sync_move_work:
            work_fs = room.existing_ancestor(settings.work_dir)
            archive_copies = not _same_device(work_fs, room.existing_ancestor(parent))
        needs = room.work_needs(
            size,
            still_to_fetch,
            local_zip_path(settings, row).parent,
            settings.work_dir,
            parent,
            archive_copies,
        )
        room.require_room(row.work_id, needs, settings.free_space_margin_mb * 1024 * 1024)

    def _debag_fields(self, row: Progress) -> dict[str, Any]:
        """Make the work folder a verified debag of the row's zip (re-extract unless its marker
        vouches for it); return the fields to record."""
        work_root, zip_path = self.settings.work_dir, local_zip_path(self.settings, row)
        if verified_work_folder(work_root, row.work_id, row.id, zip_path):
            return {"state": State.DEBAGGED, "details": {"skipped": "already debagged"}}
        workspace.forget_debag(work_root, row.work_id)
        try:
            result = debag(
                zip_path,
                work_root,
                row.work_id,
                self.settings.free_space_margin_mb * 1024 * 1024,
                before_place=lambda: self._still_mine(row, "placing the work folder"),
            )
        except DiskFull as exc:
            raise DiskFull(f"work {row.work_id}: {exc}") from exc
        faults.checkpoint("debag:placed")
        stat = zip_path.stat()
        folder = result.work_path.lstat()
        marker = workspace.DebagMarker(
            row.id,
            stat.st_size,
            stat.st_mtime_ns,
            result.files,
            result.bytes,
            list(result.algorithms),
            folder.st_dev,
            folder.st_ino,
            this_host(),
        )
        workspace.write_marker(work_root, row.work_id, marker)
        faults.checkpoint("debag:marked")
        validated_at = utcnow()
        return {
            "state": State.DEBAGGED,
            "debagged_at": validated_at,
            "fixity": fixity_evidence(result, validated_at),
            "details": {
                "files": result.files,
                "bytes": result.bytes,
                "algorithms": list(result.algorithms),
            },
        }

    def debag(self, pid: int, release_on_failure: bool = True) -> int:
        """Validate and extract the row's zip into ``<work root>/<WorkRID>``."""
        self._phase(pid, "debag", self._debag_fields, release_on_failure=release_on_failure)
        return pid

    def sync(self, pid: int, release_on_failure: bool = True) -> int:
        """Sync the verified work folder into the archive, record it, then clean up."""

        def action(row: Progress) -> dict[str, Any]:
            root = self.archive_root()
            parent = archive_parent_for_key(root, row.object_key, row.work_id)
            work_root = self.settings.work_dir
            # Staging of a dead try first: it may be this work's folder, renamed there by a
            # killed sync (then the folder is gone and is debagged again just below).
            sweep_staging(parent, row.work_id)
            redone = self._debag_fields(row)  # extracts again only when not vouched for
            if "debagged_at" in redone:
                log.warning("work %s: work folder was not verified; debagged again", row.work_id)
            created = ensure_parent(root, parent)
            work = work_root / row.work_id
            try:
                copying = self.settings.sync_replace_archive or not (parent / row.work_id).exists()
                if copying and not (self.settings.sync_move_work and _same_device(work, parent)):
                    require_room(parent, workspace.disk_usage(work), f"work {row.work_id}")
                faults.checkpoint("sync:before-script")
                self._still_mine(row, "the sync")
                result = sync_work(
                    self.settings.sync_command,
                    work,
                    parent,
                    self.settings.logs_dir,
                    replace=self.settings.sync_replace_archive,
                    db_config=self.settings.sync_db_config,
                    timeout=self.settings.sync_timeout_seconds,
                    move_work=self.settings.sync_move_work,
                )
            except Exception as exc:
                if not parent.is_dir():  # another work's failed sync removed its empty folder
                    raise ArchiveUnavailable(
                        f"work {row.work_id}: {parent} vanished during the sync (another work's "
                        "failed sync removed it while empty); tried again on the next run"
                    ) from exc
                remove_if_empty(created)
                raise
            faults.checkpoint("sync:after-script")
            fields: dict[str, Any] = {
                "state": State.SYNCED,
                "synced_at": utcnow(),
                "archive_path": str(result.archive_path),
                "details": {
                    "archive_path": str(result.archive_path),
                    "log": str(result.log_file),
                    "moved": result.moved,
                },
            }
            if "debagged_at" in redone:
                fields["debagged_at"] = redone["debagged_at"]
            return fields

        row = self._phase(pid, "sync", action, release=True, release_on_failure=release_on_failure)
        faults.checkpoint("sync:recorded")
        self._clean_quietly(row)
        return pid

    def clean(self, row: Progress) -> None:
        """Remove a synced work's local files (after the sync is recorded) and record it.

        Left alone while another run holds the work (a newer restore of it is on its way: the
        files are its now); recorded only for the sync that was cleaned.
        """
        if row.state != State.SYNCED or row.cleaned_at is not None:
            return
        if self.store.work_is_held(row.work_id, self.run_id):
            return
        zip_path = local_zip_path(self.settings, row)
        incoming = self.settings.incoming_dir.resolve()
        keep = self.settings.keep_zip_after_sync or not zip_path.resolve().is_relative_to(incoming)
        workspace.clean_work(
            self.settings.work_dir,
            row.work_id,
            None if keep else zip_path,
            self.settings.incoming_dir,
            self.settings.logs_dir,
        )
        self.store.mark_cleaned(row.id, row.synced_at)

    def _clean_quietly(self, row: Progress) -> None:
        """Clean up; a failure is logged (the work is synced; the next run cleans again)."""
        try:
            self.clean(row)
        except OSError as exc:
            log.warning("work %s: clean-up failed (%s); tried again later", row.work_id, exc)

    def finish_cleanups(self) -> None:
        """Finish the clean-up of synced works that a crash interrupted."""
        for row in self.store.needs_cleanup():
            self._clean_quietly(row)

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
                outcome.transient = is_transient(exc)
                return outcome
            finally:
                outcome.seconds[name] = round(time.monotonic() - started, 3)
        final = self.store.get(pid)
        outcome.ok, outcome.archive_path = True, final.archive_path
        return outcome

    def process_pending(self, source: str, ids: list[int] | None = None) -> list[WorkOutcome]:
        """Claim and process pending works one at a time (a crash holds one work, for one
        lease); stop at the first transient failure: the next works would meet it too."""
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
            if outcome.transient:
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
            pid, outcome = self.store.register_local(path, key, work_id)
            log.info("incoming %s: work %s (row %s) %s", path, work_id, pid, outcome)
        return self.claim("local")

    def register_bag(self, zip_path: Path, key: str | None = None) -> int:
        """Register one zip given by path (``process-bag``); return its row id."""
        zip_path = zip_path.resolve()
        key = key or zip_path.name
        pid, _ = self.store.register_local(zip_path, key, work_id_from_key(key))
        return pid
